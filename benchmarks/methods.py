"""Section ``methods``: the streaming float64 Gram against the original dense float32 SVD.

Two ways to the smallest singular value of the polarization matrix E (N rows, m columns):

* ``dense``: the original algorithm. Every row is kept in a float32 E, and one
  ``torch.linalg.svd(E, full_matrices=False)`` runs at the end;
* ``ours``: ``LieGGMetric.update`` over the batches (streaming float64 Gram), then ``compute()``.

Questions: is sigma_min accurate where float32 is not, and is the memory flat in N?

The model has a known near-symmetry: ``F(x) = phi(inner products of x) + eps * psi(x)`` is
so(dim)-invariant up to ``eps``, so sigma_min is small and float32 struggles. The reference
sigma_min comes from a float64 copy of the model on the same inputs, through a streaming float64
QR (TSQR) of the float64 rows: backward stable like an SVD of E, O(m^2) memory, and an
algorithm independent of the Gram route that ``ours`` takes.

Each (method, N, m) case runs in a fresh subprocess so that its peak resident memory (``VmHWM``
growth over the process's state after warm-up) is its own; on CUDA the peak allocated device memory
is reported instead. ``--quick`` runs everything in-process at tiny sizes, without RSS.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import torch
from common import proc_status_kb, sync, table
from torch import Tensor, nn

BATCH = 4096

#: the two algebra sizes: gl(5) on two vectors (the paper's O(5) case) and gl(32) on one vector
CASES: Dict[str, Dict[str, Any]] = {
    "m25": {"dim": 5, "components": 2, "eps": 1e-4, "hidden": 64},
    "m1024": {"dim": 32, "components": 1, "eps": 1e-3, "hidden": 64},
}


class NearlyInvariant(nn.Module):
    """``phi(inner products of the component vectors) + eps * psi(x)``: so(dim)-invariant up to ``eps``."""

    def __init__(self, dim: int, components: int, eps: float, hidden: int = 64) -> None:
        super().__init__()
        self.dim, self.components, self.eps = dim, components, eps
        self.register_buffer("iu", torch.triu_indices(components, components))
        n_inv = components * (components + 1) // 2
        self.phi = nn.Sequential(nn.Linear(n_inv, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        self.psi = nn.Sequential(nn.Linear(dim * components, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        xs = x.reshape(x.shape[0], self.components, self.dim)
        inner = xs @ xs.transpose(1, 2)
        invariants = inner[:, self.iu[0], self.iu[1]]
        return self.phi(invariants) + self.eps * self.psi(x.reshape(x.shape[0], -1))


def build(case: str, device: torch.device) -> Dict[str, Any]:
    """The model (float32), its float64 copy and the action, identical in every process."""
    from liegg_lightning import VectorAction

    spec = CASES[case]
    torch.manual_seed(1234)
    model = NearlyInvariant(spec["dim"], spec["components"], spec["eps"], spec["hidden"]).eval()
    model64 = copy.deepcopy(model).double()
    action = VectorAction(spec["dim"], components=spec["components"])
    return {"model": model.to(device), "model64": model64.to(device), "action": action, **spec}


def make_inputs(case: str, n: int, device: torch.device) -> Tensor:
    """``n`` float32 inputs from a fixed seed: every method and the reference see the same data."""
    spec = CASES[case]
    gen = torch.Generator().manual_seed(99)
    return torch.randn(n, spec["dim"] * spec["components"], generator=gen).to(device)


def _vector_rows(x: Tensor, g: Tensor, dim: int) -> Tensor:
    """Rows ``(B, dim*dim)`` ``vec(sum_c g_c x_c^T)`` in the inputs' dtype (the original's formula)."""
    b = x.shape[0]
    return torch.einsum("bca,bcd->bad", g.reshape(b, -1, dim), x.reshape(b, -1, dim)).reshape(b, -1)


def _input_grad(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        return torch.autograd.grad(model(xg).sum(), xg)[0]


# ----------------------------------------------------------------------------------------------
# the three methods: each returns (sigma_min, sigma_max, bytes it keeps)


def method_dense(ctx: Dict[str, Any], x: Tensor, warmup: bool = False) -> Dict[str, Any]:
    """The original: float32 rows kept in E (preallocated, which favours it), one float32 SVD."""
    m = ctx["dim"] ** 2
    e = torch.empty(x.shape[0], m, dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], BATCH):
        xb = x[start:start + BATCH]
        e[start:start + xb.shape[0]] = _vector_rows(xb, _input_grad(ctx["model"], xb), ctx["dim"])
    s = torch.linalg.svd(e, full_matrices=False).S
    return {"sigma_min": float(s[-1]), "sigma_max": float(s[0]), "kept_bytes": e.numel() * 4}


def method_ours(ctx: Dict[str, Any], x: Tensor, warmup: bool = False) -> Dict[str, Any]:
    """``LieGGMetric``: streaming float64 Gram, ``derivative="auto"``, then ``compute()``.

    The updates and ``compute()`` are timed apart. The warm-up stops before ``compute()``:
    on fewer samples than m the spectrum has a spurious null space of at least m - N directions
    (``compute()`` warns), which is not the case being measured.
    """
    from liegg_lightning import LieGGMetric

    metric = LieGGMetric(ctx["action"], sync_on_compute=False).to(x.device)
    device = x.device
    sync(device)
    t0 = time.perf_counter()
    for xb in x.split(BATCH):
        metric.update(ctx["model"], xb)
    sync(device)
    t1 = time.perf_counter()
    # the peak so far belongs to the streaming part alone; compute() may add its own
    peak_updates = (torch.cuda.max_memory_allocated(device) / 1024 if device.type == "cuda"
                    else proc_status_kb("VmHWM"))
    if warmup:
        return {}
    report = metric.compute()
    sync(device)
    t2 = time.perf_counter()
    m = ctx["dim"] ** 2
    return {"sigma_min": float(report.singular_values[0]), "sigma_max": float(report.singular_values[-1]),
            "kept_bytes": m * m * 8, "update_s": t1 - t0, "compute_s": t2 - t1,
            "nullity": report.nullity, "peak_after_updates_kb": peak_updates}


METHODS = {"dense": method_dense, "ours": method_ours}


def reference(ctx: Dict[str, Any], x: Tensor) -> Dict[str, Any]:
    """sigma of E from the float64 model: streaming float64 QR of the float64 rows, then ``svdvals(R)``."""
    m = ctx["dim"] ** 2
    r = torch.zeros(0, m, dtype=torch.float64, device=x.device)
    for xb in x.split(BATCH):
        xb64 = xb.double()
        rows = _vector_rows(xb64, _input_grad(ctx["model64"], xb64), ctx["dim"])
        r = torch.linalg.qr(torch.cat([r, rows]), mode="r").R
    s = torch.linalg.svdvals(r)
    return {"sigma_min": float(s[-1]), "sigma_max": float(s[0])}


# ----------------------------------------------------------------------------------------------
# one measured case


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_start(device: torch.device) -> Dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return {"cuda_allocated": torch.cuda.memory_allocated(device)}
    reset = _reset_hwm()
    return {"rss_kb": proc_status_kb("VmRSS"), "hwm_reset": reset}


def _peak_growth(device: torch.device, start: Dict[str, Any]) -> Dict[str, Any]:
    """Peak memory above the starting point, in MB: device memory on CUDA, the process's RSS otherwise."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - start["cuda_allocated"]
        return {"peak_mb": peak / 2**20, "peak_kind": "cuda max_memory_allocated growth"}
    hwm = proc_status_kb("VmHWM")
    if hwm is None or start["rss_kb"] is None:
        return {"peak_mb": None, "peak_kind": "unavailable"}
    # without the reset, VmHWM may still hold the warm-up's peak: then this is an upper bound
    kind = "VmHWM growth over VmRSS (fresh process" + (", peak reset)" if start["hwm_reset"] else ", upper bound)")
    return {"peak_mb": max(hwm - start["rss_kb"], 0) / 1024, "peak_kind": kind}


