"""A picture of depth: how invariant (or equivariant) each analysed layer is, from per-layer reports.

:func:`layers_table` decides what is shown; the picture is laid out once on a
:class:`~liegg_lightning.pictures.canvas.Canvas` and drawn from it by :func:`layers_image` as a card picture
(the ``layers`` picture the callback logs) and by :func:`layers_figure` with matplotlib, for
notebooks and papers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from liegg_lightning.pictures import canvas as card
from liegg_lightning.report import SymmetryReport

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.figure import Figure

__all__ = ["layer_label", "layers_canvas", "layers_figure", "layers_image", "layers_table"]



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
    return values, [layer_label(n) for n in rows], [f"h{j}" for j in range(count)]


def _ratio_text(value: float) -> str:
    """A cell's variance ÷ layer mean in one significant digit: ``7e-1``, ``1e0``, ``n/a``."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0.0:
        return "0"
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _log_range(values: np.ndarray) -> Tuple[float, float]:
    """The card.colour range of the heat map in log10 units: its positive values, at least a decade."""
    positive = values[np.isfinite(values) & (values > 0)]
    lo = float(positive.min()) if positive.size else 1e-3
    hi = float(positive.max()) if positive.size else 1.0
    lo, hi = min(lo, hi / 10.0), max(hi, lo * 10.0)
    return math.log10(lo), math.log10(hi)


def _layer_rows(canvas: card.Canvas, values: np.ndarray, labels: Sequence[str], box: Tuple[int, int, int, int],
                limits: Tuple[float, float]) -> None:
    """The heat map: one row a layer, its values written in where the cells have room."""
    x0, y0, x1, y1 = box
    lo, hi = limits
    num_rows, num_cols = values.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(values) & (values > 0), np.log10(values), np.nan)
    heat = card.colour(np.clip(logs, lo, hi), lo, hi, card.SEQUENTIAL, bad=(211, 211, 211))
    canvas.paste(card.upscale(heat, y1 - y0, x1 - x0), x0, y0)
    row_h, cell_w = (y1 - y0) / num_rows, (x1 - x0) / num_cols
    size = min(card.SMALL, int(row_h * 0.75))
    for r, label in enumerate(labels):
        canvas.text(x0 - 6, y0 + (r + 0.5) * row_h, card.fit_text(label, size, x0 - 10), size=size, anchor="rm")
    if cell_w < 34 or row_h < 14:
        return
    for (r, c), value in np.ndenumerate(values):
        dark = math.isfinite(value) and value > 0 and math.log10(value) < (lo + hi) / 2
        canvas.text(x0 + (c + 0.5) * cell_w, y0 + (r + 0.5) * row_h, _ratio_text(value), size=11,
                    color=(255, 255, 255) if dark else card.INK, anchor="mm")


def _bias_bars(canvas: card.Canvas, biases: np.ndarray, box: Tuple[int, int, int, int]) -> None:
    """Each layer's symmetry bias as an orange bar (0 to 1 across ``box``), its value beside it."""
    x0, y0, x1, y1 = box
    if not np.isfinite(biases).any():
        canvas.text((x0 + x1) / 2, (y0 + y1) / 2, "no reference", size=11, color=card.GREY, anchor="mm")
        return
    row_h, bar_w = (y1 - y0) / biases.size, (x1 - x0) * 0.6
    size = min(11, int(row_h * 0.75))
    canvas.line([(x0, y0), (x0, y1)], card.GREY)
    for r, b in enumerate(biases):
        cy = y0 + (r + 0.5) * row_h
        length = bar_w * min(max(b, 0.0), 1.0) if math.isfinite(b) else 0.0
        if length > 0:
            canvas.rect(x0, cy - 0.3 * row_h, x0 + length, cy + 0.3 * row_h, fill=card.ORANGE)
        text = f"{b:.2g}" if math.isfinite(b) else "n/a"
        canvas.text(x0 + length + 3, cy, text, size=size, color=card.INK, anchor="lm")


def _log_key(canvas: card.Canvas, where: Tuple[int, int, int], limits: Tuple[float, float]) -> None:
    """The card.colour key: decades of variance ÷ layer mean."""
    x, y, w = where
    lo, hi = limits
    canvas.paste(card.upscale(card.colour(np.linspace(lo, hi, 200)[None, :], lo, hi, card.SEQUENTIAL), 8, w), x, y)
    for e in card.decade_ticks(lo, hi, max_ticks=5):
        canvas.text(x + (e - lo) / (hi - lo) * w, y + 10, card.decade_label(e), size=11, color=card.GREY, anchor="mt")


