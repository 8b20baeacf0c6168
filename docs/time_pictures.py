"""Time one full set of the callback's pictures (generators, spectrum, spectrum history, orbit, layers).

Two cases: a small CNN on 28x28 images (10 outputs, gl(2)) and an MLP on the O(5) inputs (two
vectors of R^5, gl(5)), each with a 20-analysis history and a picture of three layers (the same
report three times: the drawing's cost depends on the rows, not on the values). Prints the first
call (fonts and colour maps loaded) and the median of the next ``--repeats`` calls of
``render_pictures``, and the model-side ``orbit_outputs``. Then, per picture, the median time to
draw its layout (``picture_canvases``) as the card array against matplotlib drawing the same
marks (one artist a mark, no layout engine) on a reused Agg figure and reading its pixels back,
as the drawing thread would, alternately. Then the sending of the drawn set to a
``TensorBoardLogger`` (the callback's way, a 256-colour PNG per picture, against TensorBoard's
``add_image``, alternately, each flushed to disk). One torch thread.

Usage::

    python docs/time_pictures.py [--repeats 10] [--rendering path/to/other/rendering.py]

``--rendering`` times another version of ``liegg_lightning/pictures/rendering.py`` (e.g. an older one
taken with ``git show REV:liegg_lightning/rendering.py > /tmp/old.py``, its path before ``pictures/``)
on the same reports.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import statistics
import sys
import tempfile
import time
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from liegg_lightning import ImageAction, SymmetryReport, VectorAction, analyze
from liegg_lightning.pictures import rendering as current
from liegg_lightning.pictures.canvas import DPI, Canvas


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_rendering", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _seconds(fn: Callable[[], Any], repeats: int) -> List[float]:
    out = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rendering", default=None, help="another rendering.py to time instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    R = _load(args.rendering) if args.rendering else current

    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                        nn.Linear(392, 10)).eval()
    mlp = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 1)).eval()
    cases = [
        ("images 28x28, CNN, gl(2)", ImageAction(), torch.randn(256, 1, 28, 28), cnn, "rotation"),
        ("O(5) vectors, MLP, gl(5)", VectorAction(dim=5, components=2), torch.randn(512, 10), mlp, "so"),
    ]
    for name, action, x, model, reference in cases:
        report = analyze(model, x, action, reference_algebra=reference, batch_size=256)
        assert isinstance(report, SymmetryReport)  # no layers asked for: one report
        spectra = [report.variances * (1.0 + 0.1 * i) for i in range(20)]
        labels = [f"epoch {i + 1}" for i in range(20)]
        kwargs = {"spectra": spectra, "labels": labels, "example_input": x[0], "num_generators": 4,
                  "layers": {"0": report, "1": report, "": report}}
        orbit_line = ""
        parameters = inspect.signature(R.render_pictures).parameters
        if "orbit" in parameters or "keywords" in parameters:  # older versions drew no orbit curves
            def outputs(model: Any = model, action: Any = action, x: Any = x, report: Any = report) -> Any:
                return current.orbit_outputs(model, action, x[0], report.generators[0], report.generators[-1])

            kwargs["orbit"] = outputs()
            model_times = _seconds(outputs, args.repeats)
            orbit_line = f"; orbit_outputs (model) {1e3 * statistics.median(model_times[1:]):.1f} ms"
        times = _seconds(functools.partial(R.render_pictures, report, action, **kwargs), args.repeats)
        print(f"{name}: render_pictures first {times[0]:.3f} s, median {statistics.median(times[1:]):.3f} s "
              f"over {args.repeats}{orbit_line}")
        if hasattr(R, "picture_canvases"):
            _print_per_picture(name, R.picture_canvases(report, action, **kwargs), args.repeats)
        images = current.render_pictures(report, action, **kwargs)  # type: ignore[arg-type]
        ours, theirs = _sending_times(images, args.repeats)
        print(f"{name}: sending to TensorBoard median {1e3 * ours:.1f} ms (add_image: {1e3 * theirs:.1f} ms, "
              f"{theirs / ours:.2f}x)")


class _ReusedFigure:
    """One Agg figure whose axes are emptied and drawn again for each picture, as a drawing thread would."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(dpi=DPI)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_axes((0.0, 0.0, 1.0, 1.0))

    def draw(self, canvas: Canvas) -> np.ndarray:
        ax = self.axes
        for artist in [*ax.lines, *ax.patches, *ax.texts, *ax.images]:
            artist.remove()
        self.figure.set_size_inches(canvas.width / DPI, canvas.height / DPI)
        canvas.draw_into(ax)
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]


def _print_per_picture(name: str, canvases: Dict[str, Canvas], repeats: int) -> None:
    """Median ms per picture: the card array against matplotlib drawing the same marks, alternately."""
    figure = _ReusedFigure()
    total_array = total_mpl = 0.0
    for tag, canvas in canvases.items():
        array_times, mpl_times = [], []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            canvas.to_array()
            array_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            figure.draw(canvas)
            mpl_times.append(time.perf_counter() - start)
        ours, theirs = 1e3 * statistics.median(array_times[1:]), 1e3 * statistics.median(mpl_times[1:])
        total_array, total_mpl = total_array + ours, total_mpl + theirs
        print(f"{name}: {tag:16s} card array {ours:6.1f} ms, matplotlib {theirs:6.1f} ms ({theirs / ours:4.1f}x)")
    print(f"{name}: {'all':16s} card array {total_array:6.1f} ms, matplotlib {total_mpl:6.1f} ms "
          f"({total_mpl / total_array:4.1f}x)")


def _sending_times(images: Dict[str, Any], repeats: int) -> Tuple[float, float]:
    """Median seconds to send ``images`` to TensorBoard the callback's way and with ``add_image``, alternately."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from liegg_lightning.callback._loggers import _to_tensorboard, _to_tensorboard_with_add_image

    with tempfile.TemporaryDirectory() as root:
        logger = TensorBoardLogger(root, name="timing")

        def with_add_image(step: int) -> None:
            _to_tensorboard_with_add_image(logger.experiment, images, "text", step, "add_image/")

        ours, theirs = [], []
        for step in range(repeats + 1):
            start = time.perf_counter()
            _to_tensorboard(logger, images, "text", step, "ours/")
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            with_add_image(step)
            theirs.append(time.perf_counter() - start)
        logger.finalize("success")
    return statistics.median(ours[1:]), statistics.median(theirs[1:])


if __name__ == "__main__":
    main()
