"""``LieGGMetric``: a TorchMetrics metric that streams polarization rows into a float64 Gram matrix."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from liegg_lightning import algebras
from liegg_lightning.actions import GroupAction
from liegg_lightning.functional.polarization import (
    DERIVATIVE_MODES,
    OUTPUT_MODES,
    _flat_output,
    polarization_rows,
    resolve_derivative,
)
from liegg_lightning.functional.spectrum import check_memory_budget, gram_update
from liegg_lightning.report import SymmetryReport, build_report

__all__ = ["LieGGMetric", "DEFAULT_MEMORY_BUDGET"]

#: Default cap on the accumulator and solve memory: 1 GiB (m up to about 6,600).
DEFAULT_MEMORY_BUDGET = 2**30

KnownGenerators = Union[Sequence[str], Mapping[str, Tensor]]


class LieGGMetric(Metric):
    """Accumulates the network polarization matrix's Gram matrix; ``compute()`` gives a :class:`SymmetryReport`.

    States are the float64 Gram matrix ``(m, m)`` and the sample, row and skip counts, all summed
    across processes, so memory is ``O(m^2)`` whatever the amount of data.

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
        nullity_tolerance: Relative level below which eigenvalues count as symmetries.
        memory_budget: Bytes the Gram matrix and its solve may take; larger algebras are refused
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
    num_samples: Tensor
    num_rows: Tensor
    num_skipped: Tensor

    def __init__(
        self,
        action: GroupAction,
        reference_algebra: Optional[Union[str, Tensor]] = None,
        known_generators: Optional[KnownGenerators] = None,
        output_mode: str = "jacobian",
        num_projections: Optional[int] = None,
        output_transform: Optional[Callable[[Tensor], Tensor]] = None,
        derivative: str = "auto",
        nullity_tolerance: float = 1e-2,
        memory_budget: Optional[int] = DEFAULT_MEMORY_BUDGET,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(action, GroupAction):
            raise ValueError(
                "Expected `action` to be a GroupAction (VectorAction, ImageAction or TangentAction), "
                f"got {type(action).__name__}."
            )
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"Expected `output_mode` to be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}.")
        if output_mode == "random" and (not isinstance(num_projections, int) or num_projections < 1):
            raise ValueError(
                f"Expected a positive int `num_projections` with output_mode='random', got {num_projections!r}."
            )
        if derivative not in DERIVATIVE_MODES:
            raise ValueError(f"Expected `derivative` to be one of {', '.join(DERIVATIVE_MODES)}, got {derivative!r}.")
        if not nullity_tolerance > 0:
            raise ValueError(f"Expected a positive `nullity_tolerance`, got {nullity_tolerance!r}.")
        if output_transform is not None and not callable(output_transform):
            raise ValueError(f"Expected `output_transform` to be callable or None, got {output_transform!r}.")
        m = action.num_generators
        check_memory_budget(m, memory_budget)
        # resolve names now: a bad name fails here, not after an epoch of work
        reference = None if reference_algebra is None else algebras.reference_vectors(reference_algebra, action)
        known = algebras.known_vectors(known_generators, action)
        super().__init__(**kwargs)
        self.action = action
        self.reference = reference
        self.known = known
        self.output_mode = output_mode
        self.num_projections = num_projections
        self.output_transform = output_transform
        self.derivative = derivative
        self.nullity_tolerance = nullity_tolerance
        self.generator = torch.Generator().manual_seed(int(seed))
        self._resolved_derivative: Optional[str] = None

        self.add_state("gram", torch.zeros(m, m, dtype=torch.float64), dist_reduce_fx="sum")
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

    def _derivative_for(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> str:
        if self._resolved_derivative is None:
            if self.derivative == "auto":
                with torch.no_grad():
                    k = _flat_output(model, inputs[:1], self.output_transform).shape[1]
                self._resolved_derivative = resolve_derivative(
                    "auto", self.action, k, self.output_mode, self.num_projections
                )
            else:
                self._resolved_derivative = self.derivative
        return self._resolved_derivative

    def rows(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
        """Polarization rows ``(B, K, m)`` (float64) of ``model`` at ``inputs``, as :meth:`update` uses them."""
        self.action.validate_input(inputs)
        return polarization_rows(
            model,
            inputs,
            self.action,
            output_mode=self.output_mode,  # type: ignore[arg-type]
            num_projections=self.num_projections,
            generator=self.generator,
            output_transform=self.output_transform,
            derivative=self._derivative_for(model, inputs),  # type: ignore[arg-type]
        )

    def update(self, model: Callable[[Tensor], Tensor], inputs: Tensor) -> None:  # type: ignore[override]
        """Add the rows of ``model`` at a batch of ``inputs``."""
        self.update_rows(self.rows(model, inputs))

    def update_rows(self, rows: Tensor) -> None:
        """Add precomputed rows ``(B, K, m)``; samples with non-finite rows are dropped and counted."""
        if rows.ndim != 3 or rows.shape[-1] != self.gram.shape[0]:
            raise ValueError(
                f"Expected rows of shape (B, K, {self.gram.shape[0]}), got shape {tuple(rows.shape)}."
            )
        gram, finite, num_samples, num_rows = gram_update(rows)
        # dtype first: a float64 tensor cannot move to a device without float64 (MPS, float32 states)
        self.gram += gram.to(self.gram.dtype).to(self.gram.device)
        self.num_samples += num_samples.to(self.num_samples.device)
        self.num_rows += num_rows.to(self.num_rows.device)
        self.num_skipped += (finite.numel() - num_samples).to(self.num_skipped.device)

    def compute(self) -> SymmetryReport:
        """Solve the accumulated Gram matrix; raises ``ValueError`` when no sample was accumulated."""
        if float(self.num_samples) <= 0:
            raise ValueError("LieGGMetric has no samples to solve: call `update` with at least one finite sample.")
        m = self.gram.shape[0]
        if float(self.num_rows) < m:
            rank_zero_warn(
                f"LieGGMetric: {int(self.num_rows)} rows for m={m} generators; at least {m - int(self.num_rows)} "
                "zero eigenvalues come from too little data, not from learned symmetries."
            )
        return build_report(
            self.gram,
            int(self.num_samples),
            int(self.num_rows),
            int(self.num_skipped),
            self.action,
            reference=self.reference,
            known=self.known,
            nullity_tolerance=self.nullity_tolerance,
        )

    def plot(self, val: Optional[SymmetryReport] = None, ax: Optional[Any] = None) -> Any:
        """Plot the symmetry-variance spectrum (computing the report when ``val`` is not given).

        Returns:
            ``(figure, axes)`` as TorchMetrics' ``plot`` methods do.
        """
        from liegg_lightning.rendering import plot_spectrum

        report = self.compute() if val is None else val
        return plot_spectrum(report, ax=ax)
