"""Lorentz-invariant regression: an MLP learns a pair's invariant mass, and LieGG finds so(1, 3).

Two particles with 4-momenta ``p_i = (E_i, px_i, py_i, pz_i)`` (natural units, time first,
metric diag(+1, -1, -1, -1)). Each has a mass ``m_i`` drawn uniformly from [0.5, 1.5] and a
3-momentum drawn from an isotropic Gaussian (standard deviation 1 per component), and is on its
mass shell, ``E_i = sqrt(m_i^2 + |p_i|^2)``. The target is the pair's invariant mass

    M = sqrt((E_1 + E_2)^2 - |p_1 + p_2|^2),

unchanged when the same Lorentz transformation (rotation or boost) acts on both 4-momenta. An MLP
8 -> 128 x 3 -> 1 learns it while ``LieGGCallback(VectorAction(dim=4, components=2),
reference_algebra="lorentz")`` watches: the six generators of so(1, 3) (three rotations, three
boosts) inside the 16 of gl(4).

What the network can learn and what it cannot: rotations map this data set onto itself (the
momenta are isotropic), so the network sees every orientation. Boosts do not: no normalisable
distribution of momenta is boost-invariant, and the sampled particles have rapidities
``artanh(|p|/E)`` (along their own direction of flight) from 0 to about 2.8, median 1.2, 99 % below
2.3 (printed below). The network meets the invariance along a
boost only where the data are, and nothing makes it hold for an event boosted beyond them. The
script therefore also analyses the test events after boosting each one as a whole along z by
rapidity 1 and 2 (the target does not change): the error and the boost variances there say how
far the learned symmetry reaches.

Run::

    python examples/lorentz.py                 # the full run (about 15 s on one CPU thread, imports included)
    python examples/lorentz.py --quick         # a smoke run of a few seconds
    tensorboard --logdir lightning_logs

The last line printed is one JSON object with the final measures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from o5_common import O5DataModule, O5Regressor, count_parameters, quiet_lightning, set_threads
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from liegg_lightning import LieGGCallback, LieGGMetric, SymmetryReport, VectorAction, analyze

ROTATIONS = ["rotation_x", "rotation_y", "rotation_z"]
BOOSTS = ["boost_x", "boost_y", "boost_z"]
ETA = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64))


def invariant_mass(x: Tensor) -> Tensor:
    """The pair's invariant mass ``(N, 1)`` of two 4-momenta ``(N, 8)`` (E, px, py, pz each)."""
    total = x.reshape(x.shape[0], 2, 4).sum(1)
    s = (total @ ETA.to(x.dtype) * total).sum(1)
    return s.clamp_min(0.0).sqrt().unsqueeze(1)


def make_lorentz_data(num_samples: int, seed: int) -> Tuple[Tensor, Tensor]:
    """``num_samples`` on-shell pairs ``(N, 8)`` (float32) and their invariant masses ``(N, 1)``, seeded."""
    gen = torch.Generator().manual_seed(int(seed))
    mass = 0.5 + torch.rand(num_samples, 2, 1, generator=gen, dtype=torch.float64)
    momentum = torch.randn(num_samples, 2, 3, generator=gen, dtype=torch.float64)
    energy = (mass**2 + momentum.pow(2).sum(-1, keepdim=True)).sqrt()
    x = torch.cat([energy, momentum], dim=-1).reshape(num_samples, 8)
    return x.float(), invariant_mass(x).float()


def rapidities(x: Tensor) -> Tensor:
    """Each particle's rapidity ``artanh(|p| / E)`` (along its own direction), ``(N, 2)``."""
    p = x.double().reshape(x.shape[0], 2, 4)
    return torch.atanh(p[..., 1:].norm(dim=-1) / p[..., 0])


def boost_z(x: Tensor, rapidity: float) -> Tensor:
    """Both 4-momenta of every event boosted along z by ``rapidity``."""
    c, s = math.cosh(rapidity), math.sinh(rapidity)
    lam = torch.eye(4, dtype=torch.float64)
    lam[0, 0] = lam[3, 3] = c
    lam[0, 3] = lam[3, 0] = s
    p = x.double().reshape(x.shape[0], 2, 4) @ lam.T
    return p.reshape(x.shape).to(x.dtype)


class LorentzDataModule(O5DataModule):
    """Train/val/test splits of pairs of 4-momenta and their invariant mass, generated from ``seed``."""

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        x, y = make_lorentz_data(self.num_train + self.num_val + self.num_test, self.seed)
        a, b = self.num_train, self.num_train + self.num_val
        self.splits = {
            "train": TensorDataset(x[:a], y[:a]),
            "val": TensorDataset(x[a:b], y[a:b]),
            "test": TensorDataset(x[b:], y[b:]),
        }


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=60, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation")
    p.add_argument("--quick", action="store_true", help="a very short smoke run (small data, small model, 2 epochs)")
    p.add_argument("--log-dir", default="lightning_logs", help="TensorBoard log directory")
    p.add_argument("--width", type=int, default=128, help="hidden units per layer")
    p.add_argument("--depth", type=int, default=3, help="hidden layers")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine-annealed per step)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--liegg-every", type=int, default=10, help="run the LieGG analysis every this many epochs")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (more only help on idle cores)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.width = min(args.width, 32)
        args.liegg_every = 1
    return args


