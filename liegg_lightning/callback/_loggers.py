"""Sending a :class:`SymmetryReport`'s pictures, text and JSON file to the trainer's loggers (rank zero only).

The pictures come from :mod:`liegg_lightning.pictures.rendering`; this module only sends them, each logger
into its own run:

=================  =================================  ========================  ==========================
logger             pictures                           text                      report file
=================  =================================  ========================  ==========================
TensorBoard        ``add_image``                      ``add_text``              ``<log_dir>/<filename>``
W&B                ``wandb.Image``                    ``wandb.Html``            ``<run.dir>/<filename>``
MLflow             ``MlflowClient.log_image``         ``log_text`` (artifact)   ``log_artifact``
CSV                (none)                             (none)                    ``<log_dir>/<filename>``
others             ``log_image`` when they have one   (none)                    ``<log_dir>`` when they have one
=================  =================================  ========================  ==========================

Loggers that can take nothing get one notice. Nothing here ends a run: a failure becomes a warning.
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import WarningCache

from liegg_lightning.actions import GroupAction
from liegg_lightning.callback._lightning import tensorboard_file_writer
from liegg_lightning.pictures import rendering
from liegg_lightning.pictures.rendering import PictureOptions
from liegg_lightning.report import SymmetryReport

__all__ = ["log_pictures", "save_report"]

_WARNINGS = WarningCache()


def _takes_pictures(logger: Logger) -> bool:
    return isinstance(logger, (TensorBoardLogger, WandbLogger, MLFlowLogger)) or callable(
        getattr(logger, "log_image", None)
    )


def _picture_loggers(loggers: Sequence[Logger]) -> List[Logger]:
    """The loggers that can show pictures; the others get one notice."""
    capable = []
    for logger in loggers:
        if _takes_pictures(logger):
            capable.append(logger)
        else:
            _WARNINGS.info(
                f"LieGGCallback: {type(logger).__name__} cannot show images; the scalars are logged, the pictures "
                "go to TensorBoard, W&B, MLflow and loggers with `log_image`."
            )
    return capable


def _send(logger: Logger, images: Dict[str, Any], text: str, step: int, prefix: str) -> None:
    """Pictures and text to one logger, each kind its own way."""
    if isinstance(logger, TensorBoardLogger):
        _to_tensorboard(logger, images, text, step, prefix)
    elif isinstance(logger, WandbLogger):
        _to_wandb(logger, images, text, step, prefix)
    elif isinstance(logger, MLFlowLogger):
        _to_mlflow(logger, images, text, step, prefix)
    else:
        log_image = getattr(logger, "log_image")  # noqa: B009 - Logger declares no log_image
        for tag, image in images.items():
            log_image(key=prefix + tag, images=[image], step=step)


def log_pictures(
    loggers: Sequence[Logger],
    step: int,
    report: SymmetryReport,
    action: GroupAction,
    options: Optional[PictureOptions] = None,
    *,
    prefix: str = "liegg/",
    **keywords: Any,
) -> Dict[str, Any]:
    """Draw the report and send pictures and text, at ``step``, to every logger that can hold them.

    Pure drawing and sending: the model is never called here (pass ``orbit`` from
    :func:`~liegg_lightning.pictures.rendering.orbit_outputs`, computed where the model may run), so this
    may run in a background thread. Never raises for a drawing or a logger that fails: that
    becomes a warning.

    Args:
        loggers: The trainer's loggers.
        step: The global step to log at.
        report: The report to draw.
        action: Its group action (for the orbit picture).
        options: What to draw besides the report (:class:`~liegg_lightning.pictures.rendering.PictureOptions`:
            the spectra and labels of the history, the orbit's input and outputs, how many
            generators, per-layer reports, the caption written in every title).
        prefix: Prefix of every tag.
        **keywords: Fields of :class:`~liegg_lightning.pictures.rendering.PictureOptions`, instead of or over
            ``options`` (e.g. ``spectra=..., caption="fit · epoch 4"``).

    Returns:
        The pictures drawn, ``tag -> (H, W, 3) uint8`` (tags without the prefix); empty when no
        logger could take them or drawing failed.

    Raises:
        TypeError: A keyword that is not a field of ``PictureOptions`` (a mistake in the call).
    """
    opts = PictureOptions.of(options, **keywords)
    capable = _picture_loggers(loggers)
    if not capable:
        return {}
    try:
        images = rendering.render_pictures(report, action, opts)
        text = rendering.generators_text(report, k=max(opts.num_generators, 1))
    except Exception as err:  # drawing must never end the training it watches
        rank_zero_warn(f"LieGGCallback: drawing the report failed ({err!r}); pictures skipped.")
        return {}
    for logger in capable:
        try:
            _send(logger, images, text, step, prefix)
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: logging pictures to {type(logger).__name__} failed ({err!r}).")
    return images


def _png(image: Any) -> bytes:
    """A small PNG of an ``(H, W, 3)`` uint8 picture, made fast.

    A 256-colour palette (as a colour map's lookup table has) halves the bytes, and TensorBoard's
    writer checksums every byte in Python, holding the interpreter the training loop needs; flat
    diagrams compress nearly as well at level 1 as at the default 6.
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).quantize(256, method=Image.Quantize.FASTOCTREE).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _to_tensorboard(logger: TensorBoardLogger, images: Dict[str, Any], text: str, step: int, prefix: str) -> None:
    writer = logger.experiment
    file_writer = tensorboard_file_writer(writer)
    if file_writer is not None:
        # the picture is already uint8: `add_image` would round-trip it through float32 and compress it at
        # level 6, half the cost of a drawing; the summary it writes is built here the same way
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=prefix + tag, image=Summary.Image(
                height=image.shape[0], width=image.shape[1], colorspace=image.shape[2],
                encoded_image_string=_png(image)))
            for tag, image in images.items()
        ]
        file_writer().add_summary(Summary(value=values), step)
        writer.add_text(prefix + "generators_text", text, global_step=step)
        writer.flush()
    else:  # a writer without torch's internals (tensorboardX): its public call
        _to_tensorboard_with_add_image(writer, images, text, step, prefix)


