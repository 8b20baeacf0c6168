"""The Lightning (and torch TensorBoard) internals the callback cannot avoid, in one place.

Each has no public equivalent; ``tests/test_framework.py`` fails loudly when the installed
versions stop behaving the way it is assumed here.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import lightning.pytorch as pl

__all__ = ["logged_step", "tensorboard_file_writer"]


def logged_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs an epoch's values at, so that pictures and scalars line up.

    Lightning's ``LoggerConnector`` logs at the loop's private ``_batches_that_stepped`` (the
    public ``global_step`` counts optimizer steps, which differs with several optimizers or
    manual optimization); ``global_step`` is the fallback on a Lightning without it.
    """
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def tensorboard_file_writer(writer: Any) -> Optional[Callable[[], Any]]:
    """Torch's ``SummaryWriter._get_file_writer``, or ``None`` for a writer without it (tensorboardX).

    Writing a ready PNG summary through it skips ``add_image``'s float32 round trip and slow PNG
    compression, half the cost of a drawing.
    """
    file_writer = getattr(writer, "_get_file_writer", None)
    return file_writer if callable(file_writer) else None
