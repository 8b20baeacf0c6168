"""Peak memory of ``analyze()`` with the defaults on real-size models, against ``memory_budget``.

Each case runs in a fresh subprocess (so each peak RSS is its own): a hand-written ResNet-18 (the
real layer sizes, 1,000 classes, 224 x 224 images; torchvision's wheel does not import beside the
CPU torch here) and a small 3-D CNN on 32^3 volumes, each on 128 random inputs with random weights
(the memory does not depend on the weights). Printed per case: the resident set before
``analyze`` (torch, the model, the inputs), the peak during it, their difference (what the
analysis itself took), the seconds, and the leading generator, so that two checkouts can be
compared (``--compare``: |cos| between the leading generators of two JSON files).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/memory.py --out /tmp/after.json
    OMP_NUM_THREADS=1 PYTHONPATH=/other/checkout python benchmarks/memory.py --out /tmp/before.json
    python benchmarks/memory.py --compare /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

CASES = ("resnet18", "cnn3d")


def _resnet18() -> Any:
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            out = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (out + (x if self.down is None else self.down(x))).relu()

    layers: List[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def _cnn3d() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv3d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv3d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv3d(32, 64, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(64, 10),
    )


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_case(name: str, samples: int) -> Dict[str, Any]:
    """One analysis in this process: resident memory before and at the peak, seconds, leading generator."""
    import torch

    from liegg_lightning import ImageAction, VolumeAction, analyze

    torch.manual_seed(0)
    if name == "resnet18":
        model, x, action = _resnet18().eval(), torch.randn(samples, 3, 224, 224), ImageAction()
    else:
        model, x, action = _cnn3d().eval(), torch.randn(samples, 1, 32, 32, 32), VolumeAction()
    before = _rss_bytes()
    start = time.perf_counter()
    report = analyze(model, x, action)
    seconds = time.perf_counter() - start
    peak = _rss_bytes()
    return {"case": name, "samples": samples, "rss_before": before, "rss_peak": peak,
            "analysis_bytes": peak - before, "seconds": seconds,
            "leading": report.generators[0].flatten().tolist()}  # type: ignore[union-attr]


def _compare(a: str, b: str) -> None:
    import torch

    with open(a) as fa, open(b) as fb:
        first, second = json.load(fa), json.load(fb)
    first = {r["case"]: r for r in first}
    for r in second:
        other = first.get(r["case"])
        if other is not None:
            u, v = torch.tensor(other["leading"]), torch.tensor(r["leading"])
            cos = float((u @ v).abs() / (u.norm() * v.norm()))
            print(f"{r['case']}: |cos| between the leading generators = {cos:.12f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--out", default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case, in the subprocess
    parser.add_argument("--compare", nargs=2, default=None)
    args = parser.parse_args()
    if args.compare:
        _compare(*args.compare)
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.samples)))
        return
    results = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--case", case, "--samples", str(args.samples)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{case}, {args.samples} samples: before {r['rss_before'] / 2**30:.2f} GiB, peak "
              f"{r['rss_peak'] / 2**30:.2f} GiB, analysis {r['analysis_bytes'] / 2**30:.2f} GiB, "
              f"{r['seconds']:.1f} s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
