"""The callback's pictures: the orbit curves, computed on the loop's thread, and the job that draws and sends."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Dict, Optional

import lightning.pytorch as pl

from liegg_lightning._history import shown_report
from liegg_lightning._loggers import log_pictures
from liegg_lightning._state import preserved_state
from liegg_lightning._worker import Worker
from liegg_lightning.functional.layers import MODEL_OUTPUT
from liegg_lightning.rendering import orbit_outputs
from liegg_lightning.report import SymmetryReport

if TYPE_CHECKING:
    from liegg_lightning.callback import LieGGCallback

__all__ = ["logged_step", "queue_pictures"]


def logged_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs an epoch's values at, so that pictures and scalars line up."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def _orbit(callback: LieGGCallback, pl_module: pl.LightningModule, report: SymmetryReport) -> Optional[Dict[str, Any]]:
    """The model's outputs along the orbit of the example input; the model runs here, on the loop's thread."""
    example = callback._example_input
    if example is None or len(report.generators) < 2:
        return None
    try:
        with callback.planner.ledger.charged(), preserved_state(pl_module, callback._cuda_devices):
            return orbit_outputs(callback._forward or pl_module, callback.action, example, report.generators[0],
                                 report.generators[-1], output_transform=callback.metric.output_transform,
                                 device=pl_module.device)
    except Exception:  # no finite transformation, or an output that is not a tensor: no curves
        return None


def queue_pictures(callback: LieGGCallback, trainer: pl.Trainer, pl_module: pl.LightningModule,
                   reports: Dict[str, SymmetryReport], must_draw: bool) -> None:
    """Draw the latest analysis now, in the background, or at the run's end when the budget has no room."""
    report = shown_report(reports)
    labels = callback.labels
    job = functools.partial(
        log_pictures, list(trainer.loggers), logged_step(trainer), report, callback.action,
        spectra=list(callback.spectra), labels=labels, example_input=callback._example_input,
        orbit=_orbit(callback, pl_module, report), num_generators=callback.log_generators, prefix=callback.prefix,
        layers=reports if len(reports) > 1 or MODEL_OUTPUT not in reports else None, caption=labels[-1],
    )
    ledger = callback.planner.ledger
    if not must_draw and not callback.planner.may_draw():
        callback._worker.defer(job)  # drawn at the run's end unless a later one is drawn first
    elif callback.background_drawing:
        callback._worker.draw(job, ledger.add_drawing)
    else:  # in the loop's thread, timed as a drawing so that the next one is priced by it
        Worker.timed(job, ledger.add_drawing)()
