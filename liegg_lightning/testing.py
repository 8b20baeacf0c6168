"""Checks for users' own group actions: do ``tangents``, ``transform`` and ``rows`` agree?

Example:
    >>> import torch
    >>> from liegg_lightning import VectorAction
    >>> from liegg_lightning.testing import check_action
    >>> check_action(VectorAction(dim=3, components=2), torch.randn(4, 6))
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from liegg_lightning.actions import GroupAction

__all__ = ["check_action"]


def _relative_error(got: Tensor, expected: Tensor) -> float:
    scale = float(expected.abs().max())
    return float((got - expected).abs().max()) / max(scale, 1e-300)


def check_action(
    action: GroupAction,
    x: Tensor,
    *,
    step: float = 1e-4,
    rtol: float = 1e-2,
    num_outputs: int = 3,
    seed: int = 0,
) -> None:
    """Raise :class:`AssertionError` when the three views of ``action`` disagree at inputs ``x``.

    Three checks, in float64:

    1. ``action.validate_input(x)`` accepts ``x``;
    2. ``action.tangents(x)[:, i]`` equals the central difference
       ``(transform(x, E_i, step) - transform(x, E_i, -step)) / (2 step)`` of the finite
       transformation along every basis generator ``E_i`` (skipped when ``transform`` raises
       :class:`NotImplementedError`);
    3. ``action.rows(x, g)`` equals ``g`` contracted with the tangents, for random gradients ``g``
       of ``num_outputs`` outputs (what the engine relies on when an action has a closed form).

    Errors are relative to the largest entry of the expected value. Images should be smooth and
    fade to zero at the border, where finite transformations pad.

    Args:
        action: The action to check.
        x: A batch of inputs ``(B, ...)`` the action accepts.
        step: Step of the central difference in ``t``.
        rtol: Largest accepted relative error.
        num_outputs: Output components of the random gradients for the rows check.
        seed: Seed of the random gradients.
    """
    if not isinstance(action, GroupAction):
        raise ValueError(f"Expected a GroupAction, got {type(action).__name__}.")
    action.validate_input(x)
    x64 = x.detach().to(torch.float64)
    tangents = action.tangents(x64)
    expected_shape = (x.shape[0], action.num_generators, *x.shape[1:])
    if tuple(tangents.shape) != expected_shape:
        raise AssertionError(f"tangents(x) has shape {tuple(tangents.shape)}, expected {expected_shape}.")

    basis = torch.eye(action.num_generators, dtype=torch.float64)
    worst: Optional[float] = None
    for i in range(action.num_generators):
        generator = action.to_generator(basis[i])
        try:
            plus = action.transform(x64, generator, step)
            minus = action.transform(x64, generator, -step)
        except NotImplementedError:
            break
        difference = (plus.to(torch.float64) - minus.to(torch.float64)) / (2 * step)
        error = _relative_error(tangents[:, i], difference)
        worst = error if worst is None else max(worst, error)
        if error > rtol:
            raise AssertionError(
                f"tangents(x)[:, {i}] differs from the central difference of transform along generator {i} "
                f"by {error:.3g} (relative), over rtol={rtol:g}."
            )

    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(x.shape[0], num_outputs, *x.shape[1:], generator=gen, dtype=torch.float64)
    rows = action.rows(x64, grads)
    contracted = torch.einsum("bkd,bmd->bkm", grads.flatten(2), tangents.flatten(2))
    if tuple(rows.shape) != tuple(contracted.shape):
        raise AssertionError(f"rows(x, g) has shape {tuple(rows.shape)}, expected {tuple(contracted.shape)}.")
    error = _relative_error(rows, contracted)
    if error > 1e-9:
        raise AssertionError(f"rows(x, g) differs from g contracted with tangents(x) by {error:.3g} (relative).")
