"""``LieGGMetric``: a TorchMetrics metric that streams polarization rows into a float64 Gram matrix."""

from __future__ import annotations

from typing import Any, Callable, Dict, Literal, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn
from torchmetrics.utilities.distributed import gather_all_tensors

from liegg_lightning.actions import GroupAction
from liegg_lightning.functional.polarization import (
    DerivativeMode,
    OutputMode,
    _check_options,
    _resolve_derivative,
    float64_device,
    polarization_rows,
)
from liegg_lightning.functional.symmetry import (
    EMPTY_EXPONENT,
    _check_memory_budget,
    _input_independent,
    _jackknife_groups,
    _rescale,
    _scaled,
    _symmetry_compute,
    _symmetry_update,
)
from liegg_lightning.report import SymmetryReport

__all__ = ["LieGGMetric", "DEFAULT_MEMORY_BUDGET"]

#: Default cap on the accumulator and solve memory: 1 GiB (m up to about 5,800; the jackknife's partial
#: Gram matrices get fewer groups from m of about 3,300 on, and none above about 4,700).
DEFAULT_MEMORY_BUDGET = 2**30

KnownGenerators = Union[Sequence[str], Mapping[str, Tensor]]


def _accumulate(state: Tensor, state_exponent: Tensor, increment: Tensor, exponent: Tensor, common: Tensor) -> None:
    """``state += increment`` in place, both brought from their exponents to ``common`` (their maximum)."""
    state.copy_(_rescale(state, state_exponent, common) + _rescale(increment, exponent, common))


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
        memory_budget: Bytes the Gram matrices and the solve may take; larger algebras are refused
            before anything is allocated. ``None`` disables the check.
        seed: Seed of the metric's own generator for random projections.
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
        **kwargs: Any,
    ) -> None:
        _check_options(action, output_mode, num_projections, derivative, output_transform)
        if isinstance(nullity_tolerance, bool) or not isinstance(nullity_tolerance, (int, float)) or not (
            0 < nullity_tolerance < 1
        ):
            raise ValueError(f"Expected a number in (0, 1) for `nullity_tolerance`, got {nullity_tolerance!r}.")
        if isinstance(jackknife_groups, bool) or not isinstance(jackknife_groups, int) or jackknife_groups < 0:
            raise ValueError(f"Expected `jackknife_groups` to be a non-negative int, got {jackknife_groups!r}.")
        if memory_budget is not None and (
            isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1
        ):
            raise ValueError(f"Expected `memory_budget` to be a positive int (bytes) or None, got {memory_budget!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"Expected `seed` to be an int, got {seed!r}.")
        m = action.num_generators
        _check_memory_budget(m, memory_budget)
        groups = _jackknife_groups(m, jackknife_groups, memory_budget)
        if groups < jackknife_groups:
            rank_zero_warn(
                f"LieGGMetric: the jackknife's {jackknife_groups} partial Gram matrices for m={m} do not fit the "
                f"memory budget beside the rest; "
                + (f"using {groups} groups." if groups else "standard errors are disabled (NaN).")
            )
        # resolve names now: a bad name fails here, not after an epoch of work
        reference = None if reference_algebra is None else action.reference_vectors(reference_algebra)
        known = action.known_vectors(known_generators)
        super().__init__(**kwargs)
        self.action = action
        self.reference_algebra = reference_algebra
        self.known_generators = known_generators
        self.reference = reference
        self.known = known
        self.output_mode: OutputMode = output_mode
        self.num_projections = num_projections
        self.output_transform = output_transform
        self.derivative: DerivativeMode = derivative
        self.nullity_tolerance = float(nullity_tolerance)
        self.jackknife_groups = jackknife_groups
        self.num_groups = groups
        self._warned_constant = False
        self.memory_budget = memory_budget
        self.seed = seed
        # made on first use: a torch.Generator cannot be pickled to ddp_spawn workers
        self._generator: Optional[torch.Generator] = None
        self._resolved_derivative: Optional[str] = None

        self.add_state("gram", torch.zeros(m, m, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("group_grams", torch.zeros(groups, m, m, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("group_counts", torch.zeros(groups, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("scale_exponent", torch.tensor(EMPTY_EXPONENT, dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("tangent_gram", torch.zeros(m, m, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tangent_exponent", torch.tensor(EMPTY_EXPONENT, dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("tangent_samples", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_rows", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_skipped", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

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
        return ", ".join(parts)

    def rows(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
        """Polarization rows ``(B, K, m)`` (float64) of ``model`` at ``inputs``, as :meth:`update` uses them.

        With ``derivative="auto"`` the first batch runs in reverse mode, which tells the number of
        rows per sample; later batches use forward mode when the algebra is the smaller of the two.
        """
        mode = self._resolved_derivative or ("reverse" if self.derivative == "auto" else self.derivative)
        rows = polarization_rows(
            model,
            inputs,
            self.action,
            output_mode=self.output_mode,
            num_projections=self.num_projections,
            generator=self.generator,
            output_transform=self.output_transform,
            derivative=mode,  # type: ignore[arg-type]
        )
        if self._resolved_derivative is None:
            self._resolved_derivative = _resolve_derivative(self.derivative, self.action, rows.shape[1])
        return rows

    def update(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> None:  # type: ignore[override]
        """Add the rows of ``model`` at a batch of ``inputs`` (and the inputs' tangent Gram matrix)."""
        self._add_rows(self.rows(model, inputs), inputs)

    def forward(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> None:  # type: ignore[override]
        """``metric(model, inputs)`` is :meth:`update`: a per-batch solve would cost an eigendecomposition each."""
        self.update(model, inputs)

    def update_rows(self, rows: Tensor, inputs: Optional[Tensor] = None) -> None:
        """Add precomputed rows ``(B, K, m)``; samples with non-finite rows are dropped and counted.

        Args:
            rows: Polarization rows.
            inputs: The ``B`` inputs behind the rows, for the tangent Gram matrix of the relative
                variances. Without them the report has no relative variances (unless every batch
                of an accumulation brings its inputs, they are left out).
        """
        # what TorchMetrics' wrapper does for `update`: forget a cached result, count the update
        self._computed = None
        self._update_count += 1
        self._add_rows(rows, inputs)

    def _add_rows(self, rows: Tensor, inputs: Optional[Tensor]) -> None:
        if rows.ndim != 3 or rows.shape[-1] != self.gram.shape[0]:
            raise ValueError(
                f"Expected rows of shape (B, K, {self.gram.shape[0]}), got shape {tuple(rows.shape)}."
            )
        if inputs is not None and (
            not isinstance(inputs, Tensor) or inputs.ndim < 1 or inputs.shape[0] != rows.shape[0]
        ):
            got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"Expected `inputs` with batch size {rows.shape[0]} (that of the rows), got {got}.")
        update = _symmetry_update(rows, self.num_groups, group_keys=inputs)
        dtype, device = self.gram.dtype, self.gram.device

        def here(t: Tensor) -> Tensor:
            # dtype first: a float64 tensor cannot move to a device without float64 (MPS, float32 states)
            return t.to(dtype).to(device)

        # everything in place: the states stay ordinary tensors when this runs under inference mode
        exponent = here(update.exponent)
        common = torch.maximum(self.scale_exponent, exponent)
        _accumulate(self.gram, self.scale_exponent, here(update.gram), exponent, common)
        if self.num_groups:
            _accumulate(self.group_grams, self.scale_exponent, here(update.group_grams), exponent, common)
            self.group_counts += here(update.group_counts)
        self.scale_exponent.copy_(common)
        self.num_samples += here(update.num_samples)
        self.num_rows += here(update.num_rows)
        self.num_skipped += here(update.num_skipped)
        if inputs is not None:
            with torch.inference_mode(False):
                x = inputs.detach().to(float64_device(inputs.device))
                tangent, t_exp = _scaled(self.action.tangent_gram(x, mask=update.finite.to(x.device)))
            t_exp = here(t_exp)
            t_common = torch.maximum(self.tangent_exponent, t_exp)
            _accumulate(self.tangent_gram, self.tangent_exponent, here(tangent), t_exp, t_common)
            self.tangent_exponent.copy_(t_common)
            self.tangent_samples += here(update.num_samples)

    def _align(self, exponents: Tensor) -> None:
        """Rescale the states to the largest of ``exponents`` ``(P, 2)`` (scale, tangent), that of every process."""
        scale, tangent = exponents[:, 0].max(), exponents[:, 1].max()
        self.gram = _rescale(self.gram, self.scale_exponent, scale)
        self.group_grams = _rescale(self.group_grams, self.scale_exponent, scale)
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
                               ("tangent_gram", "tangent_exponent")):
            state, exponent = incoming[name], incoming[exp_name]
            incoming[name] = _rescale(state.to(device), exponent.to(device), getattr(self, exp_name))
        incoming["scale_exponent"], incoming["tangent_exponent"] = self.scale_exponent, self.tangent_exponent
        super().merge_state(incoming)

    def compute(self) -> SymmetryReport:
        """Solve the accumulated Gram matrix; raises ``ValueError`` when no sample was accumulated."""
        num_samples = int(self.num_samples)
        if num_samples <= 0:
            raise ValueError("LieGGMetric has no samples to solve: call `update` with at least one finite sample.")
        m = self.gram.shape[0]
        if float(self.num_rows) < m:
            rank_zero_warn(
                f"LieGGMetric: {int(self.num_rows)} rows for m={m} generators; at least {m - int(self.num_rows)} "
                "zero eigenvalues come from too little data, not from learned symmetries."
            )
        constant = _input_independent(self.gram, num_samples)
        with_tangents = int(self.tangent_samples) == num_samples
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
        )
        self._warned_constant = self._warned_constant or constant
        return report

    def plot(
        self, val: Optional[Union[SymmetryReport, Sequence[SymmetryReport]]] = None, ax: Optional[Any] = None
    ) -> Any:
        """Plot the symmetry-variance spectrum: of ``val``, of each report in a list, or of :meth:`compute`.

        Args:
            val: A report, a list of reports (one line each, e.g. from successive epochs), or
                ``None`` to compute one.
            ax: Axes to draw into; ``None`` makes a new figure.

        Returns:
            ``(figure, axes)`` as TorchMetrics' ``plot`` methods do.
        """
        from liegg_lightning.rendering import plot_spectra, plot_spectrum

        if val is None:
            return plot_spectrum(self.compute(), ax=ax)
        if isinstance(val, SymmetryReport):
            return plot_spectrum(val, ax=ax)
        return plot_spectra(list(val), ax=ax)
