"""Group actions and reference algebras, checked against hand-built tangents, ``matrix_exp`` and
finite differences of the finite transformations."""

from __future__ import annotations

import math

import pytest
import reference as R
import torch
from conftest import gaussian_blobs

from liegg_lightning import ImageAction, TangentAction, VectorAction, algebras
from liegg_lightning.functional import polarization_rows

pytestmark = pytest.mark.usefixtures("single_thread")

# ----------------------------------------------------------------------------- VectorAction


@pytest.mark.parametrize("grouped", [False, True])
def test_vector_tangents_match_hand_built_and_matrix_exp(grouped: bool) -> None:
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if grouped:
        x = x.reshape(6, 2, 5)
    action = VectorAction(dim=5, components=2)
    tangents = action.tangents(x)
    assert tangents.shape == (6, 25, *x.shape[1:])
    by_hand = torch.stack([R.vector_tangents(s, 5) for s in x])
    by_fd = torch.stack([R.vector_tangents_fd(s, 5) for s in x])
    # the reference's hand-built tangents are themselves checked against matrix_exp
    torch.testing.assert_close(by_hand, by_fd, rtol=0, atol=1e-8)
    torch.testing.assert_close(tangents, by_hand, rtol=0, atol=1e-14)


def test_vector_rows_match_jacobian_times_tangents() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 10, generator=gen, dtype=torch.float64)

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.reshape(x.shape[0], -1) @ w.T) ** 2

    x = torch.randn(7, 2, 5, generator=gen, dtype=torch.float64)
    rows = polarization_rows(model, x, VectorAction(dim=5, components=2), derivative="reverse")
    expected = R.polarization_matrix(model, x, lambda s: R.vector_tangents(s, 5)).reshape(7, 4, 25)
    assert rows.dtype == torch.float64
    torch.testing.assert_close(rows, expected, rtol=1e-12, atol=1e-12)


def test_vector_transform_is_matrix_exp() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3 * 4, generator=gen, dtype=torch.float64)
    h = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    out = VectorAction(dim=4, components=3).transform(x, h, 0.7)
    g = torch.linalg.matrix_exp(0.7 * h)
    expected = torch.einsum("ij,bcj->bci", g, x.reshape(5, 3, 4)).reshape(5, 12)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_vector_validate_input_names_expected_shape() -> None:
    action = VectorAction(dim=5, components=2)
    action.validate_input(torch.zeros(3, 10))
    action.validate_input(torch.zeros(3, 2, 5))
    for bad in (torch.zeros(3, 9), torch.zeros(3, 3, 5), torch.zeros(3, 2, 4), torch.zeros(10)):
        with pytest.raises(ValueError, match=r"\(B, 10\) or \(B, 2, 5\)"):
            action.validate_input(bad)
    with pytest.raises(ValueError, match="floating"):
        action.validate_input(torch.zeros(3, 10, dtype=torch.long))
    # components=None accepts any multiple of dim
    free = VectorAction(dim=5)
    free.validate_input(torch.zeros(3, 15))
    with pytest.raises(ValueError, match=r"c\*5"):
        free.validate_input(torch.zeros(3, 12))
    for bad_dim in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            VectorAction(dim=bad_dim)  # type: ignore[arg-type]


