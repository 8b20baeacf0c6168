"""The benchmark script runs end to end in its ``--quick`` mode and writes every section.

Timings are never asserted: only that each section measured something and wrote it down, and the
few facts that do not depend on the machine (the derivative mode "auto" picks, the nullity the
solve finds in a Gram built with a known null space, the guard's refusal, the callback's samples).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
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
        assert case["floor_s"] > 0
        assert case["engine_s"] > 0
        assert all(t > 0 for t in case["breakdown_s"].values())
    # m=4 < K=10 on the CNN: "auto" must pick forward mode, and K=1 on the MLP reverse mode
    modes = {(c["K"], c["m"]): c["derivative_mode"] for c in overhead["cases"]}
    assert modes[(1, 25)] == "reverse"
    assert modes[(10, 4)] == "forward"

    methods = data["methods"]
    assert {r["method"] for r in methods["rows"]} == {"dense", "ours"}
    for row in methods["rows"]:
        assert "error" not in row, row.get("error")
        assert row["time_s"] > 0
        assert row["ref_sigma_min"] > 0
        assert row["rel_err_sigma_min"] >= 0
    ours = [r for r in methods["rows"] if r["method"] == "ours"]
    assert all(r["kept_bytes"] == r["m"] ** 2 * 8 for r in ours)

    solve = data["solve"]
    assert [r["m"] for r in solve["rows"]] == [25, 100, 400]
    # the nullity the report finds is the so(d) dimension the synthetic Gram was built with
    assert all(r["report_nullity"] == r["nullity"] for r in solve["rows"])
    assert "memory budget" in solve["guard"]["check_memory_budget"]
    assert "memory budget" in solve["guard"]["LieGGMetric"]

    feel = data["user_feel"]
    assert [s["case"] for s in feel["skipped"]] == ["ResNet-18 32x32"]  # no CUDA here
    assert len(feel["rows"]) == 2
    for row in feel["rows"]:
        assert row["fit_without_s"] > 0
        assert row["fit_with_s"] > 0
        # the budget may thin the analysed epochs of so short a fit, or, where one analysis outweighs the
        # whole fit's budget, leave them all to a later trainer.validate() (said in a warning)
        assert 0 <= row["analyses"] == len(row["samples_per_epoch"]) <= row["epochs"]
        assert all(n > 0 for n in row["samples_per_epoch"])
    o5, digits = feel["rows"]
    # the quick O(5) data has 200 validation samples; the digits' one validation batch holds 400 images
    assert all(n <= 200 for n in o5["samples_per_epoch"])
    assert all(n <= 400 for n in digits["samples_per_epoch"])
    assert len(o5["symmetry_variances"]) == o5["analyses"]
    # a spread needs two analyses (the budget may thin a 2-epoch quick fit to one)
    assert ("symmetry_variance_std" in o5) == (o5["analyses"] >= 2)
    # the probe analysed the whole validation set on the same weights and compared the logged value with it
    for row, samples in ((o5, 200), (digits, 400)):
        if row["analyses"]:  # an analysed epoch to compare with
            assert row["full_set_samples"] == samples
            assert row["max_rel_err_vs_full_set"] >= 0

    for heading in ("### overhead", "### methods", "### solve", "### user_feel"):
        assert heading in proc.stdout
