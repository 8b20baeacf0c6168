"""Sending the pictures of a :class:`SymmetryReport` to the trainer's loggers (rank zero only).

The figures come from :mod:`liegg_lightning.rendering`; this module only sends them.

TensorBoard loggers get images and a text entry; other loggers get the images through their
``log_image`` where they have one (W&B); loggers with neither get a single notice. Drawing never
ends a run: a failure becomes a warning.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import WarningCache
from torch import Tensor

from liegg_lightning.actions import GroupAction
from liegg_lightning.report import SymmetryReport

__all__ = ["log_pictures", "save_report"]

_WARNINGS = WarningCache()


def log_pictures(
    loggers: Sequence[Logger],
    step: int,
    report: SymmetryReport,
    action: GroupAction,
    *,
    spectra: Sequence[Tensor],
    labels: Optional[List[str]] = None,
    example_input: Optional[Tensor] = None,
    num_generators: int = 4,
    prefix: str = "liegg/",
) -> None:
    """Draw the report and send it, at ``step``, to every logger that can take pictures."""
    capable = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) or callable(getattr(logger, "log_image", None)):
            capable.append(logger)
        else:
            _WARNINGS.info(
                f"LieGGCallback: {type(logger).__name__} cannot show images; the scalars are logged, "
                "the pictures go to TensorBoard loggers and loggers with `log_image`."
            )
    if not capable:
        return
    try:
        from liegg_lightning.rendering import generators_text, render_pictures

        images = render_pictures(
            report, action, spectra=spectra, labels=labels, example_input=example_input,
            num_generators=num_generators,
        )
        text = generators_text(report, k=max(num_generators, 1))
    except Exception as err:  # drawing must never end the training it watches
        rank_zero_warn(f"LieGGCallback: drawing the report failed ({err!r}); pictures skipped.")
        return
    for logger in capable:
        try:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                for tag, image in images.items():
                    writer.add_image(prefix + tag, image, global_step=step, dataformats="HWC")
                writer.add_text(prefix + "generators_text", text, global_step=step)
                writer.flush()
            else:
                log_image = getattr(logger, "log_image")  # noqa: B009 - Logger declares no log_image
                for tag, image in images.items():
                    log_image(key=prefix + tag, images=[image], step=step)
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: logging pictures to {type(logger).__name__} failed ({err!r}).")


def save_report(loggers: Sequence[Logger], report: SymmetryReport, filename: str) -> List[str]:
    """Write ``report`` as JSON into each logger's own run directory; return the paths written.

    A failure to write becomes a warning: a report is never worth a crashed run.
    """
    paths: List[str] = []
    for logger in loggers:
        directory = getattr(logger, "log_dir", None)
        if not isinstance(directory, str):
            continue
        path = os.path.join(directory, "liegg", filename)
        try:
            report.save(path)
        except OSError as err:
            rank_zero_warn(f"LieGGCallback: could not write the report to {path} ({err}).")
        else:
            paths.append(path)
    return paths
