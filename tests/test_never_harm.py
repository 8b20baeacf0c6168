"""A monitor never harms the run it watches: each case of the never-harm issue on a tiny model.

Every case ends as one of: training completes unchanged, the analysis is skipped with a clear
warning, or a clear error is raised before the first training step (configuration errors only).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import lightning as L
import numpy as np
import pytest
import torch
from _lightning_models import TinyRegressor, o5_data, quiet_trainer, recorded_inputs
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

import liegg_lightning.callback._pictures as pictures_module
from liegg_lightning import LieGGCallback, LieGGMetric, SymmetryReport, TangentAction, VectorAction, analyze

ACTION = VectorAction(dim=5, components=2)
TESTS = Path(__file__).parent


def _loader(n: int = 128, batch_size: int = 32, seed: int = 1) -> DataLoader:
    return DataLoader(o5_data(n, seed=seed), batch_size=batch_size)


def _run_ranks(script: str, out: Path, *args: str, timeout: float) -> List[Dict[str, Any]]:
    """Run a 2-process script of tests/scripts/ under ``timeout`` (a hang fails); what each rank wrote."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(TESTS / "scripts" / script), str(out), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _reports(root: Path) -> List[Path]:
    return sorted(root.rglob("*-report_*.json"))


# ----------------------------------------------------------------------------- 1. odd models


class SqueezedRegressor(TinyRegressor):
    """Ends in ``.squeeze()``: output ``(B,)``, a scalar for one sample."""

    def __init__(self) -> None:
        super().__init__(outputs=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y[:, 0])

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y[:, 0]))


def test_squeezed_output_is_one_output_and_matches_analyze() -> None:
    L.seed_everything(0, verbose=False)
    model = SqueezedRegressor()
    callback = LieGGCallback(ACTION, log_images=False, max_samples=None)
    quiet_trainer(max_epochs=1, callbacks=[callback]).fit(model, _loader(), _loader())
    report = callback.last_report
    assert report is not None
    assert report.num_rows == report.num_samples == 128
    expected = analyze(model, _loader(), ACTION)
    torch.testing.assert_close(report.variances, expected.variances, rtol=1e-6, atol=1e-12)
    # a single-sample batch (a 0-d output) is one sample, one row
    single = analyze(model, torch.randn(1, 10), ACTION)
    assert (single.num_samples, single.num_rows) == (1, 1)


class TrainModeBatchNorm(TinyRegressor):
    """Batch norm left in training mode during validation (a common mistake, or on purpose)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__(outputs=3)
        self.net = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(32, 3))

    def on_validation_model_eval(self) -> None:
        self.train()  # MC-dropout / train-mode batch norm during validation

    def on_test_model_eval(self) -> None:
        self.train()


class FailingForward(TinyRegressor):
    """Raises a ValueError from inside the model on small batches (the callback's first passes are small)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 8:
            raise ValueError("this model cannot take batches of fewer than 8")
        return super().forward(x)


def test_a_value_error_inside_the_model_is_a_warning_not_a_dead_run() -> None:
    L.seed_everything(0, verbose=False)
    callback = LieGGCallback(ACTION, log_images=False)
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match=r"(derivative pass|pricing the analysis) failed.*fewer than 8"):
        trainer.fit(FailingForward(), _loader(), _loader())
    assert trainer.current_epoch == 2
    assert callback.history == []


# ----------------------------------------------------------------------------- 2. state left exactly as it was


def _fit_state(with_callback: bool, dropout: float) -> Dict[str, Any]:
    L.seed_everything(0, verbose=False)
    model = TrainModeBatchNorm(dropout=dropout)
    callbacks = [LieGGCallback(LieGGMetric(ACTION, output_mode="random", num_projections=2), log_images=False,
                               every_n_epochs=1)]  # an analysis every epoch, as set
    trainer = quiet_trainer(max_epochs=3, callbacks=callbacks if with_callback else [], deterministic=True)
    trainer.fit(model, _loader(96, 32, seed=0), _loader(96, 32))
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "rng": torch.get_rng_state(),
            "analyses": len(callbacks[0].history)}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_weights_buffers_and_rng_are_bit_identical_with_and_without_the_callback(dropout: float) -> None:
    plain = _fit_state(False, dropout)
    watched = _fit_state(True, dropout)
    assert watched["analyses"] == 3
    assert plain["state"].keys() == watched["state"].keys()
    for name, value in plain["state"].items():
        assert torch.equal(value, watched["state"][name]), name  # running_mean, num_batches_tracked included
    assert torch.equal(plain["rng"], watched["rng"])