def test_generator_vector_round_trip() -> None:
    vec = torch.arange(6, dtype=torch.float64)
    for action in (VectorAction(dim=3), ImageAction(), ImageAction(affine=True)):
        m = action.num_generators
        v = torch.randn(2, m, dtype=torch.float64)
        h = action.to_generator(v)
        assert h.shape == (2, *action.generator_shape)
        torch.testing.assert_close(action.to_vector(h), v)
    # affine generators are 3x3 with a zero last row; the vector is the top two rows, row-major
    h = ImageAction(affine=True).to_generator(vec)
    torch.testing.assert_close(h, torch.tensor([[0.0, 1, 2], [3, 4, 5], [0, 0, 0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="m=9"):
        VectorAction(dim=3).to_generator(torch.zeros(4))


# ----------------------------------------------------------------------------- ImageAction


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("channels", [None, 2])
def test_image_tangents_match_definition(affine: bool, channels: int) -> None:
    images = gaussian_blobs(3, 20, 28, seed=4, sigma=(1.5, 2.0), channels=channels)
    action = ImageAction(affine=affine)
    tangents = action.tangents(images)
    assert tangents.shape == (3, action.num_generators, *images.shape[1:])
    expected = torch.stack([R.image_tangents(im, affine) for im in images])
    torch.testing.assert_close(tangents, expected, rtol=1e-12, atol=1e-12)
    # the closed-form rows equal gradients contracted with the tangents
    grads = torch.randn(3, 2, *images.shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = action.rows(images, grads)
    torch.testing.assert_close(rows, torch.einsum("bkd,bmd->bkm", grads.flatten(2), expected.flatten(2)))


def _smooth_image_model(height: int, width: int, channels: int):
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(2, channels, height, width, generator=gen, dtype=torch.float64)

    def model(images: torch.Tensor) -> torch.Tensor:
        img = images if images.ndim == 4 else images.unsqueeze(1)
        f = img.flatten(1)
        return torch.stack(
            [(f**2).sum(1), torch.tanh((img * w[0]).flatten(1).sum(1)), ((img * w[1]).flatten(1) ** 2).sum(1)], 1
        )

    return model


@pytest.mark.parametrize("affine", [False, True])
def test_image_rows_match_finite_differences_of_transform(affine: bool) -> None:
    # symmetric differences in t of bilinear resampling are central differences in space, so a
    # smooth image and a smooth model must reproduce the action's rows closely
    images = gaussian_blobs(3, 32, 28, seed=5, sigma=(2.0, 3.0), channels=2)
    model = _smooth_image_model(32, 28, 2)
    action = ImageAction(affine=affine)
    rows = polarization_rows(model, images, action, derivative="reverse")
    eps = 1e-4
    fd = []
    for i in range(action.num_generators):
        h = action.to_generator(torch.eye(action.num_generators, dtype=torch.float64)[i])
        plus = model(action.transform(images, h, eps))
        minus = model(action.transform(images, h, -eps))
        fd.append((plus - minus) / (2 * eps))
    fd_rows = torch.stack(fd, -1)
    err = float((fd_rows - rows).abs().max() / rows.abs().max())
    assert err < 1e-3, err


def test_image_rows_sign_convention_analytic() -> None:
    # F = (sum I x, sum I y). With (g I)(p) = I(g^-1 p) the content moves with g, so by summation
    # by parts the row of output F_c for E_ab is sum I (delta_ab p_c + delta_ac p_b); in particular
    # translating along +x raises sum I x by sum I.
    images = gaussian_blobs(4, 24, 36, seed=6, sigma=(1.5, 2.0))
    x, y = R.image_coordinates(24, 36)  # x along the width, y along the height

    def model(img: torch.Tensor) -> torch.Tensor:
        return torch.stack([(img * x).sum((1, 2)), (img * y).sum((1, 2))], 1)

    rows = polarization_rows(model, images, ImageAction(affine=True), derivative="reverse").reshape(4, 2, 2, 3)
    mass = images.sum((1, 2))
    p = [(images * x).sum((1, 2)), (images * y).sum((1, 2)), mass]
    expected = torch.zeros(4, 2, 2, 3, dtype=torch.float64)
    for c in range(2):
        for a in range(2):
            for b in range(3):
                expected[:, c, a, b] = (p[c] if a == b else 0.0) + (p[b] if a == c else 0.0)
    # exact up to the images' tiny values at the border (summation by parts leaves edge terms)
    torch.testing.assert_close(rows, expected, rtol=0, atol=1e-4 * float(mass.max()))
    torch.testing.assert_close(rows[:, 0, 0, 2], mass, rtol=1e-4, atol=0)  # d/dt sum I x = +sum I


def test_image_transform_moves_content_with_the_group() -> None:
    # (g I)(p) = I(g^-1 p): a translation by +3 pixels along x shifts columns right; y is down the rows
    images = gaussian_blobs(2, 32, 40, seed=1, sigma=(2.0, 2.5))
    half = 20.0  # half the larger side, in pixels
    action = ImageAction(affine=True)
    tx = algebras.generator("translation_x", (3, 3), homogeneous=True)
    ty = algebras.generator("translation_y", (3, 3), homogeneous=True)
    right = action.transform(images, tx, 3 / half)
    torch.testing.assert_close(right[..., 3:], images[..., :-3], rtol=0, atol=1e-12)
    assert float(right[..., :3].abs().max()) == 0.0  # zeros come in from outside
    down = action.transform(images, ty, 2 / half)
    torch.testing.assert_close(down[..., 2:, :], images[..., :-2, :], rtol=0, atol=1e-12)
    # rotation by +90 degrees, generator [[0, -1], [1, 0]] / sqrt(2): out[i, j] = I[W-1-j, i]
    square = gaussian_blobs(2, 32, 32, seed=2, sigma=(2.0, 2.5))
    rot = ImageAction().transform(square, algebras.generator("rotation", (2, 2)), math.pi / 2 * math.sqrt(2))
    expected = square.transpose(-1, -2).flip(-1)
    torch.testing.assert_close(rot, expected, rtol=0, atol=1e-10)


def test_image_validate_input() -> None:
    action = ImageAction()
    action.validate_input(torch.zeros(2, 3, 8, 8))
    action.validate_input(torch.zeros(2, 8, 8))
    for bad in (torch.zeros(2, 64), torch.zeros(1, 2, 3, 8, 8), torch.zeros(2, 2, 8)):
        with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, H, W\)"):
            action.validate_input(bad)
    with pytest.raises(ValueError, match="floating"):
        action.validate_input(torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="affine"):
        ImageAction(affine=1)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- TangentAction


def _gl_tangents(x: torch.Tensor) -> torch.Tensor:
    """Independent batched gl(5) tangents on (B, 10) inputs: E_ij moves coordinate i by v[j]."""
    return torch.stack([R.vector_tangents(s, 5) for s in x]).to(x.dtype)


@pytest.mark.parametrize("derivative", ["reverse", "forward"])
def test_tangent_action_rows_equal_vector_action(derivative: str) -> None:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 10, generator=gen, dtype=torch.float64)

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x @ w.T) + (x**2).sum(1, keepdim=True)

    x = torch.randn(9, 10, generator=gen, dtype=torch.float64)
    action = TangentAction(_gl_tangents, generator_shape=(5, 5))
    assert action.num_generators == 25
    rows_t = polarization_rows(model, x, action, derivative=derivative)
    rows_v = polarization_rows(model, x, VectorAction(dim=5, components=2), derivative=derivative)
    torch.testing.assert_close(rows_t, rows_v, rtol=1e-12, atol=1e-12)


def test_tangent_action_checks_fn_output() -> None:
    action = TangentAction(lambda x: torch.zeros(x.shape[0], 3, *x.shape[1:]), generator_shape=(2, 2))
    with pytest.raises(ValueError, match=r"\(4, 4, 6\)"):
        action.tangents(torch.zeros(4, 6))
    with pytest.raises(NotImplementedError):
        action.transform(torch.zeros(4, 6), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="callable"):
        TangentAction(3, generator_shape=(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generator_shape"):
        TangentAction(_gl_tangents, generator_shape=())


# ----------------------------------------------------------------------------- algebras


def test_unknown_names_list_allowed_values() -> None:
    with pytest.raises(ValueError, match="Unknown algebra") as info:
        algebras.basis("lorenz", (4, 4))
    for allowed in algebras.ALGEBRA_NAMES:
        assert allowed in str(info.value)
    with pytest.raises(ValueError, match="Unknown generator") as info:
        algebras.generator("twist", (2, 2))
    for allowed in algebras.GENERATOR_NAMES:
        assert allowed in str(info.value)
    with pytest.raises(ValueError, match="homogeneous"):
        algebras.basis("translation", (2, 2))
    with pytest.raises(ValueError, match="square"):
        algebras.basis("so", (2, 3))
    with pytest.raises(ValueError, match=r"\(k, 2, 2\)"):
        ImageAction().reference_vectors(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        ImageAction().known_vectors({"h": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="zero"):
        ImageAction().known_vectors({"h": torch.zeros(2, 2)})


def test_reference_vectors_orthonormalise_a_given_basis() -> None:
    # a non-orthonormal, redundant basis of so(4) on coordinates 1..3 of R^4
    so3 = R.so_basis(4, [1, 2, 3])
    redundant = torch.cat([so3 * 3.0, so3[:1] + so3[1:2]])
    q = VectorAction(dim=4).reference_vectors(redundant)
    assert q.shape == (3, 16)
    torch.testing.assert_close(q @ q.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(q.T @ q, R.span_projector(so3), rtol=0, atol=1e-12)
