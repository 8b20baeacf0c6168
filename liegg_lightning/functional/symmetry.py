"""Update (rows -> Gram states) and compute (Gram states -> report), side by side, and the one-call function.

The one accumulation path: a :class:`GramState` (the scaled Gram matrix of an analysed output, its
jackknife groups, its border ring and its counts) is made by :func:`new_state` and grown in place
by :func:`accumulate`, batch after batch; the inputs' :class:`TangentState` by
:func:`accumulate_tangents`; :func:`solve_states` turns them into a report (through the public
solve :func:`symmetry_compute`). ``LieGGMetric`` keeps one ``GramState`` per analysed output (the
model's, or each layer's) as TorchMetrics states and runs these functions on them;
:func:`symmetry_report` runs them on one batch, for users without a metric.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from liegg_lightning.actions import GroupAction, VectorAction
from liegg_lightning.functional import spectrum as S
from liegg_lightning.functional.polarization import DerivativeMode, OutputMode, polarization_rows
from liegg_lightning.report import SymmetryReport

__all__ = [
    "GramState",
    "TangentState",
    "accumulate",
    "accumulate_tangents",
    "new_state",
    "new_tangent_state",
    "rescale",
    "solve_states",
    "symmetry_compute",
    "symmetry_report",
    "symmetry_update",
]

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


def rescale(x: Tensor, from_exponent: Tensor, to_exponent: Tensor) -> Tensor:
    """A scaled Gram matrix ``x`` (value ``x * 4^from_exponent``) re-expressed at ``to_exponent >= from_exponent``.

    Multiplying by a power of two is exact (down to the subnormal range, where only entries
    ``2^-1000`` times smaller than the largest accumulated ones are lost).
    """
    shift = (2.0 * (from_exponent - to_exponent)).to(x.dtype)
    # stacked states (one exponent per analysed output): the shift broadcasts over each one's matrices
    shift = shift.reshape(tuple(shift.shape) + (1,) * (x.ndim - shift.ndim))
    return torch.ldexp(x, shift)


def _nonzero(shift: Tensor) -> bool:
    """Whether scaling by ``2^shift`` may change anything.

    On the CPU only a nonzero shift does (read for free); on an accelerator reading it would stall
    the device, so it is applied anyway.
    """
    return shift.device.type != "cpu" or float(shift) != 0.0


def _rescale_(x: Tensor, from_exponent: Tensor, to_exponent: Tensor) -> None:
    """:func:`rescale` in place (the same products, so the same bits), skipped when it is the identity."""
    shift = (2.0 * (from_exponent - to_exponent)).to(x.dtype)
    if x.numel() and _nonzero(shift):
        x.ldexp_(shift)


def _add_scaled(state: Tensor, increment: Tensor, shift: Tensor) -> None:
    """``state += increment * 2^shift`` in place; ``increment`` is a temporary and is scaled in place."""
    if _nonzero(shift):
        increment.ldexp_(shift)
    state.add_(increment)


class GramState(NamedTuple):
    """The accumulated Gram matrices of one analysed output, scaled by ``4^-exponent``; grown in place.

    The value of a Gram matrix is ``gram * 4^exponent``: the rows are divided by ``2^exponent``
    (a power of two, so exactly) before they are multiplied, which keeps the products in range
    whatever the scale of the outputs (1e-170 would underflow, 1e+170 overflow, unscaled). The
    fields may be views into larger (stacked) tensors: :func:`accumulate` writes through them.
    """

    gram: Tensor  #: (m, m) sum of r^T r over the kept samples, scaled
    group_grams: Tensor  #: (G, m, m) partial Gram matrices of the jackknife groups, same scale
    group_counts: Tensor  #: (G,) samples per group
    exponent: Tensor  #: 0-d float64: the scale's exponent (EMPTY_EXPONENT while every row was zero)
    border_gram: Tensor  #: (m, m) Gram matrix of the border ring's rows, same scale; (0, 0) without a ring
    border_samples: Tensor  #: 0-d: samples whose ring rows were added
    num_samples: Tensor  #: 0-d float64: samples kept
    num_rows: Tensor  #: 0-d float64: rows kept
    num_skipped: Tensor  #: 0-d float64: samples dropped as non-finite


class TangentState(NamedTuple):
    """The inputs' tangent Gram matrix ``sum_x <A_i(x), A_j(x)>``, scaled by ``4^-exponent``, for relative variances."""

    gram: Tensor  #: (m, m)
    exponent: Tensor  #: 0-d float64
    num_samples: Tensor  #: 0-d float64: samples added


