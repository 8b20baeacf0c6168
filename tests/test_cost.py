"""The cost model: plans from fixed prices, the fit's clocks, the schedule, and what the callback charges.

The plan's arithmetic is checked table-driven with fixed prices; the expected sample counts are
computed here by hand from those prices, not by the code under test.
"""

from __future__ import annotations

import ast
import math
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
from _lightning_models import TinyRegressor, o5_data, quiet_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

import liegg_lightning.callback._pictures as jobs_module
from liegg_lightning import LieGGCallback, VectorAction
from liegg_lightning.callback._cost import (
    FitShape,
    Ledger,
    Plan,
    Prices,
    Schedule,
    analysis_budget,
    batches_left,
    every_that_fits,
    make_plan,
    may_draw_now,
    price_line,
    refuses_fit,
    short_fit_allowance,
)
from liegg_lightning.callback._pricing import Quote, modes_to_time
from liegg_lightning.callback._worker import Worker

ACTION = VectorAction(dim=5, components=2)  # m = 25 generators; TinyRegressor has 3 outputs
PACKAGE = Path(__file__).resolve().parents[1] / "liegg_lightning"


def _loader(n: int, batch_size: int, seed: int = 1) -> DataLoader:
    return DataLoader(o5_data(n, seed=seed), batch_size=batch_size)


def _shape(interval: float, remaining: float, batches: int, one_time: float = 0.0) -> FitShape:
    return FitShape(interval=interval, remaining=remaining, one_time=one_time, batches=batches, batch_size=32,
                    rows_per_sample=3, num_generators=25)


CHEAP_BATCHES = Prices(0.001, 0.002, 0.0015, 0.001, 0.001, 0.1)
COSTLY_BATCHES = Prices(0.05, 0.002, 0.001, 0.001, 0.001, 0.1)
# the smallest analysis: 4 batches at 8 ms, 34 samples (4 rows per generator, 3 a sample) at 1.3 ms, a 20 ms solve
SMALL_FIT = Prices(0.006, 0.0007, 0.001, 0.0006, 0.001, 0.02)

PLANS = [
    # (prices, fit, may_thin) -> (samples, batch stride, epoch stride); each worked out by hand:
    # 40% of 10% of 10 s less the solve: 0.3 s; 8 batches at 3.5 ms leave 0.272 s; 3 ms a sample
    (CHEAP_BATCHES, _shape(10.0, 0.0, 8), True, (int((0.4 * 0.1 * 10.0 - 0.1 - 8 * 0.0035) / 0.003), 1, 1)),
    # 32 batches at 52 ms are far over half the room: every 4th batch (32 // 8, never fewer than 8 batches)
    (COSTLY_BATCHES, _shape(20.0, 0.0, 32), True, (int((0.4 * 0.1 * 20.0 - 0.1 - 8 * 0.052) / 0.003), 4, 1)),
    # 1 s an epoch, 4 s left: the smallest analysis (96 ms) fits every 3rd epoch, two sharing 10% of 5 s
    (SMALL_FIT, _shape(1.0, 4.0, 4), True, (int((0.4 * 0.1 * 5.0 / 2 - 0.02 - 4 * 0.008) / 0.0013), 1, 3)),
    # the same fit with the cadence chosen by the user: never thinned, the floor of 34 samples
    (SMALL_FIT, _shape(1.0, 4.0, 4), False, (34, 1, 1)),
    # 0.2 s paid once: one analysis at the fit's end gets 0.3 s
    (SMALL_FIT, _shape(1.0, 4.0, 4, one_time=0.2), True, (int((0.4 * (0.1 * 5.0 - 0.2) - 0.02 - 4 * 0.008) / 0.0013),
                                                          1, 5)),
]


@pytest.mark.parametrize(("prices", "fit", "may_thin", "expected"), PLANS)
def test_plans_from_fixed_prices(prices: Prices, fit: FitShape, may_thin: bool, expected: Any) -> None:
    plan = make_plan(prices, fit, overhead=0.1, may_thin=may_thin)
    assert (plan.samples, plan.batch_stride, plan.epoch_stride) == expected
    assert expected[0] in (90, 94, 36, 34, 52)  # the hand computations above, spelled out


