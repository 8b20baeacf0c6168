"""Equivariance (``output_action``) and per-layer analysis (``layers``) against exact answers.

* ``x -> x g(|x|^2)`` on ``R^5`` commutes with every rotation: exactly ``so(5)``-equivariant, and
  invariant to nothing.
* An isotropic blur followed by a pointwise nonlinearity commutes with rotations and translations
  of the plane, up to the discretisation, on smooth images that vanish at the border.
* The rows are the derivative of ``F(g x) - g F(x)``, checked by finite differences of the real
  transformation (matrix exponentials).
* One pass over several layers equals analysing each layer on its own; forward and reverse agree.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import pytest
import reference as R
import torch
import torch.nn.functional as Fn
from conftest import gaussian_blobs
from torch import Tensor, nn

from liegg_lightning import ImageAction, LieGGMetric, SymmetryReport, TangentAction, VectorAction, analyze
from liegg_lightning._errors import InputError
from liegg_lightning.functional import polarization_rows
from liegg_lightning.functional.layers import layer_rows
from liegg_lightning.functional.polarization import choose_derivative
from liegg_lightning.pictures.layers import layers_figure, layers_table

pytestmark = pytest.mark.usefixtures("single_thread")


def _gram_value(metric: LieGGMetric) -> Tensor:
    """The accumulated Gram matrix's value: the metric stores it scaled by ``4^-scale_exponent``."""
    return torch.ldexp(metric.gram, 2 * metric.scale_exponent)


def _layer_values(metric: LieGGMetric) -> Tensor:
    """The value of each layer's Gram matrix ``(L, m, m)``: stored scaled, one exponent per layer."""
    return torch.ldexp(metric.layer_gram, 2 * metric.layer_scale_exponent[:, None, None])


def seeded(module: nn.Module, seed: int) -> nn.Module:
    """``module`` in float64 with seeded weights, the global RNG left alone."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(max(p.shape[-1], 1)))
    return module.double().eval()


class Radial(nn.Module):
    """``F(x) = x * g(|x|^2)``: commutes with every orthogonal map, and with no other linear map.

    ``g`` is a submodule, so its output (``O(5)``-invariant) is a layer that can be analysed too.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.g = seeded(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)), seed)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.g((x * x).sum(1, keepdim=True))


