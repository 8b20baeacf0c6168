"""The functional core: pure tensor functions under :class:`~liegg_lightning.LieGGMetric` and the callback.

One call, :func:`symmetry_report`, goes from a model and a batch to a report. The building blocks,
for those who assemble their own pipeline:

* rows: :func:`polarization_rows` (and its two strategies :func:`input_gradients` with an action's
  ``rows``, and :func:`forward_rows`), with the options of a metric as one :class:`RowOptions`;
  :func:`choose_derivative`, the one rule for forward against reverse mode;
* the accumulation and the solve, the one path :class:`~liegg_lightning.LieGGMetric` runs for the
  model and every layer: :func:`new_state` and :func:`accumulate` (rows into a :class:`GramState`,
  in place), :func:`new_tangent_state` and :func:`accumulate_tangents` (the inputs'
  :class:`TangentState`), :func:`solve_states` (states to a report) through the public solve
  :func:`symmetry_compute` (a Gram matrix and its counts to a report);
* the spectrum's measures: :func:`solve_spectrum`, :func:`estimate_nullity` (with :func:`log_gaps`),
  :func:`jackknife_stderr`, :func:`relative_spectrum`, :func:`reference_biases`, :func:`subspace_bias`,
  :func:`closure_error`, :func:`known_variances`, :func:`border_share`.
"""

from liegg_lightning.functional.polarization import (
    RowOptions,
    choose_derivative,
    forward_rows,
    input_gradients,
    polarization_rows,
)
from liegg_lightning.functional.spectrum import (
    border_share,
    closure_error,
    estimate_nullity,
    jackknife_stderr,
    known_variances,
    log_gaps,
    reference_biases,
    relative_spectrum,
    solve_spectrum,
    subspace_bias,
)
from liegg_lightning.functional.symmetry import (
    GramState,
    TangentState,
    accumulate,
    accumulate_tangents,
    new_state,
    new_tangent_state,
    solve_states,
    symmetry_compute,
    symmetry_report,
)

__all__ = [
    "GramState",
    "RowOptions",
    "TangentState",
    "accumulate",
    "accumulate_tangents",
    "border_share",
    "choose_derivative",
    "closure_error",
    "estimate_nullity",
    "forward_rows",
    "input_gradients",
    "jackknife_stderr",
    "known_variances",
    "log_gaps",
    "new_state",
    "new_tangent_state",
    "polarization_rows",
    "reference_biases",
    "relative_spectrum",
    "solve_spectrum",
    "solve_states",
    "subspace_bias",
    "symmetry_compute",
    "symmetry_report",
]
