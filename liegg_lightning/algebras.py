"""Bases of reference Lie algebras and single named generators.

A basis is a float64 tensor ``(k, *generator_shape)`` whose elements are orthonormal in the
Frobenius inner product. For homogeneous (affine) generators of shape ``(n + 1, n + 1)`` the
linear part lives in the top-left ``n x n`` block, the translations in the last column, and the
last row is zero.

Example:
    >>> from liegg_lightning import algebras
    >>> algebras.basis("so", (5, 5)).shape
    torch.Size([10, 5, 5])
    >>> algebras.basis("sl", (2, 2)).shape
    torch.Size([3, 2, 2])
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "ALGEBRA_NAMES", "GENERATOR_NAMES", "basis", "generator", "orthonormalize",
]

#: Names accepted by :func:`basis`.
ALGEBRA_NAMES: Tuple[str, ...] = (
    "gl", "so", "rotation", "sl", "scaling", "similarity", "translation", "euclidean", "se",
    "special_affine", "affine", "aff",
)  # fmt: skip
#: Names accepted by :func:`generator`.
GENERATOR_NAMES: Tuple[str, ...] = ("rotation", "scaling", "shear", "stretch", "translation_x", "translation_y")


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
        name: One of :data:`ALGEBRA_NAMES`. ``"rotation"`` is ``so(n)``; ``"translation"``,
            ``"euclidean"``/``"se"``, ``"special_affine"`` and ``"affine"``/``"aff"`` need
            ``homogeneous=True``.
        generator_shape: ``(n, n)``, or ``(n + 1, n + 1)`` when ``homogeneous``.
        homogeneous: Generators are affine homogeneous matrices with a zero last row.
    """
    shape = tuple(int(s) for s in generator_shape)
    n = _linear_size(shape, homogeneous)
    key = name.lower() if isinstance(name, str) else name
    linear: Dict[str, List[Tensor]] = {}
    if key in ("gl", "affine", "aff"):
        linear[key] = _gl(n)
    elif key in ("so", "rotation", "euclidean", "se"):
        linear[key] = _so(n)
    elif key in ("sl", "special_affine"):
        linear[key] = _sl(n)
    elif key == "scaling":
        linear[key] = _scaling(n)
    elif key == "similarity":
        linear[key] = _so(n) + _scaling(n)
    elif key == "translation":
        linear[key] = []
    else:
        raise ValueError(f"Unknown algebra {name!r}. Expected one of {', '.join(ALGEBRA_NAMES)}.")
    needs_translation = key in ("translation", "euclidean", "se", "special_affine", "affine", "aff")
    if needs_translation and not homogeneous:
        raise ValueError(f"The algebra {name!r} needs homogeneous (affine) generators, e.g. ImageAction(affine=True).")
    elements = _embed(linear[key], n, homogeneous)
    if needs_translation:
        elements = elements + _translations(n)
    if not elements:
        raise ValueError(f"The algebra {name!r} is empty for generator shape {shape}.")
    stacked = torch.stack(elements)
    return orthonormalize(stacked.reshape(len(elements), -1)).reshape(-1, *shape)


def generator(name: str, generator_shape: Sequence[int], *, homogeneous: bool = False) -> Tensor:
    """One named generator of unit Frobenius norm, float64, of shape ``generator_shape``.

    Args:
        name: One of :data:`GENERATOR_NAMES`. ``"rotation"``, ``"shear"``, ``"stretch"`` and the
            translations are defined for 2-D linear parts; ``"scaling"`` for any ``n``.
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
    if n != 2:
        raise ValueError(f"The generator {name!r} is defined for 2-D linear parts, got n={n}.")
    if key.startswith("translation"):
        if not homogeneous:
            raise ValueError(f"The generator {name!r} needs homogeneous (affine) generators.")
        return _translations(n)[0 if key.endswith("x") else 1]
    mats = {
        "rotation": [[0.0, -1.0], [1.0, 0.0]],
        "shear": [[0.0, 1.0], [1.0, 0.0]],
        "stretch": [[1.0, 0.0], [0.0, -1.0]],
    }
    lin = torch.tensor(mats[key], dtype=torch.float64)
    return _embed([lin / lin.norm()], n, homogeneous)[0]
