"""Leaving a module exactly as it was: buffers and random number generators around extra forward passes."""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator, List, Sequence

import torch
from torch import nn

__all__ = ["cuda_devices_of", "preserved_state"]


@contextlib.contextmanager
def preserved_state(module: nn.Module, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Restore ``module``'s buffers and every random state a model can draw from when the block ends.

    A model left in training mode during validation updates batch-norm statistics and draws
    dropout masks in every forward pass; the analysis' extra passes must change neither. The
    random states kept are torch's (CPU and the given CUDA devices), Python's ``random`` and
    NumPy's global one. Inside the block ``torch.compile`` directives are ignored: the extra passes
    run the original modules, so no compiled graph of the training is recompiled or replaced.
    Parameters are not copied: the derivative passes never write them.

    Args:
        module: The module whose buffers are restored.
        cuda_devices: Indices of the CUDA devices whose random state is restored as well.
    """
    with torch.inference_mode(False), torch.no_grad():
        # clones outside inference mode: `validate()` runs under it, and inference tensors could
        # not be copied back into the module's normal buffers
        saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    python_state = random.getstate()
    numpy_state = _numpy_state()
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)), _eager():
            yield
    finally:
        random.setstate(python_state)
        if numpy_state is not None:
            import numpy as np

            np.random.set_state(numpy_state)
        with torch.inference_mode(False), torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return None
    return np.random.get_state()


def _eager() -> Any:
    """Run compiled modules as the plain modules they wrap (torch >= 2.6), without touching their graphs."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def cuda_devices_of(module: nn.Module) -> List[int]:
    """Indices of the CUDA devices ``module``'s parameters and buffers live on."""
    return sorted({t.device.index or 0 for t in [*module.parameters(), *module.buffers()] if t.device.type == "cuda"})
