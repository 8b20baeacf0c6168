"""Pictures of a :class:`~liegg_lightning.report.SymmetryReport`: spectra, generators, orbits.

Pure functions from reports (and tensors) to matplotlib figures, images and markdown, for
TensorBoard and notebooks. matplotlib is imported inside the functions, so importing
``liegg_lightning`` never imports it.

Figures made here (except :func:`plot_spectrum` without an ``ax``, which follows TorchMetrics'
``plot`` and uses pyplot) are plain :class:`matplotlib.figure.Figure` objects drawn with the Agg
canvas: they never touch pyplot's global state or backend, so a training loop that renders one per
epoch leaks nothing, even if it never closes them. :func:`figure_to_array` and
:func:`figure_to_png` close pyplot-managed figures as well.

Example:
    >>> import torch
    >>> from liegg_lightning import VectorAction
    >>> from liegg_lightning.functional.symmetry import _symmetry_compute
    >>> gram = torch.diag(torch.arange(4.0, dtype=torch.float64))
    >>> report = _symmetry_compute(gram, 4, 4, 0, VectorAction(dim=2))
    >>> figure_to_array(generators_figure(report, k=2)).dtype
    dtype('uint8')
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from liegg_lightning.actions import GroupAction
from liegg_lightning.report import SymmetryReport

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "figure_to_array",
    "figure_to_png",
    "generators_figure",
    "generators_text",
    "orbit_figure",
    "plot_spectra",
    "plot_spectrum",
    "render_pictures",
    "spectrum_figure",
    "spectrum_history_figure",
]

#: Inches per panel and resolution: TensorBoard images of a few hundred pixels a side.
_PANEL_INCHES = 3.0
_DPI = 100
#: Entries are written on a generator heat map when it has at most this many.
_MAX_ANNOTATED_ENTRIES = 36
_DIVERGING = "RdBu_r"


def _new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot, with an Agg canvas: no global backend, nothing to leak.

    Constrained layout keeps titles, tick labels and colour bars inside the image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _as_numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _log_floor(values: np.ndarray) -> float:
    """A positive floor for a log axis: the float64 resolution below the largest value."""
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    if top > 0.0:
        return max(top * 1e-16, np.finfo(np.float64).tiny)
    return 1e-16  # all zero: any positive floor draws a flat line


def _as_matrix(generator: Tensor) -> np.ndarray:
    """A generator as a 2-D array: scalars and vectors become one row, higher ranks keep the last axis."""
    g = _as_numpy(generator)
    if g.ndim == 0:
        return g.reshape(1, 1)
    if g.ndim == 1:
        return g.reshape(1, -1)
    return g.reshape(-1, g.shape[-1])


def _fmt(value: float, decimals: int) -> str:
    """Fixed-point text without a negative zero."""
    return f"{round(float(value), decimals) + 0.0:.{decimals}f}"


def _describe(report: SymmetryReport, i: int) -> Tuple[str, Optional[str]]:
    variance = f"{float(report.variances[i]):.3g}"
    bias = f"{float(report.biases[i]):.3g}" if report.biases is not None else None
    return variance, bias


def plot_spectrum(report: SymmetryReport, ax: Optional[Axes] = None) -> Tuple[Figure, Axes]:
    """The symmetry-variance spectrum on a log scale, the learned symmetries shaded.

    Zero variances are drawn at a floor (open markers) so the log axis holds them. The
    ``nullity`` most invariant generators are shaded, with a line between index ``nullity - 1`` and
    ``nullity``. With reference biases, they are drawn on a second y axis (0 = inside the reference
    algebra).

    Args:
        report: The report to draw.
        ax: Axes to draw into; ``None`` makes a new pyplot figure, as TorchMetrics' ``plot`` does.

    Returns:
        ``(figure, axes)``; ``axes`` is the variance axis.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2 * _PANEL_INCHES, 1.2 * _PANEL_INCHES), dpi=_DPI, layout="constrained")
    else:
        fig = ax.figure

    variances = _as_numpy(report.variances).reshape(-1)
    m = variances.size
    ax.set_title(f"Symmetry-variance spectrum (N = {report.num_samples}, nullity = {report.nullity})")
    ax.set_xlabel("eigen-index i (most invariant first)")
    ax.set_ylabel(r"variance $\sigma_i^2 / N$")
    if m == 0:
        ax.text(0.5, 0.5, "empty spectrum", ha="center", va="center", transform=ax.transAxes)
        return fig, ax

    floor = _log_floor(variances)
    at_floor = ~(variances > floor)  # zero, tiny, or NaN
    shown = np.where(at_floor, floor, variances)
    idx = np.arange(m)
    marker = "o" if m <= 64 else None
    handles = ax.plot(idx, shown, color="C0", marker=marker, markersize=4, lw=1.2, label="variance")
    if at_floor.any():
        handles += ax.plot(idx[at_floor], shown[at_floor], ls="none", marker="o", mfc="white", color="C0",
                           markersize=6, label=f"at floor ({floor:.0e})")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, m - 0.5)
    ax.grid(True, which="major", alpha=0.3)

    k = int(report.nullity)
    if k > 0:
        # the estimated learned symmetries: indices 0..k-1
        shade = ax.axvspan(-0.5, min(k, m) - 0.5, color="C2", alpha=0.15, lw=0, label=f"learned symmetries ({k})")
        handles.append(shade)
        if k < m:
            ax.axvline(k - 0.5, color="C2", ls="--", lw=1.2)

    if report.biases is not None:
        biases = _as_numpy(report.biases).reshape(-1)
        bax = ax.twinx()
        handles += bax.plot(np.arange(biases.size), biases, color="C1", ls="none", marker="s", markersize=4,
                            label="bias to reference")
        bax.set_ylabel("bias (distance to reference)")
        bax.set_ylim(-0.05, max(1.05, float(np.nanmax(biases)) * 1.05 if biases.size else 1.05))
    ax.legend(handles=handles, loc="lower right", fontsize="small", framealpha=0.8)
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
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2 * _PANEL_INCHES, 1.2 * _PANEL_INCHES), dpi=_DPI, layout="constrained")
    else:
        fig = ax.figure
    floor = min(_log_floor(_as_numpy(r.variances).reshape(-1)) for r in reports)
    for i, report in enumerate(reports):
        variances = _as_numpy(report.variances).reshape(-1)
        ax.plot(np.arange(variances.size), np.where(variances > floor, variances, floor), marker="o", markersize=3,
                lw=1.0, label=f"report {i} (nullity {report.nullity})")
    ax.set_yscale("log")
    ax.set_xlabel("eigen-index i (most invariant first)")
    ax.set_ylabel(r"variance $\sigma_i^2 / N$")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig, ax  # type: ignore[return-value]


