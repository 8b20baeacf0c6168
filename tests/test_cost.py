"""The cost budget: what the plan prices, what is charged, where files are written, when it warns.

The plan's arithmetic is checked with fixed prices (the timing functions are replaced), so the
expected sample counts are computed here by hand from those prices, not by the code under test.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest
import torch
from _lightning_models import TinyRegressor, o5_data, quiet_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

import liegg_lightning.callback as callback_module
from liegg_lightning import LieGGCallback, VectorAction

ACTION = VectorAction(dim=5, components=2)  # m = 25 generators; TinyRegressor has 3 outputs


def _loader(n: int, batch_size: int, seed: int = 1) -> DataLoader:
    return DataLoader(o5_data(n, seed=seed), batch_size=batch_size)


def _fixed_prices(
    monkeypatch: pytest.MonkeyPatch, callback: LieGGCallback, *, per_call: float, per_sample: float,
    acc_call: float, acc_sample: float, state: float, solve: float, training: float, one_time: float = 0.0,
) -> None:
    """Replace the plan's clocks by fixed prices (seconds)."""
    monkeypatch.setattr(callback, "_time_mode", lambda *a, **k: (per_call, per_sample, None))
    monkeypatch.setattr(callback, "_time_overheads", lambda *a, **k: [acc_call, acc_sample, state, solve])
    monkeypatch.setattr(callback, "_steady_training_time", lambda: training)
    monkeypatch.setattr(callback, "_one_time_costs", lambda *a, **k: one_time)


def _count_updates(monkeypatch: pytest.MonkeyPatch, callback: LieGGCallback) -> List[int]:
    sizes: List[int] = []
    original = callback.metric.update

    def recording(model: Any, inputs: torch.Tensor) -> None:
        sizes.append(inputs.shape[0])
        original(model, inputs)

    monkeypatch.setattr(callback.metric, "update", recording)
    return sizes


def test_the_plan_spends_half_the_budget_on_batches_samples_and_the_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    callback = LieGGCallback(ACTION, overhead=0.1, log_images=False)
    _fixed_prices(monkeypatch, callback, per_call=0.001, per_sample=0.002, acc_call=0.0015, acc_sample=0.001,
                  state=0.001, solve=0.1, training=10.0)
    sizes = _count_updates(monkeypatch, callback)
    quiet_trainer(max_epochs=1, callbacks=[callback], num_sanity_val_steps=0).fit(
        TinyRegressor(), _loader(128, 32), _loader(256, 32))
    # 40% of 10% of 10 s, less the solve: 0.3 s; 8 batches at 3.5 ms: 0.272 s left; 3 ms a sample
    assert callback.planned_samples == int((0.4 * 0.1 * 10.0 - 0.1 - 8 * 0.0035) / 0.003) == 90
    assert callback._batch_stride == 1
    assert sizes == [math.ceil(90 / 8)] * 8  # spread over every batch


def test_costly_batches_are_strided_but_never_fewer_than_eight(monkeypatch: pytest.MonkeyPatch) -> None:
    callback = LieGGCallback(ACTION, overhead=0.1, log_images=False)
    # 32 batches at 52 ms = 1.66 s, far over half the room (0.35 s): every 4th batch (32 // 8), not every 5th
    _fixed_prices(monkeypatch, callback, per_call=0.05, per_sample=0.002, acc_call=0.001, acc_sample=0.001,
                  state=0.001, solve=0.1, training=20.0)
    sizes = _count_updates(monkeypatch, callback)
    quiet_trainer(max_epochs=1, callbacks=[callback], num_sanity_val_steps=0).fit(
        TinyRegressor(), _loader(128, 32), _loader(1024, 32))
    assert callback._batch_stride == 4
    assert callback._epoch_stride == 1
    # 0.7 s of room, 8 batches at 52 ms: 0.284 s for samples at 3 ms
    assert callback.planned_samples == int((0.4 * 0.1 * 20.0 - 0.1 - 8 * 0.052) / 0.003) == 94
    assert sizes == [math.ceil(94 / 8)] * 8


def test_the_batch_stride_is_kept_in_the_checkpoint() -> None:
    callback = LieGGCallback(ACTION, overhead=0.1, log_images=False)
    callback._batch_stride, callback.planned_samples = 4, 34
    other = LieGGCallback(ACTION)
    other.load_state_dict(callback.state_dict())
    assert (other._batch_stride, other.planned_samples) == (4, 34)


