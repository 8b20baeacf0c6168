"""What the user asks for is what they get: explicit settings win, stages are logged apart, nothing later raises."""

from __future__ import annotations

import logging
import math
import random
import threading
from pathlib import Path
from typing import Any, Dict, List

import lightning as L
import numpy as np
import pytest
import torch
from _lightning_models import TinyRegressor, o5_data, quiet_trainer
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader

from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction
from liegg_lightning.callback._history import History
from liegg_lightning.functional.drift import generator_drift

ACTION = VectorAction(dim=5, components=2)


def _loader(n: int = 128, batch_size: int = 32, seed: int = 1) -> DataLoader:
    return DataLoader(o5_data(n, seed=seed), batch_size=batch_size)


def _plan_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if "samples per analysis" in r.getMessage()]


# ----------------------------------------------------------------------------- explicit settings win


def test_an_explicit_every_n_epochs_is_honoured_however_small_the_budget() -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=2, overhead=1e-6, log_images=False, save_reports=False)
    with pytest.warns(UserWarning, match=r"the cadence is kept \(as you set it\).*`every_n_epochs=\d+`"):
        quiet_trainer(max_epochs=4, callbacks=[callback]).fit(TinyRegressor(), _loader(), _loader())
    assert [h["epoch"] for h in callback.history] == [1, 3]
    assert callback.planned_samples == 34  # the budget chose only the samples, down to the floor


@pytest.mark.parametrize(("trainer_options", "analysed", "said"), [
    ({"val_check_interval": 0.5}, [0, 0, 1, 1], "epochs 0, 1 (2 validation runs each);"),
    ({"check_val_every_n_epoch": 2}, [1, 3], "epochs 1, 3;"),
])
def test_the_plan_line_names_the_validation_runs_that_are_analysed(
    caplog: pytest.LogCaptureFixture, trainer_options: Dict[str, Any], analysed: List[int], said: str
) -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=1, log_images=False, save_reports=False)
    with caplog.at_level(logging.INFO):
        quiet_trainer(max_epochs=4 if "check_val_every_n_epoch" in trainer_options else 2, callbacks=[callback],
                      **trainer_options).fit(TinyRegressor(), _loader(256), _loader())
    assert [h["epoch"] for h in callback.history] == analysed
    lines = _plan_lines(caplog)
    assert len(lines) == 1
    assert f"analysed: the validation runs of {said}" in lines[0]


def test_metric_options_given_with_a_bare_action_build_the_metric() -> None:
    callback = LieGGCallback(ACTION, reference_algebra="so", output_mode="random", num_projections=3)
    assert callback.metric.reference_algebra == "so"
    assert (callback.metric.output_mode, callback.metric.num_projections) == ("random", 3)
    with pytest.raises(ValueError, match="only with a GroupAction"):
        LieGGCallback(LieGGMetric(ACTION), reference_algebra="so")  # a metric carries its own options
    with pytest.raises(ValueError, match="reference_algebra|unexpected|Unexpected"):
        LieGGCallback(ACTION, reference_algebr="so")  # a misspelt option is not swallowed


def test_a_fit_without_validation_data_says_what_the_callback_analyses() -> None:
    callback = LieGGCallback(ACTION, log_images=False)
    with pytest.warns(UserWarning, match="analyses validation .*this fit has none"):
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(TinyRegressor(), _loader())
    assert callback.history == []


# ----------------------------------------------------------------------------- stages and labels


class _Testable(TinyRegressor):
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", nn.functional.mse_loss(self(batch[0]), batch[1]))


