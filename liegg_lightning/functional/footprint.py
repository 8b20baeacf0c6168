"""What one sample's derivative pass holds in memory, measured on a pass over one sample.

Autograd keeps, for the backward pass, the tensors each operation saves: their sum is the
activation memory a reverse pass holds per sample, and about what each tangent of a forward-mode
pass carries through the network. :func:`saved_storages` lists them once per storage, leaving
out the parameters and buffers (they exist whether or not a pass runs); the largest of them says
what one layer's output costs, which forward mode holds a few times over per tangent.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Set

import torch
from torch import Tensor

from liegg_lightning.functional.polarization import derivative_context

__all__ = ["activation_bytes", "module_storages", "saved_storages"]


def _storage(t: Tensor) -> Any:
    return t.untyped_storage()


def saved_storages(fn: Callable[[Tensor], Any], x: Tensor, exclude: Set[int]) -> Dict[int, int]:
    """Bytes of each distinct storage autograd saves while ``fn`` runs on ``x`` (all of its samples).

    Args:
        fn: From a batch of inputs to the analysed outputs.
        x: The inputs (detached and cloned here, with gradients required).
        exclude: ``data_ptr`` of storages not to count (the model's parameters and buffers).
    """
    saved: Dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = _storage(t)
        ptr = storage.data_ptr()
        if ptr not in exclude:
            saved[ptr] = max(saved.get(ptr, 0), storage.nbytes())
        return t

    with derivative_context(x.device):
        xg = x.detach().clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(xg)
    return saved


def activation_bytes(fn: Callable[[Tensor], Any], x: Tensor, exclude: Set[int]) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs on ``x``: :func:`saved_storages` summed.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(4, 3)
        >>> keep = {p.untyped_storage().data_ptr() for p in lin.parameters()}
        >>> activation_bytes(lambda x: lin(x).tanh(), torch.randn(2, 4), keep)  # the input and tanh's output
        56
    """
    return sum(saved_storages(fn, x, exclude).values())


def module_storages(model: Any) -> Set[int]:
    """``data_ptr`` of the storages of a module's parameters and buffers (none for a plain callable)."""
    if not isinstance(model, torch.nn.Module):
        return set()
    tensors = list(model.parameters()) + list(model.buffers())
    return {_storage(t).data_ptr() for t in tensors}
