"""What the callback shows: TensorBoard images and text, other loggers, no logger, and the JSON reports."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List

import lightning as L
import numpy as np
import pytest
import torch
from _lightning_models import O5DataModule, TinyRegressor, quiet_trainer
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from liegg_lightning import ImageAction, LieGGCallback, LieGGMetric, SymmetryReport, VectorAction, analyze

# the tests run with the defaults, which price the analysis: no contention of idle intra-op threads
pytestmark = pytest.mark.usefixtures("single_thread")

def _blob_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centres = 0.4 * torch.rand(n, 2, generator=g) - 0.2
    widths = 0.15 + 0.2 * torch.rand(n, 1, 1, generator=g)
    img = torch.exp(-((xx - centres[:, 0, None, None]) ** 2 + (yy - centres[:, 1, None, None]) ** 2) / widths**2)
    return img.unsqueeze(1)


class TinyCNN(L.LightningModule):
    def __init__(self, outputs: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                 nn.Linear(64, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x)[:, : y.shape[1]], y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _image_loader() -> DataLoader:
    x = _blob_images(64)
    y = torch.stack([x.sum((1, 2, 3)), (x**2).sum((1, 2, 3))], 1) / 50
    return DataLoader(TensorDataset(x, y), batch_size=32)


def _decoded(event: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def test_tensorboard_gets_every_picture_and_the_reports(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    metric = LieGGMetric(ImageAction(), reference_algebra="rotation", known_generators=["rotation", "scaling"])
    callback = LieGGCallback(metric)  # the defaults: the budget chooses the analyses, the last one always comes
    trainer = quiet_trainer(max_epochs=2, logger=logger, callbacks=[callback], log_every_n_steps=1)
    trainer.fit(TinyCNN(), _image_loader(), _image_loader())

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    expected = {"liegg/generators", "liegg/spectrum", "liegg/spectrum_history", "liegg/orbit"}
    assert expected <= set(tags["images"])
    for tag in expected:
        events = acc.Images(tag)
        # pictures are drawn within the overhead budget; the last analysis of a fit always is
        assert 1 <= len(events) <= 2
        # the pictures sit at the step of the analysis' scalars (Lightning's logged step)
        assert events[-1].step == acc.Scalars("liegg/symmetry_variance")[-1].step
        pixels = _decoded(events[-1])
        assert pixels.shape[0] >= 64
        assert pixels.shape[1] >= 64
        assert pixels.std() > 5.0, f"{tag} looks blank"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10, f"{tag} looks blank"
    assert any(t.startswith("liegg/generators_text") for t in tags["tensors"])
    text_tag = next(t for t in tags["tensors"] if t.startswith("liegg/generators_text"))
    text = acc.Tensors(text_tag)[-1].tensor_proto.string_val[0].decode()
    first = callback.last_report.generators[0]
    assert f"{float(first[0, 1]):.3f}" in text
    for scalar in ("liegg/symmetry_variance", "liegg/symmetry_bias", "liegg/variance/rotation"):
        assert scalar in tags["scalars"]

    reports = sorted((Path(logger.log_dir) / "liegg").glob("liegg-report_*.json"))
    # one file per analysis, the last one that of the fit's last epoch (2 batches an epoch: step 4)
    assert len(reports) == len(callback.history) >= 1
    assert reports[-1].name == f"liegg-report_fit_epoch0001_step0000004_{len(reports):04d}.json"
    loaded = SymmetryReport.load(reports[-1])
    torch.testing.assert_close(loaded.variances, callback.last_report.variances, rtol=0, atol=0)
    assert not list((Path(logger.log_dir) / "liegg").glob(".*tmp"))


def test_csv_logger_only_logs_the_scalars(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    callback = LieGGCallback(LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so"))
    trainer = quiet_trainer(max_epochs=1, logger=logger, callbacks=[callback])
    trainer.fit(TinyRegressor(), datamodule=O5DataModule(n=64))
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"liegg/symmetry_variance", "liegg/subspace_bias", "liegg/nullity"} <= set(header)
    assert len(list((Path(logger.log_dir) / "liegg").glob("liegg-report_fit_epoch0000_*.json"))) == 1


def test_no_logger_at_all_still_logs_to_callback_metrics(tmp_path: Path) -> None:
    callback = LieGGCallback(VectorAction(dim=5, components=2))
    trainer = quiet_trainer(max_epochs=1, logger=False, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(TinyRegressor(), datamodule=O5DataModule(n=64))
    assert math.isfinite(float(trainer.callback_metrics["liegg/symmetry_variance"]))
    assert not list(tmp_path.rglob("report_epoch*.json"))  # nowhere to write without a logger


class _ImageLogger(Logger):
    """A logger with ``log_image`` (as W&B has), recording what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.images: Dict[str, List[np.ndarray]] = {}
        self.metrics: List[Dict[str, float]] = []

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Dict[str, float], step: Any = None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_image(self, key: str, images: List[Any], step: Any = None, **kwargs: Any) -> None:
        self.images.setdefault(key, []).extend(images)


def test_loggers_with_log_image_get_the_pictures(tmp_path: Path) -> None:
    logger = _ImageLogger()
    callback = LieGGCallback(ImageAction(), save_reports=False, background_drawing=False)
    trainer = quiet_trainer(max_epochs=1, logger=logger, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(TinyCNN(), _image_loader(), _image_loader())
    assert {"liegg/generators", "liegg/spectrum", "liegg/spectrum_history", "liegg/orbit"} <= set(logger.images)
    image = logger.images["liegg/spectrum"][0]
    assert image.dtype == np.uint8
    assert image.ndim == 3
    assert min(image.shape[:2]) >= 64
    assert any("liegg/symmetry_variance" in m for m in logger.metrics)


def test_report_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = SymmetryReport.from_dict({
        "singular_values": [0.0, 1.0], "variances": [0.0, 1.0], "normalized_variances": [0.0, 2.0],
        "generators": [[1.0, 0.0], [0.0, 1.0]], "symmetry_variance": 0.0, "nullity": 1, "generator_shape": [2],
    })
    target = tmp_path / "report.json"
    report.save(target)
    before = target.read_text()

    real_fdopen = os.fdopen

    class HalfWritten:  # the process dies half way through writing the file
        def __init__(self, fd: int, *args: Any, **kwargs: Any) -> None:
            self.fh = real_fdopen(fd, *args, **kwargs)

        def __enter__(self) -> HalfWritten:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.fh.close()

        def write(self, text: str) -> None:
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", HalfWritten)
    with pytest.raises(KeyboardInterrupt):
        report.save(target)
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_forward_mode_inside_validate_matches_reverse_mode_analyze() -> None:
    # 10 outputs and m = 4: "auto" picks forward mode, here under Lightning's inference_mode
    L.seed_everything(0, verbose=False)
    model = TinyCNN(outputs=10)
    callback = LieGGCallback(ImageAction(), log_images=False, max_samples=None)  # every sample, as analyze
    quiet_trainer(callbacks=[callback]).validate(model, _image_loader(), verbose=False)
    assert callback.metric._resolved_derivative == "forward"
    expected = analyze(model, _image_loader(), ImageAction(), derivative="reverse")
    torch.testing.assert_close(callback.last_report.variances, expected.variances, rtol=1e-4, atol=1e-10)
