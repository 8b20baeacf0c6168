"""Layer by layer: where in a CNN rotation equivariance appears, and where it becomes invariance.

The rotated digits of ``rotated_digits.py`` (scikit-learn's 8x8 digits on a 28x28 canvas, randomly
rotated, blurred; imported from there, not copied) train a small CNN:

    avg-pool 2 (28 -> 14) - conv 5x5 (16) - SiLU - avg-pool 2 (14 -> 7) - conv 3x3 (32) - SiLU
    - global average pool - linear (10)

Before and after training, ``analyze(..., layers=...)`` analyses every stage from one pass per
batch: the feature maps for *equivariance* (``ImageAction(affine=True)`` on their output: does the
map move with the input?), the pooled features and the log-probabilities for *invariance*. A
second pass analyses every layer for invariance. The algebra is ``aff(2)`` (``m = 6``: rotation,
scaling, two shears, two translations). Two tables per stage:

* the equivariance defect of each feature map along the rotation, the scaling and the two
  translations: the variance of the Lie derivative ``J A_in - A_out`` over the invariance
  variance ``J A_in`` along the same generator (0: the map moves exactly with the input;
  1: no better than a map that stays put);
* the same defect inside the maps only: ``ImageAction(affine=True, border=k)`` on each map, ``k``
  the pixels its zero padding reaches (``BORDER``), over the invariance variance of the same
  interior (the map cropped by ``k``); beside it the share of each generator's whole-map
  equivariance variance that comes from the ring left out, and each report's ``border_share``;
* the invariance of every layer: the variance along each generator over the mean of the layer's
  spectrum (scale-free, so that layers compare; small: invariant).

Run::

    python examples/layerwise.py            # about a minute on one CPU thread
    python examples/layerwise.py --quick    # a smoke run of a few seconds
    python examples/layerwise.py --out examples/layerwise.png   # regenerate the committed picture

The trained network's picture goes to ``--out`` (``lightning_logs/layerwise.png`` by default). The
last line printed is one JSON object with every number. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Optional

import lightning.pytorch as L
from o5_common import quiet_lightning, set_threads
from rotated_digits import DigitMLP, RotatedDigits
from torch import Tensor, nn

from liegg_lightning import ImageAction, LieGGMetric, SymmetryReport, analyze
from liegg_lightning.functional.layers import layer_output_fn

#: The analysed layers (names from ``named_modules()``; ``""`` is the model's output) and what
#: each is: a feature map (analysed for equivariance) or a vector (invariance).
LAYERS: Dict[str, str] = {
    "features.0": "input pool (1x14x14)",
    "features.2": "conv1 (16x14x14)",
    "features.3": "pool1 (16x7x7)",
    "features.5": "conv2 (32x7x7)",
    "pool": "global pool (32)",
    "": "log-probabilities (10)",
}
FEATURE_MAPS = ("features.0", "features.2", "features.3", "features.5")
#: Pixels from each map's edge that zero padding reaches (conv1's 5x5 kernel pads 2; pool1 halves that
#: to 1; conv2 pads 1 more); the input pool has no padding, only the ring of one-sided differences.
BORDER = {"features.0": 1, "features.2": 2, "features.3": 1, "features.5": 2}
#: Named generators of aff(2) whose variance is printed (the translations in units of half the image side).
KNOWN = {"rotation": "rotation", "scaling": "scaling", "translation_x": "shift x", "translation_y": "shift y"}


class GlobalAvgPool(nn.Module):
    """Mean over the spatial axes: ``(B, C, H, W) -> (B, C)``, invariant to any motion of the plane
    that keeps the content inside the frame."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3))


class DigitCNN(DigitMLP):
    """A small CNN for the rotated digits, trained like :class:`rotated_digits.DigitMLP`.

    Args:
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: AdamW's weight decay.
    """

    def __init__(self, lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        L.LightningModule.__init__(self)  # not DigitMLP's: no MLP to build
        self.save_hyperparameters({"lr": lr, "weight_decay": weight_decay})
        self.features = nn.Sequential(
            nn.AvgPool2d(2),
            nn.Conv2d(1, 16, 5, padding=2), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(),
        )
        self.pool = GlobalAvgPool()
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))