# ----------------------------------------------------------------------------- 3. ddp_spawn, 10.4 one plan


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_processes_agree_on_one_plan(tmp_path: Path, strategy: str) -> None:
    ranks = _run_ranks("ddp_plan.py", tmp_path, strategy, timeout=900)
    # rank 1 is slower, yet both analyse the same number of samples with the same derivative mode
    assert ranks[0]["planned_samples"] == ranks[1]["planned_samples"] is not None
    assert ranks[0]["derivative"] == ranks[1]["derivative"]
    assert ranks[0]["num_samples"] == ranks[1]["num_samples"]
    # and analyse the same epochs and batches (the budget may thin both in so tiny a run)
    assert (ranks[0]["epoch_stride"], ranks[0]["batch_stride"]) == (ranks[1]["epoch_stride"], ranks[1]["batch_stride"])
    assert len(ranks[0]["num_samples"]) == (2 if ranks[0]["epoch_stride"] == 1 else 1)
    assert ranks[0]["epochs"] == ranks[1]["epochs"]
    assert ranks[0]["epochs"][-1] == 1  # the fit's last epoch, thinned or not
    if strategy == "ddp_spawn":
        # what the parent has after fit: the last logged values and one report file per analysis
        parent = json.loads((tmp_path / "parent.json").read_text())
        # thinned or not, the last epoch is analysed (thinned analyses count back from it)
        assert parent["callback_metrics"]["liegg/num_samples"] == ranks[0]["num_samples"][-1]
        assert len(_reports(tmp_path)) == len(ranks[0]["num_samples"])
        assert SymmetryReport.load(_reports(tmp_path)[-1]).num_samples == ranks[0]["num_samples"][-1]


# ----------------------------------------------------------------------------- 4. monitors of its metrics


