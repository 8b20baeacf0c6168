"""``LieGGMetric``: a TorchMetrics metric that streams polarization rows into a float64 Gram matrix."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Union, cast

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn
from torchmetrics.utilities.distributed import gather_all_tensors

from liegg_lightning._checks import check_int
from liegg_lightning.actions import GroupAction, ImageAction
from liegg_lightning.functional.layers import MODEL_OUTPUT, Layers, batch_rows, check_layers, rows_per_sample
from liegg_lightning.functional.polarization import (
    DERIVATIVE_MODES,
    BatchRows,
    DerivativeMode,
    OutputMode,
    RowOptions,
    float64_device,
    tracks_border,
)
from liegg_lightning.functional.symmetry import (
    BASE_STATES,
    EMPTY_EXPONENT,
    WORK_MATRICES,
    ScaledRows,
    SymmetryUpdate,
    _add_scaled,
    _bytes,
    _check_memory_budget,
    _diagonal_blocks,
    _gram,
    _group_products,
    _groups,
    _input_independent,
    _jackknife_groups,
    _kronecker_tangents,
    _rescale,
    _rescale_,
    _scaled,
    _scaled_rows,
    _symmetry_compute,
    _symmetry_update,
)
from liegg_lightning.report import SymmetryReport

__all__ = ["LieGGMetric", "DEFAULT_MEMORY_BUDGET"]

#: Default cap on the peak memory of an analysis (states, update, solve and jackknife): 1 GiB. That is
#: m up to about 4,370 (seven m x m float64 matrices); the jackknife's eight partial Gram matrices fit
#: up to m of about 2,990, fewer of them up to about 3,860, none above.
DEFAULT_MEMORY_BUDGET = 2**30

KnownGenerators = Union[Sequence[str], Mapping[str, Tensor]]


def _model_groups(m: int, requested: int, memory_budget: Optional[int], border: bool) -> int:
    """The jackknife groups that fit the budget beside the rest (with a warning when fewer than asked).

    Raises :class:`ValueError` when not even the smallest analysis fits (see
    :func:`~liegg_lightning.functional.symmetry._analysis_bytes`).
    """
    states = BASE_STATES + int(border)
    _check_memory_budget(m, memory_budget, states)
    groups = _jackknife_groups(m, requested, memory_budget, states)
    if groups < requested:
        rank_zero_warn(
            f"LieGGMetric: the jackknife's {requested} partial Gram matrices for m={m} do not fit the "
            f"memory budget beside the rest; "
            + (f"using {groups} groups." if groups else "standard errors are disabled (NaN).")
        )
    return groups


def _check_layers_budget(
    m: int, layer_actions: Mapping[str, Optional[GroupAction]], output_mode: str, memory_budget: Optional[int]
) -> None:
    """Refuse, before allocating, layers whose states, reports and solve would not fit the budget."""
    num = len(layer_actions)
    ring = any(tracks_border(a, output_mode) for a in layer_actions.values())  # type: ignore[arg-type]
    states = num * (2 if ring else 1)
    # each layer's report keeps its generators (m x m) while the next layer is solved
    matrices = states + num + WORK_MATRICES
    if memory_budget is not None and 8 * matrices * m * m > memory_budget:
        raise ValueError(
            f"{num} layers of m={m} generators need {states} float64 Gram matrices, their reports and a solve, "
            f"about {_bytes(8 * matrices * m * m)}, over the memory budget of {_bytes(memory_budget)}. "
            "Analyse fewer layers or raise `memory_budget`."
        )


def _check_settings(
    nullity_tolerance: float, jackknife_groups: int, memory_budget: Optional[int], seed: int
) -> None:
    """The metric's own settings (the row options check themselves)."""
    if isinstance(nullity_tolerance, bool) or not isinstance(nullity_tolerance, (int, float)) or not (
        0 < nullity_tolerance < 1
    ):
        raise ValueError(f"Expected a number in (0, 1) for `nullity_tolerance`, got {nullity_tolerance!r}.")
    check_int("jackknife_groups", jackknife_groups, minimum=0)
    check_int("memory_budget", memory_budget, minimum=1, allow_none=True)
    check_int("seed", seed)


def _ring_update(ring: Tensor, finite: Tensor) -> SymmetryUpdate:
    """The border ring's update, over the samples whose rows were kept (and whose ring rows are finite)."""
    kept = finite.to(ring.device)[:, None, None]
    return _symmetry_update(torch.where(kept, ring.to(torch.float64), math.nan))


def _unscaled(update: SymmetryUpdate) -> Tensor:
    """The update's Gram matrix at its true scale."""
    return torch.ldexp(update.gram, (2 * update.exponent).clamp_min(-2000).to(update.gram.dtype))


