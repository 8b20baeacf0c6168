"""Bases of reference Lie algebras and single named generators.

A basis is a float64 tensor ``(k, *generator_shape)`` whose elements are orthonormal in the
Frobenius inner product. For homogeneous (affine) generators of shape ``(n + 1, n + 1)`` the
linear part lives in the top-left ``n x n`` block, the translations in the last column, and the
last row is zero.

Indefinite orthogonal algebras ``so(p, q)`` (:func:`so_pq`) preserve the metric
``eta = diag(+1 (p times), -1 (q times))``: ``h^T eta + eta h = 0``. ``"lorentz"`` is ``so(1, n - 1)``
with time first, i.e. ``so(1, 3)`` with ``eta = diag(+1, -1, -1, -1)`` for 4-vectors ``(E, p_x, p_y, p_z)``;
any signature can also be named as ``"so(p,q)"``.

Example:
    >>> from liegg_lightning import algebras
    >>> algebras.basis("so", (5, 5)).shape
    torch.Size([10, 5, 5])
    >>> algebras.basis("sl", (2, 2)).shape
    torch.Size([3, 2, 2])
    >>> algebras.basis("lorentz", (4, 4)).shape
    torch.Size([6, 4, 4])
    >>> algebras.so_pq(2, 1).shape
    torch.Size([3, 3, 3])
"""

from __future__ import annotations

import math
import re
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "ALGEBRA_NAMES", "GENERATOR_NAMES", "basis", "generator", "metric", "orthonormalize", "so_pq",
]

#: Names accepted by :func:`basis`.
ALGEBRA_NAMES: Tuple[str, ...] = (
    "gl", "so", "rotation", "sl", "scaling", "similarity", "translation", "euclidean", "se",
    "special_affine", "affine", "aff", "lorentz", "poincare", "so(p,q)",
)  # fmt: skip
#: Names accepted by :func:`generator`. ``rotation``, ``shear`` and ``stretch`` are 2-D;
#: ``rotation_x/y/z`` turn about a spatial axis (3-D, or the spatial part of Minkowski 4-vectors
#: ``(t, x, y, z)``); ``boost_x/y/z`` are Lorentz boosts of 4-vectors; ``translation`` is the 1-D
#: (time) shift and ``translation_x/y/z`` shift along one axis.
GENERATOR_NAMES: Tuple[str, ...] = (
    "rotation", "scaling", "shear", "stretch", "translation", "translation_x", "translation_y", "translation_z",
    "rotation_x", "rotation_y", "rotation_z", "boost_x", "boost_y", "boost_z",
)  # fmt: skip

_SO_PQ = re.compile(r"^so\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


def _unit(n: int, i: int, j: int) -> Tensor:
    e = torch.zeros(n, n, dtype=torch.float64)
    e[i, j] = 1.0
    return e


def _linear_size(shape: Tuple[int, ...], homogeneous: bool) -> int:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"Named algebras need square generators, got generator shape {shape}.")
    return shape[0] - 1 if homogeneous else shape[0]


def _gl(n: int) -> List[Tensor]:
    return [_unit(n, i, j) for i in range(n) for j in range(n)]


def _so(n: int) -> List[Tensor]:
    return [(_unit(n, i, j) - _unit(n, j, i)) / math.sqrt(2.0) for i in range(n) for j in range(i + 1, n)]


def _so_signature(p: int, q: int) -> List[Tensor]:
    """``so(p, q)``: ``eta A`` for antisymmetric ``A``, i.e. rotations within each sign, boosts across."""
    n = p + q
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            same_sign = (i < p) == (j < p)
            sign = -1.0 if same_sign else 1.0
            out.append((_unit(n, i, j) + sign * _unit(n, j, i)) / math.sqrt(2.0))
    return out


def _check_counts(p: int, q: int) -> None:
    for name, v in (("p", p), ("q", q)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"Expected `{name}` to be a non-negative integer, got {v!r}.")


def _check_signature(p: int, q: int) -> None:
    _check_counts(p, q)
    if p + q < 2:
        raise ValueError(f"Expected p + q >= 2 (so(p, q) is empty below), got p={p}, q={q}.")


def metric(p: int, q: int) -> Tensor:
    """The metric ``diag(+1 (p times), -1 (q times))`` that ``so(p, q)`` preserves, float64 ``(p+q, p+q)``."""
    _check_counts(p, q)
    return torch.diag(torch.tensor([1.0] * p + [-1.0] * q, dtype=torch.float64))


