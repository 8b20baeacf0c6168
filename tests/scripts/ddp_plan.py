"""Run by tests/test_never_harm.py as a subprocess: 2 processes whose speeds differ must agree on one plan.

argv: output folder, strategy ("ddp" or "ddp_spawn"). Every rank writes what it analysed to
``rank<r>.json``; under ddp_spawn the parent also writes what it can see after ``fit``.
"""

import json
import os
import sys
import time
import warnings

import lightning as L
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _lightning_models import O5DataModule, TinyRegressor  # noqa: E402

from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction  # noqa: E402

warnings.filterwarnings("ignore")


class UnevenRegressor(TinyRegressor):
    """Rank 1 is slower in every forward pass, so the two ranks price a sample differently."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_rank == 1 and torch.is_grad_enabled():
            time.sleep(0.02)
        return super().forward(x)


class Recorder(L.Callback):
    def __init__(self, out: str, liegg: LieGGCallback) -> None:
        self.out, self.liegg = out, liegg

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = {"planned_samples": self.liegg.planned_samples,
                "num_samples": [h["num_samples"] for h in self.liegg.history],
                "epochs": [h["epoch"] for h in self.liegg.history],
                "derivative": self.liegg.metric.resolved_derivative,
                "epoch_stride": self.liegg.planner.schedule.stride,
                "batch_stride": self.liegg.planner.plan.batch_stride if self.liegg.planner.plan else None}
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(data, fh)


def main(out: str, strategy: str) -> None:
    L.seed_everything(0, verbose=False)
    # every epoch, as set: so short a fit would otherwise not be analysed at all (one analysis is over its budget)
    liegg = LieGGCallback(LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so"), log_images=False,
                          every_n_epochs=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, callbacks=[liegg, Recorder(out, liegg)],
        logger=L.pytorch.loggers.CSVLogger(out, name="logs"), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(UnevenRegressor(outputs=3), datamodule=O5DataModule(n=512, batch_size=64))
    if strategy == "ddp_spawn":  # the parent process, after the workers ended
        with open(os.path.join(out, "parent.json"), "w") as fh:
            json.dump({"callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                       "log_dir": trainer.loggers[0].log_dir}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