def test_misaligned_monitors_fail_at_setup_with_what_to_set(tmp_path: Path) -> None:
    steps: List[int] = []

    class Counting(TinyRegressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            steps.append(batch_idx)
            return super().training_step(batch, batch_idx)

    liegg = LieGGCallback(ACTION, every_n_epochs=2, log_images=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="liegg/symmetry_variance")
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(every_n_epochs=2\)"):
        quiet_trainer(max_epochs=4, callbacks=[liegg, checkpoint], enable_checkpointing=True).fit(
            Counting(), _loader(), _loader())
    stopper = EarlyStopping(monitor="liegg/normalized_variance", strict=True)
    with pytest.raises(ValueError, match=r"EarlyStopping\(strict=False\)"):
        quiet_trainer(max_epochs=4, callbacks=[LieGGCallback(ACTION, every_n_epochs=2), stopper]).fit(
            Counting(), _loader(), _loader())
    assert steps == []  # both before the first training step


def test_aligned_checkpoint_works_and_early_stopping_patience_counts_analyses(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    liegg = LieGGCallback(ACTION, every_n_epochs=2, log_images=False, max_samples=None)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="liegg/symmetry_variance", every_n_epochs=2)
    # lr 0: the network does not change, so every analysis gives the same value and never improves
    stopper = EarlyStopping(monitor="liegg/symmetry_variance", patience=2, strict=False)
    trainer = quiet_trainer(max_epochs=20, callbacks=[liegg, checkpoint, stopper], enable_checkpointing=True)
    trainer.fit(TinyRegressor(lr=0.0), _loader(), _loader())
    # best at the first analysis (epoch 1), then two analyses without improvement: stop after epoch 5
    assert [h["epoch"] for h in liegg.history] == [1, 3, 5]
    assert trainer.current_epoch == 6
    assert checkpoint.best_model_path.endswith(".ckpt")


# ----------------------------------------------------------------------------- 5./6. reports and prefixes


@pytest.mark.usefixtures("single_thread")  # the defaults price the analysis: no contention of idle threads
def test_one_report_file_per_analysis_in_each_loggers_run(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    logger = CSVLogger(tmp_path, name="csv")
    first = LieGGCallback(ACTION, log_images=False)
    second = LieGGCallback(LieGGMetric(ACTION, output_mode="sum"), prefix="liegg_sum/", log_images=False)
    trainer = quiet_trainer(max_epochs=2, val_check_interval=0.5, logger=logger, callbacks=[first, second])
    trainer.fit(TinyRegressor(), _loader(256, 32, seed=0), _loader())
    trainer.validate(TinyRegressor(), _loader(), verbose=False)
    trainer.validate(TinyRegressor(), _loader(), verbose=False)
    names = [p.name for p in _reports(Path(logger.log_dir))]
    # the fit's analyses (as many as the budget chose, the last validation's at least) and 2 validate()
    # calls, for each of the two prefixes: none overwritten
    fits = [sum(h["stage"] == "fit" for h in cb.history) for cb in (first, second)]
    assert min(fits) >= 1
    assert len(names) == len(set(names)) == sum(fits) + 4
    assert sum(n.startswith("liegg-report_fit_") for n in names) == fits[0]
    assert sum(n.startswith("liegg_sum-report_validate_") for n in names) == 2
    assert {h["stage"] for h in second.history} == {"fit", "validate"}
    assert "liegg_sum/validate/symmetry_variance" in trainer.callback_metrics  # validate() logged apart
    assert first.state_key != second.state_key


def test_two_callbacks_with_one_prefix_are_refused_before_training() -> None:
    a = LieGGCallback(ACTION)
    b = LieGGCallback(TangentAction(lambda x: ACTION.tangents(x), (5, 5)))
    # Lightning refuses two callbacks with one state_key when the Trainer is built; the callback's own
    # check in `setup` says the same in its words should a Trainer ever let them through
    with pytest.raises((RuntimeError, ValueError), match="state_key|share the prefix"):
        quiet_trainer(max_epochs=1, callbacks=[a, b]).fit(TinyRegressor(), _loader(), _loader())
    trainer = quiet_trainer(max_epochs=1)
    trainer.callbacks = [a, b]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="share the prefix 'liegg/'"):
        a.setup(trainer, TinyRegressor(), "fit")


def test_state_key_is_the_prefix_and_old_checkpoints_still_load(tmp_path: Path) -> None:
    callback = LieGGCallback(ACTION, log_images=False)
    assert callback.state_key == "LieGGCallback{'prefix': 'liegg/'}"
    # a checkpoint of version 0.1 keyed its state by action repr and prefix
    legacy = {"callbacks": {"LieGGCallback{'action': 'VectorAction(dim=5, components=2)', 'prefix': 'liegg/'}": {
        "history": [{"epoch": 0, "step": 4, "symmetry_variance": 0.5}], "spectra": [torch.ones(25)]}}}
    callback.on_load_checkpoint(None, None, legacy)  # type: ignore[arg-type]
    assert callback.history == [{"epoch": 0, "step": 4, "symmetry_variance": 0.5}]
    assert callback.labels == ["epoch 0"]


# ----------------------------------------------------------------------------- 7./8. configuration and empty batches


class TupleOutput(TinyRegressor):
    def forward(self, x: torch.Tensor) -> Any:
        out = super().forward(x)
        return out, out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x)[0], y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        pass


