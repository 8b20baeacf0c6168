"""Update (rows -> Gram partials) and compute (Gram -> report), side by side, and the one-call function.

``LieGGMetric`` is a stateful shell over :func:`_symmetry_update` and :func:`_symmetry_compute`;
:func:`symmetry_report` runs both on one batch, for users without a metric.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Tuple

import torch
from torch import Tensor

from liegg_lightning.actions import GroupAction
from liegg_lightning.functional import spectrum as S
from liegg_lightning.functional.polarization import DerivativeMode, OutputMode, polarization_rows
from liegg_lightning.report import SymmetryReport

__all__ = ["symmetry_report"]

#: float64 Gram matrix, the eigenvectors and eigh's workspace: about three m x m float64 arrays.
GRAM_BYTES_PER_ENTRY = 3 * 8


def _check_memory_budget(num_generators: int, memory_budget: Optional[int]) -> int:
    """Bytes the accumulator and solve need for ``m`` generators; :class:`ValueError` above the budget."""
    estimate = GRAM_BYTES_PER_ENTRY * num_generators * num_generators
    if memory_budget is not None and estimate > memory_budget:
        raise ValueError(
            f"The algebra has m={num_generators} generators: its float64 Gram matrix and solve need about "
            f"{_bytes(estimate)}, over the memory budget of {_bytes(memory_budget)}. "
            "Use a smaller algebra or raise `memory_budget`."
        )
    return estimate


def _bytes(n: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point (never "0.0 MiB")."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _symmetry_update(rows: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gram contribution of a batch of rows ``(B, K, m)``, dropping samples with non-finite rows.

    Returns:
        ``(gram, num_samples, num_rows, num_skipped)``: ``gram = sum r^T r`` in float64 over the
        kept samples and the counts as 0-d float64 tensors on the rows' device (no host
        synchronisation, which would stall a GPU every batch).
    """
    if rows.ndim != 3:
        raise ValueError(f"Expected rows of shape (B, K, m), got shape {tuple(rows.shape)}.")
    r = rows.to(torch.float64)
    finite = torch.isfinite(r).flatten(1).all(1)
    # masking instead of indexing: a non-finite sample contributes exact zeros
    r = torch.where(finite[:, None, None], r, 0.0)
    flat = r.reshape(-1, r.shape[-1])
    num_samples = finite.sum().to(torch.float64)
    return flat.T @ flat, num_samples, num_samples * r.shape[1], finite.numel() - num_samples


def _symmetry_compute(
    gram: Tensor,
    num_samples: int,
    num_rows: int,
    num_skipped: int,
    action: GroupAction,
    *,
    reference: Optional[Tensor] = None,
    known: Optional[Mapping[str, Tensor]] = None,
    nullity_tolerance: float = 1e-2,
    nullity_min_gap: float = 10.0,
) -> SymmetryReport:
    """Solve the accumulated Gram matrix and read every measure off its spectrum.

    Args:
        gram: ``(m, m)`` ``sum r^T r`` over all rows.
        num_samples: Input samples (``N``) behind ``gram``.
        num_rows: Rows behind ``gram``.
        num_skipped: Samples dropped as non-finite.
        action: The group action, to shape generators.
        reference: Orthonormal ``(k, m)`` coefficient vectors of the reference algebra.
        known: ``name -> (m,)`` coefficient vectors for ``known_variances``.
        nullity_tolerance: See :func:`~liegg_lightning.functional.spectrum.estimate_nullity`.
        nullity_min_gap: See :func:`~liegg_lightning.functional.spectrum.estimate_nullity`.

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction
        >>> report = _symmetry_compute(torch.eye(4, dtype=torch.float64), 4, 4, 0, VectorAction(dim=2))
        >>> report.nullity, round(report.symmetry_variance, 3)
        (0, 0.25)
    """
    gram = gram.detach().to("cpu", torch.float64)
    evals, evecs = S.solve_spectrum(gram)
    n = max(int(num_samples), 1)
    variances = evals / n
    mean = evals.mean()
    normalized = evals / mean if float(mean) > 0 else torch.zeros_like(evals)
    generators = action.to_generator(evecs.T.contiguous())
    nullity = S.estimate_nullity(evals, nullity_tolerance, nullity_min_gap)
    biases = symmetry_bias = sub_bias = None
    if reference is not None:
        ref = reference.to(torch.float64)
        biases = S.reference_biases(evecs, ref)
        symmetry_bias = float(biases[0])
        sub_bias = S.subspace_bias(evecs[:, : ref.shape[0]], ref)
    known_var = S.known_variances(gram, n, known) if known else {}
    return SymmetryReport(
        singular_values=evals.sqrt(),
        variances=variances,
        normalized_variances=normalized,
        generators=generators,
        symmetry_variance=float(variances[0]),
        nullity=nullity,
        biases=biases,
        symmetry_bias=symmetry_bias,
        subspace_bias=sub_bias,
        closure_error=S.closure_error(generators[:nullity]),
        known_variances=known_var,
        num_samples=int(num_samples),
        num_rows=int(num_rows),
        num_skipped=int(num_skipped),
    )


def symmetry_report(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    action: GroupAction,
    *,
    reference_algebra: Optional[str | Tensor] = None,
    output_mode: OutputMode = "jacobian",
    num_projections: Optional[int] = None,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    derivative: DerivativeMode = "auto",
    generator: Optional[torch.Generator] = None,
) -> SymmetryReport:
    """The symmetry report of ``model`` on one batch of ``inputs``: rows, Gram matrix and solve in one call.

    For data that does not fit one batch, use :class:`~liegg_lightning.LieGGMetric` or
    :func:`~liegg_lightning.analyze`, which stream batches into the same Gram matrix.

    Args:
        model: Any callable mapping a batch ``(B, ...)`` to outputs ``(B, ...)``.
        inputs: The batch.
        action: How the candidate algebra acts on the inputs.
        reference_algebra: Name or basis of the expected symmetry, for the biases.
        output_mode: ``"jacobian"``, ``"sum"`` or ``"random"`` (see :func:`polarization_rows`).
        num_projections: Projections for ``"random"``.
        output_transform: Applied to the model output before differentiating.
        derivative: ``"auto"``, ``"reverse"`` or ``"forward"``.
        generator: Random generator for ``"random"``.

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction
        >>> f = lambda x: (x ** 2).sum(1, keepdim=True)
        >>> symmetry_report(f, torch.randn(32, 3), VectorAction(dim=3), reference_algebra="so").nullity
        3
    """
    reference = None if reference_algebra is None else action.reference_vectors(reference_algebra)
    rows = polarization_rows(
        model, inputs, action, output_mode=output_mode, num_projections=num_projections, generator=generator,
        output_transform=output_transform, derivative=derivative,
    )
    gram, num_samples, num_rows, num_skipped = _symmetry_update(rows)
    return _symmetry_compute(gram, int(num_samples), int(num_rows), int(num_skipped), action, reference=reference)
