"""Every logger kind installable here gets the pictures, the text and the report file, in its own run.

``log_pictures`` and ``save_report`` are called directly on a report from ``analyze`` (the callback
that calls them has tests of its own). W&B and MLflow are optional test dependencies.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import WarningCache
from PIL import Image

from liegg_lightning import ImageAction, SymmetryReport, analyze
from liegg_lightning.callback import _loggers as L
from liegg_lightning.pictures.rendering import orbit_outputs

TAGS = {"liegg/generators", "liegg/spectrum", "liegg/spectrum_history", "liegg/orbit"}
FILENAME = "liegg/report_fit_epoch0002_step000040.json"


@pytest.fixture(scope="module")
def analysed() -> Dict[str, Any]:
    torch.manual_seed(0)
    coords = torch.linspace(-1, 1, 12)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centres = 0.4 * torch.rand(32, 2) - 0.2
    x = torch.exp(-((xx - centres[:, 0, None, None]) ** 2 + 2 * (yy - centres[:, 1, None, None]) ** 2) / 0.1)[:, None]
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 144, 3)).eval()
    action = ImageAction()
    report = analyze(model, x, action, reference_algebra="rotation")
    orbit = orbit_outputs(model, action, x[0], report.generators[0], report.generators[-1])
    return {"report": report, "action": action, "x": x[0], "orbit": orbit}


def _send(loggers: List[Logger], a: Dict[str, Any], step: int = 40) -> Dict[str, np.ndarray]:
    return L.log_pictures(loggers, step, a["report"], a["action"], spectra=[a["report"].variances] * 2,
                          labels=["epoch 1", "epoch 2"], example_input=a["x"], orbit=a["orbit"])


def _same_report(path: Any, report: SymmetryReport) -> None:
    loaded = SymmetryReport.load(path)
    torch.testing.assert_close(loaded.variances, report.variances, rtol=0, atol=0)
    torch.testing.assert_close(loaded.generators, report.generators, rtol=0, atol=0)


def _is_picture(data: bytes) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert pixels.ndim == 3
    assert min(pixels.shape[:2]) >= 64
    assert pixels.std() > 5.0
    return pixels


def test_tensorboard_gets_images_text_and_the_report_file(tmp_path: Path, analysed: Dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    drawn = _send([logger], analysed)
    paths = L.save_report([logger], analysed["report"], FILENAME)

    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0}).Reload()
    assert set(acc.Tags()["images"]) >= TAGS
    for tag in TAGS:
        (event,) = acc.Images(tag)
        assert event.step == 40
        # what TensorBoard holds is what was drawn, in a 256-colour palette: close, pixel for pixel
        held = _is_picture(event.encoded_image_string).astype(np.int64)
        difference = np.abs(held - drawn[tag.split("/", 1)[1]].astype(np.int64))
        assert held.shape == drawn[tag.split("/", 1)[1]].shape
        assert difference.mean() < 5.0
        assert difference.max() <= 64
    text_tag = next(t for t in acc.Tags()["tensors"] if t.startswith("liegg/generators_text"))
    text = acc.Tensors(text_tag)[-1].tensor_proto.string_val[0].decode()
    assert f"{float(analysed['report'].generators[0][0, 1]):.3f}" in text
    assert paths == [str(Path(logger.log_dir) / FILENAME)]
    _same_report(paths[0], analysed["report"])


def test_csv_gets_the_report_file_and_one_notice(tmp_path: Path, analysed: Dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(L, "_WARNINGS", WarningCache())
    logger = CSVLogger(tmp_path, name="csv")
    with caplog.at_level(logging.INFO):
        assert _send([logger], analysed) == {}  # nothing drawn for a logger that cannot show it
        assert _send([logger], analysed) == {}
    notices = [r for r in caplog.records if "CSVLogger cannot show images" in r.getMessage()]
    assert len(notices) == 1
    paths = L.save_report([logger], analysed["report"], FILENAME)
    assert paths == [str(Path(logger.log_dir) / FILENAME)]
    _same_report(paths[0], analysed["report"])
    assert not list(Path(logger.log_dir).rglob("*.png"))


def test_wandb_offline_run_gets_images_text_and_the_report_file(tmp_path: Path, analysed: Dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path),
           "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_CONFIG_DIR": str(tmp_path / "config")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="liegg-test")
    try:
        run_dir = Path(logger.experiment.dir)
        _send([logger], analysed)
        paths = L.save_report([logger], analysed["report"], FILENAME)
    finally:
        logger.experiment.finish()
    assert paths == [str(run_dir / FILENAME)]
    _same_report(paths[0], analysed["report"])
    media = run_dir / "media"
    for tag in TAGS:
        (png,) = (media / "images" / "liegg").glob(f"{tag.split('/')[1]}_[0-9]*.png")
        _is_picture(png.read_bytes())
    (page,) = (media / "html" / "liegg").glob("generators_text_*.html")
    assert f"{float(analysed['report'].generators[0][0, 1]):.3f}" in page.read_text()


def test_mlflow_run_gets_images_text_and_the_report_artifact(tmp_path: Path, analysed: Dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(experiment_name="liegg-test", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    _send([logger], analysed)
    uris = L.save_report([logger], analysed["report"], FILENAME)
    client, run_id = logger.experiment, logger.run_id

    def files(path: str = "") -> List[str]:
        out = []
        for entry in client.list_artifacts(run_id, path or None):
            out += files(entry.path) if entry.is_dir else [entry.path]
        return out

    artifacts = files()
    for tag in TAGS:
        name = tag.replace("/", "~")  # MLflow's file name for the key "liegg/<tag>"
        pngs = [a for a in artifacts if a.startswith(f"images/{name}+step+40+") and a.endswith(".png")]
        assert len(pngs) == 1, (tag, artifacts)
        _is_picture(Path(client.download_artifacts(run_id, pngs[0], str(tmp_path / "dl"))).read_bytes())
    assert "liegg/generators_step00000040.md" in artifacts
    text = Path(client.download_artifacts(run_id, "liegg/generators_step00000040.md", str(tmp_path / "dl")))
    assert f"{float(analysed['report'].generators[0][0, 1]):.3f}" in text.read_text()
    assert FILENAME in artifacts
    assert len(uris) == 1
    assert uris[0].endswith(FILENAME)
    assert run_id in uris[0]
    _same_report(client.download_artifacts(run_id, FILENAME, str(tmp_path / "dl2")), analysed["report"])


class _ImageLogger(Logger):
    """A logger with only ``log_image``, recording what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.images: Dict[str, List[Any]] = {}

    @property
    def name(self) -> str:
        return "images"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Dict[str, float], step: Any = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_image(self, key: str, images: List[Any], step: Any = None, **kwargs: Any) -> None:
        self.images.setdefault(key, []).extend(images)