@pytest.mark.usefixtures("single_thread")  # the defaults price the analysis: no contention of idle threads
def test_validate_and_test_are_logged_apart_from_the_fit_with_distinct_labels() -> None:
    callback = LieGGCallback(ACTION, log_images=False, save_reports=False)
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback])
    model = _Testable()
    trainer.fit(model, _loader(), _loader())
    fit_value = float(trainer.callback_metrics["liegg/symmetry_variance"])
    trainer.validate(model, _loader(), verbose=False)
    trainer.validate(model, _loader(), verbose=False)
    trainer.test(model, _loader(seed=5), verbose=False)
    metrics = trainer.callback_metrics
    assert "liegg/test/symmetry_variance" in metrics
    assert callback.history[-1]["stage"] == "test"
    fits = sum(h["stage"] == "fit" for h in callback.history)  # as many as the budget chose, the last one at least
    assert [h["stage"] for h in callback.history] == ["fit"] * fits + ["validate", "validate", "test"]
    # epochs as Lightning logs its `epoch`: after a 2-epoch fit, the trainer's epoch is 2
    assert callback.labels[fits - 1:] == ["epoch 1", "validate @ epoch 2", "validate @ epoch 2 #2", "test @ epoch 2"]
    assert len(set(callback.labels)) == len(callback.labels)
    # the fit's own value is the fit's: validate/test did not overwrite it
    assert callback.history[fits - 1]["symmetry_variance"] == pytest.approx(fit_value, rel=1e-6)


# ----------------------------------------------------------------------------- emergence


def test_generator_drift_is_the_sine_of_the_angle_between_the_learned_subspaces() -> None:
    eye = torch.eye(9, dtype=torch.float64).reshape(9, 3, 3)
    for angle in (0.0, 0.3, 1.1):
        turned = eye.clone()
        turned[0] = math.cos(angle) * eye[0] + math.sin(angle) * eye[5]  # the first generator leaves its span
        assert generator_drift(eye, 2, turned, 2) == pytest.approx(abs(math.sin(angle)), abs=1e-12)
    # a symmetry found counts as movement: the larger nullity sets the dimension
    assert generator_drift(eye, 1, eye[[0, 4, 1, 2, 3, 5, 6, 7, 8]], 2) == pytest.approx(1.0)
    assert math.isnan(generator_drift(eye, 0, eye, 3))  # no symmetry on one side: undefined


def test_generator_drift_is_logged_and_the_largest_one_so_far_is_drawn() -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=1, log_images=False, save_reports=False)
    trainer = quiet_trainer(max_epochs=3, callbacks=[callback])
    trainer.fit(TinyRegressor(), _loader(), _loader(512, 64))
    drifts = [h.get("generator_drift") for h in callback.history]
    assert drifts[0] is None  # nothing to compare the first analysis with
    if all(h["nullity"] > 0 for h in callback.history):
        assert all(0.0 <= d <= 1.0 for d in drifts[1:])
        assert float(trainer.callback_metrics["liegg/generator_drift"]) == pytest.approx(drifts[-1], rel=1e-6)
    record = History()
    record.rows = [{"stage": "fit", "nullity": 0.0}]
    assert not record.emerged()  # the first analysis: nothing to emerge from
    record.rows.append({"stage": "fit", "nullity": 1.0})
    assert record.emerged()  # a symmetry found
    record.rows.append({"stage": "fit", "nullity": 1.0, "generator_drift": 0.3})
    assert record.emerged()  # the learned generator turned by 17 degrees, the most so far
    record.rows.append({"stage": "fit", "nullity": 1.0, "generator_drift": 0.2})
    assert not record.emerged()  # less than before: the budget decides
    record.rows.append({"stage": "fit", "nullity": 1.0, "generator_drift": 0.05})
    assert not record.emerged()
    record.rows.append({"stage": "validate", "nullity": 2.0})
    assert not record.emerged()  # the first of its stage
    small = History()
    small.rows = [{"stage": "fit", "nullity": 1.0, "generator_drift": 0.05}]
    assert not small.emerged()  # the largest so far, but the jitter of a settled subspace


# ----------------------------------------------------------------------------- never harm