def test_the_steady_pace_leaves_out_the_first_batch() -> None:
    callback = LieGGCallback(ACTION)
    callback._fit_started = time.perf_counter() - 100.0  # the whole run: 100 s, first batch included
    # 5 batches; 9 s from the end of the first to the end of the last, 1 s of it validation
    callback._batches_trained = 5
    callback._first_batch_end, callback._last_batch_end = (10.0, 0.0), (19.0, 1.0)
    assert callback._steady_training_time() == pytest.approx(8.0 * 5 / 4)
    callback._batches_trained = 2  # too few batches for a pace: the whole time
    assert callback._steady_training_time() == pytest.approx(100.0, abs=1.0)


def test_everything_the_callback_does_in_the_loop_is_charged(monkeypatch: pytest.MonkeyPatch) -> None:
    callback = LieGGCallback(ACTION, log_images=False, save_reports=False, overhead=10.0)
    spent: Dict[str, float] = {"hooks": 0.0}
    for name in ("on_validation_epoch_start", "on_validation_batch_start", "on_validation_epoch_end", "setup",
                 "on_train_start", "on_train_batch_end", "teardown"):
        original = getattr(callback, name)

        def timed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent["hooks"] += time.perf_counter() - start

        monkeypatch.setattr(callback, name, timed)
    quiet_trainer(max_epochs=3, callbacks=[callback]).fit(TinyRegressor(), _loader(128, 32), _loader(256, 32))
    assert len(callback.history) == 3
    # the hooks' own bookkeeping is all that may go uncharged: a small part of their time
    uncharged = spent["hooks"] - callback._spent
    assert uncharged < 0.2 * spent["hooks"] + 0.01, (spent["hooks"], callback._spent)


def test_report_files_are_written_in_order_off_the_training_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: List[str] = []
    threads: List[str] = []
    original = callback_module.save_report

    def slow_save(loggers: Any, report: Any, filename: str) -> Any:
        time.sleep(0.05)  # a slow disk
        threads.append(threading.current_thread().name)
        written.append(filename)
        return original(loggers, report, filename)

    monkeypatch.setattr(callback_module, "save_report", slow_save)
    callback = LieGGCallback(ACTION, log_images=False, overhead=10.0)  # an analysis every epoch of this tiny run
    trainer = quiet_trainer(max_epochs=3, callbacks=[callback], logger=TensorBoardLogger(str(tmp_path), name="run"))
    trainer.fit(TinyRegressor(), _loader(128, 32), _loader(128, 32))
    # every file is on disk when fit returns, in the order of the analyses, none written by the loop
    assert [name.split("_epoch")[1][:4] for name in written] == ["0000", "0001", "0002"]
    assert all(name != threading.main_thread().name for name in threads)
    assert len(list(tmp_path.rglob("*-report_*.json"))) == 3
    assert callback._save_time >= 3 * 0.05


def test_an_analysis_over_budget_says_which_every_n_epochs_fits() -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    # a monitor keeps the analyses every epoch, however small the budget: then it is said
    callback = LieGGCallback(ACTION, overhead=1e-4, log_images=False, save_reports=False)
    stopper = EarlyStopping(monitor="liegg/symmetry_variance", patience=10)
    with pytest.warns(UserWarning, match=r"analyse less often: `every_n_epochs=\d+`") as record:
        quiet_trainer(max_epochs=3, callbacks=[callback, stopper]).fit(
            TinyRegressor(), _loader(128, 32), _loader(128, 32))
    assert callback._epoch_stride == 1
    said = [str(w.message) for w in record if "every_n_epochs=" in str(w.message) and "one analysis" in str(w.message)]
    assert len(said) == 1  # once, not every epoch
    every = int(said[0].split("every_n_epochs=")[1].rstrip("`."))
    assert every > 1