def mean_known(report: SymmetryReport, names: List[str]) -> float:
    return sum(report.known_variances[n] for n in names) / len(names)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)

    sizes = {"num_train": 1000, "num_val": 200, "num_test": 200} if args.quick else \
        {"num_train": 5000, "num_val": 1000, "num_test": 1000}
    data = LorentzDataModule(batch_size=args.batch_size, seed=args.seed, **sizes)
    # an MLP 8 -> width x depth -> 1 on two 4-momenta: the input divided by one scalar (a Lorentz
    # transformation commutes with it), the output de-standardised; Adam, cosine-annealed per step
    model = O5Regressor(width=args.width, depth=args.depth, lr=args.lr, weight_decay=0.0, in_dim=8)
    action = VectorAction(dim=4, components=2)
    known = ROTATIONS + BOOSTS
    liegg = LieGGCallback(LieGGMetric(action, reference_algebra="lorentz", known_generators=known),
                          every_n_epochs=args.liegg_every, max_samples=None, log_generators=6, verbose=True)
    logger = TensorBoardLogger(args.log_dir, name="lorentz")
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[liegg],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=4 if args.quick else 20,
        accelerator="cpu",
        deterministic=True,
    )
    data.setup()
    rap = rapidities(data.splits["train"].tensors[0]).flatten()
    q = torch.quantile(rap, torch.tensor([0.5, 0.99], dtype=torch.float64)).tolist()
    print(f"Lorentz regression: MLP 8 -> {args.width} x {args.depth} -> 1 ({count_parameters(model):,} parameters), "
          f"{args.epochs} epochs, seed {args.seed}; particle rapidities: median {q[0]:.2f}, 99 % below {q[1]:.2f}, "
          f"max {float(rap.max()):.2f}", flush=True)
    trainer.fit(model, datamodule=data)
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    report = liegg.last_report  # the final model on the validation split
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    if report is None:
        raise RuntimeError("LieGGCallback produced no report.")

    # how far does the learned symmetry reach? the test events boosted as a whole along z
    x_test, y_test = data.splits["test"].tensors
    model.eval()
    boosted: Dict[str, Dict[str, float]] = {}
    for y in (0.0, 1.0, 2.0):
        xb = boost_z(x_test, y)
        with torch.no_grad():
            mse = float(nn.functional.mse_loss(model(xb), y_test))
        rep = analyze(model, xb, action, reference_algebra="lorentz", known_generators=known)
        boosted[f"{y:g}"] = {"mse": mse, "rotation_variance": mean_known(rep, ROTATIONS),
                             "boost_variance": mean_known(rep, BOOSTS), "subspace_bias": rep.subspace_bias,
                             "variance_gap": float(rep.variances[6] / rep.variances[5])}
    wall = time.perf_counter() - start

    v = report.variances
    gap = float(v[6] / v[5]) if float(v[5]) > 0 else math.inf
    print()
    print(f"test MSE {test['test_mse']:.5f} (target std {data.target_stats()[1]:.2f}), val MSE {val['val_mse']:.5f}, "
          f"wall time {wall:.1f} s")
    print(f"LieGG on {report.num_samples} validation inputs: nullity {report.nullity} (so(1,3) has 6)")
    print("  6 smallest symmetry variances: " + " ".join(f"{x:.2e}" for x in v[:6].tolist()))
    print(f"  next one: {float(v[6]):.2e}  -> gap variances[6]/variances[5] = {gap:.0f}x")
    print(f"  symmetry bias {report.symmetry_bias:.4f}, subspace bias {report.subspace_bias:.4f}, "
          f"closure error {report.closure_error:.4f}")
    print(f"  mean variance of the rotations {mean_known(report, ROTATIONS):.2e}, of the boosts "
          f"{mean_known(report, BOOSTS):.2e}, of gl(4) {float(v.mean()):.2e}")
    print("  most invariant generator (rows of a 4x4 matrix; so(1,3): eta h antisymmetric):")
    for row in report.generators[0].tolist():
        print("    " + " ".join(f"{x:+.3f}" for x in row))
    print("test events boosted along z (target unchanged; never seen in training):")
    for y, b in boosted.items():
        print(f"  rapidity {y}: MSE {b['mse']:.5f}, rotation variance {b['rotation_variance']:.2e}, "
              f"boost variance {b['boost_variance']:.2e}, gap {b['variance_gap']:.0f}x, "
              f"subspace bias {b['subspace_bias']:.3f}")
    print(f"TensorBoard logs: {logger.log_dir}")

    result = {
        "symmetry_variance": report.symmetry_variance,
        "symmetry_bias": report.symmetry_bias,
        "subspace_bias": report.subspace_bias,
        "nullity": report.nullity,
        "closure_error": report.closure_error,
        "variance_gap": gap,
        "rotation_variance": mean_known(report, ROTATIONS),
        "boost_variance": mean_known(report, BOOSTS),
        "test_mse": float(test["test_mse"]),
        "val_mse": float(val["val_mse"]),
        "boosted": boosted,
        "rapidity_median": q[0],
        "rapidity_q99": q[1],
        "num_parameters": count_parameters(model),
        "epochs": args.epochs,
        "seed": args.seed,
        "wall_time_s": round(wall, 1),
        "log_dir": logger.log_dir,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