def metrics() -> Dict[str, LieGGMetric]:
    """The two analyses: equivariance of the feature maps (invariance after pooling), and invariance everywhere."""
    common: Dict[str, Any] = {
        "reference_algebra": "rotation",
        "known_generators": list(KNOWN),
        "output_transform": nn.LogSoftmax(dim=1),
        "derivative": "forward",  # m = 6 JVPs carry all seven layers at once
    }
    equivariance = {name: (ImageAction(affine=True) if name in FEATURE_MAPS else None) for name in LAYERS}
    interior = {name: ImageAction(affine=True, border=BORDER[name]) for name in FEATURE_MAPS}
    return {
        "equivariance": LieGGMetric(ImageAction(affine=True), layers=equivariance, **common),
        "interior": LieGGMetric(ImageAction(affine=True), layers=interior, **common),
        "invariance": LieGGMetric(ImageAction(affine=True), layers=list(LAYERS), **common),
    }


def interior_invariance(model: DigitCNN, images: Tensor) -> Dict[str, SymmetryReport]:
    """Each feature map's invariance over the pixels ``BORDER`` keeps: the map cropped, analysed as a model."""
    reports: Dict[str, SymmetryReport] = {}
    for name in FEATURE_MAPS:
        layer, k = layer_output_fn(model, name), BORDER[name]

        def cropped(x: Tensor, layer: Any = layer, k: int = k) -> Tensor:
            return layer(x)[..., k:-k, k:-k]

        report = analyze(cropped, images, ImageAction(affine=True), known_generators=list(KNOWN),
                         derivative="forward", progress=False)
        assert isinstance(report, SymmetryReport)
        reports[name] = report
    return reports


def summarise(reports: Dict[str, Dict[str, SymmetryReport]]) -> Dict[str, Any]:
    """Per layer: the invariance variances over the layer's mean variance, and for feature maps the
    equivariance defect (the Lie derivative's variance over the invariance variance, per generator)
    of the whole map and of its interior, and the share of the whole map's defect on the ring."""
    out: Dict[str, Any] = {}
    for name, inv in reports["invariance"].items():
        mean = float(inv.variances.mean())
        row: Dict[str, Any] = {
            "invariance": {k: inv.known_variances[k] / mean for k in KNOWN},
            "invariance_symmetry_bias": inv.symmetry_bias,
        }
        if name in FEATURE_MAPS:
            eq, inside = reports["equivariance"][name], reports["interior"][name]
            row["equivariance_defect"] = {k: eq.known_variances[k] / inv.known_variances[k] for k in KNOWN}
            row["equivariance_symmetry_bias"] = eq.symmetry_bias
            inside_inv = reports["interior_invariance"][name].known_variances
            row["interior_defect"] = {k: inside.known_variances[k] / inside_inv[k] for k in KNOWN}
            # variances along a generator add over pixels: whole map = interior + ring
            row["ring_share"] = {k: 1.0 - inside.known_variances[k] / eq.known_variances[k] for k in KNOWN}
            row["border_share"] = eq.border_share
            row["interior_symmetry_bias"] = inside.symmetry_bias
        out[name or "output"] = row
    return out


