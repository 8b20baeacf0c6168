"""Leaving a module exactly as it was: buffers and random number generators around extra forward passes."""

from __future__ import annotations

import contextlib
import random
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["cuda_devices_of", "in_analysis", "preserved_state"]

_PASSES = threading.local()  # per thread: a user's hook in another thread is not inside our pass


def in_analysis() -> bool:
    """Whether the calling code runs inside a pass of :class:`~liegg_lightning.LieGGCallback`.

    True inside every forward pass the callback adds to a run (the sanity check's trial pass, the
    pricing, the analysis and the orbit picture), False otherwise. A forward hook or a model
    that collects statistics during validation can skip the callback's passes with it.

    Example:
        >>> import liegg_lightning
        >>> activations = []
        >>> def keep(module, inputs, output):
        ...     if not liegg_lightning.in_analysis():  # only the loop's own passes
        ...         activations.append(output.detach())
        >>> liegg_lightning.in_analysis()
        False
    """
    return getattr(_PASSES, "depth", 0) > 0


@contextlib.contextmanager
def _marked() -> Iterator[None]:
    _PASSES.depth = getattr(_PASSES, "depth", 0) + 1
    try:
        yield
    finally:
        _PASSES.depth -= 1


@contextlib.contextmanager
def preserved_state(module: nn.Module, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Restore ``module``'s buffers and every random state a model can draw from when the block ends.

    A model left in training mode during validation updates batch-norm statistics and draws
    dropout masks in every forward pass; the analysis' extra passes must change neither. Buffers
    are restored by name: the module holds its original tensor objects again, with their values,
    even where a pass replaced one (``self.mean = self.mean + ...``). The random states kept are
    torch's (CPU and the given CUDA devices), Python's ``random``, NumPy's global one, and every
    ``torch.Generator``, NumPy ``Generator``/``RandomState`` and ``random.Random`` a submodule holds
    as an attribute. Inside the block ``torch.compile`` directives are ignored: the extra passes run
    the original modules, so no compiled graph of the training is recompiled or replaced, and
    :func:`in_analysis` is True. Parameters are not copied: the derivative passes never write them.

    Args:
        module: The module whose buffers and generators are restored.
        cuda_devices: Indices of the CUDA devices whose random state is restored as well.
    """
    buffers = _saved_buffers(module)
    restores = [_global_rngs(), *_module_rngs(module)]
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)), _eager(), _marked():
            yield
    finally:
        for restore in restores:
            restore()
        _restore_buffers(buffers)


def _saved_buffers(module: nn.Module) -> List[Tuple[nn.Module, str, Tensor, Tensor]]:
    """``(owner, name, the tensor it holds, a copy of its values)`` for every buffer."""
    with torch.inference_mode(False), torch.no_grad():
        # clones outside inference mode: `validate()` runs under it, and inference tensors could
        # not be copied back into the module's normal buffers
        return [(owner, name, buffer, buffer.clone())
                for owner in module.modules() for name, buffer in owner.named_buffers(recurse=False)]


def _restore_buffers(saved: List[Tuple[nn.Module, str, Tensor, Tensor]]) -> None:
    with torch.inference_mode(False), torch.no_grad():
        for owner, name, original, values in saved:
            if getattr(owner, name, None) is not original:  # the pass replaced it: the original comes back
                setattr(owner, name, original)
            original.copy_(values)


def _global_rngs() -> Callable[[], None]:
    """Save Python's and NumPy's global random states; the returned call puts them back."""
    python_state = random.getstate()
    numpy_random = _numpy_random()
    numpy_state = None if numpy_random is None else numpy_random.get_state()

    def restore() -> None:
        random.setstate(python_state)
        if numpy_random is not None:
            numpy_random.set_state(numpy_state)

    return restore


def _module_rngs(module: nn.Module) -> List[Callable[[], None]]:
    """Save the state of every generator object a submodule holds; one call each puts it back."""
    restores: List[Callable[[], None]] = []
    seen: set = set()
    for owner in module.modules():
        for value in vars(owner).values():
            if id(value) not in seen:
                seen.add(id(value))
                restore = _saver(value)
                if restore is not None:
                    restores.append(restore)
    return restores


def _saver(value: Any) -> Any:
    """For a generator object: a call that puts its current state back; otherwise ``None``."""
    if isinstance(value, torch.Generator):
        torch_state = value.get_state()
        return lambda: value.set_state(torch_state)
    if isinstance(value, random.Random):
        python_state = value.getstate()
        return lambda: value.setstate(python_state)
    numpy_random = _numpy_random()
    if numpy_random is not None and isinstance(value, numpy_random.Generator):
        bit_state = value.bit_generator.state
        return lambda: setattr(value.bit_generator, "state", bit_state)
    if numpy_random is not None and isinstance(value, numpy_random.RandomState):
        numpy_state = value.get_state()
        return lambda: value.set_state(numpy_state)
    return None


def _numpy_random() -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch's usual installs
        return None
    return np.random


def _eager() -> Any:
    """Run compiled modules as the plain modules they wrap (torch >= 2.6), without touching their graphs."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def cuda_devices_of(module: nn.Module) -> List[int]:
    """Indices of the CUDA devices ``module``'s parameters and buffers live on."""
    return sorted({t.device.index or 0 for t in [*module.parameters(), *module.buffers()] if t.device.type == "cuda"})


def training_headroom(
    devices: Sequence[int],
    peak: Callable[[int], int] = torch.cuda.max_memory_allocated,
    now: Callable[[int], int] = torch.cuda.memory_allocated,
) -> Optional[int]:
    """Bytes the run has shown each CUDA device can hold above what it holds now: the least over ``devices``.

    The run's own peak (its training steps) less what is allocated between them is what one
    derivative pass may take without pushing the device past a peak it has already survived. The
    peak statistics are only read, never reset: they are the user's. ``None`` without a CUDA device.
    """
    if not devices:
        return None
    return max(min(peak(d) - now(d) for d in devices), 0)
