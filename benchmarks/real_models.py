"""Real models at real size: ``analyze()`` with the defaults against one forward+backward (standalone).

The table of issue 32 from one command: ImageNet-sized classifiers (ResNet-18 and
MobileNetV3-Small from torchvision, ViT-Tiny from timm, 1,000 classes, 224x224 images), a 3-D CNN
on 32^3 volumes (``VolumeAction``), a 1-D CNN on signals (``SignalAction()``, one generator) and an
E(3)-invariant energy on 12-point clouds (``VectorAction(dim=3, components=12, affine=True)``).
torchvision and timm are used when they import; otherwise the hand-written stand-ins of the same
blocks and sizes in ``examples/standins.py`` (the cost does not depend on the weights, which are
random either way).

Each case runs in a fresh process (so that its peak RSS is its own): one forward+backward of the
batch (eval mode, gradients of the summed outputs to the parameters and the input: the derivative
floor of one pass), then ``analyze(model, batch, action)`` with the defaults, each after a
warm-up on 2 samples (forward mode's one-time set-up is not counted), the median of ``--repeats``.
The ratio ``analyze / forward+backward`` is compared with the passes the chosen derivative mode
needs (``m`` tangent passes in forward mode, ``K`` backward passes in reverse mode).

Run::

    python benchmarks/real_models.py                         # CPU, the issue's table (minutes)
    python benchmarks/real_models.py --quick                 # small sizes, seconds: checks the script
    python benchmarks/real_models.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE, os.path.join(ROOT, "examples")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import standins  # noqa: E402
import torch  # noqa: E402
from common import table  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from liegg_lightning import (  # noqa: E402
    GroupAction,
    ImageAction,
    LieGGMetric,
    SignalAction,
    VectorAction,
    VolumeAction,
    analyze,  # noqa: E402
)

CASES = ("resnet18", "mobilenet_v3_small", "vit_tiny", "cnn3d", "cnn1d", "energy")


class PairEnergy(nn.Module):
    """``E(x) = sum_{i<j} phi(|x_i - x_j|)`` over the 12 points of a cloud ``(B, 36)``: E(3)-invariant."""

    def __init__(self, points: int = 12, hidden: int = 64) -> None:
        super().__init__()
        self.points = points
        self.phi = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        self.register_buffer("pairs", torch.triu_indices(points, points, 1))

    def forward(self, x: Tensor) -> Tensor:
        p = x.reshape(x.shape[0], self.points, 3)
        d = (p[:, self.pairs[0]] - p[:, self.pairs[1]]).pow(2).sum(-1).add(1e-12).sqrt()
        return self.phi(d.unsqueeze(-1)).sum((1, 2)).unsqueeze(1)


def _torchvision(name: str) -> Optional[nn.Module]:
    try:
        import torchvision  # type: ignore[import-untyped]
    except Exception:  # a CUDA wheel beside a CPU torch fails with more than ImportError
        return None
    return getattr(torchvision.models, name)(weights=None)


def _timm(name: str) -> Optional[nn.Module]:
    try:
        import timm  # type: ignore[import-untyped]
    except Exception:
        return None
    return timm.create_model(name, pretrained=False)


def build(case: str, quick: bool) -> Tuple[nn.Module, GroupAction, Tuple[int, ...], str, str]:
    """The model (eval mode), its action, one input's shape, where the model came from, and its input in words."""
    side = 32 if quick else 224
    if case == "resnet18":
        real = None if quick else _torchvision("resnet18")
        model = real or standins.resnet18(width=16 if quick else 64)
        return model, ImageAction(), (3, side, side), _source(real, "torchvision"), f"1000 classes, {side}x{side}"
    if case == "mobilenet_v3_small":
        real = None if quick else _torchvision("mobilenet_v3_small")
        model = real or standins.mobilenet_v3_small()
        return model, ImageAction(), (3, side, side), _source(real, "torchvision"), f"1000 classes, {side}x{side}"
    if case == "vit_tiny":
        real = None if quick else _timm("vit_tiny_patch16_224")
        model = real or (standins.vit_tiny(image=32, patch=8, depth=2) if quick else standins.vit_tiny())
        return model, ImageAction(), (3, side, side), _source(real, "timm"), f"1000 classes, {side}x{side}"
    if case == "cnn3d":
        n = 16 if quick else 32
        return standins.cnn3d(), VolumeAction(), (1, n, n, n), "hand-written", f"10 classes, {n}^3 volumes"
    if case == "cnn1d":
        n = 256 if quick else 4096
        return standins.cnn1d(), SignalAction(), (1, n), "hand-written", f"10 classes, length {n}"
    if case == "energy":
        return (PairEnergy(), VectorAction(dim=3, components=12, affine=True), (36,), "hand-written",
                "12-point clouds")
    raise ValueError(f"Expected a case among {', '.join(CASES)}, got {case!r}.")


