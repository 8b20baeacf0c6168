"""Run by tests/test_user_control.py as a subprocess: 2 processes whose validation data or model differ.

argv: output folder, case. Cases: ``empty_first`` (rank 1's first validation batch is empty),
``empty_only`` (rank 1's only validation batch is empty), ``raises`` (the model raises on rank 1 in
the callback's extra passes), ``uneven`` (3 validation batches on rank 0, 2 on rank 1). Every rank
writes what it analysed to ``rank<r>.json``; a hang is caught by the caller's timeout.
"""

import json
import os
import sys
import warnings
from typing import Any, List

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _lightning_models import TinyRegressor, o5_data  # noqa: E402

from liegg_lightning import LieGGCallback, VectorAction  # noqa: E402

warnings.filterwarnings("ignore")
CASE = ""  # set by main() from argv: importing this file (pytest's doctest collection) must not read argv


def collate(items: List[Any]) -> Any:
    """Stacks the samples; an empty batch is a pair of empty tensors."""
    if not items:
        return torch.zeros(0, 10), torch.zeros(0, 3)
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


class PerRank(TinyRegressor):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if CASE == "raises" and self.global_rank == 1 and torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("rank 1 cannot differentiate")
        return super().forward(x)

    def val_dataloader(self) -> DataLoader:
        data = o5_data(96, seed=1 + self.global_rank)
        sizes: List[int] = [32, 32, 32]
        if self.global_rank == 1:
            sizes = {"empty_first": [0, 32, 32], "empty_only": [0], "uneven": [32, 32]}.get(CASE, sizes)
        batches, start = [], 0
        for size in sizes:
            batches.append(list(range(start, start + size)))
            start += size
        return DataLoader(data, batch_sampler=batches, collate_fn=collate)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch[0].shape[0]:
            self.log("val_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))


class Recorder(L.Callback):
    def __init__(self, out: str, liegg: LieGGCallback) -> None:
        self.out, self.liegg = out, liegg

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plan = self.liegg.planner.plan
        data = {"planned_samples": self.liegg.planned_samples, "epochs": [h["epoch"] for h in self.liegg.history],
                "num_samples": [h["num_samples"] for h in self.liegg.history],
                "batch_stride": None if plan is None else plan.batch_stride,
                "every": self.liegg.planner.schedule.every}
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(data, fh)


def main(out: str, case: str) -> None:
    global CASE
    CASE = case
    L.seed_everything(0, verbose=False)
    liegg = LieGGCallback(VectorAction(dim=5, components=2), every_n_epochs=1, log_images=False, save_reports=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[liegg, Recorder(out, liegg)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0,
    )
    trainer.fit(PerRank(), DataLoader(o5_data(128, seed=0), batch_size=32))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
