"""The callback's jobs for the worker: pictures (the orbit curves computed on the loop's thread) and report files.

Everything here takes plain values (the forward, the example input, the reports, the history):
nothing reads the callback.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn

from liegg_lightning.actions import GroupAction
from liegg_lightning.callback._history import History, shown_report
from liegg_lightning.callback._loggers import log_pictures, save_report
from liegg_lightning.callback._state import preserved_state
from liegg_lightning.callback._worker import Worker
from liegg_lightning.functional.layers import MODEL_OUTPUT
from liegg_lightning.pictures.rendering import orbit_outputs
from liegg_lightning.report import SymmetryReport

__all__ = ["orbit_on_every_rank", "picture_job", "queue_pictures", "queue_report_files"]


def orbit_on_every_rank(
    trainer: pl.Trainer,
    module: nn.Module,
    forward: Callable[[Tensor], Any],
    action: GroupAction,
    example: Optional[Tensor],
    report: SymmetryReport,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    cuda_devices: Sequence[int] = (),
    device: Optional[torch.device] = None,
) -> Optional[Dict[str, Any]]:
    """The model's outputs along the orbit of ``example``, run by every process or by none.

    A model whose forward takes part in a collective (FSDP, ZeRO-3, ``SyncBatchNorm``) would hang
    if one process ran a pass the others skip, so the processes agree first (one all-reduce,
    reached by every process) that each has an example input; the result is kept on rank zero.
    """
    if len(report.generators) < 2:  # the same on every process: the report is solved from synced states
        return None
    if trainer.strategy.reduce_boolean_decision(example is None, all=False) or example is None:
        return None
    try:
        with preserved_state(module, cuda_devices):
            return orbit_outputs(forward, action, example, report.generators[0], report.generators[-1],
                                 output_transform=output_transform, device=device)
    except Exception:  # no finite transformation, or an output that is not a tensor: no curves
        return None


def picture_job(
    loggers: List[Logger],
    step: int,
    reports: Dict[str, SymmetryReport],
    action: GroupAction,
    history: History,
    example: Optional[Tensor],
    orbit: Optional[Dict[str, Any]],
    num_generators: int,
    prefix: str,
) -> Callable[[], Any]:
    """The drawing of one analysis as a job for the drawing thread: it holds the values it draws.

    Args:
        loggers: Where the pictures go.
        step: The step they are logged at.
        reports: This analysis' reports by layer (the model's output under its own key).
        action: The input's group action.
        history: The analyses so far (their spectra and labels are drawn).
        example: The orbit picture's input.
        orbit: Its outputs along the orbits, from :func:`orbit_on_every_rank`.
        num_generators: How many leading generators to draw.
        prefix: Prefix of every tag.
    """
    labels = list(history.labels)
    return functools.partial(
        log_pictures, loggers, step, shown_report(reports), action, spectra=list(history.spectra),
        labels=labels, example_input=example, orbit=orbit, num_generators=num_generators, prefix=prefix,
        layers=reports if len(reports) > 1 or MODEL_OUTPUT not in reports else None, caption=labels[-1],
    )


def queue_pictures(worker: Worker, job: Callable[[], Any], on_drawn: Callable[[float], None], *, now: bool,
                   background: bool) -> None:
    """Draw ``job`` now (in the background or on this thread), or keep it for the run's end."""
    if not now:
        worker.defer(job)  # drawn at the run's end unless a later one is drawn first
    elif background:
        worker.draw(job, on_drawn)
    else:  # in the loop's thread, timed as a drawing so that the next one is priced by it
        Worker.timed(job, on_drawn)()


def queue_report_files(worker: Worker, loggers: List[Logger], reports: Dict[str, SymmetryReport],
                       names: Dict[str, str], on_saved: Callable[[float], None]) -> None:
    """Write each layer's report into every logger's run directory, in the background, under ``names[layer]``."""
    for layer, report in reports.items():
        worker.write(functools.partial(save_report, loggers, report, f"liegg/{names[layer]}"), on_saved)