def so_pq(p: int, q: int, *, homogeneous: bool = False) -> Tensor:
    """Orthonormal basis of the indefinite orthogonal algebra ``so(p, q)``.

    The elements ``h`` satisfy ``h^T eta + eta h = 0`` with ``eta = diag(+1 (p times), -1 (q times))``:
    ``(e_ij - e_ji) / sqrt 2`` between two coordinates of the same sign (rotations) and
    ``(e_ij + e_ji) / sqrt 2`` between coordinates of opposite signs (boosts). ``so(n, 0)`` is ``so(n)``;
    ``so(1, 3)`` is the Lorentz algebra with time first.

    Args:
        p: Number of ``+1`` entries of the metric (first).
        q: Number of ``-1`` entries (last).
        homogeneous: Embed in ``(n + 1) x (n + 1)`` homogeneous matrices (zero translation part).

    Returns:
        ``(n (n - 1) / 2, n, n)`` float64 (or ``(..., n + 1, n + 1)``), ``n = p + q``.
    """
    _check_signature(p, q)
    if not isinstance(homogeneous, bool):
        raise ValueError(f"Expected `homogeneous` to be a bool, got {homogeneous!r}.")
    return torch.stack(_embed(_so_signature(p, q), p + q, homogeneous))


def _sl(n: int) -> List[Tensor]:
    off = [_unit(n, i, j) for i in range(n) for j in range(n) if i != j]
    # traceless diagonal: e_i - e_{i+1}, orthonormalised below
    diag = [_unit(n, i, i) - _unit(n, i + 1, i + 1) for i in range(n - 1)]
    return off + diag


def _scaling(n: int) -> List[Tensor]:
    return [torch.eye(n, dtype=torch.float64) / math.sqrt(n)]


def _embed(linear: List[Tensor], n: int, homogeneous: bool) -> List[Tensor]:
    if not homogeneous:
        return linear
    out = []
    for m in linear:
        e = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        e[:n, :n] = m
        out.append(e)
    return out


def _translations(n: int) -> List[Tensor]:
    return [_unit(n + 1, i, n) for i in range(n)]


def orthonormalize(vectors: Tensor, tol: float = 1e-10) -> Tensor:
    """Orthonormal basis ``(k, d)`` of the span of the rows of ``vectors`` ``(r, d)``; drops dependent rows."""
    v = vectors.to(torch.float64).reshape(vectors.shape[0], -1)
    if v.shape[0] == 0:
        raise ValueError("Expected at least one basis element, got an empty basis.")
    u, s, _ = torch.linalg.svd(v.T, full_matrices=False)
    rank = int((s > tol * s.max().clamp_min(1e-300)).sum())
    if rank == 0:
        raise ValueError("Expected a basis with at least one non-zero element, got all zeros.")
    return u[:, :rank].T.contiguous()


def basis(name: str, generator_shape: Sequence[int], *, homogeneous: bool = False) -> Tensor:
    """Orthonormal basis ``(k, *generator_shape)`` of the named algebra.

    Args:
        name: One of :data:`ALGEBRA_NAMES`. ``"rotation"`` is ``so(n)``; ``"lorentz"`` is
            ``so(1, n - 1)`` (time first); ``"so(p,q)"`` (e.g. ``"so(2,2)"``, with ``p + q = n``) any
            signature (see :func:`so_pq`); ``"translation"``, ``"euclidean"``/``"se"``, ``"poincare"``
            (Lorentz and translations), ``"special_affine"`` and ``"affine"``/``"aff"`` need
            ``homogeneous=True``.
        generator_shape: ``(n, n)``, or ``(n + 1, n + 1)`` when ``homogeneous``.
        homogeneous: Generators are affine homogeneous matrices with a zero last row.
    """
    shape = tuple(int(s) for s in generator_shape)
    n = _linear_size(shape, homogeneous)
    if not isinstance(name, str):
        raise ValueError(f"Expected the algebra's name as a string, got {type(name).__name__}.")
    key = name.lower().strip()
    linear = _linear_part(key, name, n, shape)
    needs_translation = key in _WITH_TRANSLATIONS
    if needs_translation and not homogeneous:
        raise ValueError(
            f"The algebra {name!r} needs homogeneous (affine) generators, e.g. ImageAction(affine=True) or "
            "VectorAction(dim, affine=True)."
        )
    elements = _embed(linear, n, homogeneous)
    if needs_translation:
        elements = elements + _translations(n)
    if not elements:
        raise ValueError(f"The algebra {name!r} is empty for generator shape {shape}.")
    stacked = torch.stack(elements)
    return orthonormalize(stacked.reshape(len(elements), -1)).reshape(-1, *shape)


#: Algebras whose named linear part comes with every translation.
_WITH_TRANSLATIONS = ("translation", "euclidean", "se", "special_affine", "affine", "aff", "poincare")
#: The linear part of each named algebra, as a function of n.
_LINEAR_PARTS = {
    "gl": _gl, "affine": _gl, "aff": _gl,
    "so": _so, "rotation": _so, "euclidean": _so, "se": _so,
    "sl": _sl, "special_affine": _sl,
    "scaling": _scaling,
    "similarity": lambda n: _so(n) + _scaling(n),
    "translation": lambda n: [],
}


