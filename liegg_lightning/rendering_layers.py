"""A picture of depth: how invariant (or equivariant) each analysed layer is, from per-layer reports.

:func:`layers_table` decides what is shown; :func:`layers_image` draws it as a card picture on
:mod:`liegg_lightning.rendering`'s canvas (the ``layers`` picture the callback logs), and
:func:`layers_figure` as a matplotlib figure for notebooks and papers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from liegg_lightning.rendering import (
    _GREY,
    _INK,
    _ORANGE,
    _SEQUENTIAL,
    _SMALL,
    CARD_HEIGHT,
    CARD_WIDTH,
    _Canvas,
    _colour,
    _decade_label,
    _decade_ticks,
    _fit_text,
    _font,
    _header,
    _header_height,
    _upscale,
)
from liegg_lightning.report import SymmetryReport

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.figure import Figure

__all__ = ["layer_label", "layers_figure", "layers_image", "layers_table"]

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


def _log_range(values: np.ndarray) -> Tuple[float, float]:
    """The colour range of the heat map in log10 units: its positive values, at least a decade."""
    positive = values[np.isfinite(values) & (values > 0)]
    lo = float(positive.min()) if positive.size else 1e-3
    hi = float(positive.max()) if positive.size else 1.0
    lo, hi = min(lo, hi / 10.0), max(hi, lo * 10.0)
    return math.log10(lo), math.log10(hi)


def _layer_rows(canvas: _Canvas, values: np.ndarray, labels: Sequence[str], box: Tuple[int, int, int, int],
                limits: Tuple[float, float]) -> None:
    """The heat map: one row a layer, its values written in where the cells have room."""
    x0, y0, x1, y1 = box
    lo, hi = limits
    num_rows, num_cols = values.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(values) & (values > 0), np.log10(values), np.nan)
    heat = _colour(np.clip(logs, lo, hi), lo, hi, _SEQUENTIAL, bad=(211, 211, 211))
    canvas.paste(_upscale(heat, y1 - y0, x1 - x0), x0, y0)
    row_h, cell_w = (y1 - y0) / num_rows, (x1 - x0) / num_cols
    size = min(_SMALL, int(row_h * 0.75))
    for r, label in enumerate(labels):
        canvas.text(x0 - 6, y0 + (r + 0.5) * row_h, _fit_text(label, size, x0 - 10), size=size, anchor="rm")
    if cell_w < 34 or row_h < 14:
        return
    for (r, c), value in np.ndenumerate(values):
        dark = math.isfinite(value) and value > 0 and math.log10(value) < (lo + hi) / 2
        canvas.text(x0 + (c + 0.5) * cell_w, y0 + (r + 0.5) * row_h, _cell_text(value), size=11,
                    color=(255, 255, 255) if dark else _INK, anchor="mm")


def _bias_bars(canvas: _Canvas, biases: np.ndarray, box: Tuple[int, int, int, int]) -> None:
    """Each layer's symmetry bias as an orange bar (0 to 1 across ``box``), its value beside it."""
    x0, y0, x1, y1 = box
    if not np.isfinite(biases).any():
        canvas.text((x0 + x1) / 2, (y0 + y1) / 2, "no reference", size=11, color=_GREY, anchor="mm")
        return
    row_h, bar_w = (y1 - y0) / biases.size, (x1 - x0) * 0.6
    size = min(11, int(row_h * 0.75))
    canvas.line([(x0, y0), (x0, y1)], _GREY)
    for r, b in enumerate(biases):
        cy = y0 + (r + 0.5) * row_h
        length = bar_w * min(max(b, 0.0), 1.0) if math.isfinite(b) else 0.0
        if length > 0:
            canvas.rect(x0, cy - 0.3 * row_h, x0 + length, cy + 0.3 * row_h, fill=_ORANGE)
        text = f"{b:.2g}" if math.isfinite(b) else "n/a"
        canvas.text(x0 + length + 3, cy, text, size=size, color=_INK, anchor="lm")


