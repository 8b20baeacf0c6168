"""Symmetries beyond matrix groups: a nonlinear vector field and discrete transformations.

1. **The quartic oscillator.** An MLP learns the energy ``H(q, p) = p^2 / 2 + q^4 / 4`` of points of
   phase space. Its time evolution, the flow of the Hamiltonian field ``X_H = p ∂q - q^3 ∂p``,
   conserves ``H``, so a network that learned ``H`` is invariant to it; no affine generator
   expresses it. ``LieGGCallback(VectorFieldAction(dim=2, degree=3))`` searches the 20 polynomial
   fields of degree <= 3 while it trains on points of the box [-1.5, 1.5]^2; after training the
   most invariant field over 1,000 validation points is compared with ``X_H`` on 1,000 held-out
   points (a cosine), and the nullity and the spectrum's gaps are printed as they are.
2. **Rotated digits, finite transformations.** The classifier of ``rotated_digits.py`` (trained on
   randomly rotated digits) is asked, with ``known_transforms``, how much its log-probabilities
   change under a horizontal flip, a vertical flip, a 90° turn and a 30° turn:
   ``E||F(g x) - F(x)||^2 / E||F(x) - E F(x)||^2``, 0 for invariance, about 2 for a map unrelated
   to the output. The untrained network is measured too.

Run::

    python examples/nonlinear.py          # the full run
    python examples/nonlinear.py --quick  # a smoke run of a few seconds

The last line printed is one JSON object with the measures. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Dict, List, Optional

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from o5_common import quiet_lightning, set_threads
from rotated_digits import DigitMLP, RotatedDigits, rotate
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from liegg_lightning import ImageAction, LieGGCallback, VectorFieldAction, analyze, transforms

#: Points of phase space are drawn uniformly from [-BOX, BOX]^2.
BOX = 1.5


def energy(z: Tensor) -> Tensor:
    """The quartic oscillator's energy ``p^2 / 2 + q^4 / 4`` of points ``(q, p)``, as ``(N, 1)``."""
    return (z[:, 1] ** 2 / 2 + z[:, 0] ** 4 / 4).unsqueeze(1)


def hamiltonian_field(z: Tensor) -> Tensor:
    """``X_H = (dH/dp, -dH/dq) = (p, -q^3)`` at points ``(q, p)``."""
    return torch.stack([z[:, 1], -z[:, 0] ** 3], 1)


