"""An independent float64 brute force for LieGG, written without the package.

Everything here is deliberately naive: one sample at a time, a full per-sample Jacobian by
autograd, tangents built by hand from the definition of the action (and checked against
``matrix_exp`` finite differences in the tests), the full polarization matrix ``E`` held in
memory and a dense SVD. It is slow and simple so that it can be trusted as a reference.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

Model = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- bases


def unit_matrix(n: int, i: int, j: int) -> Tensor:
    """The float64 ``n x n`` matrix with a single 1 at ``(i, j)``."""
    e = torch.zeros(n, n, dtype=torch.float64)
    e[i, j] = 1.0
    return e


def gl_basis(n: int) -> List[Tensor]:
    """Row-major elementary matrices ``E_ij`` of ``gl(n)``."""
    return [unit_matrix(n, i, j) for i in range(n) for j in range(n)]


def so_basis(n: int, coords: Optional[List[int]] = None) -> Tensor:
    """Orthonormal basis ``(k, n, n)`` of ``so`` acting on the given coordinates (all by default)."""
    idx = list(range(n)) if coords is None else coords
    mats = []
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            i, j = idx[a], idx[b]
            mats.append((unit_matrix(n, i, j) - unit_matrix(n, j, i)) / math.sqrt(2.0))
    return torch.stack(mats)


def span_projector(basis: Tensor) -> Tensor:
    """Orthogonal projector onto the span of the flattened basis elements ``(k, ...)``."""
    q, _ = torch.linalg.qr(basis.reshape(basis.shape[0], -1).to(torch.float64).T)
    return q @ q.T


# ----------------------------------------------------------------------------- tangents


def vector_tangents(x: Tensor, dim: int) -> Tensor:
    """Tangents ``(m, *x.shape)`` of one sample ``x`` (``components * dim`` numbers) under ``gl(dim)``.

    ``d/dt exp(t E_ij) v = E_ij v``: the ``i``-th coordinate of each component receives ``v[j]``.
    """
    vs = x.reshape(-1, dim).to(torch.float64)
    out = []
    for e in gl_basis(dim):
        out.append((vs @ e.T).reshape(x.shape))
    return torch.stack(out)


def vector_tangents_fd(x: Tensor, dim: int, eps: float = 1e-6) -> Tensor:
    """The same tangents by central finite differences of ``matrix_exp`` (a check on the hand-built ones)."""
    vs = x.reshape(-1, dim).to(torch.float64)
    out = []
    for e in gl_basis(dim):
        plus = vs @ torch.linalg.matrix_exp(eps * e).T
        minus = vs @ torch.linalg.matrix_exp(-eps * e).T
        out.append(((plus - minus) / (2 * eps)).reshape(x.shape))
    return torch.stack(out)


def image_coordinates(height: int, width: int) -> Tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``(x, y)``, each ``(H, W)``: x along the width, y along the height,
    centred on the image, in units of half the larger side."""
    half = max(height, width) / 2.0
    cols = torch.arange(width, dtype=torch.float64)
    rows = torch.arange(height, dtype=torch.float64)
    x = ((cols - (width - 1) / 2.0) / half)[None, :].expand(height, width)
    y = ((rows - (height - 1) / 2.0) / half)[:, None].expand(height, width)
    return x, y


def _diff(img: Tensor, axis: int, step: float) -> Tensor:
    """Central differences along ``axis`` (one-sided at the two ends), written out by slicing."""
    img = img.movedim(axis, -1)
    out = torch.empty_like(img)
    out[..., 1:-1] = (img[..., 2:] - img[..., :-2]) / (2 * step)
    out[..., 0] = (img[..., 1] - img[..., 0]) / step
    out[..., -1] = (img[..., -1] - img[..., -2]) / step
    return out.movedim(-1, axis)


def image_tangents(img: Tensor, affine: bool) -> Tensor:
    """Tangents ``(m, *img.shape)`` of one image ``(C, H, W)`` or ``(H, W)`` under ``gl(2)`` / ``aff(2)``.

    With ``(g I)(p) = I(g^-1 p)``, ``d/dt I(exp(-t h) p) = -grad I(p) . (h p)``; for the basis
    element ``E_ab`` (``b`` = 2 is the homogeneous coordinate) that is ``-d_a I(p) * p_b``.
    """
    img = img.to(torch.float64)
    h, w = img.shape[-2:]
    step = 1.0 / (max(h, w) / 2.0)
    x, y = image_coordinates(h, w)
    d = [_diff(img, img.ndim - 1, step), _diff(img, img.ndim - 2, step)]  # d/dx, d/dy
    p = [x, y] + ([torch.ones_like(x)] if affine else [])
    return torch.stack([-d[a] * p[b] for a in range(2) for b in range(len(p))])


# ----------------------------------------------------------------------------- E and its spectrum


def jacobian(model: Model, x: Tensor) -> Tensor:
    """Jacobian ``(K, *x.shape)`` of the flattened output of ``model`` at one sample, by autograd."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x.unsqueeze(0)).reshape(-1)
    rows = []
    for k in range(out.numel()):
        (g,) = torch.autograd.grad(out[k], x, retain_graph=True)
        rows.append(g)
    return torch.stack(rows)


def polarization_matrix(
    model: Model, inputs: Tensor, tangent_fn: Callable[[Tensor], Tensor], summed: bool = False
) -> Tensor:
    """The full polarization matrix ``E`` ``(N * K, m)``, one sample at a time, in float64.

    Args:
        model: A float64 model.
        inputs: ``(N, ...)`` samples.
        tangent_fn: One sample -> its ``(m, *sample.shape)`` tangents.
        summed: Differentiate the summed output instead (one row per sample).
    """
    blocks = []
    for x in inputs.to(torch.float64):
        jac = jacobian(model, x).flatten(1)  # (K, D)
        if summed:
            jac = jac.sum(0, keepdim=True)
        tan = tangent_fn(x).flatten(1)  # (m, D)
        blocks.append(jac @ tan.T)
    return torch.cat(blocks)


def spectrum(e: Tensor) -> Tuple[Tensor, Tensor]:
    """Ascending singular values of ``E`` and the matching right singular vectors (columns)."""
    _, s, vh = torch.linalg.svd(e.to(torch.float64), full_matrices=False)
    return s.flip(0), vh.flip(0).T


def gram(e: Tensor) -> Tensor:
    """``E^T E`` in float64."""
    e = e.to(torch.float64)
    return e.T @ e
