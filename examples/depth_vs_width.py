"""Depth against width: are deeper networks better symmetry learners? (the LieGG paper's study on O(5))

MLPs with (about) the same number of parameters but different depth and width are trained on the
O(5)-invariant regression task of ``o5_regression.py``, each for several seeds (the seed sets the
data and the initialisation). ``LieGGCallback`` analyses each trained network on its validation
inputs; the script prints a markdown table of symmetry variance, symmetry bias and test error per
depth, the rank correlation of depth with each measure over all runs, and draws two figures
(measures against depth, and against test error) into one PNG.

Run::

    python examples/depth_vs_width.py                # 6 depths x 5 seeds (about 4 minutes on one CPU core)
    python examples/depth_vs_width.py --quick        # a smoke run of a few seconds

The last line printed is one JSON object with every run's measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from o5_common import (
    O5DataModule,
    O5Regressor,
    count_parameters,
    quiet_lightning,
    set_threads,
    width_for_budget,
)

from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction

MEASURES = ("symmetry_variance", "normalized_variance", "symmetry_bias", "subspace_bias", "test_mse")


def train_one(depth: int, width: int, seed: int, args: argparse.Namespace, sizes: Dict[str, int]) -> Dict[str, Any]:
    """Train one MLP and return its LieGG measures (from the callback's final analysis) and test error."""
    L.seed_everything(seed, verbose=False)
    data = O5DataModule(batch_size=args.batch_size, seed=seed, **sizes)
    model = O5Regressor(width=width, depth=depth, lr=args.lr, weight_decay=args.weight_decay)
    # analyse once, at the last epoch: the study compares trained networks
    liegg = LieGGCallback(LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so"),
                          every_n_epochs=args.epochs, log_images=False)
    logger = TensorBoardLogger(args.log_dir, name="depth_vs_width", version=f"depth{depth}_width{width}_seed{seed}")
    trainer = L.Trainer(
        max_epochs=args.epochs, logger=logger, callbacks=[liegg], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1 if args.quick else 16,
        accelerator="cpu", deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    report = liegg.last_report  # the validation analysis of the trained network (test analyses its own set)
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    if report is None:
        raise RuntimeError("LieGGCallback produced no report.")
    v = report.variances
    return {
        "depth": depth,
        "width": width,
        "params": count_parameters(model),
        "seed": seed,
        "symmetry_variance": report.symmetry_variance,
        "normalized_variance": float(report.normalized_variances[0]),
        "symmetry_bias": report.symmetry_bias,
        "subspace_bias": report.subspace_bias,
        "nullity": report.nullity,
        "variance_gap": float(v[10] / v[9]) if float(v[9]) > 0 else math.inf,
        "test_mse": float(test["test_mse"]),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _rank(values: Sequence[float]) -> List[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of the ranks)."""
    rx, ry = torch.tensor(_rank(x)), torch.tensor(_rank(y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else math.nan


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def markdown_table(runs: List[Dict[str, Any]]) -> str:
    """One row per depth: mean ± standard deviation over seeds."""
    lines = [
        "| depth | width | params | test MSE | symmetry variance | normalized variance | symmetry bias "
        "| subspace bias | nullity = 10 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for depth in sorted({r["depth"] for r in runs}):
        rs = [r for r in runs if r["depth"] == depth]
        cells = [_mean_std([r[m] for r in rs]) for m in MEASURES]
        test, var, nvar, bias, sub = cells[4], cells[0], cells[1], cells[2], cells[3]
        ok = sum(r["nullity"] == 10 for r in rs)
        lines.append(f"| {depth} | {rs[0]['width']} | {rs[0]['params']:,} | {test} | {var} | {nvar} | {bias} | {sub} "
                     f"| {ok}/{len(rs)} |")
    return "\n".join(lines)


def plot(runs: List[Dict[str, Any]], path: str) -> None:
    """Symmetry variance and bias against depth (with widths), and against test error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["depth"] for r in runs})
    widths = [next(r["width"] for r in runs if r["depth"] == d) for d in depths]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for col, measure, label in ((0, "symmetry_variance", "symmetry variance"), (1, "symmetry_bias", "symmetry bias")):
        ax = axes[0, col]
        positions = list(range(len(depths)))  # evenly spaced: the depths' labels must not overlap
        for pos, d in zip(positions, depths):
            ys = [r[measure] for r in runs if r["depth"] == d]
            ax.scatter([pos] * len(ys), ys, color="tab:blue", alpha=0.5, s=18)
        means = [statistics.mean(r[measure] for r in runs if r["depth"] == d) for d in depths]
        ax.plot(positions, means, "o-", color="tab:red", label="mean over seeds")
        ax.set_yscale("log")
        ax.set_xticks(positions)
        ax.set_xticklabels([f"{d}\n(w={w})" for d, w in zip(depths, widths)])
        ax.set_xlabel("depth (width)")
        ax.set_ylabel(label)
        ax.legend()
        ax = axes[1, col]
        sc = ax.scatter([r["test_mse"] for r in runs], [r[measure] for r in runs], c=[r["depth"] for r in runs],
                        cmap="viridis", s=30)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("test MSE")
        ax.set_ylabel(label)
        fig.colorbar(sc, ax=ax, label="depth")
    params = sorted({r["params"] for r in runs})
    fig.suptitle(f"O(5) regression, MLPs of {params[0]:,}-{params[-1]:,} parameters")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=100, help="training epochs per network")
    p.add_argument("--seed", type=int, default=0, help="first seed; runs use seed, seed+1, ...")
    p.add_argument("--seeds", type=int, default=5, help="seeds per depth")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8], help="hidden-layer counts")
    p.add_argument("--budget", type=int, default=50_000, help="target number of parameters of every MLP")
    p.add_argument("--quick", action="store_true", help="a very short smoke run (2 depths, 1 seed, 2 epochs)")
    p.add_argument("--log-dir", default="lightning_logs", help="TensorBoard log directory")
    p.add_argument("--plot", default=None, help="where to write the PNG (default: <log-dir>/depth_vs_width.png)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (more only help on idle cores)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.depths, args.budget = min(args.epochs, 2), 1, [1, 3], 2000
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    quiet_lightning()
    set_threads(args.threads)
    start = time.perf_counter()
    sizes = {"num_train": 1000, "num_val": 200, "num_test": 200} if args.quick else {}
    configs = [(d, width_for_budget(d, args.budget)) for d in args.depths]
    print(f"Depth vs width on O(5): about {args.budget:,} parameters, depths {args.depths}, {args.seeds} seeds, "
          f"{args.epochs} epochs each", flush=True)
    runs = []
    for depth, width in configs:
        for i in range(args.seeds):
            run = train_one(depth, width, args.seed + i, args, sizes)
            runs.append(run)
            print(f"  depth {depth} width {width:5d} ({run['params']:,} params) seed {run['seed']}: "
                  f"test MSE {run['test_mse']:.4f}  symmetry variance {run['symmetry_variance']:.3e}  "
                  f"bias {run['symmetry_bias']:.4f}  subspace bias {run['subspace_bias']:.4f}  "
                  f"nullity {run['nullity']}  ({run['seconds']:.0f} s)", flush=True)
    table = markdown_table(runs)
    correlations = {m: spearman([r["depth"] for r in runs], [r[m] for r in runs]) for m in MEASURES}
    # the same without the shallowest networks, whose poor fit can dominate the trend on its own
    deeper = [r for r in runs if r["depth"] > min(args.depths)]
    correlations_deeper = {m: spearman([r["depth"] for r in deeper], [r[m] for r in deeper]) for m in MEASURES}
    plot_path = args.plot or os.path.join(args.log_dir, "depth_vs_width.png")
    plot(runs, plot_path)
    wall = time.perf_counter() - start

    print()
    print(table)
    print()
    print("Spearman rank correlation with depth over all runs (negative: deeper is lower):")
    print("  " + ", ".join(f"{m} {c:+.2f}" for m, c in correlations.items()))
    print(f"  without depth {min(args.depths)}: "
          + ", ".join(f"{m} {c:+.2f}" for m, c in correlations_deeper.items())
          + ("  (one depth left: no correlation)" if len({r["depth"] for r in deeper}) < 2 else ""))
    print(f"figure: {plot_path}; wall time {wall:.0f} s")
    def finite(d: Dict[str, float]) -> Dict[str, Optional[float]]:  # strict JSON has no NaN
        return {k: (v if math.isfinite(v) else None) for k, v in d.items()}

    result = {"runs": runs, "spearman_with_depth": finite(correlations),
              f"spearman_with_depth_above_{min(args.depths)}": finite(correlations_deeper), "table": table,
              "plot": plot_path,
              "epochs": args.epochs, "budget": args.budget, "wall_time_s": round(wall, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