def spectrum_figure(report: SymmetryReport) -> Figure:
    """:func:`plot_spectrum` on a new figure outside pyplot."""
    fig = _new_figure(2 * _PANEL_INCHES + 0.5, 1.2 * _PANEL_INCHES)
    plot_spectrum(report, ax=fig.add_subplot(1, 1, 1))
    return fig


def _annotate(ax: Any, matrix: np.ndarray, limit: float) -> None:
    """Write the entries on a small heat map, light text on dark cells."""
    for (r, c), value in np.ndenumerate(matrix):
        color = "white" if abs(value) > 0.6 * limit else "black"
        ax.text(c, r, _fmt(value, 2), ha="center", va="center", fontsize=7, color=color)


def generators_figure(report: SymmetryReport, k: int = 4) -> Figure:
    """Heat maps of the ``k`` most invariant generators on one colour scale centred at zero.

    The generators have unit norm, so one symmetric scale for all panels keeps their entries
    comparable. Each panel is titled with its variance (and bias when there is a reference).

    Args:
        report: The report to draw.
        k: How many leading generators to draw (fewer if the report has fewer).
    """
    gens = report.generators
    count = max(0, min(int(k), gens.shape[0]))
    fig = _new_figure(_PANEL_INCHES * max(count, 1) + 0.8, _PANEL_INCHES + 0.9)
    if count == 0:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no generators", ha="center", va="center", transform=ax.transAxes)
        return fig

    mats = [_as_matrix(gens[i]) for i in range(count)]
    limit = max(float(np.nanmax(np.abs(mat))) if mat.size else 0.0 for mat in mats)
    limit = limit if limit > 0 and math.isfinite(limit) else 1.0
    axes = fig.subplots(1, count, squeeze=False)[0]
    image = None
    for i, (ax, mat) in enumerate(zip(axes, mats)):
        rows, cols = mat.shape
        aspect = "equal" if max(rows, cols) <= 4 * min(rows, cols) else "auto"
        image = ax.imshow(mat, cmap=_DIVERGING, vmin=-limit, vmax=limit, aspect=aspect, interpolation="nearest")
        if mat.size <= _MAX_ANNOTATED_ENTRIES:
            _annotate(ax, mat, limit)
        variance, bias = _describe(report, i)
        title = f"$h_{{{i}}}$  var {variance}"
        if bias is not None:
            title += f"\nbias {bias}"
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(cols) if cols <= 12 else [])
        ax.set_yticks(range(rows) if rows <= 12 else [])
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{count} most invariant generators (nullity {report.nullity})", fontsize=11)
    fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02)
    return fig


