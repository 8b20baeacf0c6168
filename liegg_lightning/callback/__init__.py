"""The Lightning layer: :class:`LieGGCallback` and everything only it uses.

The only folder of the package that imports Lightning. ``LieGGCallback`` is loaded on first use
(module ``__getattr__``), so importing a helper such as :mod:`liegg_lightning.callback._state`
(home of the public ``in_analysis``) does not import Lightning.

- ``callback.py``: the callback itself (hooks, cadence, logging).
- ``_cost.py``, ``_pricing.py``, ``_planning.py``, ``_evaluation.py``: the time budget (the cost
  model, the measured prices that ranks agree on, the plan, the ``validate()``/``test()`` budget).
- ``_worker.py``, ``_pictures.py``, ``_loggers.py``, ``_history.py``: the drawing thread, the picture
  and report-file jobs, what each logger is given, the reports kept for the pictures.
- ``_names.py``, ``_state.py``: logged names and prefixes; the model state kept across an analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from liegg_lightning.callback.callback import LieGGCallback

__all__ = ["LieGGCallback"]


def __getattr__(name: str) -> Any:
    if name == "LieGGCallback":
        from liegg_lightning.callback.callback import LieGGCallback

        return LieGGCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
