"""``analyze`` end to end: exact symmetries, images, output and derivative modes, data forms, bad
input, non-finite rows, the report's serialisation and the model's state."""

from __future__ import annotations

import math

import pytest
import reference as R
import torch
from conftest import O5Model, gaussian_blobs
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from liegg_lightning import GroupAction, ImageAction, SymmetryReport, VectorAction, analyze
from liegg_lightning.functional import input_gradients, polarization_rows

pytestmark = pytest.mark.usefixtures("single_thread")

O5 = VectorAction(dim=5, components=2)


def gram_of(report: SymmetryReport, action: GroupAction) -> Tensor:
    """``sum sigma_i^2 v_i v_i^T``: the Gram matrix behind a report."""
    v = action.to_vector(report.generators)  # (m, m), one unit generator a row
    return v.T @ torch.diag(report.singular_values**2) @ v


def relative(a: Tensor, b: Tensor) -> float:
    """Relative Frobenius distance of ``a`` from ``b``."""
    return float((a - b).norm() / b.norm())


class GenericModel(nn.Module):
    """A seeded MLP from ``R^10`` with no symmetry at all."""

    def __init__(self, outputs: int = 3, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():  # seeded weights without moving the global RNG
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------- exact symmetries


def test_o5_invariant_model_learns_so5_exactly(o5_model: O5Model, o5_inputs: Tensor) -> None:
    report = analyze(o5_model, o5_inputs, O5, reference_algebra="so")
    assert report.nullity == 10
    assert report.subspace_bias <= 1e-5
    assert report.closure_error <= 1e-6
    # the ten most invariant generators are antisymmetric, the rest are far from it
    gens = report.generators[:10]
    assert float((gens + gens.transpose(-1, -2)).norm(dim=(-2, -1)).max()) <= 1e-5
    assert float(report.biases[10:].min()) > 0.5
    assert float(report.normalized_variances[9]) < 1e-10 < float(report.normalized_variances[10])


def test_extra_output_leaves_so4_on_the_last_four_coordinates(o5_inputs: Tensor) -> None:
    model = O5Model(extra_output=True).eval()
    so4 = R.so_basis(5, [1, 2, 3, 4])  # basis tensor (6, 5, 5) as the reference
    report = analyze(model, o5_inputs, O5, reference_algebra=so4)
    assert report.nullity == 6
    assert report.subspace_bias <= 1e-5
    assert report.closure_error <= 1e-6
    # none of the six moves coordinate 0
    assert float(report.generators[:6, 0, :].abs().max()) <= 1e-5
    assert float(report.generators[:6, :, 0].abs().max()) <= 1e-5


# ----------------------------------------------------------------------------- images


def _moment_model(images: Tensor) -> Tensor:
    """Sees only sum I, sum I^2, sum I^3: invariant to every area-preserving map of a smooth image."""
    f = images.flatten(1)
    return torch.stack([f.sum(1), (f**2).sum(1), (f**3).sum(1)], 1) / 100


@pytest.fixture(scope="module")
def blob_images() -> Tensor:
    return gaussian_blobs(128, 32, 32, seed=3, sigma=(2.0, 3.0))


def test_images_sl2_is_learned_and_scaling_is_not(blob_images: Tensor) -> None:
    report = analyze(_moment_model, blob_images, ImageAction(affine=False), reference_algebra="sl")
    assert report.nullity == 3
    assert report.subspace_bias < 5e-3
    assert report.closure_error < 1e-2
    scaling = torch.eye(2, dtype=torch.float64) / math.sqrt(2)
    assert abs(float((report.generators[-1] * scaling).sum())) > 0.999


def test_images_special_affine_is_learned_and_scaling_is_not(blob_images: Tensor) -> None:
    report = analyze(
        _moment_model, blob_images.unsqueeze(1), ImageAction(affine=True), reference_algebra="special_affine"
    )
    assert report.nullity == 5
    assert report.subspace_bias < 5e-3
    assert report.closure_error < 1e-2
    assert float(report.generators[:, 2, :].abs().max()) == 0.0  # homogeneous: zero last row
    scaling = torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)) / math.sqrt(2)
    assert abs(float((report.generators[-1] * scaling).sum())) > 0.999
    # the same through the bias against the one-dimensional "scaling" algebra
    by_name = analyze(
        _moment_model, blob_images.unsqueeze(1), ImageAction(affine=True), reference_algebra="scaling"
    )
    assert float(by_name.biases[-1]) < 5e-3
    assert float(by_name.biases[:5].min()) > 0.99


