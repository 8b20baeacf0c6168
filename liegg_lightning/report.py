"""``SymmetryReport``: what a network has learned to be invariant to, and how much."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["SymmetryReport"]

_TENSOR_FIELDS = ("singular_values", "variances", "normalized_variances", "generators", "biases")


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
        nullity: Estimated number of learned symmetries.
        biases: ``(m,)`` distance of each generator to the reference algebra, or ``None``.
        symmetry_bias: ``biases[0]`` or ``None``.
        subspace_bias: Sine of the largest principal angle between the ``k`` most invariant
            generators and the ``k``-dimensional reference algebra, or ``None``.
        closure_error: How far the ``nullity`` leading generators are from closing under the
            commutator (0 for a Lie subalgebra); ``None`` for non-square generators.
        known_variances: ``name -> vec(h)^T G vec(h) / (N ||h||^2)``.
        num_samples: Input samples behind the spectrum (after dropping non-finite ones).
        num_rows: Rows of ``E``.
        num_skipped: Samples dropped because their rows were not finite.

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

    @property
    def generator_shape(self) -> Tuple[int, ...]:
        """Shape of one generator."""
        return tuple(self.generators.shape[1:])

    def leading(self, k: int) -> Tensor:
        """The ``k`` most invariant generators."""
        return self.generators[:k]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-safe dict: tensors become nested lists of floats."""
        out: Dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                value = value.tolist()
            elif isinstance(value, dict):
                value = {str(k): float(v) for k, v in value.items()}
            out[name] = value
        out["generator_shape"] = list(self.generator_shape)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SymmetryReport:
        """Inverse of :meth:`to_dict`."""
        kwargs: Dict[str, Any] = {}
        shape = tuple(data.get("generator_shape", ()))
        for name in cls.__dataclass_fields__:
            if name not in data:
                continue
            value = data[name]
            if name in _TENSOR_FIELDS and value is not None:
                value = torch.tensor(value, dtype=torch.float64)
                if name == "generators" and value.numel() == 0:
                    value = value.reshape(0, *shape)
            kwargs[name] = value
        kwargs["known_variances"] = dict(kwargs.get("known_variances") or {})
        return cls(**kwargs)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the report as JSON, atomically: a reader never sees a half-written file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_dict(), fh)
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
        """Read a report written by :meth:`save`."""
        with open(path) as fh:
            return cls.from_dict(json.load(fh))

    def summary(self) -> Dict[str, float]:
        """The scalar measures as a flat dict (what the callback logs)."""
        out: Dict[str, float] = {
            "symmetry_variance": float(self.symmetry_variance),
            "normalized_variance": float(self.normalized_variances[0]) if len(self.normalized_variances) else 0.0,
            "nullity": float(self.nullity),
        }
        if self.closure_error is not None:
            out["closure_error"] = float(self.closure_error)
        if self.symmetry_bias is not None:
            out["symmetry_bias"] = float(self.symmetry_bias)
        if self.subspace_bias is not None:
            out["subspace_bias"] = float(self.subspace_bias)
        for name, value in self.known_variances.items():
            out[f"variance/{name}"] = float(value)
        return out

    def __repr__(self) -> str:
        parts = [f"m={len(self.variances)}", f"nullity={self.nullity}",
                 f"symmetry_variance={self.symmetry_variance:.3e}"]
        if self.symmetry_bias is not None:
            parts.append(f"symmetry_bias={self.symmetry_bias:.3e}")
        if self.subspace_bias is not None:
            parts.append(f"subspace_bias={self.subspace_bias:.3e}")
        parts.append(f"num_samples={self.num_samples}")
        return f"SymmetryReport({', '.join(parts)})"
