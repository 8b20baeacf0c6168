"""LieGGCallback inside real Lightning runs: logged values, validate(), cadence, resume, precision, CLI, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from _lightning_models import O5DataModule, TinyRegressor, o5_data, quiet_trainer
from torch import nn
from torch.utils.data import DataLoader

from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction, analyze

ACTION = VectorAction(dim=5, components=2)
TESTS = Path(__file__).parent


def _val_loader(n: int = 256, batch_size: int = 64) -> DataLoader:
    return DataLoader(o5_data(n, seed=1), batch_size=batch_size)


def test_fit_logs_the_values_analyze_gives(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    model = TinyRegressor(outputs=3)
    metric = LieGGMetric(ACTION, reference_algebra="so", known_generators={"identity": torch.eye(5)})
    callback = LieGGCallback(metric, log_images=False, max_samples=None)
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=O5DataModule(n=256))

    assert [h["epoch"] for h in callback.history] == [0, 1]
    expected = analyze(model, _val_loader(), ACTION, reference_algebra="so",
                       known_generators={"identity": torch.eye(5)}).summary()
    assert {"symmetry_variance", "symmetry_variance_stderr", "normalized_variance", "nullity", "symmetry_bias",
            "subspace_bias", "variance/identity"} <= set(expected)
    for name, value in expected.items():
        logged = trainer.callback_metrics[f"liegg/{name}"]
        assert float(logged) == pytest.approx(value, rel=1e-5, abs=1e-12), name
        assert callback.history[-1][name] == pytest.approx(value, rel=1e-9, abs=1e-15), name


def test_validate_under_inference_mode_logs_and_leaves_the_model_alone() -> None:
    L.seed_everything(0, verbose=False)
    model = TinyRegressor(outputs=3)
    accumulated = []
    for p in model.parameters():
        # fires whenever anything accumulates into p.grad (.backward() would)
        p.register_post_accumulate_grad_hook(lambda param: accumulated.append(param))
    params = [p.detach().clone() for p in model.parameters()]
    metric = LieGGMetric(ACTION, reference_algebra="so", output_mode="random", num_projections=4)
    callback = LieGGCallback(metric, log_images=False)

    torch.manual_seed(123)
    quiet_trainer().validate(model, _val_loader(), verbose=False)
    state_without = torch.get_rng_state()
    torch.manual_seed(123)
    metrics = quiet_trainer(callbacks=[callback]).validate(model, _val_loader(), verbose=False)[0]
    state_with = torch.get_rng_state()

    assert torch.equal(state_without, state_with), "the callback consumed the global RNG"
    assert math.isfinite(metrics["liegg/validate/symmetry_variance"])  # validate() is logged apart from fit
    assert metrics["liegg/validate/symmetry_variance"] > 0
    assert len(callback.history) == 1
    assert accumulated == []
    assert all(p.grad is None for p in model.parameters())
    for p, w in zip(model.parameters(), params):
        assert torch.equal(p.detach(), w)


def test_every_n_epochs_and_history_survives_resume(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    callback = LieGGCallback(ACTION, every_n_epochs=2, log_images=False, save_reports=False, overhead=10.0)
    trainer = quiet_trainer(max_epochs=4, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(TinyRegressor(), datamodule=O5DataModule(n=128))
    assert [h["epoch"] for h in callback.history] == [1, 3]
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    first = [dict(h) for h in callback.history]

    resumed = LieGGCallback(ACTION, every_n_epochs=2, log_images=False, save_reports=False, overhead=10.0)
    trainer = quiet_trainer(max_epochs=6, callbacks=[resumed], default_root_dir=tmp_path)
    trainer.fit(TinyRegressor(), datamodule=O5DataModule(n=128), ckpt_path=ckpt)
    assert [h["epoch"] for h in resumed.history] == [1, 3, 5]
    assert resumed.history[:2] == first
    assert len(resumed.spectra) == 3


def test_every_n_epochs_zero_disables() -> None:
    callback = LieGGCallback(ACTION, every_n_epochs=0, log_images=False)
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback])
    trainer.fit(TinyRegressor(), datamodule=O5DataModule(n=64))
    assert callback.history == []
    assert "liegg/symmetry_variance" not in trainer.callback_metrics


def test_bf16_mixed_multi_output_logs_finite_values() -> None:
    L.seed_everything(0, verbose=False)
    callback = LieGGCallback(LieGGMetric(ACTION, reference_algebra="so"), log_images=False, max_samples=None)
    trainer = quiet_trainer(max_epochs=1, precision="bf16-mixed", callbacks=[callback])
    trainer.fit(TinyRegressor(outputs=3), datamodule=O5DataModule(n=128))
    values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("liegg/")}
    assert {"liegg/symmetry_variance", "liegg/symmetry_bias", "liegg/subspace_bias"} <= set(values)
    assert all(math.isfinite(v) for v in values.values())
    assert callback.last_report is not None
    assert callback.last_report.num_rows == 3 * 128


def test_layer_analyses_a_submodule_output() -> None:
    L.seed_everything(0, verbose=False)
    model = TinyRegressor(outputs=3)
    callback = LieGGCallback(ACTION, layer="net.0", log_images=False, max_samples=None)  # all, as analyze
    quiet_trainer(callbacks=[callback]).validate(model, _val_loader(), verbose=False)
    expected = analyze(model.net[0], _val_loader(), ACTION)
    assert callback.last_report.num_rows == 32 * 256
    torch.testing.assert_close(callback.last_report.variances, expected.variances, rtol=1e-6, atol=1e-12)


def test_sample_cap_and_dataloader_choice() -> None:
    model = TinyRegressor(outputs=1)
    callback = LieGGCallback(ACTION, max_samples=100, dataloader_idx=1, log_images=False)
    loaders = [_val_loader(64), _val_loader(256)]
    quiet_trainer(callbacks=[callback]).validate(model, loaders, verbose=False)
    assert callback.last_report.num_samples == 100
    expected = analyze(model, o5_data(256, seed=1).tensors[0][:100], ACTION)
    torch.testing.assert_close(callback.last_report.variances, expected.variances, rtol=1e-6, atol=1e-12)


def test_misconfiguration_fails_fast_with_a_clear_message() -> None:
    model = TinyRegressor()
    with pytest.raises(ValueError, match=r"\(B, 12\) or \(B, 2, 6\)"):
        quiet_trainer(callbacks=[LieGGCallback(VectorAction(dim=6, components=2))]).validate(
            model, _val_loader(), verbose=False)
    dict_loader = DataLoader([{"x": torch.randn(10), "y": torch.randn(3)} for _ in range(8)], batch_size=4)
    with pytest.raises(ValueError, match="input_key='inputs'"):
        quiet_trainer(callbacks=[LieGGCallback(ACTION, input_key="inputs")]).validate(
            model, dict_loader, verbose=False)
    with pytest.raises(ValueError, match="not a submodule.*net.0"):
        quiet_trainer(callbacks=[LieGGCallback(ACTION, layer="encoder")]).validate(
            model, _val_loader(), verbose=False)
    with pytest.raises(ValueError, match="jacobian, sum, random"):
        LieGGCallback(LieGGMetric(ACTION, output_mode="mean"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every_n_epochs"):
        LieGGCallback(ACTION, every_n_epochs=-1)


class _NaNModel(TinyRegressor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def test_a_failed_analysis_warns_and_training_goes_on() -> None:
    model = _NaNModel()
    callback = LieGGCallback(ACTION, log_images=False, every_n_epochs=1)
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback])
    with pytest.warns(UserWarning, match="analysis was skipped"):
        trainer.fit(model, datamodule=O5DataModule(n=64))
    assert trainer.current_epoch == 1
    assert callback.history == []


def test_lightning_cli_builds_the_callback_from_yaml(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  accelerator: cpu\n"
        "  logger: false\n"
        "  callbacks:\n"
        "    - class_path: liegg_lightning.LieGGCallback\n"
        "      init_args:\n"
        "        metric:\n"
        "          class_path: liegg_lightning.LieGGMetric\n"
        "          init_args:\n"
        "            action:\n"
        "              class_path: liegg_lightning.VectorAction\n"
        "              init_args: {dim: 5, components: 2}\n"
        "            reference_algebra: so\n"
        "            known_generators: [scaling]\n"
        "            output_mode: random\n"
        "            num_projections: 2\n"
        "        every_n_epochs: 3\n"
    )
    cli = LightningCLI(TinyRegressor, O5DataModule, run=False, args=["--config", str(config)],
                       save_config_callback=None)
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, LieGGCallback)]
    assert len(callbacks) == 1
    cb = callbacks[0]
    assert isinstance(cb.action, VectorAction)
    assert (cb.action.dim, cb.action.components) == (5, 2)
    assert cb.every_n_epochs == 3
    assert cb.metric.output_mode == "random"
    assert cb.metric.num_projections == 2
    assert cb.metric.reference is not None
    assert cb.metric.reference.shape == (10, 25)
    assert list(cb.metric.known) == ["scaling"]


@pytest.mark.slow
def test_ddp_two_processes_match_a_single_process(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(TESTS / "scripts" / "ddp_validate.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    model = TinyRegressor(outputs=3)
    model.load_state_dict(torch.load(tmp_path / "weights.pt"))
    # the validation set both processes shared, seen here by one process
    single = analyze(model, _val_loader(256, 64), ACTION, reference_algebra="so")
    ddp = result["report"]
    assert ddp["num_samples"] == 256
    sv = torch.tensor(ddp["singular_values"], dtype=torch.float64)
    assert torch.allclose(sv, single.singular_values, rtol=0, atol=1e-6 * float(single.singular_values.max()))
    for name, value in single.summary().items():
        assert result["history"][-1][name] == pytest.approx(value, rel=1e-6, abs=1e-12), name


def test_callback_never_touches_a_model_without_validation_inputs() -> None:
    # a model with no floating input in the batch: the callback reports what it expected
    model = nn.Linear(10, 1)
    assert not isinstance(model, L.LightningModule)
    with pytest.raises(ValueError, match="floating-point"):
        LieGGCallback(ACTION).action.validate_input(torch.ones(4, 10, dtype=torch.long))


def test_early_stopping_can_monitor_the_logged_variance() -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    L.seed_everything(0, verbose=False)
    liegg = LieGGCallback(ACTION, log_images=False)
    # patience 0 on a quantity that need not fall every epoch: it must at least be found and read
    stopper = EarlyStopping(monitor="liegg/symmetry_variance", mode="min", patience=0, strict=True)
    trainer = quiet_trainer(max_epochs=5, callbacks=[liegg, stopper])
    trainer.fit(TinyRegressor(), datamodule=O5DataModule(n=64))
    assert float(stopper.best_score) == pytest.approx(min(h["symmetry_variance"] for h in liegg.history), rel=1e-6)


def test_callback_pickles_for_ddp_spawn() -> None:
    import pickle
    import threading

    callback = LieGGCallback(LieGGMetric(ACTION, reference_algebra="so", output_mode="random", num_projections=2))
    release = threading.Event()
    callback._worker.draw(release.wait, lambda seconds: None)  # as while a picture is being drawn
    clone = pickle.loads(pickle.dumps(callback))
    release.set()
    assert callback._worker.pictures.wait(5.0)
    assert clone._worker.pictures.pending() == 0  # a fresh worker on the other side
    assert clone.metric.reference is not None
    assert clone.metric.output_mode == "random"


def test_layers_are_logged_per_layer_and_saved_per_layer(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0, verbose=False)
    model = TinyRegressor(outputs=3)
    metric = LieGGMetric(ACTION, reference_algebra="so", layers={"": None, "net.0": None})
    callback = LieGGCallback(metric, log_images=False, max_samples=None)
    logger = CSVLogger(tmp_path)
    quiet_trainer(max_epochs=1, callbacks=[callback], logger=logger).fit(model, datamodule=O5DataModule(n=128))
    assert isinstance(callback.last_report, dict)
    assert set(callback.last_report) == {"", "net.0"}
    expected = analyze(model, _val_loader(128), ACTION, reference_algebra="so", layers={"": None, "net.0": None})
    for name, key in (("", "liegg/symmetry_variance"), ("net.0", "liegg/net.0/symmetry_variance")):
        assert float(callback.history[-1][key[len("liegg/"):]]) == pytest.approx(
            expected[name].symmetry_variance, rel=1e-6)
    files = sorted(p.name for p in Path(logger.log_dir).rglob("liegg-report_*.json"))
    assert len(files) == 2
    assert any(f.endswith("_layer-net.0.json") for f in files)
    with pytest.raises(ValueError, match="not submodules"):
        quiet_trainer(max_epochs=1, callbacks=[LieGGCallback(LieGGMetric(ACTION, layers=["encoder"]))]).fit(
            model, datamodule=O5DataModule(n=64))
