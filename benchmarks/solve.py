"""Section 3: what the epoch-end solve costs as the algebra grows, and the memory-budget guard.

For m = d^2 in (25, 100, 400, 1024, 4096) (``VectorAction(dim=d)``) two Gram matrices are solved:

* one with the null space of an so(d)-invariant network: eigenvalue ``delta`` on the antisymmetric
  matrices (d(d-1)/2 of them), order one on the symmetric ones, so ``nullity = d(d-1)/2``;
* one with no symmetry (nullity 0).

Timed: ``torch.linalg.eigh`` alone, ``solve_spectrum`` and the whole ``build_report`` (nullity,
biases against so(d), closure error of the ``nullity`` leading generators). The closure error works
in bounded chunks over at most 4096 sampled pairs; where its estimated working memory would still
exceed the section's limit, ``build_report`` is skipped and the estimate given. Then the guard:
``check_memory_budget`` and ``LieGGMetric`` refusing m = 16384 at the default 1 GiB budget, with the
time the refusal takes and its message.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List

import torch
from common import interleaved_medians, table, timed

#: build_report is skipped where the closure error's commutators would need more than this
CLOSURE_LIMIT_BYTES = 6e9


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


def plain_gram(dim: int, seed: int = 0) -> torch.Tensor:
    """A well-conditioned PSD Gram with no symmetry."""
    m = dim * dim
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(m, 8, generator=gen, dtype=torch.float64)
    return w @ w.T / 8 + torch.eye(m, dtype=torch.float64)


def closure_pairs(nullity: int, max_pairs: int = 4096) -> int:
    """How many commutators the closure error forms: all pairs, or a sample of ``max_pairs``."""
    return min(nullity * (nullity - 1) // 2, max_pairs)


def closure_bytes(nullity: int, m: int, chunk_bytes: float = 32 * 2**20) -> float:
    """Rough working memory of the chunked closure error (float64): the generators, their
    orthonormal span (both ``nullity x m``), and one chunk of commutators with their projections."""
    return 2.0 * nullity * m * 8 + 2.0 * chunk_bytes


def run(device: torch.device, quick: bool, repeats: int, log: Callable[[str], None]) -> Dict[str, Any]:
    """Solve times against m, then the guard; returns the JSON section."""
    from liegg_lightning import LieGGMetric, VectorAction, algebras
    from liegg_lightning.functional.spectrum import solve_spectrum
    from liegg_lightning.functional.symmetry import _check_memory_budget as check_memory_budget
    from liegg_lightning.metric import DEFAULT_MEMORY_BUDGET
    from liegg_lightning.functional.symmetry import _symmetry_compute as build_report

    dims = [5, 10, 20] if quick else [5, 10, 20, 32, 64]
    rows: List[Dict[str, Any]] = []
    for dim in dims:
        m = dim * dim
        action = VectorAction(dim)
        reference = action.reference_vectors("so")
        nullity = dim * (dim - 1) // 2
        g_sym = so_gram(dim, 1e-10).to(device)
        g_plain = plain_gram(dim).to(device)
        variants = {
            "eigh": lambda g=g_sym: torch.linalg.eigh(g),
            "solve_spectrum": lambda g=g_sym: solve_spectrum(g),
            "build_report (no symmetry)": lambda g=g_plain, a=action, r=reference: build_report(
                g, 1000, 1000, 0, a, reference=r),
        }
        if m <= 1024:
            res = interleaved_medians(variants, device, repeats)
        else:  # seconds per call: once each, and solve_spectrum is eigh plus O(m^2)
            res = {name: {"median": timed(variants[name], device)} for name in ("eigh", "build_report (no symmetry)")}
            res["solve_spectrum"] = {"median": None}
        row: Dict[str, Any] = {"m": m, "dim": dim, "nullity": nullity,
                               "gram_bytes": m * m * 8,
                               "budget_estimate_bytes": check_memory_budget(m, None)}
        row.update({f"{k}_s": v["median"] for k, v in res.items()})
        need = closure_bytes(nullity, m)
        row["closure_bytes_estimate"] = need
        if need > CLOSURE_LIMIT_BYTES:
            row["build_report_s"] = None
            row["build_report_note"] = (f"skipped: closure error over {nullity} generators needs ~{need / 1e9:.0f} GB "
                                        f"({closure_pairs(nullity)} commutators)")
        else:
            report: Dict[str, Any] = {}

            def full(g: torch.Tensor = g_sym, a: Any = action, r: Any = reference, out: Dict = report) -> None:
                out["r"] = build_report(g, 1000, 1000, 0, a, reference=r)

            row["build_report_s"] = timed(full, device)
            row["build_report_nullity"] = report["r"].nullity
            row["closure_pairs"] = closure_pairs(nullity)
            if closure_pairs(nullity) < nullity * (nullity - 1) // 2:
                row["build_report_note"] = (f"closure error over {closure_pairs(nullity)} sampled pairs "
                                            f"of {nullity * (nullity - 1) // 2}")
        rows.append(row)
        log(f"  m={m}: eigh {row['eigh_s']:.3g} s, build_report {row['build_report_s']}")

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
    guard["largest_m_within_default_budget"] = int(math.isqrt(DEFAULT_MEMORY_BUDGET // check_memory_budget(1, None)))
    log(f"  guard: refused m=16384 in {guard['check_memory_budget_s'] * 1e6:.0f} us")
    return {"rows": rows, "guard": guard, "closure_limit_bytes": CLOSURE_LIMIT_BYTES}


def render(section: Dict[str, Any]) -> str:
    """Markdown tables of the section."""
    rows = []
    for r in section["rows"]:
        rows.append({"m": r["m"], "so(d) nullity": r["nullity"], "Gram MB": r["gram_bytes"] / 2**20,
                     "eigh (s)": r["eigh_s"], "solve_spectrum (s)": r["solve_spectrum_s"],
                     "build_report, no symmetry (s)": r["build_report (no symmetry)_s"],
                     "build_report, so(d) null space (s)": r["build_report_s"],
                     "note": r.get("build_report_note", "")})
    cols = ["m", "so(d) nullity", "Gram MB", "eigh (s)", "solve_spectrum (s)", "build_report, no symmetry (s)",
            "build_report, so(d) null space (s)", "note"]
    text = table(rows, cols, "3. Epoch-end solve against m")
    g = section["guard"]
    text += (f"\n\nGuard at the default budget ({g['budget_bytes'] / 2**20:.0f} MiB; largest m accepted: "
             f"{g['largest_m_within_default_budget']}):\n"
             f"- `check_memory_budget(16384)` refused in {g['check_memory_budget_s'] * 1e6:.0f} us: "
             f"{g['check_memory_budget']}\n"
             f"- `LieGGMetric(VectorAction(128))` refused in {g['LieGGMetric_s'] * 1e3:.2f} ms: {g['LieGGMetric']}")
    return text
