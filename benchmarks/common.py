"""Shared pieces of the benchmarks: timing, machine description and markdown tables.

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