def test_samples_too_cheap_to_time_are_all_taken_only_where_there_is_room() -> None:
    free = Prices(0.001, 0.0, 0.001, 0.0, 0.001, 0.01)
    assert make_plan(free, _shape(10.0, 0.0, 8), overhead=0.1, may_thin=False).samples == 8 * 32
    assert make_plan(free, _shape(0.001, 0.0, 8), overhead=0.1, may_thin=False).samples == 34  # no room: the floor


def test_a_fit_whose_one_time_costs_take_its_budget_has_a_plan_over_budget() -> None:
    plan = make_plan(SMALL_FIT, _shape(1.0, 4.0, 4, one_time=0.6), overhead=0.1, may_thin=True)
    assert plan.epoch_stride == 5  # one analysis, at the fit's end
    assert not plan.fits  # and it says so
    assert plan.smallest == pytest.approx(4 * 0.008 + 34 * 0.0013 + 0.02)


def test_samples_are_spread_over_the_analysed_batches() -> None:
    plan = Plan(samples=90, batch_stride=1, epoch_stride=1)
    assert plan.per_batch(8) == math.ceil(90 / 8)
    assert Plan(samples=94, batch_stride=4, epoch_stride=1).per_batch(32) == math.ceil(94 / 8)
    assert plan.per_batch(0) == 90  # no batch counted: never a division by zero


@pytest.mark.parametrize(("every", "stride", "end", "analysed"), [
    (1, 1, None, [0, 1, 2, 3, 4, 5, 6]),
    (3, 1, None, [2, 5]),  # every 3rd epoch, as ModelCheckpoint(every_n_epochs=3) counts them
    (1, 3, 4, [1, 4]),  # thinned to every 3rd, counted back from the fit's last epoch (4)
    (1, 5, 4, [4]),  # one analysis, at the end
    (2, 2, 6, [2, 6]),
    (0, 1, None, []),  # never during fit
])
def test_the_schedule_analyses_every_nth_epoch_or_back_from_the_last(
    every: int, stride: int, end: Any, analysed: List[int]
) -> None:
    schedule = Schedule(every, stride, end)
    assert [e for e in range(7) if schedule.due(e)] == analysed
    # the epochs the plan line names: only those that have a validation run (here every 2nd epoch)
    expected = [e for e in range(100) if schedule.due(e) and (e + 1) % 2 == 0][:2]
    assert schedule.upcoming(0, 2, lambda e: (e + 1) % 2 == 0) == expected


def test_the_steady_pace_leaves_out_the_first_batch() -> None:
    now = [0.0]
    ledger = Ledger(clock=lambda: now[0])
    for t in (10.0, 12.0, 14.0):
        now[0] = t
        ledger.batch_trained()
    now[0] = 15.0
    ledger.start_validation()
    now[0] = 16.0
    ledger.end_validation()
    for t in (18.0, 19.0):
        now[0] = t
        ledger.batch_trained()
    # 5 batches: 9 s from the end of the first to the end of the last, 1 s of it validation
    assert ledger.steady_training_time() == pytest.approx(8.0 * 5 / 4)
    assert ledger.training_time() == pytest.approx(19.0 - 1.0)
    short = Ledger(clock=lambda: now[0])
    now[0] = 25.0
    short.batch_trained()
    assert short.steady_training_time() == pytest.approx(25.0 - 19.0)  # too few batches for a pace


def test_a_line_through_two_timings_prices_a_call_and_a_sample() -> None:
    assert price_line(small=0.012, full=0.072, few=2, many=32) == pytest.approx((0.008, 0.002))
    assert price_line(small=0.1, full=0.1, few=2, many=2) == pytest.approx((0.0, 0.05))


