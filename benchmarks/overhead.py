"""Section 1: what monitoring costs on top of the derivatives it cannot avoid.

For each case the same validation batches go through:

* the *derivative floor*: the cheapest of K reverse passes (a loop of ``torch.autograd.grad`` or
  ``vmap(jacrev)``) and m forward passes (``vmap`` of ``torch.func.jvp`` over precomputed
  tangents): per-sample input gradients or JVPs only, no rows, no Gram matrix;
* the engine alone: ``LieGGMetric.update`` over the batches;
* ``Trainer.validate`` without and with ``LieGGCallback``.

Reported ratios: ``engine / floor`` and ``(validate with - validate without) / floor``; the goal
is <= 1.1. A breakdown of the engine's time (derivative pass, row formation, Gram update, the
one-off "auto" decision) says where any excess goes.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
from common import floor_forward, floor_variants, interleaved_medians, paper_mlp, small_cnn, table, timed
from torch import Tensor, nn

GOAL = 1.1


def _callback_class() -> Optional[type]:
    try:
        from liegg_lightning import LieGGCallback
    except ImportError:
        try:
            from liegg_lightning.callback import LieGGCallback
        except ImportError:
            return None
    return LieGGCallback


def _cases(quick: bool) -> List[Dict[str, Any]]:
    from liegg_lightning import ImageAction, VectorAction

    n_mlp, n_cnn = (256, 256) if quick else (4096, 2048)
    return [
        {"case": "MLP 10-384x3-1, VectorAction(5,2)", "model": lambda: paper_mlp(1),
         "action": VectorAction(5, components=2), "shape": (10,), "n": n_mlp, "task": "regression"},
        {"case": "MLP 10-384x3-10, VectorAction(5,2)", "model": lambda: paper_mlp(10),
         "action": VectorAction(5, components=2), "shape": (10,), "n": n_mlp, "task": "regression"},
        {"case": "CNN 28x28 K=10, ImageAction()", "model": lambda: small_cnn(28),
         "action": ImageAction(), "shape": (1, 28, 28), "n": n_cnn, "task": "classification"},
    ]


def make_module(net: nn.Module, task: str) -> Any:
    """A minimal LightningModule around ``net``: validation computes and logs a loss."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

        def _loss(self, batch: Any) -> Tensor:
            x, y = batch
            out = self(x)
            if task == "classification":
                return nn.functional.cross_entropy(out, y)
            return nn.functional.mse_loss(out, y)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            loss = self._loss(batch)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return Module()


def make_trainer(device: torch.device, root: str, callbacks: Optional[list] = None, **kwargs: Any) -> Any:
    """A quiet Trainer: no progress bar, summary, checkpoints; ``logger=False`` unless given."""
    import lightning.pytorch as pl

    # lightning sets its loggers to INFO when imported: its banners and tips would interleave the tables
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    opts: Dict[str, Any] = {
        "accelerator": "gpu" if device.type == "cuda" else "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": root,
        "callbacks": callbacks or [],
    }
    opts.update(kwargs)
    return pl.Trainer(**opts)


def _targets(n: int, out: int, task: str, gen: torch.Generator) -> Tensor:
    if task == "classification":
        return torch.randint(0, out, (n,), generator=gen)
    return torch.randn(n, out, generator=gen)


def _forward_rows_no_grad(model: Callable[[Tensor], Tensor], x: Tensor, action: Any) -> Tensor:
    """``forward_rows`` ("jacobian" mode) re-done here under ``no_grad``, without a backward graph.

    It was the proposal for the engine's forward mode; the engine now runs its JVPs under
    ``no_grad`` too, so this stage and the engine's derivative stage should time alike. The stage
    keeps its name ("proposal: ...") so that older result files stay comparable.
    """
    with torch.inference_mode(False), torch.no_grad():
        xd = x.detach().clone()
        tangents = action.tangents(xd).to(xd.dtype)
        jvps = floor_forward(model, xd, tangents)
        return jvps.permute(1, 2, 0).to(torch.float64)


