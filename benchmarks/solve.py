"""Section ``solve``: what the epoch-end solve costs as the algebra grows, and the memory-budget guard.

For m = d^2 in (25, 100, 400, 1024, 4096) (``VectorAction(dim=d)``) the Gram matrix of an
so(d)-invariant network is solved: eigenvalue ``delta`` on the antisymmetric matrices (d(d-1)/2 of
them), order one on the symmetric ones, so ``nullity = d(d-1)/2``, the report's worst case (its
closure error works on the null space, in bounded chunks over at most 4096 sampled pairs).

Timed: ``torch.linalg.eigh`` alone and the whole report (``symmetry_compute``: nullity, biases
against so(d), closure error). Then the guard: ``check_memory_budget`` and ``LieGGMetric``
refusing m = 16384 at the default 1 GiB budget, with the time the refusal takes and its message.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List

import torch
from common import interleaved_medians, table, timed


def so_gram(dim: int, delta: float, seed: int = 0) -> torch.Tensor:
    """A PSD Gram (m x m, m = dim^2) whose eigenvalue on the antisymmetric matrices is ``delta``.

    ``P_sym (I + W W^T / r) P_sym + delta P_so``, with ``P_sym = (I + T) / 2`` and ``T`` the
    transposition of the generator matrix, applied as index permutations (no O(m^3) work).
    """
    m = dim * dim
    gen = torch.Generator().manual_seed(seed)
    r = 8
    w = torch.randn(m, r, generator=gen, dtype=torch.float64)
    a = w @ w.T / r + torch.eye(m, dtype=torch.float64)
    perm = torch.arange(m).reshape(dim, dim).T.reshape(-1)
    sym = (a + a[perm] + a[:, perm] + a[perm][:, perm]) / 4
    t = torch.eye(m, dtype=torch.float64)[perm]
    anti = (torch.eye(m, dtype=torch.float64) - t) / 2
    return sym + delta * anti


def closure_pairs(nullity: int, max_pairs: int = 4096) -> int:
    """How many commutators the closure error forms: all pairs, or a sample of ``max_pairs``."""
    return min(nullity * (nullity - 1) // 2, max_pairs)


def run(device: torch.device, quick: bool, repeats: int, log: Callable[[str], None]) -> Dict[str, Any]:
    """Solve times against m, then the guard; returns the JSON section."""
    from liegg_lightning import LieGGMetric, VectorAction
    from liegg_lightning._memory import GRAM_BYTES_PER_ENTRY, check_memory_budget
    from liegg_lightning.functional.symmetry import symmetry_compute
    from liegg_lightning.metric import DEFAULT_MEMORY_BUDGET

    dims = [5, 10, 20] if quick else [5, 10, 20, 32, 64]
    rows: List[Dict[str, Any]] = []
    for dim in dims:
        m = dim * dim
        action = VectorAction(dim)
        reference = action.reference_vectors("so")
        nullity = dim * (dim - 1) // 2
        gram = so_gram(dim, 1e-10).to(device)
        found: Dict[str, Any] = {}

        def report(g: torch.Tensor = gram, a: Any = action, r: Any = reference, out: Dict = found) -> None:
            out["report"] = symmetry_compute(g, 1000, 1000, 0, a, reference=r)

        variants = {"eigh": lambda g=gram: torch.linalg.eigh(g), "report": report}
        if m <= 1024:
            res = {k: v["median"] for k, v in interleaved_medians(variants, device, repeats).items()}
        else:  # seconds per call: once each
            res = {name: timed(fn, device) for name, fn in variants.items()}
        pairs = closure_pairs(nullity)
        rows.append({"m": m, "dim": dim, "nullity": nullity, "gram_bytes": m * m * 8,
                     "budget_estimate_bytes": check_memory_budget(m, None), "eigh_s": res["eigh"],
                     "report_s": res["report"], "report_nullity": found["report"].nullity,
                     "closure_pairs": pairs, "all_pairs": nullity * (nullity - 1) // 2})
        log(f"  m={m}: eigh {res['eigh']:.3g} s, report {res['report']:.3g} s")

    # the guard: an algebra whose Gram would not fit the default budget is refused before allocating
    guard: Dict[str, Any] = {"m": 16384, "budget_bytes": DEFAULT_MEMORY_BUDGET}
    start = time.perf_counter()
    try:
        check_memory_budget(16384, DEFAULT_MEMORY_BUDGET)
        guard["check_memory_budget"] = "accepted (unexpected)"
    except ValueError as err:
        guard["check_memory_budget"] = str(err)
    guard["check_memory_budget_s"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        LieGGMetric(VectorAction(128))
        guard["LieGGMetric"] = "accepted (unexpected)"
    except ValueError as err:
        guard["LieGGMetric"] = str(err)
    guard["LieGGMetric_s"] = time.perf_counter() - start
    guard["largest_m_within_default_budget"] = int(math.isqrt(DEFAULT_MEMORY_BUDGET // GRAM_BYTES_PER_ENTRY))
    log(f"  guard: refused m=16384 in {guard['check_memory_budget_s'] * 1e6:.0f} us")
    return {"rows": rows, "guard": guard}


def render(section: Dict[str, Any]) -> str:
    """Markdown table of the section and the guard's answers."""
    rows = [{"m": r["m"], "so(d) nullity": r["nullity"], "Gram MB": r["gram_bytes"] / 2**20, "eigh (s)": r["eigh_s"],
             "report (s)": r["report_s"], "report / eigh": r["report_s"] / r["eigh_s"] if r["report_s"] else None,
             "closure pairs": f"{r['closure_pairs']} of {r['all_pairs']}" if "closure_pairs" in r else "-"}
            for r in section["rows"]]
    cols = ["m", "so(d) nullity", "Gram MB", "eigh (s)", "report (s)", "report / eigh", "closure pairs"]
    text = table(rows, cols, "solve: the epoch-end solve against m (so(d) null space)")
    g = section["guard"]
    text += (f"\n\nGuard at the default budget ({g['budget_bytes'] / 2**20:.0f} MiB; largest m accepted: "
             f"{g['largest_m_within_default_budget']}):\n"
             f"- `check_memory_budget(16384)` refused in {g['check_memory_budget_s'] * 1e6:.0f} us: "
             f"{g['check_memory_budget']}\n"
             f"- `LieGGMetric(VectorAction(128))` refused in {g['LieGGMetric_s'] * 1e3:.2f} ms: {g['LieGGMetric']}")
    return text