def test_the_training_left_comes_from_the_epochs_and_steps_left() -> None:
    assert batches_left(4, 5, 0, 4, -1, 4, 1) == 16
    assert batches_left(4, 5, 0, 4, 10, 4, 2) == 12  # 6 optimizer steps left, 2 batches each
    assert batches_left(4, -1, 0, 4, -1, 4, 1) == math.inf  # no end in sight
    assert batches_left(math.inf, 5, 0, 4, -1, 4, 1) == math.inf  # an iterable dataset without a length
    assert batches_left(0, 5, 0, 0, -1, 0, 1) == math.inf  # no batch an epoch: never divided by
    assert batches_left(4, 7, 3, 8, -1, 20, 1) == 8  # resumed at epoch 3: 2 epochs of 4 batches


def test_on_a_long_fit_each_analysis_pays_its_share_of_the_one_time_costs() -> None:
    # 1 s between analyses, 99 s of training left: 100 analyses share 10 s less 0.5 s once
    assert analysis_budget(0.1, 1, 1.0, 99.0, 0.5) == pytest.approx((10.0 - 0.5) / 100)
    assert analysis_budget(0.1, 4, 1.0, 99.0, 0.5) == pytest.approx((10.0 - 0.5) / 25)  # every 4th: 25
    assert analysis_budget(0.1, 1, 1.0, math.inf, 0.5) == pytest.approx(0.1)  # length unknown
    assert analysis_budget(0.1, 1, 0.0, 5.0, 0.5) == 0.0  # no training measured yet: never divided by


def test_a_picture_waits_when_it_and_the_last_one_would_not_fit() -> None:
    # 0.6 s spent, + 0.1 now + 0.1 at the end: 0.8, over 80% of 0.95 (20% kept for what is not timed)
    assert not may_draw_now(cost=0.6, expected_drawing=0.1, budget=0.95)
    assert may_draw_now(cost=0.6, expected_drawing=0.1, budget=1.05)
    worker, drawn = Worker(), []
    worker.defer(lambda: drawn.append("deferred"))
    assert worker.finish(5.0, lambda seconds: None) == 0
    assert drawn == ["deferred"]  # the run's last analysis is always drawn at the end


def test_which_every_n_epochs_fits() -> None:
    assert every_that_fits(cost=0.5, interval=1.0, overhead=0.1, every=1) == 5
    assert every_that_fits(cost=0.05, interval=1.0, overhead=0.1, every=2) == 2
    assert every_that_fits(cost=0.5, interval=0.0, overhead=0.1, every=1) == 1  # no interval: kept


@pytest.mark.parametrize(("loaded", "seconds", "expected"), [
    (False, 0.01, ["reverse"]),  # forward's first use (~0.5 s) is over what the fit's analyses may spend
    (False, 40.0, ["reverse", "forward"]),
    (True, 0.01, ["reverse", "forward"]),  # already paid in this process
])
def test_forward_mode_is_tried_only_where_its_first_use_can_pay_off(
    loaded: bool, seconds: float, expected: List[str]
) -> None:
    from liegg_lightning import LieGGMetric

    metric = LieGGMetric(ACTION)
    assert modes_to_time(metric, rows_per_sample=8, analysis_seconds=seconds, forward_loaded=loaded) == expected
    # one mode needs over 4x the passes of the other: only that one is timed
    assert modes_to_time(metric, rows_per_sample=200, analysis_seconds=40.0, forward_loaded=True) == ["forward"]


@pytest.mark.parametrize(("smallest", "reserved", "fit_training", "refused"), [
    (0.010, 0.15, 0.14, False),  # a 10 ms analysis on a 0.14 s fit: over 10 % of it, but cheap in seconds
    (0.010, 0.00, 10.0, False),  # within 10 % of a long fit
    (0.400, 0.15, 0.14, True),  # with its picture over the 0.5 s allowance, and over 10 % of the fit
    (0.400, 0.15, 5.0, False),  # the same on a fit whose 10 % holds it
    (30.0, 0.00, 3.0, True),  # a huge algebra (a 30 s solve) on a 3 s fit
])
def test_a_short_fit_is_refused_only_an_analysis_that_is_costly_in_seconds(
    smallest: float, reserved: float, fit_training: float, refused: bool
) -> None:
    assert short_fit_allowance(0.1) == pytest.approx(0.5)
    assert refuses_fit(smallest, reserved, 0.1, fit_training) is refused
    assert refuses_fit(smallest, reserved, 1e-6, fit_training)  # a tiny overhead the user set leaves no allowance


