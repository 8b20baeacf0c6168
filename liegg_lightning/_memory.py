"""The memory model of an analysis: pure arithmetic, no torch (the time model is :mod:`liegg_lightning.callback._cost`).

Two parts share one ``memory_budget``:

* the float64 ``m x m`` matrices: the Gram states of every analysed output (the model's, or each
  layer's), their jackknife groups, the tangents' Gram matrix, and the solve's working matrices
  (:func:`analysis_bytes`); an algebra whose matrices do not fit is refused before anything is
  allocated (:func:`check_memory_budget`), and fewer jackknife groups are kept where they do not
  all fit (:func:`jackknife_groups`);
* the derivative passes, whose activations grow with the samples times the tangents of one pass:
  what the matrices leave of the budget bounds them (:func:`pass_chunks` splits a batch into
  passes of fewer samples, and forward mode's tangents into fewer per pass, so that one pass fits).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

__all__ = [
    "BASE_STATES",
    "GRAM_BYTES_PER_ENTRY",
    "PassChunks",
    "PassFootprint",
    "WORK_MATRICES",
    "analysis_bytes",
    "check_memory_budget",
    "format_bytes",
    "jackknife_groups",
    "pass_chunks",
]

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
#: Copies of a pass's float64 rows alive at once (the rows, their scaled copy, a projection or an
#: output tangent subtracted).
ROW_COPIES = 3


def format_bytes(n: float) -> str:
    """Bytes in the largest unit that keeps a digit before the point (never "0.0 MiB")."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def analysis_bytes(num_generators: int, states: int = BASE_STATES, groups: int = 0, reports: int = 0) -> int:
    """Peak bytes of the matrices of an analysis: ``states + groups + reports`` ``m x m`` float64 matrices and the work.

    Args:
        num_generators: ``m``.
        states: ``m x m`` states: one Gram matrix per analysed output (two with a border ring) and
            the tangents' Gram matrix.
        groups: Jackknife partial Gram matrices, of every analysed output together.
        reports: Reports whose generators stay alive while the next output is solved.

    The work is :data:`WORK_MATRICES` more ``m x m`` matrices; the small states (counts per group,
    scalars, TorchMetrics' one-number defaults) are counted too. A batch's rows are the passes' part.
    """
    m2 = num_generators * num_generators
    return 8 * ((states + groups + reports + WORK_MATRICES) * m2 + groups + SMALL_STATES)


def check_memory_budget(
    num_generators: int, memory_budget: Optional[int], states: int = BASE_STATES, reports: int = 0
) -> int:
    """Peak bytes of the states, update and solve for ``m`` generators; :class:`ValueError` above the budget."""
    estimate = analysis_bytes(num_generators, states, reports=reports)
    if memory_budget is not None and estimate > memory_budget:
        raise ValueError(
            f"The algebra has m={num_generators} generators: its float64 Gram matrices and solve "
            f"({states + reports + WORK_MATRICES} matrices of m x m) need about {format_bytes(estimate)}, over the "
            f"memory budget of {format_bytes(memory_budget)}. Use a smaller algebra, analyse fewer layers or raise "
            "`memory_budget`."
        )
    return estimate