def _stages(metric: Any, model: Callable[[Tensor], Tensor], batches: List[Tensor]) -> Dict[str, Callable[[], Any]]:
    """The engine's stages over all batches as callables, each fed precomputed inputs."""
    from liegg_lightning.functional.polarization import forward_rows, input_gradients

    action = metric.action
    mode = metric._resolved_derivative or "reverse"
    stages: Dict[str, Callable[[], Any]] = {}
    if mode == "forward":
        rows = [forward_rows(model, x, action) for x in batches]
        stages["tangents (action.tangents)"] = lambda: [action.tangents(x) for x in batches]
        stages["derivative (forward_rows: tangents + jvp + float64)"] = lambda: [
            forward_rows(model, x, action) for x in batches
        ]
        stages["proposal: forward_rows with the jvp under no_grad"] = lambda: [
            _forward_rows_no_grad(model, x, action) for x in batches
        ]
    else:
        grads = [input_gradients(model, x) for x in batches]
        rows = [action.rows(x, g) for x, g in zip(batches, grads)]
        stages["derivative (input_gradients)"] = lambda: [input_gradients(model, x) for x in batches]
        stages["float64 cast of the gradients"] = lambda: [g.to(torch.float64) for g in grads]
        stages["rows (action.rows, float64)"] = lambda: [action.rows(x, g) for x, g in zip(batches, grads)]
    stages["gram (metric.update_rows)"] = lambda: [metric.update_rows(r) for r in rows]
    return stages


def _solve(metric: Any) -> Any:
    """What ``metric.compute()`` does, without TorchMetrics' cache of the last result."""
    from liegg_lightning.functional.symmetry import _symmetry_compute as build_report

    return build_report(metric.gram, int(metric.num_samples), int(metric.num_rows), int(metric.num_skipped),
                        metric.action, reference=metric.reference, known=metric.known)