def _border_in_gram(output_action: Optional[GroupAction]) -> bool:
    """Whether the report's own Gram matrix holds the border ring (``border=0``) or leaves it out."""
    return not (isinstance(output_action, ImageAction) and output_action.border > 0)


class LieGGMetric(Metric):
    """Accumulates the network polarization matrix's Gram matrix; ``compute()`` gives a :class:`SymmetryReport`.

    States, all summed across processes (``dist_reduce_fx="sum"``), so memory is ``O(m^2)`` whatever
    the amount of data:

    * ``gram`` ``(m, m)``: the float64 Gram matrix of the polarization rows;
    * ``group_grams`` ``(G, m, m)`` and ``group_counts`` ``(G,)``: the same over ``G`` groups of
      samples, for the delete-a-group jackknife standard errors. A sample's group is an exact
      hash of its input's bits, so the groups, and the standard errors, do not depend on the
      batch size or on how many processes share the data;
    * ``tangent_gram`` ``(m, m)``: the Gram matrix of the tangents, for the relative variances;
    * the sample, row, skip and tangent-sample counts.

    Scale: the Gram matrices are stored divided by ``4^e`` for a power of two ``2^e`` taken from
    the largest row seen (``scale_exponent``, and ``tangent_exponent`` for ``tangent_gram``;
    ``dist_reduce_fx="max"``), so outputs of any magnitude (1e-170 or 1e+170) neither underflow
    nor overflow them. A batch with larger rows raises the exponent and rescales what is
    accumulated, by a power of two, so exactly. Before the states of several processes (or
    :meth:`merge_state`) are summed, each is rescaled to the largest exponent among them; the
    report scales the variances back.

    Args:
        action: How the candidate algebra acts on the input.
        reference_algebra: Name (``"so"``, ``"sl"``, ``"gl"``, ``"rotation"``, ``"scaling"``, ...)
            or basis tensor ``(k, *generator_shape)`` of the expected symmetry, for the biases.
        known_generators: Names (``["rotation", "scaling"]``) or a ``name -> generator`` mapping
            whose variances are reported in ``known_variances``.
        output_mode: ``"jacobian"`` (one row per output component), ``"sum"`` or ``"random"``.
        num_projections: Gaussian output projections for ``output_mode="random"``.
        output_transform: Applied to the model output before differentiating (e.g. log-softmax).
        derivative: ``"auto"`` (forward mode when the algebra is smaller than the number of
            rows per sample), ``"reverse"`` or ``"forward"``.
        nullity_tolerance: Largest ratio ``lambda_k / lambda_{k+1}`` between the last symmetry's
            eigenvalue and the next one that counts as a gap (with two jackknife standard errors to
            spare): 0.1 asks for a 10x gap. See :func:`~liegg_lightning.functional.estimate_nullity`.
        jackknife_groups: Groups of samples ``G`` for the standard errors (0 disables them). The
            partial Gram matrices take ``G * m^2 * 8`` bytes; when they do not fit the memory
            budget beside the rest, fewer groups are kept (none below 2), with a warning.
        memory_budget: Bytes the whole analysis may take at its peak: the states (TorchMetrics'
            copies of the defaults included), an update's temporaries, the solve and the jackknife,
            about ``(2 + G + 5) * 8 * m^2`` (one more ``m x m`` with a border ring; with ``layers``,
            two per layer, three with rings, plus 5). Larger algebras are refused before anything
            is allocated. ``None`` disables the check. A batch's rows ``(B, K, m)`` are not counted,
            nor, under DDP, the copies gathered from the other processes.
        seed: Seed of the metric's own generator for random projections.
        output_action: How the algebra acts on the output (after ``output_transform``), with the
            input action's generator shape: the metric then measures *equivariance*, rows
            ``J_F(x) A_in(x) - A_out(F(x))``; ``None`` (default) measures invariance. E.g.
            ``VectorAction(dim)`` for a model returning vectors, ``ImageAction()`` for feature maps
            ``(B, C, h, w)`` at any resolution.
        layers: Analyse the outputs of these submodules (names as in ``named_modules()``; ``""`` is
            the model's own output after ``output_transform``, which applies to no other layer),
            all from one pass per batch: a list (each analysed with ``output_action``), or a dict
            ``name -> output action`` (``None``: invariance). :meth:`update` then needs the model as
            an ``nn.Module`` and :meth:`compute` returns ``{name: SymmetryReport}``.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from liegg_lightning import LieGGMetric, VectorAction
        >>> metric = LieGGMetric(VectorAction(dim=3), reference_algebra="so")
        >>> model = lambda x: (x ** 2).sum(1, keepdim=True)
        >>> metric.update(model, torch.randn(64, 3))
        >>> report = metric.compute()
        >>> report.nullity, report.subspace_bias < 1e-6
        (3, True)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    gram: Tensor
    group_grams: Tensor
    group_counts: Tensor
    scale_exponent: Tensor
    tangent_gram: Tensor
    tangent_exponent: Tensor
    tangent_samples: Tensor
    num_samples: Tensor
    num_rows: Tensor
    num_skipped: Tensor
    border_gram: Tensor
    border_samples: Tensor
    # per-layer states (only with `layers`)
    layer_gram: Tensor
    layer_num_samples: Tensor
    layer_num_rows: Tensor
    layer_num_skipped: Tensor
    layer_border_gram: Tensor
    layer_border_samples: Tensor

    def __init__(
        self,
        action: GroupAction,
        reference_algebra: Optional[Union[str, Tensor]] = None,
        known_generators: Optional[KnownGenerators] = None,
        output_mode: Literal["jacobian", "sum", "random"] = "jacobian",
        num_projections: Optional[int] = None,
        output_transform: Optional[Callable[[Tensor], Tensor]] = None,
        derivative: Literal["auto", "reverse", "forward"] = "auto",
        nullity_tolerance: float = 0.1,
        jackknife_groups: int = 8,
        memory_budget: Optional[int] = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
        output_action: Optional[GroupAction] = None,
        layers: Optional[Union[List[str], Mapping[str, Optional[GroupAction]]]] = None,
        **kwargs: Any,
    ) -> None:
        options = RowOptions(action, output_mode, num_projections, output_transform, output_action, derivative)
        layer_actions = None if layers is None else check_layers(action, layers, output_action)
        _check_settings(nullity_tolerance, jackknife_groups, memory_budget, seed)
        m = action.num_generators
        border = tracks_border(output_action, output_mode)
        if layer_actions is None:
            groups = _model_groups(m, jackknife_groups, memory_budget, border)
        else:  # the layers have their own states (and no jackknife): the model's are left empty
            _check_layers_budget(m, layer_actions, output_mode, memory_budget)
            groups = 0
        # resolve names now: a bad name fails here, not after an epoch of work
        reference = None if reference_algebra is None else action.reference_vectors(reference_algebra)
        known = action.known_vectors(known_generators)
        super().__init__(**kwargs)
        self.action = action
        self.row_options = options
        self.reference_algebra = reference_algebra
        self.known_generators = known_generators
        self.reference = reference
        self.known = known
        self.nullity_tolerance = float(nullity_tolerance)
        self.jackknife_groups = jackknife_groups
        self.num_groups = groups
        self._warned_constant = False
        self.memory_budget = memory_budget
        self.seed = seed
        # made on first use: a torch.Generator cannot be pickled to ddp_spawn workers
        self._generator: Optional[torch.Generator] = None
        self._resolved_derivative: Optional[str] = None
        self._add_model_states(0 if layer_actions is not None else m, groups, border)
        self._add_layer_states(layers, layer_actions, m)

    def _state(self, name: str, shape: Sequence[int], reduce: str, fill: float = 0.0) -> None:
        """A float64 state of ``shape`` filled with ``fill``, summed (or maxed) across processes.

        TorchMetrics keeps a deep copy of every state's default for :meth:`reset`; here the default
        is the one number ``fill`` (:meth:`reset` fills the states in place), so an ``m x m`` state
        costs its own memory once, not twice.
        """
        self.add_state(name, torch.tensor(fill, dtype=torch.float64), dist_reduce_fx=reduce)
        setattr(self, name, torch.full(tuple(shape), fill, dtype=torch.float64))

    def _add_model_states(self, m: int, groups: int, border: bool) -> None:
        """States of the model's own output, all summed across processes (the exponents: their maximum)."""
        self._state("gram", (m, m), "sum")
        self._state("group_grams", (groups, m, m), "sum")
        self._state("group_counts", (groups,), "sum")
        self._state("scale_exponent", (), "max", EMPTY_EXPONENT)
        self._state("tangent_gram", (m, m), "sum")
        self._state("tangent_exponent", (), "max", EMPTY_EXPONENT)
        for name in ("tangent_samples", "num_samples", "num_rows", "num_skipped"):
            self._state(name, (), "sum")
        # the border ring's Gram matrix (at `scale_exponent`), empty where the output has no ring
        size = m if border else 0
        self._state("border_gram", (size, size), "sum")
        self._state("border_samples", (), "sum")

    def reset(self) -> None:
        """Empty the states in place (no new ``m x m`` matrices, no second copy of them alive meanwhile)."""
        self._update_count = 0
        self._forward_cache = None
        self._computed = None
        self._cache = None
        self._is_synced = False
        for name, default in self._defaults.items():
            state = getattr(self, name)
            if isinstance(state, Tensor) and isinstance(default, Tensor) and default.ndim == 0:
                state.fill_(default.to(state.dtype))
            else:  # a state not made by `_state`: as TorchMetrics resets it
                setattr(self, name, torch.as_tensor(default).detach().clone().to(state.device))

    def _add_layer_states(
        self,
        layers: Optional[Layers],
        layer_actions: Optional[Dict[str, Optional[GroupAction]]],
        m: int,
    ) -> None:
        """Per-layer options and states (none without ``layers``).

        The states are a stacked ``(L, m, m)`` Gram matrix and ``(L,)`` counts, summed across
        processes, and the border rings' Gram matrices where a layer's output action has a ring.
        """
        self.layers = layers
        self.layer_actions = layer_actions
        self.layer_names: List[str] = [] if layer_actions is None else list(layer_actions)
        if layer_actions is None:
            return
        num = len(self.layer_names)
        size = m if any(tracks_border(a, self.output_mode) for a in layer_actions.values()) else 0
        self._state("layer_gram", (num, m, m), "sum")
        for name in ("layer_num_samples", "layer_num_rows", "layer_num_skipped", "layer_border_samples"):
            self._state(name, (num,), "sum")
        self._state("layer_border_gram", (num, size, size), "sum")

    @property
    def output_mode(self) -> OutputMode:
        """``"jacobian"``, ``"sum"`` or ``"random"``."""
        return self.row_options.output_mode

    @property
    def num_projections(self) -> Optional[int]:
        """Gaussian output projections for ``output_mode="random"``."""
        return self.row_options.num_projections

    @property
    def output_transform(self) -> Optional[Callable[[Tensor], Tensor]]:
        """Applied to the model output before differentiating."""
        return self.row_options.output_transform

    @property
    def output_action(self) -> Optional[GroupAction]:
        """How the algebra acts on the output; ``None`` for invariance."""
        return self.row_options.output_action

    @property
    def derivative(self) -> DerivativeMode:
        """The requested derivative mode (``"auto"``, ``"reverse"`` or ``"forward"``)."""
        return self.row_options.derivative

    def place_on(self, device: Union[str, torch.device]) -> LieGGMetric:
        """Move the states to ``device``; where it has no float64 (MPS), keep them in float32 with a warning."""
        device = torch.device(device)
        if device.type == "mps" and self.gram.dtype == torch.float64:
            rank_zero_warn("MPS has no float64: LieGGMetric accumulates in float32, which limits accuracy.")
            self.set_dtype(torch.float32)
        return self.to(device)

    @property
    def generator(self) -> torch.Generator:
        """The metric's own random generator for output projections (the global RNG is never drawn from)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_generator"] = None
        return state

    def extra_repr(self) -> str:
        """The configuration, for ``repr``."""
        parts = [f"action={self.action!r}", f"output_mode={self.output_mode!r}"]
        if self.output_mode == "random":
            parts.append(f"num_projections={self.num_projections}")
        if self.reference_algebra is not None:
            ref = self.reference_algebra if isinstance(self.reference_algebra, str) else "<basis>"
            parts.append(f"reference_algebra={ref!r}")
        if self.known:
            parts.append(f"known_generators={sorted(self.known)}")
        parts.append(f"derivative={self.derivative!r}")
        if self.output_action is not None:
            parts.append(f"output_action={self.output_action!r}")
        if self.layer_actions is not None:
            parts.append(f"layers={self.layer_names!r}")
        return ", ".join(parts)

    def _batch_rows(self, model: Callable[[Tensor], Tensor], inputs: Tensor, derivative: Optional[str]) -> BatchRows:
        """One functional call for a batch; an ``"auto"`` mode is decided on the first batch and kept."""
        mode = derivative or self._resolved_derivative or self.derivative
        options = self.row_options.replace(derivative=mode, generator=self.generator)
        result = batch_rows(model, inputs, options, self.layer_actions)
        if derivative is None and self._resolved_derivative is None:
            self._resolved_derivative = result.derivative
        return result

    def rows(
        self, model: Callable[[Tensor], Tensor], inputs: Tensor, derivative: Optional[str] = None
    ) -> Union[Tensor, Dict[str, Tensor]]:
        """Polarization rows ``(B, K, m)`` (float64) of ``model`` at ``inputs``, as :meth:`update` uses them.

        With ``derivative="auto"`` the first batch decides the mode by count from a plain forward
        pass's output sizes (:func:`~liegg_lightning.functional.polarization.choose_derivative`:
        forward when the algebra is smaller than the rows per sample, all layers together) and
        later batches keep it (unless :meth:`fix_derivative` chose one by measurement).
        ``derivative`` overrides the mode for this call only. With ``layers``, a dict
        ``name -> rows`` from one pass.
        """
        result = self._batch_rows(model, inputs, derivative)
        return result.rows if self.layer_actions is not None else result.rows[MODEL_OUTPUT]

    def rows_per_sample(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> int:
        """Rows one sample contributes (all layers together), from one plain forward pass without gradients."""
        return int(sum(rows_per_sample(model, inputs, self.row_options, self.layer_actions).values()))

    def fix_derivative(self, mode: str) -> None:
        """Use ``mode`` (``"reverse"`` or ``"forward"``) for every later batch, e.g. the faster one as measured."""
        if mode not in DERIVATIVE_MODES[1:]:
            raise ValueError(f"Expected 'reverse' or 'forward', got {mode!r}.")
        self._resolved_derivative = mode

    @property
    def resolved_derivative(self) -> Optional[str]:
        """The strategy later batches use, once known (``None`` before the first batch with ``"auto"``)."""
        return self._resolved_derivative

    def update(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> None:  # type: ignore[override]
        """Add the rows of ``model`` at a batch of ``inputs`` (and the inputs' tangent Gram matrix)."""
        result = self._batch_rows(model, inputs, None)
        rows = result.rows if self.layer_actions is not None else result.rows[MODEL_OUTPUT]
        self._add_rows(rows, inputs, result.border_rows)

    def forward(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> None:  # type: ignore[override]
        """``metric(model, inputs)`` is :meth:`update`: a per-batch solve would cost an eigendecomposition each."""
        self.update(model, inputs)

    def update_rows(
        self,
        rows: Union[Tensor, Mapping[str, Tensor]],
        inputs: Optional[Tensor] = None,
        border_rows: Optional[Mapping[str, Tensor]] = None,
    ) -> None:
        """Add precomputed rows ``(B, K, m)`` (with ``layers`` a dict ``name -> rows``).

        Samples with non-finite rows are dropped and counted.

        Args:
            rows: Polarization rows, or with ``layers`` a dict ``name -> rows``.
            inputs: The ``B`` inputs behind the rows, for the tangent Gram matrix of the relative
                variances. Without them the report has no relative variances (unless every batch
                of an accumulation brings its inputs, they are left out).
            border_rows: ``name -> (B, K_ring, m)`` rows of the border rings (the model's own
                output is ``""``), as :func:`~liegg_lightning.functional.layers.batch_rows` gives
                them, for ``border_share``; without them in every batch, it is NaN.
        """
        # what TorchMetrics' wrapper does for `update`: forget a cached result, count the update
        self._computed = None
        self._update_count += 1
        self._add_rows(rows, inputs, border_rows or {})

    def _add_rows(
        self, rows: Union[Tensor, Mapping[str, Tensor]], inputs: Optional[Tensor], border_rows: Mapping[str, Tensor]
    ) -> None:
        if self.layer_actions is not None:
            if not isinstance(rows, Mapping):
                raise ValueError(f"Expected a dict layer name -> rows with `layers`, got {type(rows).__name__}.")
            self._add_layer_rows(rows, border_rows)
            return
        if isinstance(rows, Mapping):
            raise ValueError("Expected rows as a tensor (B, K, m); a dict of rows needs `layers`.")
        if rows.ndim != 3 or rows.shape[-1] != self.gram.shape[0]:
            raise ValueError(
                f"Expected rows of shape (B, K, {self.gram.shape[0]}), got shape {tuple(rows.shape)}."
            )
        if inputs is not None and (
            not isinstance(inputs, Tensor) or inputs.ndim < 1 or inputs.shape[0] != rows.shape[0]
        ):
            got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"Expected `inputs` with batch size {rows.shape[0]} (that of the rows), got {got}.")
        scaled = _scaled_rows(rows)
        ring = border_rows.get(MODEL_OUTPUT) if self.border_gram.numel() else None
        ring_rows = None
        if ring is not None:  # the ring's rows of the samples kept (and whose ring rows are finite)
            kept = scaled.finite.to(ring.device)[:, None, None]
            ring_rows = _scaled_rows(torch.where(kept, ring.to(torch.float64), math.nan))
        self._accumulate_model(scaled, rows if inputs is None else inputs, ring_rows)
        if inputs is not None:
            self._accumulate_tangents(inputs, scaled.finite)

    def _here(self, t: Tensor) -> Tensor:
        """``t`` in the states' dtype and on their device."""
        # dtype first: a float64 tensor cannot move to a device without float64 (MPS, float32 states)
        return t.to(self.gram.dtype).to(self.gram.device)

    def _accumulate_model(self, scaled: ScaledRows, keys: Tensor, ring: Optional[ScaledRows]) -> None:
        """Add a batch's scaled rows (and its border ring's) to the states, all brought to one scale.

        Everything in place, one ``m x m`` product at a time (two with the jackknife: a group's and
        the batch's sum), so an update needs two ``m x m`` temporaries whatever the number of groups;
        and the states stay ordinary tensors when this runs under inference mode. The sums are
        those of :func:`_symmetry_update` in the same order, so the states hold the same bits.
        """
        here = self._here
        exponent = here(scaled.exponent)
        common = torch.maximum(self.scale_exponent, exponent)
        if ring is not None:
            common = torch.maximum(common, here(ring.exponent))
        for state in (self.gram, self.group_grams, self.border_gram):
            _rescale_(state, self.scale_exponent, common)
        self.scale_exponent.copy_(common)
        if ring is not None:
            _add_scaled(self.border_gram, here(_gram(ring.rows)), (2.0 * (here(ring.exponent) - common)))
            self.border_samples += here(ring.finite.sum().to(torch.float64))
        shift = 2.0 * (exponent - common)
        batch = self._add_group_products(scaled, keys, shift) if self.num_groups else _gram(scaled.rows)
        if batch is not None:
            _add_scaled(self.gram, here(batch), shift)
        kept = scaled.finite.sum().to(torch.float64)
        self.num_samples += here(kept)
        self.num_rows += here(kept * scaled.rows.shape[1])
        self.num_skipped += here(scaled.finite.numel() - kept)

    def _add_group_products(self, scaled: ScaledRows, keys: Tensor, shift: Tensor) -> Optional[Tensor]:
        """Add each group's product to its partial Gram matrix; their sum (unscaled), ``None`` for no rows."""
        ids, counts = _groups(keys, scaled.finite, self.num_groups)
        total: Optional[Tensor] = None
        for g, product in _group_products(scaled.rows, ids, self.num_groups):
            # the batch's sum first, in the order `group_grams.sum(0)` adds them
            total = product.clone() if total is None else total.add_(product)
            _add_scaled(self.group_grams[g], self._here(product), shift)
        self.group_counts += self._here(counts)
        return total

    def _accumulate_tangents(self, inputs: Tensor, finite: Tensor) -> None:
        """Add the tangent Gram matrix of the kept inputs, for the relative variances.

        A ``VectorAction``'s is ``kron(I, S)``: only ``S`` is formed and added to the diagonal blocks
        (the other blocks would add exact zeros), which gives the same bits as the dense matrix.
        """
        here = self._here
        with torch.inference_mode(False):
            x = inputs.detach().to(float64_device(inputs.device))
            mask = finite.to(x.device)
            factor = _kronecker_tangents(self.action, x, mask)
            tangent, t_exp = _scaled(self.action.tangent_gram(x, mask=mask) if factor is None else factor)
        t_exp = here(t_exp)
        t_common = torch.maximum(self.tangent_exponent, t_exp)
        _rescale_(self.tangent_gram, self.tangent_exponent, t_common)
        self.tangent_exponent.copy_(t_common)
        target = self.tangent_gram
        tangent = here(tangent)
        if factor is not None and target.is_contiguous():
            target, tangent = _diagonal_blocks(target, target.shape[0] // tangent.shape[0]), tangent[..., None]
        elif factor is not None:
            tangent = torch.kron(torch.eye(target.shape[0] // tangent.shape[0], dtype=tangent.dtype), tangent)
        _add_scaled(target, tangent, 2.0 * (t_exp - t_common))
        self.tangent_samples += here(finite.sum().to(torch.float64))

    def _add_layer_rows(self, rows: Mapping[str, Tensor], border_rows: Mapping[str, Tensor]) -> None:
        """Add each layer's rows ``(B, K_l, m)`` (and its border ring's) to its own Gram matrices."""
        if set(rows) != set(self.layer_names):
            raise ValueError(
                f"Expected rows for the layers {self.layer_names}, got them for {sorted(rows)}."
            )
        m = self.layer_gram.shape[-1]
        for i, name in enumerate(self.layer_names):
            r = rows[name]
            if r.ndim != 3 or r.shape[-1] != m:
                raise ValueError(f"Expected rows of shape (B, K, {m}) for layer {name!r}, got {tuple(r.shape)}.")
            update = _symmetry_update(r)
            # per-layer states are kept unscaled (no exponent state, no jackknife groups per layer yet)
            self.layer_gram[i] += self._here(_unscaled(update))
            self.layer_num_samples[i] += self._here(update.num_samples)
            self.layer_num_rows[i] += self._here(update.num_rows)
            self.layer_num_skipped[i] += self._here(update.num_skipped)
            ring = border_rows.get(name)
            if ring is not None and self.layer_border_gram.shape[-1] and tracks_border(
                    self.layer_actions[name], self.output_mode):  # type: ignore[index]
                ring_update = _ring_update(ring, update.finite)
                self.layer_border_gram[i] += self._here(_unscaled(ring_update))
                self.layer_border_samples[i] += self._here(ring_update.num_samples)

    def _compute_layers(self) -> Dict[str, SymmetryReport]:
        """One report per analysed layer, in the order of ``layers``."""
        reports: Dict[str, SymmetryReport] = {}
        m = self.layer_gram.shape[-1]
        for i, name in enumerate(self.layer_names):
            label = "the model output" if name == MODEL_OUTPUT else f"layer {name!r}"
            samples, rows = int(self.layer_num_samples[i]), int(self.layer_num_rows[i])
            if samples <= 0:
                raise ValueError(
                    f"LieGGMetric has no samples to solve for {label}: call `update` with at least one finite sample."
                )
            if rows < m:
                rank_zero_warn(
                    f"LieGGMetric: {rows} rows for m={m} generators at {label}; at least {m - rows} zero "
                    "eigenvalues come from too little data, not from learned symmetries."
                )
            border = self.layer_actions[name]  # type: ignore[index]
            whole = self.layer_border_gram.shape[-1] and int(self.layer_border_samples[i]) == samples
            reports[name] = _symmetry_compute(
                self.layer_gram[i],
                samples,
                rows,
                int(self.layer_num_skipped[i]),
                self.action,
                reference=self.reference,
                known=self.known,
                nullity_tolerance=self.nullity_tolerance,
                border_gram=self.layer_border_gram[i] if whole and tracks_border(border, self.output_mode) else None,
                border_in_gram=_border_in_gram(border),
            )
        return reports

    def _align(self, exponents: Tensor) -> None:
        """Rescale the states to the largest of ``exponents`` ``(P, 2)`` (scale, tangent), that of every process."""
        scale, tangent = exponents[:, 0].max(), exponents[:, 1].max()
        self.gram = _rescale(self.gram, self.scale_exponent, scale)
        self.group_grams = _rescale(self.group_grams, self.scale_exponent, scale)
        self.border_gram = _rescale(self.border_gram, self.scale_exponent, scale)
        self.tangent_gram = _rescale(self.tangent_gram, self.tangent_exponent, tangent)
        self.scale_exponent = scale.clone()
        self.tangent_exponent = tangent.clone()

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        """Bring every process's states to one scale, then let TorchMetrics sum them."""
        local = torch.stack([self.scale_exponent, self.tangent_exponent])
        gathered = dist_sync_fn(local, group=process_group or self.process_group)
        self._align(torch.stack(list(gathered)))
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def merge_state(self, incoming_state: Union[Dict[str, Any], Metric]) -> None:
        """Add another metric's states (or a state dict) to these, both brought to one scale first."""
        incoming: Dict[str, Any]
        if isinstance(incoming_state, LieGGMetric):
            incoming = dict(incoming_state.metric_state)
        elif isinstance(incoming_state, dict) and "scale_exponent" in incoming_state:
            incoming = dict(incoming_state)
        else:
            super().merge_state(incoming_state)  # raises the TorchMetrics error for what it cannot merge
            return
        device = self.gram.device
        theirs = torch.stack([incoming["scale_exponent"], incoming["tangent_exponent"]]).to(device)
        mine = torch.stack([self.scale_exponent, self.tangent_exponent])
        self._align(torch.stack([mine, theirs.to(mine.dtype)]))
        for name, exp_name in (("gram", "scale_exponent"), ("group_grams", "scale_exponent"),
                               ("border_gram", "scale_exponent"), ("tangent_gram", "tangent_exponent")):
            state, exponent = incoming[name], incoming[exp_name]
            incoming[name] = _rescale(state.to(device), exponent.to(device), getattr(self, exp_name))
        incoming["scale_exponent"], incoming["tangent_exponent"] = self.scale_exponent, self.tangent_exponent
        super().merge_state(incoming)

    def compute(self) -> Union[SymmetryReport, Dict[str, SymmetryReport]]:  # type: ignore[override]
        """Solve the accumulated Gram matrix; raises ``ValueError`` when no sample was accumulated.

        Returns:
            A :class:`SymmetryReport`, or with ``layers`` a dict ``name -> SymmetryReport`` in the
            order of ``layers``.
        """
        if self.layer_actions is not None:
            return self._compute_layers()
        num_samples = int(self.num_samples)
        if num_samples <= 0:
            skipped = int(self.num_skipped)
            raise ValueError(f"LieGGMetric: all {skipped} samples gave non-finite outputs or derivatives (NaN or "
                             "infinite: has the model diverged?); nothing to solve." if skipped else
                             "LieGGMetric has no samples to solve: call `update` with at least one finite sample.")
        m = self.gram.shape[0]
        if float(self.num_rows) < m:
            rank_zero_warn(
                f"LieGGMetric: {int(self.num_rows)} rows for m={m} generators; at least {m - int(self.num_rows)} "
                "zero eigenvalues come from too little data, not from learned symmetries."
            )
        constant = _input_independent(self.gram, num_samples)
        with_tangents = int(self.tangent_samples) == num_samples
        whole_ring = int(self.border_samples) == num_samples
        report = _symmetry_compute(
            self.gram,
            num_samples,
            int(self.num_rows),
            int(self.num_skipped),
            self.action,
            exponent=float(self.scale_exponent),
            group_grams=self.group_grams if self.num_groups else None,
            group_counts=self.group_counts if self.num_groups else None,
            tangent_gram=self.tangent_gram if with_tangents else None,
            tangent_exponent=float(self.tangent_exponent),
            reference=self.reference,
            known=self.known,
            nullity_tolerance=self.nullity_tolerance,
            warn=constant and not self._warned_constant,
            border_gram=self.border_gram if self.border_gram.numel() and whole_ring else None,
            border_in_gram=_border_in_gram(self.output_action),
        )
        self._warned_constant = self._warned_constant or constant
        return report

    def plot(
        self,
        val: Optional[Union[SymmetryReport, Sequence[SymmetryReport], Mapping[str, SymmetryReport]]] = None,
        ax: Optional[Any] = None,
    ) -> Any:
        """Plot the symmetry-variance spectrum: of ``val``, of each report in a list, or of :meth:`compute`.

        Args:
            val: A report, a list of reports (one line each, e.g. from successive epochs), a dict
                of per-layer reports (one line each), or ``None`` to compute one.
            ax: Axes to draw into; ``None`` makes a new figure.

        Returns:
            ``(figure, axes)`` as TorchMetrics' ``plot`` methods do.
        """
        from liegg_lightning.rendering import plot_spectra, plot_spectrum

        if val is None:
            val = self.compute()
        if isinstance(val, SymmetryReport):
            return plot_spectrum(val, ax=ax)
        if isinstance(val, Mapping):  # per-layer reports: one line each
            return plot_spectra(list(val.values()), ax=ax)
        return plot_spectra(list(val), ax=ax)


def fresh_metric(metric: Union[LieGGMetric, GroupAction], **options: Any) -> LieGGMetric:
    """A metric of the given configuration with empty states, for ``analyze`` and the callback.

    A :class:`LieGGMetric` is cloned and reset (the caller's own is never changed); a
    :class:`~liegg_lightning.GroupAction` becomes ``LieGGMetric(action, **options)``.
    """
    if isinstance(metric, LieGGMetric):
        if options:
            raise ValueError(
                f"Expected metric options ({', '.join(sorted(options))}) only with a GroupAction; "
                "a LieGGMetric carries its own."
            )
        return _empty_clone(metric)
    if isinstance(metric, GroupAction):
        return LieGGMetric(metric, **options)
    raise ValueError(f"Expected `metric` to be a LieGGMetric or a GroupAction, got {type(metric).__name__}.")


def _empty_clone(metric: LieGGMetric) -> LieGGMetric:
    """``metric.clone()`` then ``reset()``, without copying the states first (nor a cached result).

    The states are left out of the deep copy (each stands for a placeholder) and made afresh, empty,
    with the original's shapes, dtypes and devices.
    """
    states = {name: getattr(metric, name) for name in metric._defaults}
    placeholder = torch.empty(0)
    memo: Dict[int, Any] = {id(state): placeholder for state in states.values()}
    memo[id(metric._computed)] = None
    memo[id(metric._forward_cache)] = None
    memo[id(metric._cache)] = None
    fresh = cast(LieGGMetric, copy.deepcopy(metric, memo))
    for name, state in states.items():
        setattr(fresh, name, torch.empty_like(state, memory_format=torch.contiguous_format))
    fresh.reset()
    return fresh
