"""``VectorFieldAction``: the library against fields built symbolically (sympy) from the term names,
the bracket against sympy's derivatives, the flow against closed-form flows, and the exact quartic
oscillator's Hamiltonian field recovered from its energy."""

from __future__ import annotations

import math
import re
from typing import List, Tuple

import numpy as np
import pytest
import sympy
import torch

from liegg_lightning import GroupAction, LieGGMetric, VectorFieldAction, analyze
from liegg_lightning.pictures.rendering import render_pictures
from liegg_lightning.testing import check_action

pytestmark = pytest.mark.usefixtures("single_thread")


def _sympy_basis(action: VectorFieldAction) -> Tuple[List[sympy.Symbol], List[List[sympy.Expr]]]:
    """Each basis field as sympy components, read off its name (``"q^3 ∂p"``), with the documented
    column scale 1 / sqrt(prod (2 a - 1)!!) on the coordinates divided by ``scale``."""
    syms = [sympy.Symbol(n) for n in action.coordinates]
    fields = []
    for name in action.term_names:
        *factors, direction = name.split(" ")
        expr: sympy.Expr = sympy.Integer(1)
        norm = sympy.Integer(1)
        for factor in factors:
            base, _, power = factor.partition("^")
            k = int(power or 1)
            expr = expr * (syms[action.coordinates.index(base)] / sympy.Rational(action.scale).limit_denominator()) ** k
            norm = norm * sympy.factorial2(2 * k - 1)
        axis = action.coordinates.index(re.sub("^∂", "", direction))
        fields.append([expr / sympy.sqrt(norm) if i == axis else sympy.Integer(0) for i in range(action.dim)])
    return syms, fields


def _evaluate(syms: List[sympy.Symbol], field: List[sympy.Expr], points: torch.Tensor) -> torch.Tensor:
    fn = sympy.lambdify(syms, field, "numpy")
    cols = [np.broadcast_to(np.asarray(c, dtype=np.float64), points.shape[:1])
            for c in fn(*points.T.numpy())]
    return torch.from_numpy(np.stack(cols, axis=-1).copy())


