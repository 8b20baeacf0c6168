"""Sending the pictures of a :class:`SymmetryReport` to the trainer's loggers (rank zero only).

TensorBoard loggers get images and a text entry; other loggers get the images through their
``log_image`` where they have one (W&B); loggers with neither get a single notice. Drawing never
ends a run: a failure becomes a warning.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from liegg_lightning.actions import GroupAction
from liegg_lightning.report import SymmetryReport

__all__ = ["render_pictures", "log_pictures"]

_NOTICES: set = set()


def _notice_once(message: str) -> None:
    if message not in _NOTICES:
        _NOTICES.add(message)
        rank_zero_info(message)


def render_pictures(
    report: SymmetryReport,
    action: GroupAction,
    *,
    spectra: Sequence[Tensor],
    labels: Optional[Sequence[str]] = None,
    example_input: Optional[Tensor] = None,
    num_generators: int = 4,
) -> Dict[str, Any]:
    """The report's pictures as ``tag -> (H, W, 3) uint8`` arrays (tags without the prefix)."""
    from liegg_lightning import rendering as R

    images: Dict[str, Any] = {}
    if num_generators > 0:
        images["generators"] = R.figure_to_array(R.generators_figure(report, k=num_generators))
    images["spectrum"] = R.figure_to_array(R.spectrum_figure(report))
    if spectra:
        images["spectrum_history"] = R.figure_to_array(R.spectrum_history_figure(list(spectra), labels))
    if example_input is not None and len(report.generators) > 1:
        try:
            fig = R.orbit_figure(action, example_input, report.generators[0], report.generators[-1])
        except NotImplementedError:
            pass  # the action cannot apply finite transformations
        else:
            images["orbit"] = R.figure_to_array(fig)
    return images


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
            _notice_once(
                f"LieGGCallback: {type(logger).__name__} cannot show images; the scalars are logged, "
                "the pictures go to TensorBoard loggers and loggers with `log_image`."
            )
    if not capable:
        return
    try:
        images = render_pictures(
            report, action, spectra=spectra, labels=labels, example_input=example_input,
            num_generators=num_generators,
        )
        from liegg_lightning.rendering import generators_text

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
                for tag, image in images.items():
                    logger.log_image(key=prefix + tag, images=[image], step=step)
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: logging pictures to {type(logger).__name__} failed ({err!r}).")
