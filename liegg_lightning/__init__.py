"""liegg_lightning: which symmetries has a network learned, and how invariant is it to them?

LieGG (Moskalev et al., NeurIPS 2022) as a PyTorch Lightning callback, a TorchMetrics metric and a
post-hoc ``analyze`` function. ``LieGGCallback`` is imported on first use, so ``analyze`` and
``LieGGMetric`` users do not pay for importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from liegg_lightning import algebras, transforms
from liegg_lightning.actions import (
    GroupAction,
    ImageAction,
    SignalAction,
    TangentAction,
    VectorAction,
    VolumeAction,
)
from liegg_lightning.analyze import analyze
from liegg_lightning.callback._state import in_analysis
from liegg_lightning.metric import LieGGMetric
from liegg_lightning.report import SymmetryReport
from liegg_lightning.vector_fields import VectorFieldAction

if TYPE_CHECKING:  # pragma: no cover
    from liegg_lightning.callback.callback import LieGGCallback

__version__ = "0.2.0"

__all__ = [
    "GroupAction",
    "ImageAction",
    "LieGGCallback",
    "LieGGMetric",
    "SignalAction",
    "SymmetryReport",
    "TangentAction",
    "VectorAction",
    "VectorFieldAction",
    "VolumeAction",
    "algebras",
    "analyze",
    "in_analysis",
    "transforms",
]


def __getattr__(name: str) -> Any:
    if name == "LieGGCallback":
        from liegg_lightning.callback.callback import LieGGCallback

        return LieGGCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
