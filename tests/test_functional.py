"""Tests for ``liegg_lightning.functional``: the one-call functions equal the stateful metric."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from conftest import O5Model  # noqa: E402

from liegg_lightning import VectorAction, analyze, functional  # noqa: E402

O5 = VectorAction(dim=5, components=2)


def test_one_call_function_equals_the_metric() -> None:
    x = torch.randn(200, 10, generator=torch.Generator().manual_seed(1))
    model = O5Model(extra_output=True)
    one_call = functional.symmetry_report(model, x, O5, reference_algebra="so")
    streamed = analyze(model, x, O5, reference_algebra="so", batch_size=64)
    torch.testing.assert_close(one_call.variances, streamed.variances, rtol=1e-9, atol=1e-15)
    assert one_call.nullity == streamed.nullity == 6
    assert not [name for name in functional.__all__ if name.startswith("_")]