def _measure_case(spec: Dict[str, Any], device: torch.device, quick: bool, repeats: int, root: str,
                  callback_cls: Optional[type]) -> Dict[str, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    from liegg_lightning import LieGGMetric

    batch_size = 128 if quick else 256
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = spec["model"]().to(device)
    module = make_module(net, spec["task"]).to(device)
    module.eval()
    action = spec["action"]
    n = spec["n"]
    x_all = torch.randn(n, *spec["shape"], generator=gen)
    with torch.no_grad():
        k = net(x_all[:1].to(device)).reshape(1, -1).shape[1]
    y_all = _targets(n, k, spec["task"], gen)
    batches = [x.to(device) for x in x_all.split(batch_size)]
    tangents = [action.tangents(x) for x in batches]
    row: Dict[str, Any] = {"case": spec["case"], "K": k, "m": action.num_generators, "N": n,
                           "batch_size": batch_size}

    # which floor candidate wins: one timing each after a warm-up, then repeats for those near the best
    candidates = floor_variants(module, batches, tangents)
    for fn in candidates.values():
        fn()
    first = {name: timed(fn, device) for name, fn in candidates.items()}
    best = min(first.values())
    kept = {name: fn for name, fn in candidates.items() if first[name] <= 1.5 * best}
    row["floor_candidates_single_s"] = first

    metric = LieGGMetric(action).to(device)

    def engine() -> None:
        for x in batches:
            metric.update(module, x)

    variants: Dict[str, Callable[[], Any]] = dict(kept)
    variants["engine"] = engine
    try:
        stages = _stages(metric, module, batches)
    except Exception as err:  # the engine's internals may move: keep the section's other numbers
        stages = {}
        row["breakdown_error"] = repr(err)
    variants.update({"stage: " + name: fn for name, fn in stages.items()})
    if callback_cls is not None:
        loader = DataLoader(TensorDataset(x_all, y_all), batch_size=batch_size, shuffle=False)
        plain = make_trainer(device, root)
        watched = make_trainer(device, root, callbacks=[callback_cls(action)])
        def validate(trainer: Any, data: DataLoader) -> None:
            trainer.validate(module, data, verbose=False)
            module.to(device)  # Lightning hands an accelerator's model back on the CPU at teardown

        variants["validate_without"] = lambda: validate(plain, loader)
        variants["validate_with"] = lambda: validate(watched, loader)
        # the callback's fixed cost per epoch (solve, logging, history), seen on a one-sample epoch
        tiny = DataLoader(TensorDataset(x_all[:1], y_all[:1]), batch_size=1)
        variants["validate_without_1_sample"] = lambda: validate(plain, tiny)
        variants["validate_with_1_sample"] = lambda: validate(watched, tiny)
    res = interleaved_medians(variants, device, repeats)
    floors = {name: res[name]["median"] for name in kept}
    floor_name = min(floors, key=floors.__getitem__)
    floor = floors[floor_name]
    floor_min = min(res[name]["min"] for name in kept)
    row.update(floor_s=floor, floor_kind=floor_name.replace("floor_", ""), floors_s=floors,
               engine_s=res["engine"]["median"], engine_ratio=res["engine"]["median"] / floor,
               engine_ratio_of_minima=res["engine"]["min"] / floor_min,
               derivative_mode=metric._resolved_derivative, times=res)
    if callback_cls is not None:
        extra = res["validate_with"]["median"] - res["validate_without"]["median"]
        extra_min = res["validate_with"]["min"] - res["validate_without"]["min"]
        fixed = res["validate_with_1_sample"]["median"] - res["validate_without_1_sample"]["median"]
        row.update(validate_without_s=res["validate_without"]["median"],
                   validate_with_s=res["validate_with"]["median"], callback_extra_s=extra,
                   callback_ratio=extra / floor, callback_ratio_of_minima=extra_min / floor_min,
                   callback_fixed_per_epoch_s=fixed, callback_ratio_without_fixed=(extra - fixed) / floor)
    else:
        row["callback_ratio"] = None
        row["callback_note"] = "LieGGCallback not importable: callback rows skipped"
    breakdown = {name: res["stage: " + name]["median"] for name in stages}
    compute = interleaved_medians({"compute": lambda: _solve(metric)}, device, repeats)["compute"]["median"]
    breakdown["compute() (eigh + report, once per epoch)"] = compute
    with torch.no_grad():
        once = timed(lambda: module(batches[0][:1]), device)
    breakdown["auto decision (one 1-sample forward, once per metric)"] = once
    row["breakdown_s"] = breakdown
    return row


def run(device: torch.device, quick: bool, repeats: int, log: Callable[[str], None]) -> Dict[str, Any]:
    """Measure every case; returns the JSON section."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    callback_cls = _callback_class()
    root = tempfile.mkdtemp(prefix="liegg_bench_")
    results: List[Dict[str, Any]] = []
    for spec in _cases(quick):
        row = _measure_case(spec, device, quick, repeats, root, callback_cls)
        results.append(row)
        cb = row["callback_ratio"]
        log(f"  {spec['case']}: floor {row['floor_s']:.3f}s ({row['floor_kind']}), "
            f"engine/floor {row['engine_ratio']:.2f}, callback/floor {'-' if cb is None else f'{cb:.2f}'}")
    return {"goal": GOAL, "repeats": repeats, "cases": results, "callback_available": callback_cls is not None}


def render(section: Dict[str, Any]) -> str:
    """Markdown tables of the section."""
    rows = []
    for r in section["cases"]:
        rows.append({
            "case": r["case"], "K": r["K"], "m": r["m"], "N": r["N"], "mode": r.get("derivative_mode"),
            "floor (s)": r["floor_s"], "floor kind": r["floor_kind"], "engine (s)": r["engine_s"],
            "engine/floor": r["engine_ratio"], "(of minima)": r.get("engine_ratio_of_minima"),
            "val w/o (s)": r.get("validate_without_s"), "val with (s)": r.get("validate_with_s"),
            "(with-w/o)/floor": r.get("callback_ratio"), "(of minima) ": r.get("callback_ratio_of_minima"),
            "fixed/epoch (s)": r.get("callback_fixed_per_epoch_s"),
            "(with-w/o-fixed)/floor": r.get("callback_ratio_without_fixed"),
        })
    cols = ["case", "K", "m", "N", "mode", "floor (s)", "floor kind", "engine (s)", "engine/floor", "(of minima)",
            "val w/o (s)", "val with (s)", "(with-w/o)/floor", "(of minima) ", "fixed/epoch (s)",
            "(with-w/o-fixed)/floor"]
    text = table(rows, cols, f"1. Overhead over the derivative floor (goal <= {section['goal']})")
    brows = []
    for r in section["cases"]:
        brows.append({"case": r["case"], "stage": "engine total (metric.update)", "time (s)": r["engine_s"],
                      "/ floor": r["engine_ratio"]})
        for stage, t in r.get("breakdown_s", {}).items():
            brows.append({"case": r["case"], "stage": stage, "time (s)": t, "/ floor": t / r["floor_s"]})
    text += "\n" + table(brows, ["case", "stage", "time (s)", "/ floor"], "1b. Where the engine's time goes")
    return text
