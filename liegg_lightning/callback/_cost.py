"""The monitor's cost model: pure arithmetic, no torch and no Lightning.

Prices (seconds, measured elsewhere) and the fit's shape go in; a frozen :class:`Plan` comes out.
A :class:`Ledger` holds one fit's clocks and is made afresh by every fit. :class:`Schedule` says
which validation runs are analysed, from the training progress in epochs. Everything here can be
tested with fixed numbers and a fake clock.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

__all__ = [
    "ANALYSIS_SHARE",
    "FitShape",
    "Ledger",
    "MIN_BATCHES",
    "Plan",
    "Prices",
    "SHORT_FIT_SECONDS",
    "Schedule",
    "TIMING_SAMPLES",
    "UNMEASURED_SHARE",
    "analysis_budget",
    "batches_left",
    "every_that_fits",
    "make_plan",
    "may_draw_now",
    "price_line",
    "refuses_fit",
    "short_fit_allowance",
    "stride_that_fits",
]

#: Share of an analysis' budget the priced parts (derivative passes, accumulation, solve) may take;
#: the rest is for what cannot be priced in advance: logging, report files and pictures.
ANALYSIS_SHARE = 0.4
#: Share of the budget kept for what the monitor causes but cannot time (Lightning's handling of
#: the logged values, caches shared with training).
UNMEASURED_SHARE = 0.2
#: Samples a plan prices the derivative pass on; also the least an analysis takes.
TIMING_SAMPLES = 32
#: Batches an analysis takes at least (when there are as many), so an ordered validation set is
#: sampled all over.
MIN_BATCHES = 8
#: Seconds of training every fit is granted a budget for at least: a short fit still gets its last
#: validation analysed when that costs under ``overhead`` times this (0.5 s at the default 0.1).
SHORT_FIT_SECONDS = 5.0


@dataclass(frozen=True)
class Prices:
    """Seconds the parts of one analysis cost, agreed by every process.

    Attributes:
        derivative_call: The derivative pass, per call.
        derivative_sample: The derivative pass, per sample.
        accumulate_call: Adding rows to the Gram matrix, per call.
        accumulate_sample: Adding rows to the Gram matrix, per sample.
        keep_state: Saving and restoring the model's buffers and random states around a batch.
        solve: One solve of the Gram matrix at the end of an analysis.
    """

    derivative_call: float
    derivative_sample: float
    accumulate_call: float
    accumulate_sample: float
    keep_state: float
    solve: float

    @property
    def per_batch(self) -> float:
        """Seconds an analysed batch costs whatever its size."""
        return self.derivative_call + self.accumulate_call + self.keep_state

    @property
    def per_sample(self) -> float:
        """Seconds each analysed sample adds."""
        return self.derivative_sample + self.accumulate_sample


@dataclass(frozen=True)
class FitShape:
    """What a plan needs to know of the fit, in seconds of steady training and counts.

    Attributes:
        interval: Training between two analyses at the requested cadence.
        remaining: Training the fit has left after this point (``inf`` when its length is unknown).
        one_time: What the monitor pays once per fit (the configuration check, the plan, the last picture).
        batches: Validation batches an analysis may take from.
        batch_size: Samples in one validation batch.
        rows_per_sample: Polarization rows one sample gives.
        num_generators: Size ``m`` of the candidate algebra.
    """

    interval: float
    remaining: float
    one_time: float
    batches: int
    batch_size: int
    rows_per_sample: int
    num_generators: int

    @property
    def floor_samples(self) -> int:
        """The fewest samples an analysis takes: four rows per generator, and never fewer than the timed probe."""
        return max(TIMING_SAMPLES, math.ceil(4 * self.num_generators / max(self.rows_per_sample, 1)))


@dataclass(frozen=True)
class Plan:
    """How every analysis of a fit is sized, fixed once so that analyses are comparable.

    Attributes:
        samples: Samples per analysis and process.
        batch_stride: Every how many validation batches one is analysed.
        epoch_stride: Every how many requested analyses one comes (1 unless the budget thinned them).
        budget: Seconds one analysis may cost.
        cost: Seconds one analysis of ``samples`` is priced at.
        smallest: Seconds the smallest analysis (the floor's samples) is priced at.
    """

    samples: int
    batch_stride: int
    epoch_stride: int
    budget: float = math.nan
    cost: float = math.nan
    smallest: float = math.nan

    @property
    def fits(self) -> bool:
        """Whether one analysis stays within its budget."""
        return self.cost <= self.budget

    def per_batch(self, batches: int) -> int:
        """Samples to take from each analysed batch when ``batches`` batches are seen."""
        analysed = max(math.ceil(batches / self.batch_stride), 1)
        return max(1, math.ceil(self.samples / analysed))


def price_line(small: float, full: float, few: int, many: int) -> Tuple[float, float]:
    """Seconds per call and per sample from the times of ``few`` and of ``many`` samples."""
    if many <= few:
        return 0.0, full / max(many, 1)
    per_sample = max(full - small, 0.0) / (many - few)
    return max(small - few * per_sample, 0.0), per_sample


def analysis_budget(overhead: float, stride: int, interval: float, remaining: float, one_time: float) -> float:
    """Seconds one analysis may cost when every ``stride``-th comes.

    ``overhead`` of the training between two analyses; when the fit's length is known, also no more
    than an equal share, among the analyses left, of ``overhead`` of the fit's training less what it
    pays once. On a short fit the one-time costs weigh, and fewer analyses fit.
    """
    budget = overhead * interval * stride
    if math.isfinite(remaining) and interval > 0:
        analyses = 1 + math.floor(remaining / (interval * stride) + 1e-9)  # this one and those to come
        budget = min(budget, (overhead * (interval + remaining) - one_time) / analyses)
    return budget


def stride_that_fits(smallest: float, overhead: float, interval: float, remaining: float, one_time: float) -> int:
    """The least k for which the smallest analysis fits its share of the budget, analysing every k-th time."""
    if interval <= 0:
        return 1
    if not math.isfinite(remaining):
        return max(1, math.ceil(smallest / (ANALYSIS_SHARE * overhead * interval)))
    stride = 1
    # past remaining / interval this analysis is the fit's last: no larger stride spends less
    while remaining >= interval * stride and smallest > ANALYSIS_SHARE * analysis_budget(
            overhead, stride, interval, remaining, one_time):
        stride += 1
    return stride


def _batch_stride(batches: int, per_batch: float, room: float) -> int:
    """Every how many batches to analyse so that the batches' fixed costs take at most half the room."""
    if batches <= 1 or per_batch <= 0 or batches * per_batch <= room / 2:
        return 1
    widest = max(1, batches // min(batches, MIN_BATCHES))  # never fewer than MIN_BATCHES batches
    return min(widest, math.ceil(batches * per_batch / max(room / 2, 1e-9)))


def make_plan(prices: Prices, fit: FitShape, overhead: float, may_thin: bool) -> Plan:
    """Fix the samples, batch stride and epoch stride of every analysis of a fit.

    The priced parts of one analysis take ``ANALYSIS_SHARE`` of its budget. ``may_thin`` lets the
    plan analyse every k-th time when even the smallest analysis does not fit; without it (the user
    chose the cadence) only the samples shrink, down to the floor.
    """
    floor = fit.floor_samples
    smallest = min(fit.batches, MIN_BATCHES) * prices.per_batch + floor * prices.per_sample + prices.solve
    epoch_stride = 1
    if may_thin:
        epoch_stride = stride_that_fits(smallest, overhead, fit.interval, fit.remaining, fit.one_time)
    budget = analysis_budget(overhead, epoch_stride, fit.interval, fit.remaining, fit.one_time)
    room = ANALYSIS_SHARE * budget - prices.solve
    batch_stride = _batch_stride(fit.batches, prices.per_batch, room)
    analysed = math.ceil(fit.batches / batch_stride)
    total = analysed * fit.batch_size  # samples in the analysed batches
    left = room - analysed * prices.per_batch
    if prices.per_sample > 0:
        planned = max(floor, int(left / prices.per_sample))
    else:  # samples too cheap to time: all of them where there is room, else the floor
        planned = max(total, floor) if left > 0 else floor
    samples = min(planned, total) if total > 0 else planned
    cost = analysed * prices.per_batch + samples * prices.per_sample + prices.solve
    return Plan(samples=max(samples, 1), batch_stride=batch_stride, epoch_stride=epoch_stride, budget=budget,
                cost=cost, smallest=smallest)


def short_fit_allowance(overhead: float) -> float:
    """Seconds any fit may spend on one analysis and what it pays once, however short its training."""
    return overhead * SHORT_FIT_SECONDS


def refuses_fit(smallest: float, reserved: float, overhead: float, fit_training: float) -> bool:
    """Whether even one analysis is refused during a fit of ``fit_training`` seconds of training.

    Refused only when the smallest analysis is over ``overhead`` of the whole fit's training and,
    with ``reserved`` (what it brings besides: the run's last picture), also over
    :func:`short_fit_allowance`. So a short fit still sees its last validation analysed when that
    is cheap in seconds, and what it pays beyond ``overhead`` is at most the allowance (with the
    one-time checks and pricing, which are paid before this is known).
    """
    return smallest > overhead * fit_training and smallest + reserved > short_fit_allowance(overhead)


def every_that_fits(cost: float, interval: float, overhead: float, every: int) -> int:
    """The ``every_n_epochs`` at which analyses of ``cost`` seconds keep within ``overhead``."""
    if interval <= 0 or overhead <= 0:
        return every
    return max(every, math.ceil(every * cost / (overhead * interval)))


def may_draw_now(cost: float, expected_drawing: float, budget: float) -> bool:
    """Whether a picture fits now, leaving room for the run's last one (always drawn) and what is not timed."""
    return cost + 2 * expected_drawing <= (1 - UNMEASURED_SHARE) * budget


def batches_left(
    per_epoch: float, max_epochs: Optional[int], start_epoch: int, trained: int,
    max_steps: Optional[int], global_step: int, accumulate: int,
) -> float:
    """Training batches a fit has left after ``trained`` (``max_epochs``, ``max_steps``); ``inf`` if unknown."""
    if not math.isfinite(per_epoch) or per_epoch <= 0:
        return math.inf
    left = math.inf
    if max_epochs is not None and max_epochs >= 0:
        left = (max_epochs - start_epoch) * per_epoch - trained
    if max_steps is not None and max_steps >= 0:
        left = min(left, (max_steps - global_step) * accumulate)
    return max(left, 0)


@dataclass(frozen=True)
class Schedule:
    """Which epochs are analysed during ``fit``: every validation run in them.

    Epochs are counted as Lightning's ``ModelCheckpoint(every_n_epochs=...)`` counts them. Without
    thinning, the epochs ``e`` (counted from 0) with ``(e + 1) % every == 0``; when the budget
    analyses only every ``stride``-th time and the fit's last epoch ``end`` is known, the epochs
    ``end - every * stride * k``, so that the last analysis sees the trained network.

    Attributes:
        every: Epochs between two requested analyses (0: never during ``fit``).
        stride: Every how many requested analyses one comes.
        end: The fit's last epoch when thinned, else ``None``.
    """

    every: int
    stride: int = 1
    end: Optional[int] = None

    def due(self, epoch: int) -> bool:
        """Whether the validation runs of ``epoch`` are analysed."""
        if self.every <= 0:
            return False
        step = self.every * self.stride
        if self.end is None:
            return (epoch + 1) % step == 0
        return epoch <= self.end and (self.end - epoch) % step == 0

    def upcoming(
        self, epoch: int, count: int, validated: Callable[[int], bool], last: Optional[int] = None
    ) -> List[int]:
        """The first ``count`` analysed epochs from ``epoch`` to ``last`` that have a validation run."""
        found: List[int] = []
        ends = [e for e in (self.end, last) if e is not None]
        for e in range(epoch, min([epoch + 1000 * max(self.every * self.stride, 1), *[e + 1 for e in ends]])):
            if len(found) == count:
                break
            if self.due(e) and validated(e):
                found.append(e)
        return found


class Ledger:
    """One fit's clocks: training time, validation time, and what the monitor spent (seconds).

    Every fit makes a new one, so a callback reused for a second ``fit`` budgets from that fit's
    own clocks. Pictures and report files charge it from other threads, under a lock.

    Args:
        clock: Seconds from an arbitrary origin; ``time.perf_counter`` unless a test fixes it.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()
        self.validation = 0.0
        self._validation_started: Optional[float] = None
        self.batches_trained = 0
        # (clock, validation time so far) at the end of the first and of the latest training batch
        self._first_batch: Optional[Tuple[float, float]] = None
        self._last_batch: Optional[Tuple[float, float]] = None
        self.spent = 0.0  # on the training loop's thread
        self.drawing = 0.0
        self.drawings = 0
        self.saving = 0.0
        self._lock = threading.Lock()

    def start_validation(self) -> None:
        """A validation run begins: its time is not training."""
        self._validation_started = self.clock()

    def end_validation(self) -> None:
        """A validation run ends."""
        if self._validation_started is not None:
            self.validation += self.clock() - self._validation_started
            self._validation_started = None

    def batch_trained(self) -> None:
        """A training batch ended."""
        self.batches_trained += 1
        self._last_batch = (self.clock(), self.validation)
        if self._first_batch is None:
            self._first_batch = self._last_batch

    def training_time(self) -> float:
        """Seconds of the fit spent outside validation so far."""
        return max(self.clock() - self.started - self.validation, 0.0)

    def steady_training_time(self) -> float:
        """Seconds the training batches so far would take at their steady pace.

        The first batch carries one-time costs (allocations, the optimizer's state) that later
        epochs do not repeat: the pace comes from the batches after it, outside validation.
        """
        first, last, n = self._first_batch, self._last_batch, self.batches_trained
        if first is None or last is None or n < 3:
            return self.training_time()
        between = (last[0] - first[0]) - (last[1] - first[1])
        return max(between, 0.0) * n / (n - 1)

    @contextlib.contextmanager
    def charged(self) -> Iterator[None]:
        """Charge the enclosed work (on the training loop's thread) to the monitor."""
        started = self.clock()
        try:
            yield
        finally:
            self.spent += self.clock() - started

    def add_drawing(self, seconds: float) -> None:
        """One set of pictures took ``seconds`` (any thread)."""
        with self._lock:
            self.drawing += seconds
            self.drawings += 1

    def add_saving(self, seconds: float) -> None:
        """Report files took ``seconds`` (any thread)."""
        with self._lock:
            self.saving += seconds

    def cost(self) -> float:
        """Seconds the monitor has cost this fit: its work in the loop, its pictures and its files."""
        with self._lock:
            return self.spent + self.drawing + self.saving

    def expected_drawing(self, prior: float) -> float:
        """Seconds one set of pictures is expected to take: the mean so far, else ``prior``."""
        with self._lock:
            return self.drawing / self.drawings if self.drawings else prior

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