def test_a_picture_waits_when_it_and_the_last_one_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    callback = LieGGCallback(ACTION)
    drawn: List[int] = []
    monkeypatch.setattr(callback, "_draw_now", lambda *a, **k: drawn.append(1))
    callback._draw_time, callback._draws = 0.1, 1  # one picture took 0.1 s
    callback._spent = 0.5
    trainer = SimpleNamespace(global_step=0, loggers=[])
    report: Any = object()
    # 0.5 + 0.1 spent, + 0.1 now + 0.1 at the end: 0.8, over 80% of 0.95 (20% kept for what is not timed)
    monkeypatch.setattr(callback, "_budget", lambda: 0.95)
    callback._draw(trainer, None, report, always=False)  # type: ignore[arg-type]
    assert drawn == []
    assert callback._undrawn is not None
    monkeypatch.setattr(callback, "_budget", lambda: 1.05)  # 0.8 fits in 80% of 1.05
    callback._draw(trainer, None, report, always=False)  # type: ignore[arg-type]
    assert drawn == [1]
    assert callback._undrawn is None
    monkeypatch.setattr(callback, "_budget", lambda: 0.0)  # validate/test: always drawn
    callback._draw(trainer, None, report, always=True)  # type: ignore[arg-type]
    assert drawn == [1, 1]


@pytest.mark.parametrize("monitored", [False, True])
def test_an_analysis_too_big_for_one_epoch_comes_every_few_epochs_unless_monitored(
    monkeypatch: pytest.MonkeyPatch, monitored: bool
) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    callback = LieGGCallback(ACTION, overhead=0.1, log_images=False, save_reports=False)
    # 1 s of training an epoch, 5 epochs. The smallest analysis, 4 batches at 8 ms, 34 samples at
    # 1.3 ms and a 20 ms solve, is 96 ms. Every epoch, 40% of 10% of 1 s is 40 ms; every 2nd, three
    # analyses share 10% of 5 s, 0.167 s each, 40% of it 67 ms; every 3rd, two share it: 0.1 s, enough
    _fixed_prices(monkeypatch, callback, per_call=0.006, per_sample=0.0007, acc_call=0.001, acc_sample=0.0006,
                  state=0.001, solve=0.02, training=1.0)
    others = [EarlyStopping(monitor="liegg/symmetry_variance", patience=10, strict=False)] if monitored else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real clocks after the plan may find it over the budget: said, not raised
        quiet_trainer(max_epochs=5, callbacks=[callback, *others]).fit(
            TinyRegressor(), _loader(128, 32), _loader(128, 32))
    if monitored:  # the monitor needs a value every epoch
        assert callback._epoch_stride == 1
        assert [h["epoch"] for h in callback.history] == [0, 1, 2, 3, 4]
    else:
        assert callback._epoch_stride == 3
        # every 3rd epoch counted back from the last, the trained network's; the plan's epoch is not one
        assert [h["epoch"] for h in callback.history] == [1, 4]
        # the fit's 0.5 s of budget shared by its two analyses, less the solve and the 4 batches: 36.9
        assert callback.planned_samples == int((0.4 * 0.1 * 5.0 / 2 - 0.02 - 4 * 0.008) / 0.0013) == 36