@pytest.mark.parametrize(
    ("case", "match"),
    [("shape", r"\(B, 12\) or \(B, 2, 6\)"), ("key", "input_key='inputs'"), ("tensor", "to be a Tensor"),
     ("tuple", "return a Tensor")],
)
def test_configuration_errors_fail_at_global_step_zero(case: str, match: str) -> None:
    steps: List[int] = []
    model: L.LightningModule = TupleOutput() if case == "tuple" else TinyRegressor()
    original = model.training_step
    model.training_step = lambda batch, idx: (steps.append(idx), original(batch, idx))[1]  # type: ignore[method-assign]
    val: Any = _loader()
    callback = LieGGCallback(ACTION)
    if case == "shape":
        callback = LieGGCallback(VectorAction(dim=6, components=2))
    elif case == "key":
        callback = LieGGCallback(ACTION, input_key="inputs")
        val = DataLoader([{"x": torch.randn(10), "y": torch.randn(3)} for _ in range(8)], batch_size=4)
    elif case == "tensor":
        val = DataLoader([([1.0] * 10, torch.randn(3)) for _ in range(8)], batch_size=4,
                         collate_fn=lambda items: ([i[0] for i in items], torch.stack([i[1] for i in items])))
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback])
    with pytest.raises(ValueError, match=match):
        trainer.fit(model, _loader(), val)
    assert steps == []
    assert trainer.global_step == 0


def test_an_empty_batch_is_skipped_not_the_rest_of_the_epoch() -> None:
    def collate(items: List[Any]) -> Any:
        if not items:
            return torch.empty(0, 10), torch.empty(0, 3)
        return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])

    sampler = [list(range(32)), [], list(range(32, 96))]
    loader = DataLoader(o5_data(96, seed=1), batch_sampler=sampler, collate_fn=collate)
    callback = LieGGCallback(ACTION, log_images=False, max_samples=None)

    class EmptyTolerant(TinyRegressor):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            pass

    quiet_trainer(callbacks=[callback]).validate(EmptyTolerant(), loader, verbose=False)
    assert callback.last_report is not None
    assert callback.last_report.num_samples == 96


# ----------------------------------------------------------------------------- 9. the picture queue


def test_the_picture_queue_holds_one_drawing_and_the_last_analysis_is_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: List[int] = []
    release = threading.Event()

    def stalled_first_drawing(loggers: Any, step: int, *args: Any, **kwargs: Any) -> None:
        if not drawn:
            release.wait(60.0)  # the first drawing lasts until the training has ended
        drawn.append(step)

    class Release(L.Callback):
        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            release.set()

    monkeypatch.setattr(pictures_module, "log_pictures", stalled_first_drawing)
    callback = LieGGCallback(ACTION, every_n_epochs=1, max_samples=64)
    callback.planner.draw_policy = lambda *args: True  # every analysis asks to be drawn
    trainer = quiet_trainer(max_epochs=15, callbacks=[callback, Release()], logger=TensorBoardLogger(tmp_path),
                            limit_train_batches=1, limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(TinyRegressor(), _loader(), _loader())
    assert len(callback.history) == 15
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    scalar_steps = [e.step for e in events.Scalars("liegg/symmetry_variance")]
    # the first drawing, then only the newest of the 14 that waited: each replaced the one before
    assert drawn == [scalar_steps[0], scalar_steps[-1]]


def test_an_exception_is_not_delayed_by_pictures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    drawing = threading.Event()  # set by the drawing itself: no guess at when its thread is scheduled

    def stalled_drawing(*args: Any, **kwargs: Any) -> None:
        drawing.set()
        release.wait(30.0)  # a drawing that takes as long as the test lets it

    monkeypatch.setattr(pictures_module, "log_pictures", stalled_drawing)

    class Crashing(TinyRegressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.current_epoch == 1:
                assert drawing.wait(30.0), "epoch 0's drawing never started"
                raise RuntimeError("the user's own bug")
            return super().training_step(batch, batch_idx)

    callback = LieGGCallback(ACTION, overhead=10.0, max_samples=32, background_drawing=True)
    callback.planner.draw_policy = lambda *args: True  # draw every analysis
    trainer = quiet_trainer(max_epochs=3, callbacks=[callback], logger=TensorBoardLogger(tmp_path),
                            num_sanity_val_steps=0, limit_train_batches=1)
    with pytest.raises(RuntimeError, match="own bug"):
        trainer.fit(Crashing(), _loader(), _loader())
    # fit raised while epoch 0's drawing was still running: it was not waited for
    assert not release.is_set()
    assert callback._worker.pictures.pending() == 1
    release.set()
    assert callback._worker.pictures.wait(10.0)


# ----------------------------------------------------------------------------- 10. arguments


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"prefix": None}, "prefix"), ({"max_samples": True}, "max_samples"),
     ({"log_generators": False}, "log_generators"),
     ({"dataloader_idx": True}, "dataloader_idx"), ({"overhead": 0}, "overhead"), ({"overhead": "10%"}, "overhead"),
     ({"max_samples": "all"}, "max_samples"), ({"log_images": "yes"}, "log_images")],
)
def test_bad_callback_arguments_are_refused(kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LieGGCallback(ACTION, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"nullity_tolerance": "0.01"}, "nullity_tolerance"), ({"memory_budget": "1GB"}, "memory_budget"),
     ({"memory_budget": True}, "memory_budget"), ({"known_generators": {"h": torch.full((5, 5), math.nan)}}, "finite"),
     ({"output_mode": "random", "num_projections": True}, "num_projections")],
)
def test_bad_metric_arguments_are_refused(kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LieGGMetric(ACTION, **kwargs)


def test_a_float32_tangent_function_on_float64_inputs_works() -> None:
    action = TangentAction(lambda x: ACTION.tangents(x).float(), (5, 5))
    model = lambda x: (x.reshape(-1, 2, 5) ** 2).sum((1, 2))[:, None]  # noqa: E731
    report = analyze(model, torch.randn(64, 10, dtype=torch.float64), action, reference_algebra="so")
    assert report.nullity == 10
    assert report.subspace_bias < 1e-5


# ----------------------------------------------------------------------------- 11. test stage, cadence


def test_trainer_test_analyses_the_test_set() -> None:
    callback = LieGGCallback(ACTION, log_images=False)
    trainer = quiet_trainer(callbacks=[callback])
    results = trainer.test(TestableRegressor(), _loader(), verbose=False)
    assert "liegg/test/symmetry_variance" in results[0]  # apart from the fit's curves
    assert "liegg/symmetry_variance" not in results[0]
    assert callback.history[-1]["stage"] == "test"


class TestableRegressor(TinyRegressor):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))


