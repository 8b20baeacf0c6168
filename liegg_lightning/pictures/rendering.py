"""Pictures of a :class:`~liegg_lightning.report.SymmetryReport`: spectra, generators, orbits.

Every picture is laid out once, on a :class:`~liegg_lightning.pictures.canvas.Canvas` (marks in pixels),
and drawn from that one layout in two ways:

- **Card pictures** (:func:`generators_image`, :func:`spectrum_image`,
  :func:`spectrum_history_image`, :func:`orbit_image`, and the picture of depth
  :func:`~liegg_lightning.pictures.layers.layers_image`; all at once with :func:`render_pictures`):
  ``(H, W, 3)`` uint8 arrays :data:`CARD_WIDTH` pixels wide and at most about :data:`CARD_HEIGHT`
  high, the box TensorBoard's Time Series tab gives an image, so they read there without shrinking.
  Each title can carry a caption saying where the report comes from (``"fit · epoch 4"``). They are
  drawn directly as arrays (numpy colour look-ups and Pillow for lines and text): matplotlib drawing
  the same marks takes 10 to 47 times as long (``docs/time_pictures.py``).
- **matplotlib** (:func:`plot_spectrum`, and
  :func:`~liegg_lightning.pictures.layers.layers_figure`): the same pictures drawn into matplotlib
  axes, following TorchMetrics' ``plot``, for notebooks and papers. :func:`plot_spectra` draws
  several spectra on one log axis.

The model is never called here except in :func:`orbit_outputs`, which the caller runs where the
model may run (the callback: the main thread, at the end of a validation epoch) and passes its
result on to :func:`orbit_image` / :func:`render_pictures`; the drawing itself only reads arrays, so
it may run in a background thread. matplotlib and Pillow are imported inside the functions, so
importing ``liegg_lightning`` imports neither.

Example:
    >>> import torch
    >>> from liegg_lightning import VectorAction
    >>> from liegg_lightning.functional.symmetry import symmetry_compute
    >>> gram = torch.diag(torch.arange(4.0, dtype=torch.float64))
    >>> report = symmetry_compute(gram, 4, 4, 0, VectorAction(dim=2))
    >>> generators_image(report, k=2).dtype
    dtype('uint8')
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from liegg_lightning.actions import GroupAction
from liegg_lightning.pictures.canvas import (
    BELOW_HEADER,
    BLUE,
    CARD_HEIGHT,
    CARD_WIDTH,
    DIVERGING,
    DPI,
    GREEN,
    GREY,
    INK,
    ORANGE,
    RED,
    SEQUENTIAL,
    SHADE,
    SMALL,
    TAB10,
    TEXT,
    Canvas,
    PlotBox,
    as_numpy,
    colour,
    decade_label,
    decade_ticks,
    fit_text,
    font,
    header,
    header_height,
    short,
    upscale,
)
from liegg_lightning.pictures.layers import layers_canvas
from liegg_lightning.report import SymmetryReport

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "CARD_HEIGHT",
    "CARD_WIDTH",
    "PictureOptions",
    "SpectrumView",
    "figure_to_array",
    "figure_to_png",
    "generator_pages",
    "generators_image",
    "generators_text",
    "orbit_image",
    "orbit_outputs",
    "picture_canvases",
    "plot_spectra",
    "plot_spectrum",
    "render_pictures",
    "spectrum_history_image",
    "spectrum_image",
    "spectrum_view",
]

#: Default group parameters of the orbit thumbnails and of the output curves.
ORBIT_TS = (-0.6, -0.3, 0.0, 0.3, 0.6)
ORBIT_CURVE_TS = tuple(float(t) for t in np.linspace(-0.6, 0.6, 13))
#: At most this many output components are drawn along an orbit (those that move most).
_MAX_CURVES = 8

# --------------------------------------------------------------------------------------------- numbers


def _entry_text(value: float) -> str:
    """An entry of a unit generator in at most four characters: ``.71``, ``-.5``, ``0``."""
    if not math.isfinite(value):
        return "nan"
    rounded = round(value, 2) + 0.0
    if rounded == 0.0:
        return "0"
    if abs(rounded) >= 1.0:
        return f"{rounded:.1f}"
    text = f"{rounded:.2f}".rstrip("0")
    return text.replace("0.", ".", 1)


def _fmt(value: float, decimals: int) -> str:
    """Fixed-point text without a negative zero."""
    return f"{round(float(value), decimals) + 0.0:.{decimals}f}"


def _log_floor(values: np.ndarray) -> float:
    """A positive floor for a log axis: what float64 can resolve below the largest of ``m`` values.

    An eigensolver's float64 values carry an absolute error of about ``m * eps`` times the largest:
    below that, a value is rounding (a zero may come back as 7e-16 of the top), drawn at the floor.
    """
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    if top > 0.0:
        return max(top * finite.size * float(np.finfo(np.float64).eps), np.finfo(np.float64).tiny)
    return 1e-16  # all zero: any positive floor draws a flat line


def _as_matrix(generator: Tensor) -> np.ndarray:
    """A generator as a 2-D array: scalars and vectors become one row, higher ranks keep the last axis."""
    g = as_numpy(generator)
    if g.ndim == 0:
        return g.reshape(1, 1)
    if g.ndim == 1:
        return g.reshape(1, -1)
    return g.reshape(-1, g.shape[-1])


def _stderr(report: SymmetryReport) -> Optional[np.ndarray]:
    """The report's standard errors of the variances, when it has them (newer reports do)."""
    se = getattr(report, "variance_stderr", None)
    if se is None:
        return None
    arr = as_numpy(se).reshape(-1)
    return arr if arr.size == len(report.variances) else None


def _nice_step(span: float, max_ticks: int) -> int:
    """An integer tick step from 1, 2, 5, 10, 20, ... giving at most ``max_ticks`` ticks over ``span``."""
    base = 1
    while True:
        for step in (base, 2 * base, 5 * base):
            if span / step <= max_ticks - 1:
                return step
        base *= 10


def _index_ticks(count: int, max_ticks: int = 8) -> List[int]:
    """Integer ticks for an index axis ``0 .. count - 1``."""
    if count <= 0:
        return []
    step = _nice_step(count - 1, max_ticks)
    return list(range(0, count, step))


# --------------------------------------------------------------------------------------------- generators

#: Narrowest cell that still holds its number (".71", "-.5") legibly, in pixels.
_NUMBER_CELL = 26
#: Widest a generator's cell gets: larger cells only make a picture taller.
_MAX_CELL = 44
_PANEL_HEAD = 34  # two lines over each panel: name and variance, then the bias
_KEY_HEIGHT = 22  # the colour key under the panels