def new_state(
    num_generators: int, num_groups: int = 0, border: bool = False, device: Optional[torch.device] = None
) -> GramState:
    """An empty :class:`GramState` (float64) for ``m`` generators, ``G`` jackknife groups and maybe a border ring."""
    m, size = num_generators, num_generators if border else 0

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(shape, dtype=torch.float64, device=device)

    empty = torch.full((), EMPTY_EXPONENT, dtype=torch.float64, device=device)
    return GramState(zeros(m, m), zeros(num_groups, m, m), zeros(num_groups), empty, zeros(size, size), zeros(),
                     zeros(), zeros(), zeros())


def new_tangent_state(num_generators: int, device: Optional[torch.device] = None) -> TangentState:
    """An empty :class:`TangentState` for ``m`` generators."""
    m = num_generators
    empty = torch.full((), EMPTY_EXPONENT, dtype=torch.float64, device=device)
    return TangentState(torch.zeros(m, m, dtype=torch.float64, device=device), empty,
                        torch.zeros((), dtype=torch.float64, device=device))


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


def accumulate(
    state: GramState, rows: Tensor, group_keys: Optional[Tensor] = None, border_rows: Optional[Tensor] = None
) -> Tensor:
    """Add a batch of rows ``(B, K, m)`` to ``state`` in place, everything brought to one scale first.

    Samples with non-finite rows are dropped and counted. One ``m x m`` product is alive at a time
    (two with the jackknife: a group's and the batch's sum), whatever the number of groups; nothing
    is read back to the host on an accelerator (which would stall it every batch).

    Args:
        state: The accumulated states (their dtype and device are kept).
        rows: Polarization rows.
        group_keys: ``(B, ...)`` what decides each sample's jackknife group (see
            :func:`_sample_groups`): the inputs, when known; the rows otherwise.
        border_rows: ``(B, K_ring, m)`` rows of the output's border ring, for ``border_share``
            (ignored where ``state`` has no ring).

    Returns:
        ``(B,)`` bool: the samples kept.
    """
    scaled = _scaled_rows(rows)
    ring = None
    if border_rows is not None and state.border_gram.numel():
        # the ring's rows of the samples kept (and whose ring rows are finite)
        kept = scaled.finite.to(border_rows.device)[:, None, None]
        ring = _scaled_rows(torch.where(kept, border_rows.to(torch.float64), math.nan))
    # dtype first: a float64 tensor cannot move to a device without float64 (MPS, float32 states)

    def here(t: Tensor) -> Tensor:
        return t.to(state.gram.dtype).to(state.gram.device)

    exponent = here(scaled.exponent)
    common = torch.maximum(state.exponent, exponent)
    if ring is not None:
        common = torch.maximum(common, here(ring.exponent))
    for matrix in (state.gram, state.group_grams, state.border_gram):
        _rescale_(matrix, state.exponent, common)
    state.exponent.copy_(common)
    if ring is not None:
        _add_scaled(state.border_gram, here(_gram(ring.rows)), 2.0 * (here(ring.exponent) - common))
        state.border_samples.add_(here(ring.finite.sum().to(torch.float64)))
    shift = 2.0 * (exponent - common)
    keys = rows if group_keys is None else group_keys
    batch = _add_group_products(state, scaled, keys, shift, here) if state.group_grams.shape[0] else _gram(scaled.rows)
    if batch is not None:
        _add_scaled(state.gram, here(batch), shift)
    kept = scaled.finite.sum().to(torch.float64)
    state.num_samples.add_(here(kept))
    state.num_rows.add_(here(kept * scaled.rows.shape[1]))
    state.num_skipped.add_(here(scaled.finite.numel() - kept))
    return scaled.finite


def _add_group_products(
    state: GramState, scaled: ScaledRows, keys: Tensor, shift: Tensor, here: Callable[[Tensor], Tensor]
) -> Optional[Tensor]:
    """Add each group's product to its partial Gram matrix; their sum (unscaled), ``None`` for no rows."""
    num_groups = state.group_grams.shape[0]
    ids, counts = _groups(keys, scaled.finite, num_groups)
    total: Optional[Tensor] = None
    for g, product in _group_products(scaled.rows, ids, num_groups):
        # the batch's sum first, in the order `group_grams.sum(0)` adds them
        total = product.clone() if total is None else total.add_(product)
        _add_scaled(state.group_grams[g], here(product), shift)
    state.group_counts.add_(here(counts))
    return total


def symmetry_update(rows: Tensor, num_groups: int = 0, group_keys: Optional[Tensor] = None) -> GramState:
    """The :class:`GramState` of one batch of rows ``(B, K, m)``: :func:`accumulate` into a fresh state.

    Example:
        >>> import torch
        >>> state = symmetry_update(torch.ones(2, 1, 3))
        >>> torch.ldexp(state.gram, 2 * state.exponent)[0], int(state.num_samples)
        (tensor([2., 2., 2.], dtype=torch.float64), 2)
    """
    state = new_state(rows.shape[-1], num_groups, device=float64_rows_device(rows))
    accumulate(state, rows, group_keys)
    return state