def test_every_n_epochs_counts_training_epochs() -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=3, log_images=False, overhead=10.0)
    quiet_trainer(max_epochs=7, callbacks=[callback]).fit(TinyRegressor(), _loader(), _loader())
    assert [h["epoch"] for h in callback.history] == [2, 5]


# ----------------------------------------------------------------------------- the cost budget's plan


def test_the_planned_samples_are_spread_over_every_validation_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    L.seed_everything(0, verbose=False)
    # a tiny budget and a cadence the user set: the floor, 4 rows per generator = ceil(4 * 25 / 3) = 34
    callback = LieGGCallback(ACTION, overhead=1e-6, log_images=False, every_n_epochs=1)
    seen = recorded_inputs(callback.metric, monkeypatch)
    val = _loader(256, 32)  # 8 batches, in order
    with pytest.warns(UserWarning, match=r"the cadence is kept.*`every_n_epochs=\d+` or a larger `overhead`"):
        quiet_trainer(max_epochs=2, callbacks=[callback], num_sanity_val_steps=0).fit(TinyRegressor(), _loader(), val)
    assert callback.planned_samples == 34
    # ceil(34 / 8 batches) = 5 a batch; the epochs the user asked for are all analysed
    assert callback.planner.schedule.stride == 1
    assert [h["num_samples"] for h in callback.history] == [40.0, 40.0]
    assert [x.shape[0] for x in seen] == [5] * 16  # every batch of both epochs
    # the 5 samples of a batch are spread over it, not its first rows
    data = o5_data(256, seed=1).tensors[0]
    rows = [int((data == x[None]).all(-1).nonzero()[0, 0]) for x in seen[0]]
    assert rows == [0, 8, 16, 23, 31]


def test_an_analysis_over_the_whole_fits_budget_waits_for_validate() -> None:
    callback = LieGGCallback(ACTION, overhead=1e-6, log_images=False)  # every_n_epochs left to the budget
    with pytest.warns(UserWarning, match=r"more than this fit's whole budget.*no analysis during `fit`.*validate"):
        quiet_trainer(max_epochs=2, callbacks=[callback]).fit(TinyRegressor(), _loader(), _loader(256, 32))
    assert callback.history == []
    assert callback.planner.schedule.every == 0


