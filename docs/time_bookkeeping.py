"""Time what one analysis of the callback pays besides its derivative pass: the solve, the report file, the logging.

The case is the O(5) example's algebra: ``LieGGMetric(VectorAction(5, components=2),
reference_algebra="so")`` (25 generators, 8 jackknife groups) on a random 10-64-1 MLP and 300
samples. Printed, each the median of ``--repeats`` calls after one untimed call:

* the solve: ``metric.compute()`` on the accumulated state;
* the report file: ``SymmetryReport.save`` as the callback calls it (``durable=False``), against
  ``json.dump`` of the same dict straight into the file (how reports were written before: the
  encoder then hands the file many small chunks from Python);
* the logging: a ``Trainer`` fitting a 4-1 linear model for ``--epochs`` epochs, with a callback
  that ``log_dict``\\ s 10 values at each validation epoch's end against one that logs nothing,
  alternately, ``--fits`` of each. Printed: the extra wall time per epoch (``log_dict`` and what
  Lightning does with the values after the hook: reducing them and sending them to the
  ``TensorBoardLogger``) and the time inside ``log_dict`` itself, which the callback's clocks see.

One torch thread. Usage::

    python docs/time_bookkeeping.py [--repeats 50] [--epochs 100] [--fits 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List

import torch
from torch import nn


def _median_ms(work: Callable[[], Any], repeats: int) -> float:
    work()  # first call: lazy imports and allocations out of the timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_solve_and_file(repeats: int) -> None:
    from liegg_lightning import LieGGMetric, VectorAction

    torch.manual_seed(0)
    metric = LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so")
    net = nn.Sequential(nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 1))
    metric.update(net, torch.randn(300, 10))

    def solve() -> Any:
        metric._computed = None  # torchmetrics caches the value of compute()
        return metric.compute()

    print(f"solve (m=25, 300 samples): {_median_ms(solve, repeats):.2f} ms")
    report = solve()
    folder = tempfile.mkdtemp(prefix="liegg_bookkeeping_")

    def save() -> None:
        report.save(os.path.join(folder, "report.json"), durable=False)

    def dump_into_file() -> None:
        with open(os.path.join(folder, "report_dump.json"), "w") as fh:
            json.dump(report.to_dict(), fh, allow_nan=False)

    size = len(json.dumps(report.to_dict(), allow_nan=False))
    print(f"report file ({size:,} characters): SymmetryReport.save {_median_ms(save, repeats):.2f} ms, "
          f"json.dump into the file {_median_ms(dump_into_file, repeats):.2f} ms")


def time_logging(epochs: int, fits: int) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class LogValues(pl.Callback):
        def __init__(self, count: int) -> None:
            self.count, self.seconds = count, 0.0

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking or not self.count:
                return
            values = {f"liegg/value{i}": 0.5 * i for i in range(self.count)}
            start = time.perf_counter()
            pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)
            self.seconds += time.perf_counter() - start

    loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=32)
    root = tempfile.mkdtemp(prefix="liegg_bookkeeping_tb_")
    runs: Dict[int, List[List[float]]] = {0: [], 10: []}
    for _ in range(fits):
        for count in (0, 10):
            callback = LogValues(count)
            trainer = pl.Trainer(max_epochs=epochs, logger=TensorBoardLogger(root), callbacks=[callback],
                                 enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                                 accelerator="cpu", devices=1)
            start = time.perf_counter()
            trainer.fit(Linear(), loader, loader)
            runs[count].append([time.perf_counter() - start, callback.seconds])
    without = statistics.median(run[0] for run in runs[0])
    with_values = statistics.median(run[0] for run in runs[10])
    inside = statistics.median(run[1] for run in runs[10])
    print(f"logging 10 values an epoch ({epochs} epochs, median of {fits} fits): "
          f"{(with_values - without) / epochs * 1e3:.2f} ms more per epoch, "
          f"{inside / epochs * 1e3:.2f} ms of it inside log_dict")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--fits", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    time_solve_and_file(args.repeats)
    time_logging(args.epochs, args.fits)


if __name__ == "__main__":
    main()
