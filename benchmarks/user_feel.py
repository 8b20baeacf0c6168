"""Section ``user_feel``: what a user feels. ``fit`` with ``LieGGCallback`` at its defaults against ``fit`` without.

A user does not run the engine: they add ``LieGGCallback(metric)`` to a Trainer, keep every
callback argument at its default, and watch their epochs. This section does exactly that on

* the O(5) regression example (``examples/o5_common.py``: ``O5DataModule``, ``O5Regressor``,
  with the example's metric, ``VectorAction(5, components=2)`` against ``so``);
* the rotated-digits example (``examples/rotated_digits.py``: ``RotatedDigits``, ``DigitMLP``,
  with the example's metric, ``ImageAction()`` against the rotation);
* with ``--device cuda`` instead: a torchvision ResNet-18 on random 32x32 images (16,384 train,
  4,096 validation), skipped with a note where torchvision is not installed.

The two runs of a pair differ only in the callback: same seed, same data, same Trainer settings as
the examples, and the same ``TensorBoardLogger`` (a fresh folder each run). The time is
``trainer.fit`` alone; the variants run alternately (without, with, without, ...) after a one-epoch
warm-up of each, and the median and minimum of the repeats are reported, since the machine is
shared. Beside the times: the callback's own time (its clocks: the work it does in the training
loop, its pictures and its report files) over the training time it budgets against, the median over
the runs with it, which the machine's noise touches far less than the ratio of two fits; the samples
the callback analysed per epoch (``liegg/num_samples`` where the callback logs it, else the report's
``num_samples``), the standard deviation of the logged symmetry variance across the epochs of the
run (over a short run it mostly follows training), the pictures that reached TensorBoard, and, from
one more untimed run, the largest relative difference between the logged symmetry variance and the
one of the whole validation set on the same weights (zero while the callback analyses everything;
what a sample budget costs in accuracy otherwise).

The warm-ups hide what the first fit of a process pays once: torch's first uses, the callback's
plan and first picture. A user's ``python train.py`` pays it, so full runs also time, in
``repeats`` alternating new interpreters (``USER_FEEL_FRESH=k`` for k instead, 0 for none), the
first and only fit of each (without, with): the column "first fit of a process".

Run it alone with ``python benchmarks/user_feel.py [--quick] [--device cuda]`` (it is the
``user_feel`` section of ``run.py``; results merge into ``benchmarks/results/<device>.json``).
"""

from __future__ import annotations

import glob
import inspect
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from common import sync, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


# ----------------------------------------------------------------------------------------------
# the cases: each builds (module, datamodule or loaders) and the metric the callback watches with



#: Epochs of the CPU cases; USER_FEEL_EPOCHS=40 shows how a longer run amortises the one-time costs.
_EPOCHS = int(os.environ.get("USER_FEEL_EPOCHS", "10"))

def _examples_on_path() -> None:
    if EXAMPLES not in sys.path:  # the examples import each other as top-level modules
        sys.path.insert(0, EXAMPLES)


def o5_case(quick: bool) -> Dict[str, Any]:
    """The O(5) regression example: its DataModule, model and metric."""
    _examples_on_path()
    from o5_common import O5DataModule, O5Regressor

    from liegg_lightning import LieGGMetric, VectorAction

    sizes = {"num_train": 1000, "num_val": 200, "num_test": 200} if quick else {}
    width = 64 if quick else 384

    def build() -> Tuple[Any, Dict[str, Any]]:
        return O5Regressor(width=width), {"datamodule": O5DataModule(seed=0, **sizes)}

    return {
        "key": "o5",
        "name": f"O(5) MLP 10-{width}x3-1" + (" (quick: 1,000 train, 200 val)" if quick
                                               else " (8,000 train, 1,000 val)"),
        "build": build,
        "metric": lambda: LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so"),
        "epochs": 2 if quick else _EPOCHS,
        "trainer": {"log_every_n_steps": 4 if quick else 16, "deterministic": True},
    }


