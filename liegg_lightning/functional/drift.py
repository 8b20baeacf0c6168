"""How far the learned generators moved between two analyses."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["generator_drift"]


def generator_drift(previous: Tensor, previous_nullity: int, current: Tensor, current_nullity: int) -> float:
    """Sine of the largest principal angle between two analyses' learned subspaces.

    Each subspace is spanned by the ``k`` most invariant generators of its analysis, ``k`` the larger
    of the two nullities, so that a symmetry found or lost counts as movement. 0 when the learned
    generators span the same subspace, 1 when one of them left it entirely.

    Args:
        previous: Generators ``(m, *shape)`` of the earlier analysis, most invariant first.
        previous_nullity: Its number of learned symmetries.
        current: Generators ``(m, *shape)`` of the later analysis, most invariant first.
        current_nullity: Its number of learned symmetries.

    Returns:
        The sine in [0, 1]; NaN when either analysis found no symmetry or the algebras differ.

    Example:
        >>> import torch
        >>> eye = torch.eye(4)
        >>> generator_drift(eye, 2, eye[[1, 0, 2, 3]], 2)
        0.0
        >>> round(generator_drift(eye, 1, eye[[2, 0, 1, 3]], 1), 6)
        1.0
    """
    if previous_nullity <= 0 or current_nullity <= 0 or previous.shape != current.shape:
        return math.nan
    k = min(max(previous_nullity, current_nullity), previous.shape[0])
    a = torch.linalg.qr(previous.reshape(previous.shape[0], -1)[:k].T.to(torch.float64))[0]
    b = torch.linalg.qr(current.reshape(current.shape[0], -1)[:k].T.to(torch.float64))[0]
    # the part of b outside span(a): its largest singular value is the sine of the largest angle
    outside = b - a @ (a.T @ b)
    return float(torch.linalg.matrix_norm(outside, ord=2).clamp(0.0, 1.0))