@pytest.fixture(scope="module")
def radial_inputs() -> Tensor:
    return torch.randn(200, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


# ----------------------------------------------------------------------------- x -> x g(|x|^2)


@pytest.mark.parametrize("derivative", ["forward", "reverse"])
def test_radial_map_is_exactly_so5_equivariant(radial_inputs: Tensor, derivative: str) -> None:
    report = analyze(Radial(), radial_inputs, VectorAction(dim=5), reference_algebra="so",
                     output_action=VectorAction(dim=5), derivative=derivative, progress=False)
    assert isinstance(report, SymmetryReport)
    assert report.nullity == 10  # dim so(5)
    assert report.subspace_bias is not None
    assert report.subspace_bias < 1e-12
    assert float(report.variances[9]) < 1e-12 * float(report.variances[10])
    # and the ten generators are antisymmetric: the projector onto so(5) keeps them
    vecs = report.generators[:10].reshape(10, 25)
    proj = R.span_projector(R.so_basis(5))
    assert float((vecs - vecs @ proj).norm()) < 1e-10


def test_radial_map_is_invariant_to_no_rotation(radial_inputs: Tensor) -> None:
    """Analysed for invariance, ``J A x = g(|x|^2) A x`` for antisymmetric ``A``: nothing vanishes.

    The variance along a rotation generator is known in closed form: ``mean_b g_b^2 |A x_b|^2 / |A|^2``.
    """
    a = R.unit_matrix(5, 0, 1) - R.unit_matrix(5, 1, 0)
    model = Radial()
    report = analyze(model, radial_inputs, VectorAction(dim=5), reference_algebra="so",
                     known_generators={"r01": a}, progress=False)
    assert isinstance(report, SymmetryReport)
    assert report.nullity == 0
    assert report.subspace_bias is not None
    assert report.subspace_bias > 0.5
    with torch.no_grad():
        g = model.g((radial_inputs**2).sum(1, keepdim=True))[:, 0]
    expected = float(((g**2) * ((radial_inputs @ a.T) ** 2).sum(1)).mean() / (a**2).sum())
    assert report.known_variances["r01"] == pytest.approx(expected, rel=1e-10)
    assert expected > 1e-2


@pytest.mark.parametrize("derivative", ["forward", "reverse"])
def test_rows_are_the_derivative_of_the_transformation_defect(derivative: str) -> None:
    """``rows[b, k, i] = d/dt [F(exp(t E_i) x) - exp(t E_i) F(x)]_k`` at ``t = 0`` (central differences),
    for a map with no symmetry, two input vectors and an output of two vectors ``(B, 2, 5)``."""
    net = seeded(nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 10)), 1)

    def model(x: Tensor) -> Tensor:
        return net(x).reshape(x.shape[0], 2, 5)

    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rows = polarization_rows(model, x, VectorAction(dim=5, components=2), output_action=VectorAction(dim=5),
                             derivative=derivative)
    assert rows.shape == (6, 10, 25)
    t = 1e-5
    for i, e in enumerate(R.gl_basis(5)):
        plus, minus = torch.linalg.matrix_exp(t * e), torch.linalg.matrix_exp(-t * e)
        with torch.no_grad():
            fx = model(x)
            moved_in = model((x.reshape(6, 2, 5) @ plus.T).reshape(6, 10)) - model(
                (x.reshape(6, 2, 5) @ minus.T).reshape(6, 10))
            moved_out = fx @ plus.T - fx @ minus.T
        expected = ((moved_in - moved_out) / (2 * t)).reshape(6, 10)
        assert torch.allclose(rows[:, :, i], expected, atol=1e-8, rtol=1e-6), i


@pytest.mark.parametrize("mode", ["jacobian", "sum", "random"])
def test_forward_and_reverse_equivariance_rows_agree(mode: str, radial_inputs: Tensor) -> None:
    net = seeded(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 5)), 4)
    kwargs = {"output_action": VectorAction(dim=5), "output_mode": mode, "num_projections": 3}
    fwd = polarization_rows(net, radial_inputs[:16], VectorAction(dim=5), derivative="forward",
                            generator=torch.Generator().manual_seed(7), **kwargs)
    rev = polarization_rows(net, radial_inputs[:16], VectorAction(dim=5), derivative="reverse",
                            generator=torch.Generator().manual_seed(7), **kwargs)
    assert fwd.shape == rev.shape == (16, {"jacobian": 5, "sum": 1, "random": 3}[mode], 25)
    assert torch.allclose(fwd, rev, atol=1e-12, rtol=1e-10)
    # both terms are projected alike: the projection of the full (one row per component) rows
    full = polarization_rows(net, radial_inputs[:16], VectorAction(dim=5), output_action=VectorAction(dim=5))
    if mode == "sum":
        assert torch.allclose(full.sum(1, keepdim=True), rev, atol=1e-12)
    elif mode == "random":
        z = torch.randn(3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64) / math.sqrt(3)
        assert torch.allclose(torch.einsum("rk,bkm->brm", z, full), rev, atol=1e-12)


def test_tangent_action_on_the_output_applies_its_fn_to_the_output(radial_inputs: Tensor) -> None:
    """A TangentAction with VectorAction's tangents gives VectorAction's rows, input and output alike."""
    vec = VectorAction(dim=5)
    tan = TangentAction(vec.tangents, generator_shape=(5, 5))
    model = Radial()
    a = polarization_rows(model, radial_inputs[:8], vec, output_action=vec)
    b = polarization_rows(model, radial_inputs[:8], tan, output_action=tan)
    assert torch.allclose(a, b, atol=1e-13)


# ----------------------------------------------------------------------------- images