def measure(method: str, case: str, n: int, device: torch.device, repeats: int, fresh_process: bool) -> Dict[str, Any]:
    """Time, memory and sigma of one method on ``n`` rows."""
    import liegg_lightning  # noqa: F401  (imported before the memory baseline: module code is not the method's)

    ctx = build(case, device)
    x = make_inputs(case, n, device)
    fn = METHODS[method]
    # the memory baseline comes before the warm-up: buffers the warm-up allocates first and the run
    # reuses are the method's memory too; one-off lazy initialisation shows as warmup_peak_mb
    start = _peak_start(device) if fresh_process or device.type == "cuda" else None
    fn(ctx, x[:256], warmup=True)  # kernels, allocator, lazy imports
    warm = _peak_growth(device, start) if start is not None else {"peak_mb": None}
    times = []
    for i in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        again = fn(ctx, x)
        sync(device)
        times.append(time.perf_counter() - t0)
        if i == 0:  # memory and sigma from the first run
            out = again
            after_updates = out.pop("peak_after_updates_kb", None)
            if start is not None:
                out.update(_peak_growth(device, start))
                out["warmup_peak_mb"] = warm["peak_mb"]
                if after_updates is not None:
                    base_kb = start["cuda_allocated"] / 1024 if device.type == "cuda" else start["rss_kb"]
                    out["updates_peak_mb"] = max(after_updates - base_kb, 0) / 1024
            else:
                out.update({"peak_mb": None, "peak_kind": "not measured (in-process)"})
    out.update(method=method, case=case, n=n, m=ctx["dim"] ** 2, times=times, time_s=statistics.median(times))
    return out


