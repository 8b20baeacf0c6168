"""The TorchMetrics internals ``LieGGMetric`` cannot avoid, in one place.

Each override or private attribute below has no public equivalent in TorchMetrics; each says why
it is needed, and ``tests/test_framework.py`` fails loudly when the installed TorchMetrics stops
behaving the way it is assumed here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Tuple

from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

__all__ = ["FrameworkMetric", "cached_results", "mark_updated", "state_names"]


class FrameworkMetric(Metric):
    """A TorchMetrics ``Metric`` with the hooks and private reads a LieGG metric needs.

    Subclasses override :meth:`_shaped_result` and :meth:`_before_sync`; they never touch
    TorchMetrics' private attributes themselves.
    """

    def _wrap_compute(self, compute: Callable) -> Callable:
        # TorchMetrics squeezes every one-element tensor a `compute` returns (`_squeeze_if_scalar`),
        # which turns a 1-generator report's per-generator fields from shape (1,) into (); there is no
        # option to turn that off, so the result is handed back through `_shaped_result`
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def shaped(*args: Any, **kwargs: Any) -> Any:
            return self._shaped_result(wrapped(*args, **kwargs))

        return shaped

    def _shaped_result(self, result: Any) -> Any:
        """The result of ``compute`` as TorchMetrics returned it, to be reshaped by a subclass."""
        return result

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        # states stored at a per-process scale must share one before TorchMetrics sums them; the
        # public `dist_reduce_fx` callables see one state at a time, never the exponents beside it
        self._before_sync(dist_sync_fn, process_group or self.process_group)
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def _before_sync(self, dist_sync_fn: Callable, process_group: Optional[Any]) -> None:
        """Called on every process before the states are gathered and reduced."""


def state_names(metric: Metric) -> List[str]:
    """The names given to ``add_state``, in order (TorchMetrics keeps them in ``_defaults`` only)."""
    return list(metric._defaults)


def mark_updated(metric: Metric) -> None:
    """What TorchMetrics' ``update`` wrapper does, for states added by another method.

    ``update_rows`` adds states without ``update``: the cached result must be forgotten and the
    update counted, or ``compute`` returns the old report and warns that nothing was updated.
    """
    metric._computed = None
    metric._update_count += 1


def cached_results(metric: Metric) -> Tuple[Any, ...]:
    """The results TorchMetrics caches (``compute``'s, ``forward``'s, the pre-sync states).

    A deep copy that should come out empty leaves these out rather than copy them.
    """
    return (metric._computed, metric._forward_cache, metric._cache)