def _log_key(canvas: _Canvas, where: Tuple[int, int, int], limits: Tuple[float, float]) -> None:
    """The colour key: decades of variance ÷ layer mean."""
    x, y, w = where
    lo, hi = limits
    canvas.paste(_upscale(_colour(np.linspace(lo, hi, 200)[None, :], lo, hi, _SEQUENTIAL), 8, w), x, y)
    for e in _decade_ticks(lo, hi, max_ticks=5):
        canvas.text(x + (e - lo) / (hi - lo) * w, y + 10, _decade_label(e), size=11, color=_GREY, anchor="mt")


def _layers_picture(reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4,
                    caption: Optional[str] = None) -> Tuple[np.ndarray, Dict[str, object]]:
    """The picture of depth and its layout (heat-map box, bias box, colour limits) for tests."""
    values, row_labels, col_labels = layers_table(reports, known, k)
    if known is None:
        col_labels = [f"h{j}" for j in range(values.shape[1])]
    num_rows, num_cols = values.shape
    # a feature map's border ring (zero padding breaks equivariance there): its share of the variance
    shares = [float(getattr(r, "border_share", math.nan)) for r in reports.values()]
    row_labels = [f"{label} ring {share:.0%}" if math.isfinite(share) else label
                  for label, share in zip(row_labels, shares)]
    title = "symmetry by layer" + (" (ring: border share)" if any(map(math.isfinite, shares)) else "")
    top = _header_height(title, caption) + 16
    row_h = int(min(28, max(6, (CARD_HEIGHT - top - 16 - 34) // num_rows)))
    canvas = _Canvas(CARD_WIDTH, top + 16 + row_h * num_rows + 34)
    _header(canvas, title, caption)
    label_w = min(max(_font(_SMALL).getlength(t) for t in row_labels), 0.3 * CARD_WIDTH)
    x0, bias_x0 = int(label_w + 12), CARD_WIDTH - 92
    box = (x0, top + 16, bias_x0 - 14, top + 16 + row_h * num_rows)
    canvas.text(x0, top - 14, "variance ÷ layer mean", size=_SMALL, color=_GREY, anchor="lt")
    canvas.text(bias_x0, top - 14, "symmetry bias", size=_SMALL, color=_ORANGE, anchor="lt")
    cell_w = (box[2] - box[0]) / num_cols
    for c, label in enumerate(col_labels):
        canvas.text(x0 + (c + 0.5) * cell_w, top + 14, _fit_text(label, 11, cell_w - 2), size=11, color=_GREY,
                    anchor="mb")
    limits = _log_range(values)
    _layer_rows(canvas, values, row_labels, box, limits)
    biases = np.array([np.nan if r.symmetry_bias is None else float(r.symmetry_bias) for r in reports.values()])
    bias_box = (bias_x0, box[1], CARD_WIDTH - 8, box[3])
    _bias_bars(canvas, biases, bias_box)
    _log_key(canvas, (x0, box[3] + 8, box[2] - x0), limits)
    return canvas.to_array(), {"box": box, "bias_box": bias_box, "limits": limits, "row_height": row_h,
                               "row_labels": row_labels}


def layers_image(reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4,
                 caption: Optional[str] = None) -> np.ndarray:
    """The picture of depth as an ``(H, W, 3)`` uint8 card picture: what :func:`layers_figure` shows.

    Rows are the analysed layers in the given order (depth), columns the ``k`` leading generators
    of each layer or the named ``known`` generators; a cell is the variance divided by the mean of
    its layer's spectrum (:func:`layers_table`) on a log colour scale, dark where the layer is
    invariant (or equivariant). Beside it, each layer's ``symmetry_bias`` as a bar.

    Args:
        reports: ``layer name -> report``, in depth order (as ``analyze(..., layers=...)`` returns).
        known: Known generator names for the columns; ``None`` shows the leading generators.
        k: How many leading generators, when ``known`` is ``None``.
        caption: Where the reports come from (e.g. ``"fit · epoch 4"``), written in the title.
    """
    return _layers_picture(reports, known, k, caption)[0]


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
