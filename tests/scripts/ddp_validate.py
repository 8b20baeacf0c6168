"""Run by tests/test_callback.py as a subprocess: one epoch of 2-process CPU DDP with LieGGCallback.

Writes the trained weights and rank zero's history to the output folder given as argv[1].
"""

import json
import os
import sys
import warnings

import lightning as L
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _lightning_models import O5DataModule, TinyRegressor  # noqa: E402

from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)


def main(out: str) -> None:
    L.seed_everything(0, verbose=False)
    model = TinyRegressor(outputs=3)
    metric = LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so")
    callback = LieGGCallback(metric, log_images=False, max_samples=None)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, callbacks=[callback], logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=O5DataModule(n=256, batch_size=64))
    if trainer.is_global_zero:
        torch.save(model.state_dict(), os.path.join(out, "weights.pt"))
        report = callback.last_report.to_dict()
        with open(os.path.join(out, "result.json"), "w") as fh:
            json.dump({"history": callback.history, "report": report,
                       "world_size": trainer.world_size}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
