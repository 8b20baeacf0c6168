"""Shared pieces of the benchmarks: timing, machine description, models and derivative floors.

Every number the benchmarks report is a ratio of two times measured in the same run, so the
helpers here favour robustness over absolute precision: a warm-up, several repeats, the median,
interleaved variants, and a device synchronisation before every clock read.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call of ``fn`` in seconds, synchronised on both ends."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_medians(
    variants: Dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> Dict[str, Dict[str, Any]]:
    """Median times of several variants measured round-robin, so a slow spell hits them all alike.

    Returns:
        ``name -> {"median": s, "min": s, "times": [s, ...]}``.
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return {
        name: {"median": statistics.median(ts), "min": min(ts), "times": [round(t, 6) for t in ts]}
        for name, ts in times.items()
    }


# ----------------------------------------------------------------------------------------------
# machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(device: torch.device) -> Dict[str, Any]:
    """What the numbers were measured on."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    info: Dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "memory_gb": _mem_total_gb(),
        "load_average_at_start": load,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:  # without importing lightning (seconds)
        from importlib.metadata import version

        info["lightning"] = version("lightning")
    except Exception:
        info["lightning"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def proc_status_kb(field: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------
# models


def paper_mlp(out_features: int = 1, in_features: int = 10, width: int = 384, depth: int = 3) -> nn.Module:
    """The paper's O(5) regression network: ``in -> width x depth -> out`` with SiLU."""
    layers: List[nn.Module] = []
    d = in_features
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.SiLU()]
        d = width
    layers.append(nn.Linear(d, out_features))
    return nn.Sequential(*layers)


def small_cnn(size: int = 28, channels: int = 1, classes: int = 10) -> nn.Module:
    """Two strided convolutions and a linear classifier, for ``size x size`` images."""
    after = (size + 1) // 2
    after = (after + 1) // 2
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(32 * after * after, classes),
    )


# ----------------------------------------------------------------------------------------------
# derivative floors: the least work that produces what the method needs, and nothing more


def floor_reverse_loop(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample input gradients ``(K, B, *in)``: one forward, then one backward per output."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = model(xg).reshape(x.shape[0], -1)
        k = out.shape[1]
        grads = [torch.autograd.grad(out[:, j].sum(), xg, retain_graph=j < k - 1)[0] for j in range(k)]
    return torch.stack(grads)


def floor_reverse_vmap(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample Jacobians ``(B, K, *in)`` with ``vmap(jacrev)`` over single samples."""

    def one(xi: Tensor) -> Tensor:
        return model(xi.unsqueeze(0)).reshape(-1)

    return torch.func.vmap(torch.func.jacrev(one))(x.detach())


def floor_forward(model: Callable[[Tensor], Tensor], x: Tensor, tangents: Tensor) -> Tensor:
    """Jacobian-vector products ``(m, B, K)``: ``vmap`` over precomputed tangents ``(B, m, *in)``.

    Runs under ``no_grad``: forward-mode AD does not need the backward graph, and recording it
    (parameters require grad) costs about 15% on the CNN case.
    """
    xd = x.detach()

    def f(inp: Tensor) -> Tensor:
        return model(inp).reshape(inp.shape[0], -1)

    def jvp_one(t: Tensor) -> Tensor:
        return torch.func.jvp(f, (xd,), (t,))[1]

    with torch.no_grad():
        return torch.func.vmap(jvp_one, in_dims=1)(tangents)


def floor_variants(
    model: Callable[[Tensor], Tensor], batches: Sequence[Tensor], tangents: Sequence[Tensor]
) -> Dict[str, Callable[[], None]]:
    """The three floor candidates as zero-argument callables over all ``batches``.

    The tangents are computed before timing (a generous floor: the method has to make them).
    """

    def reverse_loop() -> None:
        for x in batches:
            floor_reverse_loop(model, x)

    def reverse_vmap() -> None:
        for x in batches:
            floor_reverse_vmap(model, x)

    def forward() -> None:
        for x, t in zip(batches, tangents):
            floor_forward(model, x, t)

    return {"floor_reverse_loop": reverse_loop, "floor_reverse_vmap": reverse_vmap, "floor_forward": forward}


# ----------------------------------------------------------------------------------------------
# output


def fmt(value: Any, digits: int = 3) -> str:
    """Compact table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0.0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def table(rows: Iterable[Dict[str, Any]], columns: Sequence[str], title: str = "") -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns``."""
    rows = list(rows)
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(f"\n### {title}\n")
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
    return "\n".join(lines)