# ----------------------------------------------------------------------------- 11. third wave (issue 31)


class _LogsTrainLoss(TinyRegressor):
    """Logs `train_loss` and steps its learning rate on it (ReduceLROnPlateau) at every epoch's end."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)  # as logged by default in training_step: per step
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "train_loss"}}


def test_a_users_monitor_under_the_callbacks_prefix_is_not_the_callbacks(tmp_path: Path) -> None:
    # prefix "val/" and a checkpoint on the user's own val/loss: no configuration error, no advice
    class ValSlash(TinyRegressor):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            x, y = batch
            self.log("val/loss", nn.functional.mse_loss(self(x), y))

    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss")
    liegg = LieGGCallback(ACTION, prefix="val/", every_n_epochs=2, log_images=False, save_reports=False)
    trainer = quiet_trainer(max_epochs=2, callbacks=[liegg, checkpoint], enable_checkpointing=True)
    trainer.fit(ValSlash(), _loader(), _loader())
    assert checkpoint.best_model_path.endswith(".ckpt")
    assert "val/symmetry_variance" in trainer.callback_metrics  # the callback's own names under "val/"
    # and a monitor of the callback's own name under it is still checked
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(every_n_epochs=2\)"):
        quiet_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[
            LieGGCallback(ACTION, prefix="val/", every_n_epochs=2),
            ModelCheckpoint(dirpath=tmp_path, monitor="val/nullity")]).fit(ValSlash(), _loader(), _loader())


def test_an_empty_prefix_removes_only_the_callbacks_stale_values() -> None:
    # epochs without an analysis clean up the callback's values, never the user's train_loss
    L.seed_everything(0, verbose=False)
    liegg = LieGGCallback(ACTION, prefix="", every_n_epochs=2, log_images=False, save_reports=False)
    trainer = quiet_trainer(max_epochs=4, callbacks=[liegg])
    trainer.fit(_LogsTrainLoss(), _loader(), _loader())  # ReduceLROnPlateau reads train_loss every epoch
    assert trainer.current_epoch == 4
    assert [h["epoch"] for h in liegg.history] == [1, 3]
    assert {"train_loss", "val_loss", "nullity", "num_samples"} <= set(trainer.callback_metrics)


def _resume_with(tmp_path: Path, every_n_epochs: Any, monitor: bool) -> List[int]:
    """Fit 2 epochs, thin the saved cadence to every 30th epoch (as a long first phase would), resume to 6."""
    L.seed_everything(0, verbose=False)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = LieGGCallback(ACTION, log_images=False, save_reports=False)
    quiet_trainer(max_epochs=2, callbacks=[first, saver], enable_checkpointing=True).fit(
        TinyRegressor(), _loader(), _loader())
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    state = checkpoint["callbacks"][first.state_key]
    state.update(planned_samples=34, batch_stride=1, epoch_stride=30, schedule_end=89)  # epochs 29, 59, 89 only
    torch.save(checkpoint, tmp_path / "thinned.ckpt")
    resumed = LieGGCallback(ACTION, every_n_epochs=every_n_epochs, log_images=False, save_reports=False)
    callbacks: List[Any] = [resumed]
    if monitor:
        callbacks.append(EarlyStopping(monitor="liegg/normalized_variance", patience=100))
    quiet_trainer(max_epochs=6, callbacks=callbacks).fit(TinyRegressor(), _loader(), _loader(),
                                                         ckpt_path=str(tmp_path / "thinned.ckpt"))
    return [h["epoch"] for h in resumed.history if h["epoch"] >= 2]


def test_an_explicit_every_n_epochs_wins_over_a_checkpoints_saved_cadence(tmp_path: Path) -> None:
    assert _resume_with(tmp_path / "a", 1, monitor=False) == [2, 3, 4, 5]
    assert _resume_with(tmp_path / "b", 1, monitor=True) == [2, 3, 4, 5]  # EarlyStopping sees every epoch
    # a cadence left to the budget keeps the saved plan (none of epochs 2-5 is due)
    assert _resume_with(tmp_path / "c", None, monitor=False) == []


class _OwnGenerators(TinyRegressor):
    """Draws noise in forward from its own torch, NumPy and Python generators (reproducible sampling)."""

    def __init__(self) -> None:
        super().__init__()
        self.torch_rng = torch.Generator().manual_seed(1)
        self.numpy_rng = np.random.default_rng(2)
        self.python_rng = random.Random(3)
        self.legacy_rng = np.random.RandomState(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.torch_rng) * 0.01
        scale = 1.0 + 0.01 * float(self.numpy_rng.random()) + 0.01 * self.python_rng.random()
        return super().forward(x + noise) * (scale + 0.01 * float(self.legacy_rng.rand()))


class _RunningNormaliser(TinyRegressor):
    """Keeps a running mean of its inputs, replacing the buffer (not in place), in train mode during validation."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(10))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.count = self.count + x.shape[0]
            self.mean = self.mean + (x.detach().sum(0) - x.shape[0] * self.mean) / self.count
        return super().forward(x - self.mean)

    def on_validation_model_eval(self) -> None:
        self.train()


