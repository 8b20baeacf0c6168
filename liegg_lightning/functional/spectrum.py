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
    "log_gaps",
    "jackknife_stderr",
    "relative_spectrum",
    "reference_biases",
    "subspace_bias",
    "closure_error",
    "known_variances",
    "border_share",
]

def _signs(vectors: Tensor) -> Tensor:
    """``(n,)`` the sign of each column's largest-magnitude entry (+1 for a zero column)."""
    idx = vectors.abs().argmax(0)
    signs = torch.sign(vectors.gather(0, idx[None]).squeeze(0))
    signs[signs == 0] = 1.0
    return signs


def _canonical_signs_(vectors: Tensor) -> Tensor:
    """Flip each column in place so its largest-magnitude entry is positive: eigenvectors are defined up to sign."""
    return vectors.mul_(_signs(vectors))


def _symmetrised(x: Tensor) -> Tensor:
    """``0.5 * (x + x^T)`` in float64, with one ``m x m`` temporary instead of two."""
    x = x.to(torch.float64)
    return (x + x.T).mul_(0.5)


class Spectrum(NamedTuple):
    """Eigenvalues and eigenvectors of a Gram matrix, most invariant first."""

    eigenvalues: Tensor  # (m,) ascending, clamped at 0
    eigenvectors: Tensor  # (m, m) columns, unit norm, same order


def solve_spectrum(gram: Tensor) -> Spectrum:
    """Eigendecomposition of the symmetric Gram matrix, ascending, eigenvalues clamped at zero."""
    g = _symmetrised(gram)
    if not bool(torch.isfinite(g).all()):
        raise ValueError("The Gram matrix has non-finite entries; cannot solve.")
    evals, evecs = torch.linalg.eigh(g)
    del g
    return Spectrum(evals.clamp_min(0.0), _canonical_signs_(evecs))


#: Eigenvalues below this fraction of the largest count as this fraction of it (the float64 floor):
#: exact zeros and rounding noise then give finite log-gaps.
FLOOR = 1e-15


def log_gaps(eigenvalues: Tensor) -> Tensor:
    """Gaps ``log(lambda_k) - log(lambda_{k-1})`` of ascending spectra ``(..., m)`` -> ``(..., m - 1)``.

    Each spectrum is floored at :data:`FLOOR` times its largest eigenvalue, so the gaps are
    scale-free (unchanged when every eigenvalue is multiplied by the same positive number) and
    finite. An all-zero spectrum gives zero gaps.
    """
    lam = eigenvalues.to(torch.float64).clamp_min(0.0)
    top = lam.amax(-1, keepdim=True)
    floor = torch.where(top > 0, top * FLOOR, torch.ones_like(top))
    logs = lam.clamp_min(0.0).maximum(floor).log()
    return logs[..., 1:] - logs[..., :-1]


def estimate_nullity(
    eigenvalues: Tensor,
    gap_stderr: Optional[Tensor] = None,
    *,
    tolerance: float = 0.1,
    confidence: float = 2.0,
) -> int:
    """Number of learned symmetries: the position of the spectrum's most significant gap.

    The rule reads only the spectrum's own structure, so it is scale-free. With ascending
    eigenvalues ``lambda`` and log-gaps ``d_k = log(lambda_k / lambda_{k-1})`` (see :func:`log_gaps`),
    the lower confidence bound of a gap is ``d_k - confidence * gap_stderr[k-1]``. A gap counts when
    that bound is at least ``log(1 / tolerance)``, i.e. the ``k`` smallest eigenvalues lie at most
    ``tolerance`` times below the next one, with confidence. The nullity is the position ``k`` of
    the counting gap with the largest lower bound, or 0 when none counts. Without standard errors
    (``gap_stderr=None``) the bound is the gap itself.

    No threshold on the size of the eigenvalues themselves enters: a clean 100x gap counts whether
    the spectrum sits at 1e-3 or at 1 of its mean.

    Args:
        eigenvalues: ``(m,)`` ascending eigenvalues of the Gram matrix (or variances: any positive
            multiple gives the same answer).
        gap_stderr: ``(m - 1,)`` standard errors of the log-gaps (e.g. from the jackknife
            replicates, :func:`jackknife_stderr` of :func:`log_gaps`); NaN entries count as 0.
        tolerance: Largest ratio ``lambda_{k-1} / lambda_k`` that counts as a gap, in ``(0, 1)``.
        confidence: How many standard errors the gap must clear.

    Returns:
        The nullity: ``m`` for an all-zero spectrum (every direction is trivially a symmetry).

    Example:
        >>> import torch
        >>> estimate_nullity(torch.tensor([0.0101, 0.0113, 0.0124, 1.35, 2.0, 2.6], dtype=torch.float64))
        3
    """
    if not 0.0 < tolerance < 1.0:
        raise ValueError(f"Expected `tolerance` in (0, 1), got {tolerance!r}.")
    if not confidence >= 0.0:
        raise ValueError(f"Expected a non-negative `confidence`, got {confidence!r}.")
    lam = eigenvalues.to(torch.float64).reshape(-1)
    m = lam.numel()
    if m == 0:
        return 0
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("Expected finite eigenvalues to estimate the nullity.")
    if float(lam.clamp_min(0.0).max()) <= 0.0:
        return m
    if m == 1:
        return 0
    bound = log_gaps(lam)
    if gap_stderr is not None:
        se = gap_stderr.to(torch.float64).reshape(-1)
        if se.numel() != m - 1:
            raise ValueError(f"Expected `gap_stderr` of shape ({m - 1},), got {tuple(gap_stderr.shape)}.")
        bound = bound - confidence * torch.nan_to_num(se, nan=0.0, posinf=0.0).clamp_min(0.0)
    threshold = math.log(1.0 / tolerance)
    best = int(bound.argmax())
    return best + 1 if float(bound[best]) >= threshold else 0


