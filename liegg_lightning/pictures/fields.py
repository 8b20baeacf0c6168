"""Pictures of vector-field generators: a field as its largest terms, and as arrows on a 2-D slice.

Both are matplotlib figures (:func:`field_terms_figure`, :func:`field_figure`) and, for the
loggers, ``(H, W, 3)`` uint8 arrays (:func:`field_pictures`). Pure drawing: the model is never
called, so they may be drawn in a background thread. matplotlib is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from liegg_lightning.pictures.rendering import figure_to_array

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from liegg_lightning.report import SymmetryReport
    from liegg_lightning.vector_fields import VectorFieldAction

__all__ = ["field_figure", "field_pictures", "field_terms_figure"]

#: Width of one generator's panel, inches (at 100 dpi: 330 pixels, the width of the other cards).
_PANEL_W = 3.3


def _panels(count: int, height: float, title: Optional[str]) -> Tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_PANEL_W * count, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, count, squeeze=False)[0]
    if title:
        fig.suptitle(title, fontsize=9)
    return fig, axes


def _labels(count: int, labels: Optional[Sequence[str]]) -> Sequence[str]:
    return list(labels) if labels is not None else [f"h{i + 1}" for i in range(count)]


def field_terms_figure(
    action: VectorFieldAction,
    fields: Tensor,
    terms: int = 6,
    labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """One bar chart per field ``(k, m)``: its ``terms`` largest coefficients, with the terms' names.

    Args:
        action: The library the coefficients refer to.
        fields: Coefficient vectors ``(k, m)``.
        terms: How many terms to show per field.
        labels: One label per field (default ``h1, h2, ...``).
        title: The figure's title.
    """
    fields = fields.detach().to("cpu", torch.float64).reshape(-1, action.num_generators)
    names = action.term_names
    fig, axes = _panels(len(fields), 0.45 + 0.28 * terms, title)
    for ax, coeffs, label in zip(axes, fields, _labels(len(fields), labels)):
        order = torch.argsort(coeffs.abs(), descending=True)[:terms].tolist()
        values = coeffs[order].numpy()
        ax.barh(np.arange(len(order)), values, color=np.where(values >= 0, "#b2182b", "#2166ac"))
        ax.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=8)
        ax.invert_yaxis()
        limit = max(float(np.abs(values).max(initial=0.0)), 1e-12)
        ax.set_xlim(-1.05 * limit, 1.05 * limit)
        ax.axvline(0.0, color="0.5", linewidth=0.6)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(label, fontsize=8)
    return fig


def field_figure(
    action: VectorFieldAction,
    fields: Tensor,
    axes_pair: Sequence[int] = (0, 1),
    extent: float = 2.0,
    points: int = 13,
    labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Figure:
    """Arrows of each field ``(k, m)`` on the plane of two coordinates (the others at 0).

    The arrows have one length and show the direction; their colour is the speed relative to the
    fastest point of the slice (viridis: dark slow, yellow fast).

    Args:
        action: The library (``dim >= 2``).
        fields: Coefficient vectors ``(k, m)``.
        axes_pair: The two coordinates spanning the slice.
        extent: The slice covers ``[-extent, extent]^2`` in units of the action's ``scale``.
        points: Grid points per side.
        labels: One label per field (default ``h1, h2, ...``).
        title: The figure's title.

    Raises:
        ValueError: For a 1-D library, or coordinates that are not two distinct axes.
    """
    a, b = (int(i) for i in axes_pair)
    if action.dim < 2 or a == b or not (0 <= a < action.dim and 0 <= b < action.dim):
        raise ValueError(f"Expected two distinct coordinates of {action.dim} for the slice, got {tuple(axes_pair)}.")
    fields = fields.detach().to("cpu", torch.float64).reshape(-1, action.num_generators)
    line = torch.linspace(-extent, extent, points, dtype=torch.float64) * action.scale
    gu, gv = torch.meshgrid(line, line, indexing="xy")
    grid = torch.zeros(points * points, action.dim, dtype=torch.float64)
    grid[:, a], grid[:, b] = gu.reshape(-1), gv.reshape(-1)
    fig, axes = _panels(len(fields), 3.2, title)
    for ax, coeffs, label in zip(axes, fields, _labels(len(fields), labels)):
        arrows = action.field(coeffs, grid)
        u, v = arrows[:, a].numpy(), arrows[:, b].numpy()
        speed = np.hypot(u, v)
        # arrows of one length show the direction everywhere (a cubic field dwarfs the rest by its
        # corners otherwise); the colour shows the speed, relative to the fastest
        unit = np.maximum(speed, 1e-300)
        ax.quiver(grid[:, a].numpy(), grid[:, b].numpy(), u / unit, v / unit, speed / unit.max(), cmap="viridis",
                  angles="xy", scale_units="xy", scale=1.0 / (0.8 * float(line[1] - line[0])), width=0.006,
                  clim=(0.0, 1.0))
        ax.set_aspect("equal")
        ax.set_xlabel(action.coordinates[a], fontsize=8)
        ax.set_ylabel(action.coordinates[b], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(label, fontsize=8)
    return fig


def field_pictures(
    action: VectorFieldAction, report: SymmetryReport, num_generators: int = 4, caption: Optional[str] = None
) -> Dict[str, np.ndarray]:
    """The pictures :func:`~liegg_lightning.pictures.rendering.render_pictures` adds for a vector-field library.

    Tags: ``field_terms`` (the largest terms of the ``num_generators`` most invariant fields) and,
    for ``dim >= 2``, ``field`` (their arrows on the plane of the first two coordinates).
    """
    k = min(max(int(num_generators), 1), len(report.generators))
    if k == 0:
        return {}
    fields = report.generators[:k]
    variances = report.variances[:k].tolist()
    labels = [f"h{i + 1}  var {v:.2g}" for i, v in enumerate(variances)]
    title = "most invariant fields" + (f" · {caption}" if caption else "")
    out = {"field_terms": figure_to_array(field_terms_figure(action, fields, labels=labels, title=title))}
    if action.dim >= 2:
        out["field"] = figure_to_array(field_figure(action, fields, labels=labels, title=title))
    return out