class _InPlace(TinyRegressor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(1.5)  # edits its input in place
        return super().forward(x)


class _OtherRngs(TinyRegressor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
        return super().forward(x) * scale


def _fit_and_log(model_type: type, with_callback: bool) -> Dict[str, Any]:
    L.seed_everything(0, verbose=False)
    random.seed(0)
    np.random.seed(0)
    model = model_type()
    callbacks = [LieGGCallback(ACTION, every_n_epochs=1, log_images=False, save_reports=False)] if with_callback else []
    trainer = quiet_trainer(max_epochs=2, callbacks=callbacks, deterministic=True)
    trainer.fit(model, DataLoader(o5_data(96, seed=0), batch_size=32, shuffle=True), _loader(96))
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "val_loss": float(trainer.callback_metrics["val_loss"]), "random": random.random(),
            "numpy": float(np.random.rand())}


@pytest.mark.parametrize("model_type", [_InPlace, _OtherRngs])
def test_the_model_sees_copies_and_every_rng_is_kept(model_type: type) -> None:
    plain, watched = _fit_and_log(model_type, False), _fit_and_log(model_type, True)
    assert plain["val_loss"] == watched["val_loss"]
    assert (plain["random"], plain["numpy"]) == (watched["random"], watched["numpy"])
    for name, value in plain["state"].items():
        assert torch.equal(value, watched["state"][name]), name


class _TupleOutput(TinyRegressor):
    def forward(self, x: torch.Tensor) -> Any:
        return super().forward(x), x  # not a tensor: the metric cannot read it


def test_a_configuration_error_found_during_training_warns_and_the_run_goes_on() -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=1, log_images=False, save_reports=False)
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], num_sanity_val_steps=0)

    class Model(_TupleOutput):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.mse_loss(self(batch[0])[0], batch[1])

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            pass

    with pytest.warns(UserWarning, match="LieGGCallback"):
        trainer.fit(Model(), _loader(), _loader())
    assert trainer.current_epoch == 2
    assert callback.history == []


def test_every_validation_dataloader_is_checked_in_the_sanity_check() -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=1, log_images=False)
    unreadable = DataLoader([{"x": torch.randn(10)} for _ in range(8)], batch_size=4)  # a dict batch, no key 0
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback])
    with pytest.raises(ValueError, match="input_key"):
        trainer.fit(TinyRegressor(), _loader(), [_loader(), unreadable])
    assert trainer.global_step == 0  # raised before the first training step


