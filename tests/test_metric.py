"""LieGGMetric on its own: a plain PyTorch loop, precomputed rows, merged states, plot()."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import O5Model  # noqa: E402

from liegg_lightning import LieGGMetric, VectorAction, analyze  # noqa: E402
from liegg_lightning.functional import polarization_rows  # noqa: E402

ACTION = VectorAction(dim=5, components=2)


def _data(n: int = 300) -> torch.Tensor:
    return torch.randn(n, 10, generator=torch.Generator().manual_seed(3))


def test_plain_loop_update_equals_analyze() -> None:
    model, x = O5Model(extra_output=True), _data()
    metric = LieGGMetric(ACTION, reference_algebra="so")
    for chunk in x.split(64):
        metric.update(model, chunk)
    report = metric.compute()
    expected = analyze(model, x, ACTION, reference_algebra="so", batch_size=100)
    torch.testing.assert_close(report.variances, expected.variances, rtol=1e-6, atol=1e-12)
    assert report.num_samples == 300 and report.num_rows == 300 * 4


def test_update_rows_equals_update_from_the_model() -> None:
    model, x = O5Model(), _data()
    from_model = LieGGMetric(ACTION)
    from_model.update(model, x)
    from_rows = LieGGMetric(ACTION)
    from_rows.update_rows(polarization_rows(model, x, ACTION))
    torch.testing.assert_close(from_rows.gram, from_model.gram, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match=r"\(B, K, 25\)"):
        from_rows.update_rows(torch.zeros(4, 1, 9))


def test_merged_states_equal_one_metric_over_all_data() -> None:
    # what DDP does with dist_reduce_fx="sum": states of two halves add up
    model, x = O5Model(), _data()
    whole, first, second = LieGGMetric(ACTION), LieGGMetric(ACTION), LieGGMetric(ACTION)
    whole.update(model, x)
    first.update(model, x[:120])
    second.update(model, x[120:])
    first.merge_state(second)
    torch.testing.assert_close(first.gram, whole.gram, rtol=1e-12, atol=1e-12)
    assert float(first.num_samples) == 300.0
    first.reset()
    assert float(first.gram.abs().sum()) == 0.0 and float(first.num_samples) == 0.0
    with pytest.raises(ValueError, match="no samples"):
        first.compute()


def test_plot_returns_a_figure_with_a_log_spectrum() -> None:
    metric = LieGGMetric(ACTION, reference_algebra="so")
    metric.update(O5Model(), _data())
    fig, ax = metric.plot()
    assert ax.get_yscale() == "log"
    assert fig is ax.figure
    import matplotlib.pyplot as plt

    plt.close(fig)
