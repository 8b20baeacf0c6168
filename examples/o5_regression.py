"""O(5)-invariant regression (the LieGG paper's first experiment), watched by ``LieGGCallback``.

An MLP learns ``f(r1, r2) = sin|r1| - |r2|^3/2 + r1.r2/(|r1||r2|)`` for ``r1, r2`` in ``R^5``.
The target is invariant to ``O(5)`` acting on both vectors at once, so a network that has learned
the task should be (nearly) invariant to the ten generators of ``so(5)`` inside the 25 of
``gl(5)``. The callback finds them from the validation inputs while the network trains and logs
the symmetry variance and bias to TensorBoard.

Run::

    python examples/o5_regression.py                 # the full run (about 30 s on one CPU core)
    python examples/o5_regression.py --quick         # a smoke run of a few seconds
    tensorboard --logdir lightning_logs

The last line printed is one JSON object with the final measures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any, Dict, List, Optional

import lightning.pytorch as L
from lightning.pytorch.loggers import TensorBoardLogger
from o5_common import O5DataModule, O5Regressor, count_parameters, quiet_lightning, set_threads

from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=100, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation")
    p.add_argument("--quick", action="store_true", help="a very short smoke run (small data, small model, 2 epochs)")
    p.add_argument("--log-dir", default="lightning_logs", help="TensorBoard log directory")
    p.add_argument("--width", type=int, default=384, help="hidden units per layer")
    p.add_argument("--depth", type=int, default=3, help="hidden layers")
    p.add_argument("--activation", default="silu", choices=["silu", "relu", "tanh", "gelu"])
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine-annealed per step)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--liegg-every", type=int, default=10, help="run the LieGG analysis every this many epochs")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (more only help on idle cores)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.width = min(args.width, 64)
        args.liegg_every = 1
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    start = time.perf_counter()
    L.seed_everything(args.seed, verbose=False)

    sizes = {"num_train": 1000, "num_val": 200, "num_test": 200} if args.quick else {}
    data = O5DataModule(batch_size=args.batch_size, seed=args.seed, **sizes)
    model = O5Regressor(width=args.width, depth=args.depth, activation=args.activation, lr=args.lr,
                        weight_decay=args.weight_decay)
    liegg = LieGGCallback(LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so"),
                          every_n_epochs=args.liegg_every, log_generators=4, verbose=True)
    logger = TensorBoardLogger(args.log_dir, name="o5_regression")
    trainer = L.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[liegg],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=4 if args.quick else 16,
        accelerator="cpu",
        deterministic=True,
    )
    print(f"O(5) regression: MLP 10 -> {args.width} x {args.depth} -> 1 ({count_parameters(model):,} parameters), "
          f"{args.epochs} epochs, seed {args.seed}", flush=True)
    trainer.fit(model, datamodule=data)
    # one more analysis of the final model, on the whole validation split
    val = trainer.validate(model, datamodule=data, verbose=False)[0]
    report = liegg.last_report  # the final model on the validation split (test() analyses the test split)
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    wall = time.perf_counter() - start

    if report is None:
        raise RuntimeError("LieGGCallback produced no report.")
    v = report.variances
    gap = float(v[10] / v[9]) if float(v[9]) > 0 else math.inf
    print()
    print(f"test MSE {test['test_mse']:.4f} (target variance {data.target_stats()[1] ** 2:.2f}), "
          f"val MSE {val['val_mse']:.4f}, wall time {wall:.1f} s")
    print(f"LieGG on {report.num_samples} validation inputs: nullity {report.nullity} (so(5) has 10)")
    print("  10 smallest symmetry variances: " + " ".join(f"{x:.2e}" for x in v[:10].tolist()))
    print(f"  next one: {float(v[10]):.2e}  -> gap variances[10]/variances[9] = {gap:.0f}x")
    print(f"  symmetry variance {report.symmetry_variance:.3e}, symmetry bias {report.symmetry_bias:.4f}, "
          f"subspace bias {report.subspace_bias:.4f}, closure error {report.closure_error:.4f}")
    print("  most invariant generator (rows of a 5x5 matrix; so(5) generators are antisymmetric):")
    for row in report.generators[0].tolist():
        print("    " + " ".join(f"{x:+.3f}" for x in row))
    print(f"TensorBoard logs: {logger.log_dir}")

    result = {
        "symmetry_variance": report.symmetry_variance,
        "symmetry_bias": report.symmetry_bias,
        "subspace_bias": report.subspace_bias,
        "nullity": report.nullity,
        "closure_error": report.closure_error,
        "variance_gap": gap,
        "normalized_variance": float(report.normalized_variances[0]),
        "test_mse": float(test["test_mse"]),
        "val_mse": float(val["val_mse"]),
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
