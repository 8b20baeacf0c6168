"""Measuring what the parts of one analysis cost, on a small probe of inputs (the cost model's prices)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from liegg_lightning._errors import InputError
from liegg_lightning.callback._cost import TIMING_SAMPLES, Prices, price_line
from liegg_lightning.callback._state import preserved_state
from liegg_lightning.functional.polarization import choose_derivative
from liegg_lightning.metric import LieGGMetric, fresh_metric

__all__ = ["FORWARD_FIRST_USE", "Quote", "estimate_solve", "forward_mode_loaded", "measure_prices", "modes_to_time"]

#: Seconds torch takes once per process to script its forward-mode decompositions at the first JVP
#: (``docs/time_forward_first_use.py`` measures it): forward mode is timed only where a fit's
#: analyses could win this back.
FORWARD_FIRST_USE = 0.5
#: Largest algebra whose solve is priced by solving the probe; above it, an eigensolve of this
#: size is timed and scaled by m^3 (a real solve, jackknife included, would cost what it prices).
_SOLVE_PRICED_UP_TO = 256

Model = Callable[[Tensor], Any]
_UNKNOWN = -math.inf  # below every measured value: the largest over the processes ignores it
#: Fields every process agrees on the least of (stored negated, so that one all-reduce of the largest does all).
_AGREED_LEAST = frozenset({"steady"})


@dataclass(frozen=True)
class Quote:
    """What one process found for the plan; the processes agree on it field by field in one all-reduce.

    Every field is agreed as its largest value over the processes (``steady`` as its least), so a
    failure or a slow part on any process counts for all. Unpriced parts are ``-inf`` (ignored by the
    largest); a derivative mode that failed is ``inf`` (excluded wherever it failed).

    Attributes:
        failed: The model could not be analysed.
        priced: Inputs were found and priced.
        reverse_call: Reverse-mode derivative pass, seconds per call.
        reverse_sample: Reverse-mode derivative pass, seconds per sample.
        forward_call: Forward-mode derivative pass, seconds per call.
        forward_sample: Forward-mode derivative pass, seconds per sample.
        accumulate_call: Adding rows to the Gram matrix, seconds per call.
        accumulate_sample: Adding rows to the Gram matrix, seconds per sample.
        keep_state: Saving and restoring the model's state around a batch, seconds.
        solve: One solve at the end of an analysis, seconds.
        rows_per_sample: Polarization rows one sample gives.
        steady: Seconds of steady training so far (agreed on the least).
        batches: Validation batches an analysis may take from.
        batch_size: Samples in one validation batch.
    """

    failed: bool = False
    priced: bool = False
    reverse_call: float = _UNKNOWN
    reverse_sample: float = _UNKNOWN
    forward_call: float = _UNKNOWN
    forward_sample: float = _UNKNOWN
    accumulate_call: float = _UNKNOWN
    accumulate_sample: float = _UNKNOWN
    keep_state: float = _UNKNOWN
    solve: float = _UNKNOWN
    rows_per_sample: float = _UNKNOWN
    steady: float = 0.0
    batches: float = 0.0
    batch_size: float = 0.0

    def to_tensor(self, device: torch.device) -> Tensor:
        """The fields in order as float64, ``steady`` negated: the largest over processes agrees them all."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        signs = [-1.0 if f.name in _AGREED_LEAST else 1.0 for f in dataclasses.fields(self)]
        return torch.tensor([s * float(v) for s, v in zip(signs, values)], dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, tensor: Tensor) -> Quote:
        """The quote :meth:`to_tensor` wrote (after any all-reduce of the largest)."""
        values: Dict[str, Any] = {}
        for f, v in zip(dataclasses.fields(cls), tensor.detach().cpu().tolist()):
            v = -v if f.name in _AGREED_LEAST else v
            values[f.name] = v > 0 if f.type in (bool, "bool") else float(v)
        return cls(**values)

    def mode_prices(self, mode: str) -> Tuple[float, float]:
        """Seconds per call and per sample of the derivative pass in ``mode``."""
        if mode == "reverse":
            return self.reverse_call, self.reverse_sample
        return self.forward_call, self.forward_sample

    def probe_seconds(self) -> Dict[str, float]:
        """Seconds each derivative mode that worked everywhere takes on the timing probe."""
        seconds = {mode: call + TIMING_SAMPLES * sample
                   for mode, (call, sample) in ((m, self.mode_prices(m)) for m in ("reverse", "forward"))}
        return {mode: value for mode, value in seconds.items() if math.isfinite(value)}

    def prices(self, mode: str) -> Prices:
        """The cost model's prices with the derivative pass in ``mode``."""
        call, sample = self.mode_prices(mode)
        return Prices(call, sample, self.accumulate_call, self.accumulate_sample, self.keep_state, self.solve)


