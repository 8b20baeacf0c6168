"""``ImageAction(border=k)`` and ``SymmetryReport.border_share``, against independent references.

* The interior-only equivariance variance of a zero-padded CNN's feature map equals a
  finite-transformation Lie derivative: the input and the feature map resampled by ``exp(t h)``
  with ``grid_sample`` (written out here, not ``ImageAction.transform``), a central difference in
  ``t``, interior pixels only. (Bilinear resampling differenced centrally in ``t`` is the central
  spatial difference at pixel centres, the convention of the rows inside a map.)
* ``border_share`` is the direct split of brute-force rows (a full Jacobian times tangents written
  with explicit slices: central inside, one-sided on the outer ring), and it is 0 for a circular
  convolution on images whose margin is flat, where nothing at the border breaks equivariance.
"""

from __future__ import annotations

import math
from typing import Dict

import pytest
import torch
from torch import Tensor, nn

from liegg_lightning import ImageAction, LieGGMetric, SymmetryReport, analyze
from liegg_lightning._errors import InputError

SIZE = 20
#: gl(2) generators (x along the width, y along the height) and, in aff(2), the translations
GL2 = {
    "rotation": torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64),
    "scaling": torch.eye(2, dtype=torch.float64),
    "shear": torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
    "stretch": torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64),
}
TRANSLATIONS = {
    "translation_x": torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
    "translation_y": torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
}


class Features(nn.Module):
    """Conv-Tanh-Conv-Tanh, the feature maps of the cross-checked CNN."""

    def __init__(self, padding_mode: str = "zeros", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, padding_mode=padding_mode), nn.Tanh(),
            nn.Conv2d(4, 4, 3, padding=1, padding_mode=padding_mode), nn.Tanh(),
        ).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _distance_to_edge(size: int) -> Tensor:
    idx = torch.arange(size)
    near = torch.minimum(idx, size - 1 - idx)
    return torch.minimum(near[:, None], near[None, :])


