"""The framework internals the package relies on still behave as assumed.

What ``liegg_lightning/_framework.py`` and ``liegg_lightning/callback/_lightning.py`` assume:
each test fails loudly, naming the installed version, when a TorchMetrics, Lightning or torch
release changes what an override or a private read of ours assumes.
"""

from __future__ import annotations

import warnings
from typing import Any, List

import lightning
import pytest
import torch
import torchmetrics
from torchmetrics import Metric

from liegg_lightning._framework import FrameworkMetric, cached_results, mark_updated, state_names
from liegg_lightning.callback._lightning import logged_step, tensorboard_file_writer

VERSIONS = f"torchmetrics {torchmetrics.__version__}, lightning {lightning.__version__}, torch {torch.__version__}"


class _OneElement(Metric):
    """Returns its one-element state as it is, shape (1,)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(1), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, x: torch.Tensor) -> None:
        self.total += x.sum()
        self.count += 1

    def compute(self) -> torch.Tensor:
        return self.total.clone()


class _Kept(FrameworkMetric, _OneElement):
    """The same metric through our hooks: the result keeps its shape, the sync is seen first."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[Any] = []

    def _shaped_result(self, result: Any) -> Any:
        return result.reshape(1)

    def _before_sync(self, dist_sync_fn: Any, process_group: Any) -> None:
        self.seen.append(self.total.clone())


def test_torchmetrics_still_squeezes_a_one_element_result() -> None:
    metric = _OneElement()
    metric.update(torch.tensor([2.0]))
    # if this fails, FrameworkMetric._wrap_compute undoes a squeeze that no longer happens
    assert metric.compute().shape == (), f"the squeeze of one-element results is gone in {VERSIONS}"
    kept = _Kept()
    kept.update(torch.tensor([2.0]))
    assert kept.compute().shape == (1,)
    assert float(kept.compute()) == 2.0


def test_the_sync_goes_through_sync_dist_and_sums_what_was_gathered() -> None:
    kept = _Kept()
    kept.update(torch.tensor([3.0]))

    def two_processes(tensor: torch.Tensor, group: Any = None) -> List[torch.Tensor]:
        return [tensor, tensor * 2]  # this process and a second one holding twice as much

    kept.sync(dist_sync_fn=two_processes, distributed_available=lambda: True)
    assert [float(t) for t in kept.seen] == [3.0], f"_sync_dist is no longer the sync's entry point in {VERSIONS}"
    assert float(kept.total) == 9.0
    assert float(kept.count) == 3.0
    kept.unsync()
    assert float(kept.total) == 3.0


def test_state_names_cached_results_and_a_counted_update() -> None:
    metric = _OneElement()
    assert state_names(metric) == ["total", "count"], f"add_state no longer records _defaults in {VERSIONS}"
    assert cached_results(metric) == (None, None, None)
    metric.update(torch.tensor([1.0]))
    assert float(metric.compute()) == 1.0
    assert cached_results(metric)[0] is not None  # compute's result is cached
    metric.total += 5.0  # states added without `update`, as update_rows does
    assert float(metric.compute()) == 1.0  # the cache still answers: why mark_updated is needed
    mark_updated(metric)
    assert float(metric.compute()) == 6.0
    fresh = _OneElement()
    fresh.total += 1.0
    mark_updated(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compute called before update" warning: the update was counted
        assert float(fresh.compute()) == 1.0


def test_lightning_logs_at_the_loops_batches_that_stepped() -> None:
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(6, 2)), batch_size=2)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), data)
    assert hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped"), f"gone in {VERSIONS}"
    assert logged_step(trainer) == 3 == trainer.global_step


def test_torch_summary_writer_has_its_file_writer(tmp_path: Any) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    try:
        file_writer = tensorboard_file_writer(writer)
        assert file_writer is not None, f"SummaryWriter._get_file_writer is gone in {VERSIONS}"
        assert callable(getattr(file_writer(), "add_summary", None))
    finally:
        writer.close()
    assert tensorboard_file_writer(object()) is None