def _fit_owned(model_type: type, with_callback: bool) -> Dict[str, Any]:
    L.seed_everything(0, verbose=False)
    model = model_type()
    callbacks = [LieGGCallback(ACTION, every_n_epochs=1, save_reports=False, log_images=False)] if with_callback \
        else []
    trainer = quiet_trainer(max_epochs=2, callbacks=callbacks, deterministic=True)
    trainer.fit(model, _loader(96, 32, seed=0), _loader(96, 32))
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "val_loss": float(trainer.callback_metrics["val_loss"]), "analyses": len(callbacks[0].history)
            if callbacks else 2}


@pytest.mark.parametrize("model_type", [_OwnGenerators, _RunningNormaliser])
def test_generators_the_model_owns_and_replaced_buffers_are_kept(model_type: type) -> None:
    plain, watched = _fit_owned(model_type, False), _fit_owned(model_type, True)
    assert watched["analyses"] == 2
    assert plain["val_loss"] == watched["val_loss"]
    for name, value in plain["state"].items():
        assert torch.equal(value, watched["state"][name]), name
    if model_type is _RunningNormaliser:  # the sanity check's 64, 2 epochs x (96 + 96): none of the callback's
        assert float(watched["state"]["count"]) == 64 + 2 * (96 + 96)


def test_a_forward_hook_can_tell_the_callbacks_passes_apart() -> None:
    from liegg_lightning import in_analysis

    def collect(with_callback: bool) -> Dict[str, Any]:
        L.seed_everything(0, verbose=False)
        model, rows, inside = TinyRegressor(), [], []

        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if in_analysis():
                inside.append(output.shape[0])
            elif not module.training:
                rows.append(output.detach().clone())

        model.net[0].register_forward_hook(hook)
        callbacks = [LieGGCallback(ACTION, every_n_epochs=1, save_reports=False)] if with_callback else []
        quiet_trainer(max_epochs=1, callbacks=callbacks, logger=False).fit(model, _loader(64, 32, seed=0),
                                                                          _loader(128, 32))
        return {"rows": torch.cat(rows), "inside": inside}

    plain, watched = collect(False), collect(True)
    assert not in_analysis()
    assert watched["inside"]  # the sanity check's, the pricing's and the analysis' passes were seen ...
    assert watched["rows"].shape == plain["rows"].shape  # ... and told apart: 2 sanity batches + 128
    assert torch.equal(watched["rows"], plain["rows"])


def test_validate_outside_a_fit_keeps_a_budget_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    L.seed_everything(0, verbose=False)
    callback = LieGGCallback(ACTION, log_images=False, save_reports=False)
    with caplog.at_level(logging.INFO):
        quiet_trainer(callbacks=[callback]).validate(TinyRegressor(), _loader(2000, 32), verbose=False)
    lines = [r.getMessage() for r in caplog.records if "without a fit's plan" in r.getMessage()]
    assert len(lines) == 1
    assert "at least 34 samples" in lines[0]
    report = callback.last_report
    assert report is not None
    assert 34 <= report.num_samples < 2000
    # what the user chose explicitly is honoured: every sample
    everything = LieGGCallback(ACTION, log_images=False, save_reports=False, max_samples=None)
    quiet_trainer(callbacks=[everything]).validate(TinyRegressor(), _loader(256, 32), verbose=False)
    assert everything.last_report.num_samples == 256


