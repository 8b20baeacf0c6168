"""Shared pieces of the O(5) examples: the synthetic task, its DataModule and an MLP regressor.

The task is the O(5)-invariant regression of the LieGG paper: two vectors ``r1, r2`` in ``R^5``
drawn from a standard Gaussian, and the target

    f(r1, r2) = sin|r1| - |r2|^3 / 2 + r1 . r2 / (|r1| |r2|),

which is unchanged when the same orthogonal matrix acts on ``r1`` and ``r2``. A network that fits
it well should learn ``so(5)``: ten generators, out of the 25 of ``gl(5)``.

The scripts import this file as ``o5_common`` (``python examples/x.py`` puts ``examples/`` on the
path).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

__all__ = [
    "O5DataModule",
    "O5Regressor",
    "StandardizedMLP",
    "count_parameters",
    "make_o5_data",
    "o5_target",
    "quiet_lightning",
    "set_threads",
    "width_for_budget",
]

DIM = 5
COMPONENTS = 2


def o5_target(x: Tensor) -> Tensor:
    """The O(5)-invariant target ``sin|r1| - |r2|^3/2 + r1.r2/(|r1||r2|)`` for inputs ``(N, 10)``, as ``(N, 1)``."""
    r1, r2 = x[:, :DIM], x[:, DIM:]
    n1, n2 = r1.norm(dim=1), r2.norm(dim=1)
    return (torch.sin(n1) - 0.5 * n2**3 + (r1 * r2).sum(1) / (n1 * n2)).unsqueeze(1)


def make_o5_data(num_samples: int, seed: int) -> Tuple[Tensor, Tensor]:
    """``num_samples`` Gaussian inputs ``(N, 10)`` (float32) and their targets ``(N, 1)``, from a private generator."""
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(num_samples, COMPONENTS * DIM, generator=gen, dtype=torch.float64)
    return x.float(), o5_target(x).float()


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (the examples are meant for a laptop or a small CI runner)."""
    torch.set_num_threads(max(1, int(threads)))


def quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to these in-memory, single-process examples."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*", category=FutureWarning)


class O5DataModule(L.LightningDataModule):
    """Train/val/test splits of the O(5) regression task, generated in memory from ``seed``.

    Args:
        num_train: Training samples.
        num_val: Validation samples (the LieGG callback analyses these).
        num_test: Test samples.
        batch_size: Training batch size.
        eval_batch_size: Batch size of the validation and test loaders.
        seed: Seed of the data (independent of the model's initialisation).
    """

    def __init__(
        self,
        num_train: int = 8000,
        num_val: int = 1000,
        num_test: int = 1000,
        batch_size: int = 500,
        eval_batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.splits: Dict[str, TensorDataset] = {}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        x, y = make_o5_data(self.num_train + self.num_val + self.num_test, self.seed)
        a, b = self.num_train, self.num_train + self.num_val
        self.splits = {
            "train": TensorDataset(x[:a], y[:a]),
            "val": TensorDataset(x[a:b], y[a:b]),
            "test": TensorDataset(x[b:], y[b:]),
        }

    def input_scale(self) -> float:
        """Root-mean-square input coordinate on the training split.

        A single scalar for all ten coordinates: a per-coordinate scale would not commute with
        rotations and would break the symmetry the network is meant to learn.
        """
        self.setup()
        return float(self.splits["train"].tensors[0].pow(2).mean().sqrt())

    def target_stats(self) -> Tuple[float, float]:
        """Mean and standard deviation of the training targets."""
        self.setup()
        y = self.splits["train"].tensors[1]
        return float(y.mean()), float(y.std())

    @staticmethod
    def _loader(data: TensorDataset, batch_size: int, shuffle: bool) -> DataLoader:
        # index the tensors a whole batch at a time: collating 500 single rows costs more than the step
        sampler = RandomSampler(data) if shuffle else SequentialSampler(data)
        return DataLoader(data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["train"], self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], self.eval_batch_size, shuffle=False)


