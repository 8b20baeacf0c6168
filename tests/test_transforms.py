"""Finite transformations: ``transform_errors`` against a direct float64 computation, the analytic
values 0 (invariance) and 2 (an unrelated coordinate), the ready-made maps against explicit
indexing and ``ImageAction``'s rotation, and the value logged by the callback."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from _lightning_models import O5DataModule, TinyRegressor, o5_data, quiet_trainer
from torch import nn

from liegg_lightning import (
    ImageAction,
    LieGGCallback,
    LieGGMetric,
    SymmetryReport,
    VectorAction,
    analyze,
    transforms,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _image_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 7 * 7, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _images(n: int = 300, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_transform_errors_match_a_direct_computation() -> None:
    model, x = _image_model(), _images()
    maps = {"hflip": transforms.hflip, "rot90": transforms.rot90}
    report = analyze(model, x, ImageAction(), known_transforms=maps, batch_size=64)
    with torch.no_grad():
        f = model(x)
        spread = (f - f.mean(0)).pow(2).sum(1).mean()
        for name, g in maps.items():
            d = (model(g(x)) - f).pow(2).sum(1)
            expected = d.mean() / spread
            assert report.transform_errors[name] == pytest.approx(float(expected), rel=1e-10)
            # the delta-method standard error of a ratio of means, a different estimator of the same spread
            e = (f - f.mean(0)).pow(2).sum(1)
            delta = float(((d - expected * e).std() / spread) / math.sqrt(len(x)))
            assert 0.4 * delta < report.transform_errors_stderr[name] < 2.5 * delta
    assert report.summary()["transform/hflip"] == report.transform_errors["hflip"]


def test_transform_errors_do_not_depend_on_batching() -> None:
    model, x = _image_model(), _images()
    maps = {"vflip": transforms.vflip}
    one = analyze(model, x, ImageAction(), known_transforms=maps, batch_size=300)
    many = analyze(model, x, ImageAction(), known_transforms=maps, batch_size=37)
    assert one.transform_errors["vflip"] == pytest.approx(many.transform_errors["vflip"], rel=1e-12)
    assert one.transform_errors_stderr["vflip"] == pytest.approx(many.transform_errors_stderr["vflip"], rel=1e-9)


def test_invariance_gives_zero_and_an_unrelated_coordinate_gives_two() -> None:
    x = torch.randn(4000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    maps = {"swap": transforms.permute_axes([1, 0, 2]), "sign": transforms.flip_signs([0], dim=3)}

    def model(v: torch.Tensor) -> torch.Tensor:  # F = (x0, x0^2): x0 and x1 are independent normals
        return torch.stack([v[:, 0], v[:, 2] ** 2], 1)

    report = analyze(lambda v: model(v)[:, :1], x, VectorAction(dim=3), known_transforms=maps)
    # E (x1 - x0)^2 / Var x0 = 2 exactly for independent standard normals
    assert abs(report.transform_errors["swap"] - 2.0) < 3 * report.transform_errors_stderr["swap"]
    even = analyze(lambda v: v[:, :1] ** 2, x, VectorAction(dim=3), known_transforms=maps)
    assert even.transform_errors["sign"] == 0.0


def test_equivariance_with_an_output_map() -> None:
    x = torch.randn(500, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    flip = transforms.flip_signs([1], dim=2)
    maps = {"equivariant": (flip, flip), "invariant": flip}
    report = analyze(lambda v: v ** 3, x, VectorAction(dim=2), known_transforms=maps)
    assert report.transform_errors["equivariant"] == 0.0
    assert report.transform_errors["invariant"] > 0.5


def test_ready_made_maps_against_explicit_indexing_and_the_image_rotation() -> None:
    img = torch.arange(2 * 5 * 5, dtype=torch.float64).reshape(1, 2, 5, 5)
    assert torch.equal(transforms.hflip(img)[..., 0], img[..., 4])
    assert torch.equal(transforms.vflip(img)[..., 0, :], img[..., 4, :])
    # a quarter turn of the pixel grid is ImageAction's rotation by -pi/2 (y runs down the rows); the
    # named generator has unit Frobenius norm, [[0, -1], [1, 0]] / sqrt(2), so the angle is t / sqrt(2)
    turned = ImageAction().transform(img, ImageAction().known_generator("rotation"), t=-math.pi / 2 * math.sqrt(2))
    torch.testing.assert_close(transforms.rot90(img), turned, rtol=0, atol=1e-9)
    v = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(transforms.permute_axes([2, 0, 1])(v), v.reshape(2, 2, 3)[..., [2, 0, 1]].reshape(2, 6))
    assert torch.equal(transforms.permute_components([1, 0], dim=3)(v), v.reshape(2, 2, 3).flip(1).reshape(2, 6))
    assert torch.equal(transforms.flip_signs([1], dim=3)(v).reshape(2, 2, 3)[..., 1], -v.reshape(2, 2, 3)[..., 1])
    assert set(transforms.image_transforms()) == {"hflip", "vflip", "rot90"}


def test_bad_transforms_raise_before_any_work() -> None:
    with pytest.raises(ValueError, match=r"callable on a batch of inputs or a pair"):
        LieGGMetric(VectorAction(dim=2), known_transforms={"bad": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="without `layers`"):
        LieGGMetric(VectorAction(dim=2), layers=[""], known_transforms={"s": transforms.flip_signs([0], 2)})
    with pytest.raises(ValueError, match="permutation of 0..2"):
        transforms.permute_axes([0, 0, 1])
    with pytest.raises(ValueError, match="square images"):
        transforms.rot90(torch.zeros(1, 3, 4))


def test_report_round_trip_keeps_transform_errors(tmp_path) -> None:
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    report = analyze(lambda v: v, x, VectorAction(dim=2), known_transforms={"swap": transforms.permute_axes([1, 0])})
    report.transform_errors_stderr["none"] = float("nan")
    report.save(tmp_path / "r.json")
    back = SymmetryReport.load(tmp_path / "r.json")
    assert back.transform_errors == report.transform_errors
    assert math.isnan(back.transform_errors_stderr["none"])


def test_callback_logs_transform_errors(tmp_path) -> None:
    L.seed_everything(0, verbose=False)
    model = TinyRegressor(outputs=3)
    swap = transforms.permute_components([1, 0], dim=5)
    callback = LieGGCallback(VectorAction(dim=5, components=2), log_images=False, max_samples=None,
                             known_transforms={"swap": swap})
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=O5DataModule(n=128))
    val = torch.stack([o5_data(128, seed=1)[i][0] for i in range(128)])
    expected = analyze(model, val, VectorAction(dim=5, components=2), known_transforms={"swap": swap})
    logged = float(trainer.callback_metrics["liegg/transform/swap"])
    assert logged == pytest.approx(expected.transform_errors["swap"], rel=1e-5)