def test_a_diverged_model_is_reported_as_non_finite_outputs() -> None:
    class Diverged(TinyRegressor):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * float("nan")

    callback = LieGGCallback(ACTION, log_images=False, save_reports=False)
    with pytest.warns(UserWarning, match=r"analysis was skipped.*non-finite outputs.*diverged"):
        quiet_trainer(callbacks=[callback]).validate(Diverged(), _loader(), verbose=False)
    assert callback.history == []


def test_prefixes_that_write_the_same_report_files_are_refused() -> None:
    trainer = quiet_trainer(max_epochs=1)
    a, b = LieGGCallback(ACTION, prefix="liegg/"), LieGGCallback(ACTION, prefix="liegg")
    trainer.callbacks = [a, b]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="report files of the same names"):
        a.setup(trainer, TinyRegressor(), "fit")


def test_a_module_logging_the_callbacks_name_is_warned_about() -> None:
    class LogsNullity(TinyRegressor):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            super().validation_step(batch, batch_idx)
            self.log("liegg/nullity", 1000.0)

    callback = LieGGCallback(ACTION, log_images=False, save_reports=False, every_n_epochs=1)
    with pytest.warns(UserWarning, match=r"something else logs liegg/nullity"):
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(LogsNullity(), _loader(), _loader())


def test_the_callback_pickles_after_a_fit_with_a_layer() -> None:
    import pickle

    callback = LieGGCallback(ACTION, layer="net.0", log_images=False, save_reports=False)
    quiet_trainer(max_epochs=1, callbacks=[callback]).fit(TinyRegressor(), _loader(), _loader())
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.history == callback.history
    assert copy.layer == "net.0"


@pytest.mark.slow
def test_a_collective_in_forward_never_hangs_two_processes_with_pictures_on(tmp_path: Path) -> None:
    # the orbit picture's passes run on every rank (or none): a model in FSDP, ZeRO-3 or SyncBatchNorm
    # would otherwise wait at its collective until the process group's timeout
    ranks = _run_ranks("ddp_collective.py", tmp_path, timeout=300)
    assert ranks[0] == ranks[1]  # the same passes on both: every collective was met
    assert ranks[0]["epochs"] == [0, 1]
    assert ranks[0]["collectives"]["callback"] > 0


def test_a_cuda_pass_is_bounded_by_the_runs_own_peak_headroom() -> None:
    from liegg_lightning.callback._state import training_headroom

    peaks, now = {0: 9_000, 1: 7_500}, {0: 4_000, 1: 6_000}
    # the least headroom over the model's devices: device 1 has shown it can hold 1,500 bytes more
    assert training_headroom([0, 1], peak=peaks.__getitem__, now=now.__getitem__) == 1_500
    assert training_headroom([0], peak=peaks.__getitem__, now=now.__getitem__) == 5_000
    assert training_headroom([], peak=peaks.__getitem__, now=now.__getitem__) is None  # CPU: the budget alone
    # a peak statistic reset below what is allocated now gives no room, not a negative one
    assert training_headroom([0], peak=lambda d: 10, now=lambda d: 20) == 0


def test_on_cpu_the_callback_leaves_the_pass_budget_to_memory_budget() -> None:
    model = TinyRegressor()
    data = o5_data(64)
    callback = LieGGCallback(VectorAction(5, 2), reference_algebra="so", log_images=False)
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback])
    trainer.fit(model, DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    assert callback.last_report is not None
    metric = callback.metric
    # no cap on CPU: what the Gram matrices leave of the budget, as in a plain analyze()
    assert metric.pass_budget == LieGGMetric(VectorAction(5, 2), reference_algebra="so").pass_budget
    assert metric.pass_budget is not None
    assert 0 < metric.pass_budget < metric.memory_budget