def spectrum_history_figure(spectra: Sequence[Tensor], labels: Optional[Sequence[str]] = None) -> Figure:
    """All analyses so far as one image: analysis (rows) by eigen-index (columns), log colour scale.

    Symmetries the network learns show up as columns on the left growing dark over the rows.

    Args:
        spectra: Variance spectra ``(m,)``, oldest first; shorter ones are padded (blank).
        labels: One label per spectrum (e.g. ``"epoch 3"``); default ``"0", "1", ...``.
    """
    from matplotlib.colors import LogNorm

    if len(spectra) == 0:
        raise ValueError("Expected at least one spectrum, got none.")
    if labels is not None and len(labels) != len(spectra):
        raise ValueError(f"Expected one label per spectrum ({len(spectra)}), got {len(labels)}.")
    rows = [_as_numpy(torch.as_tensor(s)).reshape(-1) for s in spectra]
    width = max(r.size for r in rows)
    table = np.full((len(rows), max(width, 1)), np.nan)
    for i, r in enumerate(rows):
        table[i, : r.size] = r
    floor = _log_floor(table)
    table = np.where(np.isnan(table), np.nan, np.maximum(table, floor))
    finite = table[np.isfinite(table)]
    vmin = float(finite.min()) if finite.size else floor
    vmax = float(finite.max()) if finite.size else floor * 10
    if vmax <= vmin:
        vmax = vmin * 10.0

    n = len(rows)
    fig = _new_figure(2 * _PANEL_INCHES + 0.8, min(1.6 + 0.25 * n, 8.0))
    ax = fig.add_subplot(1, 1, 1)
    cmap = _colormap("viridis", bad="white")
    image = ax.imshow(table, aspect="auto", cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax), interpolation="nearest")
    ax.set_xlabel("eigen-index i (most invariant first)")
    ax.set_ylabel("analysis")
    ax.set_title("Symmetry-variance spectra over training")
    texts = list(labels) if labels is not None else [str(i) for i in range(n)]
    step = max(1, math.ceil(n / 12))  # at most ~12 labelled rows
    ticks = list(range(0, n, step))
    ax.set_yticks(ticks)
    ax.set_yticklabels([texts[i] for i in ticks], fontsize=8)
    fig.colorbar(image, ax=ax, label=r"variance $\sigma_i^2 / N$")
    return fig


def _colormap(name: str, bad: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=bad)


def _to_picture(img: np.ndarray) -> np.ndarray:
    """An image sample ``(C, H, W)`` or ``(H, W)`` as ``(H, W)`` or ``(H, W, 3)`` for ``imshow``."""
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[0] == 3:
        return np.moveaxis(img, 0, -1)
    if img.ndim == 3:
        return img[0] if img.shape[0] == 1 else img.mean(axis=0)
    return img.reshape(-1, img.shape[-1])


def orbit_figure(
    action: GroupAction,
    x: Tensor,
    most_invariant: Tensor,
    least_invariant: Tensor,
    ts: Sequence[float] = (-0.6, -0.3, 0.0, 0.3, 0.6),
) -> Figure:
    """One input moved along two generators: ``action.transform(x[None], h, t)`` for each ``t``.

    The top row follows the most invariant generator (the network should not care), the bottom
    row the least invariant one. Images are drawn as pictures (RGB for three channels, else the
    only or the mean channel) on one intensity scale; vector inputs as heat maps with one row per
    ``t`` and one block of columns per component vector.

    Args:
        action: The group action; its :meth:`~liegg_lightning.actions.GroupAction.transform` may
            raise :class:`NotImplementedError`, which propagates.
        x: One input without the batch dimension, e.g. ``(C, H, W)``, ``(H, W)`` or ``(c * dim,)``.
        most_invariant: The most invariant generator.
        least_invariant: The least invariant generator.
        ts: Group parameters ``t`` of ``exp(t h)``.
    """
    ts = [float(t) for t in ts]
    if not ts:
        raise ValueError("Expected at least one value in `ts`.")
    gens = [("most invariant", most_invariant), ("least invariant", least_invariant)]
    batch = x.detach()[None]
    # transform first: an action without transform raises before any figure exists
    moved = [[_as_numpy(action.transform(batch, g, t)[0]) for t in ts] for _, g in gens]

    if action.draws_input_as(x) == "image":
        return _orbit_images(moved, ts, [name for name, _ in gens])
    return _orbit_vectors(moved, ts, [name for name, _ in gens], action.vector_block)


