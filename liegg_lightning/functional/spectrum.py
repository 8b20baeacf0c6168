"""From polarization rows to a spectrum: the Gram matrix, its eigendecomposition and the measures.

Pure float64 tensor functions. ``G = E^T E`` is accumulated instead of ``E`` itself, so memory is
``O(m^2)`` whatever the number of rows, and ``eigh(G)`` gives ``sigma_i^2`` and the right singular
vectors of ``E``.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "solve_spectrum",
    "estimate_nullity",
    "reference_biases",
    "subspace_bias",
    "closure_error",
    "known_variances",
    "canonical_signs",
]

def canonical_signs(vectors: Tensor) -> Tensor:
    """Flip each column so its largest-magnitude entry is positive: eigenvectors are defined up to sign."""
    idx = vectors.abs().argmax(0)
    signs = torch.sign(vectors.gather(0, idx[None]).squeeze(0))
    signs[signs == 0] = 1.0
    return vectors * signs


class Spectrum(NamedTuple):
    """Eigenvalues and eigenvectors of a Gram matrix, most invariant first."""

    eigenvalues: Tensor  # (m,) ascending, clamped at 0
    eigenvectors: Tensor  # (m, m) columns, unit norm, same order


def solve_spectrum(gram: Tensor) -> Spectrum:
    """Eigendecomposition of the symmetric Gram matrix, ascending, eigenvalues clamped at zero."""
    g = gram.to(torch.float64)
    g = 0.5 * (g + g.T)
    if not bool(torch.isfinite(g).all()):
        raise ValueError("The Gram matrix has non-finite entries; cannot solve.")
    evals, evecs = torch.linalg.eigh(g)
    return Spectrum(evals.clamp_min(0.0), canonical_signs(evecs))


def estimate_nullity(eigenvalues: Tensor, tolerance: float = 1e-2, min_gap: float = 10.0) -> int:
    """Number of learned symmetries: the position of the spectrum's largest gap below a tolerance.

    Only positions ``k`` whose ``k``-th smallest eigenvalue is below ``tolerance * mean(eigenvalues)``
    are candidates, and the gap ``lambda_k / lambda_{k-1}`` must be at least ``min_gap``; the
    largest such gap wins. Eigenvalues at the float64 floor count as that floor.
    """
    lam = eigenvalues.to(torch.float64).clamp_min(0.0)
    m = lam.numel()
    mean = float(lam.mean()) if m else 0.0
    if m == 0:
        return 0
    if mean <= 0.0:
        return m
    floor = float(lam.max()) * 1e-15
    lam = lam.clamp_min(floor)
    best_k, best_gap = 0, math.log(min_gap)
    for k in range(1, m):
        if float(lam[k - 1]) > tolerance * mean:
            break
        gap = math.log(float(lam[k]) / float(lam[k - 1]))
        if gap >= best_gap:
            best_k, best_gap = k, gap
    return best_k


def reference_biases(vectors: Tensor, reference: Tensor) -> Tensor:
    """``B_i = ||v_i - P v_i||`` for unit columns ``vectors`` ``(m, n)`` and an orthonormal ``reference`` ``(k, m)``."""
    v = vectors.to(torch.float64)
    q = reference.to(torch.float64)
    residual = v - q.T @ (q @ v)
    return residual.norm(dim=0)


def subspace_bias(vectors: Tensor, reference: Tensor) -> float:
    """Sine of the largest principal angle between the span of the first ``k`` columns and the reference.

    ``vectors`` holds the ``k`` most invariant unit generators as columns ``(m, k)``, ``reference``
    an orthonormal ``(k, m)`` basis of the same dimension. With orthonormal bases of equal
    dimension the sine is the spectral norm of the part of ``vectors`` outside the reference.
    """
    v = vectors.to(torch.float64)
    q = reference.to(torch.float64)
    residual = v - q.T @ (q @ v)
    return float(torch.linalg.matrix_norm(residual, ord=2))


def closure_error(generators: Tensor, max_pairs: int = 4096, chunk_bytes: int = 32 * 2**20) -> Optional[float]:
    """How far unit generators ``(n, d, d)`` are from closing under the commutator.

    The largest Frobenius norm of the part of ``[h_i, h_j]`` outside their span; 0 for a Lie
    subalgebra. ``None`` when generators are not square matrices. With more than ``max_pairs``
    pairs, the maximum is taken over a fixed-seed random sample of ``max_pairs`` of them, and pairs
    are processed in chunks of about ``chunk_bytes``, so time and memory stay bounded for large
    algebras.
    """
    if generators.ndim != 3 or generators.shape[-1] != generators.shape[-2]:
        return None
    n, d = generators.shape[0], generators.shape[-1]
    if n < 2:
        return 0.0
    h = generators.to(torch.float64)
    q = torch.linalg.qr(h.reshape(n, -1).T).Q  # (d*d, n) orthonormal span
    i, j = torch.triu_indices(n, n, offset=1)
    if len(i) > max_pairs:
        pick = torch.randperm(len(i), generator=torch.Generator().manual_seed(0))[:max_pairs]
        i, j = i[pick], j[pick]
    chunk = max(1, chunk_bytes // (3 * 8 * d * d + 8 * n))
    worst = 0.0
    for start in range(0, len(i), chunk):
        a, b = h[i[start : start + chunk]], h[j[start : start + chunk]]
        comm = (a @ b - b @ a).reshape(a.shape[0], -1).T  # (d*d, pairs)
        residual = comm - q @ (q.T @ comm)
        worst = max(worst, float(residual.norm(dim=0).max()))
    return worst


def known_variances(
    gram: Tensor, num_samples: int, named: Mapping[str, Tensor]
) -> Dict[str, float]:
    """``vec(h)^T G vec(h) / (N ||h||^2)`` for each named coefficient vector ``h`` ``(m,)``."""
    out: Dict[str, float] = {}
    g = gram.to(torch.float64)
    for name, vec in named.items():
        v = vec.to(g.device, torch.float64).reshape(-1)
        norm2 = float(v @ v)
        if norm2 == 0.0:
            raise ValueError(f"The known generator {name!r} is zero.")
        out[name] = float(v @ g @ v) / (max(num_samples, 1) * norm2)
    return out
