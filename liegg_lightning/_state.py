"""Leaving a module exactly as it was: buffers and random number generators around extra forward passes."""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Sequence

import torch
from torch import nn

__all__ = ["cuda_devices_of", "preserved_state"]


@contextlib.contextmanager
def preserved_state(module: nn.Module, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Restore ``module``'s buffers and the CPU and CUDA random states when the block ends.

    A model left in training mode during validation updates batch-norm statistics and draws
    dropout masks in every forward pass; the analysis' extra passes must change neither.
    Parameters are not copied: the derivative passes never write them.

    Args:
        module: The module whose buffers are restored.
        cuda_devices: Indices of the CUDA devices whose random state is restored as well.
    """
    with torch.inference_mode(False), torch.no_grad():
        # clones outside inference mode: `validate()` runs under it, and inference tensors could
        # not be copied back into the module's normal buffers
        saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)):
            yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def cuda_devices_of(module: nn.Module) -> List[int]:
    """Indices of the CUDA devices ``module``'s parameters and buffers live on."""
    return sorted({t.device.index or 0 for t in [*module.parameters(), *module.buffers()] if t.device.type == "cuda"})
