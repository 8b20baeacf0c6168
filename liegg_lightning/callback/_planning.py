"""The callback's budget, wired to a Trainer: its clocks, which runs are analysed, and the plan.

The arithmetic is in :mod:`liegg_lightning.callback._cost`; the prices come from
:mod:`liegg_lightning.callback._pricing`. This module reads the Trainer, agrees the numbers across
processes (every collective here is reached by every process) and says what it decided.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from liegg_lightning._batches import extract_input
from liegg_lightning._errors import InputError
from liegg_lightning.callback._cost import (
    ANALYSIS_SHARE,
    TIMING_SAMPLES,
    FitShape,
    Ledger,
    Plan,
    Prices,
    Schedule,
    batches_left,
    every_that_fits,
    make_plan,
    may_draw_now,
    refuses_fit,
    short_fit_allowance,
)
from liegg_lightning.callback._names import is_logged_name
from liegg_lightning.callback._pricing import Quote, estimate_solve, measure_prices
from liegg_lightning.callback._state import preserved_state, training_headroom
from liegg_lightning.functional.polarization import choose_derivative, describe_derivative
from liegg_lightning.metric import LieGGMetric

__all__ = ["DRAW_PRIOR", "PlanOptions", "Planner", "probe_of", "spread"]

#: Seconds one set of pictures is assumed to take before the first one was timed; also reserved at
#: the plan for the run's last picture, which is always drawn.
DRAW_PRIOR = 0.15
Model = Callable[[Tensor], Any]


def spread(inputs: Tensor, count: int) -> Tensor:
    """``count`` samples spread evenly over the batch (validation sets are often ordered)."""
    n = inputs.shape[0]
    if count >= n:
        return inputs
    index = torch.linspace(0, n - 1, count).round().long().to(inputs.device)
    return inputs.index_select(0, index)


def probe_of(inputs: Tensor, device: torch.device) -> Tensor:
    """A copy of ``TIMING_SAMPLES`` inputs spread over a batch, on ``device``: what pricing and checks run on."""
    return spread(inputs, TIMING_SAMPLES).detach().to(device).clone()


def _agree(trainer: pl.Trainer, quote: Quote) -> Quote:
    """The quote every process agrees on (one all-reduce, which every process must reach)."""
    if trainer.world_size <= 1:
        return quote
    local = quote.to_tensor(trainer.strategy.root_device)
    return Quote.from_tensor(trainer.strategy.reduce(local, reduce_op="max"))


def _validation_spacing(trainer: pl.Trainer) -> float:
    """Epochs of training between two validation runs of ``fit`` (NaN when the epoch has no length)."""
    per_epoch, check = trainer.num_training_batches, trainer.val_check_batch
    if not math.isfinite(per_epoch) or per_epoch <= 0 or check is None:
        return math.nan
    every = trainer.check_val_every_n_epoch
    return min(float(check) / per_epoch, 1.0) * every if every is not None else float(check) / per_epoch


@dataclass(frozen=True)
class PlanOptions:
    """The callback's options the budget reads.

    Attributes:
        every_n_epochs: The cadence the user set; ``None`` leaves it to the budget (every epoch at most).
        overhead: The share of the training time the monitor may spend.
        prefix: Prefix of the logged names (which monitors watch them).
        input_key: Which element of a batch is the input.
        dataloader_idx: The analysed validation dataloaders; ``None``: all.
        draws: Pictures are drawn when the fit has loggers (the run's last one is reserved for).
    """

    every_n_epochs: Optional[int] = None
    overhead: float = 0.1
    prefix: str = "liegg/"
    input_key: Union[int, str] = 0
    dataloader_idx: Optional[Tuple[int, ...]] = None
    draws: bool = True


class Planner:
    """One callback's budget: the fit's :class:`Ledger`, the :class:`Schedule` and the :class:`Plan`.

    Args:
        options: The callback's options the budget reads.
        metric: The metric an analysis fills (priced on a probe; its derivative mode is fixed here).
    """

    def __init__(self, options: PlanOptions, metric: LieGGMetric) -> None:
        self.options, self.metric = options, metric
        self._model: Optional[Model] = None  # the function analysed, from setup
        self._cuda: Tuple[int, ...] = ()  # CUDA devices whose random states every extra pass keeps
        #: The clock every fit's ledger reads (seconds); a test may fix it.
        self.clock: Callable[[], float] = time.perf_counter
        #: Whether a picture may be drawn now, from (cost so far, expected drawing, budget); a test may fix it.
        self.draw_policy: Callable[[float, float, float], bool] = may_draw_now
        self.ledger = Ledger()
        self.plan: Optional[Plan] = None
        self.schedule = Schedule(self.every)
        self.monitored = False
        self._loaded = False  # the plan came from a checkpoint: a resumed fit keeps it
        self._start_epoch = 0
        self._validations = 0  # validation runs of this fit so far
        self._probe: Optional[Tensor] = None
        self._batch_size = 0  # samples in the validation batch the probe came from
        self._analyses = 0
        self._spent_at_start = 0.0
        self._warned_cost = False

    @property
    def every(self) -> int:
        """Epochs between two requested analyses."""
        return 1 if self.options.every_n_epochs is None else self.options.every_n_epochs

    @property
    def may_thin(self) -> bool:
        """The budget may analyse less often: the cadence was left at its default and nothing monitors it."""
        return self.options.every_n_epochs is None and not self.monitored

    def setup(self, trainer: pl.Trainer, stage: str, model: Model, cuda_devices: Sequence[int]) -> None:
        """The function analysed and the devices it runs on; in ``fit``, which monitors need the cadence."""
        self._model, self._cuda = model, tuple(cuda_devices)
        if stage == "fit":
            self.monitored = self.check_monitors(trainer)

    def check_monitors(self, trainer: pl.Trainer) -> bool:
        """Callbacks that monitor a logged value must see it on the epochs they check it; True if any does."""
        monitored = False
        every, prefix = self.every, self.options.prefix
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            monitor = getattr(cb, "monitor", None)
            # the callback's exact names only: with prefix="val/" a user's "val/loss" is not ours
            if not isinstance(monitor, str) or not monitor.startswith(prefix) or not is_logged_name(
                    monitor[len(prefix):], self.metric.layer_names):
                continue
            monitored = True
            if every == 0:
                raise ValueError(
                    f"{type(cb).__name__} monitors {monitor!r}, but LieGGCallback(every_n_epochs=0) never logs it."
                )
            if isinstance(cb, ModelCheckpoint) and cb.every_n_epochs and cb.every_n_epochs % every != 0:
                raise ValueError(
                    f"ModelCheckpoint(monitor={monitor!r}) checks every {cb.every_n_epochs} epoch(s), but "
                    f"LieGGCallback logs it every {every}: set ModelCheckpoint(every_n_epochs={every}) "
                    "(or a multiple of it)."
                )
            if isinstance(cb, EarlyStopping) and every > 1 and cb.strict:
                raise ValueError(
                    f"EarlyStopping(monitor={monitor!r}) runs every epoch, but LieGGCallback logs it every "
                    f"{every} epochs: set EarlyStopping(strict=False), and its patience then "
                    "counts analyses (epochs without one do not count)."
                )
        return monitored

    # ------------------------------------------------------------------ clocks and progress

    def start_fit(self, trainer: pl.Trainer) -> None:
        """A fit begins: fresh clocks; a plan carries over only from the checkpoint it resumes."""
        self.ledger = Ledger(self.clock)
        if not (self._loaded and self.may_thin):  # a saved plan only where the cadence was left to the budget
            self.plan = None
            self.schedule = Schedule(self.every)
        self._loaded = False
        self._start_epoch = trainer.current_epoch
        self._validations, self._analyses, self._warned_cost = 0, 0, False

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation run of ``fit`` is analysed (called once per run)."""
        self._validations += 1
        return self.schedule.due(trainer.current_epoch)

    def begin(self) -> None:
        """An analysis begins."""
        self._spent_at_start = self.ledger.spent

    def start_validation(self) -> None:
        """A validation run of ``fit`` begins: its time is not training."""
        self.ledger.start_validation()

    def end_validation(self) -> None:
        """A validation run of ``fit`` ends."""
        self.ledger.end_validation()

    def batch_trained(self) -> None:
        """A training batch ended."""
        self.ledger.batch_trained()

    @contextlib.contextmanager
    def charged(self) -> Iterator[None]:
        """Charge the enclosed work (on the training loop's thread) to this fit's monitor."""
        with self.ledger.charged():
            yield

    def pass_cap(self, trainer: pl.Trainer) -> Optional[int]:
        """On CUDA, the bytes one derivative pass may take: the run's own headroom, the least over ranks.

        Every rank reaches the reduction (or none does: the device type is the same on all), so
        all ranks chunk their passes alike. ``None`` on CPU, where ``memory_budget`` alone bounds them.
        """
        headroom = training_headroom(self._cuda)
        if headroom is None:
            return None
        least = trainer.strategy.reduce(torch.tensor(float(headroom), device=trainer.strategy.root_device),
                                        reduce_op="min")
        return max(int(least), 1)

    def spent_on_loop(self) -> float:
        """Seconds the monitor has spent on the training loop's thread since the fit (or evaluation) began."""
        return self.ledger.spent

    def drawing_account(self) -> Callable[[float], None]:
        """What charges pictures' seconds (from any thread) to this fit, even when they finish after it."""
        return self.ledger.add_drawing

    def saving_account(self) -> Callable[[float], None]:
        """What charges report files' seconds (from any thread) to this fit."""
        return self.ledger.add_saving

    def analysed_batches(self, counts: Sequence[Union[int, float]]) -> int:
        """Batches of the analysed dataloaders, from the Trainer's counts."""
        selected = self.options.dataloader_idx
        indices = range(len(counts)) if selected is None else selected
        return sum(int(counts[i]) for i in indices if i < len(counts) and math.isfinite(counts[i]))

    def _batches_left(self, trainer: pl.Trainer) -> float:
        """Training batches this fit has left (``max_epochs``, ``max_steps``); ``inf`` if unknown."""
        return batches_left(trainer.num_training_batches, trainer.max_epochs, self._start_epoch,
                            self.ledger.batches_trained, trainer.max_steps, trainer.global_step,
                            trainer.accumulate_grad_batches)

    def _training_left(self, trainer: pl.Trainer, done: float) -> float:
        left = self._batches_left(trainer)
        if not math.isfinite(left) or not self.ledger.batches_trained:
            return math.inf
        return left * done / self.ledger.batches_trained

    def _interval(self, trainer: pl.Trainer, steady: float) -> float:
        """Seconds of steady training between two requested analyses, on average."""
        per_epoch, trained = trainer.num_training_batches, self.ledger.batches_trained
        if not math.isfinite(per_epoch) or per_epoch <= 0 or trained <= 0:
            return steady / max(self._validations, 1)  # epochs without a length: validation runs apart
        epoch_time = steady * per_epoch / trained
        spacing = _validation_spacing(trainer)
        if spacing < 1:  # several validation runs an epoch, each analysed in an analysed epoch
            return epoch_time * self.every / max(round(1 / spacing), 1)
        return epoch_time * max(self.every, spacing)

    def budget_left(self) -> float:
        """Seconds of budget this fit has not spent yet."""
        return self.options.overhead * self.ledger.training_time() - self.ledger.cost()

    def may_draw(self) -> bool:
        """Whether a picture fits the budget now, leaving room for the run's last one."""
        return self.draw_policy(self.ledger.cost(), self.ledger.expected_drawing(DRAW_PRIOR),
                                self.options.overhead * self.ledger.training_time())

    # ------------------------------------------------------------------ the plan

    def keep_probe(self, probe: Tensor, batch_size: int) -> None:
        """Inputs from a validation batch of ``batch_size`` samples, to price the first analysis on."""
        if self._probe is None:
            self._probe, self._batch_size = probe, batch_size

    def _fetch_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[Tensor]:
        """Without a sanity check: the first batch of the first analysed dataloader, its RNG draws undone."""
        loaders = trainer.val_dataloaders
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        index = 0 if self.options.dataloader_idx is None else self.options.dataloader_idx[0]
        if loaders is None or index >= len(loaders) or loaders[index] is None:
            return None
        with preserved_state(pl_module):
            batch = next(iter(loaders[index]), None)
        if batch is None:
            return None
        inputs = extract_input(batch, self.options.input_key)
        self.metric.action.validate_input(inputs)
        self.keep_probe(probe_of(inputs, pl_module.device), inputs.shape[0])
        return self._probe

    def _local_quote(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Quote:
        """This process's prices, before the processes agree on them."""
        try:
            probe = self._probe if self._probe is not None else self._fetch_probe(trainer, pl_module)
            if probe is None or probe.shape[0] == 0:
                return Quote()
            model, overhead = self._model or pl_module, self.options.overhead
            fit_training = self.ledger.steady_training_time() + self._training_left(
                trainer, self.ledger.steady_training_time())
            solve = estimate_solve(self.metric.action.num_generators, self.metric.num_groups, probe.device)
            if self.may_thin and solve > max(overhead * fit_training, short_fit_allowance(overhead)):
                # the solve alone is over the whole budget: refused below, without timing a derivative pass
                with preserved_state(pl_module, self._cuda):
                    rows = self.metric.rows_per_sample(model, probe[:2].clone())
                return Quote(priced=True, reverse_call=0.0, reverse_sample=0.0, forward_call=0.0, forward_sample=0.0,
                             accumulate_call=0.0, accumulate_sample=0.0, keep_state=0.0, solve=solve,
                             rows_per_sample=float(rows))
            measured = measure_prices(self.metric, model, probe, pl_module, self._cuda,
                                      ANALYSIS_SHARE * overhead * fit_training, solve)
        except InputError:
            raise
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: pricing the analysis failed ({err!r}).")
            measured = None
        return Quote(failed=True) if measured is None else measured

    def make_plan(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Price, agree and fix the plan on every process; whether this validation run is analysed."""
        started = time.perf_counter()
        try:
            local = self._local_quote(trainer, pl_module)
        except InputError as err:
            rank_zero_warn(f"LieGGCallback: the validation data does not fit the metric ({err}); no analysis "
                           "during this fit. The training goes on.")
            local = Quote(failed=True)
        local = dataclasses.replace(local, steady=self.ledger.steady_training_time(),
                                    batches=float(self.analysed_batches(trainer.num_val_batches)),
                                    batch_size=float(self._batch_size))
        agreed = _agree(trainer, local)
        if agreed.failed:
            self.schedule = Schedule(0)  # every process switches off together
            rank_zero_warn("LieGGCallback: the model could not be analysed on at least one process; "
                           "no analysis during this fit.")
            return False
        if not agreed.priced:
            return False  # no process had inputs: priced at the next analysed run
        return self._fix_plan(trainer, agreed, started)

    def _fix_plan(self, trainer: pl.Trainer, agreed: Quote, started: float) -> bool:
        overhead, m = self.options.overhead, self.metric.action.num_generators
        seconds = agreed.probe_seconds()
        mode = choose_derivative(self.metric.derivative, m, int(agreed.rows_per_sample), seconds)
        if mode not in seconds:  # the mode failed on some process: every process switches off together
            self.schedule = Schedule(0)
            rank_zero_warn(f"LieGGCallback: the {mode}-mode derivative pass failed on at least one process; no "
                           "analysis during this fit.")
            return False
        self.metric.fix_derivative(mode)
        prices = agreed.prices(mode)
        picture = DRAW_PRIOR if self.options.draws and trainer.loggers else 0.0  # the run's last, always drawn
        one_time = self.ledger.cost() + time.perf_counter() - started + picture
        interval = self._interval(trainer, agreed.steady)
        remaining = self._training_left(trainer, agreed.steady) if agreed.steady > 0 else math.inf
        shape = FitShape(interval, remaining, one_time, int(agreed.batches), int(agreed.batch_size),
                         int(agreed.rows_per_sample), m)
        plan = make_plan(prices, shape, overhead, self.may_thin)
        if self.may_thin and math.isfinite(remaining) and refuses_fit(plan.smallest, picture, overhead,
                                                                      interval + remaining):
            self.schedule = Schedule(0)
            rank_zero_warn(
                f"LieGGCallback: one analysis would cost at least {plan.smallest:.2f} s, more than this fit's whole "
                f"budget ({overhead * (interval + remaining):.2f} s, `overhead={overhead:g}`, or "
                f"{short_fit_allowance(overhead):.2f} s for a short fit): no analysis during `fit`. Call "
                "`trainer.validate()` after it (always analysed), or allow more (`overhead`)."
            )
            return False
        self.plan = plan
        # thinned: counted back from the fit's last epoch, so the last analysis sees the trained network
        end = self._last_epoch(trainer) if plan.epoch_stride > 1 else None
        self.schedule = Schedule(self.every, plan.epoch_stride, end)
        self._say(trainer, shape, prices, mode, seconds)
        return self.schedule.due(trainer.current_epoch)

    def _last_epoch(self, trainer: pl.Trainer) -> Optional[int]:
        """The fit's last epoch from ``max_epochs`` and ``max_steps``; ``None`` when neither bounds it."""
        left = self._batches_left(trainer)
        if not math.isfinite(left):
            return None
        epochs = (self.ledger.batches_trained + left) / trainer.num_training_batches
        # a last epoch cut short by max_steps has no epoch-end validation; only a mid-epoch one can run in it
        partial_validates = _validation_spacing(trainer) < 1
        return self._start_epoch + (math.ceil(epochs) if partial_validates else math.floor(epochs)) - 1

    def _cadence(self, trainer: pl.Trainer) -> str:
        """Which validation runs are analysed, in words that hold in every loop shape."""
        every_val = trainer.check_val_every_n_epoch

        def validated(epoch: int) -> bool:
            return every_val is None or (epoch + 1) % every_val == 0

        epochs = self.schedule.upcoming(trainer.current_epoch, 4, validated, self._last_epoch(trainer))
        spacing = _validation_spacing(trainer)
        runs = f" ({round(1 / spacing)} validation runs each)" if math.isfinite(spacing) and spacing < 1 else ""
        thinned = f"; every {self.every * self.schedule.stride} epochs to stay within the budget" \
            if self.schedule.stride > 1 else ""
        listed = ", ".join(map(str, epochs[:3])) + (", ..." if len(epochs) > 3 else "") or "none left in this fit"
        return f"the validation runs of epochs {listed}{runs}{thinned}"

    def _say(self, trainer: pl.Trainer, shape: FitShape, prices: Prices, mode: str, seconds: Dict[str, float]) -> None:
        plan, overhead = self.plan, self.options.overhead
        assert plan is not None
        timed = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()) or "not timed"
        every = f", every {plan.batch_stride} batches" if plan.batch_stride > 1 else ""
        rank_zero_info(
            f"LieGGCallback: {plan.samples} samples per analysis (of {shape.batches * shape.batch_size}{every}), "
            f"about {plan.cost * 1e3:.0f} ms for {shape.interval * plan.epoch_stride:.2f} s of training between "
            f"analyses (`overhead={overhead:g}`); analysed: {self._cadence(trainer)}; derivative: "
            f"{describe_derivative(mode, shape.num_generators, shape.rows_per_sample, self.metric.output_mode)} "
            f"({timed} on {TIMING_SAMPLES} samples)."
        )
        if plan.fits:
            return
        if not self.may_thin:
            fits = every_that_fits(plan.cost, shape.interval / self.every, overhead, 1)
            rank_zero_warn(
                f"LieGGCallback: the smallest analysis ({plan.samples} samples, {plan.cost * 1e3:.0f} ms) costs more "
                f"than the {max(plan.budget, 0) * 1e3:.0f} ms `overhead={overhead:g}` leaves each; the cadence is "
                f"kept ({'as you set it' if self.options.every_n_epochs is not None else 'a monitor needs it'}). "
                f"`every_n_epochs={fits}` or a larger `overhead` would stay within it."
            )
        else:  # what the defaults promise a short fit: said, not warned about
            rank_zero_info(
                f"LieGGCallback: this fit is short for `overhead={overhead:g}`: what it pays once (the sanity "
                f"check, the plan and the last picture, {shape.one_time * 1e3:.0f} ms) takes most of its budget. "
                f"One analysis ({plan.cost * 1e3:.0f} ms) comes all the same, at the fit's end. Allow more "
                "(`overhead`) to analyse more often."
            )

    def analysed(self, trainer: pl.Trainer) -> None:
        """A fit analysis ended: say once when one costs more than the budget allows."""
        self._analyses += 1
        if self._warned_cost or self._analyses < 2 or self.plan is None:
            return
        cost = self.ledger.spent - self._spent_at_start
        interval = self._interval(trainer, self.ledger.steady_training_time()) * self.schedule.stride
        if interval <= 0 or cost <= self.options.overhead * interval:
            return
        self._warned_cost = True
        every = every_that_fits(cost, interval, self.options.overhead, self.every * self.schedule.stride)
        rank_zero_warn(
            f"LieGGCallback: one analysis of {self.plan.samples} samples costs {cost * 1e3:.0f} ms, "
            f"{cost / interval:.0%} of the {interval:.2f} s of training between two analyses, over "
            f"`overhead={self.options.overhead:g}`. To stay within it, analyse less often: `every_n_epochs={every}`."
        )

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> Dict[str, Any]:
        """The plan as plain values."""
        plan = self.plan
        return {
            "planned_samples": None if plan is None else plan.samples,
            "batch_stride": 1 if plan is None else plan.batch_stride,
            "epoch_stride": self.schedule.stride,
            "schedule_end": self.schedule.end,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the plan of the fit a checkpoint was saved in."""
        samples = state.get("planned_samples")
        stride = int(state.get("epoch_stride", 1))
        self.plan = None if samples is None else Plan(int(samples), int(state.get("batch_stride", 1)), stride)
        end = state.get("schedule_end", state.get("anchor_epoch") if stride > 1 else None)
        self.schedule = Schedule(self.every, stride, None if end is None else int(end))
        self._loaded = self.plan is not None