def _worker(argv: List[str]) -> None:
    """Subprocess entry: measure one case, print its JSON on the last line."""
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    spec = json.loads(p.parse_args(argv).worker)
    torch.set_num_threads(spec["threads"])
    out = measure(spec["method"], spec["case"], spec["n"], torch.device(spec["device"]), spec["repeats"], True)
    print(json.dumps(out))


def _in_subprocess(spec: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dense_bytes(n: int, m: int) -> int:
    """What the dense method needs at least: E and the SVD's U (both float32, N x m)."""
    return 2 * n * m * 4


def run(device: torch.device, quick: bool, repeats: int, log: Callable[[str], None], dense_limit_gb: float,
        threads: int) -> Dict[str, Any]:
    """Every (N, m) with both methods; returns the JSON section."""
    sizes = [1000, 3000] if quick else [10_000, 100_000, 1_000_000]
    cases = ["m25"] if quick else list(CASES)  # N must exceed m; m=1024 at N >= 2000 is not quick
    rows: List[Dict[str, Any]] = []
    for case in cases:
        ctx = build(case, device)
        m = ctx["dim"] ** 2
        for n in sizes:
            x = make_inputs(case, n, device)
            t0 = time.perf_counter()
            ref = reference(ctx, x)
            ref_s = time.perf_counter() - t0
            del x
            for method in METHODS:
                row: Dict[str, Any] = {"case": case, "m": m, "n": n, "method": method, "eps": ctx["eps"],
                                       "ref_sigma_min": ref["sigma_min"], "ref_sigma_max": ref["sigma_max"],
                                       "ref_time_s": ref_s}
                if method == "dense" and dense_bytes(n, m) > dense_limit_gb * 1e9:
                    row.update(skipped=f"needs >= {dense_bytes(n, m) / 1e9:.1f} GB (E {n * m * 4 / 1e9:.1f} GB "
                                       f"+ U), over --dense-limit-gb {dense_limit_gb:g}",
                               kept_bytes=n * m * 4)
                    rows.append(row)
                    log(f"  {case} N={n} {method}: skipped ({row['skipped']})")
                    continue
                # whole-N repeats only where they are cheap; the rest is long enough to time once
                reps = min(repeats, 3) if n <= 10_000 and m <= 25 else 1
                if quick:
                    out = measure(method, case, n, device, reps, False)
                else:
                    spec = {"method": method, "case": case, "n": n, "device": device.type, "threads": threads,
                            "repeats": reps}
                    out = _in_subprocess(spec, timeout=600)
                row.update(out)
                if row.get("sigma_min") is not None:
                    row["rel_err_sigma_min"] = abs(row["sigma_min"] - ref["sigma_min"]) / ref["sigma_min"]
                rows.append(row)
                log(f"  {case} N={n} {method}: {row.get('time_s', float('nan')):.3g} s, "
                    f"peak {row.get('peak_mb')} MB, rel err {row.get('rel_err_sigma_min')}"
                    + (f" ERROR {row['error']}" if "error" in row else ""))
    return {"batch": BATCH, "sizes": sizes, "dense_limit_gb": dense_limit_gb,
            "cases": {k: {kk: vv for kk, vv in v.items() if kk != "hidden"} for k, v in CASES.items()},
            "rows": rows}


def render(section: Dict[str, Any]) -> str:
    """Markdown table of the section, each (m, N) with ours over dense."""
    cols = ["m", "N", "method", "time (s)", "/ dense", "kept MB", "peak MB", "warm-up peak MB", "sigma_min",
            "rel err", "note"]
    dense_time = {(r["m"], r["n"]): r.get("time_s") for r in section["rows"] if r["method"] == "dense"}
    rows = []
    for r in section["rows"]:
        base = dense_time.get((r["m"], r["n"]))
        rows.append({"m": r["m"], "N": r["n"], "method": r["method"], "time (s)": r.get("time_s"),
                     "/ dense": r["time_s"] / base if base and r.get("time_s") else None,
                     "kept MB": (r.get("kept_bytes") or 0) / 2**20, "peak MB": r.get("peak_mb"),
                     "warm-up peak MB": r.get("warmup_peak_mb"), "sigma_min": r.get("sigma_min"),
                     "rel err": r.get("rel_err_sigma_min"), "note": r.get("skipped") or r.get("error") or ""})
    return table(rows, cols, "methods: dense float32 SVD vs streaming float64 Gram (ours)")


if __name__ == "__main__":
    _worker(sys.argv[1:])