def test_non_square_images_keep_rotations_rotations() -> None:
    # radially symmetric blobs at the centre of a 36x60 frame are fixed by rotations about the
    # centre, so even a generic model is rotation invariant on them; with coordinates in units of
    # half the larger side the learned generator is the rotation itself
    images = gaussian_blobs(64, 36, 60, seed=3, centred=True, blobs=2, sigma=(2.8, 3.5))
    w = torch.randn(8, 36 * 60, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 10

    def model(img: Tensor) -> Tensor:
        return torch.tanh(img.flatten(1) @ w.T)

    # a per-axis normalisation would have called this stretched rotation "the rotation"
    half_sides = torch.diag(torch.tensor([30.0, 18.0], dtype=torch.float64))
    turn = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    per_axis = half_sides @ turn @ torch.linalg.inv(half_sides)
    report = analyze(
        model, images, ImageAction(), reference_algebra="rotation",
        known_generators={"rotation": turn, "per_axis_rotation": per_axis},
    )  # fmt: skip
    assert report.nullity == 1
    assert report.subspace_bias < 3e-2
    assert report.known_variances["rotation"] < 1e-2 * report.known_variances["per_axis_rotation"]


# ----------------------------------------------------------------------------- output modes


def test_sum_mode_is_the_gradient_of_the_summed_output(o5_inputs: Tensor) -> None:
    model = GenericModel(outputs=4).double().eval()
    x = o5_inputs[:64].double()
    grads = input_gradients(model, x, output_mode="sum")
    xg = x.clone().requires_grad_(True)
    (direct,) = torch.autograd.grad(model(xg).sum(), xg)
    torch.testing.assert_close(grads, direct.unsqueeze(1), rtol=1e-12, atol=1e-12)
    report = analyze(model, x, O5, output_mode="sum")
    e = R.polarization_matrix(model, x, lambda s: R.vector_tangents(s, 5), summed=True)
    s, _ = R.spectrum(e)
    assert report.num_rows == 64
    torch.testing.assert_close(report.singular_values, s, rtol=0, atol=1e-9 * float(s.max()))


def test_random_projections_are_unbiased_for_the_jacobian_gram(o5_inputs: Tensor) -> None:
    model = GenericModel(outputs=12, seed=1).double().eval()
    x = o5_inputs[:64].double()
    target = R.gram(R.polarization_matrix(model, x, lambda s: R.vector_tangents(s, 5)))
    jac = analyze(model, x, O5)
    assert relative(gram_of(jac, O5), target) < 1e-10
    # many projections: one draw is already close
    many = analyze(model, x, O5, output_mode="random", num_projections=4000, seed=0)
    assert many.num_rows == 64 * 4000
    assert relative(gram_of(many, O5), target) < 0.1
    # few projections: one draw is far off (measured 0.55) ...
    one = gram_of(analyze(model, x, O5, output_mode="random", num_projections=8, seed=0), O5)
    assert relative(one, target) > 0.3
    # ... but the average over draws converges to it: no bias. A batch draws one projection
    # matrix, so batches of 4 give 16 draws a call, 1024 over 64 seeds (measured error 0.040;
    # projections scaled by 1/sqrt(r+1) instead of 1/sqrt(r) give 0.12, scale 0.885)
    draws = [
        gram_of(analyze(model, x, O5, output_mode="random", num_projections=8, seed=s, batch_size=4), O5)
        for s in range(64)
    ]
    mean = torch.stack(draws).mean(0)
    assert relative(mean, target) < 0.07
    scale = float((mean * target).sum() / (target * target).sum())
    assert abs(scale - 1) < 0.03, scale


@pytest.mark.parametrize("derivative", ["reverse", "forward"])
def test_random_mode_uses_its_own_generator(o5_inputs: Tensor, derivative: str) -> None:
    model = GenericModel(outputs=6).eval()
    state = torch.get_rng_state()
    a = analyze(model, o5_inputs, O5, output_mode="random", num_projections=3, seed=5, derivative=derivative)
    assert torch.equal(torch.get_rng_state(), state)
    b = analyze(model, o5_inputs, O5, output_mode="random", num_projections=3, seed=5, derivative=derivative)
    c = analyze(model, o5_inputs, O5, output_mode="random", num_projections=3, seed=6, derivative=derivative)
    torch.testing.assert_close(a.singular_values, b.singular_values, rtol=0, atol=0)
    assert relative(c.singular_values, a.singular_values) > 1e-3


def test_forward_and_reverse_random_draw_the_same_projections(o5_inputs: Tensor) -> None:
    model = GenericModel(outputs=6).double().eval()
    x = o5_inputs.double()
    rows = {
        mode: polarization_rows(
            model, x, O5, derivative=mode, output_mode="random", num_projections=3,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        for mode in ("forward", "reverse")
    }
    fwd, rev = rows["forward"], rows["reverse"]
    torch.testing.assert_close(fwd, rev, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- derivative modes


def test_forward_and_reverse_give_the_same_rows(o5_inputs: Tensor, blob_images: Tensor) -> None:
    model = GenericModel(outputs=5).eval()
    fwd = polarization_rows(model, o5_inputs, O5, derivative="forward")
    rev = polarization_rows(model, o5_inputs, O5, derivative="reverse")
    assert fwd.shape == rev.shape == (256, 5, 25)
    torch.testing.assert_close(fwd, rev, rtol=0, atol=1e-5 * float(rev.abs().max()))

    images = blob_images[:16].float()
    fwd = polarization_rows(_moment_model, images, ImageAction(affine=True), derivative="forward")
    rev = polarization_rows(_moment_model, images, ImageAction(affine=True), derivative="reverse")
    torch.testing.assert_close(fwd, rev, rtol=0, atol=1e-5 * float(rev.abs().max()))

    a = analyze(model, o5_inputs, O5, derivative="forward")
    b = analyze(model, o5_inputs, O5, derivative="reverse")
    assert relative(gram_of(a, O5), gram_of(b, O5)) < 1e-5


# ----------------------------------------------------------------------------- data forms


def test_tensor_dataloader_and_dict_batches_agree(o5_inputs: Tensor) -> None:
    model = GenericModel(outputs=3).eval()
    labels = torch.arange(len(o5_inputs))
    whole = analyze(model, o5_inputs, O5, reference_algebra="so")
    loader = DataLoader(TensorDataset(o5_inputs, labels), batch_size=48, shuffle=False)
    batched = analyze(model, loader, O5, reference_algebra="so")
    dicts = [{"y": b[1], "x": b[0]} for b in loader]
    keyed = analyze(model, dicts, O5, reference_algebra="so", input_key="x")
    grouped = analyze(model, o5_inputs.reshape(-1, 2, 5), O5, reference_algebra="so", batch_size=100)
    for other in (batched, keyed, grouped):
        assert other.num_samples == 256
        assert other.num_rows == 768
        assert relative(gram_of(other, O5), gram_of(whole, O5)) < 1e-5
        torch.testing.assert_close(other.variances, whole.variances, rtol=1e-4, atol=0)
    # max_samples stops part-way through a batch
    capped = analyze(model, loader, O5, max_samples=100)
    head = analyze(model, o5_inputs[:100], O5)
    assert capped.num_samples == 100
    assert relative(gram_of(capped, O5), gram_of(head, O5)) < 1e-5


def test_bad_input_key_is_reported(o5_inputs: Tensor) -> None:
    model = GenericModel().eval()
    with pytest.raises(ValueError, match="input_key"):
        analyze(model, [{"inputs": o5_inputs}], O5, input_key="x")
    with pytest.raises(ValueError, match="input_key"):
        analyze(model, [(o5_inputs,)], O5, input_key=3)


# ----------------------------------------------------------------------------- bad input


class Recording(nn.Module):
    """Counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("form", ["tensor", "loader"])
def test_bad_input_is_refused_before_the_model_runs(o5_inputs: Tensor, form: str) -> None:
    model = Recording(GenericModel())

    def data(x: Tensor):
        return x if form == "tensor" else DataLoader(TensorDataset(x), batch_size=32)

    with pytest.raises(ValueError, match=r"\(B, 10\) or \(B, 2, 5\)") as info:
        analyze(model, data(o5_inputs[:, :9]), O5)
    assert "(256, 9)" in str(info.value) or "(32, 9)" in str(info.value)
    with pytest.raises(ValueError, match=r"floating.*\(B, 10\) or \(B, 2, 5\)"):
        analyze(model, data(o5_inputs.long()), O5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, H, W\)"):
        analyze(model, data(o5_inputs), ImageAction())
    assert model.calls == 0


def test_algebra_over_memory_budget_is_refused_before_any_work(o5_inputs: Tensor) -> None:
    model = Recording(GenericModel())
    with pytest.raises(ValueError, match="MiB") as info:
        analyze(model, torch.randn(4, 200), VectorAction(dim=200), memory_budget=1 << 20)
    assert "m=40000" in str(info.value)
    assert model.calls == 0


def test_non_finite_rows_are_dropped_and_counted(o5_inputs: Tensor) -> None:
    inner = GenericModel(outputs=3).eval()

    def model(x: Tensor) -> Tensor:
        # NaN output (and gradient) for samples marked by a huge first coordinate
        marked = x.reshape(x.shape[0], -1)[:, :1] > 50
        return inner(x) * torch.where(marked, torch.full_like(marked, float("nan"), dtype=x.dtype), 1.0)

    x = o5_inputs.clone()
    bad = torch.zeros(len(x), dtype=torch.bool)
    bad[::9] = True
    x[bad, 0] = 100.0
    dirty = analyze(model, x, O5, batch_size=64)
    clean = analyze(model, x[~bad], O5, batch_size=64)
    assert dirty.num_skipped == int(bad.sum()) == 29
    assert dirty.num_samples == clean.num_samples == 256 - 29
    assert dirty.num_rows == clean.num_rows == 3 * (256 - 29)
    assert bool(torch.isfinite(dirty.singular_values).all())
    assert relative(gram_of(dirty, O5), gram_of(clean, O5)) < 1e-5
    torch.testing.assert_close(dirty.variances, clean.variances, rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------- the report


# ----------------------------------------------------------------------------- model state


def test_analyze_restores_train_mode_and_leaves_grads_alone(o5_inputs: Tensor) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 2))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = analyze(model, o5_inputs, O5)
    assert model.training
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and batch-norm statistics untouched
    # it ran in eval mode: deterministic, and equal to analysing the eval-mode model
    model.eval()
    again = analyze(model, o5_inputs, O5)
    assert not model.training
    torch.testing.assert_close(report.singular_values, again.singular_values, rtol=0, atol=0)
