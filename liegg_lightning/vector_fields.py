"""``VectorFieldAction``: candidate symmetries that are polynomial vector fields, not matrices.

A generator is a coefficient vector over a *library* of vector fields on ``R^dim``: every field
``u^alpha / g_alpha * e_i`` whose component along axis ``i`` is one monomial of degree at most
``degree`` in the scaled coordinates ``u = x / scale``. Its tangent at ``x`` is the field's value
there, so the polarization rows are ``<dF/dx, X(x)>`` as for any action; the flow of the field is
its finite transformation.

Columns are scaled fairly: ``g_alpha = sqrt(prod_j (2 alpha_j - 1)!!)`` is the root-mean-square
of the monomial ``u^alpha`` under a standard normal ``u``, so every basis field has
``E ||X(x)||^2 = 1`` when the coordinates divided by ``scale`` are standard normal. A spectrum
then compares a cubic field with a constant one at equal input motion, not at equal coefficient.

The Lie bracket of two polynomial fields, ``[X, Y] = DY X - DX Y``, has degree up to
``2 degree - 1``: :meth:`VectorFieldAction.bracket` returns it exactly over that larger library,
and the closure error counts the part of a bracket outside the span of the found fields, the part
beyond the library's degree included, as error (nothing is projected away).
"""

from __future__ import annotations

import math
from itertools import combinations_with_replacement
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from typing_extensions import override

from liegg_lightning import algebras
from liegg_lightning._checks import check_int
from liegg_lightning._errors import InputError
from liegg_lightning.actions import GroupAction, validate_points

__all__ = ["VectorFieldAction", "FieldLike"]

#: A vector field: a coefficient vector ``(m,)`` over the library, or a callable ``(N, dim) -> (N, dim)``.
FieldLike = Union[Tensor, Callable[[Tensor], Tensor]]

#: Integration steps of the flow per unit of ``|t|`` (RK4), and at least this many in all.
_STEPS_PER_UNIT = 64
_MIN_STEPS = 8


def _monomials(dim: int, degree: int, min_degree: int = 0) -> List[Tuple[int, ...]]:
    """Exponents of every monomial in ``dim`` variables of degree ``min_degree..degree``.

    Ordered by degree, then with higher powers of the earlier coordinates first
    (``x^2, x y, y^2``).
    """
    out: List[Tuple[int, ...]] = []
    for d in range(min_degree, degree + 1):
        for combo in combinations_with_replacement(range(dim), d):
            out.append(tuple(combo.count(j) for j in range(dim)))
    return out


def _gaussian_rms(alpha: Sequence[int]) -> float:
    """``sqrt(E[u^(2 alpha)])`` for a standard normal ``u``: ``sqrt(prod_j (2 alpha_j - 1)!!)``."""
    moment = 1
    for a in alpha:
        moment *= math.prod(range(2 * a - 1, 0, -2))
    return math.sqrt(moment)


def _default_coordinates(dim: int) -> List[str]:
    return ["x", "y", "z"][:dim] if dim <= 3 else [f"x{j + 1}" for j in range(dim)]


def _monomial_name(alpha: Sequence[int], names: Sequence[str]) -> str:
    parts = [n if a == 1 else f"{n}^{a}" for n, a in zip(names, alpha) if a > 0]
    return " ".join(parts)


def _check_coordinates(coordinates: Optional[Sequence[str]], dim: int) -> List[str]:
    if coordinates is None:
        return _default_coordinates(dim)
    names = list(coordinates)
    if len(names) != dim or not all(isinstance(n, str) and n for n in names) or len(set(names)) != dim:
        raise ValueError(f"Expected `coordinates` to be {dim} distinct non-empty names, got {coordinates!r}.")
    return names