class EnergyMLP(L.LightningModule):
    """2 -> width x depth -> 1 MLP (SiLU) regressing the energy."""

    def __init__(self, width: int = 64, depth: int = 3, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: List[nn.Module] = []
        cin = 2
        for _ in range(depth):
            layers += [nn.Linear(cin, width), nn.SiLU()]
            cin = width
        layers.append(nn.Linear(cin, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        z, h = batch
        loss = F.mse_loss(self(z), h)
        self.log("train_mse", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        z, h = batch
        self.log("val_mse", F.mse_loss(self(z), h))

    def configure_optimizers(self):  # noqa: ANN201 - Lightning accepts several return types
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": opt, "lr_scheduler": {
            "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps), "interval": "step"}}


def _trainer(epochs: int, callbacks: List[Any]) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, logger=False, callbacks=callbacks, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", deterministic=True)


def oscillator(args: argparse.Namespace) -> Dict[str, Any]:
    """Train on the energy, find the most invariant polynomial field, compare it with ``X_H``."""
    gen = torch.Generator().manual_seed(args.seed)
    # uniform on the box [-1.5, 1.5]^2: where q^4 stays learnable (Gaussian tails left it badly fitted)
    train, val, held_out = ((torch.rand(n, 2, generator=gen) * 2 - 1) * BOX for n in (args.train_points, 1000, 1000))
    model = EnergyMLP()
    action = VectorFieldAction(dim=2, degree=3, coordinates=["q", "p"])
    liegg = LieGGCallback(action, reference_algebra=[hamiltonian_field],
                          known_generators={"X_H": hamiltonian_field}, log_images=False)
    trainer = _trainer(args.epochs, [liegg])
    trainer.fit(model, DataLoader(TensorDataset(train, energy(train)), batch_size=250, shuffle=True),
                DataLoader(TensorDataset(val, energy(val)), batch_size=1000))
    val_mse = trainer.validate(model, DataLoader(TensorDataset(val, energy(val)), batch_size=1000),
                               verbose=False)[0]["val_mse"]
    # the callback analysed a budgeted share of the validation points; the final report uses all of them
    report = analyze(model, val, action, reference_algebra=[hamiltonian_field],
                     known_generators={"X_H": hamiltonian_field})
    found = action.field(report.generators[0], held_out.double()).flatten()
    truth = hamiltonian_field(held_out.double()).flatten()
    cosine = abs(float(found @ truth / (found.norm() * truth.norm())))
    v = report.variances
    print(f"oscillator: validation MSE {val_mse:.2e} (energy variance {float(energy(val).var()):.2f})")
    print(f"  most invariant field  {action.describe(report.generators[0], terms=4)}")
    print("  X_H = p ∂q - q^3 ∂p  (in the library's scaled columns: 0.25 p ∂q - 0.97 q^3 ∂p, up to sign)")
    print(f"  |cosine| with X_H on 1,000 held-out points {cosine:.4f}; symmetry bias {report.symmetry_bias:.4f}")
    print(f"  variances {' '.join(f'{x:.2e}' for x in v[:5].tolist())} ...; gap v[1]/v[0] = "
          f"{float(v[1] / v[0]):.1f}x, v[2]/v[1] = {float(v[2] / v[1]):.1f}x")
    print(f"  nullity {report.nullity} on {report.num_samples} points (the default asks for a 10x gap, with two "
          "jackknife standard errors to spare)")
    return {
        "oscillator_cosine": cosine,
        "oscillator_symmetry_bias": float(report.symmetry_bias),
        "oscillator_nullity": report.nullity,
        "oscillator_gap": float(v[1] / v[0]),
        "oscillator_next_gap": float(v[2] / v[1]),
        "oscillator_variance_X_H": report.known_variances["X_H"],
        "oscillator_symmetry_variance": report.symmetry_variance,
        "oscillator_val_mse": float(val_mse),
    }


def _turn(angle: float):  # noqa: ANN202 - a map of a batch of images
    def turned(x: Tensor) -> Tensor:
        return rotate(x, torch.full((x.shape[0],), angle, dtype=x.dtype, device=x.device))

    return turned


def digits(args: argparse.Namespace) -> Dict[str, Any]:
    """Train the rotated-digits classifier; measure its finite transformation errors before and after."""
    data = RotatedDigits(seed=args.seed)
    data.setup()
    val_x = data.val_set.tensors[0]  # type: ignore[union-attr]
    maps = {**transforms.image_transforms(), "rotation_30deg": _turn(math.radians(30))}
    model = DigitMLP()
    logp = nn.LogSoftmax(dim=1)

    def measure() -> Dict[str, Any]:
        r = analyze(model, val_x, ImageAction(), known_transforms=maps, output_transform=logp)
        return {name: (r.transform_errors[name], r.transform_errors_stderr[name]) for name in maps}

    before = measure()
    trainer = _trainer(args.digit_epochs, [])
    trainer.fit(model, datamodule=data)
    after = measure()
    print(f"rotated digits ({args.digit_epochs} epochs): transform error E||F(gx)-F(x)||^2 / E||F-EF||^2 "
          "of the log-probabilities, ± jackknife standard error")
    print(f"  {'':>15} {'untrained':>16} {'trained':>16}")
    for name in maps:
        (b, b_err), (a, a_err) = before[name], after[name]
        print(f"  {name:>15} {b:9.3f} ± {b_err:.3f} {a:9.3f} ± {a_err:.3f}")
    out: Dict[str, Any] = {}
    for name in maps:
        out[f"digits_{name}"] = after[name][0]
        out[f"digits_{name}_stderr"] = after[name][1]
        out[f"digits_{name}_untrained"] = before[name][0]
    return out


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=150, help="oscillator training epochs")
    p.add_argument("--train-points", type=int, default=4000, help="oscillator training points")
    p.add_argument("--digit-epochs", type=int, default=150, help="rotated-digits training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a very short smoke run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.digit_epochs, args.train_points = 3, 2, 1000
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)
    result = oscillator(args)
    L.seed_everything(args.seed, verbose=False)
    result.update(digits(args))
    result.update({"seed": args.seed, "epochs": args.epochs, "digit_epochs": args.digit_epochs,
                   "wall_time_s": round(time.perf_counter() - start, 1)})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