def jackknife_stderr(estimate: Tensor, replicates: Tensor, counts: Tensor) -> Tensor:
    """Delete-a-group jackknife standard errors of a statistic, for groups of unequal size.

    With ``N`` samples in groups of ``n_j`` (``h_j = N / n_j``), full-data estimate ``t`` and
    delete-group-``j`` replicates ``t_j``, the pseudo-values are ``p_j = h_j t - (h_j - 1) t_j``,
    the jackknife estimate ``t_J = G t - sum_j (1 - n_j / N) t_j`` and the variance
    ``(1 / G) sum_j (p_j - t_J)^2 / (h_j - 1)`` (the weighted delete-a-group jackknife; with equal
    groups it is the classical ``(G - 1) / G * sum_j (t_j - mean t_j)^2``). Empty groups are left
    out.

    Args:
        estimate: The statistic on all samples, any shape ``S``.
        replicates: ``(G, *S)`` the statistic with each group deleted in turn.
        counts: ``(G,)`` samples per group.

    Returns:
        Standard errors of shape ``S``; NaN where fewer than two groups hold samples.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
        >>> reps = torch.stack([torch.cat([x[:j], x[j + 1:]]).mean() for j in range(4)])
        >>> se = jackknife_stderr(x.mean(), reps, torch.ones(4, dtype=torch.float64))
        >>> round(float(se), 6) == round(float(x.std() / 2), 6)  # the standard error of a mean
        True
    """
    est = estimate.to(torch.float64)
    reps = replicates.to(torch.float64)
    n_j = counts.to(torch.float64).reshape(-1)
    if reps.shape[0] != n_j.numel() or tuple(reps.shape[1:]) != tuple(est.shape):
        raise ValueError(
            f"Expected replicates of shape ({n_j.numel()}, *{tuple(est.shape)}), got {tuple(reps.shape)}."
        )
    keep = n_j > 0
    if int(keep.sum()) < 2:
        return torch.full_like(est, float("nan"))
    reps, n_j = reps[keep], n_j[keep]
    total = n_j.sum()
    groups = n_j.numel()
    shape = (-1,) + (1,) * est.ndim
    h = (total / n_j).reshape(shape)
    pseudo = h * est - (h - 1) * reps
    jack = groups * est - ((1 - n_j / total).reshape(shape) * reps).sum(0)
    var = (((pseudo - jack) ** 2) / (h - 1)).sum(0) / groups
    return var.sqrt()


class RelativeSpectrum(NamedTuple):
    """Generalised eigenvalues of ``G v = lambda T v``, ascending, and their unit eigenvectors."""

    eigenvalues: Tensor  # (m,) ascending; NaN for the directions that do not move the input (at the end)
    eigenvectors: Tensor  # (m, m) columns of unit norm, same order


def relative_spectrum(gram: Tensor, tangent_gram: Tensor, rtol: float = 1e-10) -> RelativeSpectrum:
    """Solve ``G v = lambda T v`` on the range of ``T``: output change per unit of input motion.

    ``lambda = v^T G v / v^T T v`` is the squared output change per squared input motion along the
    generator ``v``. ``T`` may be singular (a generator that moves no input, e.g. a translation of
    inputs that are all zero where it acts): the problem is solved on the span of ``T``'s
    eigenvectors with eigenvalues above ``rtol`` times its largest, by whitening
    ``W = U_r diag(t_r)^(-1/2)`` and the ordinary eigenproblem of ``W^T G W``. The remaining
    directions (``T``'s numerical null space) follow, with eigenvalue NaN (0/0: undefined). A
    well-conditioned ``T`` takes a cheaper path with the same result: its Cholesky factor ``L``
    and the eigenproblem of ``L^-1 G L^-T``.

    Args:
        gram: ``(m, m)`` polarization Gram matrix ``G``.
        tangent_gram: ``(m, m)`` Gram matrix of the tangents ``T``.
        rtol: Relative cut-off of ``T``'s spectrum.

    Returns:
        Eigenvalues ``(m,)`` (ascending, then NaN) and eigenvectors ``(m, m)`` as unit columns.
    """
    g = gram.to(torch.float64)
    t = tangent_gram.to(torch.float64)
    m = g.shape[0]
    if g.shape != (m, m) or t.shape != (m, m):
        raise ValueError(f"Expected two (m, m) matrices, got {tuple(gram.shape)} and {tuple(tangent_gram.shape)}.")
    if not (bool(torch.isfinite(g).all()) and bool(torch.isfinite(t).all())):
        raise ValueError("The Gram matrices have non-finite entries; cannot solve.")
    # each step frees what the next does not need: at most five m x m matrices at a time
    fast = _relative_cholesky(g, t, rtol) if m else None
    return fast if fast is not None else _relative_whitened(g, t, rtol)


