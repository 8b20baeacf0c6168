"""The functional core: pure tensor functions under :class:`~liegg_lightning.LieGGMetric` and the callback."""

from liegg_lightning.functional.polarization import (
    forward_rows,
    input_gradients,
    polarization_rows,
    resolve_derivative,
    rows_per_sample,
)
from liegg_lightning.functional.spectrum import (
    check_memory_budget,
    closure_error,
    estimate_nullity,
    gram_update,
    known_variances,
    reference_biases,
    solve_spectrum,
    subspace_bias,
)

__all__ = [
    "check_memory_budget",
    "closure_error",
    "estimate_nullity",
    "forward_rows",
    "gram_update",
    "input_gradients",
    "known_variances",
    "polarization_rows",
    "reference_biases",
    "resolve_derivative",
    "rows_per_sample",
    "solve_spectrum",
    "subspace_bias",
]