def _source(real: Optional[nn.Module], package: str) -> str:
    return package if real is not None else "stand-in"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(work: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(case: str, samples: int, device: torch.device, quick: bool, repeats: int) -> Dict[str, Any]:
    """One case in this process: the floor, the analysis, their ratio, the passes and the peaks."""
    torch.manual_seed(0)
    model, action, shape, source, described = build(case, quick)
    model = model.to(device).eval()
    x = torch.randn(samples, *shape, device=device)

    def forward_backward(batch: Tensor) -> None:
        xg = batch.clone().requires_grad_(True)
        model(xg).sum().backward()
        model.zero_grad(set_to_none=True)

    forward_backward(x[:2])
    floor = _median_time(lambda: forward_backward(x), device, repeats)
    floor_peak = _peak_rss_mb()
    cuda_floor = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analyze(model, x[:2], action)  # one-time costs (forward mode's set-up) out of the timing
        reports: List[Any] = []
        seconds = _median_time(lambda: reports.append(analyze(model, x, action)), device, repeats)
    metric = LieGGMetric(action)
    metric.update(model, x[:2])  # which mode the defaults chose, and how many rows a sample gives
    mode, rows = metric.resolved_derivative, metric.rows_per_sample(model, x[:2])
    passes = action.num_generators if mode == "forward" else rows
    report = reports[-1]
    return {
        "case": case, "input": described, "source": source, "samples": samples, "device": str(device),
        "m": action.num_generators, "K": rows, "derivative": mode, "passes": passes,
        "forward_backward_s": floor, "analyze_s": seconds, "ratio": seconds / floor,
        "ratio_per_pass": seconds / floor / passes,
        "peak_rss_forward_backward_mb": floor_peak, "peak_rss_mb": _peak_rss_mb(),
        "cuda_peak_forward_backward_mb": cuda_floor,
        "cuda_peak_analyze_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "nullity": report.nullity, "symmetry_variance": report.symmetry_variance,
        "warnings": sorted({str(w.message).splitlines()[0][:200] for w in caught if "LieGG" in str(w.message)}),
    }


def _child(args: argparse.Namespace, case: str, samples: int) -> Dict[str, Any]:
    """Run one case in a fresh process; its error, if any, becomes the row."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, str(samples), "--device", args.device,
           "--repeats", str(args.repeats), "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"case": case, "samples": samples, "error": f"rc={proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def render(rows: List[Dict[str, Any]]) -> str:
    """The markdown table: one line per case and batch size."""
    columns = ["case", "input", "model", "samples", "mode (passes)", "analyze s", "fwd+bwd s", "ratio",
               "ratio / passes", "peak RSS MB (fwd+bwd / analysis)", "nullity"]
    cuda = any(r.get("cuda_peak_analyze_mb") is not None for r in rows)
    if cuda:
        columns.append("CUDA peak MB (fwd+bwd / analysis)")
    cells = []
    for r in rows:
        if "error" in r:
            cells.append({"case": r["case"], "samples": str(r["samples"]), "mode (passes)": r["error"]})
            continue
        cells.append({
            "case": r["case"], "input": r["input"], "model": r["source"], "samples": str(r["samples"]),
            "mode (passes)": f"{r['derivative']} ({r['passes']})", "analyze s": _fmt(r["analyze_s"]),
            "fwd+bwd s": _fmt(r["forward_backward_s"]), "ratio": _fmt(r["ratio"], 2),
            "ratio / passes": _fmt(r["ratio_per_pass"], 2),
            "peak RSS MB (fwd+bwd / analysis)": f"{r['peak_rss_forward_backward_mb']:.0f} / {r['peak_rss_mb']:.0f}",
            "nullity": str(r["nullity"]),
            "CUDA peak MB (fwd+bwd / analysis)":
                f"{_fmt(r['cuda_peak_forward_backward_mb'], 4)} / {_fmt(r['cuda_peak_analyze_mb'], 4)}",
        })
    return table(cells, columns)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, nargs="+", default=None, help="batch sizes (default 32 128)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per case (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="small inputs: checks the script in seconds")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps(measure(args.child[0], int(args.child[1]), torch.device(args.device), args.quick,
                                 args.repeats)))
        return
    samples = args.samples or ([4, 8] if args.quick else [32, 128])
    rows = []
    for case in args.cases:
        for n in samples:
            rows.append(_child(args, case, n))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {args.device}, torch threads {args.threads or torch.get_num_threads()}")
    print(render(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "device": args.device, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
