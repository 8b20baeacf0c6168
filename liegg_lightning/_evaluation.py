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
from typing import Callable

from liegg_lightning._cost import MIN_BATCHES

__all__ = ["EvaluationBudget"]


class EvaluationBudget:
    """How many samples each batch of one evaluation gives, as the evaluation goes.

    Args:
        overhead: The share of the evaluation's own time the analysis may spend beyond the floor.
        batches: Batches the analysed dataloaders have (0 when unknown: a stream).
        floor: Samples taken whatever the cost.
        adaptive: Whether more samples may be taken as the budget allows (one process only).
        clock: Seconds from an arbitrary origin.
    """

    def __init__(self, overhead: float, batches: int, floor: int, adaptive: bool,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.overhead, self.floor, self.adaptive, self.clock = overhead, floor, adaptive, clock
        analysed = min(batches, MIN_BATCHES) if batches > 0 else 1
        self.stride = max(batches // analysed, 1) if batches > 0 else 1
        self.per_batch = math.ceil(floor / analysed)
        self.started = clock()
        self.spent = 0.0  # seconds the analysis took, on the loop's thread
        self.samples = 0

    def samples_for(self, index: int, batch_size: int) -> int:
        """Samples to analyse from the batch of position ``index`` (of ``batch_size`` samples)."""
        floor_part = self.per_batch if self.samples < self.floor and index % self.stride == 0 else 0
        extra = 0
        if self.adaptive and self.samples > 0:
            loop = max(self.clock() - self.started - self.spent, 0.0)
            room = self.overhead * loop - self.spent
            extra = max(int(room / (self.spent / self.samples)), 0) if self.spent > 0 else batch_size
        return min(batch_size, max(floor_part, extra))

    def charge(self, seconds: float, samples: int) -> None:
        """An analysed batch of ``samples`` took ``seconds``."""
        self.spent += seconds
        self.samples += samples

    def describe(self, stage: str, adaptive_note: bool) -> str:
        """The one line saying what was chosen."""
        more = (f", and more while the analysis costs at most {self.overhead:g} of the evaluation's own time"
                if adaptive_note else " on every process")
        return (f"LieGGCallback: `trainer.{stage}()` without a fit's plan: at least {self.floor} samples, spread over "
                f"the batches{more} (`max_samples=None` analyses every sample, an int caps them).")
