"""Small Lightning models and data shared by the callback and logging tests."""

from __future__ import annotations

from typing import Any, List, Optional

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def o5_data(n: int = 256, seed: int = 0) -> TensorDataset:
    """Inputs r1, r2 in R^5 (as 10 numbers) and an O(5)-invariant target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    r1, r2 = x[:, :5], x[:, 5:]
    y = torch.stack([(r1 * r1).sum(1), (r1 * r2).sum(1), (r2 * r2).sum(1)], 1)
    return TensorDataset(x, y)


class TinyRegressor(L.LightningModule):
    """10 -> hidden -> outputs MLP with an MSE objective."""

    def __init__(self, outputs: int = 3, hidden: int = 32, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.SiLU(), nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y[:, : self.hparams.outputs])

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y[:, : self.hparams.outputs]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class O5DataModule(L.LightningDataModule):
    """Train and validation loaders over :func:`o5_data`."""

    def __init__(self, n: int = 256, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.train: Optional[TensorDataset] = None
        self.val: Optional[TensorDataset] = None

    def setup(self, stage: str) -> None:
        self.train = o5_data(self.n, self.seed)
        self.val = o5_data(self.n, self.seed + 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


def recorded_inputs(metric: Any, monkeypatch: Any) -> List[torch.Tensor]:
    """The inputs of every ``metric.update`` from now on, as the metric received them (the update still runs)."""
    seen: List[torch.Tensor] = []
    original = metric.update

    def recording_update(model: Any, inputs: torch.Tensor) -> None:
        seen.append(inputs.detach().clone())
        original(model, inputs)

    monkeypatch.setattr(metric, "update", recording_update)
    return seen


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU Trainer without progress bars or summaries."""
    opts = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, logger=False)
    opts.update(kwargs)
    return L.Trainer(**opts)
