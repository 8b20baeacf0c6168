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
    assert report.num_samples == 300
    assert report.num_rows == 300 * 4


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
    assert float(first.gram.abs().sum()) == 0.0
    assert float(first.num_samples) == 0.0
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


def _value(gram: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """The Gram matrix a scaled state stands for: ``gram * 4^exponent``."""
    return gram * 4.0 ** float(exponent)


def test_states_at_different_scales_merge_to_the_float64_sum() -> None:
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(40, 2, 25, generator=gen, dtype=torch.float64) * 1e-30
    large = torch.randn(30, 2, 25, generator=gen, dtype=torch.float64) * 1e20
    first, second = LieGGMetric(ACTION), LieGGMetric(ACTION)
    first.update_rows(small)
    second.update_rows(large)
    assert float(first.scale_exponent) < float(second.scale_exponent)
    first.merge_state(second)
    flat = torch.cat([small, large]).reshape(-1, 25)
    expected = flat.T @ flat
    torch.testing.assert_close(_value(first.gram, first.scale_exponent), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(_value(first.group_grams.sum(0), first.scale_exponent), expected, rtol=1e-12, atol=0)
    assert float(first.num_samples) == 70
    assert float(first.group_counts.sum()) == 70
    # the same rows in one metric, in either order, give the same values
    one = LieGGMetric(ACTION)
    one.update_rows(large)
    one.update_rows(small)
    torch.testing.assert_close(_value(one.gram, one.scale_exponent), expected, rtol=1e-12, atol=0)


def test_distributed_sync_brings_every_process_to_one_scale() -> None:
    # two "processes" at scales 2^-100 apart; a stand-in for all_gather hands each state of both
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randn(20, 1, 25, generator=gen, dtype=torch.float64) * s for s in (1e-15, 1e15)]
    inputs = [torch.randn(20, 10, generator=gen) * s for s in (1.0, 1e3)]
    metrics = [LieGGMetric(ACTION), LieGGMetric(ACTION)]
    for metric, r, x in zip(metrics, rows, inputs):
        metric.update_rows(r, inputs=x)
    snapshots = [dict(m.metric_state) for m in metrics]
    calls = []

    def gather(tensor: torch.Tensor, group=None):
        # the first call gathers the exponents, then one call per state in registration order
        i = len(calls)
        calls.append(i)
        if i == 0:
            return [torch.stack([s["scale_exponent"], s["tangent_exponent"]]) for s in snapshots]
        name = list(metrics[0]._reductions)[i - 1]
        common = {"gram": "scale_exponent", "group_grams": "scale_exponent", "tangent_gram": "tangent_exponent"}
        if name in common:
            exp = common[name]
            top = max(s[exp] for s in snapshots)
            return [s[name] * 4.0 ** float(s[exp] - top) for s in snapshots]
        return [s[name] for s in snapshots]

    synced = metrics[0]
    synced._sync_dist(gather)
    flat = torch.cat(rows).reshape(-1, 25)
    torch.testing.assert_close(_value(synced.gram, synced.scale_exponent), flat.T @ flat, rtol=1e-12, atol=0)
    both = LieGGMetric(ACTION)
    for r, x in zip(rows, inputs):
        both.update_rows(r, inputs=x)
    torch.testing.assert_close(_value(synced.tangent_gram, synced.tangent_exponent),
                               _value(both.tangent_gram, both.tangent_exponent), rtol=1e-12, atol=0)
    torch.testing.assert_close(synced.group_counts, both.group_counts)
    report, expected = synced.compute(), both.compute()
    torch.testing.assert_close(report.variances, expected.variances, rtol=1e-10, atol=0)
    torch.testing.assert_close(report.variance_stderr, expected.variance_stderr, rtol=1e-8, atol=0)


def test_update_rows_after_compute_is_not_hidden_by_the_cache() -> None:
    metric = LieGGMetric(ACTION)
    rows = torch.randn(30, 1, 25, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    metric.update_rows(rows[:15])
    first = metric.compute()
    metric.update_rows(rows[15:])
    assert metric.compute().num_samples == 30 != first.num_samples
