"""``LieGGCallback``: watch which symmetries a network learns, at validation time, within a cost budget."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Tuple, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from liegg_lightning._batches import extract_input
from liegg_lightning._errors import InputError
from liegg_lightning._loggers import log_pictures, save_report
from liegg_lightning._state import cuda_devices_of, preserved_state
from liegg_lightning.actions import GroupAction
from liegg_lightning.functional.layers import MODEL_OUTPUT
from liegg_lightning.metric import LieGGMetric, fresh_metric
from liegg_lightning.rendering import orbit_outputs
from liegg_lightning.report import SymmetryReport

__all__ = ["LieGGCallback"]

#: Share of the overhead budget the analysis (derivative passes and the solve) may take; the rest is for
#: what a plan cannot price in advance: logging, reports and pictures.
_ANALYSIS_SHARE = 0.4
#: Share of the budget kept for what the callback causes but cannot time: Lightning's handling of the
#: values it logs, and the interpreter and caches it shares with training.
_UNMEASURED = 0.2
#: Samples timed on the first analysed batch to price one sample.
_TIMING_SAMPLES = 32
#: Seconds one set of pictures is assumed to take before the first one was timed (0.05-0.1 s measured
#: on the examples' CPU), and reserved at the plan for the run's last one, which is always drawn.
_DRAW_PRIOR = 0.15
#: Seconds torch takes, once per process, to script its forward-mode decompositions at the first JVP
#: (0.66-0.80 s in new processes on the examples' CPU, ``docs/time_forward_first_use.py``): forward
#: mode is only tried where a fit's analyses could win this back.
_FORWARD_FIRST_USE = 0.5
#: Batches an analysis takes at least (when there are as many), however small the budget.
_MIN_BATCHES = 8
#: Samples a sanity-check batch runs through the derivative pass to catch configuration errors.
_CHECK_SAMPLES = 4


def _not_int(value: Any) -> bool:
    """True unless ``value`` is an int; a bool is not an int here."""
    return isinstance(value, bool) or not isinstance(value, int)


def _layer_output_fn(module: nn.Module, layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """A function from the model's input to the output of one of its submodules."""

    def forward(x: Tensor) -> Tensor:
        captured: List[Any] = []
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            module(x)
        finally:
            handle.remove()
        if not captured:
            raise InputError("The analysed layer was not called by the model's forward.")
        return captured[-1]

    return forward


def _spread(inputs: Tensor, count: int) -> Tensor:
    """``count`` samples spread evenly over the batch (validation sets are often ordered)."""
    n = inputs.shape[0]
    if count >= n:
        return inputs
    index = torch.linspace(0, n - 1, count).round().long().to(inputs.device)
    return inputs.index_select(0, index)


def _agree(trainer: pl.Trainer, values: List[float], op: str) -> List[float]:
    """The same ``values`` on every rank: their ``op`` (``"max"``, ``"min"``) over the processes."""
    if trainer.world_size <= 1:
        return [float(v) for v in values]
    local = torch.tensor(values, dtype=torch.float64, device=trainer.strategy.root_device)
    return [float(v) for v in trainer.strategy.reduce(local, reduce_op=op)]


def _line(small: float, full: float, few: int, many: int) -> Tuple[float, float]:
    """Per-call and per-sample seconds from the times of ``few`` and of ``many`` samples."""
    if many <= few:
        return 0.0, full / max(many, 1)
    per_sample = max(full - small, 0.0) / (many - few)
    return max(small - few * per_sample, 0.0), per_sample


def _shown_report(reports: Dict[str, SymmetryReport]) -> SymmetryReport:
    """The report drawn and kept in ``spectra``: the model's output, else the first layer."""
    return reports.get(MODEL_OUTPUT, next(iter(reports.values())))


