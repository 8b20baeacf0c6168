"""The benchmark script runs end to end in its ``--quick`` mode and writes every section.

Timings are never asserted: only that each section measured something and wrote it down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "cpu.json").read_text())

    machine = data["machine"]
    assert machine["torch"] == torch.__version__
    assert machine["torch_threads"] == 1
    assert machine["cpu_model"]

    overhead = data["overhead"]
    assert len(overhead["cases"]) == 3
    for case in overhead["cases"]:
        assert case["floor_s"] > 0 and case["engine_s"] > 0
        assert case["derivative_mode"] in ("reverse", "forward")
    # m=4 < K=10 on the CNN: "auto" must pick forward mode, and K=1 on the MLP reverse mode
    modes = {c["K"] * 100 + c["m"]: c["derivative_mode"] for c in overhead["cases"]}
    assert modes[1 * 100 + 25] == "reverse" and modes[10 * 100 + 4] == "forward"

    methods = data["methods"]
    assert {r["method"] for r in methods["rows"]} == {"dense", "loop", "ours"}
    for row in methods["rows"]:
        assert "error" not in row, row.get("error")
        assert row.get("time_s", 0) > 0 or "skipped" in row
        assert row["ref_sigma_min"] > 0
    ours = [r for r in methods["rows"] if r["method"] == "ours"]
    assert all(r["kept_bytes"] == r["m"] ** 2 * 8 for r in ours)

    solve = data["solve"]
    assert [r["m"] for r in solve["rows"]] == [25, 100, 400]
    # the nullity the report finds is the so(d) dimension the synthetic Gram was built with
    assert all(r["build_report_nullity"] == r["nullity"] for r in solve["rows"])
    assert "memory budget" in solve["guard"]["check_memory_budget"]
    assert "memory budget" in solve["guard"]["LieGGMetric"]

    epoch = data["epoch"]
    assert epoch["rows"] and all(r["epoch_s"] > 0 for r in epoch["rows"])

    for heading in ("### 1.", "### 2.", "### 3.", "### 4."):
        assert heading in proc.stdout