def forward_mode_loaded() -> bool:
    """Whether torch has paid forward mode's first use in this process (or never will: no JIT)."""
    return ("torch._decomp.decompositions_for_jvp" in sys.modules
            or os.environ.get("PYTORCH_JIT", "1") != "1" or not __debug__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work: Callable[[], Any]) -> Tuple[float, Any]:
    _synchronize(device)
    start = time.perf_counter()
    out = work()
    _synchronize(device)
    return time.perf_counter() - start, out


def _time_mode(
    metric: LieGGMetric, model: Model, probe: Tensor, mode: str, module: nn.Module, cuda: Sequence[int]
) -> Tuple[float, float, Any]:
    """Seconds per call and per sample of the derivative pass in ``mode``, and its rows.

    One throwaway call takes the one-time costs out; 2 samples once and the whole probe twice (the
    slower kept: one lucky timing on a shared machine would overspend every epoch) give a line.
    """
    device = probe.device
    with preserved_state(module, cuda):
        metric.rows(model, probe[:2].clone(), derivative=mode)
        small = _timed(device, lambda: metric.rows(model, probe[:2].clone(), derivative=mode))[0]
        full, rows = _timed(device, lambda: metric.rows(model, probe.clone(), derivative=mode))
        full = max(full, _timed(device, lambda: metric.rows(model, probe.clone(), derivative=mode))[0])
    per_call, per_sample = price_line(small, full, min(2, probe.shape[0]), probe.shape[0])
    return per_call, per_sample, rows