def jackknife_groups(
    num_generators: int,
    requested: int,
    memory_budget: Optional[int],
    states: int = BASE_STATES,
    outputs: int = 1,
    reports: int = 0,
) -> int:
    """How many jackknife groups fit: ``requested`` partial ``m x m`` Gram matrices per output beside the rest.

    With a budget, :func:`analysis_bytes` (``outputs * G`` group matrices) must fit it; fewer groups
    are kept when they do not, and none when fewer than two would (a jackknife needs two).
    """
    if requested < 2:
        return 0
    if memory_budget is None:
        return requested
    base = analysis_bytes(num_generators, states, reports=reports)
    per_group = analysis_bytes(num_generators, states, outputs, reports) - base
    groups = min(requested, int((memory_budget - base) // per_group))
    return groups if groups >= 2 else 0


class PassFootprint(NamedTuple):
    """What one sample costs in a derivative pass, measured on a plain pass (see ``functional.footprint``).

    Attributes:
        activation_bytes: The tensors one sample's forward pass keeps for its backward pass
            (parameters excluded): the reverse pass's graph, and about what each tangent of a
            forward-mode pass carries through the network.
        input_bytes: One sample's input in its dtype (a reverse pass's gradients are that per row).
        rows: Rows one sample gives (all analysed outputs together).
        element_size: Bytes of one input element (the gradients are formed in float64 from them).
        largest_bytes: The largest of those tensors: a layer's output, which a forward-mode pass
            holds a few times over per tangent (input, output and the operation's temporaries).
    """

    activation_bytes: int
    input_bytes: int
    rows: int
    element_size: int = 4
    largest_bytes: int = 0


#: Copies of the largest activation a forward-mode pass holds per tangent at its peak (a layer's
#: input and output tangents and one temporary, e.g. an activation's derivative).
LIVE_COPIES = 3


class PassChunks(NamedTuple):
    """How a batch's derivative passes are split.

    Attributes:
        samples: Samples per pass.
        tangents: Tangents per forward-mode pass (all ``m`` in reverse mode).
        rows: Rows whose input gradients a reverse-mode pass forms at once (``None``: all of them).
    """

    samples: int
    tangents: int
    rows: Optional[int] = None


#: Bytes per input element and row of a reverse pass: the gradient in the model's dtype's place
#: counted as float64, twice (the gradient and the action's product with it).
_GRADIENT_COPIES = 2


def pass_bytes(
    footprint: PassFootprint, num_generators: int, forward: bool, samples: int, tangents: int,
    rows: Optional[int] = None,
) -> int:
    """Estimated peak bytes of one pass over ``samples`` samples.

    Forward mode carries the primal and each of ``tangents`` tangents through the network (the
    activations, or :data:`LIVE_COPIES` of the largest, and the input tangent in float64, each);
    reverse mode keeps one graph and forms the input gradients of ``rows`` rows
    (default: all) at once. Both keep every row in float64.
    """
    row_bytes = ROW_COPIES * 8 * footprint.rows * num_generators
    if forward:
        # per tangent: every activation, or a few copies of the largest where one layer dominates;
        # the input tangents themselves are formed in float64
        activation = max(footprint.activation_bytes, LIVE_COPIES * footprint.largest_bytes)
        inputs = 2 * 8 * footprint.input_bytes // max(footprint.element_size, 1)
        per_sample = (tangents + 1) * (activation + inputs) + row_bytes
    else:
        at_once = footprint.rows if rows is None else rows
        gradients = _GRADIENT_COPIES * 8 * footprint.input_bytes // max(footprint.element_size, 1) * at_once
        per_sample = footprint.activation_bytes + gradients + row_bytes
    return samples * per_sample


def pass_chunks(
    footprint: PassFootprint, num_generators: int, forward: bool, batch_size: int, pass_budget: Optional[int]
) -> PassChunks:
    """The largest passes within ``pass_budget`` bytes: every tangent (row) first, then as many samples as fit.

    Without a budget the whole batch is one pass. When not even one sample fits, forward mode
    carries fewer tangents, reverse mode forms fewer rows' gradients at once, down to one: a pass of
    one sample and one tangent (row) is the least there is, used when not even that fits.
    """
    m = num_generators
    if pass_budget is None:
        return PassChunks(batch_size, m)
    one = pass_bytes(footprint, m, forward, 1, m)
    if one <= pass_budget:
        return PassChunks(max(1, min(batch_size, int(pass_budget // max(one, 1)))), m)
    if forward:
        base = pass_bytes(footprint, m, forward, 1, 0)
        step = pass_bytes(footprint, m, forward, 1, 1) - base
        return PassChunks(1, max(1, min(m, int((pass_budget - base) // max(step, 1)))))
    base = pass_bytes(footprint, m, forward, 1, m, rows=0)
    step = pass_bytes(footprint, m, forward, 1, m, rows=1) - base
    return PassChunks(1, m, max(1, min(footprint.rows, int((pass_budget - base) // max(step, 1)))))