class _StalledLogger(Logger):
    """A logger whose pictures never arrive until the test lets them."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.release, self.calls, self._root = threading.Event(), [], str(root)

    @property
    def name(self) -> str:
        return "stalled"

    @property
    def version(self) -> int:
        return 0

    @property
    def log_dir(self) -> str:
        return self._root

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Dict[str, float], step: Any = None) -> None:
        pass

    def log_image(self, key: str, images: List[Any], step: Any = None, **kwargs: Any) -> None:
        self.calls.append(key)
        self.release.wait(60.0)


def test_a_stalled_logger_costs_a_warning_not_the_run(tmp_path: Path) -> None:
    logger = _StalledLogger(tmp_path)
    callback = LieGGCallback(ACTION, every_n_epochs=1, save_reports=False)
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=logger)
    try:
        with pytest.warns(UserWarning, match="still running after .* not waiting"):
            trainer.fit(TinyRegressor(), _loader(), _loader())
        # fit returned while the logger was still stuck in its first picture
        assert logger.calls
        assert not logger.release.is_set()
        assert callback._worker.pictures.pending() >= 1
    finally:
        logger.release.set()
    assert callback._worker.pictures.wait(30.0)


# ----------------------------------------------------------------------------- distributed: no rank waits alone


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty_first", "empty_only", "raises", "uneven"])
def test_two_processes_never_hang_when_one_rank_differs(tmp_path: Path, case: str) -> None:
    import json
    import os
    import subprocess
    import sys

    script = Path(__file__).parent / "scripts" / "ddp_uneven.py"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), case], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # one plan, the same analyses, on both
    if case == "raises":  # switched off together
        assert ranks[0]["epochs"] == []
    else:
        assert ranks[0]["epochs"] == [0, 1]
        assert ranks[0]["planned_samples"] is not None


class _Compiled(TinyRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.compile(self.net)  # type: ignore[assignment]


@pytest.mark.slow
def test_a_compiled_model_is_analysed_without_touching_its_graphs() -> None:
    from torch._dynamo.utils import counters

    def fit(with_callback: bool) -> Dict[str, Any]:
        torch._dynamo.reset()
        counters.clear()
        L.seed_everything(0, verbose=False)
        model = _Compiled()
        callbacks = [LieGGCallback(ACTION, every_n_epochs=1, log_images=False, save_reports=False)]
        trainer = quiet_trainer(max_epochs=2, callbacks=callbacks if with_callback else [], deterministic=True)
        trainer.fit(model, DataLoader(o5_data(96, seed=0), batch_size=32), _loader(64))
        return {"state": {k: v.clone() for k, v in model.state_dict().items()},
                "graphs": counters["stats"]["unique_graphs"], "analyses": len(callbacks[0].history)}

    watched, plain = fit(True), fit(False)  # the callback first: nothing it compiled could help the plain fit
    assert watched["analyses"] == 2
    assert watched["graphs"] == plain["graphs"]  # no recompilation caused by the extra passes
    for name, value in plain["state"].items():
        assert torch.equal(value, watched["state"][name]), name


def test_an_algebra_too_large_for_the_fit_is_refused_without_paying_for_an_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates: List[int] = []
    original = LieGGMetric.update_rows

    def counting(self: LieGGMetric, *args: Any, **kwargs: Any) -> None:
        updates.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(LieGGMetric, "update_rows", counting)
    action = VectorAction(dim=32)  # m = 1024: its solve alone outweighs a fit of a fraction of a second
    callback = LieGGCallback(action, log_images=False, save_reports=False, jackknife_groups=0)

    class Wide(TinyRegressor):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(32, 8), nn.SiLU(), nn.Linear(8, 3))

    data = DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 32), torch.randn(64, 3)), batch_size=32)
    with pytest.warns(UserWarning, match=r"would cost at least .* no analysis during `fit`"):
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(Wide(), data, data)
    assert callback.history == []
    assert updates == []  # priced from the solve alone


def test_a_run_resumed_into_the_same_logger_version_replaces_no_report(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from liegg_lightning import SymmetryReport

    def fit(epochs: int, ckpt: Any = None) -> L.Trainer:
        callback = LieGGCallback(ACTION, every_n_epochs=1, log_images=False)
        trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback], logger=CSVLogger(tmp_path, version=0),
                                enable_checkpointing=False)
        trainer.fit(TinyRegressor(lr=0.05), _loader(), _loader(), ckpt_path=ckpt)
        return trainer

    L.seed_everything(0, verbose=False)
    trainer = fit(1)
    trainer.save_checkpoint(tmp_path / "epoch0.ckpt")
    fit(3, tmp_path / "epoch0.ckpt")  # the first run going on: epochs 1 and 2
    first = {p.name: p.read_bytes() for p in tmp_path.rglob("*-report_*.json")}
    L.seed_everything(1, verbose=False)
    fit(3, tmp_path / "epoch0.ckpt")  # resumed again from epoch 0, into the same version: other numbers
    after = {p.name: p.read_bytes() for p in tmp_path.rglob("*-report_*.json")}
    assert all(after[name] == content for name, content in first.items())  # nothing replaced
    assert len(after) == len(first) + 2  # the second resumption's two reports beside them
    for name in set(after) - set(first):
        assert SymmetryReport.load(next(tmp_path.rglob(name))).num_samples > 0


class _Invariant(TinyRegressor):
    """O(5)-invariant by construction (a function of r1.r1, r1.r2, r2.r2): so(5) is learned at every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r1, r2 = x[:, :5], x[:, 5:]
        return self.net(torch.stack([(r1 * r1).sum(1), (r1 * r2).sum(1), (r2 * r2).sum(1)], 1))


class _Switching(_Invariant):
    """A generic function of its input for two epochs, O(5)-invariant from epoch 2 on: a symmetry emerges."""

    def __init__(self) -> None:
        super().__init__()
        self.generic = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.current_epoch >= 2 else self.generic(x)