def print_tables(stage: str, summary: Dict[str, Any]) -> None:
    """The defect tables of the feature maps (whole, interior, ring share) and the invariance table."""
    heads = " ".join(f"{v:>8}" for v in KNOWN.values())
    tables = (
        ("equivariance_defect", "equivariance defect of the whole feature maps, var(Lie derivative) / "
         "var(invariance) (0: the map moves exactly with the input; 1: no better than standing still)"),
        ("interior_defect", "the same inside the maps only (border = the pixels zero padding reaches)"),
        ("ring_share", "share of the whole map's equivariance variance on the ring left out"),
    )
    for key, title in tables:
        print(f"\n{stage}: {title}")
        print(f"  {'layer':<24} {'border':>6} {heads}")
        for name in FEATURE_MAPS:
            values = " ".join(f"{summary[name][key][k]:8.3f}" for k in KNOWN)
            print(f"  {LAYERS[name]:<24} {BORDER[name] if key != 'equivariance_defect' else 0:>6} {values}")
    print(f"{stage}: border_share (1-pixel ring, leading generator) "
          + ", ".join(f"{LAYERS[n].split()[0]} {summary[n]['border_share']:.2f}" for n in FEATURE_MAPS))
    print(f"{stage}: invariance of every layer, variance / mean of the layer's spectrum (small: invariant)")
    print(f"  {'layer':<24} {heads}")
    for name, row in summary.items():
        values = " ".join(f"{row['invariance'][k]:8.2e}" for k in KNOWN)
        print(f"  {LAYERS['' if name == 'output' else name]:<24} {values}", flush=True)


def analyse(model: DigitCNN, images: Tensor, stage: str) -> Dict[str, Any]:
    """Every analysis of every layer; prints a line per pass and the tables; returns the summary and reports."""
    reports: Dict[str, Dict[str, SymmetryReport]] = {}
    for kind, metric in metrics().items():
        start = time.perf_counter()
        result = analyze(model, images, metric, progress=False)
        assert isinstance(result, dict)
        reports[kind] = result
        print(f"{stage}: {kind} pass over {len(images)} images, all {len(result)} layers in "
              f"{time.perf_counter() - start:.2f} s", flush=True)
    reports["interior_invariance"] = interior_invariance(model, images)
    summary = summarise(reports)
    print_tables(stage, summary)
    return {"summary": summary, "equivariance_reports": reports["equivariance"],
            "interior_reports": reports["interior"]}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=50, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the rotations and the initialisation")
    p.add_argument("--quick", action="store_true", help="a very short smoke run (1 epoch, 100 images analysed)")
    p.add_argument("--no-rotate", action="store_true", help="control: train and validate on upright digits")
    p.add_argument("--out", "--figure", dest="out", default="lightning_logs/layerwise.png",
                   help="where the trained network's layers_figure goes ('' for none; "
                        "--out examples/layerwise.png regenerates the committed one)")
    p.add_argument("--lr", type=float, default=3e-2, help="peak learning rate (one-cycle)")
    p.add_argument("--analysed", type=int, default=400, help="validation images analysed")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 1)
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)
    data = RotatedDigits(rotate=not args.no_rotate, seed=args.seed)
    data.setup()
    assert data.val_set is not None
    images = data.val_set.tensors[0][: 100 if args.quick else args.analysed]
    model = DigitCNN(lr=args.lr)
    kind = "upright (control)" if args.no_rotate else "randomly rotated"
    print(f"Layer by layer: {kind} 28x28 digits, small CNN, {args.epochs} epochs, seed {args.seed}, "
          f"{len(images)} validation images analysed", flush=True)
    results: Dict[str, Any] = {"untrained": analyse(model, images, "untrained")["summary"]}

    trainer = L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", deterministic=True)
    train_start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    train_seconds = time.perf_counter() - train_start
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    print(f"\nvalidation accuracy {val['val_accuracy']:.3f} after {args.epochs} epochs ({train_seconds:.1f} s)")
    after = analyse(model, images, "trained")
    results["trained"] = after["summary"]
    # the picture shows each feature map's interior (what "has this layer learned it" asks about)
    trained = {**after["equivariance_reports"], **after["interior_reports"]}
    if args.out:
        from liegg_lightning.pictures.layers import layers_figure
        from liegg_lightning.pictures.rendering import figure_to_png

        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "wb") as fh:
            fh.write(figure_to_png(layers_figure(trained, known=list(KNOWN))))
        print(f"figure: {args.out}")
    wall = time.perf_counter() - start
    print(f"wall time {wall:.1f} s")
    result = {**results, "val_accuracy": float(val["val_accuracy"]), "epochs": args.epochs, "seed": args.seed,
              "rotated": not args.no_rotate, "wall_time_s": round(wall, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