def _to_tensorboard_with_add_image(writer: Any, images: Dict[str, Any], text: str, step: int, prefix: str) -> None:
    """The same pictures and text through the writer's public ``add_image`` (float32 round trip, level-6 PNG)."""
    for tag, image in images.items():
        writer.add_image(prefix + tag, image, global_step=step, dataformats="HWC")
    writer.add_text(prefix + "generators_text", text, global_step=step)
    writer.flush()


def _to_wandb(logger: WandbLogger, images: Dict[str, Any], text: str, step: int, prefix: str) -> None:
    import wandb

    entries: Dict[str, Any] = {prefix + tag: wandb.Image(image) for tag, image in images.items()}
    entries[prefix + "generators_text"] = wandb.Html(f"<pre>{html.escape(text)}</pre>")
    logger.log_metrics(entries, step=step)  # one W&B log call: one row for all of them


def _to_mlflow(logger: MLFlowLogger, images: Dict[str, Any], text: str, step: int, prefix: str) -> None:
    client, run_id = logger.experiment, logger.run_id
    folder = prefix.strip("/") or "liegg"
    for tag, image in images.items():
        try:
            client.log_image(run_id, image, key=prefix + tag, step=step)  # mlflow >= 2.12: a slider per key
        except TypeError:  # older mlflow: one artifact file per image
            client.log_image(run_id, image, f"{folder}/{tag}_step{step:08d}.png")
    client.log_text(run_id, text, f"{folder}/generators_step{step:08d}.md")


def _check_filename(filename: str) -> str:
    path = os.path.normpath(str(filename))
    if not path or os.path.isabs(path) or path.startswith(os.pardir) or path == os.curdir:
        raise ValueError(f"Expected a relative file name inside the run directory, got {filename!r}.")
    return path


def _run_dir(logger: Logger) -> Optional[str]:
    """The logger's own run directory on this machine, or None (MLflow takes artifacts instead)."""
    if isinstance(logger, WandbLogger):
        return str(logger.experiment.dir)
    log_dir = getattr(logger, "log_dir", None)
    return str(log_dir) if isinstance(log_dir, (str, os.PathLike)) else None


def _unused(path: str) -> str:
    """``path``, or where a file is already there, the first of ``<stem>-2<ext>``, ``<stem>-3<ext>``, ..."""
    stem, ext = os.path.splitext(path)
    candidate, n = path, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{stem}-{n}{ext}"
    return candidate


def save_report(loggers: Sequence[Logger], report: SymmetryReport, filename: str) -> List[str]:
    """Write ``report`` as JSON into each logger's own run, atomically, and say where.

    TensorBoard and CSV loggers: ``<logger.log_dir>/<filename>``; W&B: the run's files directory
    (uploaded with the run); MLflow: a run artifact ``<filename>`` (``log_artifact`` from a
    temporary file); other loggers with a ``log_dir``: there. Two loggers sharing a directory get
    one file. Never raises for a logger that fails: that becomes a warning.

    Args:
        loggers: The trainer's loggers; with none, nothing is written.
        report: The report to write.
        filename: A relative path such as ``"liegg/report_fit_epoch0003_step000120.json"``.

    Returns:
        The paths (and, for MLflow, artifact URIs) written, one per logger that took the file.

    Raises:
        ValueError: ``filename`` is absolute or leaves the run directory.
    """
    name = _check_filename(filename)
    written: List[str] = []
    for logger in loggers:
        try:
            if isinstance(logger, MLFlowLogger):
                client, run_id = logger.experiment, logger.run_id
                with tempfile.TemporaryDirectory() as tmp:
                    local = os.path.join(tmp, os.path.basename(name))
                    report.save(local, durable=False)
                    folder = os.path.dirname(name) or None
                    client.log_artifact(run_id, local, folder)
                uri = client.get_run(run_id).info.artifact_uri.rstrip("/")
                written.append(f"{uri}/{name.replace(os.sep, '/')}")
                continue
            run_dir = _run_dir(logger)
            if run_dir is None:
                _WARNINGS.info(
                    f"LieGGCallback: {type(logger).__name__} has no run directory; reports are not saved there."
                )
                continue
            path = os.path.join(run_dir, name)
            if path in written:
                continue
            path = _unused(path)  # a run resumed into the same logger version never replaces a report
            report.save(path, durable=False)  # atomic; a per-analysis disk sync is not worth its wait
            written.append(path)
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: saving the report to {type(logger).__name__} failed ({err!r}).")
    return written
