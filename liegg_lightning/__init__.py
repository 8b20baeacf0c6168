"""liegg_lightning: which symmetries has a network learned, and how invariant is it to them?

LieGG (Moskalev et al., NeurIPS 2022) as a PyTorch Lightning callback, a TorchMetrics metric and a
post-hoc ``analyze`` function.
"""

from liegg_lightning import algebras
from liegg_lightning.actions import GroupAction, ImageAction, TangentAction, VectorAction
from liegg_lightning.analyze import analyze
from liegg_lightning.callback import LieGGCallback
from liegg_lightning.metric import LieGGMetric
from liegg_lightning.report import SymmetryReport

__version__ = "0.1.0"

__all__ = [
    "GroupAction",
    "ImageAction",
    "LieGGCallback",
    "LieGGMetric",
    "SymmetryReport",
    "TangentAction",
    "VectorAction",
    "algebras",
    "analyze",
]