def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable isotropic Gaussian blur, zero padding, same size."""
    r = math.ceil(4 * sigma)
    k = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(k**2) / (2 * sigma**2))
    k = k / k.sum()
    x = Fn.conv2d(x, k.view(1, 1, 1, -1), padding=(0, r))
    return Fn.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))


class BlurTanh(nn.Module):
    """``tanh(G_sigma * I)``, optionally average-pooled to half the resolution."""

    def __init__(self, sigma: float = 4.0, pool: bool = False) -> None:
        super().__init__()
        self.sigma, self.pool = sigma, pool

    def forward(self, x: Tensor) -> Tensor:
        y = torch.tanh(blur(x, self.sigma))
        return Fn.avg_pool2d(y, 2) if self.pool else y


KNOWN = ["rotation", "translation_x", "translation_y", "scaling", "shear", "stretch"]


@pytest.mark.parametrize("pool", [False, True], ids=["same-resolution", "half-resolution"])
def test_blur_then_pointwise_is_rotation_and_translation_equivariant(pool: bool) -> None:
    """Rotations and translations commute with the isotropic blur and the pointwise tanh; scalings,
    shears and stretches do not (the blur has a fixed width). On smooth 40x40 images that vanish at
    the border, the equivariance defect of the first is a discretisation error: below 1e-3 (1e-2
    after pooling, on a 20x20 grid) of the same direction's invariance variance, while the others
    keep more than 5% of theirs. The three most equivariant generators span se(2)."""
    images = gaussian_blobs(16, 40, 40, seed=0, sigma=(2.5, 3.5), border=3, channels=1)
    act = ImageAction(affine=True)
    common = {"reference_algebra": "euclidean", "known_generators": KNOWN, "derivative": "forward",
              "progress": False}
    eq = analyze(BlurTanh(pool=pool), images, act, output_action=ImageAction(affine=True), **common)
    inv = analyze(BlurTanh(pool=pool), images, act, **common)
    assert isinstance(eq, SymmetryReport)
    assert isinstance(inv, SymmetryReport)
    ratio = {k: eq.known_variances[k] / inv.known_variances[k] for k in KNOWN}
    limit = 1e-2 if pool else 1e-3
    for name in ("rotation", "translation_x", "translation_y"):
        assert ratio[name] < limit, ratio
    for name in ("scaling", "shear", "stretch"):
        assert ratio[name] > 5e-2, ratio
    assert eq.subspace_bias is not None
    assert eq.subspace_bias < (0.05 if pool else 0.01)
    assert inv.subspace_bias is not None
    assert inv.subspace_bias > 0.5
    if not pool:
        assert eq.nullity == 3


def test_feature_maps_at_any_resolution_use_the_same_coordinates() -> None:
    """Average pooling by 2 commutes with the action when coordinates are centred and in units of
    half the larger side at every resolution. Exact on a linear ramp ``I(p) = c . p + d`` (central
    and one-sided differences are exact, and the pooled ramp is the ramp at the block centres), on
    a non-square image: the tangent of the pooled image is the pooled tangent, to rounding."""
    act = ImageAction(affine=True)
    h, w = 24, 40
    half = max(h, w) / 2
    px = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2) / half  # the convention, written out
    py = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2) / half
    ramp = (0.7 * px[None, :] - 1.3 * py[:, None] + 0.2).reshape(1, 1, h, w)
    pooled_tangent = Fn.avg_pool2d(act.tangents(ramp)[0], 2)[:, 0]  # (m, 12, 20)
    tangent_of_pooled = act.tangents(Fn.avg_pool2d(ramp, 2))[0, :, 0]
    assert torch.allclose(pooled_tangent, tangent_of_pooled, atol=1e-12)
    # so a pooled linear map of the ramp is exactly equivariant to all of aff(2)
    rows = polarization_rows(lambda x: Fn.avg_pool2d(x, 2), ramp, act, output_action=act)
    assert float(rows.abs().max()) < 1e-12


# ----------------------------------------------------------------------------- layers


class SmallCNN(nn.Module):
    """Conv -> tanh -> pool -> conv -> tanh -> global mean -> linear, float64, seeded."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 3, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(3, 4, 3, padding=1), nn.Tanh()
        )
        self.head = nn.Linear(4, 3)
        seeded(self, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def small_images() -> Tensor:
    return gaussian_blobs(6, 16, 16, seed=2, sigma=(1.5, 2.0), border=2, channels=1)


LAYERS: Dict[str, Optional[ImageAction]] = {
    "features.1": ImageAction(), "features.2": ImageAction(), "features.4": ImageAction(), "head": None, "": None,
}


def single_layer_model(model: SmallCNN, name: str):  # noqa: ANN201 - a callable
    """The map from the input to one layer's output, built by hand (no hooks)."""
    f = model.features
    if name == "features.1":
        return lambda x: f[1](f[0](x))
    if name == "features.2":
        return lambda x: f[2](f[1](f[0](x)))
    if name == "features.4":
        return f
    if name in ("head", ""):
        return model
    raise AssertionError(name)


@pytest.mark.parametrize("derivative", ["forward", "reverse"])
def test_one_pass_over_layers_equals_each_layer_alone(small_images: Tensor, derivative: str) -> None:
    model = SmallCNN()
    metric = LieGGMetric(ImageAction(), layers=LAYERS, derivative=derivative)
    metric.update(model, small_images)
    for i, (name, out_action) in enumerate(LAYERS.items()):
        alone = LieGGMetric(ImageAction(), output_action=out_action, derivative="reverse")
        alone.update(single_layer_model(model, name), small_images)
        alone_gram = _gram_value(alone)
        tol = 1e-12 * float(alone_gram.abs().max())
        assert torch.allclose(_layer_values(metric)[i], alone_gram, rtol=1e-10, atol=tol)
        assert float(metric.layer_num_samples[i]) == 6
        assert float(metric.layer_num_rows[i]) == float(alone.num_rows)
    reports = metric.compute()
    assert isinstance(reports, dict)
    assert list(reports) == list(LAYERS)
    assert all(isinstance(r, SymmetryReport) for r in reports.values())


@pytest.mark.parametrize("mode", ["jacobian", "sum", "random"])
def test_layer_rows_forward_and_reverse_agree(small_images: Tensor, mode: str) -> None:
    model = SmallCNN()
    kwargs = {"output_mode": mode, "num_projections": 2}
    fwd = layer_rows(model, small_images, ImageAction(), LAYERS, derivative="forward",
                     generator=torch.Generator().manual_seed(1), **kwargs)
    rev = layer_rows(model, small_images, ImageAction(), LAYERS, derivative="reverse",
                     generator=torch.Generator().manual_seed(1), **kwargs)
    for name in LAYERS:
        assert torch.allclose(fwd[name], rev[name], atol=1e-12, rtol=1e-9), name


def test_output_transform_applies_to_the_model_output_only(small_images: Tensor) -> None:
    model = SmallCNN()
    transform = nn.LogSoftmax(dim=1)
    metric = LieGGMetric(ImageAction(), layers={"head": None, "": None}, output_transform=transform)
    metric.update(model, small_images)
    plain = LieGGMetric(ImageAction(), output_transform=transform)
    plain.update(model, small_images)
    head = LieGGMetric(ImageAction())
    head.update(model, small_images)  # the head is the last module: its output is the raw logits
    assert torch.allclose(_layer_values(metric)[1], _gram_value(plain), rtol=1e-10)
    assert torch.allclose(_layer_values(metric)[0], _gram_value(head), rtol=1e-10)
    assert not torch.allclose(_layer_values(metric)[0], _layer_values(metric)[1], rtol=1e-3)


def test_auto_derivative_for_layers_picks_fewer_passes(small_images: Tensor) -> None:
    # m = 4 JVPs carry every layer; reverse needs the layers' rows per sample together
    m = ImageAction().num_generators
    assert choose_derivative("auto", m, sum({"a": 1, "b": 2}.values())) == "reverse"
    assert choose_derivative("auto", m, sum({"a": 3, "b": 2}.values())) == "forward"
    assert choose_derivative("auto", m, sum({"a": 300}.values())) == "forward"
    assert choose_derivative("reverse", m, sum({"a": 300}.values())) == "reverse"
    metric = LieGGMetric(ImageAction(), layers=LAYERS)
    metric.update(SmallCNN(), small_images)
    assert metric._resolved_derivative == "forward"  # feature maps: hundreds of outputs, m = 4
    summed = LieGGMetric(ImageAction(), layers=["head"], output_mode="sum")
    summed.update(SmallCNN(), small_images)
    assert summed._resolved_derivative == "reverse"


def test_auto_derivative_with_an_output_action_starts_in_forward_mode(small_images: Tensor) -> None:
    """A feature-map output would cost one backward pass per component in reverse mode: the metric
    sizes the output with a plain forward pass first, and no backward pass runs."""
    model = SmallCNN()
    calls = []
    model.features[3].register_full_backward_hook(lambda *args: calls.append(1))
    metric = LieGGMetric(ImageAction(), output_action=ImageAction())
    metric.update(model.features, small_images)
    assert metric._resolved_derivative == "forward"
    assert not calls
    reverse = LieGGMetric(ImageAction(), output_action=ImageAction(), derivative="reverse")
    reverse.update(model.features, small_images)
    assert calls
    assert torch.allclose(_gram_value(metric), _gram_value(reverse), rtol=1e-9)


def test_layer_states_merge_like_one_metric(small_images: Tensor) -> None:
    model = SmallCNN()
    whole = LieGGMetric(ImageAction(), layers=LAYERS)
    whole.update(model, small_images)
    a, b = LieGGMetric(ImageAction(), layers=LAYERS), LieGGMetric(ImageAction(), layers=LAYERS)
    a.update(model, small_images[:2])
    b.update(model, small_images[2:])
    a.merge_state(b)
    assert torch.allclose(_layer_values(a), _layer_values(whole), rtol=1e-10)
    assert torch.equal(a.layer_num_samples, whole.layer_num_samples)
    # precomputed rows go in as a dict
    c = LieGGMetric(ImageAction(), layers=LAYERS)
    c.update_rows(whole.rows(model, small_images))
    assert torch.allclose(_layer_values(c), _layer_values(whole), rtol=1e-10)
    with pytest.raises(ValueError, match="dict"):
        c.update_rows(torch.zeros(2, 1, 4, dtype=torch.float64))
    assert not hasattr(LieGGMetric(ImageAction()), "layer_gram")  # no layers: today's states only


def test_analyze_returns_a_report_per_layer(radial_inputs: Tensor) -> None:
    reports = analyze(Radial(), radial_inputs, VectorAction(dim=5), reference_algebra="so",
                      layers={"g": None, "": VectorAction(dim=5)}, progress=False)
    assert isinstance(reports, dict)
    assert list(reports) == ["g", ""]
    # g(|x|^2) is O(5)-invariant, and the whole map O(5)-equivariant
    for report in reports.values():
        assert report.nullity == 10
        assert report.subspace_bias is not None
        assert report.subspace_bias < 1e-12


# ----------------------------------------------------------------------------- bad configuration


def test_output_action_must_share_the_generators() -> None:
    with pytest.raises(ValueError, match=r"generator shape \(5, 5\).*\(3, 3\)"):
        LieGGMetric(VectorAction(dim=5), output_action=VectorAction(dim=3))
    with pytest.raises(ValueError, match="share the input action's generators"):
        LieGGMetric(ImageAction(), output_action=ImageAction(affine=True))
    with pytest.raises(ValueError, match="GroupAction"):
        LieGGMetric(VectorAction(dim=5), output_action="vector")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer 'a'"):
        LieGGMetric(VectorAction(dim=5), layers={"a": VectorAction(dim=2)})


@pytest.mark.parametrize("derivative", ["forward", "reverse"])
def test_output_that_does_not_fit_the_output_action_is_named(derivative: str, radial_inputs: Tensor) -> None:
    net = seeded(nn.Linear(5, 3), 0)
    with pytest.raises(InputError, match=r"model output of shape \(200, 3\).*output of shape \(B, c\*5\)"):
        analyze(net, radial_inputs, VectorAction(dim=5), output_action=VectorAction(dim=5), derivative=derivative,
                progress=False)
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        polarization_rows(lambda x: x[:, 0, 0], torch.zeros(2, 8, 8, dtype=torch.float64), ImageAction(),
                          output_action=ImageAction(), derivative=derivative)
    layered = seeded(nn.Sequential(nn.Linear(5, 3), nn.Tanh()), 0)
    with pytest.raises(InputError, match=r"layer '0' of shape \(200, 3\).*\(B, c\*5\)"):
        analyze(layered, radial_inputs, VectorAction(dim=5), layers={"0": VectorAction(dim=5)}, derivative=derivative,
                progress=False)


def test_reverse_mode_checks_the_output_before_any_backward_pass(radial_inputs: Tensor) -> None:
    calls = []
    net = seeded(nn.Linear(5, 3), 0)
    net.register_full_backward_hook(lambda *args: calls.append(1))
    with pytest.raises(InputError):
        polarization_rows(net, radial_inputs, VectorAction(dim=5), output_action=VectorAction(dim=5),
                          derivative="reverse")
    assert not calls


def test_bad_layers_are_refused_clearly(radial_inputs: Tensor) -> None:
    with pytest.raises(ValueError, match="list of submodule names"):
        LieGGMetric(VectorAction(dim=5), layers="g")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        LieGGMetric(VectorAction(dim=5), layers=[])
    with pytest.raises(ValueError, match="twice"):
        LieGGMetric(VectorAction(dim=5), layers=["g", "g"])
    metric = LieGGMetric(VectorAction(dim=5), layers=["g", "nope"])
    with pytest.raises(InputError, match=r"'nope' is not a submodule of Radial.*g\.0"):
        metric.update(Radial(), radial_inputs)
    with pytest.raises(InputError, match="nn.Module"):
        LieGGMetric(VectorAction(dim=5), layers=["g"]).update(lambda x: x, radial_inputs)

    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(5, 5), nn.Linear(5, 5)

        def forward(self, x: Tensor) -> Tensor:
            return self.used(x)

    with pytest.raises(InputError, match="'unused' was not called"):
        LieGGMetric(VectorAction(dim=5), layers=["unused"]).update(Skips().double(), radial_inputs)

    class Pair(nn.Module):
        def forward(self, x: Tensor):  # noqa: ANN201
            return x, x

    class HoldsPair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: Tensor) -> Tensor:
            return self.pair(x)[0]

    with pytest.raises(InputError, match="layer 'pair'.*Tensor, got tuple"):
        LieGGMetric(VectorAction(dim=5), layers=["pair"]).update(HoldsPair(), radial_inputs)


