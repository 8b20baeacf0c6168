"""The card canvas: a picture described once as marks in pixels, drawn as an array or into matplotlib.

A :class:`Canvas` records what a picture holds (text, lines, rectangles, markers, pasted arrays)
in the coordinates of the final picture, pixels from the top left. :meth:`Canvas.to_array` draws
it as an ``(H, W, 3)`` uint8 array (Pillow for lines and text, numpy for heat maps: what the
callback logs, a few milliseconds a picture); :meth:`Canvas.draw_into` draws the same marks into a
matplotlib :class:`~matplotlib.axes.Axes` (what the notebook functions such as
:func:`~liegg_lightning.pictures.rendering.plot_spectrum` return, to be saved as a vector figure), and
:meth:`Canvas.to_figure` into a figure of its own. Each
picture is therefore laid out once, in :mod:`liegg_lightning.pictures.rendering` and
:mod:`liegg_lightning.pictures.layers`, whatever it is drawn with.

The helpers below (fonts, colour maps, titles, tick choices) are shared by every picture.
Pillow and matplotlib are imported inside the functions, so importing ``liegg_lightning`` imports
neither.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "BLUE",
    "CARD_HEIGHT",
    "CARD_WIDTH",
    "DPI",
    "GREY",
    "INK",
    "ORANGE",
    "Canvas",
    "PlotBox",
    "as_numpy",
    "colour",
    "decade_label",
    "decade_ticks",
    "fit_text",
    "font",
    "header",
    "header_height",
    "short",
    "upscale",
]

#: Width of the card pictures in pixels. TensorBoard's Time Series tab (where it opens) fits a picture
#: into a box about 340-350 pixels wide and 210 high on a 1400-pixel window and draws it pixelated:
#: a picture larger than the box loses whole pixel columns (a "6" reads "5"), a smaller one is
#: enlarged. So the pictures are at most CARD_WIDTH x CARD_HEIGHT.
CARD_WIDTH = 330
CARD_HEIGHT = 200
#: Pixels per inch of the matplotlib figures that show a card (one card pixel a figure pixel).
DPI = 100
#: Top of a card picture's content, below its title line.
BELOW_HEADER = 24
#: Lines are drawn at this multiple of the final size, then averaged down (anti-aliasing).
_SUPERSAMPLE = 2

DIVERGING = "RdBu_r"
SEQUENTIAL = "viridis"
RGB = Tuple[int, int, int]
INK: RGB = (34, 34, 34)
GREY: RGB = (110, 110, 110)
GRID: RGB = (225, 225, 225)
BLUE: RGB = (31, 119, 180)
ORANGE: RGB = (230, 120, 20)
GREEN: RGB = (44, 160, 44)
RED: RGB = (214, 39, 40)
SHADE: RGB = (222, 242, 222)
TAB10: List[RGB] = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
#: Font sizes in pixels: tick labels, text, titles.
SMALL, TEXT, TITLE = 12, 13, 14

# --------------------------------------------------------------------------------------------- numbers


def as_numpy(x: Union[Tensor, np.ndarray, Sequence[float]]) -> np.ndarray:
    """A tensor, array or sequence as a float64 numpy array (on the CPU, detached)."""
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def short(value: Optional[float], digits: int = 2) -> str:
    """Compact text for a measure: ``1.2e-5``, ``0.031``, ``n/a`` for NaN, ``-`` for None."""
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0.0:
        return "0"
    text = f"{value:.{max(digits - 1, 0)}e}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        text = f"{mantissa}e{int(exponent)}"
    return text


def decade_label(exponent: int) -> str:
    """A power of ten as a tick label: ``1``, ``10``, ``0.1``, ``1e-3``."""
    return {0: "1", 1: "10", -1: "0.1"}.get(exponent, f"1e{exponent}")


def decade_ticks(lo: float, hi: float, max_ticks: int = 6) -> List[int]:
    """Integer exponents between ``lo`` and ``hi`` (log10 units), thinned to at most ``max_ticks``."""
    first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    if last < first:
        return [round((lo + hi) / 2)]
    step = max(1, math.ceil((last - first + 1) / max_ticks))
    return list(range(last, first - 1, -step))[::-1]


# --------------------------------------------------------------------------------------------- colours


@functools.lru_cache(maxsize=8)
def _lut(name: str) -> np.ndarray:
    """A colour map as a ``(256, 3)`` uint8 look-up table."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def colour(values: np.ndarray, lo: float, hi: float, cmap: str, bad: RGB = (255, 255, 255)) -> np.ndarray:
    """Values mapped linearly from ``[lo, hi]`` onto a colour map: ``(*values.shape, 3)`` uint8; NaN is ``bad``."""
    scale = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    idx = np.clip(np.nan_to_num(scale, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.intp)
    out = _lut(cmap)[idx]
    out[np.isnan(values)] = bad
    return out


def upscale(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w, 3)`` array: every cell a block of pixels."""
    rows = np.minimum((np.arange(height) * rgb.shape[0]) // max(height, 1), rgb.shape[0] - 1)
    cols = np.minimum((np.arange(width) * rgb.shape[1]) // max(width, 1), rgb.shape[1] - 1)
    return rgb[rows][:, cols]


# --------------------------------------------------------------------------------------------- canvas


@functools.lru_cache(maxsize=32)
def font(size: int, bold: bool = False) -> Any:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; Pillow's own font if it is missing."""
    import os

    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), size)
    except OSError:  # pragma: no cover - a matplotlib without its fonts
        return ImageFont.load_default(size)


