"""Run the liegg_lightning benchmarks: prints markdown tables and writes ``<out>/<device>.json``.

Usage::

    python benchmarks/run.py                    # full CPU run
    python benchmarks/run.py --quick            # tiny sizes, under 30 s: checks the script works
    python benchmarks/run.py --device cuda      # on a GPU
    python benchmarks/run.py --only user_feel   # one section (merged into an existing JSON)

Sections: ``overhead`` (the engine against the derivative floor), ``methods`` (the streaming
float64 Gram against the dense float32 SVD: accuracy of sigma_min, memory against N), ``solve``
(the epoch-end solve against m, the memory-budget guard), ``user_feel`` (``fit`` with and without
``LieGGCallback`` at its defaults on the examples).

Every figure is a ratio of times taken in the same run, medians of interleaved repeats after a
warm-up, with a fixed number of torch threads (reported). The package is imported from this
checkout (the folder above this script), not from wherever else it may be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):  # this checkout's package first, then the section modules beside this script
    if _path not in sys.path:
        sys.path.insert(0, _path)
# the same for the subprocesses (methods.py measures each case in a fresh process)
if ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

SECTIONS = ("overhead", "methods", "solve", "user_feel")

# glibc returns freed heap tops and large blocks to the kernel and page-faults them back on the next
# batch; on this workload that sys time was up to 3x the compute and varied run to run. Pinning the
# thresholds makes the allocator reuse memory, so the timings compare computations, not page faults.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30),
}


def _reexec_with_pinned_malloc(argv: List[str]) -> None:
    """Restart this script once with :data:`MALLOC_ENV` set (glibc reads it at start-up)."""
    if os.environ.get("LIEGG_BENCH_MALLOC") or "--system-malloc" in argv or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ, LIEGG_BENCH_MALLOC="pinned", **MALLOC_ENV)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], env)


def _section_module(name: str) -> Any:
    """The module of a section: each has ``run(device, quick, repeats, log, ...)`` and ``render(section)``."""
    import importlib

    return importlib.import_module(name)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--out", default=os.path.join("lightning_logs", "benchmarks"),
                        help="folder for <device>.json (the committed results: --out benchmarks/results)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable); results merge into an existing JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 1 on cpu, torch's default on cuda)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 7, 2 with --quick)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default allocator thresholds (timings then include page-fault churn)")
    parser.add_argument("--dense-limit-gb", type=float, default=None,
                        help="largest dense E + SVD workspace to attempt (default 3 GB on cpu, 40 GB on cuda)")
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    _reexec_with_pinned_malloc(argv)  # before torch is imported: the restart then costs almost nothing
    import common
    import torch
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # for the subprocesses
    repeats = args.repeats or (2 if args.quick else 7)
    dense_limit = args.dense_limit_gb if args.dense_limit_gb is not None else (40.0 if device.type == "cuda" else 3.0)

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{device.type}.json")
    results: Dict[str, Any] = {}
    if args.only and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results["machine"] = common.machine_info(device)
    results["quick"] = args.quick
    results["machine"]["malloc"] = (
        {k: os.environ.get(k) for k in MALLOC_ENV} if os.environ.get("LIEGG_BENCH_MALLOC") else "glibc defaults"
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"machine: {results['machine']}")
    start_all = time.perf_counter()
    for name in [s for s in SECTIONS if s in (args.only or SECTIONS)]:
        module = _section_module(name)
        kwargs: Dict[str, Any] = {"device": device, "quick": args.quick, "repeats": repeats, "log": log}
        if name == "methods":
            kwargs.update(dense_limit_gb=dense_limit, threads=threads)
        if name == "user_feel":  # whole fits: 3 repeats unless --repeats says otherwise
            kwargs.update(explicit_repeats=args.repeats)
        log(f"[{name}] ...")
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        start = time.perf_counter()
        section = module.run(**kwargs)
        section["wall_s"] = round(time.perf_counter() - start, 2)
        section["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        section["load_average_at_start"] = [round(x, 2) for x in load] if load else None  # a shared machine
        section["quick"] = args.quick
        section["torch_threads"] = threads
        results[name] = section
        print(module.render(section), flush=True)
        log(f"[{name}] done in {section['wall_s']} s")
    results["wall_s_last_run"] = round(time.perf_counter() - start_all, 2)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