def digits_case(quick: bool) -> Dict[str, Any]:
    """The rotated-digits example: its DataModule, MLP and metric (log-softmax outputs)."""
    _examples_on_path()
    from rotated_digits import DigitMLP, RotatedDigits, output_transform

    from liegg_lightning import ImageAction, LieGGMetric

    def build() -> Tuple[Any, Dict[str, Any]]:
        return DigitMLP(), {"datamodule": RotatedDigits(seed=0)}

    trainer: Dict[str, Any] = {"log_every_n_steps": 5, "deterministic": True}
    if quick:
        trainer.update(limit_train_batches=2, limit_val_batches=1)
    return {
        "key": "digits",
        "name": "rotated digits MLP 784-128x5-10" + (" (quick: 2 train batches, 1 val batch)" if quick
                                                     else " (1,397 train, 400 val)"),
        "build": build,
        "metric": lambda: LieGGMetric(ImageAction(), reference_algebra="rotation",
                                      known_generators=["rotation", "scaling"],
                                      output_transform=output_transform("log_softmax")),
        "epochs": 1 if quick else _EPOCHS,
        "trainer": trainer,
    }


def resnet_case(quick: bool, model_fn: Optional[Callable[[], torch.nn.Module]] = None) -> Dict[str, Any]:
    """torchvision's ResNet-18 (10 classes) on random 32x32 RGB images, SGD with momentum.

    Args:
        quick: Small data (1,024 train, 256 validation images) instead of 16,384 and 4,096.
        model_fn: Replaces ``torchvision.models.resnet18(num_classes=10)`` (to check the harness
            where torchvision is not installed).
    """
    import lightning.pytorch as pl
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    from liegg_lightning import ImageAction, LieGGMetric

    if model_fn is None:
        from torchvision.models import resnet18

        def model_fn() -> torch.nn.Module:
            return resnet18(num_classes=10)

    n_train, n_val = (1024, 256) if quick else (16_384, 4_096)

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model_fn()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def loader(n: int, seed: int, shuffle: bool, batch: int) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        data = TensorDataset(torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))
        sampler = RandomSampler(data, generator=gen) if shuffle else SequentialSampler(data)
        return DataLoader(data, sampler=BatchSampler(sampler, batch, drop_last=False), batch_size=None)

    def build() -> Tuple[Any, Dict[str, Any]]:
        return Classifier(), {"train_dataloaders": loader(n_train, 1, True, 256),
                              "val_dataloaders": loader(n_val, 2, False, 512)}

    return {
        "key": "resnet",
        "name": f"ResNet-18 32x32 ({n_train:,} train, {n_val:,} val, random data)",
        "build": build,
        "metric": lambda: LieGGMetric(ImageAction(), reference_algebra="rotation"),
        "epochs": 2 if quick else 5,
        "trainer": {"log_every_n_steps": 16},
    }


# ----------------------------------------------------------------------------------------------
# one fit


def _clock_class() -> type:
    import lightning.pytorch as pl

    class Clock(pl.Callback):
        """In both variants: the seconds of the training steps (batch start to end) and of validation.

        The callback works in validation and after the last epoch, never inside a training step: a
        difference in the steps' time is either a cost it causes there (caches, allocator, threads)
        or the machine's noise, and the two variants' steps show which.
        """

        def __init__(self) -> None:
            self.steps_s = 0.0
            self.validation_s = 0.0
            self._started = 0.0

        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            self._started = time.perf_counter()

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            self.steps_s += time.perf_counter() - self._started

        def on_validation_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            self._started = time.perf_counter()

        def on_validation_epoch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if not trainer.sanity_checking:
                self.validation_s += time.perf_counter() - self._started

    return Clock


