"""``LieGGMetric``: a TorchMetrics metric that streams polarization rows into float64 Gram matrices.

A thin stateful shell over the functional core (:mod:`liegg_lightning.functional.symmetry`): one
:class:`~liegg_lightning.functional.symmetry.GramState` per analysed output (the model's, or each
layer's) kept as TorchMetrics states, grown by the same ``accumulate`` and solved by the same
``solve_states``; the memory arithmetic is :mod:`liegg_lightning._memory`'s.
"""

from __future__ import annotations

import copy
import inspect
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Literal,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
    cast,
)

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from liegg_lightning import _memory
from liegg_lightning._checks import check_int
from liegg_lightning._framework import FrameworkMetric, cached_results, mark_updated, state_names
from liegg_lightning.actions import GroupAction, ImageAction
from liegg_lightning.functional.layers import (
    MODEL_OUTPUT,
    batch_rows,
    check_layers,
    pass_footprint,
    rows_per_sample,
)
from liegg_lightning.functional.polarization import (
    DERIVATIVE_MODES,
    BatchRows,
    DerivativeMode,
    OutputMode,
    RowOptions,
    choose_derivative,
    tracks_border,
)
from liegg_lightning.functional.symmetry import (
    EMPTY_EXPONENT,
    GramState,
    TangentState,
    accumulate,
    accumulate_tangents,
    input_independent,
    rescale,
    solve_states,
)
from liegg_lightning.report import SymmetryReport, with_generator_shape
from liegg_lightning.transforms import (
    TransformLike,
    TransformSums,
    check_transforms,
    transform_errors,
    transform_update,
)

__all__ = ["LieGGMetric", "DEFAULT_MEMORY_BUDGET"]

#: Default cap on the peak memory of an analysis (states, derivative passes, solve and jackknife): 1 GiB.
#: The matrices alone fit m up to about 4,370 (seven m x m float64 matrices); the jackknife's eight
#: partial Gram matrices fit up to m of about 2,990, fewer of them up to about 3,860, none above.
#: What the matrices leave bounds the derivative passes: a batch is analysed in passes that fit it.
DEFAULT_MEMORY_BUDGET = 2**30

KnownGenerators = Union[Sequence[str], Mapping[str, Tensor]]

#: The states of one analysed output, in :class:`GramState`'s order: the model's own names; a layer's
#: are these with ``layer_`` in front, stacked over the layers.
_STATE_NAMES = ("gram", "group_grams", "group_counts", "scale_exponent", "border_gram", "border_samples",
                "num_samples", "num_rows", "num_skipped")
#: The scaled matrices of each family and the exponent they share.
_MODEL_FAMILY = (("gram", "group_grams", "border_gram"), "scale_exponent")
_TANGENT_FAMILY = (("tangent_gram",), "tangent_exponent")
_LAYER_FAMILY = (("layer_gram", "layer_group_grams", "layer_border_gram"), "layer_scale_exponent")


class _Matrices(NamedTuple):
    """The ``m x m`` matrices of a configuration: states, jackknife groups per output and their bytes."""

    outputs: int
    border: bool
    groups: int
    bytes: int


def _plan_matrices(
    m: int, outputs: Mapping[str, Optional[GroupAction]], output_mode: str, requested: int,
    memory_budget: Optional[int], layered: bool,
) -> _Matrices:
    """Refuse, before allocating, an algebra whose matrices do not fit; the jackknife groups that do (warned).

    Every analysed output has a Gram state (two with a border ring) and its groups; the tangents
    have one; with layers each report keeps its generators while the next is solved.
    """
    count = len(outputs)
    border = any(tracks_border(a, output_mode) for a in outputs.values())
    states = count * (2 if border else 1) + 1
    reports = count if layered else 0
    _memory.check_memory_budget(m, memory_budget, states, reports)
    groups = _memory.jackknife_groups(m, requested, memory_budget, states, count, reports)
    if groups < requested and requested >= 2:
        rank_zero_warn(
            f"LieGGMetric: the jackknife's {requested} partial Gram matrices per output for m={m} do not fit the "
            f"memory budget beside the rest; "
            + (f"using {groups} groups." if groups else "standard errors are disabled (NaN).")
        )
    return _Matrices(count, border, groups, _memory.analysis_bytes(m, states, count * groups, reports))


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


