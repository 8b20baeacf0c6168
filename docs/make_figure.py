"""Draw ``docs/liegg_tensorboard.png``: the pictures the LieGG callback logs, for a known function.

No training: the "network" is the O(5) regression target of the LieGG paper,
``f(x1, x2) = sin|x1| - |x2|^3 / 2 + x1.x2 / (|x1| |x2|)`` on two vectors of R^5, which is exactly
invariant to so(5), plus a small term ``eps * x1[0]^2`` that breaks the rotations moving the first
axis. So the truth is known: the 6 rotations of axes 1..4 stay exact symmetries (variance at the
float64 floor), the 4 rotations involving axis 0 are approximate (variance ~ eps^2), and the 15
symmetric directions of gl(5) are not symmetries at all.

The image stacks the leading generators (top), the spectrum with the biases to so(5) (bottom
left) and the spectra for a sweep of ``eps`` (bottom right, one row per value, largest first).

Usage::

    python docs/make_figure.py [--out docs/liegg_tensorboard.png] [--eps 0.05]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch
from torch import Tensor

from liegg_lightning import VectorAction, analyze
from liegg_lightning.rendering import (
    figure_to_array,
    generators_figure,
    spectrum_figure,
    spectrum_history_figure,
)


def o5_function(eps: float) -> Callable[[Tensor], Tensor]:
    """The so(5)-invariant target of the paper plus ``eps * x1[0]^2``; input ``(B, 10)``, output ``(B, 1)``."""

    def f(x: Tensor) -> Tensor:
        x1, x2 = x[:, :5], x[:, 5:]
        n1, n2 = x1.norm(dim=1), x2.norm(dim=1)
        out = torch.sin(n1) - n2**3 / 2 + (x1 * x2).sum(1) / (n1 * n2) + eps * x1[:, 0] ** 2
        return out[:, None]

    return f


def _pad_right(img: np.ndarray, width: int) -> np.ndarray:
    """Pad an RGB image with white columns, centring it, up to ``width``."""
    missing = width - img.shape[1]
    left = missing // 2
    return np.pad(img, ((0, 0), (left, missing - left), (0, 0)), constant_values=255)


def _side_by_side(images: List[np.ndarray]) -> np.ndarray:
    height = max(img.shape[0] for img in images)
    padded = [np.pad(img, ((0, height - img.shape[0]), (0, 0), (0, 0)), constant_values=255) for img in images]
    return np.concatenate(padded, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("liegg_tensorboard.png"))
    parser.add_argument("--eps", type=float, default=0.05, help="strength of the symmetry-breaking term")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.samples, 10, dtype=torch.float64)
    action = VectorAction(dim=5, components=2)
    report = analyze(o5_function(args.eps), x, action, reference_algebra="so")
    print(report)

    sweep = [1.0, 0.3, 0.1, 0.03, 0.01, 0.0]
    spectra = [analyze(o5_function(eps), x, action).variances for eps in sweep]

    top = figure_to_array(generators_figure(report, k=4))
    history = spectrum_history_figure(spectra, [f"eps = {eps:g}" for eps in sweep])
    history.axes[0].set_title("Spectra as the breaking term shrinks")  # a sweep here, not training
    bottom = _side_by_side([figure_to_array(spectrum_figure(report)), figure_to_array(history)])
    width = max(top.shape[1], bottom.shape[1])
    gap = np.full((12, width, 3), 255, dtype=np.uint8)
    composite = np.concatenate([_pad_right(top, width), gap, _pad_right(bottom, width)], axis=0)

    import matplotlib.image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(args.out, composite)
    print(f"wrote {args.out} ({composite.shape[1]}x{composite.shape[0]})")


if __name__ == "__main__":
    main()
