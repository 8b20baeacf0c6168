"""Finite transformations: how much does a network's output change under a flip, a 90° turn, a permutation?

Discrete symmetries are in no Lie algebra, so the polarization matrix cannot see them; they are
measured directly. For a map ``g`` of a batch of inputs,

    transform_error(g) = E ||F(g x) - F(x)||^2 / E ||F(x) - E F(x)||^2

over the analysed samples (outputs flattened, means over samples): 0 for an exact invariance,
about 2 for a transformation unrelated to the output (``F(g x)`` then behaves like an independent
draw of ``F``). With an output map ``g_out`` (give the pair ``(g, g_out)``) it measures
equivariance, ``E ||F(g x) - g_out(F(x))||^2`` over the same denominator.

The functional core: :func:`transform_update` turns a batch into sums (per jackknife group, so
that they add across batches and processes), :func:`transform_errors` turns the sums into errors
with delete-a-group jackknife standard errors. The ready-made maps below act on images
``(..., H, W)`` and on vectors ``(B, c * dim)`` or ``(B, c, dim)``.

Example:
    >>> import torch
    >>> from liegg_lightning import transforms
    >>> x = torch.randn(64, 1, 8, 8)
    >>> model = lambda x: (x + x.flip(-1)).flatten(1)
    >>> sums = transforms.transform_update(model, x, {"hflip": transforms.hflip, "vflip": transforms.vflip})
    >>> errors = transforms.transform_errors(sums, ["hflip", "vflip"])
    >>> round(errors["hflip"][0], 6), errors["vflip"][0] > 1
    (0.0, True)
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from liegg_lightning.functional.polarization import model_output
from liegg_lightning.functional.symmetry import _sample_groups

__all__ = [
    "TransformLike",
    "TransformSums",
    "check_transforms",
    "flip_signs",
    "hflip",
    "image_transforms",
    "permute_axes",
    "permute_components",
    "rot90",
    "transform_errors",
    "transform_update",
    "vflip",
]

InputMap = Callable[[Tensor], Tensor]
#: A map of a batch of inputs (invariance), or a pair (input map, output map) (equivariance).
TransformLike = Union[InputMap, Tuple[InputMap, InputMap]]


class TransformSums(NamedTuple):
    """What a batch adds: per jackknife group, sums over the samples kept."""

    moments: Tensor  #: (G, 2 + K) float64: [count, sum ||F||^2, sum F (K entries)]
    errors: Tensor  #: (T, G) float64: sum ||F(g x) - F(x)||^2 per transformation


CheckedTransforms = Dict[str, Tuple[InputMap, Optional[InputMap]]]


def check_transforms(transforms: Optional[Mapping[str, TransformLike]]) -> CheckedTransforms:
    """``name -> (input map, output map or None)``, or a ``ValueError`` naming what was expected."""
    if transforms is None:
        return {}
    if not isinstance(transforms, Mapping):
        raise ValueError(
            f"Expected `known_transforms` as a dict name -> callable (or (input map, output map)), "
            f"got {type(transforms).__name__}."
        )
    out: Dict[str, Tuple[InputMap, Optional[InputMap]]] = {}
    for name, value in transforms.items():
        pair = tuple(value) if isinstance(value, (tuple, list)) else (value, None)
        if not isinstance(name, str) or not name or len(pair) != 2 or not callable(pair[0]) or not (
                pair[1] is None or callable(pair[1])):
            raise ValueError(
                f"Expected `known_transforms[{name!r}]` to be a callable on a batch of inputs or a pair "
                f"(input map, output map) under a non-empty name, got {value!r}."
            )
        out[name] = (pair[0], pair[1])
    return out


def _flat(out: Tensor) -> Tensor:
    return out.detach().reshape(out.shape[0], -1).to(torch.float64)


def transform_update(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    transforms: Mapping[str, TransformLike],
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    num_groups: int = 1,
) -> TransformSums:
    """The sums a batch adds, from ``1 + len(transforms)`` forward passes without gradients.

    A sample counts when its output and its output after every transformation are finite. Its
    jackknife group is a hash of its input's bits (as for the metric's Gram matrices), so the
    sums do not depend on batching or on the number of processes.

    Args:
        model: The network (any callable from a batch of inputs to a batch-first output).
        inputs: A batch of inputs.
        transforms: ``name -> map`` or ``name -> (input map, output map)``.
        output_transform: Applied to the model output first (as the metric does).
        num_groups: Jackknife groups (at least 1).
    """
    checked = check_transforms(transforms)
    groups = max(int(num_groups), 1)
    with torch.no_grad():
        base = model_output(model, inputs, output_transform)
        plain = _flat(base)
        moved = []
        for name, (g_in, g_out) in checked.items():
            after = _flat(model_output(model, g_in(inputs), output_transform))
            target = plain if g_out is None else _flat(g_out(base))
            if after.shape != plain.shape or target.shape != plain.shape:
                raise ValueError(
                    f"Expected the output after the transformation {name!r} to have the shape of the output, "
                    f"{tuple(plain.shape)}, got {tuple(after.shape)}."
                )
            moved.append((after - target.to(after.device)).pow(2).sum(1))
    diffs = torch.stack(moved) if moved else plain.new_zeros(0, plain.shape[0])
    keep = torch.isfinite(plain).all(1) & torch.isfinite(diffs).all(0)
    ids = _sample_groups(inputs, groups).to(plain.device)
    one_hot = torch.nn.functional.one_hot(ids, groups).to(torch.float64) * keep[:, None]  # (B, G)
    plain = torch.where(keep[:, None], plain, 0.0)
    diffs = torch.where(keep[None, :], diffs, 0.0)
    per_sample = torch.cat([torch.ones_like(plain[:, :1]), plain.pow(2).sum(1, keepdim=True), plain], dim=1)
    return TransformSums(one_hot.T @ per_sample, diffs @ one_hot)


def _ratio(moments: Tensor, errors: Tensor) -> Tensor:
    """``E d / (E ||F||^2 - ||E F||^2)`` from summed moments ``(2 + K,)`` and error sums ``(T,)``."""
    n = moments[0]
    mean = moments[2:] / n
    spread = moments[1] / n - mean @ mean
    return (errors / n) / spread


def transform_errors(sums: TransformSums, names: Sequence[str]) -> Dict[str, Tuple[float, float]]:
    """``name -> (error, jackknife standard error)`` from accumulated sums; NaN where undefined.

    The error is NaN without samples or when the outputs do not vary; the standard error is NaN
    with fewer than two non-empty groups.
    """
    moments, errors = sums.moments.detach().to("cpu", torch.float64), sums.errors.detach().to("cpu", torch.float64)
    nan = float("nan")
    if not names or moments.numel() == 0 or float(moments[:, 0].sum()) == 0:
        return {name: (nan, nan) for name in names}
    with torch.no_grad(), torch.inference_mode(False):
        total = _ratio(moments.sum(0), errors.sum(1))
        filled = [g for g in range(moments.shape[0]) if float(moments[g, 0]) > 0]
        stderr = torch.full_like(total, nan)
        if len(filled) >= 2:
            left_out = torch.stack([_ratio(moments.sum(0) - moments[g], errors.sum(1) - errors[:, g]) for g in filled])
            k = len(filled)
            stderr = ((k - 1) / k * (left_out - left_out.mean(0)).pow(2).sum(0)).sqrt()
    return {name: (_finite_or_nan(total[i]), _finite_or_nan(stderr[i])) for i, name in enumerate(names)}


def _finite_or_nan(value: Tensor) -> float:
    v = float(value)
    return v if math.isfinite(v) else float("nan")


# ------------------------------------------------------------------------------------ ready-made maps


def hflip(x: Tensor) -> Tensor:
    """Images ``(..., H, W)`` mirrored left-right (along the width)."""
    return x.flip(-1)


def vflip(x: Tensor) -> Tensor:
    """Images ``(..., H, W)`` mirrored top-bottom (along the height)."""
    return x.flip(-2)


def rot90(x: Tensor) -> Tensor:
    """Square images ``(..., H, H)`` turned by 90° (a quarter turn counter-clockwise as displayed)."""
    if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"Expected square images (..., H, H) for rot90, got shape {tuple(x.shape)}.")
    return torch.rot90(x, 1, dims=(-2, -1))


def image_transforms() -> Dict[str, InputMap]:
    """The ready-made image maps by name: ``hflip``, ``vflip``, ``rot90``."""
    return {"hflip": hflip, "vflip": vflip, "rot90": rot90}


def _vectors(x: Tensor, dim: int) -> Tensor:
    if x.ndim not in (2, 3) or x.shape[-1] % dim != 0:
        raise ValueError(f"Expected vectors of shape (B, c*{dim}) or (B, c, {dim}), got shape {tuple(x.shape)}.")
    return x.reshape(x.shape[0], -1, dim)


def _check_perm(perm: Sequence[int], size: int, what: str) -> List[int]:
    p = [int(i) for i in perm]
    if sorted(p) != list(range(size)):
        raise ValueError(f"Expected `perm` to be a permutation of 0..{size - 1} ({what}), got {list(perm)!r}.")
    return p


def permute_axes(perm: Sequence[int]) -> InputMap:
    """The map permuting the coordinates of every vector: component ``c`` becomes ``x_c[perm]``.

    For inputs ``(B, c * dim)`` or ``(B, c, dim)`` with ``dim = len(perm)``.
    """
    p = _check_perm(perm, len(perm), "the coordinates of each vector")

    def permuted(x: Tensor) -> Tensor:
        return _vectors(x, len(p))[..., p].reshape(x.shape)

    return permuted


def permute_components(perm: Sequence[int], dim: int) -> InputMap:
    """The map reordering the ``c = len(perm)`` vectors of each sample (inputs ``(B, c * dim)`` or ``(B, c, dim)``)."""
    p = _check_perm(perm, len(perm), "the vectors of a sample")

    def permuted(x: Tensor) -> Tensor:
        xs = _vectors(x, dim)
        if xs.shape[1] != len(p):
            raise ValueError(f"Expected {len(p)} vectors of dimension {dim} per sample, got shape {tuple(x.shape)}.")
        return xs[:, p].reshape(x.shape)

    return permuted


def flip_signs(axes: Sequence[int], dim: int) -> InputMap:
    """The map negating coordinates ``axes`` of every vector (inputs ``(B, c * dim)`` or ``(B, c, dim)``)."""
    signs = torch.ones(dim, dtype=torch.float64)
    for a in axes:
        if not 0 <= int(a) < dim:
            raise ValueError(f"Expected coordinates in 0..{dim - 1} to flip, got {list(axes)!r}.")
        signs[int(a)] = -1.0

    def flipped(x: Tensor) -> Tensor:
        return (_vectors(x, dim) * signs.to(x.device, x.dtype)).reshape(x.shape)

    return flipped
