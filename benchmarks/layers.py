"""What does analysing every layer cost against analysing one? (standalone; not part of run.py)

Forward mode carries one tangent per basis element through the whole network and hooks capture
each analysed layer's output and tangent on the way, so analysing all layers should cost about
what one layer costs. This script times, per batch, round-robin (``common.interleaved_medians``):

* CNN (rotated-digits size, ``aff(2)``, ``m = 6``): the model output alone (``polarization_rows``,
  forward mode), the deepest feature map alone, all six layers in one pass (``layer_rows``), and
  the six layers one call each;
* MLP 784 -> 128 x 5 -> 10 (``gl(2)``, ``m = 4``): the last hidden layer alone, all six layers in
  one forward pass, and all six layers in reverse mode (one forward pass, then 128 backward passes
  per hidden layer and 10 for the output: what forward mode avoids).

Every variant includes forming the float64 rows. Run::

    python benchmarks/layers.py               # about a minute on one CPU thread
    python benchmarks/layers.py --quick       # a few seconds, smaller batch
"""

from __future__ import annotations

import argparse
import platform
from typing import Any, Callable, Dict, List, Optional

import torch
from common import interleaved_medians, table
from torch import Tensor, nn

from liegg_lightning import ImageAction
from liegg_lightning.functional import polarization_rows
from liegg_lightning.functional.layers import layer_rows


class GlobalAvgPool(nn.Module):
    """``(B, C, H, W) -> (B, C)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3))


def cnn() -> nn.Module:
    """The CNN of examples/layerwise.py: pool, conv, pool, conv, global pool, linear."""
    return nn.Sequential(
        nn.AvgPool2d(2), nn.Conv2d(1, 16, 5, padding=2), nn.SiLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), GlobalAvgPool(), nn.Linear(32, 10),
    ).eval()


def mlp() -> nn.Module:
    """The rotated-digits MLP: 784 -> 128 x 5 -> 10, SiLU."""
    layers: List[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for _ in range(5):
        layers += [nn.Linear(width, 128), nn.SiLU()]
        width = 128
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers).eval()


def cnn_variants(x: Tensor) -> Dict[str, Callable[[], Any]]:
    model, act = cnn(), ImageAction(affine=True)
    maps = {name: ImageAction(affine=True) for name in ("0", "2", "3", "5")}
    every: Dict[str, Optional[ImageAction]] = {**maps, "6": None, "": None}
    return {
        "model output only": lambda: polarization_rows(model, x, act, derivative="forward"),
        "deepest feature map only": lambda: layer_rows(model, x, act, {"5": maps["5"]}, derivative="forward"),
        "all 6 layers, one pass": lambda: layer_rows(model, x, act, every, derivative="forward"),
        "all 6 layers, one call each": lambda: [
            layer_rows(model, x, act, {n: a}, derivative="forward") for n, a in every.items()
        ],
    }


def mlp_variants(x: Tensor) -> Dict[str, Callable[[], Any]]:
    model, act = mlp(), ImageAction()
    every = ["2", "4", "6", "8", "10", ""]
    return {
        "last hidden layer only": lambda: layer_rows(model, x, act, ["10"], derivative="forward"),
        "all 6 layers, one pass": lambda: layer_rows(model, x, act, every, derivative="forward"),
        "all 6 layers, reverse mode": lambda: layer_rows(model, x, act, every, derivative="reverse"),
    }


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256, help="images per batch")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 32, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    x = torch.randn(args.batch, 1, 28, 28)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"batch {args.batch}, median of {args.repeats} round-robin repeats")
    for title, variants, base in (
        ("CNN 28x28, aff(2), m = 6, forward mode", cnn_variants(x), "deepest feature map only"),
        ("MLP 784 -> 128 x 5 -> 10, gl(2), m = 4", mlp_variants(x), "last hidden layer only"),
    ):
        times = interleaved_medians(variants, device, args.repeats)
        rows = [
            {"variant": name, "ms per batch": 1e3 * t["median"], "vs one layer": t["median"] / times[base]["median"]}
            for name, t in times.items()
        ]
        print(table(rows, ["variant", "ms per batch", "vs one layer"], title=title))


if __name__ == "__main__":
    main()