_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class StandardizedMLP(nn.Module):
    """An MLP ``10 -> width x depth -> 1`` that standardises its input and un-standardises its output.

    The input is divided by one scalar (so rotations still act on it as rotations) and the output
    mapped back to the target's units, so the module is a regressor in the data's own units and
    LieGG analyses exactly the function that is evaluated.

    Args:
        width: Hidden units per layer.
        depth: Number of hidden layers (non-linearities).
        activation: ``"silu"``, ``"relu"``, ``"tanh"`` or ``"gelu"``.
        bias: Whether the linear layers have biases.
        in_dim: Input size.
    """

    def __init__(self, width: int = 384, depth: int = 3, activation: str = "silu", bias: bool = False,
                 in_dim: int = COMPONENTS * DIM) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Expected `activation` to be one of {', '.join(_ACTIVATIONS)}, got {activation!r}.")
        if depth < 1 or width < 1:
            raise ValueError(f"Expected positive `depth` and `width`, got depth={depth}, width={width}.")
        layers = []
        cin = in_dim
        for _ in range(depth):
            layers += [nn.Linear(cin, width, bias=bias), _ACTIVATIONS[activation]()]
            cin = width
        layers.append(nn.Linear(cin, 1, bias=bias))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("target_mean", torch.tensor(0.0))
        self.register_buffer("target_std", torch.tensor(1.0))

    def set_stats(self, input_scale: float, target_mean: float, target_std: float) -> None:
        """Set the standardisation constants (from the training split)."""
        self.input_scale.fill_(input_scale)
        self.target_mean.fill_(target_mean)
        self.target_std.fill_(target_std)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        return self.net(x / self.input_scale) * self.target_std + self.target_mean


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def width_for_budget(depth: int, budget: int, in_dim: int = COMPONENTS * DIM, bias: bool = False) -> int:
    """Width whose bias-free ``depth``-layer MLP has the parameter count closest to ``budget``."""
    # params(w) = in_dim*w + (depth-1)*w^2 + w  (+ biases (depth*w + 1))
    a = depth - 1
    b = in_dim + 1 + (depth if bias else 0)
    w = budget / b if a == 0 else (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    candidates = {max(1, math.floor(w)), max(1, math.ceil(w))}

    def params(width: int) -> int:
        return count_parameters(StandardizedMLP(width, depth, bias=bias, in_dim=in_dim))

    return min(candidates, key=lambda c: abs(params(c) - budget))


class O5Regressor(L.LightningModule):
    """Lightning wrapper of :class:`StandardizedMLP` for the O(5) task.

    The standardisation constants are taken from the DataModule (``input_scale``,
    ``target_stats``) when fitting starts, and saved with the model's buffers.

    Args:
        width: Hidden units per layer.
        depth: Number of hidden layers.
        activation: Non-linearity.
        bias: Biases in the linear layers.
        lr: Adam's (peak) learning rate.
        weight_decay: Adam's L2 penalty.
        schedule: ``"cosine"`` (anneal to zero over the run, per step) or ``"constant"``.
        in_dim: Input size (10: two vectors in R^5; ``examples/lorentz.py`` uses 8, two 4-momenta).
    """

    def __init__(
        self,
        width: int = 384,
        depth: int = 3,
        activation: str = "silu",
        bias: bool = False,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        schedule: str = "cosine",
        in_dim: int = COMPONENTS * DIM,
    ) -> None:
        super().__init__()
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"Expected `schedule` to be 'cosine' or 'constant', got {schedule!r}.")
        self.save_hyperparameters()
        self.model = StandardizedMLP(width, depth, activation, bias, in_dim=in_dim)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and dm is not None and hasattr(dm, "target_stats"):
            self.model.set_stats(dm.input_scale(), *dm.target_stats())

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _mse(self, batch: Tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._mse(batch)
        self.log("train_mse", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_mse", self._mse(batch), prog_bar=True)

    def test_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test_mse", self._mse(batch))

    def configure_optimizers(self):  # noqa: ANN201 - Lightning accepts several return types
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.schedule == "constant":
            return opt
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
