"""The budget of a ``trainer.validate()`` or ``trainer.test()`` that no fit has planned for.

Without a fit there is no training time to take a share of, and no plan: the evaluation's own time
is the measure. An analysis takes at least the floor (the fewest samples any plan takes), spread
over the batches, and in one process more samples while it costs at most ``overhead`` of the time
the loop itself has spent so far. Under several processes only the floor is taken: each process
then runs the same passes whatever its clocks say (a collective in the model must see them all).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

from liegg_lightning.callback._cost import MIN_BATCHES, FitShape

__all__ = ["EvaluationBudget"]


class EvaluationBudget:
    """How many samples each batch of one evaluation gives, as the evaluation goes.

    Args:
        overhead: The share of the evaluation's own time the analysis may spend beyond the floor.
        batches: Batches the analysed dataloaders have (0 when unknown: a stream).
        adaptive: Whether more samples may be taken as the budget allows (one process only).
        stage: ``"validate"`` or ``"test"``, for the line that says what was chosen.
        spent: Seconds the monitor has spent on the loop's thread (a running total; its growth is charged).
        clock: Seconds from an arbitrary origin.
    """

    def __init__(self, overhead: float, batches: int, adaptive: bool, stage: str,
                 spent: Callable[[], float], clock: Callable[[], float] = time.perf_counter) -> None:
        self.overhead, self.adaptive, self.stage, self.clock, self._spent = overhead, adaptive, stage, clock, spent
        self.analysed = min(batches, MIN_BATCHES) if batches > 0 else 1
        self.stride = max(batches // self.analysed, 1) if batches > 0 else 1
        #: Samples taken whatever the cost; set by :meth:`start` (it needs the rows one sample gives).
        self.floor: Optional[int] = None
        self.per_batch = 0
        self.started, self.spent_before = clock(), spent()

    def start(self, rows_per_sample: int, num_generators: int) -> str:
        """Fix the floor (a plan's) at the first batch; the one line that says what was chosen."""
        floor = FitShape(0, 0, 0, 0, 0, rows_per_sample, num_generators).floor_samples
        self.floor, self.per_batch = floor, math.ceil(floor / self.analysed)
        more = (f", and more while the analysis costs at most {self.overhead:g} of the evaluation's own time"
                if self.adaptive else " on every process")
        return (f"LieGGCallback: `trainer.{self.stage}()` without a fit's plan: at least {floor} samples, spread "
                f"over the batches{more} (`max_samples=None` analyses every sample, an int caps them).")

    def samples_for(self, index: int, batch_size: int, seen: int) -> int:
        """Samples to analyse from the batch of position ``index`` (of ``batch_size``), ``seen`` analysed so far."""
        floor_part = self.per_batch if seen < (self.floor or 0) and index % self.stride == 0 else 0
        extra = 0
        spent = self._spent() - self.spent_before  # the analysis' seconds on the loop's thread so far
        if self.adaptive and seen > 0 and spent > 0:
            room = self.overhead * max(self.clock() - self.started - spent, 0.0) - spent
            extra = max(int(room / (spent / seen)), 0)
        return min(batch_size, max(floor_part, extra))