def _images(count: int, margin: int, background: float, seed: int = 1) -> Tensor:
    """Smooth blobs, flat (``background``) on the ``margin`` pixels next to every edge."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(SIZE, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.zeros(count, 1, SIZE, SIZE, dtype=torch.float64)
    for b in range(count):
        for _ in range(3):
            cx, cy = (margin + 2 + torch.rand(2, generator=g, dtype=torch.float64) * (SIZE - 2 * margin - 5)).tolist()
            width = 1.5 + 2.0 * float(torch.rand(1, generator=g, dtype=torch.float64))
            images[b, 0] += torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
    inside = (_distance_to_edge(SIZE) >= margin).to(torch.float64)
    return background + images * inside


def _homogeneous(h: Tensor) -> Tensor:
    if h.shape == (3, 3):
        return h
    out = torch.zeros(3, 3, dtype=torch.float64)
    out[:2, :2] = h
    return out


def _resample(images: Tensor, h: Tensor, t: float) -> Tensor:
    """``(exp(t h) I)(p) = I(exp(-t h) p)``, bilinear, zeros outside; ``p`` centred, in half-side units."""
    n = images.shape[-1]
    coords = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) / (n / 2)  # = grid_sample's, align_corners=False
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)
    source = points @ torch.linalg.matrix_exp(-t * _homogeneous(h)).T
    grid = source[..., :2].expand(images.shape[0], n, n, 2)
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _lie_derivative(features: nn.Module, images: Tensor, h: Tensor, eps: float = 1e-6) -> Tensor:
    """``d/dt [F(exp(t h) x) - exp(t h) F(x)]`` at 0 by a central difference: ``(B, C, H, W)``."""
    with torch.no_grad():
        out = features(images)

        def defect(t: float) -> Tensor:
            return features(_resample(images, h, t)) - _resample(out, h, t)

        return (defect(eps) - defect(-eps)) / (2 * eps)


def _interior_variance(lie: Tensor, h: Tensor, border: int) -> float:
    inside = _distance_to_edge(lie.shape[-1]) >= border
    return float((lie[..., inside] ** 2).sum() / lie.shape[0] / (h**2).sum())


def _variances(features: nn.Module, images: Tensor, action: ImageAction, known: Dict[str, Tensor]) -> SymmetryReport:
    affine = action.affine
    report = analyze(features, images, ImageAction(affine=affine), output_action=action,
                     known_generators={k: _homogeneous(v) if affine else v for k, v in known.items()},
                     derivative="forward", progress=False)
    assert isinstance(report, SymmetryReport)
    return report


@pytest.mark.parametrize("border", [1, 2])
def test_interior_variance_is_the_finite_transformation_lie_derivative(border: int) -> None:
    features = Features()
    images = _images(8, margin=2, background=0.0)  # zero margin: the input's edges play no part
    known = {**GL2, **TRANSLATIONS}
    report = _variances(features, images, ImageAction(affine=True, border=border), known)
    for name, h in known.items():
        reference = _interior_variance(_lie_derivative(features, images, h), h, border)
        assert reference > 1e-4, name  # the feature map is far from equivariant: a real comparison
        assert report.known_variances[name] == pytest.approx(reference, rel=1e-3), name


def test_whole_map_differs_from_the_interior_by_the_ring() -> None:
    features = Features()
    images = _images(8, margin=2, background=0.0)
    whole = _variances(features, images, ImageAction(), GL2)
    interior = _variances(features, images, ImageAction(border=1), GL2)
    for name in GL2:
        assert whole.known_variances[name] > interior.known_variances[name]


def _brute_force_rows(features: nn.Module, images: Tensor, h: Tensor) -> Tensor:
    """``J A_in(h) - A_out(h)`` per sample, channel and pixel ``(B, C, H, W)``: a full Jacobian, explicit tangents."""
    rows = []
    for x in images:
        jac = torch.autograd.functional.jacobian(lambda inp: features(inp[None])[0], x)  # (C, H, W, 1, H, W)
        out = features(x[None])[0].detach()
        a_in = _tangent(x, h)
        rows.append(torch.einsum("chwdij,dij->chw", jac, a_in) - _tangent(out, h))
    return torch.stack(rows)


def _tangent(img: Tensor, h: Tensor) -> Tensor:
    """``-grad I(p) . (h p)``: central differences inside, one-sided on the outer ring, half-side units."""
    n = img.shape[-1]
    step = 1.0 / (n / 2)

    def derivative(values: Tensor, axis: int) -> Tensor:
        v = values.movedim(axis, -1)
        d = torch.empty_like(v)
        d[..., 1:-1] = (v[..., 2:] - v[..., :-2]) / (2 * step)
        d[..., 0] = (v[..., 1] - v[..., 0]) / step
        d[..., -1] = (v[..., -1] - v[..., -2]) / step
        return d.movedim(-1, axis)

    dx, dy = derivative(img, -1), derivative(img, -2)
    coords = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * step
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    motion_x = h[0, 0] * gx + h[0, 1] * gy
    motion_y = h[1, 0] * gx + h[1, 1] * gy
    return -(dx * motion_x + dy * motion_y)


@pytest.mark.parametrize("border", [0, 1, 2])
def test_border_share_of_a_zero_padded_convolution_is_the_direct_split(border: int) -> None:
    features = Features()
    images = _images(6, margin=4, background=1.0)  # a flat, non-zero margin: zero padding breaks it
    report = _variances(features, images, ImageAction(border=border), {})
    lie = _brute_force_rows(features, images, report.generators[0]) ** 2
    near = _distance_to_edge(SIZE) < max(border, 1)
    ring = float(lie[..., near].sum())
    whole = float(lie.sum())
    kept = float(lie[..., _distance_to_edge(SIZE) >= border].sum())
    assert kept / images.shape[0] == pytest.approx(report.symmetry_variance, rel=1e-9)
    assert report.border_share == pytest.approx(ring / whole, rel=1e-9)
    assert 0.05 < report.border_share < 1.0
    assert report.summary()["border_share"] == report.border_share


def test_border_share_of_a_circular_convolution_is_zero() -> None:
    images = _images(6, margin=4, background=1.0)
    circular = _variances(Features("circular"), images, ImageAction(border=1), {})
    zero_padded = _variances(Features("zeros"), images, ImageAction(border=1), {})
    assert circular.symmetry_variance > 1e-6  # a 3x3 kernel is not rotation-equivariant inside the map
    assert circular.border_share < 1e-12
    assert zero_padded.border_share > 0.05


def test_layers_report_their_border_share_in_every_mode() -> None:
    features = Features()
    images = _images(4, margin=2, background=0.5)
    layers = {"net.1": ImageAction(border=1), "net.3": ImageAction(), "": None}
    reports = {}
    for mode in ("forward", "reverse"):
        metric = LieGGMetric(ImageAction(), layers=layers, derivative=mode)
        metric.update(features, images)
        reports[mode] = metric.compute()
    for name in ("net.1", "net.3"):
        assert 0.0 <= reports["forward"][name].border_share <= 1.0
        assert reports["forward"][name].border_share == pytest.approx(reports["reverse"][name].border_share, rel=1e-8)
        assert "border_share" in reports["forward"][name].summary()
    assert math.isnan(reports["forward"][""].border_share)  # invariance of a feature map: no output ring
    alone = _variances(features, images, ImageAction(border=1), {})
    single = LieGGMetric(ImageAction(), output_action=ImageAction(border=1))
    single.update(features.net[:2], images)
    assert single.compute().border_share == pytest.approx(reports["forward"]["net.1"].border_share, rel=1e-9)
    assert alone.num_rows == 4 * 4 * (SIZE - 2) ** 2  # border=1: the interior's rows only


def test_projected_outputs_keep_the_interior_and_have_no_share() -> None:
    features = Features()
    images = _images(4, margin=2, background=0.0)
    for mode, kwargs in (("sum", {}), ("random", {"num_projections": 3})):
        report = analyze(features, images, ImageAction(), output_action=ImageAction(border=2), output_mode=mode,
                         progress=False, **kwargs)
        assert isinstance(report, SymmetryReport)
        assert math.isnan(report.border_share)
        assert "border_share" not in report.summary()
    summed = analyze(features, images, ImageAction(), output_action=ImageAction(border=2), output_mode="sum",
                     progress=False)
    interior = _distance_to_edge(SIZE) >= 2
    direct = analyze(lambda x: features(x)[..., interior].sum(-1).sum(-1, keepdim=True), images, ImageAction(),
                     output_mode="jacobian", progress=False)
    assert isinstance(summed, SymmetryReport)
    assert isinstance(direct, SymmetryReport)
    # the summed equivariance rows minus the summed output tangents are not the invariance rows of the
    # summed interior, but their gradients part is: only check that the interior alone was summed
    assert summed.num_rows == direct.num_rows


def test_border_options_are_checked() -> None:
    with pytest.raises(ValueError, match="border"):
        ImageAction(border=-1)
    with pytest.raises(ValueError, match="border"):
        ImageAction(border=True)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="leaves no pixel"):
        ImageAction(border=3).border_masks((2, 5, 5))
    kept, ring = ImageAction(border=2).border_masks((3, 6, 7))
    assert kept.shape == ring.shape == (3 * 6 * 7,)
    assert int(kept.sum()) == 3 * 2 * 3
    assert bool((kept ^ ring).all())  # border >= 1: the ring is exactly what is left out
    assert repr(ImageAction(border=2)).endswith("border=2)")


def test_border_share_round_trips_and_reads_null_as_nan(tmp_path) -> None:
    features = Features()
    report = _variances(features, _images(3, margin=2, background=0.0), ImageAction(border=1), {})
    report.save(tmp_path / "r.json")
    assert SymmetryReport.load(tmp_path / "r.json").border_share == report.border_share
    data = report.to_dict()
    data["border_share"] = None
    assert math.isnan(SymmetryReport.from_dict(data).border_share)
    del data["border_share"]  # a report from before the field
    assert math.isnan(SymmetryReport.from_dict(data).border_share)
