"""Section 4: what a user feels. Epoch time (train + validation) with and without ``LieGGCallback``.

Two models in the spirit of the examples: the O(5) MLP (10 -> 384 x 3 -> 1, SiLU) on 10,000 samples
(8,000 train, 2,000 validation) and a small CNN on 32 x 32 images (4,000 train, 2,000 validation,
10 classes). Each configuration trains a fresh model (same seed) for a few epochs with a
TensorBoard logger, so the callback's pictures and report files are part of what is timed. Knobs:
``every_n_epochs`` in (1, 5) and ``max_samples`` in (None, 1000); one more run with
``log_images=False`` separates the drawing. The figure is the mean epoch time over the run,
divided by that of the run without the callback.
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any, Callable, Dict, List

import torch
from common import interleaved_medians, paper_mlp, small_cnn, table
from overhead import make_module, make_trainer


def o5_data(n: int, gen: torch.Generator) -> Any:
    """The O(5)-invariant regression: ``sin|r1| - |r2|^3 / 2 + r1.r2 / (|r1||r2|)``."""
    x = torch.randn(n, 10, generator=gen)
    r1, r2 = x[:, :5], x[:, 5:]
    n1, n2 = r1.norm(dim=1), r2.norm(dim=1)
    y = torch.sin(n1) - n2**3 / 2 + (r1 * r2).sum(1) / (n1 * n2)
    return x, y.unsqueeze(1)


def image_data(n: int, gen: torch.Generator, size: int = 32) -> Any:
    """Smooth random 32 x 32 images (blurred noise) with random labels: the content does not matter here."""
    x = torch.randn(n, 1, size, size, generator=gen)
    kernel = torch.ones(1, 1, 5, 5) / 25.0
    x = torch.nn.functional.conv2d(x, kernel, padding=2)
    return x, torch.randint(0, 10, (n,), generator=gen)


def _models(quick: bool) -> List[Dict[str, Any]]:
    from liegg_lightning import ImageAction, VectorAction

    scale = 0.05 if quick else 1.0
    return [
        {"name": "O(5) MLP 10-384x3-1", "net": lambda: paper_mlp(1), "data": o5_data, "task": "regression",
         "train": int(8000 * scale), "val": int(2000 * scale), "batch": 500, "val_batch": 1000,
         "action": lambda: VectorAction(5, components=2), "reference": "so"},
        {"name": "CNN 32x32 K=10", "net": lambda: small_cnn(32), "data": image_data, "task": "classification",
         "train": int(4000 * scale), "val": int(2000 * scale), "batch": 128, "val_batch": 500,
         "action": lambda: ImageAction(), "reference": "rotation"},
    ]


def _configs(quick: bool) -> List[Dict[str, Any]]:
    none: Dict[str, Any] = {"callback": False}
    if quick:
        return [none, {"callback": True, "every_n_epochs": 1, "max_samples": None, "log_images": True}]
    out = [none]
    for every in (1, 5):
        for cap in (None, 1000):
            out.append({"callback": True, "every_n_epochs": every, "max_samples": cap, "log_images": True})
    out.append({"callback": True, "every_n_epochs": 1, "max_samples": None, "log_images": False})
    return out


def _label(cfg: Dict[str, Any]) -> str:
    if not cfg["callback"]:
        return "without callback"
    return (f"every_n_epochs={cfg['every_n_epochs']}, max_samples={cfg['max_samples']}"
            + ("" if cfg["log_images"] else ", log_images=False"))


def run(device: torch.device, quick: bool, repeats: int, log: Callable[[str], None]) -> Dict[str, Any]:
    """Every (model, configuration) pair, interleaved; returns the JSON section."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    try:
        from liegg_lightning import LieGGCallback, LieGGMetric
    except ImportError:
        return {"skipped": "LieGGCallback not importable", "rows": []}
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    epochs = 1 if quick else 5
    reps = 1 if quick else max(2, min(repeats, 3))
    root = tempfile.mkdtemp(prefix="liegg_bench_epoch_")
    rows: List[Dict[str, Any]] = []
    for spec in _models(quick):
        gen = torch.Generator().manual_seed(0)
        x_tr, y_tr = spec["data"](spec["train"], gen)
        x_va, y_va = spec["data"](spec["val"], gen)
        train = DataLoader(TensorDataset(x_tr, y_tr), batch_size=spec["batch"], shuffle=True,
                           generator=torch.Generator().manual_seed(0))
        val = DataLoader(TensorDataset(x_va, y_va), batch_size=spec["val_batch"], shuffle=False)
        variants: Dict[str, Callable[[], Any]] = {}
        for i, cfg in enumerate(_configs(quick)):

            def fit(cfg: Dict[str, Any] = cfg, i: int = i, spec: Dict[str, Any] = spec,
                    train: Any = train, val: Any = val) -> None:
                torch.manual_seed(0)
                module = make_module(spec["net"](), spec["task"]).to(device)
                callbacks = []
                if cfg["callback"]:
                    metric = LieGGMetric(spec["action"](), reference_algebra=spec["reference"])
                    callbacks.append(LieGGCallback(metric, every_n_epochs=cfg["every_n_epochs"],
                                                   max_samples=cfg["max_samples"], log_images=cfg["log_images"]))
                logger = TensorBoardLogger(root, name=f"cfg{i}")
                trainer = make_trainer(device, root, callbacks=callbacks, logger=logger, max_epochs=epochs,
                                       num_sanity_val_steps=0, log_every_n_steps=10)
                trainer.fit(module, train, val)

            variants[_label(cfg)] = fit
        res = interleaved_medians(variants, device, reps, warmup=1 if not quick else 0)
        base = res["without callback"]["median"] / epochs
        for label, r in res.items():
            per_epoch = r["median"] / epochs
            rows.append({"model": spec["name"], "config": label, "epochs": epochs, "epoch_s": per_epoch,
                         "ratio": per_epoch / base, "times": r["times"],
                         "train": spec["train"], "val": spec["val"]})
        log(f"  {spec['name']}: " + ", ".join(f"{r['config']}: {r['ratio']:.2f}" for r in rows
                                             if r["model"] == spec["name"]))
    return {"epochs": epochs, "repeats": reps, "rows": rows}


def render(section: Dict[str, Any]) -> str:
    """Markdown table of the section."""
    if section.get("skipped"):
        return f"\n### 4. Epoch time with monitoring\n\nskipped: {section['skipped']}"
    cols = ["model", "config", "epoch (s)", "/ without"]
    rows = [{"model": r["model"], "config": r["config"], "epoch (s)": r["epoch_s"], "/ without": r["ratio"]}
            for r in section["rows"]]
    title = (f"4. Epoch time (train + validation), mean over {section['epochs']} epochs, "
             f"median of {section['repeats']} runs")
    return table(rows, cols, title)
