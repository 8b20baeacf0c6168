"""``analyze``: the post-hoc entry point, one call from a model and data to a :class:`SymmetryReport`."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from liegg_lightning.actions import GroupAction
from liegg_lightning.batches import InputKey, iterate_inputs
from liegg_lightning.metric import DEFAULT_MEMORY_BUDGET, KnownGenerators, LieGGMetric
from liegg_lightning.report import SymmetryReport

__all__ = ["analyze"]


def _model_device(model: Callable[[Tensor], Tensor]) -> Optional[torch.device]:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


def analyze(
    model: Callable[[Tensor], Tensor],
    data: Union[Tensor, Iterable[Any]],
    action: GroupAction,
    *,
    reference_algebra: Optional[Union[str, Tensor]] = None,
    known_generators: Optional[KnownGenerators] = None,
    output_mode: str = "jacobian",
    num_projections: Optional[int] = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    batch_size: int = 256,
    input_key: InputKey = 0,
    derivative: str = "auto",
    max_samples: Optional[int] = None,
    nullity_tolerance: float = 1e-2,
    memory_budget: Optional[int] = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
) -> SymmetryReport:
    """Which symmetries has ``model`` learned, and how invariant is it to them?

    The model is put in eval mode for the analysis and its mode restored afterwards; its
    parameters and their ``.grad`` are left untouched.

    Args:
        model: A module or any callable from a batch of inputs to outputs.
        data: A tensor of inputs ``(N, ...)``, a DataLoader, or an iterable of batches (tensors,
            tuples/lists, or dicts; see ``input_key``).
        action: How the candidate algebra acts on an input.
        reference_algebra: Name or basis of the expected symmetry, for the biases.
        known_generators: Generators whose variances are reported by name.
        output_mode: ``"jacobian"``, ``"sum"`` or ``"random"`` (see :class:`LieGGMetric`).
        num_projections: Projections for ``"random"``.
        output_transform: Applied to the model output before differentiating.
        batch_size: Chunk size when ``data`` is a tensor.
        input_key: Index (tuple/list batches) or key (dict batches) of the input.
        derivative: ``"auto"``, ``"reverse"`` or ``"forward"``.
        max_samples: Stop after this many samples.
        nullity_tolerance: Relative level below which eigenvalues count as symmetries.
        memory_budget: Bytes the Gram matrix and solve may take (checked before any work).
        seed: Seed for random projections.
        device: Where to run; by default the model's device.

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction, analyze
        >>> r = torch.randn(500, 10)
        >>> model = lambda x: (x[:, :5] ** 2).sum(1, keepdim=True) + (x[:, :5] * x[:, 5:]).sum(1, keepdim=True)
        >>> report = analyze(model, r, VectorAction(dim=5, components=2), reference_algebra="so")
        >>> report.nullity, report.subspace_bias < 1e-6
        (10, True)
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive int, got {batch_size!r}.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"Expected `max_samples` to be a positive int or None, got {max_samples!r}.")
    if not callable(model):
        raise ValueError(f"Expected `model` to be callable, got {type(model).__name__}.")
    if isinstance(data, Tensor):
        action.validate_input(data)
    metric = LieGGMetric(
        action,
        reference_algebra=reference_algebra,
        known_generators=known_generators,
        output_mode=output_mode,
        num_projections=num_projections,
        output_transform=output_transform,
        derivative=derivative,
        nullity_tolerance=nullity_tolerance,
        memory_budget=memory_budget,
        seed=seed,
        sync_on_compute=False,
    )
    target = torch.device(device) if device is not None else _model_device(model)
    if target is not None:
        metric.place_on(target)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        seen = 0
        for inputs in iterate_inputs(data, batch_size, input_key):
            if max_samples is not None:
                inputs = inputs[: max_samples - seen]
            if target is not None:
                inputs = inputs.to(target)
            metric.update(model, inputs)
            seen += inputs.shape[0]
            if max_samples is not None and seen >= max_samples:
                break
    finally:
        if isinstance(model, nn.Module) and was_training is not None:
            model.train(was_training)
    if seen == 0:
        raise ValueError("Expected `data` to hold at least one sample, got none.")
    return metric.compute()