# ----------------------------------------------------------------------------- progress and pictures


def test_analyze_progress_bar_is_opt_in_for_non_terminals(radial_inputs: Tensor, capsys) -> None:
    analyze(Radial(), radial_inputs, VectorAction(dim=5), batch_size=50, progress=False)
    analyze(Radial(), radial_inputs, VectorAction(dim=5), batch_size=50)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    analyze(Radial(), radial_inputs, VectorAction(dim=5), batch_size=50, progress=True)
    err = capsys.readouterr().err
    assert "LieGG" in err
    assert "200" in err
    with pytest.raises(ValueError, match="progress"):
        analyze(Radial(), radial_inputs, VectorAction(dim=5), progress="yes")  # type: ignore[arg-type]


def test_layers_figure_shows_each_layer_and_its_numbers(radial_inputs: Tensor) -> None:
    rot = R.unit_matrix(5, 0, 1) - R.unit_matrix(5, 1, 0)
    reports = analyze(Radial(), radial_inputs, VectorAction(dim=5), reference_algebra="so",
                      known_generators={"rot": rot, "scale": torch.eye(5, dtype=torch.float64)},
                      layers={"g.0": None, "g": None, "": VectorAction(dim=5)}, progress=False)
    assert isinstance(reports, dict)
    values, rows, cols = layers_table(reports, k=3)
    assert rows == ["g.0", "g", "output"]
    assert values.shape == (3, 3)
    for i, report in enumerate(reports.values()):
        assert values[i].tolist() == report.normalized_variances[:3].tolist()
    values, _, cols = layers_table(reports, known=["rot", "scale"])
    assert cols == ["rot", "scale"]
    for i, report in enumerate(reports.values()):
        mean = float(report.variances.mean())
        assert values[i, 0] == pytest.approx(report.known_variances["rot"] / mean)
    with pytest.raises(ValueError, match="no known variance 'shear'"):
        layers_table(reports, known=["shear"])
    fig = layers_figure(reports, known=["rot", "scale"])
    assert round(fig.get_figwidth() * fig.dpi) == 330  # the card the callback logs, drawn with matplotlib
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert [t for t in texts if t in ("g.0", "g", "output")] == ["g.0", "g", "output"]
    assert [t for t in texts if t in ("rot", "scale")] == ["rot", "scale"]