def test_on_a_short_fit_the_one_time_costs_leave_fewer_analyses(monkeypatch: pytest.MonkeyPatch) -> None:
    callback = LieGGCallback(ACTION, overhead=0.1, log_images=False, save_reports=False)
    # the prices of the test above (smallest analysis 96 ms), and 0.2 s paid once (the plan, the last
    # picture): 0.3 s of the fit's 0.5 s left. Every 3rd or 4th epoch: two analyses, 60 ms each for
    # the analysis, short of 96 ms; one analysis, at the last epoch: 0.12 s, enough
    _fixed_prices(monkeypatch, callback, per_call=0.006, per_sample=0.0007, acc_call=0.001, acc_sample=0.0006,
                  state=0.001, solve=0.02, training=1.0, one_time=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet_trainer(max_epochs=5, callbacks=[callback]).fit(TinyRegressor(), _loader(128, 32), _loader(128, 32))
    assert callback._epoch_stride == 5
    assert [h["epoch"] for h in callback.history] == [4]  # the last: what the fit made
    assert callback.planned_samples == int((0.4 * (0.1 * 5.0 - 0.2) - 0.02 - 4 * 0.008) / 0.0013) == 52


def test_a_fit_whose_one_time_costs_take_its_budget_is_analysed_once_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    callback = LieGGCallback(ACTION, overhead=0.1, log_images=False, save_reports=False)
    # 0.6 s paid once, over 10% of the fit's 5 s of training
    _fixed_prices(monkeypatch, callback, per_call=0.006, per_sample=0.0007, acc_call=0.001, acc_sample=0.0006,
                  state=0.001, solve=0.02, training=1.0, one_time=0.6)
    with pytest.warns(UserWarning, match=r"this fit is short for `overhead=0.1`.*600 ms.*at epoch 4"):
        quiet_trainer(max_epochs=5, callbacks=[callback]).fit(TinyRegressor(), _loader(128, 32), _loader(128, 32))
    assert [h["epoch"] for h in callback.history] == [4]


def test_the_training_left_comes_from_the_epochs_and_steps_left() -> None:
    callback = LieGGCallback(ACTION)
    callback._batches_trained, callback._fit_start_epoch = 4, 0
    trainer: Any = SimpleNamespace(num_training_batches=4, max_epochs=5, max_steps=-1, global_step=4,
                                   accumulate_grad_batches=1)
    assert callback._batches_left(trainer) == 16
    trainer.max_steps = 10  # 6 optimizer steps left, 2 batches each
    trainer.accumulate_grad_batches = 2
    assert callback._batches_left(trainer) == 12
    trainer.max_epochs, trainer.max_steps = -1, -1  # no end in sight: the budget is per analysis only
    assert callback._batches_left(trainer) == math.inf
    trainer.max_epochs, trainer.num_training_batches = 5, math.inf  # an iterable dataset without a length
    assert callback._batches_left(trainer) == math.inf
    callback._batches_trained, callback._fit_start_epoch = 8, 3  # resumed at epoch 3: 2 epochs of 4 batches
    trainer.num_training_batches, trainer.max_epochs, trainer.max_steps = 4, 7, -1
    assert callback._batches_left(trainer) == 8


def test_on_a_long_fit_each_analysis_pays_its_share_of_the_one_time_costs() -> None:
    callback = LieGGCallback(ACTION, overhead=0.1)
    # 1 s between analyses, 99 s of training left: 100 analyses share 10 s less 0.5 s once
    assert callback._analysis_budget(1, 1.0, 99.0, 0.5) == pytest.approx((10.0 - 0.5) / 100)
    # every 4th: 25 analyses (this one, then at 4, 8, ..., 96 s)
    assert callback._analysis_budget(4, 1.0, 99.0, 0.5) == pytest.approx((10.0 - 0.5) / 25)
    assert callback._analysis_budget(1, 1.0, math.inf, 0.5) == pytest.approx(0.1)  # length unknown


def test_reports_written_during_training_skip_the_disk_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from liegg_lightning import LieGGMetric, SymmetryReport

    metric = LieGGMetric(ACTION)
    metric.update(TinyRegressor().net, o5_data(64, seed=0).tensors[0])
    report = metric.compute()
    synced: List[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    report.save(tmp_path / "durable.json")
    assert len(synced) == 1  # the public default survives a power loss
    callback_module.save_report([TensorBoardLogger(str(tmp_path), name="run")], report, "liegg/fast.json")
    assert len(synced) == 1  # the callback's files: atomic, without the wait
    fast = next(tmp_path.rglob("fast.json"))
    torch.testing.assert_close(SymmetryReport.load(fast).variances, report.variances, rtol=0, atol=0)


class _WideRegressor(TinyRegressor):
    """8 outputs, 3 of them trained: forward (25 JVPs) and reverse (8 VJPs) are both worth timing."""

    def __init__(self) -> None:
        super().__init__(outputs=8)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self(x)[:, :3], y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        pass


@pytest.mark.parametrize("long_fit", [False, True])
def test_forward_mode_is_tried_only_where_its_first_use_can_pay_off(
    monkeypatch: pytest.MonkeyPatch, long_fit: bool
) -> None:
    callback = LieGGCallback(ACTION, log_images=False, save_reports=False)
    monkeypatch.setattr(callback_module, "_forward_mode_loaded", lambda: False)  # as in a fresh process
    if long_fit:  # 1000 s of training: 40% of 10% of it is far over the first use's 0.5 s
        monkeypatch.setattr(callback, "_fit_training", lambda trainer: 1000.0)
    tried: List[str] = []
    original = callback._time_mode

    def recording(pl_module: Any, model: Any, probe: Any, mode: str, failures: Any) -> Any:
        tried.append(mode)
        return original(pl_module, model, probe, mode, failures)

    monkeypatch.setattr(callback, "_time_mode", recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a fit of a fraction of a second: its whole analysis budget is a few milliseconds
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(_WideRegressor(), _loader(128, 32), _loader(64, 32))
    assert tried == (["reverse", "forward"] if long_fit else ["reverse"])
