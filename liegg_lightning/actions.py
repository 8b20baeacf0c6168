"""Group actions: how a Lie-algebra element ``h`` moves an input.

Every action turns the input gradients of a network into rows of the network polarization
matrix, ``rows[b, k, i] = <dF_k/dx(x_b), A_{E_i}(x_b)>``, where ``A_h(x) = d/dt exp(t h) x`` at
``t = 0`` and ``E_i`` is the ``i``-th basis matrix of the candidate algebra in row-major order.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from typing_extensions import override

from liegg_lightning import algebras
from liegg_lightning._checks import check_int
from liegg_lightning._errors import InputError

__all__ = ["GroupAction", "VectorAction", "ImageAction", "SignalAction", "VolumeAction", "TangentAction"]


class GroupAction(ABC):
    """How the candidate Lie algebra acts on a network's input.

    Subclasses define :attr:`generator_shape`, :meth:`validate_input`, :meth:`tangents` and
    :meth:`transform`; they override :meth:`rows` where a closed form avoids materialising one
    tangent copy of the input per basis element.
    """

    #: Shape of one generator matrix; the algebra has ``prod(generator_shape)`` basis elements.
    generator_shape: Tuple[int, ...]
    #: True when generators are homogeneous (affine) matrices with a zero last row.
    homogeneous: bool = False

    @property
    def num_generators(self) -> int:
        """Dimension ``m`` of the candidate algebra (columns of the polarization matrix)."""
        return math.prod(self.generator_shape)

    @abstractmethod
    def validate_input(self, x: Tensor) -> None:
        """Raise :class:`ValueError` naming the expected shape when ``x`` does not fit."""

    def draws_input_as(self, x: Tensor) -> str:
        """How pictures show one input ``x`` (no batch axis): ``"image"`` or ``"vector"``."""
        return "image" if x.ndim in (2, 3) else "vector"

    @abstractmethod
    def tangents(self, x: Tensor) -> Tensor:
        """Tangents ``A_{E_i}(x)`` of shape ``(B, m, *x.shape[1:])``, one per basis element."""

    @abstractmethod
    def transform(self, x: Tensor, generator: Tensor, t: float = 1.0) -> Tensor:
        """Apply the finite transformation ``exp(t * generator)`` to a batch of inputs."""

    def rows(self, x: Tensor, grads: Tensor) -> Tensor:
        """Polarization rows ``(B, K, m)`` in float64 from inputs ``x`` and gradients ``(B, K, *x.shape[1:])``."""
        tangents = self.tangents(x.to(torch.float64)).flatten(2)
        return torch.einsum("bkd,bmd->bkm", grads.to(torch.float64).flatten(2), tangents)

    def tangent_gram(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Gram matrix of the tangents summed over a batch: ``T[i, j] = sum_b <A_{E_i}(x_b), A_{E_j}(x_b)>``.

        ``v^T T v`` is the squared input motion (summed over the batch) along the generator with
        coefficients ``v``: the denominator of the relative variances. The default forms the
        tangents; subclasses override it with a closed form where one is cheaper.

        Args:
            x: A batch of inputs.
            mask: Optional ``(B,)`` bool: only the samples where it is true count.

        Returns:
            ``(m, m)`` float64 on ``x``'s device.
        """
        t = self.tangents(x.to(torch.float64)).to(torch.float64).flatten(2)
        if mask is not None:
            t = torch.where(mask.reshape(-1, 1, 1), t, 0.0)
        return torch.einsum("bmd,bnd->mn", t, t)

    def to_generator(self, vector: Tensor) -> Tensor:
        """Reshape ``(..., m)`` coefficient vectors into generator matrices ``(..., *generator_shape)``."""
        if vector.shape[-1] != self.num_generators:
            raise ValueError(
                f"Expected vectors with last dimension m={self.num_generators}, got shape {tuple(vector.shape)}."
            )
        return vector.reshape(*vector.shape[:-1], *self.generator_shape)

    def to_vector(self, generator: Tensor) -> Tensor:
        """Coefficients ``(..., m)`` of generator matrices ``(..., *generator_shape)``; inverts :meth:`to_generator`."""
        n = len(self.generator_shape)
        if tuple(generator.shape[generator.ndim - n :]) != self.generator_shape:
            raise ValueError(
                f"Expected generators of shape (..., {', '.join(map(str, self.generator_shape))}), "
                f"got shape {tuple(generator.shape)}."
            )
        return generator.reshape(*generator.shape[: generator.ndim - n], self.num_generators)

    def reference_basis(self, name: str) -> Tensor:
        """Orthonormal basis ``(k, *generator_shape)`` (float64) of a named reference algebra."""
        return algebras.basis(name, self.generator_shape, homogeneous=self.homogeneous)

    def known_generator(self, name: str) -> Tensor:
        """A single named generator (``"rotation"``, ``"scaling"``, ...) for this action's shape."""
        return algebras.generator(name, self.generator_shape, homogeneous=self.homogeneous)

    def reference_vectors(self, reference: Union[str, Tensor]) -> Tensor:
        """Orthonormal coefficient vectors ``(k, m)`` of a reference algebra.

        Args:
            reference: A name from :data:`~liegg_lightning.algebras.ALGEBRA_NAMES`, or a basis tensor
                ``(k, *generator_shape)`` (it need not be orthonormal; it is orthonormalised here).
        """
        if isinstance(reference, str):
            mats = self.reference_basis(reference)
        elif isinstance(reference, Tensor):
            shape = tuple(self.generator_shape)
            if reference.ndim != len(shape) + 1 or tuple(reference.shape[1:]) != shape:
                raise ValueError(
                    f"Expected a reference basis of shape (k, {', '.join(map(str, shape))}), "
                    f"got shape {tuple(reference.shape)}."
                )
            if not bool(torch.isfinite(reference).all()):
                raise ValueError("Expected a finite reference basis, got NaN or infinite entries.")
            mats = reference
        else:
            raise ValueError(
                f"Expected `reference_algebra` to be a name ({', '.join(algebras.ALGEBRA_NAMES)}) or a basis "
                f"tensor, got {type(reference).__name__}."
            )
        return algebras.orthonormalize(self.to_vector(mats.to(torch.float64)))

    def known_vectors(self, known: Union[Sequence[str], Mapping[str, Tensor], None]) -> Dict[str, Tensor]:
        """Coefficient vectors ``name -> (m,)`` of named or given generators, for ``known_variances``."""
        if known is None:
            return {}
        if isinstance(known, str):
            known = [known]
        items = list(known.items()) if isinstance(known, Mapping) else [(name, name) for name in known]
        out: Dict[str, Tensor] = {}
        shape = tuple(self.generator_shape)
        for name, value in items:
            if isinstance(value, str):
                mat = self.known_generator(value)
            elif isinstance(value, Tensor):
                if tuple(value.shape) != shape:
                    raise ValueError(
                        f"Expected the known generator {name!r} to have shape {shape}, got {tuple(value.shape)}."
                    )
                mat = value.detach().to("cpu", torch.float64)
                if not bool(torch.isfinite(mat).all()):
                    raise ValueError(f"Expected the known generator {name!r} to be finite, got NaN or inf entries.")
            else:
                raise ValueError(
                    f"Expected known generators as names ({', '.join(algebras.GENERATOR_NAMES)}) or tensors of "
                    f"shape {shape}, got {type(value).__name__} for {name!r}."
                )
            vec = self.to_vector(mat)
            if float(vec.norm()) == 0.0:
                raise ValueError(f"The known generator {name!r} is zero.")
            out[str(name)] = vec
        return out

    def closure_error(self, generators: Tensor) -> Optional[float]:
        """How far generators ``(k, *generator_shape)`` are from closing under this algebra's bracket.

        Matrices: the commutator (:func:`~liegg_lightning.functional.spectrum.closure_error`);
        actions whose generators are not matrices override it (vector fields: their Lie bracket).
        """
        from liegg_lightning.functional.spectrum import closure_error

        return closure_error(generators)

    def pictures(self, report: Any, num_generators: int = 4, caption: Optional[str] = None) -> Dict[str, Any]:
        """Pictures of a report that only this action can draw, ``tag -> (H, W, 3) uint8``; none by default."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(generator_shape={self.generator_shape})"


def _check_floating(x: Tensor, expected: str) -> None:
    if not isinstance(x, Tensor):
        raise InputError(f"Expected the input to be a torch.Tensor {expected}, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise InputError(f"Expected a floating-point input {expected}, got dtype {x.dtype}.")


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Expected `{name}` to be a bool, got {value!r}.")


def _affine_to_generator(vector: Tensor, n: int) -> Tensor:
    """``(..., n (n + 1))`` coefficients -> ``(..., n + 1, n + 1)`` homogeneous generators with a zero last row."""
    m = n * (n + 1)
    if vector.shape[-1] != m:
        raise ValueError(f"Expected vectors with last dimension m={m}, got shape {tuple(vector.shape)}.")
    top = vector.reshape(*vector.shape[:-1], n, n + 1)
    return torch.cat([top, torch.zeros_like(top[..., :1, :])], dim=-2)


def _affine_to_vector(generator: Tensor, n: int) -> Tensor:
    """Inverse of :func:`_affine_to_generator`: the top ``n`` rows, row-major (the last row is dropped)."""
    if generator.ndim < 2 or tuple(generator.shape[-2:]) != (n + 1, n + 1):
        raise ValueError(f"Expected generators of shape (..., {n + 1}, {n + 1}), got shape {tuple(generator.shape)}.")
    return generator[..., :n, :].reshape(*generator.shape[:-2], n * (n + 1))


def _homogeneous_generator(generator: Tensor, n: int) -> Tensor:
    """A linear ``(n, n)`` or affine ``(n + 1, n + 1)`` generator as a homogeneous float64 CPU matrix."""
    gen = generator.detach().to("cpu", torch.float64)
    if tuple(gen.shape) == (n + 1, n + 1):
        gen = torch.cat([gen[:n], torch.zeros(1, n + 1, dtype=gen.dtype)], dim=0)  # the last row is ignored
    elif tuple(gen.shape) == (n, n):
        gen = torch.block_diag(gen, torch.zeros(1, 1, dtype=gen.dtype))
    else:
        raise ValueError(
            f"Expected a generator of shape ({n}, {n}) or ({n + 1}, {n + 1}), got shape {tuple(gen.shape)}."
        )
    return gen


def validate_points(action: GroupAction, x: Tensor, dim: int, components: Optional[int]) -> None:
    """Raise :class:`InputError` unless ``x`` is ``components`` points of ``R^dim`` a sample.

    Accepted: ``(B, c * dim)`` or ``(B, c, dim)``, ``c = components`` (any ``c >= 1`` when ``None``).
    """
    flat, c = ("c*" + str(dim), "c") if components is None else (str(components * dim), str(components))
    expected = f"of shape (B, {flat}) or (B, {c}, {dim})"
    _check_floating(x, expected)
    ok = False
    if x.ndim == 2:
        ok = x.shape[1] % dim == 0 and (components is None or x.shape[1] == components * dim)
    elif x.ndim == 3:
        ok = x.shape[2] == dim and (components is None or x.shape[1] == components)
    if not ok or x.shape[1] == 0:
        raise InputError(f"Expected an input {expected} for {action!r}, got shape {tuple(x.shape)}.")


class _AffineLayout(GroupAction):
    """Generators that are ``n x n``, or with ``affine`` ``(n + 1) x (n + 1)`` with a zero last row (m = n^2 + n)."""

    affine: bool = False

    @property
    def _affine_size(self) -> int:
        """``n``, the dimension of the space the linear part acts on."""
        raise NotImplementedError

    def _set_layout(self, affine: bool) -> None:
        n = self._affine_size
        self.affine = affine
        self.homogeneous = affine
        self.generator_shape = (n + 1, n + 1) if affine else (n, n)

    @property
    def num_generators(self) -> int:
        """``n**2``, or ``n**2 + n`` with ``affine=True``."""
        n = self._affine_size
        return n * (n + 1) if self.affine else n * n

    @override
    def to_generator(self, vector: Tensor) -> Tensor:
        if not self.affine:
            return super().to_generator(vector)
        return _affine_to_generator(vector, self._affine_size)

    @override
    def to_vector(self, generator: Tensor) -> Tensor:
        if not self.affine:
            return super().to_vector(generator)
        return _affine_to_vector(generator, self._affine_size)


class VectorAction(_AffineLayout):
    """``gl(dim)`` (or ``aff(dim)``) acting on ``components`` vectors (points) in ``R^dim`` at once.

    The input is ``(B, components * dim)`` or ``(B, components, dim)``; each component is
    transformed by the same matrix. The row of output ``k`` is ``vec(sum_c g_c x_c^T)``.

    With ``affine=True`` the components are points and the algebra is ``aff(dim)``: generators are
    ``(dim + 1) x (dim + 1)`` homogeneous matrices with a zero last row (like
    ``ImageAction(affine=True)``), acting on ``(x_c, 1)``; the row is ``vec(sum_c g_c (x_c, 1)^T)``
    without its last row, ``m = dim**2 + dim`` (row-major: the linear part's row ``a`` followed by
    the translation along axis ``a``). Reference names then include ``"translation"``,
    ``"euclidean"``/``"se"`` (rigid motions), ``"affine"`` and, for 4-vectors, ``"poincare"``.

    Args:
        dim: Dimension of each vector; the candidate algebra is ``gl(dim)`` with ``m = dim**2``.
        components: Number of vectors per sample. ``None`` infers it from the input.
        affine: ``True`` for ``aff(dim)`` (translations of every point too).

    Example:
        >>> action = VectorAction(dim=5, components=2)
        >>> action.num_generators
        25
        >>> VectorAction(dim=3, components=4, affine=True).num_generators
        12
    """

    def __init__(self, dim: int, components: Optional[int] = None, affine: bool = False) -> None:
        check_int("dim", dim, minimum=1)
        check_int("components", components, minimum=1, allow_none=True)
        _check_bool(affine, "affine")
        self.dim = dim
        self.components = components
        self._set_layout(affine)

    @property
    def _affine_size(self) -> int:
        return self.dim

    def draws_input_as(self, x: Tensor) -> str:
        """Vector inputs are drawn as vectors, one block per component."""
        return "vector"

    @override
    def validate_input(self, x: Tensor) -> None:
        validate_points(self, x, self.dim, self.components)

    def _vectors(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, self.dim)

    def _points(self, x: Tensor) -> Tensor:
        """The components ``(B, c, dim)``, with a trailing 1 appended (homogeneous) when ``affine``."""
        xs = self._vectors(x)
        return torch.cat([xs, torch.ones_like(xs[..., :1])], dim=-1) if self.affine else xs

    @override
    def rows(self, x: Tensor, grads: Tensor) -> Tensor:
        xs = self._points(x.to(torch.float64))
        gs = grads.to(torch.float64).reshape(grads.shape[0], grads.shape[1], -1, self.dim)
        # sum over components of the outer product g_c x_c^T (x_c homogeneous when affine), row-major
        return torch.einsum("bkca,bcd->bkad", gs, xs).flatten(2)

    @override
    def tangent_gram(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Closed form of the tangent Gram matrix.

        The tangent of ``E_ab`` on a component ``x_c`` is ``e_a x_c[b]``, so ``T = I_dim (x) S``
        (Kronecker product) with ``S = sum_{b, c} x_c x_c^T`` (``x_c`` homogeneous when ``affine``).
        """
        xs = self._points(x.to(torch.float64))
        if mask is not None:
            xs = torch.where(mask.reshape(-1, 1, 1), xs, 0.0)
        s = torch.einsum("bcd,bce->de", xs, xs)
        return torch.kron(torch.eye(self.dim, dtype=torch.float64, device=x.device), s)

    @override
    def tangents(self, x: Tensor) -> Tensor:
        xs = self._points(x)
        b, c, d = xs.shape
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        # tangent of E_ab on component c is e_a * x_c[b]
        t = torch.einsum("ae,bcd->badce", eye, xs)  # (B, a, b', c, e)
        return t.reshape(b, self.dim * d, *x.shape[1:])

    @override
    def transform(self, x: Tensor, generator: Tensor, t: float = 1.0) -> Tensor:
        if self.affine:
            g = torch.linalg.matrix_exp(t * _homogeneous_generator(generator, self.dim))
            moved = self._points(x.to(torch.float64)) @ g.to(x.device).T
            return moved[..., : self.dim].to(x.dtype).reshape(x.shape)
        g = torch.linalg.matrix_exp(t * generator.detach().to("cpu", torch.float64)).to(x.device, x.dtype)
        return (self._vectors(x) @ g.T).reshape(x.shape)

    def __repr__(self) -> str:
        extra = ", affine=True" if self.affine else ""
        return f"VectorAction(dim={self.dim}, components={self.components}{extra})"