def estimate_solve(num_generators: int, num_groups: int, device: torch.device) -> float:
    """Seconds one solve of an ``m``-generator analysis takes: an eigensolve timed at a small size, scaled by m^3.

    The full solve and one per jackknife group; cheap whatever ``m``, so an algebra too large for a
    fit's budget is found without paying for one of its updates.
    """
    size = min(num_generators, _SOLVE_PRICED_UP_TO)
    gram = torch.randn(size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gram = (gram @ gram.T).to(device)
    seconds = min(_timed(device, lambda: torch.linalg.eigh(gram))[0] for _ in range(2))
    return seconds * (num_generators / size) ** 3 * (1 + num_groups)


def _time_solve(scratch: LieGGMetric, device: torch.device, estimate: float) -> float:
    """The probe's solve, timed; for large algebras ``estimate`` (a real solve would cost what it prices)."""
    if scratch.action.num_generators > _SOLVE_PRICED_UP_TO:
        return estimate
    solve = math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a probe may have fewer rows than generators: no news here
        for _ in range(2):  # the first solve may load linear-algebra kernels: keep the faster
            try:
                # unwrapped: a throwaway must not sync across processes
                solve = min(solve, _timed(device, lambda: LieGGMetric.compute(scratch))[0])
            except Exception:  # an unsolvable probe prices nothing
                solve = 0.0
    return solve


def _time_overheads(
    metric: LieGGMetric, rows: Any, probe: Tensor, module: nn.Module, cuda: Sequence[int], solve: float
) -> Dict[str, float]:
    """Seconds of the accumulation (per call, per sample), the kept state per batch and one solve."""
    scratch = fresh_metric(metric).place_on(probe.device)
    n, device = probe.shape[0], probe.device
    few = min(2, n)

    def head(count: int) -> Any:
        return {k: v[:count] for k, v in rows.items()} if isinstance(rows, dict) else rows[:count]

    scratch.update_rows(head(few), probe[:few])  # one-time costs out of the price
    small = _timed(device, lambda: scratch.update_rows(head(few), probe[:few]))[0]
    full = _timed(device, lambda: scratch.update_rows(rows, probe))[0]
    acc_call, acc_sample = price_line(small, full, few, n)

    def keep_state() -> None:
        with preserved_state(module, cuda):
            pass

    state = min(_timed(device, keep_state)[0] for _ in range(2))
    return {"accumulate_call": acc_call, "accumulate_sample": acc_sample, "keep_state": state,
            "solve": _time_solve(scratch, device, solve)}


def modes_to_time(
    metric: LieGGMetric, rows_per_sample: int, analysis_seconds: float, forward_loaded: bool
) -> List[str]:
    """Which derivative modes are worth timing.

    Args:
        metric: The metric (its ``derivative`` option and algebra size).
        rows_per_sample: Rows one sample gives: the reverse passes.
        analysis_seconds: What the fit's analyses may spend in all.
        forward_loaded: Whether this process has already paid forward mode's first use.
    """
    if metric.derivative != "auto":
        return [metric.derivative]
    m = metric.action.num_generators
    if max(m, rows_per_sample) > 4 * min(m, rows_per_sample):
        # one mode needs over 4x the passes of the other: timing the loser would cost more than it tells
        return [choose_derivative("auto", m, rows_per_sample)]
    if not forward_loaded and analysis_seconds < FORWARD_FIRST_USE:
        return ["reverse"]  # forward's first use would cost more than the fit's analyses may
    return ["reverse", "forward"]


def measure_prices(
    metric: LieGGMetric, model: Model, probe: Tensor, module: nn.Module, cuda: Sequence[int],
    analysis_seconds: float, solve: float,
) -> Optional[Quote]:
    """Price one analysis of ``metric`` on ``probe`` (this process only: the caller agrees across processes).

    Args:
        metric: The metric an analysis fills.
        model: The function analysed (the model, or a layer's output).
        probe: A few inputs on the model's device.
        module: The module whose buffers and random states every extra pass leaves as they were.
        cuda: CUDA devices whose random states are kept.
        analysis_seconds: What the fit's analyses may spend in all (whether forward mode can pay off).
        solve: :func:`estimate_solve` for this metric, the solve's price where the probe's own solve
            is not timed (large algebras).

    Returns:
        A priced :class:`Quote` (without the fit's numbers): per-call and per-sample seconds of each
        timed derivative mode (``inf`` where it failed), the accumulation of the fastest mode's rows,
        the kept state, the solve and the rows one sample gives. ``None`` when every mode failed.
        ``InputError`` (a configuration error) is raised.
    """
    with preserved_state(module, cuda):
        rows_per_sample = metric.rows_per_sample(model, probe[:2].clone())
    modes = modes_to_time(metric, rows_per_sample, analysis_seconds, forward_mode_loaded())
    rows: Dict[str, Any] = {}

    def timed_mode(mode: str) -> Tuple[float, float]:
        try:
            per_call, per_sample, rows[mode] = _time_mode(metric, model, probe, mode, module, cuda)
        except InputError:
            raise
        except Exception:  # e.g. torch.no_grad inside forward breaks reverse mode
            return math.inf, math.inf
        return per_call, per_sample

    timed = {mode: timed_mode(mode) for mode in modes}
    if metric.derivative == "auto" and len(modes) == 1 and not math.isfinite(timed[modes[0]][1]):
        other = "forward" if modes[0] == "reverse" else "reverse"
        timed[other] = timed_mode(other)  # the cheaper mode by count failed: try the other
    finite = [mode for mode in timed if math.isfinite(timed[mode][1])]
    if not finite:
        return None
    best = min(finite, key=lambda mode: timed[mode][0] + probe.shape[0] * timed[mode][1])
    # a mode not timed here counts as failed, as one that raised: no process plans with a mode another never ran
    parts: Dict[str, Any] = {f"{mode}_{part}": value for mode in ("reverse", "forward")
                             for part, value in zip(("call", "sample"), timed.get(mode, (math.inf, math.inf)))}
    parts.update(_time_overheads(metric, rows[best], probe, module, cuda, solve))
    return Quote(priced=True, rows_per_sample=float(rows_per_sample), **parts)