def _per_row(count: int, cols: int, margin: int = 8, gap: int = 10) -> int:
    """Panels a row: as many as leave the cells room for their numbers; two (colour only) when none do."""
    def room(n: int) -> float:
        return (CARD_WIDTH - 2 * margin - gap * (n - 1)) / n / cols

    return next((n for n in range(count, 0, -1) if room(n) >= _NUMBER_CELL), min(count, 2))


def generator_pages(report: SymmetryReport, k: int) -> List[Tuple[int, int]]:
    """How the ``k`` leading generators share card pictures: ``(first, count)`` per picture.

    Each picture holds one row of panels, as many as leave the cells room for their numbers, so
    that it keeps within :data:`CARD_HEIGHT` and is not shrunk by TensorBoard's Time Series tab.

    Args:
        report: The report whose generators are drawn.
        k: How many leading generators to draw.
    """
    total = max(0, min(int(k), report.generators.shape[0]))
    if total == 0:
        return []
    cols = _as_matrix(report.generators[0]).shape[1]
    per_page = _per_row(total, cols)
    return [(first, min(per_page, total - first)) for first in range(0, total, per_page)]


def _panel_heads(report: SymmetryReport, indices: Sequence[int], panel_w: int) -> List[List[str]]:
    """Each panel's title lines: name and variance, then the bias (or name, variance, bias when narrow)."""
    biases = as_numpy(report.biases).reshape(-1) if report.biases is not None else None
    heads = []
    for i in indices:
        head = [f"h{i}", f"var {short(float(report.variances[i]))}"]
        heads.append(head + ([f"bias {short(float(biases[i]))}"] if biases is not None else []))
    if all(font(TEXT).getlength(f"{h[0]}  {h[1]}") <= panel_w for h in heads):  # name and variance on one line
        heads = [[f"{h[0]}  {h[1]}"] + h[2:] for h in heads]
    return heads


def _cell_sizes(rows: int, cols: int, panel_w: float) -> Tuple[float, float]:
    """A cell's width and height: square up to :data:`_MAX_CELL`, the matrix within a page's height."""
    cell_w = panel_w / cols
    if rows == 1:
        return cell_w, max(min(cell_w, 40.0), 22.0)
    room = CARD_HEIGHT - BELOW_HEADER - _PANEL_HEAD - 4 - _KEY_HEIGHT
    return cell_w, max(min(cell_w, float(_MAX_CELL), room / rows), 2.0)


def _generators_picture(report: SymmetryReport, k: int, first: int = 0,
                        caption: Optional[str] = None) -> Tuple[Canvas, Dict[str, Any]]:
    """The picture of generators ``first .. first + k - 1`` and its layout (panel boxes, colour limit) for tests."""
    gens = report.generators
    count = max(0, min(int(k), gens.shape[0] - first))
    name = "generators" if count == 0 else f"generators h{first}" + (f"–h{first + count - 1}" if count > 1 else "")
    width = CARD_WIDTH
    if count == 0:
        canvas = Canvas(width, 80)
        top = header(canvas, name, caption)
        canvas.text(width / 2, top + 24, "no generators", size=TEXT, color=GREY, anchor="mm")
        return canvas, {"panels": [], "limit": 1.0}
    indices = list(range(first, first + count))
    mats = [_as_matrix(gens[i]) for i in indices]
    finite = [np.abs(m)[np.isfinite(m)] for m in mats]
    limit = max((float(f.max()) for f in finite if f.size), default=0.0)
    limit = limit if limit > 0 and math.isfinite(limit) else 1.0
    rows, cols = mats[0].shape
    margin, gap = 8, 10
    per_row = _per_row(count, cols, margin, gap)
    panel_w = int((width - 2 * margin - gap * (per_row - 1)) / per_row)
    cell_w, cell_h = _cell_sizes(rows, cols, panel_w)
    panel_h = int(round(cell_h * rows))
    panel_w = int(round(cell_w * cols)) if cell_w >= 1 else panel_w
    heads = _panel_heads(report, indices, panel_w)
    head = 16 * max(len(h) for h in heads) + 2
    top = header_height(name, caption)
    grid_rows = math.ceil(count / per_row)
    canvas = Canvas(width, top + grid_rows * (head + panel_h + gap) - gap + 4 + _KEY_HEIGHT)
    header(canvas, name, caption)
    numbers = cell_w >= _NUMBER_CELL and cell_h >= 16
    left = (width - (per_row * panel_w + gap * (per_row - 1))) / 2
    panels = []
    for n, mat in enumerate(mats):
        r, c = divmod(n, per_row)
        x, y = int(left + c * (panel_w + gap)), int(top + r * (head + panel_h + gap))
        _panel_head(canvas, x + panel_w / 2, y, heads[n], report.biases is not None)
        box = (x, y + head, x + panel_w, y + head + panel_h)
        _heat_panel(canvas, mat, box, limit, (cell_w, cell_h) if numbers else None)
        panels.append({"box": box, "shape": mat.shape})
    _diverging_key(canvas, canvas.height - 17, limit)
    return canvas, {"panels": panels, "limit": limit, "numbers": numbers}


def _panel_head(canvas: Canvas, centre: float, y: int, lines: Sequence[str], has_bias: bool) -> None:
    """A generator panel's title lines; the bias (the last line, when there is one) in orange."""
    for j, line in enumerate(lines):
        is_bias = has_bias and j == len(lines) - 1
        canvas.text(centre, y + 16 * j, line, size=TEXT, color=ORANGE if is_bias else INK,
                    bold=j == 0 and not is_bias and len(lines[0]) <= 3, anchor="mt")


def _heat_panel(canvas: Canvas, mat: np.ndarray, box: Tuple[int, int, int, int], limit: float,
                cell: Optional[Tuple[float, float]]) -> None:
    """One generator as a heat map on the diverging scale ``[-limit, limit]``; entries written in when ``cell``."""
    x0, y0, x1, y1 = box
    heat = colour(np.where(np.isfinite(mat), mat, np.nan), -limit, limit, DIVERGING, bad=(200, 200, 200))
    canvas.paste(upscale(heat, y1 - y0, x1 - x0), x0, y0)
    if cell is None:
        return
    cell_w, cell_h = cell
    size = int(min(15, cell_h * 0.5, cell_w / 2.6))
    for (r, c), value in np.ndenumerate(mat):
        ink = (255, 255, 255) if abs(value) > 0.55 * limit else INK
        canvas.text(x0 + (c + 0.5) * cell_w, y0 + (r + 0.5) * cell_h, _entry_text(value), size, ink, "mm")


def _diverging_key(canvas: Canvas, y: int, limit: float) -> None:
    """The colour key of the generators' scale, centred at ``y``'s row."""
    mid = canvas.width / 2
    key = colour(np.linspace(-limit, limit, 160)[None, :], -limit, limit, DIVERGING)
    canvas.paste(upscale(key, 8, 160), int(mid - 80), y)
    canvas.text(mid - 86, y + 4, f"-{short(limit)}", size=SMALL, color=GREY, anchor="rm")
    canvas.text(mid + 86, y + 4, f"+{short(limit)}", size=SMALL, color=GREY, anchor="lm")


