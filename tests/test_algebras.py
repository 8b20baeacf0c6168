"""Tests for ``liegg_lightning.algebras``: the bases, the named generators and their errors."""

from __future__ import annotations

import math

import pytest
import reference as R
import torch

from liegg_lightning import algebras

pytestmark = pytest.mark.usefixtures("single_thread")


_DIMS = {
    # name: (generator shape, homogeneous, expected dimension)
    "gl": ((4, 4), False, 16),
    "so": ((5, 5), False, 10),
    "rotation": ((2, 2), False, 1),
    "sl": ((3, 3), False, 8),
    "scaling": ((3, 3), False, 1),
    "similarity": ((2, 2), False, 2),
    "translation": ((3, 3), True, 2),
    "euclidean": ((3, 3), True, 3),
    "se": ((4, 4), True, 6),
    "special_affine": ((3, 3), True, 5),
    "affine": ((3, 3), True, 6),
    "aff": ((4, 4), True, 12),
}


@pytest.mark.parametrize("name", sorted(_DIMS))
def test_algebra_bases_orthonormal_with_expected_dimension(name: str) -> None:
    shape, homogeneous, dim = _DIMS[name]
    b = algebras.basis(name, shape, homogeneous=homogeneous)
    assert b.dtype == torch.float64
    assert b.shape == (dim, *shape)
    flat = b.reshape(dim, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(dim, dtype=torch.float64), rtol=0, atol=1e-12)
    if homogeneous:
        assert float(b[:, -1, :].abs().max()) == 0.0  # zero last row


def test_algebra_bases_span_the_right_sets() -> None:
    n = 4
    so = algebras.basis("so", (n, n))
    torch.testing.assert_close(so, -so.transpose(-1, -2))  # antisymmetric
    sl = algebras.basis("sl", (n, n))
    torch.testing.assert_close(sl.diagonal(dim1=-2, dim2=-1).sum(-1), torch.zeros(len(sl), dtype=torch.float64))
    # so(n) is inside sl(n): projecting so onto span(sl) changes nothing
    proj = R.span_projector(sl)
    flat = so.reshape(len(so), -1)
    torch.testing.assert_close(flat @ proj, flat, rtol=0, atol=1e-12)
    # the independent so basis of the reference spans the same space
    torch.testing.assert_close(R.span_projector(so), R.span_projector(R.so_basis(n)), rtol=0, atol=1e-12)


def test_named_generators() -> None:
    rot = algebras.generator("rotation", (2, 2))
    torch.testing.assert_close(rot, torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64) / math.sqrt(2))
    torch.testing.assert_close(algebras.generator("scaling", (3, 3)), torch.eye(3, dtype=torch.float64) / math.sqrt(3))
    s = algebras.generator("scaling", (3, 3), homogeneous=True)
    torch.testing.assert_close(s, torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)) / math.sqrt(2))
    # every name is defined for some n <= 4 (translation: 1-D, boost_x: 4-D, ...) and of unit norm there
    for name in algebras.GENERATOR_NAMES:
        defined = []
        for n in (1, 2, 3, 4):
            try:
                defined.append(algebras.generator(name, (n + 1, n + 1), homogeneous=True))
            except ValueError:
                continue
        assert defined, name
        assert all(abs(float(h.norm()) - 1.0) < 1e-12 for h in defined), name




def test_algebra_and_generator_names_fail_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match="4-vectors"):
        algebras.basis("so(1,2)", (4, 4))
    with pytest.raises(ValueError, match="homogeneous"):
        algebras.basis("poincare", (4, 4))
    with pytest.raises(ValueError, match="non-negative integer"):
        algebras.so_pq(-1, 3)
    with pytest.raises(ValueError, match="p \\+ q >= 2"):
        algebras.so_pq(1, 0)
    with pytest.raises(ValueError, match="Minkowski"):
        algebras.generator("boost_x", (3, 3))
    with pytest.raises(ValueError, match="translation_x"):
        algebras.generator("translation", (3, 3), homogeneous=True)
    with pytest.raises(ValueError, match="at least 3"):
        algebras.generator("translation_z", (3, 3), homogeneous=True)
    with pytest.raises(ValueError, match="so\\(p,q\\)"):
        algebras.basis("minkowski", (4, 4))
