"""``analyze``: the post-hoc entry point, one call from a model and data to a :class:`SymmetryReport`."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from liegg_lightning._batches import InputKey, iterate_inputs
from liegg_lightning._checks import check_int
from liegg_lightning.actions import GroupAction
from liegg_lightning.metric import LieGGMetric, fresh_metric
from liegg_lightning.report import SymmetryReport

__all__ = ["analyze"]


def _model_device(model: Callable[[Tensor], Tensor]) -> Optional[torch.device]:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


def _num_samples(data: Union[Tensor, Iterable[Any]], max_samples: Optional[int]) -> Optional[int]:
    """The number of samples the analysis will see, when it can be known without iterating."""
    total: Optional[int] = None
    if isinstance(data, Tensor):
        total = int(data.shape[0]) if data.ndim > 0 else None
    else:
        dataset = getattr(data, "dataset", None)
        try:
            total = len(dataset) if dataset is not None else None  # type: ignore[arg-type]
        except TypeError:
            total = None
    if max_samples is not None:
        total = max_samples if total is None else min(total, max_samples)
    return total


def _progress_bar(show: Optional[bool], total: Optional[int]) -> Any:
    """A tqdm bar over samples on stderr, or ``None``; ``show=None`` shows it only on a terminal."""
    if show is None:
        show = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not show:
        return None
    from tqdm.auto import tqdm  # type: ignore[import-untyped]  # installed with Lightning

    return tqdm(total=total, unit="sample", desc="LieGG", leave=False, file=sys.stderr)


def analyze(
    model: Callable[[Tensor], Tensor],
    data: Union[Tensor, Iterable[Any]],
    metric: Union[LieGGMetric, GroupAction],
    *,
    batch_size: int = 256,
    input_key: InputKey = 0,
    max_samples: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    progress: Optional[bool] = None,
    **metric_options: Any,
) -> Union[SymmetryReport, Dict[str, SymmetryReport]]:
    """Which symmetries has ``model`` learned, and how invariant (or equivariant) is it to them?

    The model is put in eval mode for the analysis and its mode restored afterwards; its
    parameters and their ``.grad`` are left untouched.

    With the defaults the derivative mode is chosen for the model: forward mode (``m`` tangent
    passes) when the algebra has fewer generators than a sample gives rows (a 1,000-class
    classifier), reverse mode (one backward pass per row) otherwise. A mode that cannot
    differentiate the model (an operation without a forward-mode derivative; a graph cut by
    ``torch.no_grad()`` inside ``forward``) hands over to the other with one warning.

    With the metric option ``output_action`` the analysis measures equivariance instead of
    invariance; with ``layers`` it analyses the outputs of several submodules from one pass per
    batch and returns ``{name: SymmetryReport}`` (``""`` names the model's own output).

    Args:
        model: A module or any callable from a batch of inputs to outputs.
        data: A tensor of inputs ``(N, ...)``, a DataLoader, or an iterable of batches (tensors,
            tuples/lists, or dicts; see ``input_key``).
        metric: A :class:`~liegg_lightning.LieGGMetric` that says what to measure (it is copied,
            never updated), or a :class:`~liegg_lightning.GroupAction` with the metric's options as
            keywords.
        batch_size: Chunk size when ``data`` is a tensor.
        input_key: Index (tuple/list batches) or key (dict batches) of the input.
        max_samples: Stop after this many samples.
        device: Where to run; by default the model's device.
        progress: A progress bar over the samples on stderr (tqdm): ``True`` always, ``False``
            never, ``None`` (default) only when stderr is a terminal, so that scripts, logs and
            tests stay quiet.
        metric_options: With an action: the options of :class:`~liegg_lightning.LieGGMetric`
            (``reference_algebra``, ``known_generators``, ``output_mode``, ``output_action``,
            ``layers``, ...), documented there once.

    Returns:
        A :class:`~liegg_lightning.SymmetryReport`, or with ``layers`` a dict ``name -> report`` in
        the order of ``layers``.

    Raises:
        DisconnectedGraphError: When an output's derivative is exactly zero though the output
            moves with the input (a graph cut, e.g. ``.detach()`` inside ``forward``) in the mode
            asked for, or with ``derivative="auto"`` in both modes: never reported as a symmetry.
        NotImplementedError: When ``derivative="forward"`` is asked for and an operation of the
            model has no forward-mode derivative (``"auto"`` falls back to reverse mode).

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction, analyze
        >>> r = torch.randn(500, 10)
        >>> model = lambda x: (x[:, :5] ** 2).sum(1, keepdim=True) + (x[:, :5] * x[:, 5:]).sum(1, keepdim=True)
        >>> report = analyze(model, r, VectorAction(dim=5, components=2), reference_algebra="so")
        >>> report.nullity, report.subspace_bias < 1e-6
        (10, True)
    """
    check_int("batch_size", batch_size, minimum=1)
    check_int("max_samples", max_samples, minimum=1, allow_none=True)
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"Expected `progress` to be a bool or None, got {progress!r}.")
    if not callable(model):
        raise ValueError(f"Expected `model` to be callable, got {type(model).__name__}.")
    if isinstance(metric, GroupAction):
        metric_options.setdefault("sync_on_compute", False)  # one process's data: nothing to gather
    acc = fresh_metric(metric, **metric_options)
    if isinstance(data, Tensor):
        acc.action.validate_input(data)
    target = torch.device(device) if device is not None else _model_device(model)
    if target is not None:
        acc.place_on(target)
    was_training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    try:
        seen = _feed(acc, model, iterate_inputs(data, batch_size, input_key), target, max_samples,
                     _progress_bar(progress, _num_samples(data, max_samples)))
    finally:
        if isinstance(model, nn.Module) and was_training is not None:
            model.train(was_training)
    if seen == 0:
        raise ValueError("Expected `data` to hold at least one sample, got none.")
    return acc.compute()


def _feed(
    acc: LieGGMetric,
    model: Callable[[Tensor], Tensor],
    batches: Iterable[Tensor],
    target: Optional[torch.device],
    max_samples: Optional[int],
    bar: Any,
) -> int:
    """Update ``acc`` with every batch up to ``max_samples`` samples; returns how many it saw."""
    seen = 0
    try:
        for inputs in batches:
            if max_samples is not None:
                inputs = inputs[: max_samples - seen]
            if inputs.shape[0] == 0:
                continue
            if target is not None:
                inputs = inputs.to(target)
            acc.update(model, inputs)
            seen += inputs.shape[0]
            if bar is not None:
                bar.update(inputs.shape[0])
            if max_samples is not None and seen >= max_samples:
                break
    finally:
        if bar is not None:
            bar.close()
    return seen