def float64_rows_device(rows: Tensor) -> torch.device:
    """Where a state for ``rows`` lives: their device, or the CPU where it has no float64 (MPS)."""
    return torch.device("cpu") if rows.device.type == "mps" else rows.device


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


def accumulate_tangents(state: TangentState, action: GroupAction, inputs: Tensor, finite: Tensor) -> None:
    """Add the tangent Gram matrix of the kept ``inputs`` (``finite``, from :func:`accumulate`) in place.

    A ``VectorAction``'s is ``kron(I, S)``: only ``S`` is formed and added to the diagonal blocks
    (the other blocks would add exact zeros), which gives the same bits as the dense matrix.
    """

    def here(t: Tensor) -> Tensor:
        return t.to(state.gram.dtype).to(state.gram.device)

    with torch.inference_mode(False):
        x = inputs.detach().to(float64_rows_device(inputs))
        mask = finite.to(x.device)
        factor = _kronecker_tangents(action, x, mask)
        tangent, t_exp = _scaled(action.tangent_gram(x, mask=mask) if factor is None else factor)
    t_exp = here(t_exp)
    common = torch.maximum(state.exponent, t_exp)
    _rescale_(state.gram, state.exponent, common)
    state.exponent.copy_(common)
    target, tangent = state.gram, here(tangent)
    if factor is not None and target.is_contiguous():
        target, tangent = _diagonal_blocks(target, target.shape[0] // tangent.shape[0]), tangent[..., None]
    elif factor is not None:
        tangent = torch.kron(torch.eye(target.shape[0] // tangent.shape[0], dtype=tangent.dtype), tangent)
    _add_scaled(target, tangent, 2.0 * (t_exp - common))
    state.num_samples.add_(here(finite.sum().to(torch.float64)))


def _unscale(x: Tensor, shift: float) -> Tensor:
    """``x * 2^shift`` in two steps, so that the factor itself never overflows or underflows."""
    half = float(int(shift / 2))
    x = torch.ldexp(x, torch.tensor(half, dtype=x.dtype))
    return torch.ldexp(x, torch.tensor(shift - half, dtype=x.dtype))


def input_independent(gram: Tensor, num_samples: int) -> bool:
    """True when every accumulated row is exactly zero: the outputs do not depend on the input."""
    return num_samples > 0 and float(gram.diagonal().abs().sum()) == 0.0


def symmetry_compute(
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
        >>> report = symmetry_compute(torch.eye(4, dtype=torch.float64), 4, 4, 0, VectorAction(dim=2))
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
    constant = input_independent(gram, int(num_samples))
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


def solve_states(
    state: GramState,
    action: GroupAction,
    tangents: Optional[TangentState] = None,
    *,
    border_in_gram: bool = True,
    **options: object,
) -> SymmetryReport:
    """The report of one analysed output's accumulated states: :func:`symmetry_compute` on them.

    The relative variances need ``tangents`` of the same samples, the border share the ring's rows
    of every sample; each is left out (``None``, NaN) where it does not cover them all.

    Args:
        state: The output's :class:`GramState`.
        action: The input action, to shape generators.
        tangents: The inputs' :class:`TangentState`.
        border_in_gram: Whether ``state.gram`` holds the ring's rows too.
        options: ``reference``, ``known``, ``nullity_tolerance``, ``warn`` of :func:`symmetry_compute`.
    """
    samples = int(state.num_samples)
    with_tangents = tangents is not None and int(tangents.num_samples) == samples
    whole_ring = state.border_gram.numel() > 0 and int(state.border_samples) == samples
    return symmetry_compute(
        state.gram, samples, int(state.num_rows), int(state.num_skipped), action,
        exponent=float(state.exponent),
        group_grams=state.group_grams if state.group_grams.shape[0] else None,
        group_counts=state.group_counts if state.group_grams.shape[0] else None,
        tangent_gram=tangents.gram if with_tangents else None,  # type: ignore[union-attr]
        tangent_exponent=float(tangents.exponent) if with_tangents else 0.0,  # type: ignore[union-attr]
        border_gram=state.border_gram if whole_ring else None,
        border_in_gram=border_in_gram,
        **options,  # type: ignore[arg-type]
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
    state = new_state(action.num_generators, jackknife_groups if jackknife_groups >= 2 else 0,
                      device=float64_rows_device(rows))
    finite = accumulate(state, rows, inputs)
    tangents = new_tangent_state(action.num_generators, device=state.gram.device)
    accumulate_tangents(tangents, action, inputs, finite)
    return solve_states(state, action, tangents, reference=reference)