def _linear_part(key: str, name: str, n: int, shape: Tuple[int, ...]) -> List[Tensor]:
    """The linear part of the algebra ``key`` on n-vectors (indefinite signatures included)."""
    signature = _SO_PQ.match(key)
    if signature is not None:
        p, q = int(signature.group(1)), int(signature.group(2))
        if p + q != n:
            raise ValueError(f"The algebra {name!r} acts on {p + q}-vectors, but the generators act on {n}-vectors "
                             f"(generator shape {shape}).")
        _check_signature(p, q)
        return _so_signature(p, q)
    if key in ("lorentz", "poincare"):
        if n < 2:
            raise ValueError(f"The algebra {name!r} needs at least 2 coordinates (time and space), got n={n}.")
        return _so_signature(1, n - 1)
    if key not in _LINEAR_PARTS:
        raise ValueError(f"Unknown algebra {name!r}. Expected one of {', '.join(ALGEBRA_NAMES)}.")
    return _LINEAR_PARTS[key](n)


def _axis(key: str) -> int:
    return "xyz".index(key[-1])


def _named_translation(key: str, name: str, n: int, homogeneous: bool) -> Tensor:
    axis = 0 if key == "translation" else _axis(key)
    if key == "translation" and n != 1:
        raise ValueError(f"The generator 'translation' is the 1-D shift; for n={n} name the axis, e.g. "
                         "'translation_x'.")
    if axis >= n:
        raise ValueError(f"The generator {name!r} needs at least {axis + 1} coordinates, got n={n}.")
    if not homogeneous:
        raise ValueError(f"The generator {name!r} needs homogeneous (affine) generators.")
    return _translations(n)[axis]


def _spatial_generator(key: str, name: str, n: int) -> Tensor:
    """A rotation about an axis of 3-D space, or a boost along it in 4-D Minkowski space; unit norm."""
    if n not in (3, 4) or (key.startswith("boost") and n != 4):
        expected = "4-D Minkowski" if key.startswith("boost") else "3-D, or 4-D Minkowski,"
        raise ValueError(f"The generator {name!r} is defined for {expected} linear parts, got n={n}.")
    offset = 1 if n == 4 else 0  # Minkowski: time first
    a = _axis(key)
    if key.startswith("boost"):
        lin = _unit(n, 0, a + 1) + _unit(n, a + 1, 0)
    else:  # about axis a: from axis a+1 towards a+2 (cyclic), right-handed
        i, j = offset + (a + 1) % 3, offset + (a + 2) % 3
        lin = _unit(n, j, i) - _unit(n, i, j)
    return lin / lin.norm()


def generator(name: str, generator_shape: Sequence[int], *, homogeneous: bool = False) -> Tensor:
    """One named generator of unit Frobenius norm, float64, of shape ``generator_shape``.

    Args:
        name: One of :data:`GENERATOR_NAMES`. ``"scaling"`` is defined for any ``n``;
            ``"rotation"``, ``"shear"`` and ``"stretch"`` for 2-D linear parts; ``"rotation_x/y/z"``
            (about that axis, right-handed) for 3-D, and for 4-D on the spatial part of Minkowski
            coordinates ``(t, x, y, z)``, where ``"boost_x/y/z"`` are the boosts; ``"translation"`` for
            1-D (a time shift) and ``"translation_x/y/z"`` along the axes of an ``n``-D space (both
            need ``homogeneous=True``).
        generator_shape: ``(n, n)``, or ``(n + 1, n + 1)`` when ``homogeneous``.
        homogeneous: Generators are affine homogeneous matrices with a zero last row.
    """
    shape = tuple(int(s) for s in generator_shape)
    n = _linear_size(shape, homogeneous)
    key = name.lower() if isinstance(name, str) else name
    if key not in GENERATOR_NAMES:
        raise ValueError(f"Unknown generator {name!r}. Expected one of {', '.join(GENERATOR_NAMES)}.")
    if key == "scaling":
        lin = torch.eye(n, dtype=torch.float64)
        return _embed([lin / lin.norm()], n, homogeneous)[0]
    if key.startswith("translation"):
        return _named_translation(key, name, n, homogeneous)
    if key.startswith(("rotation_", "boost_")):
        return _embed([_spatial_generator(key, name, n)], n, homogeneous)[0]
    if n != 2:
        raise ValueError(f"The generator {name!r} is defined for 2-D linear parts, got n={n}.")
    mats = {
        "rotation": [[0.0, -1.0], [1.0, 0.0]],
        "shear": [[0.0, 1.0], [1.0, 0.0]],
        "stretch": [[1.0, 0.0], [0.0, -1.0]],
    }
    lin = torch.tensor(mats[key], dtype=torch.float64)
    return _embed([lin / lin.norm()], n, homogeneous)[0]
