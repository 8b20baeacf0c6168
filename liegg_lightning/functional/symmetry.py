"""Update (rows -> Gram partials) and compute (Gram -> report), side by side, and the one-call function.

``LieGGMetric`` is a stateful shell over :func:`_symmetry_update` and :func:`_symmetry_compute`;
:func:`symmetry_report` runs both on one batch, for users without a metric.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from liegg_lightning.actions import GroupAction, VectorAction
from liegg_lightning.functional import spectrum as S
from liegg_lightning.functional.polarization import DerivativeMode, OutputMode, polarization_rows
from liegg_lightning.report import SymmetryReport

__all__ = ["symmetry_report"]

#: The states of a metric without jackknife groups: the float64 Gram matrices of the rows and of the tangents.
BASE_STATES = 2
#: ``m x m`` float64 matrices an analysis needs beside its states at its peak: the solve's symmetrised
#: copy, eigenvectors and ``eigh`` workspace (two), then the generators the report keeps (with the
#: relative spectrum solved first, its generators and the solve's eigenvectors); an update needs two
#: (one product and the batch's sum), the jackknife three.
WORK_MATRICES = 5
#: Bytes per ``m^2`` of the smallest analysis (no jackknife, no border ring).
GRAM_BYTES_PER_ENTRY = 8 * (BASE_STATES + WORK_MATRICES)
#: The scalar states and their defaults (float64 numbers), with room to spare.
SMALL_STATES = 32


def _analysis_bytes(num_generators: int, states: int = BASE_STATES, groups: int = 0) -> int:
    """Peak bytes of an analysis: its ``states`` and ``groups`` ``m x m`` float64 states and the work.

    The work is :data:`WORK_MATRICES` more ``m x m`` matrices; the small states (counts per group,
    scalars, TorchMetrics' one-number defaults) are counted too. A batch's rows ``(B, K, m)`` are
    the caller's and are not.
    """
    m2 = num_generators * num_generators
    return 8 * ((states + groups + WORK_MATRICES) * m2 + groups + SMALL_STATES)


def _check_memory_budget(num_generators: int, memory_budget: Optional[int], states: int = BASE_STATES) -> int:
    """Peak bytes of the states, update and solve for ``m`` generators; :class:`ValueError` above the budget."""
    estimate = _analysis_bytes(num_generators, states)
    if memory_budget is not None and estimate > memory_budget:
        raise ValueError(
            f"The algebra has m={num_generators} generators: its float64 Gram matrices and solve "
            f"({states + WORK_MATRICES} matrices of m x m) need about {_bytes(estimate)}, over the memory budget "
            f"of {_bytes(memory_budget)}. Use a smaller algebra or raise `memory_budget`."
        )
    return estimate


def _jackknife_groups(
    num_generators: int, requested: int, memory_budget: Optional[int], states: int = BASE_STATES
) -> int:
    """How many jackknife groups fit: ``requested`` partial ``m x m`` float64 Gram matrices beside the rest.

    With a budget, :func:`_analysis_bytes` (about ``(states + G + WORK_MATRICES) * 8 * m^2``) must
    fit it; fewer groups are kept when they do not, and none when fewer than two
    would (a jackknife needs two).
    """
    if requested < 2:
        return 0
    if memory_budget is None:
        return requested
    per_group = _analysis_bytes(num_generators, states, 1) - _analysis_bytes(num_generators, states)
    fit = (memory_budget - _analysis_bytes(num_generators, states)) // per_group
    groups = min(requested, int(fit))
    return groups if groups >= 2 else 0


def _bytes(n: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point (never "0.0 MiB")."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


#: Exponent of an accumulator that holds nothing yet: below every float64 exponent, so rescaling
#: an empty accumulator to any real exponent multiplies it by an exact 0 (it is 0 anyway).
EMPTY_EXPONENT = -4096.0


def _max_exponent(x: Tensor) -> Tensor:
    """``e`` with ``max|x| = f * 2^e``, ``0.5 <= f < 1`` (0-d float64); :data:`EMPTY_EXPONENT` for all zeros."""
    if x.numel():
        low, high = torch.aminmax(x)  # no |x| copy: an m x m Gram matrix would need one more
        top = torch.maximum(high, -low)
    else:
        top = torch.zeros((), dtype=x.dtype, device=x.device)
    _, exp = torch.frexp(top.to(torch.float64))
    return torch.where(top > 0, exp.to(torch.float64), torch.full_like(top, EMPTY_EXPONENT, dtype=torch.float64))


def _rescale(x: Tensor, from_exponent: Tensor, to_exponent: Tensor) -> Tensor:
    """A scaled Gram matrix ``x`` (value ``x * 4^from_exponent``) re-expressed at ``to_exponent >= from_exponent``.

    Multiplying by a power of two is exact (down to the subnormal range, where only entries
    ``2^-1000`` times smaller than the largest accumulated ones are lost).
    """
    shift = (2.0 * (from_exponent - to_exponent)).to(x.dtype)
    return torch.ldexp(x, shift)


def _nonzero(shift: Tensor) -> bool:
    """Whether scaling by ``2^shift`` may change anything.

    On the CPU only a nonzero shift does (read for free); on an accelerator reading it would stall
    the device, so it is applied anyway.
    """
    return shift.device.type != "cpu" or float(shift) != 0.0


def _rescale_(x: Tensor, from_exponent: Tensor, to_exponent: Tensor) -> None:
    """:func:`_rescale` in place (the same products, so the same bits), skipped when it is the identity."""
    shift = (2.0 * (from_exponent - to_exponent)).to(x.dtype)
    if x.numel() and _nonzero(shift):
        x.ldexp_(shift)


def _add_scaled(state: Tensor, increment: Tensor, shift: Tensor) -> None:
    """``state += increment * 2^shift`` in place; ``increment`` is a temporary and is scaled in place."""
    if _nonzero(shift):
        increment.ldexp_(shift)
    state.add_(increment)


class SymmetryUpdate(NamedTuple):
    """One batch's contribution to the metric's states, its Gram matrices scaled by ``4^-exponent``.

    The value of a Gram matrix is ``gram * 4^exponent``: the rows are divided by ``2^exponent``
    (a power of two, so exactly) before they are multiplied, which keeps the products in range
    whatever the scale of the outputs (1e-170 would underflow, 1e+170 overflow, unscaled).
    """

    gram: Tensor  #: (m, m) sum of r^T r over the kept samples, scaled
    num_samples: Tensor  #: 0-d float64: samples kept
    num_rows: Tensor  #: 0-d float64: rows kept
    num_skipped: Tensor  #: 0-d float64: samples dropped as non-finite
    exponent: Tensor  #: 0-d float64: the scale's exponent (EMPTY_EXPONENT when every row is zero)
    group_grams: Tensor  #: (G, m, m) partial Gram matrices of the jackknife groups, same scale
    group_counts: Tensor  #: (G,) samples per group
    finite: Tensor  #: (B,) bool: the samples kept


#: The prime of the sample hash below (2^31 - 1): every product of two residues fits an int64.
_HASH_PRIME = 2147483647


def _sample_groups(keys: Tensor, num_groups: int) -> Tensor:
    """Jackknife group ``(B,)`` of each sample: an exact integer hash of its bits, modulo ``num_groups``.

    The group depends on the sample alone, not on its batch, its position or the process that saw
    it, so the partial Gram matrices (and the standard errors) are the same for any batch size or
    number of processes. The hash is ``sum_f c_f * bits_f mod p`` with fixed multipliers, in exact
    int64 arithmetic (no rounding, no dependence on the summation order), then mixed.
    """
    flat = keys.detach().reshape(keys.shape[0], -1).contiguous()
    if flat.is_floating_point():
        itype = {8: torch.int64, 4: torch.int32, 2: torch.int16}[flat.element_size()]
        flat = flat.view(itype)
    bits = flat.to(torch.int64)
    p = _HASH_PRIME
    pos = torch.arange(bits.shape[1], dtype=torch.int64, device=bits.device)
    mult = (pos * 48271 + 12345) % p + 1
    h = (((bits % p) * mult) % p).sum(1) % p  # each term < 2^31: the sum fits an int64
    h = (h * 16807 + 1) % p
    h = ((h ^ (h >> 11)) * 48271) % p
    return h % num_groups


class ScaledRows(NamedTuple):
    """A batch of rows ready to multiply: float64, non-finite samples zeroed, divided by ``2^exponent``."""

    rows: Tensor  #: (B, K, m) float64, scaled
    finite: Tensor  #: (B,) bool: the samples kept
    exponent: Tensor  #: 0-d float64 (EMPTY_EXPONENT when every row is zero)


def _scaled_rows(rows: Tensor) -> ScaledRows:
    """Rows ``(B, K, m)`` in float64 with non-finite samples zeroed, scaled by a power of two (exactly)."""
    if rows.ndim != 3:
        raise ValueError(f"Expected rows of shape (B, K, m), got shape {tuple(rows.shape)}.")
    r = rows.to(torch.float64)
    finite = torch.isfinite(r).flatten(1).all(1)
    # masking instead of indexing: a non-finite sample contributes exact zeros
    r = torch.where(finite[:, None, None], r, 0.0)
    exponent = _max_exponent(r)
    empty = exponent <= EMPTY_EXPONENT
    # subnormal rows: a shift past 2^1000 would overflow the factor itself
    exponent = torch.where(empty, exponent, exponent.clamp_min(-1000.0))
    r = torch.ldexp(r, -torch.where(empty, torch.zeros_like(exponent), exponent))
    return ScaledRows(r, finite, exponent)


def _groups(keys: Tensor, finite: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """Each sample's jackknife group ``(B,)`` (see :func:`_sample_groups`) and the kept samples per group ``(G,)``."""
    if keys.shape[0] != finite.shape[0]:
        raise ValueError(f"Expected group keys for {finite.shape[0]} samples, got shape {tuple(keys.shape)}.")
    ids = _sample_groups(keys, num_groups).to(finite.device)
    onehot = torch.nn.functional.one_hot(ids, num_groups).to(torch.float64) * finite[:, None]
    return ids, onehot.sum(0)


def _group_products(rows: Tensor, ids: Tensor, num_groups: int) -> Iterator[Tuple[int, Tensor]]:
    """Each non-empty group's Gram matrix ``(m, m)`` of scaled rows ``(B, K, m)``, one at a time.

    Only one ``m x m`` product is alive at a time, whatever the number of groups. On the CPU a
    group's rows are selected (the flops of a single Gram matrix in all); on an accelerator they
    are masked instead, so that nothing is read back to the host (``G`` times the, cheap, flops).
    """
    m = rows.shape[-1]
    for g in range(num_groups):
        if rows.device.type == "cpu":
            part = rows[ids == g].reshape(-1, m)
            if not part.shape[0]:
                continue  # an empty group adds exact zeros
        else:
            part = (rows * (ids == g).to(rows.dtype)[:, None, None]).reshape(-1, m)
        yield g, part.T @ part


def _gram(rows: Tensor) -> Tensor:
    """``sum r^T r`` ``(m, m)`` over every row of ``(B, K, m)``."""
    flat = rows.reshape(-1, rows.shape[-1])
    return flat.T @ flat


def _symmetry_update(rows: Tensor, num_groups: int = 0, group_keys: Optional[Tensor] = None) -> SymmetryUpdate:
    """Gram contribution of a batch of rows ``(B, K, m)``, dropping samples with non-finite rows.

    Args:
        rows: Polarization rows.
        num_groups: Jackknife groups ``G`` (0: none).
        group_keys: ``(B, ...)`` what decides each sample's group (see :func:`_sample_groups`): the
            inputs, when known; the rows otherwise.

    Returns:
        A :class:`SymmetryUpdate` on the rows' device. Nothing is read back to the host on an
        accelerator (which would stall it every batch). ``LieGGMetric`` streams the same products
        into its states instead (:func:`_group_products`), without the ``(G, m, m)`` temporary.
    """
    scaled = _scaled_rows(rows)
    r, finite = scaled.rows, scaled.finite
    k, m = r.shape[1], r.shape[2]
    num_samples = finite.sum().to(torch.float64)
    if num_groups > 0:
        ids, group_counts = _groups(rows if group_keys is None else group_keys, finite, num_groups)
        group_grams = r.new_zeros(num_groups, m, m)
        for g, product in _group_products(r, ids, num_groups):
            group_grams[g] = product
        gram = group_grams.sum(0)
    else:
        gram = _gram(r)
        group_grams = r.new_zeros(0, m, m)
        group_counts = r.new_zeros(0)
    return SymmetryUpdate(
        gram, num_samples, num_samples * k, finite.numel() - num_samples, scaled.exponent, group_grams,
        group_counts, finite,
    )


def _scaled(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(x * 4^-e, e)`` for a Gram matrix ``x``, with ``e`` making the largest entry at most 1."""
    e = _max_exponent(x)
    empty = e <= EMPTY_EXPONENT
    e = torch.where(empty, e, torch.ceil(e / 2.0).clamp_min(-500.0))
    return torch.ldexp(x.to(torch.float64), -2.0 * torch.where(empty, torch.zeros_like(e), e)), e


def _kronecker_tangents(action: GroupAction, x: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """``S`` ``(d, d)`` with ``action.tangent_gram(x, mask) == kron(I_dim, S)`` exactly, for a ``VectorAction``.

    ``None`` for any other action (or a subclass with its own ``tangent_gram``), on an accelerator
    (where the dense form is cheap and checking ``S`` would stall the device), and where ``S`` is
    not finite (``kron`` would then spread NaN over the zero blocks). The ``m x m`` matrix is never
    formed: the metric adds ``S`` to the diagonal blocks of its state.
    """
    if type(action).tangent_gram is not VectorAction.tangent_gram or x.device.type != "cpu":
        return None
    assert isinstance(action, VectorAction)
    # as VectorAction.tangent_gram forms it, so the same bits
    xs = x.to(torch.float64).reshape(x.shape[0], -1, action.dim)
    if action.affine:
        xs = torch.cat([xs, torch.ones_like(xs[..., :1])], dim=-1)
    if mask is not None:
        xs = torch.where(mask.reshape(-1, 1, 1), xs, 0.0)
    s = torch.einsum("bcd,bce->de", xs, xs)
    return s if bool(torch.isfinite(s).all()) else None


def _diagonal_blocks(x: Tensor, blocks: int) -> Tensor:
    """A view ``(d, d, blocks)`` of the ``blocks`` diagonal ``d x d`` blocks of a contiguous ``(m, m)`` matrix."""
    d = x.shape[0] // blocks
    return x.view(blocks, d, blocks, d).diagonal(dim1=0, dim2=2)


def _unscale(x: Tensor, shift: float) -> Tensor:
    """``x * 2^shift`` in two steps, so that the factor itself never overflows or underflows."""
    half = float(int(shift / 2))
    x = torch.ldexp(x, torch.tensor(half, dtype=x.dtype))
    return torch.ldexp(x, torch.tensor(shift - half, dtype=x.dtype))


def _input_independent(gram: Tensor, num_samples: int) -> bool:
    """True when every accumulated row is exactly zero: the outputs do not depend on the input."""
    return num_samples > 0 and float(gram.diagonal().abs().sum()) == 0.0


def _symmetry_compute(
    gram: Tensor,
    num_samples: int,
    num_rows: int,
    num_skipped: int,
    action: GroupAction,
    *,
    exponent: float = 0.0,
    group_grams: Optional[Tensor] = None,
    group_counts: Optional[Tensor] = None,
    tangent_gram: Optional[Tensor] = None,
    tangent_exponent: float = 0.0,
    reference: Optional[Tensor] = None,
    known: Optional[Mapping[str, Tensor]] = None,
    nullity_tolerance: float = 0.1,
    nullity_confidence: float = 2.0,
    warn: bool = True,
    border_gram: Optional[Tensor] = None,
    border_in_gram: bool = True,
) -> SymmetryReport:
    """Solve the accumulated Gram matrix and read every measure off its spectrum.

    Every Gram matrix comes as a scaled matrix and an exponent: its value is ``gram * 4^exponent``.
    The spectrum is solved at the stored scale (eigenvectors, normalised variances, the nullity and
    the biases do not depend on it) and the variances are scaled back with :func:`torch.ldexp`, so
    a value is infinite or zero only where float64 cannot hold it.

    Args:
        gram: ``(m, m)`` ``sum r^T r`` over all rows (scaled by ``4^-exponent``).
        num_samples: Input samples (``N``) behind ``gram``.
        num_rows: Rows behind ``gram``.
        num_skipped: Samples dropped as non-finite.
        action: The group action, to shape generators.
        exponent: Scale exponent of ``gram`` and ``group_grams``.
        group_grams: ``(G, m, m)`` partial Gram matrices of the jackknife groups (summing to
            ``gram``), for the standard errors; ``None`` or ``G < 2`` gives NaN standard errors.
        group_counts: ``(G,)`` samples per group.
        tangent_gram: ``(m, m)`` ``sum_x <A_i(x), A_j(x)>`` for the relative variances (scaled by
            ``4^-tangent_exponent``); ``None`` leaves them out.
        tangent_exponent: Scale exponent of ``tangent_gram``.
        reference: Orthonormal ``(k, m)`` coefficient vectors of the reference algebra.
        known: ``name -> (m,)`` coefficient vectors for ``known_variances``.
        nullity_tolerance: ``tolerance`` of :func:`~liegg_lightning.functional.spectrum.estimate_nullity`.
        nullity_confidence: ``confidence`` of :func:`~liegg_lightning.functional.spectrum.estimate_nullity`.
        warn: Warn when the outputs do not depend on the input.
        border_gram: ``(m, m)`` Gram matrix of the rows of the output's border ring, at the scale of
            ``gram``, for ``border_share``; ``None`` gives NaN.
        border_in_gram: Whether ``gram`` holds the ring's rows too (``ImageAction(border=0)``) or
            leaves them out (``border > 0``).

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction
        >>> report = _symmetry_compute(torch.eye(4, dtype=torch.float64), 4, 4, 0, VectorAction(dim=2))
        >>> report.nullity, round(report.symmetry_variance, 3)
        (0, 0.25)
    """
    gram = gram.detach().to("cpu", torch.float64)
    scale = 2.0 * float(exponent) if float(exponent) > EMPTY_EXPONENT else 0.0
    m = gram.shape[0]
    n = max(int(num_samples), 1)
    # the relative spectrum first: its working matrices are gone before the solve's are made
    relative_variances, relative_generators = _relative(gram, tangent_gram, tangent_exponent, scale, action)
    evals, evecs = S.solve_spectrum(gram)
    variances = _unscale(evals / n, scale)
    constant = _input_independent(gram, int(num_samples))
    nan = float("nan")
    if constant and warn:
        rank_zero_warn(
            "LieGG: the outputs do not depend on the input (every polarization row is exactly zero): every "
            "generator is trivially a symmetry, so the nullity is m and the biases and normalised variances "
            "are undefined (NaN)."
        )
    mean = evals.mean()
    normalized = evals / mean if float(mean) > 0 else torch.full_like(evals, nan)
    stderr, gap_stderr = _jackknife(gram, evals, num_samples, group_grams, group_counts, constant)
    stderr = _unscale(stderr, scale)
    nullity = S.estimate_nullity(evals, gap_stderr, tolerance=nullity_tolerance, confidence=nullity_confidence)
    biases, symmetry_bias, sub_bias = _biases(evecs, reference, constant)
    known_var = {k: float(_unscale(torch.tensor(v, dtype=torch.float64), scale))
                 for k, v in S.known_variances(gram, n, known).items()} if known else {}
    border_share = nan
    if border_gram is not None and m:
        ring = border_gram.detach().to("cpu", torch.float64)
        border_share = S.border_share(evecs[:, 0], gram, ring, border_in_gram=border_in_gram)
    generators = action.to_generator(evecs.T.contiguous())
    del evecs  # the generators hold the same numbers: one m x m matrix less for the closure error

    return SymmetryReport(
        singular_values=_unscale(evals.sqrt(), scale / 2.0),
        variances=variances,
        normalized_variances=normalized,
        generators=generators,
        symmetry_variance=float(variances[0]),
        nullity=nullity,
        biases=biases,
        symmetry_bias=symmetry_bias,
        subspace_bias=sub_bias,
        closure_error=action.closure_error(generators[:nullity]),
        known_variances=known_var,
        num_samples=int(num_samples),
        num_rows=int(num_rows),
        num_skipped=int(num_skipped),
        variance_stderr=stderr,
        symmetry_variance_stderr=float(stderr[0]) if m else nan,
        relative_variances=relative_variances,
        relative_generators=relative_generators,
        border_share=border_share,
    )


def _relative(
    gram: Tensor, tangent_gram: Optional[Tensor], tangent_exponent: float, scale: float, action: GroupAction
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The relative variances (scaled back) and generators; ``None`` without tangents.

    Nothing for a non-finite ``gram``: the solve then raises its own error.
    """
    if tangent_gram is None or not bool(torch.isfinite(gram).all()):
        return None, None
    t = tangent_gram.detach().to("cpu", torch.float64)
    rel = S.relative_spectrum(gram, t)
    t_scale = 2.0 * float(tangent_exponent) if float(tangent_exponent) > EMPTY_EXPONENT else 0.0
    return _unscale(rel.eigenvalues, scale - t_scale), action.to_generator(rel.eigenvectors.T.contiguous())


def _jackknife(
    gram: Tensor,
    evals: Tensor,
    num_samples: int,
    group_grams: Optional[Tensor],
    group_counts: Optional[Tensor],
    constant: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Standard errors ``(m,)`` of ``evals / N`` (at the stored scale) and of the log-gaps, from the groups.

    The spectrum is solved with each group left out in turn; NaN (and ``None``) with fewer than two
    non-empty groups or input-independent outputs.
    """
    m = gram.shape[0]
    stderr = torch.full((m,), float("nan"), dtype=torch.float64)
    if group_grams is None or group_counts is None or group_grams.shape[0] < 2 or constant:
        return stderr, None
    counts = group_counts.detach().to("cpu", torch.float64).reshape(-1)
    if int((counts > 0).sum()) < 2:
        return stderr, None
    # one group at a time (to the CPU too): three m x m temporaries, whatever the number of groups
    reps = torch.stack([_left_out_spectrum(gram, group_grams[j].detach()) for j in range(len(group_grams))])
    rep_n = (float(num_samples) - counts).clamp_min(1.0)[:, None]
    n = max(int(num_samples), 1)
    stderr = S.jackknife_stderr(evals / n, reps / rep_n, counts)
    return stderr, S.jackknife_stderr(S.log_gaps(evals), S.log_gaps(reps), counts)


def _biases(
    evecs: Tensor, reference: Optional[Tensor], constant: bool
) -> Tuple[Optional[Tensor], Optional[float], Optional[float]]:
    """Each generator's bias, the symmetry bias and the subspace bias (``None`` without a reference)."""
    if reference is None:
        return None, None, None
    ref = reference.to(torch.float64)
    if constant:
        nan = float("nan")
        return torch.full((evecs.shape[1],), nan, dtype=torch.float64), nan, nan
    biases = S.reference_biases(evecs, ref)
    return biases, float(biases[0]), S.subspace_bias(evecs[:, : ref.shape[0]], ref)


def _left_out_spectrum(gram: Tensor, group: Tensor) -> Tensor:
    """Eigenvalues (clamped at 0) of ``gram`` with one group's partial Gram matrix taken out."""
    part = gram - group.to("cpu", torch.float64)
    sym = part + part.T
    del part
    return torch.linalg.eigvalsh(sym.mul_(0.5)).clamp_min(0.0)  # 0.5 * (x + x^T), as the solve does


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
    jackknife_groups: int = 8,
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
        jackknife_groups: Groups of samples for the standard errors (0: none).

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
    update = _symmetry_update(rows, num_groups=jackknife_groups, group_keys=inputs)
    with torch.inference_mode(False):
        x = inputs.detach().to(rows.device)
        tangent, tangent_exponent = _scaled(action.tangent_gram(x, mask=update.finite.to(x.device)))
    return _symmetry_compute(
        update.gram, int(update.num_samples), int(update.num_rows), int(update.num_skipped), action,
        exponent=float(update.exponent), group_grams=update.group_grams, group_counts=update.group_counts,
        tangent_gram=tangent, tangent_exponent=float(tangent_exponent), reference=reference,
    )