def test_the_quote_crosses_processes_by_name_and_agrees_on_the_slowest() -> None:
    import torch

    fast = Quote(priced=True, reverse_call=0.001, reverse_sample=0.002, forward_call=math.inf, forward_sample=math.inf,
                 accumulate_call=0.003, accumulate_sample=0.004, keep_state=0.005, solve=0.006, rows_per_sample=3.0,
                 steady=2.0, batches=4.0, batch_size=64.0)
    slow = Quote(priced=True, reverse_call=0.010, reverse_sample=0.001, forward_call=0.1, forward_sample=0.1,
                 accumulate_call=0.001, accumulate_sample=0.008, keep_state=0.002, solve=0.030, rows_per_sample=3.0,
                 steady=1.5, batches=4.0, batch_size=63.0)
    unpriced = Quote()  # a process without inputs
    assert Quote.from_tensor(fast.to_tensor(torch.device("cpu"))) == fast
    # what an all-reduce of the largest does to the three processes' tensors
    stacked = torch.stack([q.to_tensor(torch.device("cpu")) for q in (fast, slow, unpriced)])
    agreed = Quote.from_tensor(stacked.max(dim=0).values)
    assert agreed == Quote(priced=True, reverse_call=0.010, reverse_sample=0.002, forward_call=math.inf,
                           forward_sample=math.inf, accumulate_call=0.003, accumulate_sample=0.008, keep_state=0.005,
                           solve=0.030, rows_per_sample=3.0, steady=0.0, batches=4.0, batch_size=64.0)
    # forward mode failed on one process: no process plans with it
    assert set(agreed.probe_seconds()) == {"reverse"}
    assert agreed.probe_seconds()["reverse"] == pytest.approx(0.010 + 32 * 0.002)
    assert agreed.prices("reverse") == Prices(0.010, 0.002, 0.003, 0.008, 0.005, 0.030)
    # a failure anywhere is a failure everywhere
    failed = torch.stack([fast.to_tensor(torch.device("cpu")), Quote(failed=True).to_tensor(torch.device("cpu"))])
    assert Quote.from_tensor(failed.max(dim=0).values).failed