def generators_image(report: SymmetryReport, k: int = 4, first: int = 0, caption: Optional[str] = None) -> np.ndarray:
    """Heat maps of the ``k`` most invariant generators, entries written in, as an ``(H, W, 3)`` uint8 array.

    One colour scale centred at zero for all panels (the generators have unit norm, so their entries
    compare). Each panel is titled with its variance and its bias when there is a reference
    algebra. Panels wrap onto more rows when the cells would be too narrow for their numbers;
    :func:`generator_pages` splits them into pictures of one row each, as :func:`render_pictures` does.

    Args:
        report: The report to draw.
        k: How many generators to draw (fewer if the report has fewer).
        first: Index of the first generator drawn (0: the most invariant).
        caption: Where the report comes from (e.g. ``"fit · epoch 4"``), written in the title.
    """
    return _generators_picture(report, k, first, caption)[0].to_array()


# --------------------------------------------------------------------------------------------- spectrum


def _spectrum_title(report: SymmetryReport) -> Tuple[str, str]:
    """The two title lines of the spectrum picture: nullity and N, then the leading measures."""
    stderr = _stderr(report)
    first = f"spectrum   nullity {report.nullity}   N {report.num_samples}"
    parts = [f"var {short(report.symmetry_variance)}"]
    if stderr is not None and stderr.size and math.isfinite(stderr[0]):
        parts[0] += f" ±{short(float(stderr[0]), 1)}"
    if report.symmetry_bias is not None:
        parts.append(f"bias {short(report.symmetry_bias)}")
    if report.closure_error is not None:
        parts.append(f"closure {short(report.closure_error)}")
    return first, "   ".join(parts)


@dataclass(frozen=True)
class SpectrumView:
    """What a picture of a variance spectrum shows, decided once for the card and for :func:`plot_spectrum`.

    Attributes:
        shown: The variances as drawn ``(m,)``: those at or below ``floor`` (zero, rounding, NaN) at ``floor``.
        at_floor: Which were put at the floor (drawn as hollow markers).
        floor: The log axis' floor, what float64 resolves below the largest variance (:func:`_log_floor`).
        lower: Lower ends of the error bars (``shown - stderr``, kept on the axis at ``floor``).
        upper: Upper ends (``shown + stderr``); both equal ``shown`` where there is no standard error.
        nullity: How many generators are shaded as learned symmetries (at most ``m``).
        gap: Where the dashed line between learned symmetries and the rest goes, or ``None``.
        biases: The biases ``(m,)`` or ``None``.
    """

    shown: np.ndarray
    at_floor: np.ndarray
    floor: float
    lower: np.ndarray
    upper: np.ndarray
    nullity: int
    gap: Optional[float]
    biases: Optional[np.ndarray]

    @property
    def has_error_bars(self) -> np.ndarray:
        """Where an error bar has a length."""
        return self.upper > self.lower


def spectrum_view(report: SymmetryReport) -> SpectrumView:
    """What a spectrum picture of ``report`` shows: floored variances, error bars, shading, biases.

    Args:
        report: The report to draw.
    """
    variances = as_numpy(report.variances).reshape(-1)
    m = variances.size
    floor = _log_floor(variances)
    at_floor = ~(variances > floor)  # zero, tiny, or NaN
    shown = np.where(at_floor, floor, variances)
    lower, upper = shown.copy(), shown.copy()
    stderr = _stderr(report)
    if stderr is not None:
        err = np.where(np.isfinite(stderr) & (stderr > 0), stderr, 0.0)
        lower, upper = np.maximum(shown - err, floor), shown + err
    k = min(max(int(report.nullity), 0), m)
    biases = as_numpy(report.biases).reshape(-1) if report.biases is not None else None
    return SpectrumView(shown=shown, at_floor=at_floor, floor=floor, lower=lower, upper=upper, nullity=k,
                        gap=k - 0.5 if 0 < k < m else None, biases=biases)


def _log_limits(view: SpectrumView) -> Tuple[float, float]:
    """The log10 range of the variance axis: the error bars with a margin, at least a decade."""
    lo, hi = float(np.log10(view.lower.min())), float(np.log10(view.upper.max()))
    if hi - lo < 1.0:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def _spectrum_axes(canvas: Canvas, view: SpectrumView, top: float) -> Tuple[PlotBox, Optional[PlotBox]]:
    """The spectrum's axes: shading, the gap line, ticks and frame; the bias axis when there are biases."""
    m = view.shown.size
    lo, hi = _log_limits(view)
    exps = decade_ticks(lo, hi, max_ticks=5)
    label_w = max(canvas.text_width(decade_label(e), SMALL) for e in exps)
    box = (label_w + 10, top + 18.0, canvas.width - (34.0 if view.biases is not None else 12.0), canvas.height - 22.0)
    ax = PlotBox(canvas, box, (-0.5, m - 0.5), (lo, hi))
    if view.nullity > 0:
        x1, _ = ax.px(view.nullity - 0.5, lo)
        canvas.rect(box[0], box[1], x1, box[3], fill=SHADE)
    ax.yticks(exps, [decade_label(e) for e in exps])
    ticks = _index_ticks(m)
    ax.xticks(ticks, [str(t) for t in ticks])
    if view.gap is not None:
        xk, _ = ax.px(view.gap, lo)
        canvas.dashed(xk, box[1], xk, box[3], GREEN, width=1.5)
    canvas.text(box[0], box[1] - 3, "variance", size=SMALL, color=BLUE, anchor="lb")
    bax = None
    if view.biases is not None:
        canvas.text(box[2], box[1] - 3, "bias", size=SMALL, color=ORANGE, anchor="rb")
        bax = PlotBox(canvas, box, (-0.5, m - 0.5), (-0.05, 1.05))
        bax.yticks([0.0, 0.5, 1.0], ["0", ".5", "1"], right=True, color=ORANGE, grid=False)
    ax.frame()
    return ax, bax


