"""Symmetries beyond rotations: so(p, q) and the Lorentz algebra, affine motions of point sets,
signals and volumes.

Every expected value comes from outside the code under test: the defining equation of an algebra
solved by brute force, analytic tangents and transformations of smooth functions, autograd
Jacobians times hand-built tangents (``tests/reference.py``), the central difference of the finite
transformation (resampling), and exactly invariant functions whose symmetries are known.
"""

from __future__ import annotations

import math
from typing import Callable, List, Tuple

import pytest
import reference as R
import torch
from torch import Tensor

from liegg_lightning import (
    LieGGMetric,
    SignalAction,
    VectorAction,
    VolumeAction,
    algebras,
    analyze,
)
from liegg_lightning.actions import GroupAction
from liegg_lightning.functional import polarization_rows
from liegg_lightning.testing import check_action

pytestmark = pytest.mark.usefixtures("single_thread")

F64 = torch.float64
ETA = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=F64))  # Minkowski metric, time first


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_span(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(R.span_projector(a), R.span_projector(b), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- so(p, q)


def _solution_space(eta: Tensor) -> Tensor:
    """All ``h`` with ``h^T eta + eta h = 0``, by brute force: the null space of that linear map on gl(n)."""
    n = eta.shape[0]
    images = torch.stack([(e.T @ eta + eta @ e).reshape(-1) for e in R.gl_basis(n)], dim=1)  # (n^2, n^2)
    _, s, vh = torch.linalg.svd(images)
    null = vh[s < 1e-10]
    return null.reshape(-1, n, n)


@pytest.mark.parametrize(("p", "q"), [(1, 3), (2, 2), (3, 1), (1, 1), (2, 1), (4, 0), (0, 3)])
def test_so_pq_is_the_whole_algebra_preserving_the_metric(p: int, q: int) -> None:
    n = p + q
    eta = torch.diag(torch.tensor([1.0] * p + [-1.0] * q, dtype=F64))
    b = algebras.so_pq(p, q)
    assert b.shape == (n * (n - 1) // 2, n, n)
    flat = b.reshape(len(b), -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(len(b), dtype=F64), rtol=0, atol=1e-12)
    for h in b:
        torch.testing.assert_close(h.T @ eta + eta @ h, torch.zeros(n, n, dtype=F64), rtol=0, atol=1e-15)
    _same_span(b, _solution_space(eta))
    torch.testing.assert_close(algebras.metric(p, q), eta)
    _same_span(algebras.basis(f"so({p},{q})", (n, n)), b)
    if q == 0:
        _same_span(b, R.so_basis(n))  # so(n, 0) is so(n)


def test_lorentz_is_so13_and_exponentiates_to_lorentz_transformations() -> None:
    lorentz = algebras.basis("lorentz", (4, 4))
    assert lorentz.shape == (6, 4, 4)
    _same_span(lorentz, _solution_space(ETA))
    coeffs = torch.randn(6, generator=_gen(0), dtype=F64)
    lam = torch.linalg.matrix_exp(torch.einsum("k,kij->ij", coeffs, lorentz))
    torch.testing.assert_close(lam.T @ ETA @ lam, ETA, rtol=0, atol=1e-12)
    # a boost along x by rapidity y: E' = E cosh y + p_x sinh y (unit-norm generator, so scale by sqrt 2)
    y = 0.8
    boost = torch.linalg.matrix_exp(y * math.sqrt(2.0) * algebras.generator("boost_x", (4, 4)))
    expected = torch.eye(4, dtype=F64)
    expected[0, 0] = expected[1, 1] = math.cosh(y)
    expected[0, 1] = expected[1, 0] = math.sinh(y)
    torch.testing.assert_close(boost, expected, rtol=0, atol=1e-12)
    # Poincare: the Lorentz algebra on the linear part plus the four translations
    poincare = algebras.basis("poincare", (5, 5), homogeneous=True)
    assert poincare.shape == (10, 5, 5)
    embedded = torch.zeros(6, 5, 5, dtype=F64)
    embedded[:, :4, :4] = lorentz
    translations = torch.stack([R.unit_matrix(5, i, 4) for i in range(4)])
    _same_span(poincare, torch.cat([embedded, translations]))


def test_named_rotations_are_right_handed_and_boosts_are_minkowski() -> None:
    theta = 0.3
    for axis, (i, j) in zip("xyz", [(1, 2), (2, 0), (0, 1)]):
        rot = torch.linalg.matrix_exp(theta * math.sqrt(2.0) * algebras.generator(f"rotation_{axis}", (3, 3)))
        # turning about `axis` by theta takes e_i to cos e_i + sin e_j (right-handed: x -> y about z)
        expected = torch.zeros(3, dtype=F64)
        expected[i], expected[j] = math.cos(theta), math.sin(theta)
        torch.testing.assert_close(rot[:, i], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(algebras.generator("rotation_z", (3, 3))[:2, :2], algebras.generator("rotation", (2, 2)))
    # on 4-vectors the rotations act on (x, y, z) = coordinates 1..3, and with the boosts span so(1, 3)
    names = [f"{kind}_{a}" for kind in ("rotation", "boost") for a in "xyz"]
    _same_span(torch.stack([algebras.generator(n, (4, 4)) for n in names]), algebras.so_pq(1, 3))
    t = algebras.generator("translation", (2, 2), homogeneous=True)
    torch.testing.assert_close(t, torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64))
    torch.testing.assert_close(algebras.generator("translation_z", (4, 4), homogeneous=True), R.unit_matrix(4, 2, 3))


# ----------------------------------------------------------------------------- Lorentz-invariant functions


def _minkowski(a: Tensor, b: Tensor) -> Tensor:
    return (a @ ETA * b).sum(-1)


def lorentz_invariant(x: Tensor) -> Tensor:
    """Two outputs built only from p1^2, p2^2 and p1.p2 (Minkowski) of two 4-vectors ``(B, 8)``."""
    p = x.reshape(x.shape[0], 2, 4)
    a, b, c = _minkowski(p[:, 0], p[:, 0]), _minkowski(p[:, 1], p[:, 1]), _minkowski(p[:, 0], p[:, 1])
    return torch.stack([torch.tanh(a) + b * c, torch.sin(c) + a * b], dim=1)


def test_lorentz_invariant_function_gives_so13() -> None:
    x = torch.randn(256, 8, generator=_gen(1), dtype=F64)
    metric = LieGGMetric(VectorAction(dim=4, components=2), reference_algebra="lorentz",
                         known_generators=["boost_x", "rotation_z"])
    metric.update(lorentz_invariant, x)
    report = metric.compute()
    assert report.nullity == 6
    assert report.subspace_bias < 1e-8
    assert float(report.variances[6]) > 1e8 * max(float(report.variances[5]), 1e-300)
    assert report.known_variances["boost_x"] < 1e-10 * float(report.variances[6])


def test_a_frame_dependent_output_leaves_only_spatial_rotations() -> None:
    # adding the first particle's energy keeps only so(3) on the spatial coordinates 1..3
    def model(x: Tensor) -> Tensor:
        return torch.cat([lorentz_invariant(x), x[:, :1] ** 2], dim=1)

    x = torch.randn(256, 8, generator=_gen(2), dtype=F64)
    report = analyze(model, x, VectorAction(dim=4, components=2), reference_algebra=R.so_basis(4, [1, 2, 3]))
    assert report.nullity == 3
    assert report.subspace_bias < 1e-8


# ----------------------------------------------------------------------------- affine point sets


def affine_point_tangents(sample: Tensor, dim: int) -> Tensor:
    """Hand-built tangents ``(dim (dim + 1), *sample.shape)`` of one point set under aff(dim).

    ``d/dt exp(t E_ab) (x, 1) = e_a (x, 1)_b``: coordinate ``a`` of every point receives its ``b``-th
    homogeneous coordinate (1 for the translation ``b = dim``).
    """
    pts = sample.reshape(-1, dim).to(F64)
    homog = torch.cat([pts, torch.ones(len(pts), 1, dtype=F64)], dim=1)
    out = []
    for a in range(dim):
        for b in range(dim + 1):
            t = torch.zeros_like(pts)
            t[:, a] = homog[:, b]
            out.append(t.reshape(sample.shape))
    return torch.stack(out)


@pytest.mark.parametrize("grouped", [False, True])
def test_affine_vector_tangents_rows_and_transform(grouped: bool) -> None:
    gen = _gen(3)
    x = torch.randn(5, 12, generator=gen, dtype=F64)
    if grouped:
        x = x.reshape(5, 4, 3)
    action = VectorAction(dim=3, components=4, affine=True)
    assert action.num_generators == 12
    assert action.generator_shape == (4, 4)
    assert action.homogeneous
    expected = torch.stack([affine_point_tangents(s, 3) for s in x])
    torch.testing.assert_close(action.tangents(x), expected, rtol=0, atol=1e-14)

    w = torch.randn(3, 12, generator=gen, dtype=F64)

    def model(inp: Tensor) -> Tensor:
        return torch.tanh(inp.reshape(inp.shape[0], -1) @ w.T) ** 2

    rows = polarization_rows(model, x, action, derivative="reverse")
    brute = R.polarization_matrix(model, x, lambda s: affine_point_tangents(s, 3)).reshape(5, 3, 12)
    torch.testing.assert_close(rows, brute, rtol=1e-12, atol=1e-12)

    # a translation moves every point by t e_a; a general generator acts by matrix_exp on (x, 1)
    shift = action.transform(x, action.to_generator(torch.eye(12, dtype=F64)[7]), 0.5)  # E_13: along y
    moved = x.reshape(5, 4, 3).clone()
    moved[..., 1] += 0.5
    torch.testing.assert_close(shift, moved.reshape(x.shape), rtol=0, atol=1e-14)
    h = torch.randn(4, 4, generator=gen, dtype=F64)
    h[3] = 0.0
    g = torch.linalg.matrix_exp(0.7 * h)
    pts = x.reshape(5, 4, 3)
    expected_pts = pts @ g[:3, :3].T + g[:3, 3]
    torch.testing.assert_close(action.transform(x, h, 0.7), expected_pts.reshape(x.shape), rtol=1e-12, atol=1e-12)


def pairwise_distances(x: Tensor) -> Tensor:
    """Three outputs of the six squared distances between four points in R^3 ``(B, 12)``."""
    p = x.reshape(x.shape[0], 4, 3)
    d = (p[:, :, None] - p[:, None]).pow(2).sum(-1)
    iu = torch.triu_indices(4, 4, 1)
    dd = d[:, iu[0], iu[1]]
    return torch.stack([torch.sin(dd).sum(1), torch.log1p(dd).prod(1), dd[:, 0] * dd[:, 5]], dim=1)


def test_pairwise_distances_give_se3_and_so3_without_translations() -> None:
    x = torch.randn(256, 12, generator=_gen(4), dtype=F64)
    affine = analyze(pairwise_distances, x, VectorAction(dim=3, components=4, affine=True),
                     reference_algebra="euclidean", known_generators=["translation_x", "rotation_z", "scaling"])
    assert affine.nullity == 6
    assert affine.subspace_bias < 1e-8
    assert affine.known_variances["translation_x"] < 1e-10 * affine.known_variances["scaling"]
    linear = analyze(pairwise_distances, x, VectorAction(dim=3, components=4), reference_algebra="so")
    assert linear.nullity == 3
    assert linear.subspace_bias < 1e-8
    # the translations alone are learned too, and are not all of se(3)
    translations = analyze(pairwise_distances, x, VectorAction(dim=3, components=4, affine=True),
                           reference_algebra="translation")
    assert translations.subspace_bias > 0.5  # 6 learned generators against a 3-dimensional reference


def test_centroid_dependent_output_breaks_translations_only() -> None:
    # the centroid's norm is rotation-invariant but not translation-invariant
    def model(x: Tensor) -> Tensor:
        return torch.cat([pairwise_distances(x), x.reshape(x.shape[0], 4, 3).mean(1).norm(dim=1, keepdim=True)], 1)

    x = torch.randn(256, 12, generator=_gen(5), dtype=F64)
    report = analyze(model, x, VectorAction(dim=3, components=4, affine=True), reference_algebra="so")
    assert report.nullity == 3
    assert report.subspace_bias < 1e-8


# ----------------------------------------------------------------------------- signals


def signal_coordinates(length: int) -> Tensor:
    """Sample times centred on the signal, in units of half its length."""
    return (torch.arange(length, dtype=F64) - (length - 1) / 2.0) / (length / 2.0)


def bump(t: Tensor, centre: float, width: float) -> Tuple[Tensor, Tensor]:
    """A Gaussian bump and its analytic derivative."""
    f = torch.exp(-((t - centre) ** 2) / width**2)
    return f, -2.0 * (t - centre) / width**2 * f


def smooth_signals(batch: int = 3, length: int = 48) -> Tensor:
    t = signal_coordinates(length)
    chans = [bump(t, 0.1 + 0.05 * b, 0.25)[0] + 0.5 * bump(t, -0.2, 0.3)[0] for b in range(batch)]
    return torch.stack([torch.stack([c, 0.3 * c.roll(2)]) for c in chans])  # (B, 2, L), fades to ~0 at the ends


def test_signal_tangents_are_analytic_time_derivatives() -> None:
    length = 200
    t = signal_coordinates(length)
    f, df = bump(t, 0.15, 0.3)
    tangents = SignalAction(affine=True).tangents(f[None, None])  # (1, 2, 1, L): scaling, then shift
    inner = slice(1, -1)
    # (g f)(t) = f(g^-1 t): d/ds f(e^-s t) = -t f'(t); d/dtau f(t - tau) = -f'(t); O(h^2) off inside
    tol = 2e-3 * float(df.abs().max())
    torch.testing.assert_close(tangents[0, 0, 0, inner], (-t * df)[inner], rtol=0, atol=tol)
    torch.testing.assert_close(tangents[0, 1, 0, inner], (-df)[inner], rtol=0, atol=tol)
    # without channels, and the scaling-only action gives the first of them
    only = SignalAction().tangents(f[None])
    assert only.shape == (1, 1, length)
    torch.testing.assert_close(only[0, 0], tangents[0, 0, 0], rtol=0, atol=0)


def test_signal_edges_are_one_sided_or_wrapped() -> None:
    x = torch.randn(2, 1, 9, generator=_gen(6), dtype=F64)
    step = 1.0 / 4.5
    shift = SignalAction(affine=True).tangents(x)[:, 1]
    torch.testing.assert_close(shift, -R._diff(x, 2, step), rtol=0, atol=1e-12)
    periodic = SignalAction(affine=True, padding_mode="circular").tangents(x)[:, 1]
    idx = torch.arange(9)
    wrapped = (x[..., (idx + 1) % 9] - x[..., (idx - 1) % 9]) / (2 * step)
    torch.testing.assert_close(periodic, -wrapped, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection", "circular"])
def test_signal_transform_resamples_the_moved_function(padding_mode: str) -> None:
    length = 400
    t = signal_coordinates(length)
    f = bump(t, 0.1, 0.2)[0]
    action = SignalAction(affine=True, padding_mode=padding_mode)
    shifted = action.transform(f[None], action.to_generator(torch.tensor([0.0, 1.0], dtype=F64)), 0.3)
    # linear interpolation is off by up to h^2 |f''| / 8 (h = 0.005 here)
    torch.testing.assert_close(shifted[0], bump(t, 0.4, 0.2)[0], rtol=0, atol=5e-4)  # f(t - 0.3)
    scaled = action.transform(f[None, None], torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64), 0.4)
    torch.testing.assert_close(scaled[0, 0], bump(t * math.exp(-0.4), 0.1, 0.2)[0], rtol=0, atol=5e-4)
    if padding_mode == "circular":  # a whole period's shift is the identity, up to interpolation
        x = smooth_signals(2, 64)
        again = action.transform(x, action.to_generator(torch.tensor([0.0, 1.0], dtype=F64)), 2.0)
        torch.testing.assert_close(again, x, rtol=0, atol=1e-12)


def _periodic_signals(batch: int, length: int, seed: int) -> Tensor:
    gen = _gen(seed)
    k = torch.arange(1, 6, dtype=F64)
    amp = torch.randn(batch, 2, 5, generator=gen, dtype=F64)
    phase = 2 * math.pi * torch.rand(batch, 2, 5, generator=gen, dtype=F64)
    n = torch.arange(length, dtype=F64)
    return (amp[..., None] * torch.cos(2 * math.pi * k[:, None] * n / length + phase[..., None])).sum(2)


def test_power_spectrum_is_shift_invariant_not_scale_invariant() -> None:
    length = 64
    w = torch.randn(length // 2 + 1, 3, generator=_gen(7), dtype=F64)

    def power_spectrum_model(x: Tensor) -> Tensor:
        power = torch.fft.rfft(x, dim=-1).abs().pow(2).sum(1)
        return torch.tanh(power / 100) @ w

    periodic = _periodic_signals(32, length, seed=8)
    action = SignalAction(affine=True, padding_mode="circular")
    report = analyze(power_spectrum_model, periodic, action, reference_algebra="translation",
                     known_generators=["translation", "scaling"])
    shift, scale = report.known_variances["translation"], report.known_variances["scaling"]
    assert shift < 1e-20 * scale
    assert report.nullity == 1
    assert report.symmetry_bias < 1e-8
    # the same model on bumps that fade out before the ends, with the default one-sided edges
    t = signal_coordinates(length)
    bumps = torch.stack([torch.stack([bump(t, c, 0.15)[0], bump(t, 0.5 * c, 0.2)[0]])
                         for c in torch.linspace(-0.3, 0.3, 16).tolist()])
    report = analyze(power_spectrum_model, bumps, SignalAction(affine=True),
                     known_generators=["translation", "scaling"])
    assert report.known_variances["translation"] < 1e-10 * report.known_variances["scaling"]
    # control: a time-windowed linear read-out is not shift-invariant
    window = torch.exp(-signal_coordinates(length) ** 2 / 0.2)
    windowed = analyze(lambda x: (x * window).sum(-1), periodic, action, known_generators=["translation", "scaling"])
    assert windowed.known_variances["translation"] > 1e-2 * windowed.known_variances["scaling"]


# ----------------------------------------------------------------------------- volumes


def volume_coordinates(d: int, h: int, w: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Voxel-centre coordinates (x along W, y along H, z along D), centred, in half-largest-side units."""
    half = max(d, h, w) / 2.0
    axes = [(torch.arange(s, dtype=F64) - (s - 1) / 2.0) / half for s in (d, h, w)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return x, y, z


def blob(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """An anisotropic, off-centre Gaussian (no symmetry the tests could hide behind)."""
    return torch.exp(-((x - 0.1) ** 2 / 0.12 + (y + 0.05) ** 2 / 0.06 + (z - 0.08) ** 2 / 0.09 + 0.5 * x * y))


def blob_gradient(x: Tensor, y: Tensor, z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    f = blob(x, y, z)
    gx = -(2 * (x - 0.1) / 0.12 + 0.5 * y) * f
    gy = -(2 * (y + 0.05) / 0.06 + 0.5 * x) * f
    gz = -(2 * (z - 0.08) / 0.09) * f
    return gx, gy, gz


def _volume_tangent_errors(d: int, h: int, w: int) -> List[float]:
    """Largest error of each aff(3) tangent inside a ``(d, h, w)`` grid against the analytic one, relative."""
    x, y, z = volume_coordinates(d, h, w)
    grad = blob_gradient(x, y, z)
    coords = (x, y, z, torch.ones_like(x))
    tangents = VolumeAction(affine=True).tangents(blob(x, y, z)[None])  # no channel axis
    assert tangents.shape == (1, 12, d, h, w)
    inner = (slice(1, -1),) * 3
    errors = []
    for a in range(3):
        for b in range(4):
            # (g V)(p) = V(g^-1 p): the tangent of E_ab is -d_a V(p) p_b
            expected = (-grad[a] * coords[b])[inner]
            errors.append(float((tangents[0, 4 * a + b][inner] - expected).abs().max() / expected.abs().max()))
    return errors


def test_volume_tangents_are_analytic_and_second_order_on_a_non_cubic_grid() -> None:
    coarse = _volume_tangent_errors(20, 22, 24)
    fine = _volume_tangent_errors(40, 44, 48)
    assert max(fine) < 3e-2
    # central differences: halving the step divides the error by about 4 (one-sided would give 2)
    for c, f in zip(coarse, fine):
        assert 3.0 < c / f < 5.0, (c, f)


def test_volume_transform_turns_content_about_the_right_axes() -> None:
    d, h, w = 30, 34, 38
    x, y, z = volume_coordinates(d, h, w)
    vol = blob(x, y, z)[None, None]
    action = VolumeAction()
    theta = 0.4
    rot_z = algebras.generator("rotation_z", (3, 3)) * math.sqrt(2.0)
    turned = action.transform(vol, rot_z, theta)
    # (g V)(p) = V(g^-1 p): rotating by theta about z reads the blob at the point turned back by theta
    c, s = math.cos(theta), math.sin(theta)
    expected = blob(c * x + s * y, -s * x + c * y, z)
    assert float((turned[0, 0] - expected).abs().max()) < 2e-2
    stretch = torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=F64))  # scale z (depth) alone
    stretched = action.transform(vol, stretch, 0.3)
    assert float((stretched[0, 0] - blob(x, y, z * math.exp(-0.3))).abs().max()) < 2e-2
    shifted = VolumeAction(affine=True).transform(vol[0], R.unit_matrix(4, 0, 3), 0.2)  # along x (width)
    assert float((shifted[0] - blob(x - 0.2, y, z)).abs().max()) < 2e-2


def _smooth_volumes() -> Tensor:
    x, y, z = volume_coordinates(16, 14, 18)
    one = blob(x / 0.7, y / 0.7, z / 0.7)  # below 1e-6 on every face, where resampling pads
    return torch.stack([torch.stack([one, 0.5 * one.flip(-1)]), torch.stack([one.flip(-2), one])])


def _radial_model(shape: Tuple[int, int, int], squash: Tuple[float, float, float]) -> Callable[[Tensor], Tensor]:
    """A model of ``V``'s overlaps with two weights of the voxels' distance from the centre (in voxels);
    ``squash`` stretches that distance per axis (z, y, x): 1, 1, 1 is radially symmetric."""
    zz, yy, xx = torch.meshgrid(*(torch.arange(s, dtype=F64) - (s - 1) / 2 for s in shape), indexing="ij")
    r2 = (squash[0] * zz) ** 2 + (squash[1] * yy) ** 2 + (squash[2] * xx) ** 2
    w1, w2 = torch.exp(-r2 / 12.5), torch.exp(-r2 / 8.0) * r2 / 6.25

    def model(v: Tensor) -> Tensor:
        v = v.sum(1)
        a, b = (v * w1).sum((1, 2, 3)), (v * w2).sum((1, 2, 3))
        return torch.stack([torch.tanh(a / 10) + b**2 / 100, a * b / 100], dim=1)

    return model


def test_radially_symmetric_volume_model_has_near_zero_so3_variances() -> None:
    shape = (16, 18, 20)  # not a cube: rotations in voxel space are rotations only in isotropic units
    vols = torch.randn(16, 2, *shape, generator=_gen(9), dtype=F64)
    known = ["rotation_x", "rotation_y", "rotation_z", "scaling"]
    report = analyze(_radial_model(shape, (1.0, 1.0, 1.0)), vols, VolumeAction(), reference_algebra="rotation",
                     known_generators=known)
    kv = report.known_variances
    worst = max(kv[f"rotation_{a}"] for a in "xyz")
    # the model is exactly invariant in the continuum; on the grid the central differences leave O(h^2)
    assert worst < 2e-3 * kv["scaling"]
    assert report.nullity == 3
    assert report.subspace_bias < 0.1
    # control: squashing the weights along z keeps only the rotation about z
    squashed = analyze(_radial_model(shape, (1.6, 1.0, 1.0)), vols, VolumeAction(), known_generators=known)
    skv = squashed.known_variances
    assert skv["rotation_z"] < 2e-3 * skv["scaling"]
    assert min(skv["rotation_x"], skv["rotation_y"]) > 5e-2 * skv["scaling"]


# ----------------------------------------------------------------------------- all new actions


def _new_actions() -> List[Tuple[GroupAction, Tensor]]:
    points = torch.randn(4, 12, generator=_gen(10), dtype=F64)
    four_vectors = torch.randn(4, 2, 4, generator=_gen(11), dtype=F64)
    return [
        (VectorAction(dim=3, components=4, affine=True), points),
        (VectorAction(dim=4, components=2, affine=True), four_vectors),
        (SignalAction(), smooth_signals()),
        (SignalAction(affine=True), smooth_signals()[:, 0]),
        (SignalAction(affine=True, padding_mode="circular"), _periodic_signals(3, 40, seed=12)),
        (SignalAction(affine=True, padding_mode="reflection"), smooth_signals()),
        (VolumeAction(), _smooth_volumes()),
        (VolumeAction(affine=True), _smooth_volumes()[:, 0]),
        (VolumeAction(affine=True, padding_mode="border"), _smooth_volumes()),
    ]


@pytest.mark.parametrize("case", range(9))
def test_check_action_passes_and_tangent_gram_is_the_tangents_gram(case: int) -> None:
    action, x = _new_actions()[case]
    check_action(action, x)
    tangents = action.tangents(x).flatten(2)
    brute = torch.einsum("bmd,bnd->mn", tangents, tangents)
    torch.testing.assert_close(action.tangent_gram(x), brute, rtol=1e-12, atol=1e-12 * float(brute.abs().max()))
    mask = torch.tensor([True, False] + [True] * (x.shape[0] - 2))
    kept = tangents[mask]
    torch.testing.assert_close(action.tangent_gram(x, mask), torch.einsum("bmd,bnd->mn", kept, kept),
                               rtol=1e-12, atol=1e-12 * float(brute.abs().max()))
    # float32 inputs and gradients still give float64 rows
    grads = torch.randn(x.shape[0], 2, *x.shape[1:], generator=_gen(13))
    assert action.rows(x.float(), grads).dtype == F64
    vec = torch.randn(3, action.num_generators, generator=_gen(14), dtype=F64)
    torch.testing.assert_close(action.to_vector(action.to_generator(vec)), vec, rtol=0, atol=0)


def test_check_action_catches_a_wrong_sign() -> None:
    class Flipped(SignalAction):
        def tangents(self, x: Tensor) -> Tensor:
            return -super().tangents(x)

    with pytest.raises(AssertionError, match="central difference"):
        check_action(Flipped(affine=True), smooth_signals())


def test_reference_and_known_names_of_the_new_actions() -> None:
    rot = VolumeAction().reference_vectors("rotation")
    torch.testing.assert_close(rot.T @ rot, R.span_projector(R.so_basis(3)), rtol=0, atol=1e-12)
    assert VolumeAction(affine=True).reference_vectors("euclidean").shape == (6, 12)
    shift = SignalAction(affine=True).reference_vectors("translation")
    torch.testing.assert_close(shift.abs(), torch.tensor([[0.0, 1.0]], dtype=F64))
    assert SignalAction().known_vectors(["scaling"])["scaling"].tolist() == [1.0]
    with pytest.raises(ValueError, match="empty"):
        SignalAction().reference_vectors("so")
    with pytest.raises(ValueError, match="homogeneous"):
        SignalAction().reference_vectors("translation")
    lorentz = VectorAction(dim=4).reference_vectors("lorentz")
    torch.testing.assert_close(lorentz.T @ lorentz, R.span_projector(_solution_space(ETA)), rtol=0, atol=1e-12)
    assert VectorAction(dim=4, affine=True).reference_vectors("poincare").shape == (10, 20)


def test_new_actions_check_their_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="`affine` to be a bool"):
        VectorAction(dim=3, affine=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`affine` to be a bool"):
        VolumeAction(affine="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'circular'"):
        SignalAction(padding_mode="wrap")
    with pytest.raises(ValueError, match="padding_mode"):
        VolumeAction(padding_mode="circular")  # grid_sample has no circular mode in 3-D
    with pytest.raises(ValueError, match=r"\(B, C, L\) or \(B, L\)"):
        SignalAction().validate_input(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=">= 3"):
        SignalAction().validate_input(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        VolumeAction().validate_input(torch.zeros(2, 5, 5))
    with pytest.raises(ValueError, match="floating-point"):
        VolumeAction().validate_input(torch.zeros(2, 1, 5, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 12\) or \(B, 4, 3\)"):
        VectorAction(dim=3, components=4, affine=True).validate_input(torch.zeros(2, 11))
    with pytest.raises(ValueError, match="m=12"):
        VectorAction(dim=3, affine=True).to_generator(torch.zeros(9))
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        VolumeAction(affine=True).transform(torch.zeros(1, 5, 5, 5), torch.zeros(2, 2))
    assert repr(SignalAction(affine=True)) == "SignalAction(affine=True, padding_mode='zeros')"
    assert repr(VectorAction(dim=3, components=4, affine=True)) == "VectorAction(dim=3, components=4, affine=True)"