def _layers_picture(reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4,
                    caption: Optional[str] = None) -> Tuple[card.Canvas, Dict[str, object]]:
    """The picture of depth and its layout (heat-map box, bias box, card.colour limits) for tests."""
    values, row_labels, col_labels = layers_table(reports, known, k)
    num_rows, num_cols = values.shape
    # a feature map's border ring (zero padding breaks equivariance there): its share of the variance
    shares = [float(getattr(r, "border_share", math.nan)) for r in reports.values()]
    row_labels = [f"{label} ring {share:.0%}" if math.isfinite(share) else label
                  for label, share in zip(row_labels, shares)]
    title = "symmetry by layer" + (" (ring: border share)" if any(map(math.isfinite, shares)) else "")
    top = card.header_height(title, caption) + 16
    row_h = int(min(28, max(6, (card.CARD_HEIGHT - top - 16 - 34) // num_rows)))
    canvas = card.Canvas(card.CARD_WIDTH, top + 16 + row_h * num_rows + 34)
    card.header(canvas, title, caption)
    label_w = min(max(card.font(card.SMALL).getlength(t) for t in row_labels), 0.3 * card.CARD_WIDTH)
    x0, bias_x0 = int(label_w + 12), card.CARD_WIDTH - 92
    box = (x0, top + 16, bias_x0 - 14, top + 16 + row_h * num_rows)
    canvas.text(x0, top - 14, "variance ÷ layer mean", size=card.SMALL, color=card.GREY, anchor="lt")
    canvas.text(bias_x0, top - 14, "symmetry bias", size=card.SMALL, color=card.ORANGE, anchor="lt")
    cell_w = (box[2] - box[0]) / num_cols
    for c, label in enumerate(col_labels):
        canvas.text(x0 + (c + 0.5) * cell_w, top + 14, card.fit_text(label, 11, cell_w - 2), size=11, color=card.GREY,
                    anchor="mb")
    limits = _log_range(values)
    _layer_rows(canvas, values, row_labels, box, limits)
    biases = np.array([np.nan if r.symmetry_bias is None else float(r.symmetry_bias) for r in reports.values()])
    bias_box = (bias_x0, box[1], card.CARD_WIDTH - 8, box[3])
    _bias_bars(canvas, biases, bias_box)
    _log_key(canvas, (x0, box[3] + 8, box[2] - x0), limits)
    return canvas, {"box": box, "bias_box": bias_box, "limits": limits, "row_height": row_h,
                               "row_labels": row_labels}


def layers_canvas(reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4,
                  caption: Optional[str] = None) -> card.Canvas:
    """The picture of depth laid out, not yet drawn: :func:`layers_image` and :func:`layers_figure` draw it.

    Args:
        reports: ``layer name -> report``, in depth order (as ``analyze(..., layers=...)`` returns).
        known: Known generator names for the columns; ``None`` shows the leading generators.
        k: How many leading generators, when ``known`` is ``None``.
        caption: Where the reports come from (e.g. ``"fit · epoch 4"``), written in the title.

    Raises:
        ValueError: For no reports, or a known generator a report does not hold (:func:`layers_table`).
    """
    return _layers_picture(reports, known, k, caption)[0]


def layers_image(reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4,
                 caption: Optional[str] = None) -> np.ndarray:
    """The picture of depth as an ``(H, W, 3)`` uint8 card picture (:func:`layers_figure` draws it with matplotlib).

    Rows are the analysed layers in the given order (depth), columns the ``k`` leading generators
    of each layer or the named ``known`` generators; a cell is the variance divided by the mean of
    its layer's spectrum (:func:`layers_table`) on a log card.colour scale, dark where the layer is
    invariant (or equivariant). Beside it, each layer's ``symmetry_bias`` as a bar.

    Args:
        reports: ``layer name -> report``, in depth order (as ``analyze(..., layers=...)`` returns).
        known: Known generator names for the columns; ``None`` shows the leading generators.
        k: How many leading generators, when ``known`` is ``None``.
        caption: Where the reports come from (e.g. ``"fit · epoch 4"``), written in the title.
    """
    return layers_canvas(reports, known, k, caption).to_array()


def layers_figure(
    reports: Mapping[str, SymmetryReport], known: Optional[Sequence[str]] = None, k: int = 4
) -> Figure:
    """The picture of depth (:func:`layers_image`) drawn with matplotlib, for notebooks and papers.

    The same picture as the card, laid out once, in a figure outside pyplot (an Agg canvas, so it
    can be saved or shown in a notebook without pyplot keeping it): the heat map of variance ÷
    layer mean per layer (rows, in depth order) and generator (columns), beside each layer's
    ``symmetry_bias`` (the distance of its most invariant generator to the reference algebra; none
    without a reference algebra). :data:`~liegg_lightning.pictures.canvas.CARD_WIDTH` pixels wide at
    :data:`~liegg_lightning.pictures.canvas.DPI`; lines and text stay vectors in a saved PDF or SVG.

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
        330
    """
    return layers_canvas(reports, known, k).to_figure()
