"""Run by tests/test_never_harm.py as a subprocess: 2 CPU processes whose forward takes part in a collective.

A stand-in for FSDP, ZeRO-3, ``SyncBatchNorm`` and tensor-parallel layers: the first layer calls
``torch.distributed.all_reduce`` in every forward pass, so one process running a pass the other
skips would wait for it until the process group's timeout (here 60 s, not the default 30 minutes).
Pictures are on. argv: the output folder. Every rank writes how many collectives its forward
passes issued, and what it analysed, to ``rank<r>.json``.
"""

import datetime
import json
import os
import sys
import warnings

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _lightning_models import O5DataModule, TinyRegressor  # noqa: E402

from liegg_lightning import LieGGCallback, VectorAction, in_analysis  # noqa: E402

warnings.filterwarnings("ignore")


class CollectiveLinear(nn.Linear):
    """A linear layer that first joins an all-reduce across the processes, as synchronised layers do."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.collectives = {"loop": 0, "callback": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if dist.is_available() and dist.is_initialized():
            token = torch.ones(1)
            dist.all_reduce(token)
            self.collectives["callback" if in_analysis() else "loop"] += 1
        return super().forward(x)


class SyncedRegressor(TinyRegressor):
    def __init__(self) -> None:
        super().__init__(outputs=3)
        self.net[0] = CollectiveLinear(10, 32)


class Recorder(L.Callback):
    def __init__(self, out: str, liegg: LieGGCallback) -> None:
        self.out, self.liegg = out, liegg

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.liegg.wait_for_pictures()
        data = {"collectives": pl_module.net[0].collectives, "epochs": [h["epoch"] for h in self.liegg.history]}
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(data, fh)


def main(out: str) -> None:
    L.seed_everything(0, verbose=False)
    liegg = LieGGCallback(VectorAction(dim=5, components=2), every_n_epochs=1)  # pictures on, as by default
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=datetime.timedelta(seconds=60)), max_epochs=2,
        callbacks=[liegg, Recorder(out, liegg)], logger=TensorBoardLogger(out, name="tb"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(SyncedRegressor(), datamodule=O5DataModule(n=256, batch_size=32))


if __name__ == "__main__":
    main(sys.argv[1])