class VectorFieldAction(GroupAction):
    """The polynomial vector fields of degree at most ``degree`` on ``R^dim``, acting on points by their flows.

    The input is ``components`` points in ``R^dim`` per sample, ``(B, components * dim)`` or
    ``(B, components, dim)``; the same field moves every point. Generators are coefficient vectors
    of length ``m = dim * (number of monomials)``, ordered by direction first: entry
    ``i * n + a`` is the coefficient of ``u^alpha_a / g_a * e_i`` (see the module docstring for
    ``u`` and ``g``), named by :attr:`term_names` like ``"q^3 ∂p"``. Degree 1 is the affine algebra.

    Reference algebras and known generators: any name of
    :data:`~liegg_lightning.algebras.ALGEBRA_NAMES` / ``GENERATOR_NAMES`` that makes sense for
    ``dim``-vectors with translations (``"so"``, ``"translation"``, ``"euclidean"``, ``"scaling"``,
    ...; the matrix ``A`` with translation ``b`` is the field ``A x + b``), a tensor ``(k, m)`` of
    coefficient vectors, or a list of fields, each a coefficient vector ``(m,)`` or a callable from
    points ``(N, dim)`` to vectors ``(N, dim)`` that lies in the library.

    Args:
        dim: Dimension of the space the points live in.
        degree: Largest degree of a component (``>= 0``).
        components: Points per sample; ``None`` infers it from the input.
        coordinates: Names of the coordinates (default ``x, y, z`` or ``x1 ... xn``), used in
            :attr:`term_names`.
        scale: The typical size of a coordinate: the library is built on ``u = x / scale``.
        min_degree: Leave out the monomials of lower degree (``1`` drops the translations).

    Example:
        >>> action = VectorFieldAction(dim=2, degree=3, coordinates=["q", "p"])
        >>> action.num_generators, action.term_names[:3], action.term_names[-1]
        (20, ['∂q', 'q ∂q', 'p ∂q'], 'p^3 ∂p')
    """

    def __init__(
        self,
        dim: int,
        degree: int,
        components: Optional[int] = None,
        coordinates: Optional[Sequence[str]] = None,
        scale: float = 1.0,
        min_degree: int = 0,
    ) -> None:
        check_int("dim", dim, minimum=1)
        check_int("degree", degree, minimum=0)
        check_int("components", components, minimum=1, allow_none=True)
        check_int("min_degree", min_degree, minimum=0)
        if min_degree > degree:
            raise ValueError(f"Expected `min_degree` <= `degree` ({degree}), got {min_degree}.")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
            raise ValueError(f"Expected `scale` to be a positive finite number, got {scale!r}.")
        self.dim, self.degree, self.components = dim, degree, components
        self.min_degree, self.scale = min_degree, float(scale)
        self.coordinates = _check_coordinates(coordinates, dim)
        monos = _monomials(dim, degree, min_degree)
        #: ``(n, dim)`` exponents of the library's monomials.
        self.exponents = torch.tensor(monos, dtype=torch.long).reshape(len(monos), dim)
        #: ``(n,)`` the monomials' root-mean-square under a standard normal (the column scale).
        self.norms = torch.tensor([_gaussian_rms(a) for a in monos], dtype=torch.float64)
        self.generator_shape = (dim * len(monos),)

    @property
    def num_monomials(self) -> int:
        """Monomials ``n`` in the library (``m = dim * n``)."""
        return int(self.exponents.shape[0])

    @property
    def term_names(self) -> List[str]:
        """One readable name per basis field, in coefficient order, e.g. ``"q^3 ∂p"`` (``"∂q"`` for a constant)."""
        monos = [_monomial_name(a, self.coordinates) for a in self.exponents.tolist()]
        return [f"{mono} ∂{axis}".strip() for axis in self.coordinates for mono in monos]

    # ------------------------------------------------------------------------------------ inputs

    @override
    def validate_input(self, x: Tensor) -> None:
        validate_points(self, x, self.dim, self.components)
        if x.shape[0] == 0:
            raise InputError(f"Expected at least one sample for {self!r}, got shape {tuple(x.shape)}.")

    def draws_input_as(self, x: Tensor) -> str:
        """Points are drawn as vectors."""
        return "vector"

    def features(self, points: Tensor) -> Tensor:
        """The scaled monomials ``u^alpha / g_alpha`` at ``points`` ``(..., dim)``: ``(..., n)``."""
        u = points / self.scale
        powers = u.unsqueeze(-2) ** self.exponents.to(u.device, u.dtype)  # (..., n, dim); 0^0 = 1
        return powers.prod(-1) / self.norms.to(u.device, u.dtype)

    def _points(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, self.dim)

    # ------------------------------------------------------------------------------- the engine

    @override
    def tangents(self, x: Tensor) -> Tensor:
        feats = self.features(self._points(x))  # (B, c, n)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        # basis field (i, a) at point c is e_i * feature_a(x_c)
        t = torch.einsum("ie,bca->biace", eye, feats)
        return t.reshape(x.shape[0], self.num_generators, *x.shape[1:])

    @override
    def rows(self, x: Tensor, grads: Tensor) -> Tensor:
        feats = self.features(self._points(x.to(torch.float64)))
        g = grads.to(torch.float64).reshape(grads.shape[0], grads.shape[1], -1, self.dim)
        return torch.einsum("bkci,bca->bkia", g, feats).flatten(2)

    @override
    def tangent_gram(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """``I_dim (x) S`` with ``S = sum_{b, c} f(x_c) f(x_c)^T`` over the monomial features ``f``."""
        feats = self.features(self._points(x.to(torch.float64)))
        if mask is not None:
            feats = torch.where(mask.reshape(-1, 1, 1), feats, 0.0)
        s = torch.einsum("bca,bcd->ad", feats, feats)
        return torch.kron(torch.eye(self.dim, dtype=torch.float64, device=x.device), s)

    def field(self, coefficients: Tensor, points: Tensor) -> Tensor:
        """The field with ``coefficients`` ``(m,)`` evaluated at ``points`` ``(..., dim)``: ``(..., dim)``."""
        coeffs = self.to_vector(coefficients).to(points.device, points.dtype).reshape(self.dim, -1)
        return self.features(points) @ coeffs.T

    @override
    def transform(self, x: Tensor, generator: Tensor, t: float = 1.0) -> Tensor:
        """Move every point along the field's flow for time ``t`` (classical Runge-Kutta, 64 steps per unit)."""
        coeffs = generator.detach().to("cpu", torch.float64)
        p = self._points(x).to(torch.float64)
        steps = max(_MIN_STEPS, math.ceil(_STEPS_PER_UNIT * abs(float(t))))
        h = float(t) / steps
        for _ in range(steps):
            k1 = self.field(coeffs, p)
            k2 = self.field(coeffs, p + 0.5 * h * k1)
            k3 = self.field(coeffs, p + 0.5 * h * k2)
            k4 = self.field(coeffs, p + h * k3)
            p = p + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return p.to(x.dtype).reshape(x.shape)

    # ------------------------------------------------------------------------------ given fields

    def coefficients(self, field: FieldLike, name: str = "field") -> Tensor:
        """The coefficient vector ``(m,)`` (float64) of a field given as coefficients or as a callable.

        A callable is fitted by least squares at fixed random points; it must lie in the library.

        Raises:
            ValueError: When the field is neither, is not finite, or is not in the library.
        """
        if isinstance(field, Tensor):
            if tuple(field.shape) != self.generator_shape:
                raise ValueError(
                    f"Expected {name} as coefficients of shape {self.generator_shape}, got {tuple(field.shape)}."
                )
            vec = field.detach().to("cpu", torch.float64)
        elif callable(field):
            vec = self._fit(field, name)
        else:
            raise ValueError(
                f"Expected {name} as a coefficient vector ({self.num_generators},) or a callable "
                f"(N, {self.dim}) -> (N, {self.dim}), got {type(field).__name__}."
            )
        if not bool(torch.isfinite(vec).all()):
            raise ValueError(f"Expected {name} to be finite, got NaN or infinite coefficients.")
        return vec

    def _fit(self, fn: Callable[[Tensor], Tensor], name: str) -> Tensor:
        points = torch.randn(4 * self.num_monomials + 16, self.dim, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0)) * self.scale
        values = fn(points)
        if not isinstance(values, Tensor) or tuple(values.shape) != tuple(points.shape):
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"Expected {name}(points) to return shape {tuple(points.shape)}, got {got}.")
        values = values.to(torch.float64)
        feats = self.features(points)
        solution = torch.linalg.lstsq(feats, values).solution  # (n, dim)
        residual = float((feats @ solution - values).norm()) / max(float(values.norm()), 1e-300)
        if residual > 1e-6:
            raise ValueError(
                f"{name} is not a polynomial field of degree {self.min_degree}..{self.degree} on R^{self.dim} "
                f"(relative residual {residual:.2g} of the best fit by the library)."
            )
        return solution.T.reshape(-1)

    def _affine_field(self, mat: Tensor) -> Tensor:
        """Coefficients of the field ``A x + b`` of a homogeneous ``(dim + 1, dim + 1)`` matrix."""
        a, b = mat[: self.dim, : self.dim].clone(), mat[: self.dim, self.dim].clone()
        return self.coefficients(lambda x: x @ a.T + b, name="the named field")

    @override
    def reference_basis(self, name: str) -> Tensor:
        mats = algebras.basis(name, (self.dim + 1, self.dim + 1), homogeneous=True)
        return torch.stack([self._affine_field(mat) for mat in mats])

    @override
    def known_generator(self, name: str) -> Tensor:
        return self._affine_field(algebras.generator(name, (self.dim + 1, self.dim + 1), homogeneous=True))

    @override
    def reference_vectors(self, reference: Union[str, Tensor, Sequence[FieldLike]]) -> Tensor:  # type: ignore[override]
        """Orthonormal coefficients ``(k, m)`` of a reference: a name, a tensor ``(k, m)`` or a list of fields."""
        if isinstance(reference, (list, tuple)):
            if not reference:
                raise ValueError("Expected at least one field in the reference list, got none.")
            reference = torch.stack([self.coefficients(f, name=f"reference field {i}") for i, f in
                                     enumerate(reference)])
        return super().reference_vectors(reference)  # type: ignore[arg-type]

    @override
    def known_vectors(self, known: Any) -> Dict[str, Tensor]:
        """As for every action, and a ``name -> field`` mapping may also give callables."""
        if isinstance(known, Mapping):
            known = {k: v if isinstance(v, (str, Tensor)) else self.coefficients(v, name=f"known field {k!r}")
                     for k, v in known.items()}
        return super().known_vectors(known)

    # ---------------------------------------------------------------------------------- brackets

    def bracket_library(self) -> VectorFieldAction:
        """The library that holds every bracket of two fields of this one: degree ``2 degree - 1``, from 0."""
        return VectorFieldAction(self.dim, max(2 * self.degree - 1, 0), coordinates=self.coordinates,
                                 scale=self.scale)

    def embed(self, coefficients: Tensor, library: VectorFieldAction) -> Tensor:
        """Coefficients ``(..., m)`` re-expressed over a larger ``library`` with the same ``scale`` (exactly)."""
        index = {tuple(a): i for i, a in enumerate(library.exponents.tolist())}
        where = torch.tensor([index[tuple(a)] for a in self.exponents.tolist()], dtype=torch.long)
        c = coefficients.reshape(*coefficients.shape[:-1], self.dim, self.num_monomials)
        out = c.new_zeros(*c.shape[:-1], library.num_monomials)
        out[..., where] = c
        return out.flatten(-2)

    def bracket(self, first: Tensor, second: Tensor) -> Tensor:
        """The Lie bracket ``[X, Y] = DY X - DX Y`` of fields ``(..., m)``, over :meth:`bracket_library`.

        Exact polynomial arithmetic (no sampling): the result's coefficients are those of the
        larger library, whose degree ``2 degree - 1`` holds every bracket.
        """
        big = self.bracket_library()
        x = self._raw(first.to(torch.float64))
        y = self._raw(second.to(torch.float64))
        raw = (self._derivative_product(x, y, big) - self._derivative_product(y, x, big)) / self.scale
        return (raw * big.norms).flatten(-2)

    def _raw(self, coefficients: Tensor) -> Tensor:
        """``(..., dim, n)`` coefficients of the plain monomials ``u^alpha``."""
        return coefficients.reshape(*coefficients.shape[:-1], self.dim, self.num_monomials) / self.norms

    def _derivative_product(self, x: Tensor, y: Tensor, big: VectorFieldAction) -> Tensor:
        """``sum_j X_j d_j Y`` in ``u`` for raw coefficients ``(..., dim, n)``, over ``big``'s monomials."""
        exps = self.exponents
        index = {tuple(a): i for i, a in enumerate(big.exponents.tolist())}
        # target[j, a, b]: the monomial u^alpha_a * d_j u^alpha_b (its index in big), weight alpha_b[j]
        target = torch.zeros(self.dim, self.num_monomials, self.num_monomials, dtype=torch.long)
        for j in range(self.dim):
            step = torch.zeros(self.dim, dtype=torch.long)
            step[j] = 1
            sums = (exps[:, None, :] + exps[None, :, :] - step).tolist()
            # where alpha_b[j] = 0 the derivative vanishes (weight 0): any index will do
            target[j] = torch.tensor([[index.get(tuple(s), 0) for s in row] for row in sums])
        weight = exps.T.to(torch.float64)  # (dim, n): alpha_b[j]
        values = torch.einsum("...ja,...ib,jb->...ijab", x, y, weight)  # (..., i, j, a, b)
        flat = values.reshape(*values.shape[:-3], -1)
        idx = target.reshape(-1).expand(flat.shape)
        out = flat.new_zeros(*flat.shape[:-1], big.num_monomials)
        return out.scatter_add_(-1, idx.contiguous(), flat)

    def closure_error(self, generators: Tensor) -> Optional[float]:
        """How far fields ``(k, m)`` are from closing under the bracket; NaN for fewer than two.

        The largest norm, over pairs, of the part of ``[X_i, X_j]`` (over :meth:`bracket_library`)
        outside the span of the fields: the terms beyond this library's degree count as error.
        """
        k = int(generators.shape[0])
        if k < 2:
            return float("nan")
        v = generators.reshape(k, -1).to(torch.float64)
        big = self.bracket_library()
        span = torch.linalg.qr(self.embed(v, big).T).Q  # (m_big, k)
        i, j = torch.triu_indices(k, k, offset=1)
        brackets = self.bracket(v[i], v[j]).T  # (m_big, pairs)
        residual = brackets - span @ (span.T @ brackets)
        return float(residual.norm(dim=0).max())

    # ------------------------------------------------------------------------------ read-outs

    def describe(self, coefficients: Tensor, terms: int = 4, decimals: int = 2) -> str:
        """The largest ``terms`` terms of a field, e.g. ``"0.71 p ∂q - 0.70 q^3 ∂p"``."""
        c = self.to_vector(coefficients).detach().to("cpu", torch.float64)
        order = torch.argsort(c.abs(), descending=True)[:terms].tolist()
        names = self.term_names
        text = ""
        for n, i in enumerate(order):
            value = float(c[i])
            sign = ("-" if value < 0 else "") if n == 0 else (" - " if value < 0 else " + ")
            text += f"{sign}{abs(value):.{decimals}f} {names[i]}"
        return text

    @override
    def pictures(self, report: Any, num_generators: int = 4, caption: Optional[str] = None) -> Dict[str, Any]:
        """``field_terms`` (the largest terms of the leading fields) and, in 2-D, ``field`` (their arrows)."""
        from liegg_lightning.pictures.fields import field_pictures

        return field_pictures(self, report, num_generators, caption)

    def __repr__(self) -> str:
        extra = f", components={self.components}" if self.components is not None else ""
        extra += f", min_degree={self.min_degree}" if self.min_degree else ""
        extra += f", scale={self.scale:g}" if self.scale != 1.0 else ""
        return f"VectorFieldAction(dim={self.dim}, degree={self.degree}{extra})"