def _probe_class() -> type:
    import lightning.pytorch as pl

    class Probe(pl.Callback):
        """Placed after the LieGG callback: records what it logged at each validation epoch of ``fit``.

        With ``make_metric``, it also analyses the whole validation set afresh (a new metric of the
        same configuration, on the same weights), so the logged symmetry variance can be compared
        with the one from every validation sample. That work is not for timed runs.
        """

        def __init__(self, liegg: Any, make_metric: Optional[Callable[[], Any]] = None) -> None:
            self.liegg = liegg
            self.make_metric = make_metric
            self.epochs: List[Dict[str, Any]] = []
            self._last_report: Any = None
            self.training_s: Optional[float] = None

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            # the training time the callback budgets against (fit outside validation), as it measures it
            ledger = getattr(getattr(self.liegg, "planner", None), "ledger", None)  # this fit's clocks
            self.training_s = ledger.training_time() if ledger is not None else None

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.sanity_checking or trainer.state.fn != "fit":
                return
            prefix = getattr(self.liegg, "prefix", "liegg/")
            metrics = trainer.callback_metrics
            report = getattr(self.liegg, "last_report", None)
            analysed = report is not None and report is not self._last_report
            self._last_report = report
            entry: Dict[str, Any] = {"epoch": trainer.current_epoch, "analysed": analysed}
            if prefix + "num_samples" in metrics:
                entry["num_samples"] = int(metrics[prefix + "num_samples"])
                entry["num_samples_from"] = "logged " + prefix + "num_samples"
            elif analysed:
                entry["num_samples"] = int(report.num_samples)
                entry["num_samples_from"] = "report.num_samples"
            if analysed and prefix + "symmetry_variance" in metrics:
                entry["symmetry_variance"] = float(metrics[prefix + "symmetry_variance"])
            if analysed and self.make_metric is not None:
                # a DataLoader draws its base seed from the global RNG: restore it, so training goes on as
                # in the timed runs and their logged values can be compared with these epoch by epoch
                rng = torch.random.get_rng_state()
                metric = self.make_metric().to(pl_module.device)
                loaders = trainer.val_dataloaders
                for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
                    for batch in loader:
                        metric.update(pl_module, batch[0].to(pl_module.device))
                full = metric.compute()
                torch.random.set_rng_state(rng)
                entry["full_set_samples"] = int(full.num_samples)
                entry["full_set_symmetry_variance"] = float(full.symmetry_variance)
            self.epochs.append(entry)

    return Probe


def _count_pictures(log_dir: str) -> Optional[int]:
    """Images (figures) in the TensorBoard event files under ``log_dir``, or None if unreadable."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    total = 0
    for folder in {os.path.dirname(p) for p in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"),
                                                         recursive=True)}:
        acc = EventAccumulator(folder, size_guidance={"images": 0, "scalars": 1, "tensors": 1, "histograms": 1})
        acc.Reload()
        total += sum(len(acc.Images(tag)) for tag in acc.Tags().get("images", []))
    return total


def fit_once(case: Dict[str, Any], device: torch.device, root: str, name: str, with_callback: bool,
             epochs: Optional[int] = None, full_set: bool = False) -> Dict[str, Any]:
    """One ``trainer.fit`` of a fresh model (seed 0), timed; with the callback at its defaults or without it.

    ``full_set`` adds the probe's analysis of the whole validation set at each analysed epoch.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from liegg_lightning import LieGGCallback

    pl.seed_everything(0, verbose=False)
    module, data = case["build"]()
    clock = _clock_class()()
    callbacks: List[Any] = [clock]
    liegg = probe = None
    if with_callback:
        liegg = LieGGCallback(case["metric"]())  # every callback argument at its default
        probe = _probe_class()(liegg, case["metric"] if full_set else None)
        callbacks = [liegg, probe, clock]
    logger = TensorBoardLogger(root, name=name)
    trainer = pl.Trainer(
        max_epochs=epochs or case["epochs"], logger=logger, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1, **case["trainer"],
    )
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(module, **data)
    sync(device)
    out: Dict[str, Any] = {"fit_s": time.perf_counter() - start, "fit_cpu_s": time.process_time() - cpu_start,
                           "steps_s": clock.steps_s, "validation_s": clock.validation_s, "log_dir": logger.log_dir}
    if probe is not None and liegg is not None:
        out["epochs"] = probe.epochs
        out["history_symmetry_variance"] = [float(h["symmetry_variance"]) for h in getattr(liegg, "history", [])
                                            if "symmetry_variance" in h]
        out["derivative"] = getattr(liegg.metric, "resolved_derivative", None)  # the mode the plan kept
        ledger = getattr(getattr(liegg, "planner", None), "ledger", None)  # its own clocks: loop, pictures, files
        if ledger is not None and probe.training_s:
            out["callback_own_s"] = ledger.cost()
            out["callback_own_share"] = out["callback_own_s"] / probe.training_s
    return out