def _spectrum_marks(canvas: Canvas, view: SpectrumView, ax: PlotBox, bax: Optional[PlotBox]) -> None:
    """The variances (line, markers, error bars) and the biases (orange squares) of a spectrum."""
    m = view.shown.size
    points = [ax.px(i, float(v)) for i, v in enumerate(np.log10(view.shown))]
    canvas.line(points, BLUE, width=1.5)
    for bar in np.flatnonzero(view.has_error_bars).tolist():
        (x, y0), (_, y1) = ax.px(bar, math.log10(view.lower[bar])), ax.px(bar, math.log10(view.upper[bar]))
        canvas.line([(x, y0), (x, y1)], BLUE, width=1.0)
        canvas.line([(x - 2.5, y0), (x + 2.5, y0)], BLUE, width=1.0)
        canvas.line([(x - 2.5, y1), (x + 2.5, y1)], BLUE, width=1.0)
    radius = 3.0 if m <= 40 else (2.0 if m <= 100 else 0.0)
    for i, (x, y) in enumerate(points):
        if radius > 0 or view.at_floor[i]:
            canvas.marker(x, y, max(radius, 2.5), BLUE, hollow=bool(view.at_floor[i]))
    if bax is not None and view.biases is not None:
        for i, b in enumerate(view.biases):
            if math.isfinite(b):
                x, y = bax.px(i, float(min(max(b, 0.0), 1.0)))
                canvas.marker(x, y, 2.5, ORANGE, shape="s")


def _spectrum_picture(report: SymmetryReport, caption: Optional[str] = None) -> Tuple[Canvas, Dict[str, Any]]:
    """The spectrum picture and its layout (plot box, log limits, floor) for tests."""
    first, second = _spectrum_title(report)
    canvas = Canvas(CARD_WIDTH, CARD_HEIGHT)
    top = header(canvas, first, caption)
    canvas.text(CARD_WIDTH / 2, top, second, size=TEXT, anchor="mt")
    view = spectrum_view(report)
    if view.shown.size == 0:
        canvas.text(CARD_WIDTH / 2, CARD_HEIGHT / 2, "empty spectrum", size=TEXT, color=GREY, anchor="mm")
        return canvas, {}
    ax, bax = _spectrum_axes(canvas, view, top + 18)
    _spectrum_marks(canvas, view, ax, bax)
    return canvas, {"box": ax.box, "ylim": ax.ylim, "xlim": ax.xlim, "floor": view.floor}


def spectrum_image(report: SymmetryReport, caption: Optional[str] = None) -> np.ndarray:
    """The variance spectrum on a log scale as an ``(H, W, 3)`` uint8 array.

    The title holds the numbers that matter: nullity, number of samples, the leading variance
    (``± standard error`` when the report has ``variance_stderr``), its bias and the closure error
    (``n/a`` when NaN). What is drawn is :func:`spectrum_view`: the ``nullity`` most invariant
    generators shaded, with a dashed line at the gap; error bars for the standard errors; zero
    variances as hollow markers at a floor; the biases (0 = inside the reference algebra, 1 =
    orthogonal to it) as orange squares on the right axis.

    Args:
        report: The report to draw.
        caption: Where the report comes from (e.g. ``"fit · epoch 4"``), written in the title.
    """
    return _spectrum_picture(report, caption)[0].to_array()


def _new_axes(ax: Optional[Axes], card: Optional[Canvas] = None) -> Tuple[Figure, Axes]:
    """``ax`` and its figure, or a new pyplot figure as TorchMetrics' ``plot`` makes (of the card's size for a card)."""
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    import matplotlib.pyplot as plt

    if card is not None:  # the picture fills the figure, one pixel a pixel
        fig = plt.figure(figsize=(card.width / DPI, card.height / DPI), dpi=DPI)
        return fig, fig.add_axes((0.0, 0.0, 1.0, 1.0))
    fig, new = plt.subplots(figsize=(6.5, 3.6), dpi=DPI, layout="constrained")
    return fig, new


def plot_spectrum(report: SymmetryReport, ax: Optional[Axes] = None) -> Tuple[Figure, Axes]:
    """The spectrum picture (:func:`spectrum_image`) drawn with matplotlib, for notebooks and papers.

    The same picture as the card the callback logs, laid out once: drawn into ``ax`` with lines,
    markers and text as vectors (a saved PDF or SVG scales), the axes' own frame and ticks off.

    Args:
        report: The report to draw.
        ax: Axes to draw into; ``None`` makes a new pyplot figure of the card's size
            (:data:`CARD_WIDTH` x :data:`CARD_HEIGHT` pixels), as TorchMetrics' ``plot`` does.

    Returns:
        ``(figure, axes)``.
    """
    canvas = _spectrum_picture(report)[0]
    fig, ax = _new_axes(ax, canvas)
    canvas.draw_into(ax)
    return fig, ax


def plot_spectra(reports: Sequence[SymmetryReport], ax: Optional[Axes] = None) -> Tuple[Figure, Axes]:
    """Several reports' variance spectra on one log axis, one line each (e.g. successive epochs).

    Args:
        reports: The reports, oldest first.
        ax: Axes to draw into; ``None`` makes a new pyplot figure.

    Returns:
        ``(figure, axes)``.
    """
    if not reports:
        raise ValueError("Expected at least one report to plot, got none.")
    fig, ax = _new_axes(ax)
    floor = min(_log_floor(as_numpy(r.variances).reshape(-1)) for r in reports)
    for i, report in enumerate(reports):
        variances = as_numpy(report.variances).reshape(-1)
        ax.plot(np.arange(variances.size), np.where(variances > floor, variances, floor), marker="o", markersize=3,
                lw=1.0, label=f"report {i} (nullity {report.nullity})")
    ax.set_yscale("log")
    ax.set_xlabel("generator index (most invariant first)")
    ax.set_ylabel(r"variance $\sigma_i^2 / N$")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig, ax


# --------------------------------------------------------------------------------------------- history


def spectrum_history_table(spectra: Sequence[Union[Tensor, np.ndarray]]) -> np.ndarray:
    """The history picture's colour values: ``log10(variance / mean of its row)``, NaN where a row is short.

    Dividing each row by its own mean (the report's ``normalized_variances``) makes the rows
    comparable while the network's outputs grow: a symmetry being learned is a column turning
    dark, not a row turning dark. Zeros become ``-inf``.

    Args:
        spectra: Variance spectra ``(m,)``, oldest first; shorter ones are padded with NaN.
    """
    rows = [as_numpy(s).reshape(-1) for s in spectra]
    width = max((r.size for r in rows), default=0)
    table = np.full((len(rows), max(width, 1)), np.nan)
    for i, r in enumerate(rows):
        finite = r[np.isfinite(r)]
        mean = float(finite.mean()) if finite.size else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.log10(np.maximum(r, 0.0) / mean) if mean > 0 else np.where(np.isfinite(r), 0.0, np.nan)
        table[i, : r.size] = scaled
    return table


def _history_limits(table: np.ndarray) -> Tuple[float, float]:
    """The colour range: the largest value down to a robust low end (at most 12 decades below)."""
    finite = table[np.isfinite(table)]
    if finite.size == 0:
        return -1.0, 0.0
    hi = float(finite.max())
    lo = max(float(np.percentile(finite, 1.0)), hi - 12.0)
    if hi - lo < 1.0:
        lo = hi - 1.0
    return lo, hi


