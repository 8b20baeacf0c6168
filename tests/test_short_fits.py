"""A user's first runs, with the defaults: every short fit with validation data shows its symmetry.

Smoke tests, notebook cells and the CI of a training script are fits of a fraction of a second. The
callback runs here exactly as a user writes it, ``LieGGCallback(VectorAction(5, 2),
reference_algebra="so")``, and each fit must log the LieGG values of its last validation run.
The expected sample count is worked out by hand from the cost model's floor; the logged variance
is checked against a fresh metric run on the same inputs after the fit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from _lightning_models import TinyRegressor, o5_data, quiet_trainer, recorded_inputs
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction

TESTS = Path(__file__).resolve().parent
ACTION = VectorAction(dim=5, components=2)  # m = 25; TinyRegressor gives 3 rows a sample
# the floor of an analysis: 4 rows per generator, ceil(4 * 25 / 3) = 34 samples, spread over the
# 4 validation batches of 64: ceil(34 / 4) = 9 a batch, 36 in all
FLOOR_SAMPLES = 36
pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: extra threads only contend
SCALARS = {"liegg/symmetry_variance", "liegg/nullity", "liegg/symmetry_bias", "liegg/num_samples"}


def _loader(n: int = 256, batch_size: int = 64, seed: int = 1, shuffle: bool = False) -> DataLoader:
    return DataLoader(o5_data(n, seed=seed), batch_size=batch_size, shuffle=shuffle)


def _user_callback() -> LieGGCallback:
    """The callback as the README writes it: every option at its default."""
    return LieGGCallback(ACTION, reference_algebra="so")


def test_a_one_epoch_fit_without_a_logger_fills_callback_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    L.seed_everything(0, verbose=False)
    callback = _user_callback()
    seen = recorded_inputs(callback.metric, monkeypatch)
    model = TinyRegressor()
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a user's first run: no warning about the budget
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, _loader(shuffle=True), _loader())
    assert set(trainer.callback_metrics) >= SCALARS
    assert [h["epoch"] for h in callback.history] == [0]
    assert float(trainer.callback_metrics["liegg/num_samples"]) == FLOOR_SAMPLES
    # the logged value is what a fresh metric finds on the same inputs with the trained network
    reference = LieGGMetric(ACTION, reference_algebra="so")
    model.eval()
    for inputs in seen:
        reference.update(model, inputs)
    expected = reference.compute().symmetry_variance
    assert float(trainer.callback_metrics["liegg/symmetry_variance"]) == pytest.approx(float(expected), rel=1e-5)


def test_a_quick_tensorboard_trial_shows_scalars_and_pictures(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    callback = _user_callback()
    logger = TensorBoardLogger(tmp_path, name="tb")
    quiet_trainer(max_epochs=3, callbacks=[callback], logger=logger, log_every_n_steps=1).fit(
        TinyRegressor(), _loader(shuffle=True), _loader())
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) >= SCALARS
    # the last validation run sees the trained network: it is the one analysed
    assert callback.history[-1]["epoch"] == 2
    assert {"liegg/spectrum", "liegg/generators"} <= set(tags["images"])
    assert acc.Images("liegg/spectrum")[-1].step == acc.Scalars("liegg/symmetry_variance")[-1].step
    assert len(list(Path(logger.log_dir).rglob("liegg-report_fit_*.json"))) == len(callback.history)


def test_a_csv_logger_alone_gets_a_row(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    logger = CSVLogger(tmp_path, name="csv")
    quiet_trainer(max_epochs=2, callbacks=[_user_callback()], logger=logger).fit(
        TinyRegressor(), _loader(shuffle=True), _loader())
    with open(Path(logger.log_dir) / "metrics.csv") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("liegg/symmetry_variance")]
    assert len(rows) >= 1
    assert float(rows[-1]["liegg/num_samples"]) == FLOOR_SAMPLES
    assert rows[-1]["epoch"] == "1"


def test_a_one_epoch_bf16_mixed_fit_logs_the_symmetry() -> None:
    L.seed_everything(0, verbose=False)
    callback = _user_callback()
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], precision="bf16-mixed")
    trainer.fit(TinyRegressor(), _loader(shuffle=True), _loader())
    assert set(trainer.callback_metrics) >= SCALARS
    assert torch.isfinite(trainer.callback_metrics["liegg/symmetry_variance"])


def test_a_last_validation_batch_of_one_sample_is_analysed_with_the_rest() -> None:
    L.seed_everything(0, verbose=False)
    callback = _user_callback()
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback])
    # 257 validation samples in batches of 64: the fifth batch holds one
    trainer.fit(TinyRegressor(), _loader(shuffle=True), _loader(257))
    assert set(trainer.callback_metrics) >= SCALARS
    # ceil(34 / 5 batches) = 7 from each of the four full batches, and the lone sample
    assert float(trainer.callback_metrics["liegg/num_samples"]) == 4 * 7 + 1


class _Wide(L.LightningModule):
    """A linear model on 64 numbers: with ``VectorAction(64)``, an algebra of m = 4096 generators."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self(batch[0]).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_a_huge_algebra_on_a_short_fit_is_still_refused_with_its_warning() -> None:
    data = torch.utils.data.TensorDataset(torch.randn(128, 64, generator=torch.Generator().manual_seed(0)))
    callback = LieGGCallback(VectorAction(dim=64), log_images=False)  # gl(64): its solve alone takes seconds
    with pytest.warns(UserWarning, match=r"more than this fit's whole budget.*no analysis during `fit`"):
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(_Wide(), DataLoader(data, batch_size=32),
                                                              DataLoader(data, batch_size=32))
    assert callback.history == []


@pytest.mark.slow
def test_a_short_ddp_spawn_fit_logs_the_symmetry_in_the_parent(tmp_path: Path) -> None:
    script = tmp_path / "short_spawn.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import lightning as L\n"
        "from _lightning_models import O5DataModule, TinyRegressor\n"
        "from liegg_lightning import LieGGCallback, VectorAction\n"
        "if __name__ == '__main__':\n"
        "    L.seed_everything(0, verbose=False)\n"
        "    trainer = L.Trainer(accelerator='cpu', devices=2, strategy='ddp_spawn', max_epochs=1, logger=False,\n"
        "                        callbacks=[LieGGCallback(VectorAction(5, 2), reference_algebra='so')],\n"
        "                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)\n"
        "    trainer.fit(TinyRegressor(), datamodule=O5DataModule(n=256, batch_size=32))\n"
        "    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}\n"
        f"    open({str(tmp_path / 'parent.json')!r}, 'w').write(json.dumps(metrics))\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "parent.json").read_text())
    assert set(metrics) >= SCALARS
    # both processes analysed, each at least the floor (4 rows per generator: ceil(4 * 25 / 3) = 34)
    assert metrics["liegg/num_samples"] >= 2 * 34