def _summary(run: Dict[str, Any]) -> Dict[str, Any]:
    """Samples per epoch and the spread of the symmetry variance, from one run with the callback."""
    epochs = run["epochs"]
    samples = [e["num_samples"] for e in epochs if "num_samples" in e]
    variances = run["history_symmetry_variance"] or [e["symmetry_variance"] for e in epochs
                                                     if "symmetry_variance" in e]
    out: Dict[str, Any] = {
        "analyses": sum(1 for e in epochs if e["analysed"]), "epochs_seen": len(epochs),
        "samples_per_epoch": samples, "samples_from": sorted({e["num_samples_from"] for e in epochs
                                                              if "num_samples_from" in e}),
        "symmetry_variances": variances,
    }
    if len(variances) >= 2:
        mean = statistics.fmean(variances)
        out["symmetry_variance_std"] = statistics.stdev(variances)
        out["symmetry_variance_mean"] = mean
        out["symmetry_variance_rel_std"] = out["symmetry_variance_std"] / mean if mean else math.nan
    return out


def _against_full_set(run: Dict[str, Any]) -> Dict[str, Any]:
    """The logged symmetry variance against the whole validation set's, epoch by epoch (same weights)."""
    pairs = [(e["symmetry_variance"], e["full_set_symmetry_variance"]) for e in run["epochs"]
             if "symmetry_variance" in e and "full_set_symmetry_variance" in e]
    errors = [abs(a - b) / abs(b) if b else math.inf for a, b in pairs]
    return {"full_set_symmetry_variances": [b for _, b in pairs],
            "logged_symmetry_variances": [a for a, _ in pairs],
            "full_set_samples": max((e["full_set_samples"] for e in run["epochs"] if "full_set_samples" in e),
                                    default=None),
            "max_rel_err_vs_full_set": max(errors) if errors else None,
            "median_rel_err_vs_full_set": statistics.median(errors) if errors else None}


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):  # banners and tips would interleave the tables
        logging.getLogger(name).setLevel(logging.WARNING)


_CASES: Dict[str, Callable[[bool], Dict[str, Any]]] = {}  # filled below, once every case is defined


def one_fit_in_this_process(key: str, with_callback: bool, device: str) -> Dict[str, Any]:
    """One timed fit of case ``key`` (the full case), the first of this process: what ``python train.py`` meets."""
    warnings.filterwarnings("ignore")
    _quiet_lightning()
    run = fit_once(_CASES[key](False), torch.device(device), tempfile.mkdtemp(prefix="liegg_fresh_"), "fresh",
                   with_callback)
    return {"fit_s": run["fit_s"], "callback_own_share": run.get("callback_own_share")}


