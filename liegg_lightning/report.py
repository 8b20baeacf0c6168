"""``SymmetryReport``: what a network has learned to be invariant to, and how much."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from liegg_lightning._checks import is_int

__all__ = ["SymmetryReport"]

_TENSOR_FIELDS = (
    "singular_values",
    "variances",
    "normalized_variances",
    "generators",
    "biases",
    "variance_stderr",
    "relative_variances",
    "relative_generators",
)
#: Fields every report file must have (the rest have defaults, so older files still load).
_REQUIRED_FIELDS = (
    "singular_values", "variances", "normalized_variances", "generators", "symmetry_variance", "nullity"
)
#: Fields holding one number, or ``null`` where it is undefined (or, for the biases, absent).
_FLOAT_FIELDS = ("symmetry_variance", "symmetry_bias", "subspace_bias", "closure_error", "symmetry_variance_stderr",
                 "border_share")
#: ``(m,)`` fields, one value per generator.
_PER_GENERATOR_FIELDS = ("singular_values", "variances", "normalized_variances", "biases", "variance_stderr",
                         "relative_variances")


def _json_safe(value: Any) -> Any:
    """Nested lists and floats with NaN (and infinities) as ``None``: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _nan_for_none(value: Any) -> Any:
    """Inverse of :func:`_json_safe` inside a nested list: ``None`` becomes NaN."""
    if value is None:
        return float("nan")
    if isinstance(value, list):
        return [_nan_for_none(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    """A JSON number (the legacy ``NaN`` token included), never a bool, a string or a container."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_field(name: str, value: Any) -> Any:
    """One field of a report file as the report holds it (tensors, NaN for nulls inside them)."""
    if name in _TENSOR_FIELDS and value is not None:
        try:
            if not isinstance(value, list):
                raise TypeError(f"got {type(value).__name__}")
            return torch.tensor(_nan_for_none(value), dtype=torch.float64)
        except (TypeError, ValueError, RecursionError) as err:
            raise ValueError(f"Expected `{name}` to be a (nested) list of numbers: {err}") from None
    if name in ("known_variances", "transform_errors", "transform_errors_stderr"):
        if value is not None and not (isinstance(value, dict) and all(
                v is None or _is_number(v) for v in value.values())):
            raise ValueError(f"Expected `{name}` to be an object of name -> number, got {value!r:.80}.")
        return {str(k): float("nan") if v is None else float(v) for k, v in dict(value or {}).items()}
    if name in ("num_samples", "num_rows", "num_skipped") and not (is_int(value) and value >= 0):
        raise ValueError(f"Expected `{name}` to be an int >= 0, got {value!r:.80}.")
    if name in _FLOAT_FIELDS and value is not None and not _is_number(value):
        raise ValueError(f"Expected `{name}` to be a number or null, got {value!r:.80}.")
    return float(value) if name in _FLOAT_FIELDS and value is not None else value


def _check_spectrum(kwargs: Dict[str, Any]) -> int:
    """``variances`` one list of ``m`` numbers and ``0 <= nullity <= m``; returns ``m``."""
    variances = kwargs["variances"]
    if variances.ndim != 1:
        raise ValueError(f"Expected `variances` to be a list of numbers, got shape {tuple(variances.shape)}.")
    m = int(variances.numel())
    if not 0 <= kwargs["nullity"] <= m:
        raise ValueError(f"Expected `nullity` between 0 and m = {m} (the length of `variances`), "
                         f"got {kwargs['nullity']}.")
    return m


def _check_shapes(kwargs: Dict[str, Any], shape_data: Any) -> None:
    """Per-generator fields of length ``m`` and generators of ``generator_shape``; an empty spectrum reshaped."""
    m = _check_spectrum(kwargs)
    for name in _PER_GENERATOR_FIELDS:
        value = kwargs.get(name)
        if isinstance(value, Tensor) and tuple(value.shape) != (m,):
            raise ValueError(f"Expected `{name}` of shape ({m},) like `variances`, got {tuple(value.shape)}.")
    shape: Optional[Tuple[int, ...]] = None
    if shape_data is not None:
        if not isinstance(shape_data, list) or not all(isinstance(s, int) and s > 0 for s in shape_data):
            raise ValueError(f"Expected `generator_shape` to be a list of positive ints, got {shape_data!r}.")
        shape = tuple(shape_data)
    for name in ("generators", "relative_generators"):
        value = kwargs.get(name)
        if not isinstance(value, Tensor):
            continue
        if value.numel() == 0 and shape is not None:
            value = kwargs[name] = value.reshape(0, *shape)
        if value.ndim < 1 or value.shape[0] != m or (shape is not None and tuple(value.shape[1:]) != shape):
            expected = f"({m}, {', '.join(map(str, shape))})" if shape is not None else f"({m}, ...)"
            raise ValueError(
                f"Expected `{name}` of shape {expected} (m = len(variances), generator_shape), "
                f"got {tuple(value.shape)}."
            )


def _undefined_as_nan(kwargs: Dict[str, Any]) -> None:
    """A null for an optional float: undefined (NaN) where the measure applies, absent (None) where not."""
    for name in ("symmetry_variance", "symmetry_variance_stderr", "border_share"):
        if name in kwargs and kwargs[name] is None:
            kwargs[name] = float("nan")
    has_reference = isinstance(kwargs.get("biases"), Tensor)
    for name in ("symmetry_bias", "subspace_bias"):
        if name in kwargs and kwargs[name] is None and has_reference:
            kwargs[name] = float("nan")
    gens = kwargs["generators"]
    square = gens.ndim == 3 and gens.shape[1] == gens.shape[2]
    if "closure_error" in kwargs and kwargs["closure_error"] is None and square:
        kwargs["closure_error"] = float("nan")


@dataclass
class SymmetryReport:
    """The spectrum of a network polarization matrix and the measures read from it.

    All tensors are float64 on the CPU, most invariant generator first.

    Attributes:
        singular_values: ``(m,)`` ascending singular values ``sigma_i`` of ``E``.
        variances: ``(m,)`` symmetry variances ``sigma_i**2 / N``; ``variances[0]`` is the paper's.
        normalized_variances: ``(m,)`` ``lambda_i / mean(lambda)``, scale-free.
        generators: ``(m, *generator_shape)`` generators of unit Frobenius norm.
        symmetry_variance: ``variances[0]``.
        nullity: Estimated number of learned symmetries: the generators the spectrum separates from
            the rest by a gap. For a vector-field library it counts fields, not the symmetries of the
            system (products of a symmetry with conserved quantities blur the gap), and is 0 when no
            gap passes the test even if the leading field is right.
        biases: ``(m,)`` distance of each generator to the reference algebra, or ``None``.
        symmetry_bias: ``biases[0]`` or ``None``.
        subspace_bias: Sine of the largest principal angle between the ``k`` most invariant
            generators and the ``k``-dimensional reference algebra, or ``None``.
        closure_error: How far the ``nullity`` leading generators are from closing under the
            commutator (0 for a Lie subalgebra); NaN (undefined) with fewer than two symmetries;
            ``None`` for non-square generators. For vector fields: under their Lie bracket, the
            terms beyond the library's degree counted as error.
        known_variances: ``name -> vec(h)^T G vec(h) / (N ||h||^2)``.
        transform_errors: ``name -> E||F(g x) - F(x)||^2 / E||F(x) - E F(x)||^2`` for each of the
            metric's ``known_transforms`` (0: invariant; about 2: unrelated to the output).
        transform_errors_stderr: ``name ->`` the jackknife standard error of ``transform_errors[name]``.
        num_samples: Input samples behind the spectrum (after dropping non-finite ones).
        num_rows: Rows of ``E``.
        num_skipped: Samples dropped because their rows were not finite.
        variance_stderr: ``(m,)`` delete-a-group jackknife standard errors of ``variances``, same
            order; NaN where there were too few groups, ``None`` in reports from before they existed.
        symmetry_variance_stderr: ``variance_stderr[0]``: the standard error of ``symmetry_variance``.
        relative_variances: ``(m,)`` ascending generalised eigenvalues of ``G v = lambda T v``, ``T``
            the Gram matrix of the tangents: squared output change per squared input motion along
            each generator, comparable across generators and actions. NaN (at the end) for
            generators that move no input. ``None`` when the inputs were not available.
        relative_generators: ``(m, *generator_shape)`` their generators, unit Frobenius norm.
        border_share: For a feature map analysed with an ``ImageAction`` output action (one row per
            component), the share in ``[0, 1]`` of the whole map's variance along the most
            invariant generator that comes from the border ring: the pixels closer than
            ``max(border, 1)`` to an edge (the left-out ring, or with ``border=0`` the outer ring
            of one-sided differences). NaN where it has no meaning (no image output, projected
            outputs, no variance at all).

    Undefined values are NaN, never a number that reads as a result: ``closure_error`` with fewer
    than two symmetries, the biases and normalised variances when the outputs do not depend on the
    input. In JSON they are written as ``null``.

    Example:
        >>> import torch
        >>> from liegg_lightning import VectorAction, analyze
        >>> report = analyze(lambda x: (x ** 2).sum(1, keepdim=True), torch.randn(64, 3), VectorAction(dim=3))
        >>> report.nullity, report.generator_shape
        (3, (3, 3))
    """

    singular_values: Tensor
    variances: Tensor
    normalized_variances: Tensor
    generators: Tensor
    symmetry_variance: float
    nullity: int
    biases: Optional[Tensor] = None
    symmetry_bias: Optional[float] = None
    subspace_bias: Optional[float] = None
    closure_error: Optional[float] = None
    known_variances: Dict[str, float] = field(default_factory=dict)
    num_samples: int = 0
    num_rows: int = 0
    num_skipped: int = 0
    variance_stderr: Optional[Tensor] = None
    symmetry_variance_stderr: float = float("nan")
    relative_variances: Optional[Tensor] = None
    relative_generators: Optional[Tensor] = None
    border_share: float = float("nan")
    transform_errors: Dict[str, float] = field(default_factory=dict)
    transform_errors_stderr: Dict[str, float] = field(default_factory=dict)

    @property
    def generator_shape(self) -> Tuple[int, ...]:
        """Shape of one generator."""
        return tuple(self.generators.shape[1:])

    def leading(self, k: int) -> Tensor:
        """The ``k`` most invariant generators."""
        return self.generators[:k]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-safe dict: tensors become nested lists of floats, NaN and infinities become ``None``."""
        out: Dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                value = _json_safe(value.tolist())
            elif isinstance(value, dict):
                value = {str(k): _json_safe(float(v)) for k, v in value.items()}
            elif isinstance(value, float):
                value = _json_safe(value)
            out[name] = value
        out["generator_shape"] = list(self.generator_shape)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SymmetryReport:
        """Inverse of :meth:`to_dict`; also reads files with the legacy ``NaN`` token and without newer fields.

        Raises:
            ValueError: Naming the field, when ``data`` is not a mapping, lacks a required field,
                has a field of the wrong type (a nullity that is not an int in ``[0, m]``, a
                measure that is not a number or null, counts below 0, ``known_variances`` that is
                not an object of numbers), or tensors whose shapes disagree (with each other or
                with ``generator_shape``).
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"Expected a SymmetryReport as a JSON object (a dict of fields), got {type(data).__name__}."
            )
        missing = [name for name in _REQUIRED_FIELDS if name not in data or data[name] is None]
        if missing:
            raise ValueError(f"Not a SymmetryReport: missing required field(s) {', '.join(missing)}.")
        if not is_int(data["nullity"]):
            raise ValueError(f"Expected `nullity` to be an int, got {data['nullity']!r}.")
        kwargs = {name: _read_field(name, data[name]) for name in cls.__dataclass_fields__ if name in data}
        _check_shapes(kwargs, data.get("generator_shape"))
        _undefined_as_nan(kwargs)
        return cls(**kwargs)

    def save(self, path: Union[str, os.PathLike], durable: bool = True) -> None:
        """Write the report as JSON, atomically: a reader never sees a half-written file.

        Args:
            path: Where to write.
            durable: Also flush the file to the disk before it takes its name (``fsync``), so it
                survives a power loss; the callback's reports during training skip that wait.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                # one string, one write: json.dump would encode and write in many small chunks (benchmarks/)
                fh.write(json.dumps(self.to_dict(), allow_nan=False))
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> SymmetryReport:
        """Read a report written by :meth:`save` (or by an older version).

        Raises:
            ValueError: When the file is not JSON or not a report (see :meth:`from_dict`).
        """
        with open(path) as fh:
            try:
                data = json.load(fh)  # reads the legacy NaN token too
            except (json.JSONDecodeError, RecursionError) as err:  # RecursionError: nesting too deep to read
                raise ValueError(f"{path} is not a JSON SymmetryReport: {err!r:.200}") from None
        return cls.from_dict(data)

    def summary(self) -> Dict[str, float]:
        """The scalar measures as a flat dict (what the callback logs).

        Undefined (NaN) values are left out, never logged as numbers: ``closure_error`` with fewer
        than two symmetries, ``symmetry_variance_stderr`` without jackknife groups, the biases and
        ``normalized_variance`` when the outputs do not depend on the input.

        Keys: ``symmetry_variance``, ``symmetry_variance_stderr``, ``normalized_variance``,
        ``relative_variance`` (the smallest relative variance), ``nullity``, ``closure_error``,
        ``symmetry_bias``, ``subspace_bias``, ``border_share`` (feature maps), ``variance/<name>``
        for each known generator and ``transform/<name>`` for each known transformation.
        """
        values: List[Tuple[str, Optional[float]]] = [
            ("symmetry_variance", float(self.symmetry_variance)),
            ("symmetry_variance_stderr", self.symmetry_variance_stderr),
            ("normalized_variance", float(self.normalized_variances[0]) if len(self.normalized_variances) else None),
            ("relative_variance", float(self.relative_variances[0]) if self.relative_variances is not None
             and len(self.relative_variances) else None),
            ("nullity", float(self.nullity)),
            ("closure_error", self.closure_error),
            ("symmetry_bias", self.symmetry_bias),
            ("subspace_bias", self.subspace_bias),
            ("border_share", self.border_share),
        ]
        values += [(f"variance/{name}", value) for name, value in self.known_variances.items()]
        values += [(f"transform/{name}", value) for name, value in self.transform_errors.items()]
        return {name: float(value) for name, value in values if value is not None and not math.isnan(float(value))}

    def __repr__(self) -> str:
        parts = [f"m={self.variances.numel()}", f"nullity={self.nullity}",
                 f"symmetry_variance={self.symmetry_variance:.3e}"]
        if self.symmetry_bias is not None:
            parts.append(f"symmetry_bias={self.symmetry_bias:.3e}")
        if self.subspace_bias is not None:
            parts.append(f"subspace_bias={self.subspace_bias:.3e}")
        parts.append(f"num_samples={self.num_samples}")
        return f"SymmetryReport({', '.join(parts)})"


def with_generator_shape(result: Any, generator_shape: Tuple[int, ...]) -> Any:
    """``result`` (a report, or a mapping of reports) with every per-generator field 1-d again.

    TorchMetrics squeezes each one-element tensor a metric's ``compute`` returns: with a
    1-generator algebra (``SignalAction()``) every ``(m,)`` field would come back 0-d and the
    ``(m, *generator_shape)`` generators lose their axes. Reshaping restores them exactly.
    """
    if isinstance(result, Mapping):
        return {name: with_generator_shape(report, generator_shape) for name, report in result.items()}
    if not isinstance(result, SymmetryReport):
        return result
    m = int(result.variances.numel())
    for name in _PER_GENERATOR_FIELDS:
        value = getattr(result, name)
        if isinstance(value, Tensor):
            setattr(result, name, value.reshape(m))
    for name in ("generators", "relative_generators"):
        value = getattr(result, name)
        if isinstance(value, Tensor):
            setattr(result, name, value.reshape(m, *generator_shape))
    return result