def _forward_mode_loaded() -> bool:
    """Whether torch has paid forward mode's first use in this process (or never will: no JIT)."""
    return ("torch._decomp.decompositions_for_jvp" in sys.modules
            or os.environ.get("PYTORCH_JIT", "1") != "1" or not __debug__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LieGGCallback(Callback):
    r"""Find the symmetries a network has learned, and how invariant it is to them, at validation time.

    Every ``every_n_epochs`` training epochs (and in every ``trainer.validate()`` and
    ``trainer.test()``), the callback streams network-polarization rows of the validation (test)
    inputs into a float64 Gram matrix on the model's device, solves it at the epoch's end on every
    rank, and logs with ``pl_module.log``: ``<prefix>symmetry_variance``,
    ``<prefix>normalized_variance``, ``<prefix>nullity``, ``<prefix>closure_error``,
    ``<prefix>num_samples`` and, with a reference algebra, ``<prefix>symmetry_bias`` and
    ``<prefix>subspace_bias``, plus ``<prefix>variance/<name>`` for each known generator. Undefined
    values (NaN) are not logged. On rank zero it draws pictures and writes each report as JSON into
    every logger's own run directory. ``trainer.predict`` is not analysed.

    **Cost.** With ``max_samples="auto"`` (the default) the first analysis during ``fit`` prices
    its parts on a few samples (the derivative pass in forward and reverse mode, keeping the
    faster; the accumulation; the state kept around a batch; the solve) and takes the steady
    pace of the training batches so far (the first batch's one-time costs left out). The budget
    of one analysis is ``overhead`` of the training between two analyses and, where the fit's
    length is known (``max_epochs``, ``max_steps``), no more than an equal share, among the
    analyses left, of ``overhead`` of the whole fit's training less what the run pays once (the
    sanity check, the plan, the last picture): on a short fit these weigh. The samples are fixed
    so that the priced parts use 40% of that budget, spread evenly over the validation batches
    (every k-th batch, never fewer than 8, when the batches' fixed costs alone would take too
    much), and stay fixed for the rest of the run, so epochs are comparable. Everything else the
    callback does (logging, orbit curves, pictures, report files) is charged to the same budget
    as it happens: pictures are drawn when the budget has room for them and for the run's last
    one, which is always drawn, as is every ``validate``/``test``; report files are written by a
    background thread. Where even the smallest analysis (``_MIN_BATCHES`` batches, 32 samples or
    4 rows per generator) does not fit, the callback analyses every k-th time instead, counted
    back from the fit's last epoch so that the last analysis sees the trained network (k fixed
    with the samples and said in the plan's log line), unless a ``ModelCheckpoint``/
    ``EarlyStopping`` monitors its values; and when an analysis turns out to cost more than the
    budget all the same, a warning says which ``every_n_epochs`` fits.

    **Never harm.** The run it watches is left as it was: derivatives come from
    ``torch.autograd.grad`` on a copy of the input (parameter ``.grad`` is never touched), module
    buffers (batch-norm statistics) and the CPU/CUDA random states are restored after every extra
    pass, the model's mode is left as the loop set it. Only configuration errors raise (an input,
    batch key or output that does not fit the metric), checked on the first sanity-check batch;
    anything raised inside the model's forward or autograd becomes a warning and a skipped
    analysis.

    Args:
        metric: What to measure: a :class:`~liegg_lightning.LieGGMetric` (the action, reference
            algebra, known generators, output mode, ... are its options, documented there), or a
            bare :class:`~liegg_lightning.GroupAction` for a metric with default options. The
            callback keeps its own copy and resets it at every analysis.
        input_key: Which element of a batch is the input: an index for tuple/list batches, a key
            for dict batches; a bare tensor batch is the input itself.
        layer: Name of a submodule (as in ``named_modules()``) whose output is analysed instead
            of the model's.
        every_n_epochs: Analyse after every this many *training* epochs during ``fit`` (the same
            convention as ``ModelCheckpoint(every_n_epochs=...)``); ``0`` disables the analysis
            during ``fit``. With ``max_samples="auto"``, an analysis too costly for the budget
            comes every k-th time instead (see **Cost**).
        overhead: The share of the training time the callback may spend (analysis and pictures)
            when ``max_samples="auto"``; e.g. ``0.1`` adds about 10% to the time of ``fit``.
        max_samples: ``"auto"`` (samples fixed at the first analysis from ``overhead``), an int
            cap per analysis and process, or ``None`` for every validation sample.
        dataloader_idx: Which validation dataloader(s) to use; ``None`` uses all.
        log_generators: How many leading generators to draw and print.
        log_images: Draw pictures to the loggers.
        prefix: Prefix of the logged names; also names the callback's checkpoint state, so two
            callbacks on one Trainer need different prefixes.
        save_reports: Write each report as JSON into each logger's run directory.
        background_drawing: Draw the pictures in a background thread (rank zero). At most one
            drawing waits; a newer one replaces it.
        verbose: Print one line per analysis (rank zero), so long runs show their progress.

    Example:
        >>> from liegg_lightning import LieGGCallback, LieGGMetric, VectorAction
        >>> callback = LieGGCallback(LieGGMetric(VectorAction(dim=5, components=2), reference_algebra="so"))
        >>> callback.state_key
        "LieGGCallback{'prefix': 'liegg/'}"
    """

    def __init__(
        self,
        metric: Union[LieGGMetric, GroupAction],
        input_key: Union[int, str] = 0,
        layer: Optional[str] = None,
        every_n_epochs: int = 1,
        overhead: float = 0.1,
        max_samples: Union[Literal["auto"], int, None] = "auto",
        dataloader_idx: Optional[Union[int, List[int]]] = None,
        log_generators: int = 4,
        log_images: bool = True,
        prefix: str = "liegg/",
        save_reports: bool = True,
        background_drawing: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        if _not_int(every_n_epochs) or every_n_epochs < 0:
            raise ValueError(
                f"Expected `every_n_epochs` to be a non-negative int (0 disables), got {every_n_epochs!r}."
            )
        if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or not 0 < overhead <= 10:
            raise ValueError(f"Expected `overhead` to be a number in (0, 10] (e.g. 0.1 for 10%), got {overhead!r}.")
        if max_samples != "auto" and max_samples is not None and (_not_int(max_samples) or max_samples < 1):
            raise ValueError(f"Expected `max_samples` to be 'auto', a positive int or None, got {max_samples!r}.")
        if isinstance(input_key, bool) or not isinstance(input_key, (int, str)):
            raise ValueError(f"Expected `input_key` to be an int index or a str key, got {input_key!r}.")
        if _not_int(log_generators) or log_generators < 0:
            raise ValueError(f"Expected `log_generators` to be a non-negative int, got {log_generators!r}.")
        if layer is not None and not isinstance(layer, str):
            raise ValueError(f"Expected `layer` to be the name of a submodule or None, got {layer!r}.")
        if dataloader_idx is not None:
            idx = [dataloader_idx] if not isinstance(dataloader_idx, (list, tuple)) else list(dataloader_idx)
            if not idx or not all(not _not_int(i) and i >= 0 for i in idx):
                raise ValueError(
                    "Expected `dataloader_idx` to be None, a non-negative int or a list of them, "
                    f"got {dataloader_idx!r}."
                )
            dataloader_idx = idx
        if not isinstance(prefix, str):
            raise ValueError(f"Expected `prefix` to be a str (e.g. 'liegg/'), got {prefix!r}.")
        for name, flag in (("log_images", log_images), ("save_reports", save_reports),
                           ("background_drawing", background_drawing), ("verbose", verbose)):
            if not isinstance(flag, bool):
                raise ValueError(f"Expected `{name}` to be a bool, got {flag!r}.")
        own = fresh_metric(metric)  # the user's metric is left as it was
        self.metric = own
        self.action = own.action
        self.input_key = input_key
        self.layer = layer
        self.every_n_epochs = every_n_epochs
        self.overhead = float(overhead)
        self.max_samples = max_samples
        self.dataloader_idx: Optional[List[int]] = dataloader_idx  # type: ignore[assignment]
        self.log_generators = log_generators
        self.log_images = log_images
        self.prefix = prefix
        self.save_reports = save_reports
        self.background_drawing = background_drawing
        self.verbose = verbose

        self.history: List[Dict[str, Any]] = []
        self.spectra: List[Tensor] = []
        #: The last analysis: a report, or with the metric's ``layers`` a dict ``layer -> report``.
        self.last_report: Optional[Union[SymmetryReport, Dict[str, SymmetryReport]]] = None
        #: Samples per analysis fixed by the budget (``max_samples="auto"``), once known.
        self.planned_samples: Optional[int] = None
        self._batch_stride = 1  # with the plan: analyse every this many batches
        self._epoch_stride = 1  # with the plan: analyse every this many times `every_n_epochs`
        self._anchor_epoch = 0  # thinned analyses come every k-th epoch from this one: the fit's last, if known
        self._monitored = False
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._active = False
        self._failed = False
        self._checked = False
        self._seen = 0
        self._batch_index = 0  # batches of the analysed dataloaders seen this epoch
        self._per_batch: Optional[int] = None
        self._example_input: Optional[Tensor] = None
        self._forward: Optional[Callable[[Tensor], Tensor]] = None
        self._cuda_devices: List[int] = []
        # the budget's clocks (seconds)
        self._fit_started: Optional[float] = None
        self._validation_time = 0.0
        # training batches since fit began, and the clocks at the end of the first and the latest one
        self._batches_trained = 0
        self._first_batch_end: Optional[Tuple[float, float]] = None  # (time, validation time so far)
        self._last_batch_end: Optional[Tuple[float, float]] = None
        self._validation_started: Optional[float] = None
        self._spent = 0.0  # everything done on the training loop's thread, pictures apart
        self._spent_at_start = 0.0
        self._fit_analyses = 0
        self._fit_start_epoch = 0  # the epoch the current fit started at (later when resumed)
        self._warned_cost = False
        self._draw_time = 0.0
        self._draws = 0
        self._save_time = 0.0  # report files, written by a background thread
        self._writer: Optional[ThreadPoolExecutor] = None
        # pictures: one running, at most one waiting, the last one kept for the end of the run
        self._drawer: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._running: Optional[Future] = None
        self._waiting: Optional[Callable[[], Any]] = None
        self._undrawn: Optional[Callable[[], Any]] = None

    @property
    @override
    def state_key(self) -> str:
        # plain values only: a repr of the action would change with the code and orphan checkpoints.
        # Lightning asks for it at every hook of every batch: kept, and remade only if the prefix changes
        cached = self.__dict__.get("_state_key")
        if cached is None or cached[0] != self.prefix:
            cached = (self.prefix, self._generate_state_key(prefix=self.prefix))
            self.__dict__["_state_key"] = cached
        return cached[1]

    # ------------------------------------------------------------------ set-up and checks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        others = [c for c in trainer.callbacks if isinstance(c, LieGGCallback) and c is not self]  # type: ignore[attr-defined]
        if any(c.prefix == self.prefix for c in others):
            raise ValueError(
                f"Two LieGGCallbacks share the prefix {self.prefix!r}: their values would mix. "
                "Give each its own `prefix` (e.g. 'liegg_images/')."
            )
        if stage == "fit":
            # a monitored value must come every `every_n_epochs`: the budget may not thin the analyses then
            self._monitored = self._check_monitors(trainer)
        modules = dict(pl_module.named_modules())
        if self.metric.layer_actions is not None:
            if self.layer is not None:
                raise ValueError("Expected either the callback's `layer` or the metric's `layers`, got both.")
            missing = [n for n in self.metric.layer_names if n and n not in modules]
            if missing:
                raise ValueError(
                    f"The metric's layers {missing} are not submodules of {type(pl_module).__name__}. "
                    f"Expected names from: {', '.join([n for n in modules if n][:30])}."
                )
        if self.layer is not None:
            if self.layer not in modules:
                names = [n for n in modules if n]
                raise ValueError(
                    f"`layer={self.layer!r}` is not a submodule of {type(pl_module).__name__}. "
                    f"Expected one of: {', '.join(names[:30])}{' ...' if len(names) > 30 else ''}."
                )
            self._forward = _layer_output_fn(pl_module, modules[self.layer])
        else:
            self._forward = pl_module
        self._cuda_devices = cuda_devices_of(pl_module)
        self.metric.place_on(pl_module.device)

    def _check_monitors(self, trainer: pl.Trainer) -> bool:
        """Callbacks that monitor a logged value must see it on the epochs they check it; True if any does."""
        monitored = False
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            monitor = getattr(cb, "monitor", None)
            if not isinstance(monitor, str) or not monitor.startswith(self.prefix):
                continue
            monitored = True
            if self.every_n_epochs == 0:
                raise ValueError(
                    f"{type(cb).__name__} monitors {monitor!r}, but LieGGCallback(every_n_epochs=0) never logs it."
                )
            if isinstance(cb, ModelCheckpoint):
                every = cb._every_n_epochs
                if every and every % self.every_n_epochs != 0:
                    raise ValueError(
                        f"ModelCheckpoint(monitor={monitor!r}) checks every {every} epoch(s), but LieGGCallback "
                        f"logs it every {self.every_n_epochs}: set ModelCheckpoint(every_n_epochs="
                        f"{self.every_n_epochs}) (or a multiple of it)."
                    )
            elif isinstance(cb, EarlyStopping) and self.every_n_epochs > 1 and cb.strict:
                raise ValueError(
                    f"EarlyStopping(monitor={monitor!r}) runs every epoch, but LieGGCallback logs it every "
                    f"{self.every_n_epochs} epochs: set EarlyStopping(strict=False), and its patience then "
                    "counts analyses (epochs without one do not count)."
                )
        return monitored

    def _should_skip(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return True
        if trainer.state.fn == "fit":
            if self.every_n_epochs == 0:
                return True
            if self._epoch_stride > 1:  # thinned by the plan: counted back from the fit's last epoch
                return (trainer.current_epoch - self._anchor_epoch) % (self.every_n_epochs * self._epoch_stride) != 0
            return (trainer.current_epoch + 1) % self.every_n_epochs != 0
        return trainer.state.fn not in ("validate", "test")

    # ------------------------------------------------------------------ the budget's clocks

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()
        self._batches_trained, self._first_batch_end, self._last_batch_end = 0, None, None
        self._fit_analyses = 0
        self._fit_start_epoch = trainer.current_epoch

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches_trained += 1
        self._last_batch_end = (time.perf_counter(), self._validation_time)
        if self._first_batch_end is None:
            self._first_batch_end = self._last_batch_end

    def _training_time(self) -> float:
        """Seconds of ``fit`` spent outside validation so far."""
        if self._fit_started is None:
            return 0.0
        return max(time.perf_counter() - self._fit_started - self._validation_time, 0.0)

    def _steady_training_time(self) -> float:
        """Seconds the training batches so far would take at their steady pace.

        The first batch carries one-time costs (allocations, the optimizer's state, lazy imports) that
        later epochs do not repeat: the pace comes from the batches after it, outside validation.
        """
        first, last, n = self._first_batch_end, self._last_batch_end, self._batches_trained
        if first is None or last is None or n < 3:
            return self._training_time()
        between = (last[0] - first[0]) - (last[1] - first[1])
        return max(between, 0.0) * n / (n - 1)

    def _budget(self) -> float:
        return self.overhead * self._training_time()

    def _cost(self) -> float:
        """Seconds the callback has cost the run so far: its work in the loop, its pictures and its files."""
        with self._lock:
            return self._spent + self._draw_time + self._save_time

    @contextlib.contextmanager
    def _charged(self) -> Iterator[None]:
        """Charge the time of the enclosed work to the budget."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._spent += time.perf_counter() - started

    # ------------------------------------------------------------------ one analysis

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_started = time.perf_counter()
        self._active = not self._should_skip(trainer)
        if not self._active:
            return
        # a fresh accumulator every epoch: ddp_spawn shares state tensors created in the parent
        self.metric.reset()
        self.metric.place_on(pl_module.device)
        self._seen = 0
        self._batch_index = 0
        self._spent_at_start = self._spent
        self._example_input = None
        self._failed = False
        self._per_batch = self._batch_share(trainer, trainer.state.fn == "test")

    def _batch_share(self, trainer: pl.Trainer, test: bool) -> Optional[int]:
        """Samples to take from each batch: the plan spread over every analysed batch, or None for all."""
        if self.planned_samples is None:
            return None
        total = self._analysed_batches(trainer.num_test_batches if test else trainer.num_val_batches)
        return max(1, math.ceil(self.planned_samples / max(math.ceil(total / self._batch_stride), 1)))

    def _analysed_batches(self, counts: List[Union[int, float]]) -> int:
        """Batches of the analysed dataloaders (those of ``dataloader_idx``), from the Trainer's counts."""
        indices = range(len(counts)) if self.dataloader_idx is None else self.dataloader_idx
        return sum(int(counts[i]) for i in indices if i < len(counts) and math.isfinite(counts[i]))

    def _batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, dataloader_idx: int) -> None:
        if trainer.sanity_checking and not self._checked:
            self._check_configuration(pl_module, batch)
            return
        if not self._active or self._failed:
            return
        if self.dataloader_idx is not None and dataloader_idx not in self.dataloader_idx:
            return
        index, self._batch_index = self._batch_index, self._batch_index + 1
        if self.planned_samples is not None and index % self._batch_stride:
            return  # the plan takes every k-th batch
        cap = self.max_samples if isinstance(self.max_samples, int) else None
        if cap is not None and self._seen >= cap:
            return
        inputs = extract_input(batch, self.input_key)  # InputError: a configuration error, raised
        if inputs.shape[0] == 0:
            return  # an empty batch adds nothing
        if self._per_batch is not None:
            inputs = _spread(inputs, self._per_batch)
        if cap is not None:
            inputs = inputs[: cap - self._seen]
        inputs = inputs.to(pl_module.device)
        try:
            with self._charged():
                if self.max_samples == "auto" and self.planned_samples is None and trainer.state.fn == "fit":
                    self._plan(trainer, pl_module, inputs)  # prices a sample on a few of these inputs
                    if self._should_skip(trainer):  # thinned: the analyses end with the fit's last epoch
                        self._active = False
                        return
                    inputs = _spread(inputs, self._per_batch or inputs.shape[0])
                with preserved_state(pl_module, self._cuda_devices):
                    self.metric.update(self._model(pl_module), inputs)
        except InputError:
            raise
        except Exception as err:  # a failure inside the user's model must not end the training
            self._failed = True
            rank_zero_warn(
                f"LieGGCallback: the derivative pass failed ({err!r}); this analysis is skipped, training goes on."
            )
            return
        self._seen += inputs.shape[0]
        if self.log_images and self._example_input is None:  # the orbit picture's input
            self._example_input = inputs[0].detach().to("cpu", torch.float32).clone()

    def _model(self, pl_module: pl.LightningModule) -> Callable[[Tensor], Tensor]:
        return self._forward if self._forward is not None else pl_module

    def _check_configuration(self, pl_module: pl.LightningModule, batch: Any) -> None:
        """On the first sanity-check batch: does the batch, input and output fit? Before any training."""
        self._checked = True
        with self._charged():
            self._trial_pass(pl_module, batch)

    def _trial_pass(self, pl_module: pl.LightningModule, batch: Any) -> None:
        inputs = extract_input(batch, self.input_key)
        self.action.validate_input(inputs)
        if inputs.shape[0] == 0:
            return
        probe = _spread(inputs, _CHECK_SAMPLES).to(pl_module.device)
        try:
            with preserved_state(pl_module, self._cuda_devices):
                self.metric.rows(self._model(pl_module), probe, derivative="reverse")
        except InputError:
            raise
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: a trial derivative pass failed in the sanity check ({err!r}).")

    def _plan(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Tensor) -> None:
        """Price the analysis on a few of the first batch's inputs, pick the faster mode, fix the samples.

        An analysis of ``n`` samples over ``B`` batches costs ``B * per_batch + n * per_sample +
        solve``, each part measured here: the derivative pass and the accumulation on 2 and on
        ``_TIMING_SAMPLES`` samples (a line through the two), the state kept around each batch, and
        the solve. The samples are fixed so that this takes ``_ANALYSIS_SHARE`` of the budget of the
        steady training time between two analyses; the rest is left for logging, report files and
        pictures, charged as they happen. Where the batches' fixed costs alone would take half of
        that, only every k-th batch is analysed. The timed rows are discarded: the batch's share is
        then analysed like every later batch, so the first analysis is comparable with the others.
        """
        plan_started = time.perf_counter()
        probe = _spread(inputs, _TIMING_SAMPLES)
        model = self._model(pl_module)
        modes = ["reverse", "forward"] if self.metric.derivative == "auto" else [self.metric.derivative]
        with preserved_state(pl_module, self._cuda_devices):
            rows_per_sample = self.metric.rows_per_sample(model, probe[:2])
        m = self.action.num_generators
        if len(modes) == 2 and max(m, rows_per_sample) > 4 * min(m, rows_per_sample):
            # one mode needs over 4x the passes of the other: timing the loser would cost more than it tells
            modes = ["forward"] if m < rows_per_sample else ["reverse"]
        skipped_forward = len(modes) == 2 and not _forward_mode_loaded() and (
            _ANALYSIS_SHARE * self.overhead * self._fit_training(trainer) < _FORWARD_FIRST_USE)
        if skipped_forward:
            # forward mode's first use costs more than every analysis of this fit may: it could never pay off
            modes = ["reverse"]
        failures: Dict[str, Exception] = {}
        timed = {mode: self._time_mode(pl_module, model, probe, mode, failures) for mode in modes}
        # every rank must analyse the same batches: agree on the slowest rank's prices
        local = [value for mode in ("reverse", "forward")
                 for value in (timed[mode][:2] if mode in timed else (math.inf, math.inf))]
        agreed = _agree(trainer, local, "max")
        price = {"reverse": (agreed[0], agreed[1]), "forward": (agreed[2], agreed[3])}

        def probe_cost(mode: str) -> float:  # the pass over the probe, as the modes are compared
            return price[mode][0] + probe.shape[0] * price[mode][1]

        best = min(modes, key=probe_cost)
        if not math.isfinite(probe_cost(best)) and len(modes) == 1 and self.metric.derivative == "auto":
            # the cheaper mode by count failed (e.g. torch.no_grad inside forward): try the other
            best = "reverse" if best == "forward" else "forward"
            timed[best] = self._time_mode(pl_module, model, probe, best, failures)
            price[best] = tuple(_agree(trainer, list(timed[best][:2]), "max"))  # type: ignore[assignment]
        if not math.isfinite(probe_cost(best)):
            raise RuntimeError(f"every derivative mode failed: {failures}")
        self.metric.fix_derivative(best)
        # one all-reduce: the slowest rank's other prices and one-time costs, and the shortest training
        # time (the max of its negative)
        overheads = self._time_overheads(pl_module, timed[best][2], probe)
        acc_batch, acc_sample, state, solve, neg_train, fixed = _agree(
            trainer, [*overheads, -self._steady_training_time(), self._one_time_costs(trainer, plan_started)], "max"
        )
        per_batch = price[best][0] + acc_batch + state
        per_sample = price[best][1] + acc_sample
        train_time = -neg_train
        remaining = self._training_left(trainer, train_time) if train_time > 0 else math.inf
        batches = self._analysed_batches(trainer.num_val_batches)
        # enough rows for the algebra (4 per generator), and never fewer than the timed probe
        floor = max(_TIMING_SAMPLES, math.ceil(4 * m / max(rows_per_sample, 1)))
        smallest = min(batches, _MIN_BATCHES) * per_batch + floor * per_sample + solve
        if not self._monitored and train_time > 0:
            # even the smallest analysis does not fit between two analyses: analyse less often
            self._epoch_stride = self._stride_that_fits(smallest, train_time, remaining, fixed)
            if self._epoch_stride > 1:
                # the analyses that remain end with the fit's last epoch, the trained network; unknown, from here
                self._anchor_epoch = trainer.current_epoch
                if math.isfinite(remaining):
                    fit_batches = self._batches_trained + self._batches_left(trainer)
                    epochs = math.ceil(fit_batches / trainer.num_training_batches)
                    self._anchor_epoch = self._fit_start_epoch + epochs - 1
        budget = self._analysis_budget(self._epoch_stride, train_time, remaining, fixed)
        train_time *= self._epoch_stride
        room = _ANALYSIS_SHARE * budget - solve
        self._batch_stride = 1
        if batches > 1 and per_batch > 0 and batches * per_batch > room / 2:
            # never fewer than _MIN_BATCHES batches: samples from all over an ordered validation set
            widest = max(1, batches // min(batches, _MIN_BATCHES))
            self._batch_stride = min(widest, math.ceil(batches * per_batch / max(room / 2, 1e-9)))
        analysed = math.ceil(batches / self._batch_stride)
        total = analysed * inputs.shape[0]  # validation samples per process in the analysed batches
        left = room - analysed * per_batch
        planned = max(floor, int(left / per_sample)) if per_sample > 0 else total
        self.planned_samples = min(planned, total) if total > 0 else planned
        self._per_batch = self._batch_share(trainer, test=False)
        least = analysed * per_batch + self.planned_samples * per_sample + solve
        other = "forward" if best == "reverse" else "reverse"
        other_note = (f"{other} {probe_cost(other) * 1e3:.1f} ms" if other in modes and math.isfinite(probe_cost(other))
                      else f"{other} not timed" if other not in modes else f"{other} failed")
        if skipped_forward and best == "reverse":
            other_note = f"forward not tried: its first use, ~{_FORWARD_FIRST_USE:g} s, is over this fit's budget"
        every = f", every {self._batch_stride} batches" if self._batch_stride > 1 else ""
        if self._epoch_stride > 1:
            every += f"; every {self.every_n_epochs * self._epoch_stride} epochs, to stay within the budget"
        rank_zero_info(
            f"LieGGCallback: {self.planned_samples} samples per analysis (of {total}{every}), about "
            f"{least * 1e3:.0f} ms ({per_sample * 1e3:.2f} ms a sample, {per_batch * 1e3:.1f} ms a batch, "
            f"{solve * 1e3:.1f} ms the solve) for {train_time:.2f} s of training between analyses "
            f"(`overhead={self.overhead:g}`); derivative: {best} ({probe_cost(best) * 1e3:.1f} ms vs {other_note} "
            f"on {probe.shape[0]} samples)."
        )
        if train_time > 0 and least > budget:
            only = math.isfinite(remaining) and remaining < train_time  # the fit has one analysis
            if (budget <= 0 or only) and not self._monitored:  # a short fit: what it pays once takes its budget
                rank_zero_warn(
                    f"LieGGCallback: this fit is short for `overhead={self.overhead:g}`: what it pays once (the "
                    f"sanity check, the plan and the last picture, {fixed * 1e3:.0f} ms) takes most of its budget, "
                    f"{self.overhead:.0%} of about {-neg_train + remaining:.2f} s of training. One analysis "
                    f"({least * 1e3:.0f} ms) comes all the same, at epoch {self._anchor_epoch}. Allow more "
                    "(`overhead`) to analyse more often."
                )
            else:
                rank_zero_warn(
                    f"LieGGCallback: the smallest analysis ({self.planned_samples} samples and the solve, "
                    f"{least * 1e3:.0f} ms) costs more than the {max(budget, 0.0) * 1e3:.0f} ms "
                    f"`overhead={self.overhead:g}` leaves each analysis ({train_time:.2f} s of training between "
                    "two). Analyse less often (`every_n_epochs`) or allow more (`overhead`)."
                )

    def _one_time_costs(self, trainer: pl.Trainer, plan_started: float) -> float:
        """Seconds the run's budget pays once: spent so far (the sanity check, this plan), and its last picture."""
        fixed = self._cost() + (time.perf_counter() - plan_started)
        if self.log_images and trainer.loggers:
            fixed += _DRAW_PRIOR  # the run's last analysis is always drawn
        return fixed

    def _fit_training(self, trainer: pl.Trainer) -> float:
        """Seconds of training the whole fit is expected to take at the pace so far; inf if its length is unknown."""
        done = self._steady_training_time()
        return done + self._training_left(trainer, done)

    def _training_left(self, trainer: pl.Trainer, done: float) -> float:
        """Seconds of training ``fit`` has left, ``done`` seconds having trained the batches so far; inf if unknown."""
        left = self._batches_left(trainer)
        if not math.isfinite(left) or not self._batches_trained:
            return math.inf
        return left * done / self._batches_trained

    def _batches_left(self, trainer: pl.Trainer) -> float:
        """Training batches ``fit`` has left after those so far (``max_epochs``, ``max_steps``); inf if unknown."""
        per_epoch = trainer.num_training_batches
        if not math.isfinite(per_epoch) or per_epoch <= 0:
            return math.inf
        left = math.inf
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            left = (trainer.max_epochs - self._fit_start_epoch) * per_epoch - self._batches_trained
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            left = min(left, (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches)
        return max(left, 0)

    def _analysis_budget(self, stride: int, interval: float, remaining: float, fixed: float) -> float:
        """Seconds one analysis may cost when every ``stride``-th comes.

        ``overhead`` of the training between two analyses; and when the fit's length is known, no more
        than an equal share of ``overhead`` of the whole fit's training, less its one-time costs
        (``fixed``), among the analyses left. On a short fit the one-time costs weigh: fewer analyses.
        """
        budget = self.overhead * interval * stride
        if math.isfinite(remaining):
            analyses = 1 + math.floor(remaining / (interval * stride) + 1e-9)  # this one and those to come
            budget = min(budget, (self.overhead * (interval + remaining) - fixed) / analyses)
        return budget

    def _stride_that_fits(self, smallest: float, interval: float, remaining: float, fixed: float) -> int:
        """The least k for which the smallest analysis fits its share of the budget, analysing every k-th time."""
        share = _ANALYSIS_SHARE
        if not math.isfinite(remaining):
            return max(1, math.ceil(smallest / (share * self.overhead * interval)))
        stride = 1
        # past remaining / interval this analysis is the fit's last: no larger stride spends less
        while remaining >= interval * stride and smallest > share * self._analysis_budget(
                stride, interval, remaining, fixed):
            stride += 1
        return stride

    def _time_mode(
        self, pl_module: pl.LightningModule, model: Callable[[Tensor], Tensor], probe: Tensor, mode: str,
        failures: Dict[str, Exception],
    ) -> Tuple[float, float, Any]:
        """Seconds per call and per sample of the derivative pass in ``mode`` (one-time costs excluded), its rows.

        The pass runs on 2 samples and (twice, the slower kept) on the whole probe: the line through
        the two times. ``(inf, inf, None)`` if the pass fails.
        """
        try:
            with preserved_state(pl_module, self._cuda_devices):
                self.metric.rows(model, probe[:2], derivative=mode)  # one-time costs out of the price
                small = self._timed(pl_module, lambda: self.metric.rows(model, probe[:2], derivative=mode))[0]
                full, rows = self._timed(pl_module, lambda: self.metric.rows(model, probe, derivative=mode))
                # twice, keeping the slower: one lucky timing on a shared machine would overspend every epoch
                full = max(full, self._timed(pl_module, lambda: self.metric.rows(model, probe, derivative=mode))[0])
        except InputError:
            raise
        except Exception as err:  # e.g. torch.no_grad inside forward breaks reverse mode
            failures[mode] = err
            return math.inf, math.inf, None
        per_call, per_sample = _line(small, full, min(2, probe.shape[0]), probe.shape[0])
        return per_call, per_sample, rows

    @staticmethod
    def _timed(pl_module: pl.LightningModule, work: Callable[[], Any]) -> Tuple[float, Any]:
        _synchronize(pl_module.device)
        start = time.perf_counter()
        out = work()
        _synchronize(pl_module.device)
        return time.perf_counter() - start, out

    def _time_overheads(self, pl_module: pl.LightningModule, rows: Any, probe: Tensor) -> List[float]:
        """Seconds of the accumulation (per call, per sample), the kept state per batch and one solve.

        A throwaway metric takes the timed rows; the solve does not depend on the samples.
        """
        scratch = fresh_metric(self.metric).place_on(probe.device)
        n = probe.shape[0]
        few = min(2, n)

        def head(count: int) -> Any:
            return {k: v[:count] for k, v in rows.items()} if isinstance(rows, dict) else rows[:count]

        scratch.update_rows(head(few), probe[:few])  # one-time costs out of the price
        small = self._timed(pl_module, lambda: scratch.update_rows(head(few), probe[:few]))[0]
        full = self._timed(pl_module, lambda: scratch.update_rows(rows, probe))[0]
        acc_call, acc_sample = _line(small, full, few, n)

        def keep_state() -> None:
            with preserved_state(pl_module, self._cuda_devices):
                pass

        state = min(self._timed(pl_module, keep_state)[0] for _ in range(2))
        solve = math.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe may have fewer rows than generators: no news here
            for _ in range(2):  # the first solve may load linear-algebra kernels: keep the faster
                try:
                    # unwrapped: a throwaway must not sync across processes
                    solve = min(solve, self._timed(pl_module, lambda: LieGGMetric.compute(scratch))[0])
                except Exception:  # an unsolvable probe prices nothing
                    solve = 0.0
        return [acc_call, acc_sample, state, solve]

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_started is not None and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._validation_time += time.perf_counter() - self._validation_started
        self._validation_started = None
        if not self._active:
            if trainer.state.fn == "fit" and not trainer.sanity_checking:
                # no analysis this epoch: a stale value must not count as a new one for EarlyStopping
                for key in [k for k in trainer.callback_metrics if k.startswith(self.prefix)]:
                    trainer.callback_metrics.pop(key, None)
            return
        self._active = False
        with self._charged():
            reports = self._solve_and_log(trainer, pl_module)
        if reports is not None and trainer.state.fn == "fit":
            self._fit_analyses += 1
            self._check_cost(trainer)
        if reports is None or not trainer.is_global_zero or not self.log_images or not trainer.loggers:
            return
        self._draw(trainer, pl_module, _shown_report(reports), always=trainer.state.fn != "fit",
                   layers=reports if len(reports) > 1 or MODEL_OUTPUT not in reports else None)

    def _check_cost(self, trainer: pl.Trainer) -> None:
        """Say once when one analysis (its planning apart) costs more than the budget allows."""
        if self._warned_cost or self._fit_analyses < 2 or self.planned_samples is None:
            return
        cost = self._spent - self._spent_at_start
        # training between two analyses: the steady time of an epoch so far, times the epochs between
        epochs = trainer.current_epoch + 1 - self._fit_start_epoch
        interval = self._steady_training_time() / max(epochs, 1) * self.every_n_epochs * self._epoch_stride
        if interval <= 0 or cost <= self.overhead * interval:
            return
        self._warned_cost = True
        every = math.ceil(self.every_n_epochs * cost / (self.overhead * interval))
        rank_zero_warn(
            f"LieGGCallback: one analysis of {self.planned_samples} samples costs {cost * 1e3:.0f} ms, "
            f"{cost / interval:.0%} of the {interval:.2f} s of training between two analyses, over "
            f"`overhead={self.overhead:g}`. To stay within it, analyse less often: `every_n_epochs={every}`."
        )

    def _solve_and_log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> Optional[Dict[str, SymmetryReport]]:
        """Solve on every rank, log the values, keep the history; rank zero queues the report files."""
        try:
            computed = self.metric.compute()  # every rank: compute() syncs the states
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: the analysis was skipped ({err}).")
            return None
        stage = trainer.state.fn.value if trainer.state.fn is not None else "validate"
        reports = computed if isinstance(computed, dict) else {MODEL_OUTPUT: computed}
        report = _shown_report(reports)
        self.last_report = computed
        values: Dict[str, float] = {}
        for name, layer_report in reports.items():
            scope = f"{name}/" if name != MODEL_OUTPUT else ""
            layer_values = {**layer_report.summary(), "num_samples": float(layer_report.num_samples)}
            values.update({scope + key: value for key, value in layer_values.items()})
        defined = {self.prefix + name: value for name, value in values.items() if math.isfinite(value)}
        if defined:  # undefined values are not logged
            # one value per epoch: `batch_size=1` spares Lightning a search of the batch for its size
            pl_module.log_dict(defined, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)
        self.history.append({"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step, **values})
        self.spectra.append(report.variances.clone())
        if self.verbose:
            rank_zero_info(f"LieGG {self.describe().splitlines()[-1]}")
        if self.save_reports and trainer.loggers and trainer.is_global_zero:
            for name, layer_report in reports.items():
                filename = self._report_name(stage, trainer.current_epoch, trainer.global_step, name)
                self._write(functools.partial(save_report, list(trainer.loggers), layer_report, f"liegg/{filename}"))
        return reports

    def _report_name(self, stage: str, epoch: int, step: int, layer: str = MODEL_OUTPUT) -> str:
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.prefix).strip("-") or "liegg"
        where = f"_layer-{re.sub(r'[^A-Za-z0-9_.-]+', '-', layer)}" if layer != MODEL_OUTPUT else ""
        return f"{prefix}-report_{stage}_epoch{epoch:04d}_step{step:07d}_{len(self.history):04d}{where}.json"

    # ------------------------------------------------------------------ pictures

    def _orbit_curves(self, pl_module: pl.LightningModule, report: SymmetryReport) -> Optional[Dict[str, Any]]:
        """The model's outputs along the orbit of the example input: here, where the model may run."""
        if self._example_input is None or len(report.generators) < 2:
            return None
        try:
            with preserved_state(pl_module, self._cuda_devices):
                return orbit_outputs(self._model(pl_module), self.action, self._example_input, report.generators[0],
                                     report.generators[-1], output_transform=self.metric.output_transform,
                                     device=pl_module.device)
        except Exception:  # no finite transformation, or an output that is not a tensor: no curves
            return None

    def _draw(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        report: SymmetryReport,
        always: bool,
        layers: Optional[Dict[str, SymmetryReport]] = None,
    ) -> None:
        expected = self._draw_time / self._draws if self._draws else _DRAW_PRIOR
        # room for this drawing and for the run's last one, which is always drawn
        if not always and self._cost() + 2 * expected > (1 - _UNMEASURED) * self._budget():
            # over budget now; the run's last analysis is drawn at its end (the orbit curves then
            # come from the model as it is at the end, moments after that analysis)
            self._undrawn = functools.partial(self._draw_now, trainer, pl_module, report, layers,
                                              step=trainer.global_step, background=False)
            return
        self._undrawn = None
        self._draw_now(trainer, pl_module, report, layers, step=trainer.global_step,
                       background=self.background_drawing)

    def _draw_now(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        report: SymmetryReport,
        layers: Optional[Dict[str, SymmetryReport]],
        step: int,
        background: bool,
    ) -> None:
        with self._charged():
            orbit = self._orbit_curves(pl_module, report)  # the model runs here, in the main thread
        job = functools.partial(
            log_pictures,
            list(trainer.loggers),
            step,
            report,
            self.action,
            spectra=list(self.spectra),
            labels=list(self.labels),
            example_input=self._example_input,
            orbit=orbit,
            num_generators=self.log_generators,
            prefix=self.prefix,
            layers=layers,
        )
        if background:
            self._submit(job)
        else:
            self._run(job)

    def _run(self, job: Callable[[], Any]) -> None:
        started = time.perf_counter()
        try:
            job()  # log_pictures turns its own failures into warnings
        finally:
            with self._lock:
                self._draw_time += time.perf_counter() - started
                self._draws += 1

    def _write(self, job: Callable[[], Any]) -> None:
        """Write report files in a background thread, in order, none dropped: a slow disk never holds training."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liegg-write")
        self._writer.submit(self._timed_write, job)

    def _timed_write(self, job: Callable[[], Any]) -> None:
        started = time.perf_counter()
        try:
            job()  # save_report turns its own failures into warnings
        finally:
            with self._lock:
                self._save_time += time.perf_counter() - started

    def _run_then_next(self, job: Callable[[], Any]) -> None:
        self._run(job)
        with self._lock:
            waiting, self._waiting = self._waiting, None
            if waiting is not None and self._drawer is not None:
                self._running = self._drawer.submit(self._run_then_next, waiting)

    def _submit(self, job: Callable[[], Any]) -> None:
        with self._lock:
            if self._running is not None and not self._running.done():
                self._waiting = job  # replaces an older waiting drawing: the queue never grows
                return
            if self._drawer is None:
                self._drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liegg-draw")
            self._running = self._drawer.submit(self._run_then_next, job)

    def wait_for_pictures(self) -> None:
        """Block until the pictures being drawn (and the one waiting) have been sent to the loggers."""
        while True:
            with self._lock:
                running = self._running
                if running is None or (running.done() and self._waiting is None):
                    break
            running.result()

    def _finish_pictures(self) -> None:
        if self._undrawn is not None:  # the run's last analysis is always drawn
            job, self._undrawn = self._undrawn, None
            job()
        self.wait_for_pictures()
        if self._drawer is not None:
            self._drawer.shutdown(wait=True)
            self._drawer = None
        self._running = None
        if self._writer is not None:  # every report file is on disk when fit/validate/test returns
            self._writer.shutdown(wait=True)
            self._writer = None

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # at the batch's start, so a misconfiguration fails before the model's own step runs
        self._batch(trainer, pl_module, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    @override
    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._batch(trainer, pl_module, batch, dataloader_idx)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # before Lightning finalises the loggers
        self._finish_pictures()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # never delay an exception: drop what waits, do not wait for what runs
        with self._lock:
            self._waiting = None
            self._undrawn = None
            drawer, self._drawer = self._drawer, None
            writer, self._writer = self._writer, None
        if drawer is not None:
            drawer.shutdown(wait=False, cancel_futures=True)
        if writer is not None:  # the queued reports are still written, without holding the exception
            writer.shutdown(wait=False)

    def __getstate__(self) -> Dict[str, Any]:
        # threads and locks cannot be pickled (ddp_spawn pickles callbacks); fresh ones are made on demand
        state = self.__dict__.copy()
        state.update(_drawer=None, _writer=None, _running=None, _waiting=None, _undrawn=None, _lock=None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Dict[str, Any]
    ) -> None:
        # checkpoints of version 0.1 keyed the state by prefix and action repr: find ours by prefix
        states = checkpoint.get("callbacks", {})
        if self.state_key in states:
            return
        marker = f"'prefix': {self.prefix!r}"
        legacy = [k for k in states if isinstance(k, str) and k.startswith("LieGGCallback{") and marker in k]
        if len(legacy) == 1:
            self.load_state_dict(states[legacy[0]])

    @override
    def state_dict(self) -> Dict[str, Any]:
        return {
            "history": [dict(h) for h in self.history],
            "spectra": [s.clone() for s in self.spectra],
            "planned_samples": self.planned_samples,
            "batch_stride": self._batch_stride,
            "epoch_stride": self._epoch_stride,
            "anchor_epoch": self._anchor_epoch,
        }

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.spectra = [torch.as_tensor(s, dtype=torch.float64) for s in state_dict.get("spectra", [])]
        self.planned_samples = state_dict.get("planned_samples", self.planned_samples)
        self._batch_stride = int(state_dict.get("batch_stride", 1))
        self._epoch_stride = int(state_dict.get("epoch_stride", 1))
        self._anchor_epoch = int(state_dict.get("anchor_epoch", state_dict.get("plan_epoch", 0)))

    @property
    def labels(self) -> List[str]:
        """One label per analysis, as the pictures show them: ``"epoch N"`` during ``fit``, else the stage."""
        return [f"epoch {h.get('epoch', i)}" if h.get("stage", "fit") == "fit" else str(h["stage"])
                for i, h in enumerate(self.history)]

    def describe(self) -> str:
        """One line per analysis so far: stage, epoch and the logged values."""
        lines = []
        for h in self.history:
            vals = ", ".join(f"{k}={v:.3g}" for k, v in h.items() if k not in ("epoch", "step", "stage"))
            where = f"epoch {h['epoch']}" if h.get("stage", "fit") == "fit" else h["stage"]
            lines.append(f"{where}: {vals}")
        return "\n".join(lines)