def fresh_process_fit(key: str, with_callback: bool, device: torch.device) -> Dict[str, Any]:
    """:func:`one_fit_in_this_process` in a new interpreter: first-use costs (torch's, the callback's) included."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, json; sys.path.insert(0, {here!r}); import user_feel; "
            f"print('RESULT', json.dumps(user_feel.one_fit_in_this_process({key!r}, {with_callback}, "
            f"{str(device)!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


def measure_case(case: Dict[str, Any], device: torch.device, root: str, repeats: int, quick: bool,
                 log: Callable[[str], None]) -> Dict[str, Any]:
    """Fits without and with the callback, alternately; the JSON row of one case.

    In full runs a one-epoch warm-up of each variant comes first and one more, untimed run with the
    callback checks the logged symmetry variance against the whole validation set; ``quick`` does
    that check inside its single timed run instead (its times only show that the harness works).
    """
    tag = "".join(c if c.isalnum() else "_" for c in case["name"].split(" (")[0])
    if not quick:  # imports, allocator, first drawing: one epoch of each, not timed
        for with_cb in (False, True):
            fit_once(case, device, root, f"{tag}_warmup_{'with' if with_cb else 'without'}", with_cb, epochs=1)
    runs: Dict[str, List[Dict[str, Any]]] = {"without": [], "with": []}
    for i in range(repeats):
        for variant in ("without", "with"):
            run = fit_once(case, device, root, f"{tag}_{variant}_{i}", variant == "with", full_set=quick)
            runs[variant].append(run)
            log(f"  {case['name']}: {variant} callback, run {i + 1}/{repeats}: {run['fit_s']:.2f} s")
    times = {v: [r["fit_s"] for r in rs] for v, rs in runs.items()}
    row: Dict[str, Any] = {
        "case": case["name"], "epochs": case["epochs"], "repeats": repeats,
        "fit_without_s": statistics.median(times["without"]), "fit_with_s": statistics.median(times["with"]),
        "fit_without_min_s": min(times["without"]), "fit_with_min_s": min(times["with"]),
        "times_without_s": times["without"], "times_with_s": times["with"],
        "symmetry_variances_by_run": [r["history_symmetry_variance"] for r in runs["with"]],
    }
    row["ratio"] = row["fit_with_s"] / row["fit_without_s"]
    # each pair ran back to back: the median of the pairs' ratios, and of their CPU times (every thread
    # of the process; time the machine gives to other tenants is not in it)
    row["pair_ratios"] = [b / a for a, b in zip(times["without"], times["with"])]
    row["median_pair_ratio"] = statistics.median(row["pair_ratios"])
    cpu = {v: [r["fit_cpu_s"] for r in rs] for v, rs in runs.items()}
    # where the difference lies: the training steps (the callback never runs inside one) and the rest
    steps = {v: [r["steps_s"] for r in rs] for v, rs in runs.items()}
    row["steps_without_s"], row["steps_with_s"] = steps["without"], steps["with"]
    row["steps_ratio"] = statistics.median(steps["with"]) / statistics.median(steps["without"])
    row["validation_without_s"] = [r["validation_s"] for r in runs["without"]]
    row["validation_with_s"] = [r["validation_s"] for r in runs["with"]]
    # each pair's ratio with the training steps of the run with the callback replaced by its partner's
    row["ratio_steps_as_without"] = statistics.median(
        (w["fit_s"] - w["steps_s"] + o["steps_s"]) / o["fit_s"] for o, w in zip(runs["without"], runs["with"]))
    row["cpu_times_without_s"], row["cpu_times_with_s"] = cpu["without"], cpu["with"]
    row["cpu_ratio"] = statistics.median(cpu["with"]) / statistics.median(cpu["without"])
    shares = [r["callback_own_share"] for r in runs["with"] if "callback_own_share" in r]
    row["callback_own_share"] = statistics.median(shares) if shares else None
    row["ratio_of_minima"] = row["fit_with_min_s"] / row["fit_without_min_s"]
    row.update(_summary(runs["with"][-1]))
    row["derivatives"] = sorted({str(r.get("derivative")) for r in runs["with"]})
    row["pictures_logged"] = _count_pictures(runs["with"][-1]["log_dir"])
    check = runs["with"][-1] if quick else fit_once(case, device, root, f"{tag}_full_set_check", True, full_set=True)
    row.update(_against_full_set(check))
    row["per_epoch_last_run"], row["per_epoch_full_set_check"] = runs["with"][-1]["epochs"], check["epochs"]
    if not quick and case.get("key") in _CASES:
        # the warm-ups above hide what the first fit of a process pays once (torch's first uses, the
        # callback's plan and first picture); a user's `python train.py` pays it: alternate new processes
        fresh: Dict[str, List[float]] = {"without": [], "with": []}
        pairs = int(os.environ.get("USER_FEEL_FRESH", repeats))  # a short GPU session may ask for fewer
        for i in range(pairs):
            for variant in ("without", "with"):
                fresh[variant].append(fresh_process_fit(case["key"], variant == "with", device)["fit_s"])
                log(f"  {case['name']}: {variant} callback, first fit of a new process {i + 1}/{pairs}: "
                    f"{fresh[variant][-1]:.2f} s")
        row["fresh_times_without_s"], row["fresh_times_with_s"] = fresh["without"], fresh["with"]
        if pairs > 0:
            row["fresh_ratio"] = statistics.median(fresh["with"]) / statistics.median(fresh["without"])
    return row


_CASES.update(o5=o5_case, digits=digits_case, resnet=resnet_case)


def _cases(device: torch.device, quick: bool) -> Tuple[List[Callable[[], Dict[str, Any]]], List[Dict[str, str]]]:
    """The examples on the CPU; the ResNet-18 alone on CUDA (the examples are CPU workloads)."""
    if device.type != "cuda":
        return [lambda: o5_case(quick), lambda: digits_case(quick)], [
            {"case": "ResNet-18 32x32", "skipped": "no CUDA device (run with --device cuda on a GPU)"}]
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return [], [{"case": "ResNet-18 32x32", "skipped": "torchvision is not installed"}]
    return [lambda: resnet_case(quick)], []


def run(device: torch.device, quick: bool, repeats: int, log: Callable[[str], None],
        explicit_repeats: Optional[int] = None) -> Dict[str, Any]:
    """Every case; returns the JSON section."""
    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO when imported: quieten them after)

    import liegg_lightning

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    _quiet_lightning()
    reps = explicit_repeats or (1 if quick else 3)
    root = tempfile.mkdtemp(prefix="liegg_user_feel_")
    builders, skipped = _cases(device, quick)
    rows: List[Dict[str, Any]] = []
    for build in builders:
        row = measure_case(build(), device, root, reps, quick, log)
        rows.append(row)
        log(f"  {row['case']}: with/without {row['ratio']:.2f} (of minima {row['ratio_of_minima']:.2f}), "
            f"samples/epoch {row['samples_per_epoch']}")
    from liegg_lightning import LieGGCallback

    defaults = {name: repr(p.default) for name, p in inspect.signature(LieGGCallback.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {"rows": rows, "skipped": skipped, "repeats": reps, "callback_defaults": defaults,
            "package_file": liegg_lightning.__file__}


def _samples_cell(samples: List[int]) -> str:
    if not samples:
        return "-"
    lo, hi = min(samples), max(samples)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def render(section: Dict[str, Any]) -> str:
    """Markdown table of the section."""
    rows = [{"case": r["case"], "epochs": r["epochs"], "fit without (s)": r["fit_without_s"],
             "fit with (s)": r["fit_with_s"], "with / without": r["ratio"], "(of minima)": r["ratio_of_minima"],
             "own time / training": r.get("callback_own_share"),
             "median of pair ratios": r.get("median_pair_ratio"), "CPU time with / without": r.get("cpu_ratio"),
             "training steps with / without": r.get("steps_ratio"),
             "pairs, steps as without": r.get("ratio_steps_as_without"),
             "first fit of a process: with / without": r.get("fresh_ratio"),
             "samples / epoch": _samples_cell(r["samples_per_epoch"]),
             "derivative": "/".join(r.get("derivatives", [])) or None,
             "std of symmetry variance": r.get("symmetry_variance_std"),
             "(/ mean)": r.get("symmetry_variance_rel_std"),
             "max rel err vs full set": r.get("max_rel_err_vs_full_set"), "pictures": r.get("pictures_logged")}
            for r in section["rows"]]
    cols = ["case", "epochs", "fit without (s)", "fit with (s)", "with / without", "(of minima)", "own time / training",
            "median of pair ratios", "CPU time with / without", "training steps with / without",
            "pairs, steps as without", "first fit of a process: with / without",
            "samples / epoch", "derivative",
            "std of symmetry variance", "(/ mean)", "max rel err vs full set", "pictures"]
    text = table(rows, cols, f"user_feel: fit with LieGGCallback at its defaults / without "
                             f"(TensorBoardLogger, median of {section['repeats']} alternating runs)")
    for s in section.get("skipped", []):
        text += f"\n\n{s['case']}: skipped ({s['skipped']})"
    return text


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import run as _run

    sys.exit(_run.main(["--only", "user_feel", *sys.argv[1:]]))