def test_the_cost_model_imports_neither_torch_nor_lightning() -> None:
    tree = ast.parse((PACKAGE / "callback" / "_cost.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "lightning", "liegg_lightning", "numpy"}, imported


# ----------------------------------------------------------------------------- the callback's use of it


def test_everything_the_callback_does_in_the_loop_is_charged() -> None:
    now = [0.0]
    callback = LieGGCallback(ACTION, log_images=False, save_reports=False, every_n_epochs=1)
    calls: Dict[str, int] = {"update": 0, "compute": 0}
    update, compute = callback.metric.update, callback.metric.compute

    def slow_update(*args: Any) -> None:
        calls["update"] += 1
        now[0] += 1.0  # every derivative pass "takes" one second of the fake clock
        update(*args)

    def slow_compute() -> Any:
        calls["compute"] += 1
        now[0] += 1.0
        return compute()

    callback.metric.update = slow_update  # type: ignore[method-assign]
    callback.metric.compute = slow_compute  # type: ignore[method-assign]
    callback.planner.clock = lambda: now[0]
    quiet_trainer(max_epochs=3, callbacks=[callback]).fit(TinyRegressor(), _loader(128, 32), _loader(256, 32))
    assert len(callback.history) == 3
    assert calls["compute"] == 3
    # the fake clock moved only inside the analysis' work: all of it was charged to the ledger
    assert callback.planner.ledger.spent == pytest.approx(calls["update"] + calls["compute"])


def test_report_files_are_written_in_order_off_the_training_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: List[str] = []
    threads: List[str] = []
    original = jobs_module.save_report

    def slow_save(loggers: Any, report: Any, filename: str) -> Any:
        time.sleep(0.05)  # a slow disk
        threads.append(threading.current_thread().name)
        written.append(filename)
        return original(loggers, report, filename)

    monkeypatch.setattr(jobs_module, "save_report", slow_save)  # the report-file job
    callback = LieGGCallback(ACTION, log_images=False, every_n_epochs=1, max_samples=None)
    trainer = quiet_trainer(max_epochs=3, callbacks=[callback], logger=TensorBoardLogger(str(tmp_path), name="run"))
    trainer.fit(TinyRegressor(), _loader(128, 32), _loader(128, 32))
    # every file is on disk when fit returns, in the order of the analyses, none written by the loop
    assert [name.split("_epoch")[1][:4] for name in written] == ["0000", "0001", "0002"]
    assert all(name != threading.main_thread().name for name in threads)
    assert len(list(tmp_path.rglob("*-report_*.json"))) == 3
    assert callback.planner.ledger.saving > 0  # the writer's time is charged to the fit's ledger


def test_an_analysis_over_budget_says_which_every_n_epochs_fits() -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    # a monitor keeps the analyses every epoch, however small the budget: then it is said
    callback = LieGGCallback(ACTION, overhead=1e-4, log_images=False, save_reports=False)
    stopper = EarlyStopping(monitor="liegg/symmetry_variance", patience=10)
    with pytest.warns(UserWarning, match=r"analyse less often: `every_n_epochs=\d+`") as record:
        quiet_trainer(max_epochs=3, callbacks=[callback, stopper]).fit(
            TinyRegressor(), _loader(128, 32), _loader(128, 32))
    assert callback.planner.schedule.stride == 1
    assert [h["epoch"] for h in callback.history] == [0, 1, 2]
    said = [str(w.message) for w in record if "every_n_epochs=" in str(w.message) and "one analysis" in str(w.message)]
    assert len(said) == 1  # once, not every epoch
    every = int(said[0].split("every_n_epochs=")[1].rstrip("`."))
    assert every > 1


def test_the_plan_is_kept_in_the_checkpoint() -> None:
    callback = LieGGCallback(ACTION)
    callback.planner.plan = Plan(samples=34, batch_stride=4, epoch_stride=3)
    callback.planner.schedule = Schedule(1, 3, 5)
    other = LieGGCallback(ACTION)
    other.load_state_dict(callback.state_dict())
    assert other.planned_samples == 34
    assert other.planner.plan is not None
    assert other.planner.plan.batch_stride == 4
    assert (other.planner.schedule.stride, other.planner.schedule.end) == (3, 5)


def test_a_second_fit_with_the_same_callback_budgets_from_its_own_clocks() -> None:
    reused = LieGGCallback(ACTION, log_images=False, save_reports=False, every_n_epochs=1)
    quiet_trainer(max_epochs=2, callbacks=[reused]).fit(TinyRegressor(), _loader(128, 32), _loader(128, 32))
    first_plan, first_ledger = reused.planner.plan, reused.planner.ledger
    before = len(reused.history)
    fresh = LieGGCallback(ACTION, log_images=False, save_reports=False, every_n_epochs=1)
    for callback in (reused, fresh):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quiet_trainer(max_epochs=3, callbacks=[callback]).fit(TinyRegressor(), _loader(128, 32), _loader(64, 32))
    # a new ledger that counts only the second fit's batches (4 an epoch), and a plan made in it
    assert reused.planner.ledger is not first_ledger
    assert reused.planner.ledger.batches_trained == fresh.planner.ledger.batches_trained == 12
    assert reused.planner.plan is not first_plan
    assert reused.planner.plan is not None
    # the same analyses as a fresh callback on the same fit
    assert [h["epoch"] for h in reused.history[before:]] == [h["epoch"] for h in fresh.history] == [0, 1, 2]
    assert reused.planner.ledger.training_time() > 0


def test_the_callback_module_is_hooks_and_wiring() -> None:
    lines = (PACKAGE / "callback" / "callback.py").read_text().splitlines()
    assert len(lines) <= 450, len(lines)
