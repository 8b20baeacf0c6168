"""``LieGGCallback``: watch which symmetries a network learns, at validation time, within a cost budget."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from liegg_lightning._batches import extract_input
from liegg_lightning._checks import check_callback_arguments
from liegg_lightning._errors import InputError
from liegg_lightning.actions import GroupAction
from liegg_lightning.callback import _names
from liegg_lightning.callback._evaluation import EvaluationBudget
from liegg_lightning.callback._history import History, shown_report
from liegg_lightning.callback._lightning import logged_step
from liegg_lightning.callback._pictures import orbit_on_every_rank, picture_job, queue_pictures, queue_report_files
from liegg_lightning.callback._planning import Planner, PlanOptions, probe_of, spread
from liegg_lightning.callback._state import cuda_devices_of, preserved_state
from liegg_lightning.callback._worker import Worker
from liegg_lightning.functional.layers import MODEL_OUTPUT, layer_output_fn
from liegg_lightning.metric import LieGGMetric, adds_nothing, fresh_metric
from liegg_lightning.report import SymmetryReport

__all__ = ["LieGGCallback"]

#: Samples the sanity check runs through the derivative pass to catch configuration errors.
_CHECK_SAMPLES = 4
#: Seconds the end of a run waits for pictures and report files at least, whatever the budget left.
_LEAST_WAIT = 1.0


class LieGGCallback(Callback):
    r"""Find the symmetries a network has learned, and how invariant it is to them, at validation time.

    After every ``every_n_epochs`` epochs of training (and in every ``trainer.validate()`` and
    ``trainer.test()``) the callback streams network-polarization rows of the validation (test)
    inputs into a float64 Gram matrix on the model's device, solves it on every rank and logs
    ``<prefix>symmetry_variance``, ``normalized_variance``, ``nullity``, ``closure_error``,
    ``generator_drift``, ``num_samples`` and, with a reference algebra, ``symmetry_bias`` and
    ``subspace_bias`` (``validate``/``test`` analyses under ``<prefix>validate/`` and
    ``<prefix>test/``, so the fit's curves never jump). On rank zero it draws pictures and writes
    each report as JSON into every logger's run directory.

    **Cost.** With ``max_samples="auto"`` the first analysis of a fit prices its parts on a few
    samples and fixes the samples per analysis so that the monitor spends about ``overhead`` of the
    training time; when ``every_n_epochs`` is left unset the budget may also thin the analyses, and
    what it changes is said in one line. However short the fit, its last validation run is analysed
    when that costs under ``overhead`` × 5 s (0.5 s by default). The docs' guide to the callback
    gives the whole rule.

    **Never harm.** Derivatives come from ``torch.autograd.grad`` on a copy of the input; buffers (by
    name), random states (global, and the generators modules hold) and compiled graphs are left as
    they were; every rank runs the same extra passes (:func:`~liegg_lightning.in_analysis` is True in
    them). Configuration errors raise before the first training step; anything found later becomes
    one warning and switches that part off.

    Args:
        metric: What to measure: a :class:`~liegg_lightning.LieGGMetric`, or a bare
            :class:`~liegg_lightning.GroupAction` with the metric's options as keywords
            (``LieGGCallback(VectorAction(5, 2), reference_algebra="so")``), as ``analyze`` takes them.
        input_key: Which element of a batch is the input: an index for tuple/list batches, a key
            for dict batches; a bare tensor batch is the input itself.
        layer: Name of a submodule (as in ``named_modules()``) whose output is analysed instead
            of the model's.
        every_n_epochs: Analyse the validation runs of every this many-th epoch of ``fit``, counted
            as ``ModelCheckpoint`` counts them (``2``: epochs 1, 3, 5, ...); ``0``: none. ``None``
            (default): every epoch, and the budget (or a resumed checkpoint's plan) may thin them.
        overhead: The share of the training time the monitor may spend with ``max_samples="auto"``.
        max_samples: ``"auto"`` (fixed at the first analysis from ``overhead``), an int cap per
            analysis and process, or ``None`` for every validation sample.
        dataloader_idx: Which validation dataloader(s) to use; ``None`` uses all.
        log_generators: How many leading generators to draw and print.
        log_images: Draw pictures to the loggers.
        prefix: Prefix of the logged names; also names the callback's checkpoint state.
        save_reports: Write each report as JSON into each logger's run directory.
        background_drawing: Draw the pictures in a background thread (rank zero).
        verbose: Print one line per analysis (rank zero).
        metric_options: With a bare action, the :class:`~liegg_lightning.LieGGMetric` options.

    Example:
        >>> from liegg_lightning import LieGGCallback, VectorAction
        >>> callback = LieGGCallback(VectorAction(dim=5, components=2), reference_algebra="so")
        >>> callback.state_key
        "LieGGCallback{'prefix': 'liegg/'}"
    """

    def __init__(
        self,
        metric: Union[LieGGMetric, GroupAction],
        input_key: Union[int, str] = 0,
        layer: Optional[str] = None,
        every_n_epochs: Optional[int] = None,
        overhead: float = 0.1,
        max_samples: Union[Literal["auto"], int, None] = "auto",
        dataloader_idx: Optional[Union[int, List[int]]] = None,
        log_generators: int = 4,
        log_images: bool = True,
        prefix: str = "liegg/",
        save_reports: bool = True,
        background_drawing: bool = True,
        verbose: bool = False,
        **metric_options: Any,
    ) -> None:
        super().__init__()
        check_callback_arguments(every_n_epochs=every_n_epochs, overhead=overhead, max_samples=max_samples,
                                 input_key=input_key, log_generators=log_generators, layer=layer, prefix=prefix,
                                 dataloader_idx=dataloader_idx, log_images=log_images, save_reports=save_reports,
                                 background_drawing=background_drawing, verbose=verbose)
        if isinstance(metric, LieGGMetric):  # LightningCLI passes every option at its default: they add nothing
            metric_options = {k: v for k, v in metric_options.items() if not adds_nothing(metric, k, v)}
        self.metric = fresh_metric(metric, **metric_options)  # the user's metric is left as it was
        self.action = self.metric.action
        # what is read, when, and how much
        self.input_key, self.layer, self.every_n_epochs = input_key, layer, every_n_epochs
        self.overhead, self.max_samples = float(overhead), max_samples
        loaders = dataloader_idx if isinstance(dataloader_idx, (list, tuple)) or dataloader_idx is None else [
            dataloader_idx]
        self.dataloader_idx: Optional[List[int]] = None if loaders is None else list(loaders)
        # what is shown and kept
        self.log_generators, self.log_images, self.prefix = log_generators, log_images, prefix
        self.save_reports, self.background_drawing, self.verbose = save_reports, background_drawing, verbose

        self.record = History()
        #: The last analysis: a report, or with the metric's ``layers`` a dict ``layer -> report``.
        self.last_report: Optional[Union[SymmetryReport, Dict[str, SymmetryReport]]] = None
        self.planner = Planner(PlanOptions(
            every_n_epochs=every_n_epochs, overhead=self.overhead, prefix=prefix, input_key=input_key,
            dataloader_idx=None if self.dataloader_idx is None else tuple(self.dataloader_idx), draws=log_images,
        ), self.metric)
        self._worker = Worker()
        self._analysing = False  # this validation/test run is analysed
        self._pass_failed = False  # a derivative pass of this run raised (agreed at its end)
        self._checked_loaders: set = set()
        self._off_loaders: set = set()  # switched off after a configuration error found during training
        self._seen = 0
        self._batch_index = 0
        self._per_batch: Optional[int] = None
        self._cap: Optional[int] = None  # samples in all this run
        self._example_input: Optional[Tensor] = None
        self._forward: Optional[Callable[[Tensor], Any]] = None
        self._cuda_devices: List[int] = []
        self._logged = False  # this validation run logged values (else any of our names was logged by another)
        self._clashes: set = set()
        self._evaluation: Optional[EvaluationBudget] = None

    @property
    @override
    def state_key(self) -> str:
        # plain values only: a repr of the action would change with the code and orphan checkpoints
        return self._generate_state_key(prefix=self.prefix)

    @property
    def planned_samples(self) -> Optional[int]:
        """Samples per analysis fixed by the budget (``max_samples="auto"``), once known."""
        return None if self.planner.plan is None else self.planner.plan.samples

    # ------------------------------------------------------------------ set-up
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _names.check_prefixes(self.prefix, [c.prefix for c in trainer.callbacks  # type: ignore[attr-defined]
                                     if isinstance(c, LieGGCallback) and c is not self])
        if self.layer is not None and self.metric.layer_actions is not None:
            raise ValueError("Expected either the callback's `layer` or the metric's `layers`, got both.")
        modules = dict(pl_module.named_modules())
        missing = [n for n in ([self.layer] if self.layer else self.metric.layer_names) if n and n not in modules]
        if missing:
            names = [n for n in modules if n]
            what = f"`layer={self.layer!r}` is not a submodule" if self.layer else \
                f"The metric's layers {missing} are not submodules"
            raise ValueError(f"{what} of {type(pl_module).__name__}. Expected names from: {', '.join(names[:30])}"
                             f"{' ...' if len(names) > 30 else ''}.")
        self._forward = pl_module if self.layer is None else layer_output_fn(pl_module, self.layer)
        self._cuda_devices = cuda_devices_of(pl_module)
        self.planner.setup(trainer, stage, self._forward, self._cuda_devices)  # in fit, also checks the monitors
        self.metric.place_on(pl_module.device)
        self._checked_loaders, self._off_loaders = set(), set()
        self._worker.reopen()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.planner.start_fit(trainer)  # a fresh ledger: every fit budgets from its own clocks
        has_validation = trainer.limit_val_batches != 0 and trainer.val_dataloaders is not None
        if not has_validation and self.every_n_epochs != 0:
            rank_zero_warn(
                "LieGGCallback analyses validation (and test) data, and this fit has none: nothing will be "
                "analysed during `fit`. Pass validation dataloaders, or call `trainer.validate()` after it."
            )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.planner.batch_trained()

    # ------------------------------------------------------------------ one analysis
    def _should_skip(self, trainer: pl.Trainer) -> bool:
        """Whether this validation/test run goes unanalysed (the sanity check, ``predict``, or not due)."""
        if trainer.sanity_checking:
            return True
        if trainer.state.fn == "fit":
            return not self.planner.due(trainer)
        return trainer.state.fn not in ("validate", "test")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if fitting:
            self.planner.start_validation()
        self._analysing = not self._should_skip(trainer)
        if self._analysing and fitting and self.max_samples == "auto" and self.planner.plan is None:
            with self.planner.charged():
                self._analysing = self.planner.make_plan(trainer, pl_module)  # every rank: it agrees
        if not self._analysing:
            return
        self.planner.begin()
        # a fresh accumulator every run: ddp_spawn shares state tensors created in the parent
        self.metric.reset()
        self.metric.place_on(pl_module.device)
        self.metric.cap_pass_memory(self.planner.pass_cap(trainer))  # on CUDA, within the step's own peak too
        self._seen, self._batch_index, self._pass_failed, self._example_input = 0, 0, False, None
        batches = self.planner.analysed_batches(trainer.num_test_batches if trainer.state.fn == "test"
                                                else trainer.num_val_batches)
        plan = self.planner.plan
        self._per_batch = None if plan is None else plan.per_batch(batches)
        # batches the Trainer cannot count (a stream): the plan's samples in all, from the first batches
        self._cap = self.max_samples if isinstance(self.max_samples, int) else (
            plan.samples if plan is not None and batches == 0 else None)
        # validate()/test() that no fit planned for: a budget of their own (the floor, and a share of their time)
        stage = "test" if trainer.state.fn == "test" else "validate"
        self._evaluation = EvaluationBudget(
            self.overhead, batches, trainer.world_size == 1, stage, self.planner.spent_on_loop
        ) if not fitting and self.max_samples == "auto" and plan is None else None

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # at the batch's start, so a misconfiguration fails before the model's own step runs
        if trainer.sanity_checking:
            self._check_loader(trainer, pl_module, batch, dataloader_idx)
            return
        if not self._analysing or self._pass_failed or dataloader_idx in self._off_loaders:
            return
        if self.dataloader_idx is not None and dataloader_idx not in self.dataloader_idx:
            return
        index, self._batch_index = self._batch_index, self._batch_index + 1
        cap = self._cap
        stride = 1 if self.planner.plan is None else self.planner.plan.batch_stride
        if index % stride or (cap is not None and self._seen >= cap):
            return
        inputs = self._inputs_of(trainer, batch, dataloader_idx)
        count = 0 if inputs is None else self._samples_of(pl_module, index, inputs)
        if inputs is None or count == 0:
            return
        inputs = spread(inputs, count)[: None if cap is None else cap - self._seen]
        inputs = inputs.detach().to(pl_module.device).clone()  # the model never sees the loop's tensor
        try:
            with self.planner.charged(), preserved_state(pl_module, self._cuda_devices):
                self.metric.update(self._forward or pl_module, inputs)
        except InputError as err:
            self._configuration_error(trainer, err, dataloader_idx)
            return
        except Exception as err:  # a failure inside the user's model must not end the training
            self._pass_failed = True
            rank_zero_warn(f"LieGGCallback: the derivative pass failed ({err!r}); this analysis is skipped.")
            return
        self._seen += inputs.shape[0]
        if self.log_images and self._example_input is None:  # the orbit picture's input
            self._example_input = inputs[0].detach().to("cpu", torch.float32).clone()

    def _inputs_of(self, trainer: pl.Trainer, batch: Any, dataloader_idx: int) -> Optional[Tensor]:
        """The batch's input, checked; ``None`` for an empty batch (it adds nothing) or one that does not fit."""
        try:
            inputs = extract_input(batch, self.input_key)
            self.action.validate_input(inputs)
        except InputError as err:
            self._configuration_error(trainer, err, dataloader_idx)
            return None
        return inputs if inputs.shape[0] else None

    def _samples_of(self, pl_module: pl.LightningModule, index: int, inputs: Tensor) -> int:
        """How many samples of this batch to analyse (spread over it)."""
        if self._evaluation is not None and self._evaluation.floor is None:  # the floor needs a sample's rows
            with self.planner.charged(), preserved_state(pl_module, self._cuda_devices):
                rows = self.metric.rows_per_sample(self._forward or pl_module, inputs[:1].detach().clone())
            rank_zero_info(self._evaluation.start(rows, self.action.num_generators))
        return self._evaluation.samples_for(index, inputs.shape[0], self._seen) if self._evaluation is not None \
            else self._per_batch or inputs.shape[0]

    def _configuration_error(self, trainer: pl.Trainer, err: InputError, dataloader_idx: int) -> None:
        """Before training: raise. During it: one loud warning, and that dataloader is switched off."""
        if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.global_step == 0:
            raise err
        self._off_loaders.add(dataloader_idx)
        rank_zero_warn(
            f"LieGGCallback: validation dataloader {dataloader_idx} does not fit the metric ({err}). It is not "
            "analysed for the rest of this fit; the training goes on."
        )

    def _check_loader(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """In the sanity check, every dataloader's first batch: does the batch, input and output fit?"""
        if idx in self._checked_loaders or (self.dataloader_idx is not None and idx not in self.dataloader_idx):
            return
        self._checked_loaders.add(idx)
        with self.planner.charged():
            inputs = extract_input(batch, self.input_key)
            self.action.validate_input(inputs)
            # the trial pass runs on every rank or on none (a collective in the model must see them all)
            if trainer.strategy.reduce_boolean_decision(inputs.shape[0] == 0, all=False):
                return
            probe = probe_of(inputs, pl_module.device)
            self.planner.keep_probe(probe, inputs.shape[0])
            try:
                with preserved_state(pl_module, self._cuda_devices):
                    self.metric.rows(self._forward or pl_module, probe[:_CHECK_SAMPLES], derivative="reverse")
            except InputError:
                raise
            except Exception as err:
                rank_zero_warn(f"LieGGCallback: a trial derivative pass failed in the sanity check ({err!r}).")

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if fitting:
            self.planner.end_validation()
        if not self._analysing:
            if fitting:  # no analysis this time: a stale value must not count as a new one for EarlyStopping
                for key in _names.owned_names(list(trainer.callback_metrics), self.prefix, self.metric.layer_names):
                    trainer.callback_metrics.pop(key, None)
            return
        self._analysing = False
        # every rank skips the solve's collectives together
        if trainer.strategy.reduce_boolean_decision(self._pass_failed, all=False):
            return
        with self.planner.charged():
            reports = self._solve_and_log(trainer, pl_module)
        if reports is None:
            return
        if fitting:
            self.planner.analysed(trainer)
        if self.log_images and trainer.loggers:  # every rank: the orbit's passes run on all of them or none
            with self.planner.charged():
                orbit = orbit_on_every_rank(trainer, pl_module, self._forward or pl_module, self.action,
                                            self._example_input, shown_report(reports), self.metric.output_transform,
                                            self._cuda_devices, pl_module.device)
            if trainer.is_global_zero:  # validate/test, and the moment of emergence, whatever the budget
                job = picture_job(list(trainer.loggers), logged_step(trainer), reports, self.action, self.record,
                                  self._example_input, orbit, self.log_generators, self.prefix)
                queue_pictures(self._worker, job, self.planner.drawing_account(), background=self.background_drawing,
                               now=not fitting or self.record.emerged() or self.planner.may_draw())

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # our names after a run we logged nothing in (our stale values removed) were logged by someone else
        metrics, self._logged = {} if self._logged else trainer.callback_metrics, False
        clashes = _names.new_clashes(metrics, self.prefix, self.metric.layer_names, self._clashes)
        if clashes:
            rank_zero_warn(_names.clash_message(clashes))

    on_test_end = on_validation_end

    def _solve_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[Dict[str, SymmetryReport]]:
        """Solve on every rank, log the values, keep the history; rank zero queues the report files."""
        try:
            computed = self.metric.compute()  # every rank: compute() syncs the states
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: the analysis was skipped ({err}).")
            return None
        stage = trainer.state.fn.value if trainer.state.fn is not None else "validate"
        reports = computed if isinstance(computed, dict) else {MODEL_OUTPUT: computed}
        self.last_report = computed
        values = self.record.add(stage, trainer.current_epoch, trainer.global_step, reports)
        scope = self.prefix if stage == "fit" else f"{self.prefix}{stage}/"  # validate/test apart from the fit
        defined = {scope + name: value for name, value in values.items() if math.isfinite(value)}
        if defined:  # undefined values are not logged; `batch_size=1` spares Lightning a search of the batch
            pl_module.log_dict(defined, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)
        self._logged = True
        if self.verbose:
            rank_zero_info(f"LieGG {self.describe().splitlines()[-1]}")
        if self.save_reports and trainer.loggers and trainer.is_global_zero:
            names = {layer: _names.report_file_name(self.prefix, stage, trainer.current_epoch, trainer.global_step,
                                             len(self.history), layer) for layer in reports}
            queue_report_files(self._worker, list(trainer.loggers), reports, names, self.planner.saving_account())
        return reports

    # ------------------------------------------------------------------ pictures and files
    def wait_for_pictures(self) -> None:
        """Block until the pictures being drawn (and the one waiting) have been sent to the loggers."""
        self._worker.pictures.wait()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # before Lightning finalises the loggers; a stalled logger costs a warning, not the run's time
        self._worker.finish_or_warn(max(self.planner.budget_left(), _LEAST_WAIT), self.planner.drawing_account())
        self._forward = None  # a `layer`'s forward is a local function, which does not pickle; `setup` remakes it

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._worker.stop()  # never delay an exception: nothing queued is drawn or sent after it

    # ------------------------------------------------------------------ checkpoint state
    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Dict[str, Any]
    ) -> None:
        legacy = _names.legacy_state(checkpoint.get("callbacks", {}), self.state_key, self.prefix)
        if legacy is not None:
            self.load_state_dict(legacy)

    @override
    def state_dict(self) -> Dict[str, Any]:
        return {**self.record.state_dict(), **self.planner.state_dict()}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.record.load_state_dict(state_dict)
        self.planner.load_state_dict(state_dict)

    # ------------------------------------------------------------------ what the user reads
    @property
    def history(self) -> List[Dict[str, Any]]:
        """One dict per analysis: stage, epoch (as Lightning logs it, from 0), step and the logged values."""
        return self.record.rows

    @property
    def spectra(self) -> List[Tensor]:
        """The variance spectrum of each analysis, oldest first."""
        return self.record.spectra

    @property
    def labels(self) -> List[str]:
        """One distinct label per analysis: ``"epoch N"`` during ``fit``, else ``"<stage> @ epoch N"``."""
        return self.record.labels

    def describe(self) -> str:
        """One line per analysis so far: its label and the logged values."""
        return self.record.describe()

    # the test loop is analysed as the validation loop is
    on_test_epoch_start = on_validation_epoch_start
    on_test_batch_start = on_validation_batch_start
    on_test_epoch_end = on_validation_epoch_end