def test_tangents_are_the_named_fields_with_the_documented_scale() -> None:
    action = VectorFieldAction(dim=2, degree=3, components=3, coordinates=["q", "p"], scale=1.5)
    assert action.num_generators == 20
    assert action.term_names[16] == "q^3 ∂p"
    x = torch.randn(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    syms, fields = _sympy_basis(action)
    tangents = action.tangents(x)
    assert tangents.shape == (4, 20, 3, 2)
    for i, field in enumerate(fields):
        expected = _evaluate(syms, field, x.reshape(-1, 2)).reshape(4, 3, 2)
        torch.testing.assert_close(tangents[:, i], expected, rtol=1e-12, atol=1e-12)
    # the flat layout (B, c * dim) gives the same tangents; rows and tangents agree with the flow
    torch.testing.assert_close(action.tangents(x.reshape(4, 6)), tangents.reshape(4, 20, 6))
    check_action(action, x * 0.5)


def test_columns_have_unit_mean_square_under_a_standard_normal() -> None:
    action = VectorFieldAction(dim=3, degree=3, scale=2.0)
    x = 2.0 * torch.randn(400_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean_square = action.features(x).pow(2).mean(0)
    # Monte Carlo: the 6th moment's sampling error is a few percent at most with 4e5 samples
    torch.testing.assert_close(mean_square, torch.ones_like(mean_square), rtol=0.06, atol=0.0)


def test_tangent_gram_closed_form_matches_the_tangents() -> None:
    action = VectorFieldAction(dim=2, degree=2)
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([True, False, True, True, False, True, True])
    t = torch.where(mask[:, None, None], action.tangents(x), 0.0).flatten(2)
    torch.testing.assert_close(action.tangent_gram(x, mask=mask), torch.einsum("bmd,bnd->mn", t, t))


def test_bracket_matches_sympy() -> None:
    action = VectorFieldAction(dim=2, degree=3, coordinates=["q", "p"], scale=0.7)
    gen = torch.Generator().manual_seed(3)
    u, v = torch.randn(2, 20, dtype=torch.float64, generator=gen)
    syms, basis = _sympy_basis(action)
    X = [sum(float(c) * f[i] for c, f in zip(u, basis)) for i in range(2)]
    Y = [sum(float(c) * f[i] for c, f in zip(v, basis)) for i in range(2)]
    # [X, Y] = DY X - DX Y
    expected = [sum(sympy.diff(Y[i], s) * X[j] - sympy.diff(X[i], s) * Y[j] for j, s in enumerate(syms))
                for i in range(2)]
    points = torch.randn(9, 2, dtype=torch.float64, generator=gen)
    big = action.bracket_library()
    assert big.degree == 5
    got = big.field(action.bracket(u, v), points)
    torch.testing.assert_close(got, _evaluate(syms, expected, points), rtol=1e-10, atol=1e-10)


def test_degree_one_bracket_is_minus_the_matrix_commutator() -> None:
    action = VectorFieldAction(dim=3, degree=1, min_degree=1)  # gl(3) as linear fields A x
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 3, 3, dtype=torch.float64, generator=gen)
    fa = action.coefficients(lambda x: x @ a.T)
    fb = action.coefficients(lambda x: x @ b.T)
    points = torch.randn(5, 3, dtype=torch.float64, generator=gen)
    got = action.bracket_library().field(action.bracket(fa, fb), points)
    torch.testing.assert_close(got, -points @ (a @ b - b @ a).T, rtol=1e-10, atol=1e-10)


def test_closure_error_counts_terms_beyond_the_library() -> None:
    action = VectorFieldAction(dim=2, degree=2)
    names = action.term_names
    one = torch.zeros(2, 12, dtype=torch.float64)
    one[0, names.index("∂x")] = 1.0
    one[1, names.index("x^2 ∂x")] = 1.0
    # [d_x, x^2 / sqrt(3) d_x] = 2 x / sqrt(3) d_x, wholly outside the span: its norm is the error
    assert action.closure_error(one) == pytest.approx(2.0 / math.sqrt(3.0), rel=1e-12)
    so3 = VectorFieldAction(dim=3, degree=1).reference_vectors("so")
    assert so3.shape[0] == 3
    assert VectorFieldAction(dim=3, degree=1).closure_error(so3) < 1e-12
    assert math.isnan(action.closure_error(one[:1]))  # type: ignore[arg-type]


def test_named_references_are_the_affine_fields() -> None:
    action = VectorFieldAction(dim=3, degree=2, coordinates=["a", "b", "c"])
    ref = action.reference_vectors("so")
    x = torch.randn(11, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    # every reference field is a rotation field x -> W x with W antisymmetric, and they span so(3)
    mats = []
    for v in ref:
        w = torch.linalg.lstsq(x, action.field(v, x)).solution.T
        torch.testing.assert_close(action.field(v, x), x @ w.T, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(w, -w.T, rtol=1e-10, atol=1e-10)
        mats.append(w.reshape(-1))
    assert torch.linalg.matrix_rank(torch.stack(mats)) == 3
    scaling = action.known_vectors(["scaling"])["scaling"]
    torch.testing.assert_close(action.field(scaling, x) / action.field(scaling, x).norm(dim=1, keepdim=True),
                               x / x.norm(dim=1, keepdim=True))


def test_flow_of_the_rotation_field_is_the_rotation() -> None:
    action = VectorFieldAction(dim=2, degree=1)
    rot = action.coefficients(lambda z: torch.stack([-z[:, 1], z[:, 0]], 1))
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    t = 1.3
    r = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    # RK4 with 64 steps per unit of t: a global error of order (1/64)^4
    torch.testing.assert_close(action.transform(x, rot, t), x @ r.T, rtol=0, atol=1e-7)


def test_bad_arguments_raise_before_any_work() -> None:
    with pytest.raises(ValueError, match="degree"):
        VectorFieldAction(dim=2, degree=-1)
    with pytest.raises(ValueError, match="coordinates"):
        VectorFieldAction(dim=2, degree=1, coordinates=["q"])
    with pytest.raises(ValueError, match="scale"):
        VectorFieldAction(dim=2, degree=1, scale=0.0)
    action = VectorFieldAction(dim=2, degree=2, components=2)
    with pytest.raises(ValueError, match=r"\(B, 4\) or \(B, 2, 2\)"):
        action.validate_input(torch.randn(3, 5))
    with pytest.raises(ValueError, match="not a polynomial field of degree 0..2"):
        action.coefficients(lambda z: torch.sin(z))
    with pytest.raises(ValueError, match="coefficients of shape"):
        action.coefficients(torch.zeros(3))


def _quartic_energy(z: torch.Tensor) -> torch.Tensor:
    return (z[:, 1] ** 2 / 2 + z[:, 0] ** 4 / 4).unsqueeze(1)


def _hamiltonian_field(z: torch.Tensor) -> torch.Tensor:
    return torch.stack([z[:, 1], -z[:, 0] ** 3], 1)  # X_H = p d_q - q^3 d_p


def test_exact_quartic_energy_gives_its_hamiltonian_field() -> None:
    action = VectorFieldAction(dim=2, degree=3, coordinates=["q", "p"])
    gen = torch.Generator().manual_seed(7)
    data = torch.randn(1000, 2, dtype=torch.float64, generator=gen)
    report = analyze(_quartic_energy, data, action, reference_algebra=[_hamiltonian_field],
                     known_generators={"X_H": _hamiltonian_field})
    assert report.nullity == 1
    held_out = torch.randn(500, 2, dtype=torch.float64, generator=gen)
    found = action.field(report.generators[0], held_out).flatten()
    truth = _hamiltonian_field(held_out).flatten()
    cosine = float(found @ truth / (found.norm() * truth.norm()))
    assert abs(cosine) > 1 - 1e-10
    assert report.known_variances["X_H"] < 1e-20
    assert report.symmetry_bias < 1e-8  # type: ignore[operator]
    assert report.variances[1] > 1e-3  # the next field really moves the energy


def test_metric_reports_and_pictures_for_a_field_library() -> None:
    action = VectorFieldAction(dim=2, degree=2)
    assert isinstance(action, GroupAction)
    metric = LieGGMetric(action, reference_algebra="so")
    metric.update(lambda z: (z ** 2).sum(1, keepdim=True), torch.randn(200, 2, dtype=torch.float64))
    report = metric.compute()
    assert report.generators.shape == (12, 12)
    assert report.relative_variances is not None
    assert report.nullity >= 1
    assert report.subspace_bias is not None
    images = render_pictures(report, action)
    for tag in ("field_terms", "field", "spectrum"):
        assert images[tag].dtype == np.uint8
        assert images[tag].shape[2:] == (3,)
    assert action.describe(torch.eye(12, dtype=torch.float64)[2], terms=1) == "1.00 y ∂x"