def pixel_coordinates(
    height: int, width: int, dtype: torch.dtype, device: torch.device
) -> Tuple[Tensor, Tensor, float]:
    """Centred pixel coordinates ``(x along width, y along height)`` in half-larger-side units, and the step."""
    half = max(height, width) / 2.0
    px = (torch.arange(width, dtype=dtype, device=device) - (width - 1) / 2.0) / half
    py = (torch.arange(height, dtype=dtype, device=device) - (height - 1) / 2.0) / half
    return px, py, 1.0 / half


class ImageAction(GroupAction):
    """``gl(2)`` (or ``aff(2)``) acting on the pixel coordinates of images, ``(g I)(p) = I(g^-1 p)``.

    The input is ``(B, C, H, W)`` or ``(B, H, W)``. Coordinates: ``x`` along the width, ``y`` along
    the height, centred on the image, in units of half the larger side. Spatial derivatives are
    central differences inside the image and one-sided differences on its outer one-pixel ring,
    where a central difference would need a pixel from outside.

    Edges on the input side: the tangents of an input image are always taken over the whole image
    (one-sided on its ring), so a network's input derivative sees every pixel the network sees;
    ``border`` does not change them. Edges on the output side: analysed as the output action of a
    feature map (``output_action`` or a layer of ``layers``), this action's rows come only from
    the pixels at least ``border`` from every edge. A zero-padded convolution really is not
    equivariant near its edge, and that ring grows inwards with every padded layer, so the whole
    map's variance mixes "has this layer learned the symmetry" with "how much does padding break
    it"; the reports of such maps give the ring's share as ``border_share``.

    Args:
        affine: ``False`` for ``gl(2)`` (``m = 4``); ``True`` for ``aff(2)`` as 3x3 homogeneous
            generators with a zero last row (``m = 6``: the linear part, then the translations).
        padding_mode: How :meth:`transform` fills pixels that come from outside the image
            (``"zeros"``, ``"border"`` or ``"reflection"``).
        border: As an output action, leave out the rows of the pixels closer than ``border`` to an
            edge (``0``, the default, keeps every pixel: the whole map, padding effects included,
            as before this option existed; ``1`` leaves out the one-sided-difference ring; a
            network of ``L`` zero-padded 3x3 convolutions reaches ``L`` pixels in). Unused as an
            input action.

    Example:
        >>> ImageAction().num_generators, ImageAction(affine=True).num_generators
        (4, 6)
        >>> ImageAction(border=1).border_masks((1, 4, 4))[0].reshape(4, 4).int()
        tensor([[0, 0, 0, 0],
                [0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """

    def __init__(self, affine: bool = False, padding_mode: str = "zeros", border: int = 0) -> None:
        if not isinstance(affine, bool):
            raise ValueError(f"Expected `affine` to be a bool, got {affine!r}.")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(
                f"Expected `padding_mode` to be one of 'zeros', 'border', 'reflection', got {padding_mode!r}."
            )
        check_int("border", border, minimum=0)
        self.border = border
        self.affine = affine
        self.padding_mode = padding_mode
        self.homogeneous = affine
        self.generator_shape = (3, 3) if affine else (2, 2)

    @property
    def num_generators(self) -> int:
        """6 for ``aff(2)``, 4 for ``gl(2)``."""
        return 6 if self.affine else 4

    def draws_input_as(self, x: Tensor) -> str:
        """Images are drawn as images."""
        return "image"

    def border_masks(self, shape: Sequence[int]) -> Tuple[Tensor, Tensor]:
        """Which components of a map of ``shape`` (``(C, h, w)`` or ``(h, w)``, no batch axis) give rows.

        Returns:
            ``(kept, ring)``, boolean ``(prod(shape),)`` over the flattened components: ``kept``
            the pixels at least ``border`` from every edge (all of them for ``border=0``), ``ring``
            the pixels closer than ``max(border, 1)``: those left out, or with ``border=0`` the
            outer ring whose derivatives are one-sided.

        Raises:
            InputError: When ``border`` leaves no pixel of an ``h x w`` map.
        """
        h, w = int(shape[-2]), int(shape[-1])
        rows = torch.arange(h)
        cols = torch.arange(w)
        to_edge = torch.minimum(
            torch.minimum(rows, h - 1 - rows)[:, None], torch.minimum(cols, w - 1 - cols)[None, :]
        )
        kept = to_edge >= self.border
        if not bool(kept.any()):
            raise InputError(
                f"{self!r} leaves no pixel of a {h}x{w} map (every pixel is closer than {self.border} to an edge)."
            )
        ring = to_edge < max(self.border, 1)
        channels = math.prod(int(s) for s in shape[:-2])
        return kept.expand(channels, h, w).reshape(-1), ring.expand(channels, h, w).reshape(-1)

    @override
    def validate_input(self, x: Tensor) -> None:
        _check_floating(x, "of shape (B, C, H, W) or (B, H, W)")
        if x.ndim not in (3, 4) or x.shape[-1] < 3 or x.shape[-2] < 3:
            raise InputError(
                "Expected an image input of shape (B, C, H, W) or (B, H, W) with H, W >= 3 for "
                f"{self!r}, got shape {tuple(x.shape)}."
            )

    @override
    def to_generator(self, vector: Tensor) -> Tensor:
        if not self.affine:
            return super().to_generator(vector)
        if vector.shape[-1] != 6:
            raise ValueError(f"Expected vectors with last dimension m=6, got shape {tuple(vector.shape)}.")
        top = vector.reshape(*vector.shape[:-1], 2, 3)
        # homogeneous 3x3 with a zero last row
        return torch.cat([top, torch.zeros_like(top[..., :1, :])], dim=-2)

    @override
    def to_vector(self, generator: Tensor) -> Tensor:
        if not self.affine:
            return super().to_vector(generator)
        if tuple(generator.shape[-2:]) != (3, 3):
            raise ValueError(f"Expected generators of shape (..., 3, 3), got shape {tuple(generator.shape)}.")
        return generator[..., :2, :].reshape(*generator.shape[:-2], 6)

    def _derivatives(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Image derivatives along x (width) and y (height), and the coordinates."""
        px, py, step = pixel_coordinates(x.shape[-2], x.shape[-1], x.dtype, x.device)
        dx = torch.gradient(x, spacing=step, dim=-1)[0]
        dy = torch.gradient(x, spacing=step, dim=-2)[0]
        return dx, dy, px, py

    @override
    def rows(self, x: Tensor, grads: Tensor) -> Tensor:
        x64 = x.to(torch.float64)
        dx, dy, px, py = self._derivatives(x64)
        g = grads.to(torch.float64)
        if x.ndim == 3:  # add the channel axis
            dx, dy, g = dx.unsqueeze(1), dy.unsqueeze(1), g.unsqueeze(2)
        # (g I)(p) = I(g^-1 p): d/dt = -grad I(p) . (h p); entry (a, b) = -sum g * d_a I * p_b
        da = torch.stack([(g * dx.unsqueeze(1)).sum(2), (g * dy.unsqueeze(1)).sum(2)], dim=2)  # (B,K,2,H,W)
        ones = torch.ones_like(py)[:, None].expand(len(py), len(px))
        coords = [px[None, :].expand(len(py), len(px)), py[:, None].expand(len(py), len(px))]
        if self.affine:
            coords.append(ones)
        p = torch.stack(coords)  # (nb, H, W)
        return -torch.einsum("bkahw,chw->bkac", da, p).flatten(2)

    @override
    def tangent_gram(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Closed form of the tangent Gram matrix.

        ``T[(a, b), (a', b')] = sum_p D_aa'(p) p_b p_b'`` with ``D_aa'(p)`` the products of the image
        derivatives along axes ``a`` and ``a'`` at pixel ``p``, summed over the batch and the
        channels first (no tangent copies of the batch are formed).
        """
        x64 = x.to(torch.float64)
        if mask is not None:
            x64 = torch.where(mask.reshape(-1, *([1] * (x64.ndim - 1))), x64, 0.0)
        dx, dy, px, py = self._derivatives(x64)
        lead = tuple(range(x64.ndim - 2))  # batch (and channel) axes
        d = torch.stack(
            [
                torch.stack([(dx * dx).sum(lead), (dx * dy).sum(lead)]),
                torch.stack([(dy * dx).sum(lead), (dy * dy).sum(lead)]),
            ]
        )  # (2, 2, H, W)
        grid_x = px[None, :].expand(len(py), len(px))
        grid_y = py[:, None].expand(len(py), len(px))
        coords = [grid_x, grid_y] + ([torch.ones_like(grid_x)] if self.affine else [])
        p = torch.stack(coords)  # (nb, H, W)
        m = self.num_generators
        return torch.einsum("achw,bhw,dhw->abcd", d, p, p).reshape(m, m)

    @override
    def tangents(self, x: Tensor) -> Tensor:
        dx, dy, px, py = self._derivatives(x)
        grid_x = px[None, :].expand(len(py), len(px))
        grid_y = py[:, None].expand(len(py), len(px))
        coords = [grid_x, grid_y] + ([torch.ones_like(grid_x)] if self.affine else [])
        out = [-d * c for d in (dx, dy) for c in coords]
        return torch.stack(out, dim=1)

    @override
    def transform(self, x: Tensor, generator: Tensor, t: float = 1.0) -> Tensor:
        gen = generator.detach().to("cpu", torch.float64)
        if gen.shape == (3, 3):
            gen = torch.cat([gen[:2], torch.zeros(1, 3, dtype=gen.dtype)], dim=0)
        else:
            gen = torch.block_diag(gen, torch.zeros(1, 1, dtype=gen.dtype))
        inv = torch.linalg.matrix_exp(-t * gen)  # g^-1 in homogeneous form
        h, w = x.shape[-2], x.shape[-1]
        half = max(h, w) / 2.0
        # grid_sample's normalised coordinates (align_corners=False) are p * half / (size / 2)
        sx, sy = half / (w / 2.0), half / (h / 2.0)
        to_norm = torch.diag(torch.tensor([sx, sy, 1.0], dtype=torch.float64))
        from_norm = torch.diag(torch.tensor([1 / sx, 1 / sy, 1.0], dtype=torch.float64))
        theta = (to_norm @ inv @ from_norm)[:2]
        img = x if x.ndim == 4 else x.unsqueeze(1)
        theta_b = theta.to(img.dtype).to(img.device).unsqueeze(0).expand(img.shape[0], 2, 3)
        grid = torch.nn.functional.affine_grid(theta_b, list(img.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(
            img, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False
        )
        return out if x.ndim == 4 else out.squeeze(1)

    def __repr__(self) -> str:
        border = f", border={self.border}" if self.border else ""
        return f"ImageAction(affine={self.affine}, padding_mode={self.padding_mode!r}{border})"


class _GridAction(_AffineLayout):
    """``gl(n)`` (or ``aff(n)``) on the coordinates of an ``n``-D grid: shared by signals and volumes.

    ``(g I)(p) = I(g^-1 p)``. Coordinate axis ``a`` (x, y, z) runs along the ``a``-th tensor axis from
    the end (x along the last one), centred on the grid, in units of half its largest side.
    """

    #: Number of grid axes ``n``.
    _spatial: int = 1
    #: What :meth:`validate_input` expects, e.g. ``"(B, C, L) or (B, L)"``.
    _shapes: str = ""
    #: The padding modes :meth:`transform` accepts.
    _padding_modes: Tuple[str, ...] = ("zeros", "border", "reflection")

    def __init__(self, affine: bool = False, padding_mode: str = "zeros") -> None:
        _check_bool(affine, "affine")
        if padding_mode not in self._padding_modes:
            raise ValueError(
                f"Expected `padding_mode` to be one of {', '.join(map(repr, self._padding_modes))}, "
                f"got {padding_mode!r}."
            )
        self.padding_mode = padding_mode
        self._set_layout(affine)

    @property
    def _affine_size(self) -> int:
        return self._spatial

    def draws_input_as(self, x: Tensor) -> str:
        """Drawn as vectors: an orbit picture shows the model's outputs along it."""
        return "vector"

    @override
    def validate_input(self, x: Tensor) -> None:
        _check_floating(x, f"of shape {self._shapes}")
        n = self._spatial
        if x.ndim not in (n + 1, n + 2) or x.shape[0] == 0 or any(s < 3 for s in x.shape[-n:]):
            raise InputError(
                f"Expected an input of shape {self._shapes} with every grid side >= 3 and B >= 1 for {self!r}, "
                f"got shape {tuple(x.shape)}."
            )


    def _sizes(self, x: Tensor) -> Tuple[int, ...]:
        """Grid sides along x, y, z (the tensor's last axes, from the end)."""
        return tuple(int(x.shape[-(a + 1)]) for a in range(self._spatial))

    def _coordinates(self, x: Tensor) -> Tuple[List[Tensor], float]:
        """Coordinate grids (one per axis, plus ones when ``affine``), each of the grid's shape, and the step."""
        n = self._spatial
        sizes = self._sizes(x)
        half = max(sizes) / 2.0
        grid_shape = x.shape[-n:]
        coords = []
        for a, size in enumerate(sizes):
            line = (torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2.0) / half
            view = [1] * n
            view[n - 1 - a] = size
            coords.append(line.reshape(view).expand(grid_shape))
        if self.affine:
            coords.append(torch.ones(grid_shape, dtype=x.dtype, device=x.device))
        return coords, 1.0 / half

    def _derivatives(self, x: Tensor, step: float) -> List[Tensor]:
        """Derivatives along x, y, z: central differences inside, one-sided at the edges (or wrapped)."""
        out = []
        for a in range(self._spatial):
            dim = x.ndim - 1 - a
            if self.padding_mode == "circular":
                out.append((x.roll(-1, dims=dim) - x.roll(1, dims=dim)) / (2.0 * step))
            else:
                out.append(torch.gradient(x, spacing=step, dim=dim)[0])
        return out

    @override
    def rows(self, x: Tensor, grads: Tensor) -> Tensor:
        x64 = x.to(torch.float64)
        coords, step = self._coordinates(x64)
        derivs = self._derivatives(x64, step)
        g = grads.to(torch.float64)
        n = self._spatial
        if x.ndim == n + 1:  # add the channel axis
            derivs, g = [d.unsqueeze(1) for d in derivs], g.unsqueeze(2)
        # (g I)(p) = I(g^-1 p): d/dt = -grad I(p) . (h p); entry (a, b) = -sum g * d_a I * p_b
        da = torch.stack([(g * d.unsqueeze(1)).sum(2) for d in derivs], dim=2).flatten(3)  # (B, K, n, P)
        p = torch.stack(coords).flatten(1)  # (nb, P)
        return -torch.einsum("bkap,cp->bkac", da, p).flatten(2)

    @override
    def tangent_gram(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Closed form of the tangent Gram matrix.

        ``T[(a, b), (a', b')] = sum_p D_aa'(p) p_b p_b'`` with ``D_aa'(p)`` the products of the
        derivatives along axes ``a`` and ``a'`` at grid point ``p``, summed over the batch and the
        channels first (no tangent copies of the batch are formed).
        """
        x64 = x.to(torch.float64)
        if mask is not None:
            x64 = torch.where(mask.reshape(-1, *([1] * (x64.ndim - 1))), x64, 0.0)
        coords, step = self._coordinates(x64)
        derivs = self._derivatives(x64, step)
        lead = tuple(range(x64.ndim - self._spatial))  # batch (and channel) axes
        d = torch.stack([torch.stack([(da * db).sum(lead) for db in derivs]) for da in derivs]).flatten(2)
        p = torch.stack(coords).flatten(1)  # (nb, P)
        m = self.num_generators
        return torch.einsum("acq,bq,dq->abcd", d, p, p).reshape(m, m)

    @override
    def tangents(self, x: Tensor) -> Tensor:
        coords, step = self._coordinates(x)
        derivs = self._derivatives(x, step)
        return torch.stack([-d * c for d in derivs for c in coords], dim=1)

    def _source_coordinates(self, x: Tensor, generator: Tensor, t: float) -> Tensor:
        """Where each output grid point samples the input: ``g^-1 p`` in ``grid_sample``'s normalised units.

        Returns ``(n, *grid)`` (x, y, z first) for ``align_corners=False``, float64 on the CPU.
        """
        n = self._spatial
        inv = torch.linalg.matrix_exp(-t * _homogeneous_generator(generator, n))  # g^-1, homogeneous
        sizes = self._sizes(x)
        half = max(sizes) / 2.0
        # grid_sample's normalised coordinate (align_corners=False) is p * half / (size / 2)
        scale = torch.tensor([half / (s / 2.0) for s in sizes] + [1.0], dtype=torch.float64)
        theta = (torch.diag(scale) @ inv @ torch.diag(1.0 / scale))[:n]
        coords, _ = self._coordinates(torch.zeros(x.shape[-n:], dtype=torch.float64))
        ones = [] if self.affine else [torch.ones(x.shape[-n:], dtype=torch.float64)]
        points = torch.stack(coords + ones) * scale.reshape(-1, *([1] * n))  # normalised output points
        return torch.einsum("ij,j...->i...", theta, points)

    @override
    def transform(self, x: Tensor, generator: Tensor, t: float = 1.0) -> Tensor:
        """Resample ``x`` at ``g^-1 p`` (linear interpolation), ``g = exp(t * generator)``.

        Points that come from outside the grid are filled by ``padding_mode``.
        """
        n = self._spatial
        src = self._source_coordinates(x, generator, t)
        data = x if x.ndim == n + 2 else x.unsqueeze(1)
        batch = data.shape[0]
        if n == 1 and self.padding_mode == "circular":
            out = _circular_interpolate(data, src[0].to(data.device))
        else:
            if n == 1:  # a row image of height 1, sampled on its only row
                data = data.unsqueeze(2)
                src = torch.stack([src[0], torch.zeros_like(src[0])]).unsqueeze(1)
            grid = src.movedim(0, -1).to(data.device, data.dtype).unsqueeze(0).expand(batch, *src.shape[1:], -1)
            out = torch.nn.functional.grid_sample(
                data, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False
            )
            if n == 1:
                out = out.squeeze(2)
        return out if x.ndim == n + 2 else out.squeeze(1)


def _circular_interpolate(data: Tensor, src: Tensor) -> Tensor:
    """Linear interpolation of periodic signals ``(B, C, L)`` at normalised positions ``src`` ``(L,)``."""
    length = data.shape[-1]
    pos = ((src.to(torch.float64) + 1.0) * length - 1.0) / 2.0  # grid_sample's unnormalisation
    left = torch.floor(pos)
    weight = (pos - left).to(data.dtype)
    i0 = left.long() % length
    i1 = (i0 + 1) % length
    return data[..., i0] * (1.0 - weight) + data[..., i1] * weight


class SignalAction(_GridAction):
    """Time scaling (and shift) of signals ``(B, C, L)`` or ``(B, L)``: ``(g f)(t) = f(g^-1 t)``.

    The one coordinate ``t`` runs along the last axis, centred on the signal, in units of half its
    length (the conventions of :class:`ImageAction`). The time derivative is a central difference
    inside; at the two ends it is one-sided (first order), as for images, unless
    ``padding_mode="circular"``, where the signal is periodic and the difference wraps around.
    The tangent of ``h`` is ``-f'(t) (h_11 t + h_12)``: no tangent copies are formed for the rows.

    Args:
        affine: ``False`` for time scaling alone (``gl(1)``, ``m = 1``, generator shape ``(1, 1)``);
            ``True`` for ``aff(1)`` as 2x2 homogeneous generators with a zero last row (``m = 2``:
            the scaling, then the time shift). Reference names: ``"scaling"``/``"gl"``, and with
            ``affine=True`` ``"translation"``, ``"affine"``; known generators ``"scaling"`` and
            ``"translation"``.
        padding_mode: How :meth:`transform` fills samples that come from outside the signal
            (``"zeros"``, ``"border"``, ``"reflection"``), or ``"circular"`` for periodic signals
            (then the derivatives wrap around too).

    Example:
        >>> SignalAction().num_generators, SignalAction(affine=True).num_generators
        (1, 2)
    """

    _spatial = 1
    _shapes = "(B, C, L) or (B, L)"
    _padding_modes = ("zeros", "border", "reflection", "circular")

    def __repr__(self) -> str:
        return f"SignalAction(affine={self.affine}, padding_mode={self.padding_mode!r})"


class VolumeAction(_GridAction):
    """``gl(3)`` (or ``aff(3)``) acting on the voxel coordinates of volumes ``(B, C, D, H, W)`` or ``(B, D, H, W)``.

    ``(g V)(p) = V(g^-1 p)``. Coordinates: ``x`` along the width ``W``, ``y`` along the height
    ``H``, ``z`` along the depth ``D``, centred on the volume, in units of half its largest side
    (so a rotation stays a rotation on non-cubic volumes), as :class:`ImageAction` does in 2-D.
    Spatial derivatives are central differences inside and one-sided (first order) at the faces.
    The rows are formed in closed form, without tangent copies of the batch.

    Args:
        affine: ``False`` for ``gl(3)`` (``m = 9``); ``True`` for ``aff(3)`` as 4x4 homogeneous
            generators with a zero last row (``m = 12``: each row of the linear part followed by the
            translation along that axis). Reference names as for images: ``"rotation"``/``"so"`` is
            ``so(3)``, ``"scaling"``, ``"similarity"``, ``"sl"``, ``"gl"``, and with ``affine=True``
            ``"translation"``, ``"euclidean"``, ``"special_affine"``, ``"affine"``; known generators
            ``"rotation_x/y/z"``, ``"scaling"``, ``"translation_x/y/z"``.
        padding_mode: How :meth:`transform` fills voxels that come from outside the volume
            (``"zeros"``, ``"border"`` or ``"reflection"``).

    Example:
        >>> VolumeAction().num_generators, VolumeAction(affine=True).num_generators
        (9, 12)
    """

    _spatial = 3
    _shapes = "(B, C, D, H, W) or (B, D, H, W)"

    def __repr__(self) -> str:
        return f"VolumeAction(affine={self.affine}, padding_mode={self.padding_mode!r})"


class TangentAction(GroupAction):
    """Any action given by its tangents: ``fn(x)`` returns ``(B, m, *x.shape[1:])``.

    Use it for point clouds, graphs, sequences: anything :class:`VectorAction` and
    :class:`ImageAction` do not cover. The tangents are ordered like the row-major entries of a
    generator matrix of shape ``generator_shape``.

    Args:
        fn: Maps a batch of inputs to their tangents, one per basis element.
        generator_shape: Shape of one generator, e.g. ``(3, 3)``.
        transform_fn: Optional ``transform_fn(x, generator, t)`` applying ``exp(t * generator)``;
            needed only for pictures of orbits.

    Example:
        >>> import torch
        >>> act = TangentAction(lambda x: torch.stack([x.flip(-1) * 0 + 1], 1), generator_shape=(1,))
        >>> act.num_generators
        1
    """

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        generator_shape: Sequence[int],
        transform_fn: Optional[Callable[[Tensor, Tensor, float], Tensor]] = None,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"Expected `fn` to be callable returning (B, m, *x.shape[1:]), got {fn!r}.")
        shape = tuple(int(s) for s in generator_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(
                f"Expected `generator_shape` to be a non-empty tuple of positive ints, got {generator_shape!r}."
            )
        self.fn = fn
        self.transform_fn = transform_fn
        self.generator_shape = shape

    @override
    def validate_input(self, x: Tensor) -> None:
        _check_floating(x, "of shape (B, ...)")
        if x.ndim < 1 or x.shape[0] == 0:
            raise InputError(f"Expected a batched input of shape (B, ...) with B >= 1, got shape {tuple(x.shape)}.")

    @override
    def tangents(self, x: Tensor) -> Tensor:
        t = self.fn(x)
        expected = (x.shape[0], self.num_generators, *x.shape[1:])
        if not isinstance(t, Tensor) or tuple(t.shape) != expected:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise InputError(f"Expected `fn(x)` to return tangents of shape {expected}, got {got}.")
        return t.to(x.dtype)  # a float32 fn on float64 inputs: the rows are formed in the input's dtype

    @override
    def transform(self, x: Tensor, generator: Tensor, t: float = 1.0) -> Tensor:
        if self.transform_fn is None:
            raise NotImplementedError("This TangentAction was built without `transform_fn`.")
        return self.transform_fn(x, generator, t)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"TangentAction(fn={name}, generator_shape={self.generator_shape})"
