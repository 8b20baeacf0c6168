"""A picture of depth: how invariant (or equivariant) each analysed layer is, from per-layer reports.

Kept apart from :mod:`liegg_lightning.rendering` for now; it uses the same conventions (figures
outside pyplot on an Agg canvas, sized for a TensorBoard card).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from liegg_lightning.report import SymmetryReport

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.figure import Figure

__all__ = ["layer_label", "layers_figure", "layers_table"]

_DPI = 100
#: Width of the figure in inches: about 400 pixels, the size of a TensorBoard image card.
_WIDTH_INCHES = 4.0
#: Cells get their value written in them up to this many.
_MAX_ANNOTATED_CELLS = 60


def layer_label(name: str) -> str:
    """The label of a layer in pictures and logs: its name, ``"output"`` for the model's own output (``""``)."""
    return name if name else "output"


def layers_table(
    reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4
) -> Tuple[np.ndarray, List[str], List[str]]:
    """The heat map's numbers: ``(values, row labels, column labels)``.

    Each value is a variance divided by the mean of its layer's spectrum (the ``normalized_variances``),
    so that layers with outputs of different scales compare: 1 is a direction of average change,
    values far below 1 are (near-)symmetries of that layer.

    Args:
        reports: ``layer name -> report``, in depth order.
        known: Names of known generators (columns): their variance along each layer. ``None``:
            the ``k`` leading (most invariant) generators of each layer instead.
        k: How many leading generators, when ``known`` is ``None``.

    Raises:
        ValueError: For no reports, or a known generator a report does not hold.
    """
    if not reports:
        raise ValueError("Expected at least one layer's report, got none.")
    rows = list(reports)
    if known is not None:
        cols = [str(n) for n in known]
        if not cols:
            raise ValueError("Expected at least one known generator name in `known`, got none.")
        values = np.full((len(rows), len(cols)), np.nan)
        for i, name in enumerate(rows):
            report = reports[name]
            mean = float(report.variances.to(torch.float64).mean())
            for j, gen in enumerate(cols):
                if gen not in report.known_variances:
                    raise ValueError(
                        f"Layer {layer_label(name)!r} has no known variance {gen!r}; it has "
                        f"{sorted(report.known_variances)} (pass `known_generators` to the metric)."
                    )
                values[i, j] = report.known_variances[gen] / mean if mean > 0 else np.nan
        return values, [layer_label(n) for n in rows], cols
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Expected a positive int `k`, got {k!r}.")
    count = min(k, max(int(r.normalized_variances.numel()) for r in reports.values()))
    values = np.full((len(rows), count), np.nan)
    for i, name in enumerate(rows):
        nv = reports[name].normalized_variances.detach().to("cpu", torch.float64).numpy().reshape(-1)
        values[i, : min(count, nv.size)] = nv[:count]
    return values, [layer_label(n) for n in rows], [f"$h_{j}$" for j in range(count)]


def _cell_text(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    if value == 0.0:
        return "0"
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def layers_figure(
    reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4
) -> Figure:
    """Variance per layer (heat map, log scale) beside each layer's symmetry bias (bars).

    Rows are the analysed layers in the given order (depth), columns the ``k`` leading generators
    of each layer, or the named ``known`` generators. A cell is the variance divided by the mean of
    its layer's spectrum: dark cells are directions the layer is invariant (or equivariant) to.
    The bars give each layer's ``symmetry_bias`` (the distance of its most invariant generator to the
    reference algebra; none without a reference algebra). About 400 pixels wide.

    Args:
        reports: ``layer name -> report``, in depth order (as ``analyze(..., layers=...)`` returns).
        known: Known generator names for the columns; ``None`` shows the leading generators.
        k: How many leading generators, when ``known`` is ``None``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from liegg_lightning import VectorAction, analyze
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> reports = analyze(net, torch.randn(64, 3), VectorAction(dim=3), reference_algebra="so",
        ...                   layers=["0", "1", ""], progress=False)
        >>> fig = layers_figure(reports)
        >>> round(fig.get_figwidth() * fig.dpi)
        400
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    values, row_labels, col_labels = layers_table(reports, known, k)
    num_rows, num_cols = values.shape
    fig = Figure(figsize=(_WIDTH_INCHES, 1.5 + 0.28 * num_rows), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    heat_ax, bias_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(num_cols, 3), 2]}, sharey=True)

    positive = values[np.isfinite(values) & (values > 0)]
    lo = float(positive.min()) if positive.size else 1e-3
    hi = float(positive.max()) if positive.size else 1.0
    lo, hi = min(lo, hi / 10.0), max(hi, lo * 10.0)
    shown = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    cmap = _colormap()
    image = heat_ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=lo, vmax=hi), aspect="auto", interpolation="nearest")
    if values.size <= _MAX_ANNOTATED_CELLS:
        mid = math.sqrt(lo * hi)
        for (r, c), value in np.ndenumerate(values):
            dark = math.isfinite(value) and 0 < value < mid
            heat_ax.text(c, r, _cell_text(value), ha="center", va="center", fontsize=6.5,
                         color="white" if dark else "black")
    heat_ax.set_xticks(range(num_cols), col_labels, fontsize=7, rotation=30 if known is not None else 0,
                       ha="right" if known is not None else "center")
    heat_ax.set_yticks(range(num_rows), row_labels, fontsize=7)
    heat_ax.set_title("variance / layer mean", fontsize=8)
    fig.colorbar(image, ax=heat_ax, location="bottom", shrink=0.8, pad=0.02, aspect=30).ax.tick_params(labelsize=6)

    biases = np.array([
        np.nan if r.symmetry_bias is None else float(r.symmetry_bias) for r in reports.values()
    ])
    ypos = np.arange(num_rows)
    if np.isfinite(biases).any():
        bias_ax.barh(ypos, np.nan_to_num(biases, nan=0.0), color="C1", height=0.6)
        for y, b in zip(ypos, biases):
            finite = math.isfinite(b)
            bias_ax.text(min(b, 0.95) + 0.03 if finite else 0.03, y, f"{b:.2g}" if finite else "n/a",
                         va="center", fontsize=6.5)
        bias_ax.set_xlim(0, 1.3)
    else:
        bias_ax.text(0.5, 0.5, "no reference\nalgebra", ha="center", va="center", fontsize=7,
                     transform=bias_ax.transAxes)
        bias_ax.set_xlim(0, 1)
    bias_ax.set_title("symmetry bias", fontsize=8)
    bias_ax.tick_params(labelsize=6, left=False)
    bias_ax.grid(True, axis="x", alpha=0.3)
    heat_ax.set_ylim(num_rows - 0.5, -0.5)
    what = "known generators" if known is not None else "leading generators"
    fig.suptitle(f"Symmetry by layer ({what})", fontsize=9)
    return fig


def _colormap():  # noqa: ANN202 - a matplotlib Colormap
    import matplotlib

    return matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