def test_the_moment_of_emergence_is_drawn_even_when_the_budget_has_no_room(monkeypatch: pytest.MonkeyPatch) -> None:
    import liegg_lightning.callback._pictures as pictures_module

    drawn: List[str] = []
    monkeypatch.setattr(pictures_module, "log_pictures", lambda *a, **k: drawn.append(k["caption"]))
    callback = LieGGCallback(ACTION, every_n_epochs=1, save_reports=False, background_drawing=False)
    callback.planner.draw_policy = lambda *args: False  # never room in the budget
    trainer = quiet_trainer(max_epochs=5, callbacks=[callback], logger=_StalledLogger(Path("/tmp")))
    trainer.logger.release.set()  # type: ignore[union-attr]
    trainer.fit(_Switching(), _loader(), _loader(256, 64))
    nullities = [h["nullity"] for h in callback.history]
    assert nullities[:2] == [0.0, 0.0]
    assert nullities[2] == 10.0  # so(5) found at epoch 2
    # drawn: the moment it appeared, and the run's last analysis at the end; the budget skipped the rest
    assert drawn == ["epoch 2", "epoch 4"]


class _Stream(torch.utils.data.IterableDataset):
    """Validation samples without a length: the Trainer cannot count its batches."""

    def __iter__(self) -> Any:
        x, y = o5_data(256, seed=1).tensors
        return iter(zip(x, y))


def test_a_validation_stream_without_a_length_gets_a_plan_of_at_least_the_floor() -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=1, log_images=False, save_reports=False)
    quiet_trainer(max_epochs=2, callbacks=[callback]).fit(TinyRegressor(), _loader(), DataLoader(_Stream(),
                                                                                                  batch_size=32))
    assert callback.planned_samples is not None
    assert callback.planned_samples >= 34  # 4 rows per generator: ceil(4 * 25 / 3)
    assert [h["num_samples"] for h in callback.history] == [float(min(callback.planned_samples, 256))] * 2


def test_the_plan_line_stops_where_max_steps_ends_the_fit(caplog: pytest.LogCaptureFixture) -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=1, log_images=False, save_reports=False)
    with caplog.at_level(logging.INFO):  # 4 batches an epoch, 10 steps: epochs 0, 1 and half of 2
        quiet_trainer(max_epochs=-1, max_steps=10, callbacks=[callback]).fit(TinyRegressor(), _loader(), _loader())
    assert [h["epoch"] for h in callback.history] == [0, 1]  # epoch 2 ends at step 10, before its validation
    assert "analysed: the validation runs of epochs 0, 1;" in _plan_lines(caplog)[0]


# ----------------------------------------------------------------------------- validate()/test() without a plan


def test_an_evaluation_without_a_plan_takes_the_floor_and_a_share_of_its_own_time() -> None:
    from liegg_lightning.callback._evaluation import EvaluationBudget

    now, spent = [0.0], [7.0]  # the monitor's running total before this evaluation is not its cost
    # 63 batches, a floor of 34: spread over 8 of them (every 7th), 5 samples each, until 34 are in
    fixed = EvaluationBudget(0.1, 63, adaptive=False, stage="validate", spent=lambda: spent[0], clock=lambda: now[0])
    assert "at least 34 samples" in fixed.start(3, 25)  # 4 rows for each of 25 generators at 3 rows a sample
    assert [fixed.samples_for(i, 32, seen=5 * (i // 7)) for i in range(8)] == [5, 0, 0, 0, 0, 0, 0, 5]
    spent[0] += 7.0  # however slow: the floor is taken, and nothing more without adaptivity
    assert fixed.samples_for(49, 32, seen=35) == 0
    # one process: beyond the floor, what 10 % of the loop's own time pays for
    budget = EvaluationBudget(0.1, 63, adaptive=True, stage="test", spent=lambda: spent[0], clock=lambda: now[0])
    budget.start(3, 25)
    spent[0] += 0.1  # 5 samples in 0.1 s: 20 ms a sample
    now[0] = 5.1  # the loop's own time: 5.1 - 0.1 = 5 s, so 0.5 s of budget, 0.4 s left: 20 samples
    assert budget.samples_for(1, 32, seen=5) == 20
    now[0] = 20.1  # 20 s of loop: 2 s of budget, 1.9 s left: more than the batch holds
    assert budget.samples_for(2, 32, seen=5) == 32
    spent[0] += 1.9  # 2 s spent, over the 1.81 s that 18.1 s of loop allow: nothing more
    assert budget.samples_for(8, 32, seen=100) == 0