@pytest.mark.slow
def test_layerwise_example_runs_and_reports_every_layer(tmp_path) -> None:
    """``examples/layerwise.py --quick`` (this tree's package) prints one JSON line with every layer."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "examples" / "layerwise.py"), "--quick"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for stage in ("untrained", "trained"):
        layers = result[stage]
        assert list(layers) == ["features.0", "features.2", "features.3", "features.5", "pool", "output"]
        for name, row in layers.items():
            assert all(v >= 0 and math.isfinite(v) for v in row["invariance"].values()), name
            assert ("equivariance_defect" in row) == name.startswith("features")
    # a 2x2 average of smooth images moves with them: small defect for every generator
    assert max(result["untrained"]["features.0"]["equivariance_defect"].values()) < 0.1


def _weighted_jackknife(estimate: Tensor, replicates: Tensor, counts: Tensor) -> Tensor:
    """The delete-a-group jackknife for unequal groups, written out (Busing et al.), empty groups left out."""
    keep = counts > 0
    reps, n_j = replicates[keep], counts[keep]
    total, g = n_j.sum(), n_j.numel()
    h = (total / n_j)[:, None]
    pseudo = h * estimate - (h - 1) * reps
    centre = g * estimate - ((1 - n_j / total)[:, None] * reps).sum(0)
    return (((pseudo - centre) ** 2 / (h - 1)).sum(0) / g).sqrt()


def test_every_layer_report_has_the_jackknife_standard_errors_of_its_groups() -> None:
    from liegg_lightning.functional.symmetry import _sample_groups

    model, images = SmallCNN(), gaussian_blobs(24, 16, 16, seed=5, sigma=(1.5, 2.0), border=2, channels=1)
    reports = analyze(model, images, ImageAction(), layers=LAYERS, derivative="reverse")
    rows = layer_rows(model, images, ImageAction(), LAYERS, derivative="reverse")
    groups = _sample_groups(images, 8)  # a sample's group: a hash of its bits, whatever the batch
    counts = torch.bincount(groups, minlength=8).to(torch.float64)
    assert int((counts > 0).sum()) >= 2
    for name, r in rows.items():
        flat = [r[groups == g].reshape(-1, r.shape[-1]) for g in range(8)]
        parts = torch.stack([f.T @ f for f in flat])  # each group's Gram matrix, by brute force
        total = parts.sum(0)
        estimate = torch.linalg.eigvalsh(total).clamp_min(0) / 24
        replicates = torch.stack([torch.linalg.eigvalsh(total - p).clamp_min(0) / (24 - n)
                                  for p, n in zip(parts, counts)])
        expected = _weighted_jackknife(estimate, replicates, counts)
        got = reports[name].variance_stderr  # type: ignore[index]
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9 * float(estimate.max()))
        first = reports[name].symmetry_variance_stderr  # type: ignore[index]
        assert first == pytest.approx(float(expected[0]), rel=1e-6)
    # the model's own output as a layer is reported as the model alone is: same scale, same errors
    alone = analyze(model, images, ImageAction(), derivative="reverse")
    output = reports[""]  # type: ignore[index]
    torch.testing.assert_close(output.variances, alone.variances, rtol=1e-10, atol=0)  # type: ignore[union-attr]
    torch.testing.assert_close(output.variance_stderr, alone.variance_stderr, rtol=1e-8, atol=0)  # type: ignore[union-attr]
