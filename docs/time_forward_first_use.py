"""Time torch's first forward-mode derivative in a process, as the callback meets it.

torch prepares forward mode once per process: at the first ``make_dual`` it imports and scripts
its JVP decompositions. The callback's plan weighs this cost before it times forward mode
(``_FORWARD_FIRST_USE`` in ``liegg_lightning/callback/callback.py``). Each run starts a new interpreter that
imports Lightning and the package (as a training script has), then times the first and the second
``torch.func.jvp`` of a small MLP. One torch thread.

Usage::

    python docs/time_forward_first_use.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

_ONE_RUN = """
import time
import lightning.pytorch, liegg_lightning  # noqa: F401  (what a training script has imported)
import torch
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
x, t = torch.randn(4, 10), torch.randn(4, 10)
times = []
for _ in range(2):
    start = time.perf_counter()
    torch.func.jvp(model, (x,), (t,))
    times.append(time.perf_counter() - start)
print(times[0], times[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    firsts, seconds = [], []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", _ONE_RUN], capture_output=True, text=True, check=True)
        first, second = (float(v) for v in out.stdout.split()[-2:])
        firsts.append(first)
        seconds.append(second)
    print(f"first forward-mode derivative of a process: {', '.join(f'{v:.3f}' for v in firsts)} s "
          f"(median {statistics.median(firsts):.3f} s); the second: {1e3 * statistics.median(seconds):.2f} ms")


if __name__ == "__main__":
    main()
