"""Analyse a torchvision or timm image classifier: which transformations of the image has it learned to ignore?

The loading code is what a user writes: ``torchvision.models.get_model(name, weights=...)`` or
``timm.create_model(name, pretrained=...)``. The weights are optional: with ``--weights`` (a
torchvision weights name such as ``DEFAULT``, or ``pretrained`` for timm) they are loaded from the
local cache or downloaded; without them, or when they cannot be had (no network), the model keeps
its random initialisation, and the script says so. The cost and the memory of an analysis do not
depend on the weights; the numbers do (a random network has learned nothing). When neither
package imports, a hand-written stand-in of the same blocks and sizes (``standins.py``) is used,
and the script says that too.

The images: pass a tensor file of a validation batch, ``(N, 3, H, W)`` already normalised the
way the model expects (``--images batch.pt``); without one, smooth random images normalised with
the ImageNet statistics stand in.

Two analyses, both with the defaults (the derivative mode is chosen for the model: with 1,000
classes, forward mode's 4 tangent passes rather than 1,000 backward passes):

1. the whole model: the learned generators of ``gl(2)`` (rotation, scaling, two shears) and the
   variance along the rotation and the scaling;
2. layer by layer with ``layers=``, from one pass per batch: each stage's output analysed for
   invariance, so that one sees where along the depth invariance to each transformation appears
   (normalised: the variance along the rotation over the mean of the layer's spectrum).

Run::

    python examples/pretrained.py                              # torchvision resnet18, 16 images
    python examples/pretrained.py --model mobilenet_v3_small --weights DEFAULT
    python examples/pretrained.py --model vit_tiny_patch16_224  # timm
    python examples/pretrained.py --quick                      # 4 small images: a smoke run

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import standins
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liegg_lightning import ImageAction, analyze

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The stages analysed layer by layer, by the names the libraries give them (the stand-ins use the same).
STAGES = {
    "resnet18": ["layer1", "layer2", "layer3", "layer4", "fc"],
    "mobilenet_v3_small": ["features.3", "features.6", "features.9", "features.12", "classifier"],
    "vit_tiny_patch16_224": ["blocks.2", "blocks.5", "blocks.8", "blocks.11", "head"],
}
STANDINS = {"resnet18": standins.resnet18, "mobilenet_v3_small": standins.mobilenet_v3_small,
            "vit_tiny_patch16_224": standins.vit_tiny}


def load_torchvision(name: str, weights: Optional[str]) -> Tuple[Optional[nn.Module], str]:
    """``torchvision.models.get_model``; ``(None, why)`` when torchvision does not import or lacks the model."""
    try:
        import torchvision  # type: ignore[import-untyped]
    except Exception as err:  # a CUDA wheel beside a CPU torch raises more than ImportError
        return None, f"torchvision does not import ({type(err).__name__})"
    if name not in torchvision.models.list_models():
        return None, f"torchvision has no model {name!r}"
    if weights:
        try:
            return torchvision.models.get_model(name, weights=weights), f"torchvision {name}, weights {weights}"
        except Exception as err:  # no network, no cache
            print(f"the weights {weights!r} could not be loaded ({type(err).__name__}: {err}); random weights")
    return torchvision.models.get_model(name, weights=None), f"torchvision {name}, random weights"


def load_timm(name: str, pretrained: bool) -> Tuple[Optional[nn.Module], str]:
    """``timm.create_model``; ``(None, why)`` when timm does not import."""
    try:
        import timm  # type: ignore[import-untyped]
    except Exception as err:
        return None, f"timm does not import ({type(err).__name__})"
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True), f"timm {name}, pretrained weights"
        except Exception as err:
            print(f"the pretrained weights could not be loaded ({type(err).__name__}: {err}); random weights")
    return timm.create_model(name, pretrained=False), f"timm {name}, random weights"


def load(name: str, weights: Optional[str], quick: bool) -> Tuple[nn.Module, str]:
    """The classifier from torchvision or timm, else the stand-in of the same blocks (said in the second value)."""
    why: List[str] = []
    if not quick:
        if name.startswith("vit"):
            model, said = load_timm(name, bool(weights))
        else:
            model, said = load_torchvision(name, weights)
        if model is not None:
            return model, said
        why.append(said)
    if name not in STANDINS:
        raise SystemExit(f"no stand-in for {name!r}: choose one of {', '.join(STANDINS)} ({'; '.join(why)})")
    small = {"vit_tiny_patch16_224": {"image": 64}}.get(name, {}) if quick else {}
    reason = "; ".join(why) or "--quick"
    return STANDINS[name](**small), f"stand-in for {name} (random weights; {reason})"


def stand_in_images(count: int, side: int, seed: int = 0) -> Tensor:
    """Smooth random images ``(N, 3, side, side)`` in [0, 1], normalised with the ImageNet statistics."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, max(side // 16, 2), max(side // 16, 2), generator=gen)
    images = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision or timm classifier name")
    parser.add_argument("--weights", default=None, help="torchvision weights (e.g. DEFAULT); any value: timm's")
    parser.add_argument("--images", default=None, help="a .pt file holding a normalised batch (N, 3, H, W)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="stand-in, 4 images of 64x64: a smoke run")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, said = load(args.model, args.weights, args.quick)
    model.eval()
    print(f"model: {said}")
    if args.images:
        images = torch.load(args.images)[: args.samples]
        print(f"images: {tuple(images.shape)} from {args.images}")
    else:
        images = stand_in_images(4 if args.quick else args.samples, 64 if args.quick else 224)
        print(f"images: {tuple(images.shape)} smooth random images (no data given: pass --images)")

    action = ImageAction()
    start = time.perf_counter()
    whole = analyze(model, images, action, known_generators=["rotation", "scaling"])
    whole_s = time.perf_counter() - start
    print(f"whole model: {whole!r} in {whole_s:.1f} s")
    print(f"  variance along the rotation {whole.known_variances['rotation']:.3e}, "
          f"the scaling {whole.known_variances['scaling']:.3e}")

    stages = STAGES.get(args.model, [])
    start = time.perf_counter()
    by_layer = analyze(model, images, action, layers=stages, known_generators=["rotation", "scaling"])
    layers_s = time.perf_counter() - start
    print(f"layer by layer ({len(stages)} stages, one pass per batch, {layers_s:.1f} s):")
    rows: Dict[str, Any] = {}
    print(f"  {'layer':<12} {'nullity':>7} {'rotation / mean':>16} {'scaling / mean':>15}")
    for name, report in by_layer.items():  # type: ignore[union-attr]
        mean = float(report.variances.mean())
        rot, scale = report.known_variances["rotation"] / mean, report.known_variances["scaling"] / mean
        print(f"  {name:<12} {report.nullity:>7} {rot:>16.3f} {scale:>15.3f}")
        rows[name] = {"nullity": report.nullity, "rotation_over_mean": _finite(rot),
                      "scaling_over_mean": _finite(scale)}
    print(json.dumps({
        "model": said, "samples": int(images.shape[0]), "nullity": whole.nullity,
        "symmetry_variance": _finite(whole.symmetry_variance),
        "rotation_variance": _finite(whole.known_variances["rotation"]),
        "scaling_variance": _finite(whole.known_variances["scaling"]),
        "whole_s": whole_s, "layers_s": layers_s, "layers": rows,
    }))


if __name__ == "__main__":
    main()
