"""What a callback has recorded: one row of values per analysis, the spectra, and the generators' drift."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
from torch import Tensor

from liegg_lightning.functional.drift import generator_drift
from liegg_lightning.functional.layers import MODEL_OUTPUT
from liegg_lightning.report import SymmetryReport

__all__ = ["DRIFT_WORTH_DRAWING", "History", "shown_report"]

#: Sine of the angle (about 6 degrees) the learned subspace must turn by for a picture whatever the budget.
DRIFT_WORTH_DRAWING = 0.1


def shown_report(reports: Dict[str, SymmetryReport]) -> SymmetryReport:
    """The report drawn and kept in the spectra: the model's output, else the first layer."""
    return reports.get(MODEL_OUTPUT, next(iter(reports.values())))


class History:
    """The analyses so far, oldest first, with the values logged for each."""

    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []
        self.spectra: List[Tensor] = []
        self._previous: Dict[str, SymmetryReport] = {}  # the last report of each stage, for the drift
        self._largest_drift = 0.0

    def add(self, stage: str, epoch: int, step: int, reports: Dict[str, SymmetryReport]) -> Dict[str, float]:
        """Record one analysis; the values to log (without a prefix, NaN where undefined)."""
        values: Dict[str, float] = {}
        for name, report in reports.items():
            scope = f"{name}/" if name != MODEL_OUTPUT else ""
            layer_values = {**report.summary(), "num_samples": float(report.num_samples)}
            values.update({scope + key: value for key, value in layer_values.items()})
        shown = shown_report(reports)
        previous = self._previous.get(stage)
        drift = math.nan if previous is None else generator_drift(
            previous.generators, previous.nullity, shown.generators, shown.nullity)
        if math.isfinite(drift):  # kept only where defined, as the logged values are
            values["generator_drift"] = drift
        self._previous[stage] = shown
        self.rows.append({"stage": stage, "epoch": epoch, "step": step, **values})
        self.spectra.append(shown.variances.clone())
        return values

    def emerged(self) -> bool:
        """Whether the latest analysis is a moment of emergence, drawn whatever the budget.

        Its number of learned symmetries differs from the previous analysis' of the same stage, or
        its generators moved more than ever before in the run and by at least
        :data:`DRIFT_WORTH_DRAWING` (smaller drifts are the jitter of a settled subspace).
        """
        if not self.rows:
            return False
        latest = self.rows[-1]
        earlier = [row for row in self.rows[:-1] if row.get("stage") == latest.get("stage")]
        if earlier and earlier[-1].get("nullity") != latest.get("nullity"):
            return True
        drift = latest.get("generator_drift", math.nan)
        if not math.isfinite(drift) or drift <= self._largest_drift:
            return False
        self._largest_drift = drift
        return drift >= DRIFT_WORTH_DRAWING

    @property
    def labels(self) -> List[str]:
        """One distinct label per analysis: ``"epoch N"`` during ``fit``, else ``"<stage> @ epoch N"``.

        Epochs are counted as Lightning logs its ``epoch`` value, from 0.
        """
        labels: List[str] = []
        for row in self.rows:
            stage = row.get("stage", "fit")
            label = f"epoch {row['epoch']}" if stage == "fit" else f"{stage} @ epoch {row['epoch']}"
            repeats = sum(1 for seen in labels if seen == label or seen.startswith(label + " #"))
            labels.append(label if not repeats else f"{label} #{repeats + 1}")
        return labels

    def describe(self) -> str:
        """One line per analysis: its label and its values."""
        return "\n".join(
            f"{label}: " + ", ".join(f"{k}={v:.3g}" for k, v in row.items() if k not in ("epoch", "step", "stage"))
            for label, row in zip(self.labels, self.rows)
        )

    def state_dict(self) -> Dict[str, Any]:
        """The rows and spectra as plain values and tensors."""
        return {"history": [dict(row) for row in self.rows], "spectra": [s.clone() for s in self.spectra]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave."""
        self.rows = [dict(row) for row in state.get("history", [])]
        self.spectra = [torch.as_tensor(s, dtype=torch.float64) for s in state.get("spectra", [])]