def _border_in_gram(output_action: Optional[GroupAction]) -> bool:
    """Whether the report's own Gram matrix holds the border ring (``border=0``) or leaves it out."""
    return not (isinstance(output_action, ImageAction) and output_action.border > 0)


def _label(name: str) -> str:
    return "" if name == MODEL_OUTPUT else f" for layer {name!r}"


class LieGGMetric(FrameworkMetric):
    """Accumulates the network polarization matrix's Gram matrix; ``compute()`` gives a :class:`SymmetryReport`.

    States, all summed across processes (``dist_reduce_fx="sum"``), so memory is ``O(m^2)`` whatever
    the amount of data:

    * ``gram`` ``(m, m)``: the float64 Gram matrix of the polarization rows;
    * ``group_grams`` ``(G, m, m)`` and ``group_counts`` ``(G,)``: the same over ``G`` groups of
      samples, for the delete-a-group jackknife standard errors. A sample's group is an exact
      hash of its input's bits, so the groups, and the standard errors, do not depend on the
      batch size or on how many processes share the data;
    * ``tangent_gram`` ``(m, m)``: the Gram matrix of the tangents, for the relative variances;
    * the sample, row, skip and tangent-sample counts;
    * with ``layers``, each analysed output's states stacked over the layers (``layer_gram``
      ``(L, m, m)``, ``layer_group_grams`` ``(L, G, m, m)``, ``layer_scale_exponent`` ``(L,)``, ...),
      grown by the same accumulation as the model's, so every layer's report has its standard
      errors; the tangents' states are shared.

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
        memory_budget: Bytes the whole analysis may take at its peak. First the ``m x m`` float64
            matrices: the states (TorchMetrics' copies of the defaults included), an update's
            temporaries, the solve and the jackknife, about ``(2 + G + 5) * 8 * m^2`` (one more
            ``m x m`` with a border ring; with ``layers``, ``1 + G`` per layer, ``2 + G`` with
            rings, plus the tangents', one report per layer and 5); larger algebras are refused
            before anything is allocated. What they leave bounds the derivative passes: a batch
            runs in passes of fewer samples (in forward mode fewer tangents, in reverse mode fewer
            rows' gradients, when one sample does not fit), see :attr:`pass_budget`. ``None``
            disables both. Not counted: under DDP, the copies gathered from the other processes.
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
        known_transforms: Finite transformations ``name -> map of a batch of inputs`` (or
            ``name -> (input map, output map)`` for equivariance), e.g. from
            :mod:`liegg_lightning.transforms`; the report's ``transform_errors[name]`` is
            ``E||F(g x) - F(x)||^2 / E||F(x) - E F(x)||^2`` with a jackknife standard error. Each costs
            one forward pass per batch in :meth:`update` (none in :meth:`update_rows`). Not with ``layers``.
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
    # finite transformations (only with `known_transforms`)
    transform_moments: Tensor
    transform_sums: Tensor

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
        known_transforms: Optional[Mapping[str, TransformLike]] = None,
        **kwargs: Any,
    ) -> None:
        # every option is checked (and names resolved) before anything is allocated
        options = RowOptions(action, output_mode, num_projections, output_transform, output_action, derivative)
        layer_actions = None if layers is None else check_layers(action, layers, output_action)
        _check_settings(nullity_tolerance, jackknife_groups, memory_budget, seed)
        m = action.num_generators
        outputs = layer_actions if layer_actions is not None else {MODEL_OUTPUT: output_action}
        matrices = _plan_matrices(m, outputs, output_mode, jackknife_groups, memory_budget, layers is not None)
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
        self.num_groups = matrices.groups
        self.memory_budget = memory_budget
        self.seed = seed
        self.layers = layers
        self.layer_actions = layer_actions
        self.outputs: Dict[str, Optional[GroupAction]] = dict(outputs)
        self.layer_names: List[str] = [] if layer_actions is None else list(layer_actions)
        self._matrix_bytes = matrices.bytes
        self._pass_cap: Optional[int] = None
        self._footprints: Dict[Tuple[Any, ...], _memory.PassFootprint] = {}
        self._last_chunks: Optional[_memory.PassChunks] = None
        self._warned_constant = False
        # made on first use: a torch.Generator cannot be pickled to ddp_spawn workers
        self._generator: Optional[torch.Generator] = None
        self._resolved_derivative: Optional[str] = None
        self._add_states(m, matrices)
        self._add_transform_states(check_transforms(known_transforms), layer_actions is not None)

    def _state(self, name: str, shape: Sequence[int], reduce: str, fill: float = 0.0) -> None:
        """A float64 state of ``shape`` filled with ``fill``, summed (or maxed) across processes.

        TorchMetrics keeps a copy of every state's default for :meth:`reset`; here the default is
        the one number ``fill`` (:meth:`reset` expands it to the state's shape), so an ``m x m``
        state costs its own memory once, not twice.
        """
        self.add_state(name, torch.tensor(fill, dtype=torch.float64), dist_reduce_fx=reduce)
        setattr(self, name, torch.full(tuple(shape), fill, dtype=torch.float64))

    def _add_states(self, m: int, matrices: _Matrices) -> None:
        """The Gram states of every analysed output and the tangents', all summed across processes.

        Without ``layers`` the model's states are ``gram`` ``(m, m)``, ``group_grams`` ``(G, m, m)``, ...;
        with them each is stacked over the layers as ``layer_gram`` ``(L, m, m)``, ``layer_group_grams``
        ``(L, G, m, m)``, ... (the model's are then left empty). The exponents are maxed, not summed.
        """
        if self.layer_actions is None:
            self._add_output_states("", (), m, matrices.groups, matrices.border)
        else:
            self._add_output_states("", (), 0, 0, False)  # the model's own: empty
            self._add_output_states("layer_", (matrices.outputs,), m, matrices.groups, matrices.border)
        self._state("tangent_gram", (m, m), "sum")
        self._state("tangent_exponent", (), "max", EMPTY_EXPONENT)
        self._state("tangent_samples", (), "sum")

    def _add_output_states(self, prefix: str, lead: Tuple[int, ...], m: int, groups: int, border: bool) -> None:
        """The states of :class:`GramState` named ``prefix + name``, each with the leading axes ``lead``."""
        size = m if border else 0
        shapes = ((m, m), (groups, m, m), (groups,), (), (size, size), (), (), (), ())
        for name, shape in zip(_STATE_NAMES, shapes):
            exponent = name == "scale_exponent"
            self._state(prefix + name, lead + shape, "max" if exponent else "sum", EMPTY_EXPONENT if exponent else 0.0)

    def reset(self) -> None:
        """TorchMetrics' reset, then each one-number default expanded to its state's shape.

        TorchMetrics sets every state to a copy of its default (here one number) and frees the old
        one first, so no second copy of an ``m x m`` state is ever alive.
        """
        shapes = {name: getattr(self, name).shape for name in state_names(self)}
        super().reset()
        for name, shape in shapes.items():
            state = getattr(self, name)
            if state.shape != shape:
                setattr(self, name, state.expand(shape).contiguous())

    def _output_states(self) -> List[GramState]:
        """The :class:`GramState` of every analysed output, in order: views of the metric's states."""
        if self.layer_actions is None:
            return [GramState(*(getattr(self, name) for name in _STATE_NAMES))]
        stacked = [getattr(self, "layer_" + name) for name in _STATE_NAMES]
        return [GramState(*(t[i] for t in stacked)) for i in range(len(self.layer_names))]

    def _tangent_state(self) -> TangentState:
        return TangentState(self.tangent_gram, self.tangent_exponent, self.tangent_samples)

    def _add_transform_states(self, transforms: Dict[str, Any], layers: bool) -> None:
        """Sums per jackknife group for ``known_transforms`` (the output's width is set by the first batch)."""
        if transforms and layers:
            raise ValueError("Expected `known_transforms` without `layers`: they measure the model's own output.")
        self.known_transforms = transforms
        groups = max(self.num_groups, 1)
        self._state("transform_moments", (groups, 0), "sum")
        self._state("transform_sums", (len(transforms), groups), "sum")

    def _add_transforms(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> None:
        sums = transform_update(model, inputs, self.known_transforms, self.output_transform,
                                self.transform_moments.shape[0])
        with torch.inference_mode(False):
            if self.transform_moments.shape[1] == 0:  # the first batch sets the output's width
                self.transform_moments = torch.zeros_like(sums.moments, dtype=self.gram.dtype, device=self.gram.device)
            if self.transform_moments.shape != sums.moments.shape:
                raise ValueError(f"Expected outputs of {self.transform_moments.shape[1] - 2} values for "
                                 f"`known_transforms`, got {sums.moments.shape[1] - 2}.")
            # dtype first: a float64 tensor cannot move to a device without float64 (MPS, float32 states)
            self.transform_moments += sums.moments.to(self.gram.dtype).to(self.gram.device)
            self.transform_sums += sums.errors.to(self.gram.dtype).to(self.gram.device)

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
        if device.type == "mps" and self.tangent_gram.dtype == torch.float64:
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
        chunks = self._last_chunks
        options = self.row_options.replace(
            derivative=mode, generator=self.generator, tangents_per_pass=None if chunks is None else chunks.tangents,
            rows_per_pass=None if chunks is None else chunks.rows,
        )
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

    @property
    def pass_budget(self) -> Optional[int]:
        """Bytes one derivative pass may take: what the Gram matrices leave of ``memory_budget``.

        Lowered by :meth:`cap_pass_memory`; ``None`` (no ``memory_budget``, no cap) analyses a batch
        in one pass.
        """
        left = None if self.memory_budget is None else max(self.memory_budget - self._matrix_bytes, 0)
        if self._pass_cap is None:
            return left
        return self._pass_cap if left is None else min(left, self._pass_cap)

    def cap_pass_memory(self, nbytes: Optional[int]) -> None:
        """Bound each derivative pass by ``nbytes`` as well (e.g. what a training step used); ``None`` lifts it."""
        check_int("nbytes", nbytes, minimum=1, allow_none=True)
        self._pass_cap = nbytes

    @property
    def pass_chunks(self) -> Optional[_memory.PassChunks]:
        """Samples and forward-mode tangents per derivative pass of the last :meth:`update` (``None`` before one)."""
        return self._last_chunks

    def _passes(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> Iterator[Tensor]:
        """The batch in passes that fit :attr:`pass_budget`: fewer samples, then fewer tangents (rows) per pass."""
        budget, size = self.pass_budget, inputs.shape[0]
        m = self.action.num_generators
        if budget is None or size == 0:
            self._last_chunks = _memory.PassChunks(size, m)
            yield inputs
            return
        key = (tuple(inputs.shape[1:]), inputs.dtype, inputs.device)
        footprint = self._footprints.get(key)
        if footprint is None:
            footprint = pass_footprint(model, inputs[:2], self.row_options, self.layer_actions)
            self._footprints[key] = footprint
        mode = self._resolved_derivative or choose_derivative(self.derivative, m, footprint.rows)
        chunks = _memory.pass_chunks(footprint, m, mode == "forward", size, budget)
        self._last_chunks = chunks
        for start in range(0, size, chunks.samples):
            yield inputs[start:start + chunks.samples]

    def update(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> None:  # type: ignore[override]
        """Add the rows of ``model`` at a batch of ``inputs`` (and the inputs' tangent Gram matrix).

        The batch is analysed in derivative passes that fit :attr:`pass_budget` (the same sums as
        one pass, up to the order of the float64 additions).
        """
        self.action.validate_input(inputs)
        for part in self._passes(model, inputs):
            result = self._batch_rows(model, part, None)
            self._accumulate(result.rows, part, result.border_rows)
        if self.known_transforms:
            self._add_transforms(model, inputs)

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
        mark_updated(self)  # what TorchMetrics' wrapper does for `update`
        named = self._named_rows(rows)
        self._check_inputs(named, inputs)
        self._accumulate(named, inputs, border_rows or {})

    def _named_rows(self, rows: Union[Tensor, Mapping[str, Tensor]]) -> Dict[str, Tensor]:
        """``name -> rows`` of every analysed output, each checked to be ``(B, K, m)``."""
        m = self.action.num_generators
        if self.layer_actions is not None:
            if not isinstance(rows, Mapping):
                raise ValueError(f"Expected a dict layer name -> rows with `layers`, got {type(rows).__name__}.")
            if set(rows) != set(self.layer_names):
                raise ValueError(f"Expected rows for the layers {self.layer_names}, got them for {sorted(rows)}.")
        elif isinstance(rows, Mapping):
            raise ValueError("Expected rows as a tensor (B, K, m); a dict of rows needs `layers`.")
        named = dict(rows) if isinstance(rows, Mapping) else {MODEL_OUTPUT: rows}
        for name, r in named.items():
            if r.ndim != 3 or r.shape[-1] != m:
                where = "" if name == MODEL_OUTPUT else f" for layer {name!r}"
                raise ValueError(f"Expected rows of shape (B, K, {m}){where}, got shape {tuple(r.shape)}.")
        return named

    @staticmethod
    def _check_inputs(rows: Mapping[str, Tensor], inputs: Optional[Tensor]) -> None:
        batch = next(iter(rows.values())).shape[0]
        if inputs is not None and (not isinstance(inputs, Tensor) or inputs.ndim < 1 or inputs.shape[0] != batch):
            got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"Expected `inputs` with batch size {batch} (that of the rows), got {got}.")

    def _accumulate(
        self, rows: Mapping[str, Tensor], inputs: Optional[Tensor], border_rows: Mapping[str, Tensor]
    ) -> None:
        """The one accumulation path: each output's rows into its :class:`GramState`, then the tangents.

        The jackknife groups are keyed by the inputs when known (the rows otherwise); the tangents
        are added over the samples every output kept.
        """
        kept: Optional[Tensor] = None
        for (name, r), state in zip(rows.items(), self._ordered_states(rows)):
            finite = accumulate(state, r, r if inputs is None else inputs, border_rows.get(name))
            kept = finite if kept is None else kept & finite
        if inputs is not None and kept is not None:
            accumulate_tangents(self._tangent_state(), self.action, inputs, kept)

    def _ordered_states(self, rows: Mapping[str, Tensor]) -> List[GramState]:
        states = dict(zip(self.outputs, self._output_states()))
        return [states[name] for name in rows]

    def _families(self) -> List[Tuple[Tuple[str, ...], str]]:
        """Each group of scaled states with the exponent it shares."""
        return [_MODEL_FAMILY, _TANGENT_FAMILY] + ([_LAYER_FAMILY] if self.layer_actions is not None else [])

    def _exponents(self) -> Tensor:
        """Every exponent state, flattened into one vector (the order of :meth:`_families`)."""
        return torch.cat([getattr(self, exponent).reshape(-1) for _, exponent in self._families()])

    def _align(self, exponents: Tensor) -> None:
        """Rescale the states to the largest of ``exponents`` ``(P, E)``, those of every process."""
        top, start = exponents.max(0).values, 0
        for names, exponent_name in self._families():
            current = getattr(self, exponent_name)
            target = top[start:start + current.numel()].reshape(current.shape).to(current)
            start += current.numel()
            for name in names:
                setattr(self, name, rescale(getattr(self, name), current, target))
            setattr(self, exponent_name, target.clone())

    def _before_sync(self, dist_sync_fn: Callable, process_group: Optional[Any]) -> None:
        """Bring every process's states to one scale before TorchMetrics sums them."""
        gathered = dist_sync_fn(self._exponents(), group=process_group)
        self._align(torch.stack(list(gathered)))

    def merge_state(self, incoming_state: Union[Dict[str, Any], Metric]) -> None:
        """Add another metric's states (or a state dict) to these, both brought to one scale first."""
        incoming: Dict[str, Any]
        if isinstance(incoming_state, LieGGMetric):
            incoming = dict(incoming_state.metric_state)
        elif isinstance(incoming_state, dict) and "tangent_exponent" in incoming_state:
            incoming = dict(incoming_state)
        else:
            super().merge_state(incoming_state)  # raises the TorchMetrics error for what it cannot merge
            return
        mine = self._exponents()
        theirs = torch.cat([incoming[e].reshape(-1) for _, e in self._families()]).to(mine)
        self._align(torch.stack([mine, theirs]))
        for names, exponent_name in self._families():
            ours = getattr(self, exponent_name)
            for name in names:
                incoming[name] = rescale(incoming[name].to(ours.device), incoming[exponent_name].to(ours), ours)
            incoming[exponent_name] = ours
        super().merge_state(incoming)

    def _shaped_result(self, result: Any) -> Any:
        """A 1-generator algebra keeps 1-d per-generator fields (TorchMetrics squeezed them)."""
        return with_generator_shape(result, tuple(self.action.generator_shape))

    def compute(self) -> Union[SymmetryReport, Dict[str, SymmetryReport]]:  # type: ignore[override]
        """Solve each analysed output's Gram matrix; raises ``ValueError`` when no sample was accumulated.

        Returns:
            A :class:`SymmetryReport`, or with ``layers`` a dict ``name -> SymmetryReport`` in the
            order of ``layers``; every one with its jackknife standard errors and at its true scale.
        """
        reports = {name: self._solve(name, state) for name, state in zip(self.outputs, self._output_states())}
        return reports if self.layer_actions is not None else reports[MODEL_OUTPUT]

    def _solve(self, name: str, state: GramState) -> SymmetryReport:
        samples, rows = int(state.num_samples), int(state.num_rows)
        if samples <= 0:
            skipped = int(state.num_skipped)
            raise ValueError(
                f"LieGGMetric: all {skipped} samples gave non-finite outputs or derivatives{_label(name)} (NaN or "
                "infinite: has the model diverged?); nothing to solve." if skipped else
                f"LieGGMetric has no samples to solve{_label(name)}: call `update` with at least one finite sample."
            )
        m = self.action.num_generators
        if rows < m:
            rank_zero_warn(
                f"LieGGMetric: {rows} rows for m={m} generators{_label(name)}; at least {m - rows} zero "
                "eigenvalues come from too little data, not from learned symmetries."
            )
        report = solve_states(
            state, self.action, self._tangent_state(), border_in_gram=_border_in_gram(self.outputs[name]),
            reference=self.reference, known=self.known, nullity_tolerance=self.nullity_tolerance,
            warn=not self._warned_constant,
        )
        self._warned_constant = self._warned_constant or input_independent(state.gram, samples)
        if self.known_transforms:
            sums = TransformSums(self.transform_moments, self.transform_sums)
            errors = transform_errors(sums, list(self.known_transforms))
            report.transform_errors = {key: value for key, (value, _) in errors.items()}
            report.transform_errors_stderr = {key: stderr for key, (_, stderr) in errors.items()}
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
        from liegg_lightning.pictures.rendering import plot_spectra, plot_spectrum

        if val is None:
            val = self.compute()
        if isinstance(val, SymmetryReport):
            return plot_spectrum(val, ax=ax)
        if isinstance(val, Mapping):  # per-layer reports: one line each
            return plot_spectra(list(val.values()), ax=ax)
        return plot_spectra(list(val), ax=ax)


def adds_nothing(metric: LieGGMetric, option: str, value: Any) -> bool:
    """Whether an option given beside a metric is unset, its default, or what the metric already has."""
    parameter = inspect.signature(LieGGMetric.__init__).parameters.get(option)
    default = inspect.Parameter.empty if parameter is None else parameter.default
    return value is None or any(value is v or (type(value) is type(v) and value == v)
                                for v in (default, getattr(metric, option, inspect.Parameter.empty)))


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
    states = {name: getattr(metric, name) for name in state_names(metric)}
    placeholder = torch.empty(0)
    memo: Dict[int, Any] = {id(state): placeholder for state in states.values()}
    memo.update({id(cached): None for cached in cached_results(metric)})
    fresh = cast(LieGGMetric, copy.deepcopy(metric, memo))
    for name, state in states.items():
        setattr(fresh, name, torch.empty_like(state, memory_format=torch.contiguous_format))
    fresh.reset()
    return fresh