def test_other_loggers_with_log_image_get_the_pictures_but_no_report_file(
    tmp_path: Path, analysed: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(L, "_WARNINGS", WarningCache())
    logger = _ImageLogger()
    _send([logger], analysed)
    assert set(logger.images) == TAGS
    with caplog.at_level(logging.INFO):
        assert L.save_report([logger], analysed["report"], FILENAME) == []
    assert any("has no run directory" in r.getMessage() for r in caplog.records)


def test_no_logger_writes_nothing_and_bad_names_are_refused(tmp_path: Path, analysed: Dict[str, Any]) -> None:
    assert L.save_report([], analysed["report"], FILENAME) == []
    assert _send([], analysed) == {}
    for bad in ("/tmp/report.json", "../report.json", "liegg/../../report.json", ""):
        with pytest.raises(ValueError, match="relative file name"):
            L.save_report([], analysed["report"], bad)


def test_two_loggers_sharing_a_directory_get_one_file(tmp_path: Path, analysed: Dict[str, Any]) -> None:
    tb = TensorBoardLogger(tmp_path, name="run", version=0)
    csv = CSVLogger(tmp_path, name="run", version=0)
    assert tb.log_dir == csv.log_dir
    assert L.save_report([tb, csv], analysed["report"], FILENAME) == [str(Path(tb.log_dir) / FILENAME)]


def test_failures_become_warnings(tmp_path: Path, analysed: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import liegg_lightning.pictures.rendering as R

    logger = TensorBoardLogger(tmp_path, name="tb")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(R, "render_pictures", broken)
    with pytest.warns(UserWarning, match="drawing the report failed"):
        assert _send([logger], analysed) == {}
    monkeypatch.undo()

    class Broken(_ImageLogger):
        def log_image(self, key: str, images: List[Any], step: Any = None, **kwargs: Any) -> None:
            raise OSError("disk full")

        @property
        def log_dir(self) -> str:
            return str(tmp_path / "file-not-dir" / "x")

    (tmp_path / "file-not-dir").write_text("a file where a directory should be")
    with pytest.warns(UserWarning, match="logging pictures to Broken failed"):
        _send([Broken()], analysed)
    with pytest.warns(UserWarning, match="saving the report to Broken failed"):
        assert L.save_report([Broken()], analysed["report"], FILENAME) == []


def test_a_writer_without_torchs_internals_gets_the_pictures_through_add_image() -> None:
    calls: List[Any] = []

    class PublicOnlyWriter:  # tensorboardX-like: no `_get_file_writer`
        def add_image(self, tag: str, image: Any, global_step: int, dataformats: str) -> None:
            calls.append(("image", tag, image.shape, global_step, dataformats))

        def add_text(self, tag: str, text: str, global_step: int) -> None:
            calls.append(("text", tag, text, global_step))

        def flush(self) -> None:
            calls.append(("flush",))

    logger: Any = type("Logger", (), {"experiment": PublicOnlyWriter()})()
    picture = np.zeros((8, 6, 3), dtype=np.uint8)
    L._to_tensorboard(logger, {"spectrum": picture}, "h0 ...", 7, "liegg/")
    assert calls == [("image", "liegg/spectrum", (8, 6, 3), 7, "HWC"),
                     ("text", "liegg/generators_text", "h0 ...", 7), ("flush",)]