def _row_labels(texts: Sequence[str], row_h: int, room: float) -> Tuple[List[int], int]:
    """Which rows get their label (every few when rows are thin, always the newest) and the font size.

    The size shrinks from :data:`TEXT` to 10 pixels for long labels before they are shortened.
    """
    size = next((s for s in (TEXT, SMALL, 11, 10) if max(font(s).getlength(t) for t in texts) <= room), 10)
    step = max(1, math.ceil((size + 3) / row_h))
    n = len(texts)
    return list(range(n - 1, -1, -step))[::-1], size


def _history_picture(spectra: Sequence[Tensor], labels: Optional[Sequence[str]],
                     caption: Optional[str] = None) -> Tuple[Canvas, Dict[str, Any]]:
    """The history picture and its layout (heat-map box, row height, colour limits, labelled rows) for tests."""
    if len(spectra) == 0:
        raise ValueError("Expected at least one spectrum, got none.")
    if labels is not None and len(labels) != len(spectra):
        raise ValueError(f"Expected one label per spectrum ({len(spectra)}), got {len(labels)}.")
    table = spectrum_history_table(spectra)
    lo, hi = _history_limits(table)
    n, m = table.shape
    texts = [str(t) for t in labels] if labels is not None else [str(i + 1) for i in range(n)]
    width, title = CARD_WIDTH, "spectrum history"
    y0 = header_height(title, caption) + 2
    row_h = int(min(26, max(3, (CARD_HEIGHT - y0 - 58) // n)))
    plot_h = row_h * n
    canvas = Canvas(width, y0 + plot_h + 58)
    header(canvas, title, caption)
    shown_rows, size = _row_labels([texts[i] for i in range(n)], row_h, 0.45 * width)
    label_w = max(canvas.text_width(fit_text(texts[i], size, 0.45 * width), size) for i in shown_rows)
    x0 = int(label_w + 14)
    plot_w = int(width - x0 - 10)
    heat = colour(np.clip(np.where(np.isneginf(table), lo, table), lo, hi), lo, hi, SEQUENTIAL)
    canvas.paste(upscale(heat, plot_h, plot_w), x0, y0)
    for i in shown_rows:
        canvas.text(x0 - 6, y0 + (i + 0.5) * row_h, fit_text(texts[i], size, 0.45 * width), size=size, anchor="rm")
    ax = PlotBox(canvas, (x0, y0, x0 + plot_w, y0 + plot_h), (-0.5, m - 0.5), (0.0, 1.0))
    ticks = _index_ticks(m)
    ax.xticks(ticks, [str(t) for t in ticks])
    key_x = max(x0, 84)
    _history_key(canvas, (key_x, y0 + plot_h + 22, width - key_x - 30), lo, hi)
    layout = {"box": (x0, y0, x0 + plot_w, y0 + plot_h), "row_height": row_h, "limits": (lo, hi),
              "labelled_rows": shown_rows, "label_size": size}
    return canvas, layout


def _history_key(canvas: Canvas, where: Tuple[int, int, int], lo: float, hi: float) -> None:
    """The colour key of the history: decades of variance ÷ row mean, named under it."""
    key_x, key_y, key_w = where
    key = colour(np.linspace(lo, hi, 200)[None, :], lo, hi, SEQUENTIAL)
    canvas.paste(upscale(key, 8, key_w), key_x, key_y)
    exps = [float(e) for e in decade_ticks(lo, hi, max_ticks=5)]
    marks = [(e, decade_label(int(e))) for e in exps]
    if len(exps) < 2:  # less than two decades: label the ends with their ratios
        marks = [(lo, short(10**lo)), (hi, short(10**hi))]
    for e, text in marks:
        canvas.text(key_x + (e - lo) / (hi - lo) * key_w, key_y + 10, text, size=SMALL, color=GREY, anchor="mt")
    canvas.text(key_x - 6, key_y + 4, "÷ row mean", size=11, color=GREY, anchor="rm")


def spectrum_history_image(spectra: Sequence[Tensor], labels: Optional[Sequence[str]] = None,
                           caption: Optional[str] = None) -> np.ndarray:
    """All analyses so far as one ``(H, W, 3)`` uint8 picture: analysis (rows) by generator index (columns).

    Each row is divided by its own mean and drawn on a log colour scale
    (:func:`spectrum_history_table`), so a symmetry being learned shows as columns on the left
    turning dark over the rows, whatever the scale of the outputs does meanwhile.

    Args:
        spectra: Variance spectra ``(m,)``, oldest first; shorter ones are padded (white).
        labels: One label per spectrum, as the caller numbers its analyses (e.g. ``"epoch 3"``,
            ``"validate (epoch 9)"``); default ``"1", "2", ...``. Rows too thin for every label get
            every few, always including the newest; long labels get a smaller font, then lose their
            middle.
        caption: Where the newest analysis comes from (e.g. ``"fit · epoch 4"``), written in the title.
    """
    return _history_picture(spectra, labels, caption)[0].to_array()


# --------------------------------------------------------------------------------------------- orbits


def orbit_outputs(
    model: Callable[[Tensor], Any],
    action: GroupAction,
    x: Tensor,
    most: Tensor,
    least: Tensor,
    ts: Sequence[float] = ORBIT_CURVE_TS,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Dict[str, np.ndarray]:
    """The model's output along the orbits of one input: what :func:`orbit_image` draws beside it.

    Runs ``model`` once on the ``2 * len(ts)`` inputs ``exp(t h) x`` for the most and the least
    invariant generator ``h``, under :func:`torch.no_grad`, with the model in whatever mode it is
    in (call it where the model is in eval mode, as at the end of a validation epoch: a model in
    training mode would update its batch-norm statistics). Call it in the thread that may run the
    model and pass the result to :func:`orbit_image` or :func:`render_pictures`, which only draw.

    Args:
        model: The network (or any callable from a batch of inputs to a tensor of outputs).
        action: The group action; its ``transform`` may raise :class:`NotImplementedError`.
        x: One input without the batch axis.
        most: The most invariant generator.
        least: The least invariant generator.
        ts: Group parameters ``t`` of ``exp(t h)``.
        output_transform: Applied to the model's output before it is recorded (as the metric's).
        device: Where to run the model; default: the device and dtype of a module's first
            parameter, or where ``x`` is for other callables (e.g. a function returning a layer's output).

    Returns:
        ``{"ts": (T,), "most": (T, K), "least": (T, K)}`` float64 arrays: the output components
        along each orbit (flattened per sample).

    Raises:
        NotImplementedError: The action cannot apply finite transformations.
        ValueError: ``ts`` is empty or the model does not return a tensor with one row per input.
    """
    ts = [float(t) for t in ts]
    if not ts:
        raise ValueError("Expected at least one value in `ts`.")
    batch = x.detach()[None]
    moved = [action.transform(batch, g, t) for g in (most, least) for t in ts]
    inputs = torch.cat(moved, dim=0)
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    if param is not None:
        inputs = inputs.to(param.device, param.dtype if inputs.is_floating_point() else inputs.dtype)
    if device is not None:
        inputs = inputs.to(device)
    with torch.no_grad():
        out = model(inputs)
        if output_transform is not None:
            out = output_transform(out)
    if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != inputs.shape[0]:
        raise ValueError(
            "Expected the model to return a tensor with one row per input for the orbit picture, got "
            f"{type(out).__name__}{tuple(out.shape) if isinstance(out, Tensor) else ''}."
        )
    values = out.detach().reshape(out.shape[0], -1).to("cpu", torch.float64).numpy()
    steps = len(ts)
    return {"ts": np.asarray(ts, dtype=np.float64), "most": values[:steps].copy(), "least": values[steps:].copy()}


def _to_picture(img: np.ndarray) -> np.ndarray:
    """An image sample ``(C, H, W)`` or ``(H, W)`` as ``(H, W)`` or ``(H, W, 3)``."""
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[0] == 3:
        return np.moveaxis(img, 0, -1)
    if img.ndim == 3:
        return img[0] if img.shape[0] == 1 else img.mean(axis=0)
    return img.reshape(-1, img.shape[-1])


def _gray(pic: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A picture scaled from ``[lo, hi]`` to uint8 RGB (grey for one channel)."""
    scaled = np.clip((np.nan_to_num(pic, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    u8 = np.round(scaled * 255).astype(np.uint8)
    return u8 if u8.ndim == 3 else np.repeat(u8[..., None], 3, axis=2)


def _check_orbit(orbit: Any) -> Dict[str, np.ndarray]:
    try:
        ts = np.asarray(orbit["ts"], dtype=np.float64).reshape(-1)
        most = np.asarray(orbit["most"], dtype=np.float64)
        least = np.asarray(orbit["least"], dtype=np.float64)
    except (KeyError, TypeError) as err:
        raise ValueError(f"Expected `orbit` to be the dict orbit_outputs returns, got {type(orbit).__name__}.") from err
    most, least = most.reshape(ts.size, -1), least.reshape(ts.size, -1)
    if ts.size == 0 or most.shape != least.shape:
        raise ValueError(f"Expected `orbit` outputs of one shape (T, K), got {most.shape} and {least.shape}.")
    return {"ts": ts, "most": most, "least": least}


_ROW_NAMES = (("most invariant", GREEN), ("least invariant", RED))


def _curves_panel(canvas: Canvas, box: Tuple[float, float, float, float], ts: np.ndarray, values: np.ndarray,
                  shown: Sequence[int], ylim: Tuple[float, float], title: str, color: Tuple[int, int, int],
                  change: float, left_labels: bool) -> None:
    """One orbit's output components against ``t``, titled with its generator and its largest change."""
    x0, y0, x1, y1 = box
    canvas.text((x0 + x1) / 2, y0 - 20, title, size=TEXT, bold=True, color=color, anchor="mb")
    canvas.text((x0 + x1) / 2, y0 - 4, f"max change {short(change)}", size=SMALL, anchor="mb")
    ax = PlotBox(canvas, box, (float(ts.min()), float(ts.max())), ylim)
    lo, hi = ylim
    ticks = [lo + (hi - lo) * f for f in (0.1, 0.5, 0.9)]
    ax.yticks(ticks, [short(t) for t in ticks] if left_labels else ["", "", ""])
    tmin, tmax = float(ts.min()), float(ts.max())
    xt = sorted({tmin, 0.0, tmax}) if tmin < 0 < tmax else [tmin, tmax]
    ax.xticks(xt, [f"{t:g}" for t in xt], inward=True)
    if tmin < 0 < tmax:
        zx, _ = ax.px(0.0, lo)
        canvas.dashed(zx, y0, zx, y1, (180, 180, 180), width=1.0, dash=3.0)
    for n, j in enumerate(shown):
        canvas.line([ax.px(float(t), float(v)) for t, v in zip(ts, values[:, j])], TAB10[n % 10], width=1.5)
    ax.frame()


def _moved_pictures(action: GroupAction, x: Tensor, gens: Sequence[Tensor],
                    ts: Sequence[float]) -> List[List[np.ndarray]]:
    """``x`` moved by ``exp(t h)`` for each generator ``h`` (rows) and each ``t`` (columns), as pictures."""
    batch = x.detach()[None]
    return [[_to_picture(as_numpy(action.transform(batch, g, t)[0])) for t in ts] for g in gens]


def _thumbnails(canvas: Canvas, pictures: List[List[np.ndarray]], ts: Sequence[float], top: int,
                thumb: Tuple[int, int]) -> Dict[str, Any]:
    """The moved inputs, one row per generator, on one intensity scale; returns their boxes and the scale."""
    values = np.concatenate([p.reshape(-1) for row in pictures for p in row])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    thumb_w, thumb_h = thumb
    left, gap = 76, 4
    for c, t in enumerate(ts):
        canvas.text(left + c * (thumb_w + gap) + thumb_w / 2, top, f"t = {t:g}", size=11, color=GREY, anchor="mt")
    boxes = []
    y = top + 15
    for row, (name, color) in zip(pictures, _ROW_NAMES):
        first, second = name.split(" ")
        canvas.text(left - 8, y + thumb_h / 2 - 8, first, size=TEXT, bold=True, color=color, anchor="rm")
        canvas.text(left - 8, y + thumb_h / 2 + 8, second, size=SMALL, color=color, anchor="rm")
        for c, pic in enumerate(row):
            canvas.paste(upscale(_gray(pic, lo, hi), thumb_h, thumb_w), left + c * (thumb_w + gap), y)
            boxes.append((left + c * (thumb_w + gap), y, thumb_w, thumb_h))
        y += thumb_h + 4
    return {"thumbs": boxes, "intensity": (lo, hi), "bottom": y}


def _thumb_size(pictures: List[List[np.ndarray]], count: int, tallest: int) -> Tuple[int, int]:
    """Width and height of a thumbnail: the row fills the width right of the labels, at most ``tallest`` high."""
    h0, w0 = pictures[0][0].shape[:2]
    thumb_w = int((CARD_WIDTH - 76 - 8 - 4 * (count - 1)) / count)
    thumb_h = max(8, min(int(round(thumb_w * h0 / max(w0, 1))), tallest))
    return max(4, min(thumb_w, int(round(thumb_h * w0 / max(h0, 1))))), thumb_h


def _thumbs_over_panels(canvas: Canvas, pictures: List[List[np.ndarray]], ts: Sequence[float],
                        panels: List[Dict[str, Any]], y: int, size: int) -> Dict[str, Any]:
    """Each generator's moved inputs in a row above its curves, each over its ``t`` on the panel's axis."""
    values = np.concatenate([p.reshape(-1) for row in pictures for p in row])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    boxes = []
    for row, panel in zip(pictures, panels):
        x0, _, x1, _ = panel["box"]
        tmin, tmax = min(ts), max(ts)
        for pic, t in zip(row, ts):
            centre = x0 + (t - tmin) / (tmax - tmin) * (x1 - x0) if tmax > tmin else (x0 + x1) / 2
            left = int(min(max(centre - size / 2, x0), x1 - size))
            canvas.paste(upscale(_gray(pic, lo, hi), size, size), left, y)
            boxes.append((left, y, size, size))
    return {"thumbs": boxes, "intensity": (lo, hi)}


def _orbit_curves(canvas: Canvas, outputs: Dict[str, np.ndarray], top: int) -> List[Dict[str, Any]]:
    """The outputs along both orbits, side by side on one y scale; returns each panel's layout."""
    t_arr, most_v, least_v = outputs["ts"], outputs["most"], outputs["least"]
    both = np.concatenate([most_v, least_v], axis=0)
    moving = np.nanmax(both, axis=0) - np.nanmin(both, axis=0) if both.size else np.zeros(0)
    order = np.argsort(-np.nan_to_num(moving, nan=-1.0), kind="stable")
    shown = sorted(int(j) for j in order[:_MAX_CURVES])
    finite = both[:, shown][np.isfinite(both[:, shown])]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.08 * (hi - lo)
    ylim = (lo - pad, hi + pad)
    centre = int(np.argmin(np.abs(t_arr)))
    tick_w = max(canvas.text_width(short(ylim[0] + (ylim[1] - ylim[0]) * f), SMALL) for f in (0.1, 0.5, 0.9))
    left, panel_gap = tick_w + 10, 26
    panel_w = (canvas.width - left - 14 - panel_gap) / 2
    box_top, bottom = top + 38, canvas.height - 18
    panels = []
    for i, (vals, (name, color)) in enumerate(zip((most_v, least_v), _ROW_NAMES)):
        change = float(np.nanmax(np.abs(vals - vals[centre]))) if vals.size else 0.0
        box = (left + i * (panel_w + panel_gap), box_top, left + i * (panel_w + panel_gap) + panel_w, bottom)
        _curves_panel(canvas, box, t_arr, vals, shown, ylim, name, color, change, i == 0)
        panels.append({"box": box, "ylim": ylim, "shown": shown, "change": change})
    return panels


def _orbit_picture(action: GroupAction, x: Tensor, most: Tensor, least: Tensor, ts: Sequence[float],
                   orbit: Optional[Dict[str, Any]],
                   caption: Optional[str] = None) -> Tuple[Optional[Canvas], Dict[str, Any]]:
    """The orbit picture (``None`` for a vector input without outputs) and its layout for tests."""
    ts = [float(t) for t in ts]
    if not ts:
        raise ValueError("Expected at least one value in `ts`.")
    outputs = _check_orbit(orbit) if orbit is not None else None
    is_image = action.draws_input_as(x) == "image"
    if not is_image and outputs is None:
        return None, {}  # a vector's orbit says nothing without the outputs along it
    title = "orbit of an input"
    top = header_height(title, caption)
    pictures = _moved_pictures(action, x, (most, least), ts) if is_image else []
    layout: Dict[str, Any] = {"thumbs": [], "panels": [], "intensity": None}
    if outputs is None:  # images alone: a row of thumbnails per generator
        thumb = _thumb_size(pictures, len(ts), 64)
        canvas = Canvas(CARD_WIDTH, top + 15 + 2 * (thumb[1] + 4) + 6)
        header(canvas, title, caption)
        drawn = _thumbnails(canvas, pictures, ts, top, thumb)
        layout.update(thumbs=drawn["thumbs"], intensity=drawn["intensity"])
        return canvas, layout
    canvas = Canvas(CARD_WIDTH, CARD_HEIGHT)
    header(canvas, title, caption)
    size = 36 if is_image else 0
    layout["panels"] = _orbit_curves(canvas, outputs, top + (size + 2 if is_image else 0))
    if is_image:  # over the curves, room for three: the ends and the input itself
        ends = sorted({0, int(np.argmin(np.abs(np.asarray(ts)))), len(ts) - 1})
        chosen = [[row[i] for i in ends] for row in pictures]
        layout.update(_thumbs_over_panels(canvas, chosen, [ts[i] for i in ends], layout["panels"], top, size))
    return canvas, layout


def orbit_image(
    action: GroupAction,
    x: Tensor,
    most_invariant: Tensor,
    least_invariant: Tensor,
    ts: Sequence[float] = ORBIT_TS,
    orbit: Optional[Dict[str, Any]] = None,
    caption: Optional[str] = None,
) -> Optional[np.ndarray]:
    """One input moved along the most and the least invariant generator, and the model's output along both.

    Images are drawn as thumbnails ``action.transform(x[None], h, t)`` at each ``t`` (RGB for
    three channels, else the only or the mean channel, on one intensity scale). With ``orbit``
    (the result of :func:`orbit_outputs`), two panels follow: the output components against ``t``
    along each generator, on one y scale, so an invariant direction is a flat line and the other
    one moves; each is titled with the largest change from ``t = 0``. At most
    :data:`_MAX_CURVES` components are drawn (those that move most). Vector inputs are drawn by
    their outputs only: without ``orbit`` there is nothing to draw and ``None`` is returned.

    Args:
        action: The group action; its ``transform`` may raise :class:`NotImplementedError`,
            which propagates.
        x: One input without the batch dimension, e.g. ``(C, H, W)``, ``(H, W)`` or ``(c * dim,)``.
        most_invariant: The most invariant generator.
        least_invariant: The least invariant generator.
        ts: Group parameters ``t`` of the thumbnails.
        orbit: The outputs along the orbits from :func:`orbit_outputs`, or ``None``.
        caption: Where the report comes from (e.g. ``"fit · epoch 4"``), written in the title.

    Returns:
        An ``(H, W, 3)`` uint8 array, or ``None`` for a vector input without ``orbit``.
    """
    canvas = _orbit_picture(action, x, most_invariant, least_invariant, ts, orbit, caption)[0]
    return None if canvas is None else canvas.to_array()


# --------------------------------------------------------------------------------------------- text


def generators_text(report: SymmetryReport, k: int = 4, decimals: int = 3) -> str:
    """The leading generators as markdown tables (for TensorBoard's text plugin).

    Args:
        report: The report to describe.
        k: How many leading generators to write.
        decimals: Digits after the decimal point.
    """
    count = max(0, min(int(k), report.generators.shape[0]))
    stderr = _stderr(report)
    head = f"**LieGG**: nullity {report.nullity}, symmetry variance {short(report.symmetry_variance, 3)}"
    if stderr is not None and stderr.size:
        head += f" ± {short(float(stderr[0]), 2)}"
    if report.symmetry_bias is not None:
        head += f", bias {short(report.symmetry_bias, 3)}"
    if report.closure_error is not None:
        head += f", closure error {short(report.closure_error, 3)}"
    lines = [head + f", {report.num_samples} samples"]
    biases = as_numpy(report.biases).reshape(-1) if report.biases is not None else None
    for i in range(count):
        line = f"**h{i}**: variance {short(float(report.variances[i]), 3)}"
        if biases is not None:
            line += f", bias {short(float(biases[i]), 3)}"
        mat = _as_matrix(report.generators[i])
        cols = mat.shape[1]
        lines += ["", line, "", "| " + " | ".join(f"c{j}" for j in range(cols)) + " |", "|" + "---:|" * cols]
        lines += ["| " + " | ".join(_fmt(v, decimals) for v in row) + " |" for row in mat]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- all of them


@dataclass(frozen=True)
class PictureOptions:
    """What to draw besides the report: the keywords of :func:`render_pictures` and :func:`log_pictures`.

    Attributes:
        spectra: Variance spectra of the analyses so far, oldest first, for the history picture.
        labels: One label per spectrum (e.g. ``"epoch 3"``, ``"validate (epoch 9)"``).
        example_input: One input (no batch axis) for the orbit picture, or ``None``.
        orbit: :func:`orbit_outputs` of the model along the first and the last generator of the
            report, or ``None`` (images then show the orbit alone; vectors have no orbit picture).
        num_generators: How many leading generators to draw.
        layers: Per-layer reports (the metric's ``layers``): adds ``layers``, the picture of depth.
        caption: Where the report comes from, e.g. ``"fit · epoch 4"`` or ``"validate"``: written in
            every picture's title.
    """

    spectra: Sequence[Tensor] = ()
    labels: Optional[Sequence[str]] = None
    example_input: Optional[Tensor] = None
    orbit: Optional[Dict[str, Any]] = None
    num_generators: int = 4
    layers: Optional[Mapping[str, SymmetryReport]] = None
    caption: Optional[str] = None

    @classmethod
    def of(cls, options: Optional[PictureOptions] = None, **changes: Any) -> PictureOptions:
        """``options`` (default: the defaults) with the given fields changed.

        Raises:
            TypeError: A keyword that is not a field.
        """
        return dataclasses.replace(options if options is not None else cls(), **changes)


def _orbit_card(report: SymmetryReport, action: GroupAction, options: PictureOptions) -> Optional[Canvas]:
    """The orbit picture, or ``None`` without an input, with one generator, or for an action without transforms."""
    if options.example_input is None or len(report.generators) < 2:
        return None
    try:
        return _orbit_picture(action, options.example_input, report.generators[0], report.generators[-1],
                              ORBIT_TS, options.orbit, options.caption)[0]
    except NotImplementedError:  # the action cannot apply finite transformations
        return None


def picture_canvases(
    report: SymmetryReport,
    action: GroupAction,
    options: Optional[PictureOptions] = None,
    **keywords: Any,
) -> Dict[str, Canvas]:
    """All of a report's pictures laid out, not yet drawn: ``tag -> Canvas`` (tags as :func:`render_pictures`).

    Each :class:`~liegg_lightning.pictures.canvas.Canvas` draws as the logged array
    (:meth:`~liegg_lightning.pictures.canvas.Canvas.to_array`) or with matplotlib
    (:meth:`~liegg_lightning.pictures.canvas.Canvas.to_figure`, e.g. ``picture_canvases(...)["orbit"].to_figure()``
    in a notebook). Arguments as :func:`render_pictures`.

    Raises:
        TypeError: A keyword that is not a field of :class:`PictureOptions`.
    """
    opts = PictureOptions.of(options, **keywords)
    canvases: Dict[str, Canvas] = {}
    for first, count in generator_pages(report, opts.num_generators):
        tag = "generators" if first == 0 else f"generators_h{first}"
        canvases[tag] = _generators_picture(report, count, first, opts.caption)[0]
    canvases["spectrum"] = _spectrum_picture(report, opts.caption)[0]
    if opts.spectra:
        canvases["spectrum_history"] = _history_picture(list(opts.spectra), opts.labels, opts.caption)[0]
    orbit = _orbit_card(report, action, opts)
    if orbit is not None:
        canvases["orbit"] = orbit
    if opts.layers:
        canvases["layers"] = layers_canvas(opts.layers, known=list(report.known_variances) or None,
                                           caption=opts.caption)
    return canvases


def render_pictures(
    report: SymmetryReport,
    action: GroupAction,
    options: Optional[PictureOptions] = None,
    **keywords: Any,
) -> Dict[str, np.ndarray]:
    """All of a report's pictures as ``tag -> (H, W, 3) uint8`` arrays (tags without the logger prefix).

    Tags: ``generators`` (and ``generators_h2``, ... where the generators take more than one
    picture, see :func:`generator_pages`), ``spectrum``, ``spectrum_history`` (with ``spectra``),
    ``orbit`` (with ``example_input``), ``layers`` (with ``layers``), and what the action adds
    (a vector field's ``field_terms`` and ``field``). Pure drawing: it never calls
    the model, so it may run in a background thread.

    Args:
        report: The report to draw.
        action: Its action, to move ``example_input`` along the generators.
        options: What to draw besides the report (:class:`PictureOptions`).
        **keywords: Fields of :class:`PictureOptions`, instead of or over ``options``.

    Raises:
        TypeError: A keyword that is not a field of :class:`PictureOptions`.
    """
    opts = PictureOptions.of(options, **keywords)
    images = {tag: canvas.to_array() for tag, canvas in picture_canvases(report, action, opts).items()}
    images.update(action.pictures(report, opts.num_generators, opts.caption))  # e.g. a vector field's arrows
    return images


# --------------------------------------------------------------------------------------------- matplotlib


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 RGB array and close it.

    For TensorBoard: ``writer.add_image(tag, array, step, dataformats="HWC")``.

    Args:
        fig: The figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]
    _close(fig)
    return np.ascontiguousarray(rgb)


def figure_to_png(fig: Figure) -> bytes:
    """Encode a figure as PNG bytes and close it.

    Args:
        fig: The figure.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, facecolor="white")
    _close(fig)
    return buffer.getvalue()


def _close(fig: Figure) -> None:
    """Drop a pyplot-managed figure from pyplot's registry (figures made here are not in it)."""
    import sys

    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # if pyplot was never imported, no figure can be registered there
        pyplot.close(fig)