def _orbit_images(moved: List[List[np.ndarray]], ts: List[float], names: List[str]) -> Figure:
    pictures = [[_to_picture(img) for img in row] for row in moved]
    values = np.concatenate([p.reshape(-1) for row in pictures for p in row])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    cols = len(ts)
    panel = 0.6 * _PANEL_INCHES
    fig = _new_figure(panel * cols + 0.4, 2 * panel + 0.6)
    axes = fig.subplots(2, cols, squeeze=False)
    for r, (row, name) in enumerate(zip(pictures, names)):
        for c, (pic, t) in enumerate(zip(row, ts)):
            ax = axes[r, c]
            if pic.ndim == 3:  # RGB, scaled jointly to [0, 1]
                ax.imshow(np.clip((pic - lo) / (hi - lo), 0.0, 1.0), interpolation="nearest")
            else:
                ax.imshow(pic, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t = {t:g}", fontsize=9, fontweight="bold" if t == 0 else "normal")
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("Orbits of an input", fontsize=10)
    return fig


def _orbit_vectors(moved: List[List[np.ndarray]], ts: List[float], names: List[str], dim: Optional[int]) -> Figure:
    tables = [np.stack([v.reshape(-1) for v in row]) for row in moved]  # (len(ts), D) per generator
    values = np.concatenate([tb.reshape(-1) for tb in tables])
    values = values[np.isfinite(values)]
    limit = float(np.abs(values).max()) if values.size else 1.0
    limit = limit if limit > 0 else 1.0
    width = tables[0].shape[1]
    fig = _new_figure(2 * _PANEL_INCHES + 0.8, 2 * (0.6 + 0.3 * len(ts)) + 0.6)
    axes = fig.subplots(2, 1, squeeze=False)[:, 0]
    image = None
    for ax, table, name in zip(axes, tables, names):
        image = ax.imshow(table, cmap=_DIVERGING, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(ts)))
        ax.set_yticklabels([f"t = {t:g}" for t in ts], fontsize=8)
        if dim is not None and dim < width:  # separate the component vectors
            for edge in range(dim, width, dim):
                ax.axvline(edge - 0.5, color="black", lw=1.5)
        ax.set_title(f"{name} generator", fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1].set_xlabel("input coordinate" + (f" (blocks of {dim})" if dim is not None and dim < width else ""))
    fig.colorbar(image, ax=list(axes), fraction=0.04, pad=0.02)
    return fig


def generators_text(report: SymmetryReport, k: int = 4, decimals: int = 3) -> str:
    """The leading generators as markdown tables (for TensorBoard's text plugin).

    Args:
        report: The report to describe.
        k: How many leading generators to write.
        decimals: Digits after the decimal point.
    """
    count = max(0, min(int(k), report.generators.shape[0]))
    lines = [
        f"**LieGG**: nullity {report.nullity}, symmetry variance {report.symmetry_variance:.3e}, "
        f"{report.num_samples} samples"
    ]
    for i in range(count):
        variance, bias = _describe(report, i)
        head = f"**h{i}**: variance {variance}"
        if bias is not None:
            head += f", bias {bias}"
        mat = _as_matrix(report.generators[i])
        cols = mat.shape[1]
        lines += ["", head, "", "| " + " | ".join(f"c{j}" for j in range(cols)) + " |",
                  "|" + "---:|" * cols]
        lines += ["| " + " | ".join(_fmt(v, decimals) for v in row) + " |" for row in mat]
    return "\n".join(lines) + "\n"


def render_pictures(
    report: SymmetryReport,
    action: GroupAction,
    *,
    spectra: Sequence[Tensor],
    labels: Optional[Sequence[str]] = None,
    example_input: Optional[Tensor] = None,
    num_generators: int = 4,
) -> Dict[str, np.ndarray]:
    """All of a report's pictures as ``tag -> (H, W, 3) uint8`` arrays (tags without the logger prefix).

    Args:
        report: The report to draw.
        action: Its action, to move ``example_input`` along the generators.
        spectra: Variance spectra of the analyses so far, for the history.
        labels: One label per spectrum.
        example_input: One input (no batch axis) for the orbit picture, or ``None``.
        num_generators: How many leading generators to draw.
    """
    images: Dict[str, np.ndarray] = {}
    if num_generators > 0:
        images["generators"] = figure_to_array(generators_figure(report, k=num_generators))
    images["spectrum"] = figure_to_array(spectrum_figure(report))
    if spectra:
        images["spectrum_history"] = figure_to_array(spectrum_history_figure(list(spectra), labels))
    if example_input is not None and len(report.generators) > 1:
        try:
            fig = orbit_figure(action, example_input, report.generators[0], report.generators[-1])
        except NotImplementedError:
            pass  # the action cannot apply finite transformations
        else:
            images["orbit"] = figure_to_array(fig)
    return images


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 RGB array and close it.

    For TensorBoard: ``writer.add_image(tag, array, step, dataformats="HWC")``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3]
    _close(fig)
    return np.ascontiguousarray(rgb)


def figure_to_png(fig: Figure) -> bytes:
    """Encode a figure as PNG bytes and close it."""
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