@dataclass(frozen=True)
class _Text:
    x: float
    y: float
    text: str
    size: int
    color: RGB
    anchor: str
    bold: bool


#: A mark: ``(kind, arguments)`` with kind ``"line"``, ``"rect"``, ``"marker"`` or ``"paste"``.
_Mark = Tuple[str, Tuple[Any, ...]]


class Canvas:
    """A white RGB picture, recorded as marks in final pixels, drawn by :meth:`to_array` or :meth:`draw_into`."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = int(width), int(height)
        self.marks: List[_Mark] = []
        self.texts: List[_Text] = []

    def text(self, x: float, y: float, text: str, size: int = TEXT, color: RGB = INK, anchor: str = "la",
             bold: bool = False) -> None:
        """Write ``text`` with its ``anchor`` (Pillow's two-letter anchors) at ``(x, y)``, over everything else."""
        self.texts.append(_Text(x, y, text, size, color, anchor, bold))

    def text_width(self, text: str, size: int = TEXT, bold: bool = False) -> float:
        """Width of ``text`` in final pixels."""
        return float(font(size, bold).getlength(text))

    def line(self, points: Sequence[Tuple[float, float]], color: RGB = INK, width: float = 1.0) -> None:
        """A polyline through ``points``."""
        if len(points) >= 2:
            self.marks.append(("line", (list(points), color, width)))

    def dashed(self, x0: float, y0: float, x1: float, y1: float, color: RGB, width: float = 1.0,
               dash: float = 4.0) -> None:
        """A dashed straight line."""
        steps = max(1, int(math.hypot(x1 - x0, y1 - y0) // dash))
        for i in range(0, steps, 2):
            a, b = i / steps, min(1.0, (i + 1) / steps)
            self.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                      color, width)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Optional[RGB] = None,
             outline: Optional[RGB] = None, width: float = 1.0) -> None:
        """A rectangle, filled and/or outlined."""
        self.marks.append(("rect", (x0, y0, x1, y1, fill, outline, width)))

    def marker(self, x: float, y: float, radius: float, color: RGB, shape: str = "o", hollow: bool = False) -> None:
        """A circle (``"o"``) or square (``"s"``) marker centred at ``(x, y)``."""
        self.marks.append(("marker", (x, y, radius, color, shape, hollow)))

    def paste(self, rgb: np.ndarray, x: int, y: int) -> None:
        """Place an ``(h, w, 3)`` uint8 array with its top-left corner at ``(x, y)``, pixel for pixel.

        Arrays are placed over the lines, so heat maps and images stay sharp; text goes over both.
        """
        self.marks.append(("paste", (rgb, int(x), int(y))))

    # ----------------------------------------------------------------------------------- as an array

    def to_array(self) -> np.ndarray:
        """The finished ``(H, W, 3)`` uint8 picture: lines, then pasted arrays, then text."""
        from PIL import Image, ImageDraw

        s = _SUPERSAMPLE
        big = Image.new("RGB", (self.width * s, self.height * s), (255, 255, 255))
        draw = ImageDraw.Draw(big)
        for kind, args in self.marks:
            if kind != "paste":
                _PILLOW[kind](draw, *args)
        out = np.array(big.reduce(s) if s > 1 else big, dtype=np.uint8)
        for kind, args in self.marks:
            if kind == "paste":
                rgb, x, y = args
                h, w = min(rgb.shape[0], out.shape[0] - y), min(rgb.shape[1], out.shape[1] - x)
                if h > 0 and w > 0:
                    out[y : y + h, x : x + w] = rgb[:h, :w]
        small = Image.fromarray(out)
        draw = ImageDraw.Draw(small)
        for t in self.texts:  # anti-aliased by the font renderer: drawn at the final size, last
            draw.text((t.x, t.y), t.text, fill=t.color, font=font(t.size, t.bold), anchor=t.anchor)
        return np.asarray(small, dtype=np.uint8).copy()

    # ----------------------------------------------------------------------------------- in matplotlib

    def draw_into(self, ax: Axes) -> None:
        """Draw the picture into ``ax``, whose data coordinates become the picture's pixels.

        The axes lose their frame and ticks and keep the picture's aspect; lines, markers and text
        stay vectors (a saved PDF or SVG scales), heat maps are images without smoothing.
        """
        ax.set_axis_off()
        for kind, args in self.marks:
            _MATPLOTLIB[kind](ax, *args)
        for t in self.texts:
            ax.text(t.x, t.y, t.text, fontsize=t.size * 72.0 / DPI, color=_rgb(t.color),
                    fontweight="bold" if t.bold else "normal", ha=_HA[t.anchor[0]], va=_VA[t.anchor[1]],
                    family="DejaVu Sans", zorder=4)
        ax.set_xlim(0, self.width)
        ax.set_ylim(self.height, 0)
        ax.set_aspect("equal")


    def to_figure(self) -> Figure:
        """The picture in a matplotlib figure outside pyplot (an Agg canvas), one figure pixel a picture pixel."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        FigureCanvasAgg(fig)
        self.draw_into(fig.add_axes((0.0, 0.0, 1.0, 1.0)))
        return fig


def _rgb(color: Optional[RGB]) -> Any:
    return "none" if color is None else tuple(c / 255.0 for c in color)


def _pil_line(draw: Any, points: List[Tuple[float, float]], color: RGB, width: float) -> None:
    s = _SUPERSAMPLE
    draw.line([(x * s, y * s) for x, y in points], fill=color, width=max(1, round(width * s)), joint="curve")


def _pil_rect(draw: Any, x0: float, y0: float, x1: float, y1: float, fill: Optional[RGB], outline: Optional[RGB],
              width: float) -> None:
    s = _SUPERSAMPLE
    draw.rectangle([x0 * s, y0 * s, x1 * s - 1, y1 * s - 1], fill=fill, outline=outline, width=max(1, round(width * s)))


def _pil_marker(draw: Any, x: float, y: float, radius: float, color: RGB, shape: str, hollow: bool) -> None:
    s = _SUPERSAMPLE
    box = [(x - radius) * s, (y - radius) * s, (x + radius) * s, (y + radius) * s]
    fill = (255, 255, 255) if hollow else color
    if shape == "s":
        draw.rectangle(box, fill=fill, outline=color, width=s)
    else:
        draw.ellipse(box, fill=fill, outline=color, width=s)


def _mpl_line(ax: Axes, points: List[Tuple[float, float]], color: RGB, width: float) -> None:
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=_rgb(color), lw=width * 72.0 / DPI, solid_joinstyle="round", zorder=1)


def _mpl_rect(ax: Axes, x0: float, y0: float, x1: float, y1: float, fill: Optional[RGB], outline: Optional[RGB],
              width: float) -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=_rgb(fill), edgecolor=_rgb(outline),
                           lw=width * 72.0 / DPI if outline is not None else 0.0, zorder=1))


def _mpl_marker(ax: Axes, x: float, y: float, radius: float, color: RGB, shape: str, hollow: bool) -> None:
    from matplotlib.patches import Circle, Rectangle

    face = "white" if hollow else _rgb(color)
    lw = 72.0 / DPI
    if shape == "s":
        ax.add_patch(Rectangle((x - radius, y - radius), 2 * radius, 2 * radius, facecolor=face,
                               edgecolor=_rgb(color), lw=lw, zorder=2))
    else:
        ax.add_patch(Circle((x, y), radius, facecolor=face, edgecolor=_rgb(color), lw=lw, zorder=2))


def _mpl_paste(ax: Axes, rgb: np.ndarray, x: int, y: int) -> None:
    ax.imshow(rgb, extent=(x, x + rgb.shape[1], y + rgb.shape[0], y), interpolation="nearest", zorder=3)


_PILLOW: Dict[str, Callable[..., None]] = {"line": _pil_line, "rect": _pil_rect, "marker": _pil_marker}
_MATPLOTLIB: Dict[str, Callable[..., None]] = {
    "line": _mpl_line, "rect": _mpl_rect, "marker": _mpl_marker, "paste": _mpl_paste,
}
_HA = {"l": "left", "m": "center", "r": "right"}
_VA = {"a": "top", "t": "top", "m": "center", "s": "baseline", "b": "bottom", "d": "bottom"}


class PlotBox:
    """A plotting box on a canvas: data ``(x, y)`` to pixels, with ``y`` linear or already log10."""

    def __init__(self, canvas: Canvas, box: Tuple[float, float, float, float], xlim: Tuple[float, float],
                 ylim: Tuple[float, float]) -> None:
        self.canvas, self.box = canvas, box
        self.xlim, self.ylim = xlim, ylim

    def px(self, x: float, y: float) -> Tuple[float, float]:
        """The pixel of the data point ``(x, y)``."""
        x0, y0, x1, y1 = self.box
        (a, b), (c, d) = self.xlim, self.ylim
        fx = (x - a) / (b - a) if b > a else 0.5
        fy = (y - c) / (d - c) if d > c else 0.5
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def frame(self) -> None:
        """A grey frame around the box."""
        x0, y0, x1, y1 = self.box
        self.canvas.rect(x0, y0, x1 + 1, y1 + 1, outline=(160, 160, 160))

    def xticks(self, ticks: Sequence[float], labels: Sequence[str], size: int = SMALL, inward: bool = False) -> None:
        """Ticks under the box; ``inward`` keeps the end labels inside the box's width."""
        _, _, _, y1 = self.box
        for tick, label in zip(ticks, labels):
            px, _ = self.px(tick, self.ylim[0])
            self.canvas.line([(px, y1), (px, y1 + 3)], GREY)
            anchor = "mt"
            if inward and tick == self.xlim[0]:
                anchor = "lt"
            elif inward and tick == self.xlim[1]:
                anchor = "rt"
            self.canvas.text(px, y1 + 4, label, size=size, color=GREY, anchor=anchor)

    def yticks(self, ticks: Sequence[float], labels: Sequence[str], right: bool = False, size: int = SMALL,
               color: RGB = GREY, grid: bool = True) -> None:
        """Tick labels left (or right) of the box, with grid lines across it."""
        x0, _, x1, _ = self.box
        for tick, label in zip(ticks, labels):
            _, py = self.px(self.xlim[0], tick)
            if grid:
                self.canvas.line([(x0, py), (x1, py)], GRID)
            if right:
                self.canvas.text(x1 + 4, py, label, size=size, color=color, anchor="lm")
            else:
                self.canvas.text(x0 - 4, py, label, size=size, color=color, anchor="rm")


# --------------------------------------------------------------------------------------------- titles


def fit_text(text: str, size: int, width: float, bold: bool = False) -> str:
    """``text``, its middle replaced by an ellipsis where it is wider than ``width``.

    Both ends stay, so labels such as ``validate (epoch 9)`` and ``validate (epoch 19)`` stay apart.
    """
    face = font(size, bold)
    if face.getlength(text) <= width:
        return text
    keep = len(text)
    while keep > 2 and face.getlength(text[: keep - keep // 2] + "…" + text[len(text) - keep // 2 :]) > width:
        keep -= 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2 :]


def _caption_line(title: str, caption: Optional[str], width: int = CARD_WIDTH) -> bool:
    """Whether ``caption`` needs a line of its own under ``title`` (it does not fit beside it)."""
    if not caption:
        return False
    room = width - 16 - font(TITLE, True).getlength(title) - 14
    return bool(font(TEXT).getlength(caption) > room)


def header_height(title: str, caption: Optional[str], width: int = CARD_WIDTH) -> int:
    """Height of the title line(s) :func:`header` draws."""
    return BELOW_HEADER + (17 if _caption_line(title, caption, width) else 0)


def header(canvas: Canvas, title: str, caption: Optional[str]) -> int:
    """A picture's title: ``title`` in bold on the left, ``caption`` (stage and epoch) in grey on the right.

    A caption too long to share the line gets a line of its own. Returns the top of what follows.
    """
    canvas.text(8, 4, fit_text(title, TITLE, canvas.width - 16, bold=True), size=TITLE, bold=True, anchor="lt")
    if caption and _caption_line(title, caption, canvas.width):
        canvas.text(canvas.width - 8, BELOW_HEADER, fit_text(caption, TEXT, canvas.width - 16), size=TEXT,
                    color=GREY, anchor="rt")
    elif caption:
        canvas.text(canvas.width - 8, 6, caption, size=TEXT, color=GREY, anchor="rt")
    return header_height(title, caption, canvas.width)
