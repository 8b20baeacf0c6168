"""``LieGGCallback``: watch which symmetries a network learns, every validation epoch."""

from __future__ import annotations

import functools
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from liegg_lightning._batches import extract_input
from liegg_lightning._loggers import log_pictures
from liegg_lightning.actions import GroupAction
from liegg_lightning.metric import LieGGMetric
from liegg_lightning.report import SymmetryReport

__all__ = ["LieGGCallback"]


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
            raise ValueError("The analysed layer was not called by the model's forward.")
        return captured[-1]

    return forward


def _not_int(value: Any) -> bool:
    """True unless ``value`` is an int; a bool is not an int here."""
    return isinstance(value, bool) or not isinstance(value, int)


class LieGGCallback(Callback):
    r"""Find the symmetries a network has learned, and how invariant it is to them, at validation time.

    Every ``every_n_epochs`` validation epochs (and in every ``trainer.validate()``), the callback
    streams network-polarization rows of the validation inputs into a float64 Gram matrix on the
    model's device, solves it at the epoch's end on every rank, and logs with ``pl_module.log``:
    ``<prefix>symmetry_variance``, ``<prefix>normalized_variance``, ``<prefix>nullity``,
    ``<prefix>closure_error``, and, with a reference algebra, ``<prefix>symmetry_bias`` and
    ``<prefix>subspace_bias``, plus ``<prefix>variance/<name>`` for each known generator. On rank
    zero it also draws the leading generators, the spectrum and its history, and an orbit to the
    TensorBoard loggers, and writes the report as JSON into the logger's directory.

    The training it watches is not changed: derivatives come from ``torch.autograd.grad`` on a
    clone of the input (parameter ``.grad`` are never touched), the model's mode is left as the
    validation loop set it, random projections use the callback's own generator, and a failed
    solve becomes a warning and a skipped analysis.

    Args:
        metric: What to measure: a :class:`~liegg_lightning.LieGGMetric` (the action, reference
            algebra, known generators, output mode, ... are its options, documented there), or a
            bare :class:`~liegg_lightning.GroupAction` for a metric with default options. The
            callback keeps its own copy and resets it at every analysis.
        input_key: Which element of a batch is the input: an index for tuple/list batches, a key
            for dict batches; a bare tensor batch is the input itself.
        layer: Name of a submodule (as in ``named_modules()``) whose output is analysed instead
            of the model's.
        every_n_epochs: Analyse every this many validation epochs during ``fit``; ``0`` disables.
        max_samples: Per-epoch cap on the analysed samples (per process); ``None`` uses them all.
        dataloader_idx: Which validation dataloader(s) to use; ``None`` uses all.
        log_generators: How many leading generators to draw and print.
        log_images: Draw pictures to the loggers.
        prefix: Prefix of the logged names; also names the callback's checkpoint state.
        save_reports: Write each report as JSON into ``<log_dir>/liegg/`` (when the trainer has a logger).
        background_drawing: Draw the pictures in a background thread (rank zero), so the training
            loop does not wait for matplotlib; they are all sent before ``fit``/``validate`` returns.

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
        max_samples: Optional[int] = None,
        dataloader_idx: Optional[Union[int, List[int]]] = None,
        log_generators: int = 4,
        log_images: bool = True,
        prefix: str = "liegg/",
        save_reports: bool = True,
        background_drawing: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(every_n_epochs, int) or isinstance(every_n_epochs, bool) or every_n_epochs < 0:
            raise ValueError(
                f"Expected `every_n_epochs` to be a non-negative int (0 disables), got {every_n_epochs!r}."
            )
        if max_samples is not None and (_not_int(max_samples) or max_samples < 1):
            raise ValueError(f"Expected `max_samples` to be a positive int or None, got {max_samples!r}.")
        if isinstance(input_key, bool) or not isinstance(input_key, (int, str)):
            raise ValueError(f"Expected `input_key` to be an int index or a str key, got {input_key!r}.")
        if _not_int(log_generators) or log_generators < 0:
            raise ValueError(f"Expected `log_generators` to be a non-negative int, got {log_generators!r}.")
        if layer is not None and not isinstance(layer, str):
            raise ValueError(f"Expected `layer` to be the name of a submodule or None, got {layer!r}.")
        if dataloader_idx is not None:
            idx = [dataloader_idx] if isinstance(dataloader_idx, int) else list(dataloader_idx)
            if not idx or not all(not _not_int(i) and i >= 0 for i in idx):
                raise ValueError(
                    "Expected `dataloader_idx` to be None, a non-negative int or a list of them, "
                    f"got {dataloader_idx!r}."
                )
            dataloader_idx = idx
        if not isinstance(prefix, str):
            raise ValueError(f"Expected `prefix` to be a str (e.g. 'liegg/'), got {prefix!r}.")
        for name, flag in (("log_images", log_images), ("save_reports", save_reports),
                           ("background_drawing", background_drawing)):
            if not isinstance(flag, bool):
                raise ValueError(f"Expected `{name}` to be a bool, got {flag!r}.")
        if isinstance(metric, GroupAction):
            metric = LieGGMetric(metric)
        elif isinstance(metric, LieGGMetric):
            metric = metric.clone()  # the user's metric is left as it was
            metric.reset()
        else:
            raise ValueError(
                f"Expected `metric` to be a LieGGMetric or a GroupAction, got {type(metric).__name__}."
            )
        self.metric = metric
        self.action = metric.action
        self.input_key = input_key
        self.layer = layer
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self.dataloader_idx: Optional[List[int]] = dataloader_idx  # type: ignore[assignment]
        self.log_generators = log_generators
        self.log_images = log_images
        self.prefix = prefix
        self.save_reports = save_reports
        self.background_drawing = background_drawing

        self.history: List[Dict[str, float]] = []
        self.spectra: List[Tensor] = []
        self.last_report: Optional[SymmetryReport] = None
        self._active = False
        self._seen = 0
        self._example_input: Optional[Tensor] = None
        self._forward: Optional[Callable[[Tensor], Tensor]] = None
        self._failed = False
        self._drawer: Optional[ThreadPoolExecutor] = None
        self._pending: List[Future] = []

    @property
    @override
    def state_key(self) -> str:
        # plain values only: a repr of the action would change with the code and orphan checkpoints
        return self._generate_state_key(prefix=self.prefix)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.layer is not None:
            modules = dict(pl_module.named_modules())
            if self.layer not in modules:
                names = [n for n in modules if n]
                raise ValueError(
                    f"`layer={self.layer!r}` is not a submodule of {type(pl_module).__name__}. "
                    f"Expected one of: {', '.join(names[:30])}{' ...' if len(names) > 30 else ''}."
                )
            self._forward = _layer_output_fn(pl_module, modules[self.layer])
        else:
            self._forward = pl_module
        self.metric.place_on(pl_module.device)

    def _should_skip(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or self.every_n_epochs == 0:
            return True
        if trainer.state.fn == "fit":
            return (trainer.current_epoch + 1) % self.every_n_epochs != 0
        return False

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = not self._should_skip(trainer)
        if not self._active:
            return
        # a fresh accumulator every epoch: ddp_spawn shares state tensors created in the parent
        self.metric.reset()
        self.metric.place_on(pl_module.device)
        self._seen = 0
        self._example_input = None
        self._failed = False

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # at the batch's start, so a misconfiguration fails before the model's own step runs
        if not self._active or self._failed:
            return
        if self.dataloader_idx is not None and dataloader_idx not in self.dataloader_idx:
            return
        if self.max_samples is not None and self._seen >= self.max_samples:
            return
        inputs = extract_input(batch, self.input_key)
        if self.max_samples is not None:
            inputs = inputs[: self.max_samples - self._seen]
        inputs = inputs.to(pl_module.device)
        forward = self._forward if self._forward is not None else pl_module
        try:
            self.metric.update(forward, inputs)
        except ValueError:
            # misconfiguration (an input that does not fit the action, checked before the model runs) fails fast
            raise
        except Exception as err:  # a numerical or autograd failure must not end the training
            self._failed = True
            rank_zero_warn(f"LieGGCallback: the derivative pass failed ({err!r}); this epoch's analysis stops here.")
            return
        self._seen += inputs.shape[0]
        if self.log_images and self._example_input is None:  # the orbit picture's input
            self._example_input = inputs[0].detach().to("cpu", torch.float32).clone()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        try:
            report = self.metric.compute()  # every rank: compute() syncs the states
        except Exception as err:
            rank_zero_warn(f"LieGGCallback: the analysis was skipped ({err}).")
            return
        self.last_report = report
        values = report.summary()
        for name, value in values.items():
            pl_module.log(self.prefix + name, value, on_step=False, on_epoch=True, sync_dist=False)
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values})
        self.spectra.append(report.variances.clone())
        # trainer.log_dir is a collective call: every rank makes it. Without a logger nothing is written.
        log_dir = trainer.log_dir if self.save_reports and trainer.loggers else None
        if not trainer.is_global_zero:
            return
        if log_dir is not None:
            try:
                report.save(os.path.join(log_dir, "liegg", f"report_epoch{trainer.current_epoch:04d}.json"))
            except OSError as err:
                rank_zero_warn(f"LieGGCallback: could not write the report ({err}).")
        if self.log_images and trainer.loggers:
            job = functools.partial(
                log_pictures,
                list(trainer.loggers),
                trainer.global_step,
                report,
                self.action,
                spectra=list(self.spectra),
                labels=[f"epoch {h['epoch']}" for h in self.history],
                example_input=self._example_input,
                num_generators=self.log_generators,
                prefix=self.prefix,
            )
            if self.background_drawing:
                # drawing takes a fraction of a second: keep it off the training loop's path
                if self._drawer is None:
                    self._drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liegg-draw")
                self._pending.append(self._drawer.submit(job))
            else:
                job()

    def wait_for_pictures(self) -> None:
        """Block until every picture drawn in the background has been sent to the loggers."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # log_pictures turns its own failures into warnings

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # before Lightning finalises the loggers
        self.wait_for_pictures()
        if self._drawer is not None:
            self._drawer.shutdown(wait=True)
            self._drawer = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.wait_for_pictures()

    def __getstate__(self) -> Dict[str, Any]:
        # a thread pool cannot be pickled (ddp_spawn pickles callbacks); a fresh one is made on demand
        state = self.__dict__.copy()
        state["_drawer"], state["_pending"] = None, []
        return state

    @override
    def state_dict(self) -> Dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "spectra": [s.clone() for s in self.spectra]}

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.spectra = [torch.as_tensor(s, dtype=torch.float64) for s in state_dict.get("spectra", [])]

    def describe(self) -> str:
        """One line per analysis so far: epoch and the logged values."""
        lines = []
        for h in self.history:
            vals = ", ".join(f"{k}={v:.3g}" for k, v in h.items() if k not in ("epoch", "step"))
            lines.append(f"epoch {h['epoch']}: {vals}")
        return "\n".join(lines)