def _relative_cholesky(gram: Tensor, tangent_gram: Tensor, rtol: float) -> Optional[RelativeSpectrum]:
    """The fast path of :func:`relative_spectrum`; ``None`` when ``T`` is not well-conditioned."""
    # a well-conditioned T (the usual case) has a Cholesky factor T = L L^T, and L^-1 G L^-T has
    # the same eigenvalues; its diagonal bounds the condition number from below
    chol, info = torch.linalg.cholesky_ex(_symmetrised(tangent_gram))
    if int(info) != 0:
        return None
    low, high = float(chol.diagonal().min()), float(chol.diagonal().max())
    if not low**2 > 1e3 * rtol * high**2:
        return None
    half = torch.linalg.solve_triangular(chol, _symmetrised(gram), upper=False)  # L^-1 G
    mat = torch.linalg.solve_triangular(chol, half.T, upper=False)  # L^-1 G L^-T
    del half
    sym = mat + mat.T
    del mat
    mu, y = torch.linalg.eigh(sym.mul_(0.5))
    del sym
    v = torch.linalg.solve_triangular(chol.T, y, upper=True)  # L^-T y
    del y, chol
    return RelativeSpectrum(mu.clamp_min(0.0), _canonical_signs_(v.div_(v.norm(dim=0, keepdim=True))))


def _relative_whitened(gram: Tensor, tangent_gram: Tensor, rtol: float) -> RelativeSpectrum:
    """:func:`relative_spectrum` on the numerical range of ``T``, by whitening (any ``T``)."""
    m = gram.shape[0]
    t_vals, t_vecs = torch.linalg.eigh(_symmetrised(tangent_gram))
    top = float(t_vals.max()) if m else 0.0
    keep = t_vals > rtol * top if top > 0 else torch.zeros(m, dtype=torch.bool)
    values = torch.full((m,), float("nan"), dtype=torch.float64)
    r = int(keep.sum())
    null = t_vecs[:, ~keep]
    w = t_vecs[:, keep] / t_vals[keep].sqrt()  # (m, r): W^T T W = I
    del t_vecs
    vectors = torch.empty(m, m, dtype=torch.float64)
    if r:
        half = w.T @ _symmetrised(gram)
        mat = half @ w
        del half
        sym = mat + mat.T
        del mat
        mu, y = torch.linalg.eigh(sym.mul_(0.5))
        del sym
        v = w @ y
        del w, y
        values[:r] = mu.clamp_min(0.0)
        vectors[:, :r] = v.div_(v.norm(dim=0, keepdim=True))
        del v
    vectors[:, r:] = null
    return RelativeSpectrum(values, _canonical_signs_(vectors))


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
    subalgebra. ``None`` when generators are not square matrices; NaN (undefined, not a perfect
    score) for fewer than two generators. With more than ``max_pairs``
    pairs, the maximum is taken over a fixed-seed random sample of ``max_pairs`` of them, and pairs
    are processed in chunks of about ``chunk_bytes``, so time and memory stay bounded for large
    algebras.
    """
    if generators.ndim != 3 or generators.shape[-1] != generators.shape[-2]:
        return None
    n, d = generators.shape[0], generators.shape[-1]
    if n < 2:
        return float("nan")
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


def border_share(direction: Tensor, gram: Tensor, border_gram: Tensor, *, border_in_gram: bool) -> float:
    """The share of the variance along ``direction`` that comes from an output's border ring.

    Args:
        direction: ``(m,)`` coefficients of a generator (the report's most invariant one).
        gram: ``(m, m)`` the report's Gram matrix.
        border_gram: ``(m, m)`` the Gram matrix of the ring's rows alone, at the scale of ``gram``.
        border_in_gram: Whether ``gram`` holds the ring's rows (then the whole map's variance is
            ``gram``'s) or leaves them out (then it is ``gram``'s plus the ring's).

    Returns:
        ``ring / whole`` in ``[0, 1]``; NaN where the whole map's variance along ``direction`` is
        zero or not finite (a share of nothing).

    Example:
        >>> import torch
        >>> g, ring = torch.diag(torch.tensor([4.0, 1.0])), torch.diag(torch.tensor([1.0, 1.0]))
        >>> border_share(torch.tensor([1.0, 0.0]), g, ring, border_in_gram=True)
        0.25
    """
    v = direction.to(torch.float64)
    ring = float(v @ border_gram.to(torch.float64) @ v)
    rest = float(v @ gram.to(torch.float64) @ v)
    whole = rest if border_in_gram else rest + ring
    if not (math.isfinite(whole) and whole > 0):
        return math.nan
    return min(max(ring / whole, 0.0), 1.0)
