"""Rotated digits (the LieGG paper's rotated-MNIST experiment on data that ships with scikit-learn).

scikit-learn's 1,797 handwritten 8x8 digits are upsampled (bilinear) into the centre of a 28x28
canvas, with a margin so that a rotation never cuts a stroke, then rotated by a random angle and
blurred with a Gaussian. Training images get a fresh random rotation every time they are drawn;
the validation images have one fixed random rotation each. An MLP (784 -> 128 x 5 -> 10, the
paper's architecture) learns to classify them, and ``LieGGCallback`` with ``ImageAction()``
looks for the generator of ``gl(2)`` (rotation, scaling, two shears) the network is most invariant
to. With rotated training data it should be the rotation: symmetry bias near 0 against ``so(2)``,
and a rotation variance far below the scaling variance. The analysis also runs on the untrained
network, so the learned invariance can be told from the one the architecture starts with;
``--no-rotate`` trains and validates on upright digits as a control.

Run::

    python examples/rotated_digits.py              # the full run (about 25 s on one CPU core)
    python examples/rotated_digits.py --no-rotate  # the control: upright digits
    python examples/rotated_digits.py --quick      # a smoke run of a few seconds

The last line printed is one JSON object with the final measures. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from o5_common import quiet_lightning, set_threads
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from liegg_lightning import ImageAction, LieGGCallback, LieGGMetric

OUTPUT_TRANSFORMS = ("log_softmax", "logits", "softmax", "normalized_logits")


def rotate(images: Tensor, angles: Tensor) -> Tensor:
    """Rotate each image ``(B, C, H, W)`` by its own angle (radians, counter-clockwise about the centre).

    Bilinear interpolation; pixels that come from outside the canvas are zero.
    """
    c, s = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(c)
    # affine_grid maps output coordinates to input ones: the inverse rotation
    theta = torch.stack([torch.stack([c, s, zero], 1), torch.stack([-s, c, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` images (same size, zero padding)."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    k = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(k**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    images = F.conv2d(images, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(images, kernel.view(1, 1, -1, 1), padding=(radius, 0))


class RotatedDigits(L.LightningDataModule):
    """scikit-learn's digits, upsampled, padded, randomly rotated and blurred.

    Args:
        image_size: Side of the square canvas.
        content_size: Side the 8x8 digit is upsampled to; the rest is margin, so the rotated
            digit stays inside the canvas when ``content_size * sqrt(2) <= image_size``.
        blur_sigma: Standard deviation (pixels) of the Gaussian blur applied after rotation.
        num_val: Validation images (the rest train).
        batch_size: Training batch size.
        rotate: Rotate the images (``False`` gives the upright control).
        seed: Seed of the split, the validation rotations and the training augmentation.
    """

    def __init__(self, image_size: int = 28, content_size: int = 18, blur_sigma: float = 1.0, num_val: int = 400,
                 batch_size: int = 128, rotate: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.image_size, self.content_size, self.blur_sigma = image_size, content_size, blur_sigma
        self.num_val, self.batch_size, self.rotate, self.seed = num_val, batch_size, rotate, seed
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.train_set: Optional[TensorDataset] = None
        self.val_set: Optional[TensorDataset] = None
        self.mean, self.std = 0.0, 1.0

    def _canvas(self) -> Tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        x = F.interpolate(x, size=(self.content_size, self.content_size), mode="bilinear", align_corners=False)
        lo = (self.image_size - self.content_size) // 2
        hi = self.image_size - self.content_size - lo
        return F.pad(x, (lo, hi, lo, hi)), y

    def _transform(self, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        if self.rotate:
            angles = torch.rand(x.shape[0], generator=generator, device=x.device) * (2 * math.pi)
            x = rotate(x, angles)
        # one scalar normalisation for all pixels: it commutes with every transformation of the plane
        return (gaussian_blur(x, self.blur_sigma) - self.mean) / self.std

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        x, y = self._canvas()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val, train = perm[: self.num_val], perm[self.num_val :]
        # normalisation constants from one randomly transformed copy of the training images
        sample = self._transform(x[train], torch.Generator().manual_seed(self.seed + 3))
        self.mean, self.std = float(sample.mean()), float(sample.std())
        val_x = self._transform(x[val], torch.Generator().manual_seed(self.seed + 2))
        self.val_set = TensorDataset(val_x, y[val])
        self.train_set = TensorDataset(x[train], y[train])  # transformed per batch, see on_after_batch_transfer

    def train_dataloader(self) -> DataLoader:
        sampler = BatchSampler(RandomSampler(self.train_set), self.batch_size, drop_last=False)
        return DataLoader(self.train_set, sampler=sampler, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        sampler = BatchSampler(SequentialSampler(self.val_set), 500, drop_last=False)
        return DataLoader(self.val_set, sampler=sampler, batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # a fresh random rotation every time a training image is drawn
        if self.trainer is not None and self.trainer.training:
            x, y = batch
            return self._transform(x, self.generator if x.device.type == "cpu" else None), y
        return batch


class DigitMLP(L.LightningModule):
    """An MLP classifier of ``image_size**2`` pixels into 10 classes.

    Args:
        image_size: Side of the input images.
        width: Hidden units per layer.
        depth: Hidden layers.
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: AdamW's weight decay.
    """

    def __init__(self, image_size: int = 28, width: int = 128, depth: int = 5, lr: float = 3e-3,
                 weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: List[nn.Module] = [nn.Flatten()]
        cin = image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(cin, width), nn.SiLU()]
            cin = width
        layers.append(nn.Linear(cin, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: Tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=True)
        self.log(f"{stage}_accuracy", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):  # noqa: ANN201 - Lightning accepts several return types
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.hparams.lr, total_steps=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class NormalizedLogits(nn.Module):
    """Logits divided by their Euclidean norm (the original LieGG code's choice)."""

    def forward(self, logits: Tensor) -> Tensor:
        return logits / logits.norm(dim=1, keepdim=True).clamp_min(1e-12)


def output_transform(name: str) -> Optional[nn.Module]:
    """The transform applied to the logits before LieGG differentiates them."""
    return {
        "logits": None,
        "log_softmax": nn.LogSoftmax(dim=1),
        "softmax": nn.Softmax(dim=1),
        "normalized_logits": NormalizedLogits(),
    }[name]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=150, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the rotations and the initialisation")
    p.add_argument("--quick", action="store_true", help="a very short smoke run (2 epochs)")
    p.add_argument("--log-dir", default="lightning_logs", help="TensorBoard log directory")
    p.add_argument("--no-rotate", action="store_true", help="control: train and validate on upright digits")
    p.add_argument("--output-transform", default="log_softmax", choices=OUTPUT_TRANSFORMS,
                   help="what LieGG differentiates: the log-probabilities (default), the raw or normalised logits, "
                        "or the probabilities")
    p.add_argument("--blur", type=float, default=1.0, help="Gaussian blur sigma in pixels")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--liegg-every", type=int, default=10, help="run the LieGG analysis every this many epochs")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (more only help on idle cores)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.liegg_every = 1
    return args


def _summary(report: Any) -> Dict[str, float]:
    rot, scale = report.known_variances["rotation"], report.known_variances["scaling"]
    return {"symmetry_bias": report.symmetry_bias, "symmetry_variance": report.symmetry_variance,
            "rotation_variance": rot, "scaling_variance": scale, "scaling_over_rotation": scale / rot}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)

    data = RotatedDigits(blur_sigma=args.blur, rotate=not args.no_rotate, seed=args.seed)
    model = DigitMLP(lr=args.lr)
    metric = LieGGMetric(ImageAction(), reference_algebra="rotation", known_generators=["rotation", "scaling"],
                         output_transform=output_transform(args.output_transform))
    liegg = LieGGCallback(metric, every_n_epochs=args.liegg_every, verbose=True)
    name = "rotated_digits" + ("_upright" if args.no_rotate else "")
    logger = TensorBoardLogger(args.log_dir, name=name)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[liegg],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
        accelerator="cpu",
        deterministic=True,
    )
    kind = "upright (control)" if args.no_rotate else "randomly rotated"
    print(f"Rotated digits: {kind} 28x28 digits, MLP 784 -> 128 x 5 -> 10, {args.epochs} epochs, "
          f"seed {args.seed}, LieGG on {args.output_transform}", flush=True)
    # the untrained network first: what the architecture gives before any learning
    trainer.validate(model, datamodule=data, verbose=False)
    initial = _summary(liegg.last_report)
    trainer.fit(model, datamodule=data)
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    wall = time.perf_counter() - start
    report = liegg.last_report
    final = _summary(report)

    print()
    print(f"validation accuracy {val['val_accuracy']:.3f} on {len(data.val_set)} images, wall time {wall:.1f} s")
    print(f"{'':>10} {'symmetry bias':>14} {'rotation var':>13} {'scaling var':>12} {'scaling/rotation':>17}")
    for label, s in (("untrained", initial), ("trained", final)):
        print(f"{label:>10} {s['symmetry_bias']:14.4f} {s['rotation_variance']:13.3e} {s['scaling_variance']:12.3e} "
              f"{s['scaling_over_rotation']:17.1f}")
    g = report.generators[0]
    print(f"most invariant generator [[{g[0, 0]:+.3f}, {g[0, 1]:+.3f}], [{g[1, 0]:+.3f}, {g[1, 1]:+.3f}]] "
          "(a rotation is [[0, -a], [a, 0]])")
    spectrum = " ".join(f"{v:.3g}" for v in report.normalized_variances.tolist())
    print(f"normalized variances of the 4 generators: {spectrum}")
    print(f"TensorBoard logs: {logger.log_dir}")

    result = {
        **final,
        "normalized_variance": float(report.normalized_variances[0]),
        "initial_symmetry_bias": initial["symmetry_bias"],
        "initial_scaling_over_rotation": initial["scaling_over_rotation"],
        "val_accuracy": float(val["val_accuracy"]),
        "rotated": not args.no_rotate,
        "output_transform": args.output_transform,
        "epochs": args.epochs,
        "seed": args.seed,
        "wall_time_s": round(wall, 1),
        "log_dir": logger.log_dir,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
