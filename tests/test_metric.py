"""LieGGMetric on its own: a plain PyTorch loop, precomputed rows, merged states, plot()."""

from __future__ import annotations

import warnings
from typing import Dict

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import O5Model  # noqa: E402

from liegg_lightning import LieGGMetric, VectorAction, analyze  # noqa: E402
from liegg_lightning.functional import polarization_rows  # noqa: E402
from liegg_lightning.metric import fresh_metric  # noqa: E402

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
    assert any("nullity" in t.get_text() for t in ax.texts)  # the spectrum picture, titled with its numbers
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


# ----------------------------------------------------------------------------- memory: the budget is honest


def _state_bytes(metric: LieGGMetric) -> int:
    """Bytes of every state and of TorchMetrics' kept copy of every default."""
    tensors = list(metric.metric_state.values()) + list(metric._defaults.values())
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("output_action", [None, "ring"])
def test_states_and_the_work_stay_within_the_memory_budget(output_action: object) -> None:
    from liegg_lightning import ImageAction
    from liegg_lightning._memory import WORK_MATRICES
    from liegg_lightning._memory import analysis_bytes as _analysis_bytes

    action: object = VectorAction(dim=6) if output_action is None else ImageAction()
    out = None if output_action is None else ImageAction(border=1)
    m = action.num_generators  # type: ignore[attr-defined]
    matrix = 8 * m * m
    states = 2 + (output_action is not None)  # the gram and tangent (and border ring) states
    smallest = _analysis_bytes(m, states)
    for budget in (smallest + 3 * matrix // 2, smallest + 5 * matrix + 99, smallest + 40 * matrix):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fewer groups than asked: said in a warning, tested elsewhere
            metric = LieGGMetric(action, output_action=out, memory_budget=budget)  # type: ignore[arg-type]
        # the states (defaults included) and the update's and solve's working matrices fit the budget
        assert _state_bytes(metric) + WORK_MATRICES * matrix <= budget
        # and the jackknife takes what is left: one more group (two, a jackknife's least) would not fit
        more = 1 if metric.num_groups else 2
        assert metric.num_groups == 8 or _analysis_bytes(m, states, metric.num_groups + more) > budget
        fresh = fresh_metric(metric)
        assert _state_bytes(fresh) + WORK_MATRICES * matrix <= budget
    # one byte less than the smallest analysis is refused, with the estimate in the message
    LieGGMetric(action, output_action=out, memory_budget=smallest, jackknife_groups=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="over the memory budget"):
        LieGGMetric(action, output_action=out, memory_budget=smallest - 1)  # type: ignore[arg-type]


def _tensors(metric: LieGGMetric) -> Dict[str, torch.Tensor]:
    return {name: t for name, t in metric.metric_state.items() if isinstance(t, torch.Tensor)}


def test_defaults_are_single_numbers_and_reset_and_fresh_metric_give_empty_states() -> None:
    metric = LieGGMetric(ACTION)
    defaults = [d for d in metric._defaults.values() if isinstance(d, torch.Tensor)]
    assert len(defaults) == len(metric._defaults)
    assert all(d.numel() == 1 for d in defaults)  # no second m x m copy per state
    metric.update(O5Model(extra_output=True), _data(40))
    before = {name: tuple(state.shape) for name, state in _tensors(metric).items()}
    fresh = fresh_metric(metric)
    assert float(metric.num_samples) == 40  # the original is left as it was
    metric.reset()  # TorchMetrics' own reset: each state replaced (the old one freed first), not a second copy
    for name, state in _tensors(metric).items():
        assert state.shape == torch.Size(before[name])
        assert torch.equal(state, getattr(fresh, name))  # both empty, the same shapes and values
        assert state is not getattr(fresh, name)
    assert float(metric.scale_exponent) == float(fresh.tangent_exponent) == -4096.0
    # a reset or fresh metric accumulates as a new one does
    new, model, x = LieGGMetric(ACTION), O5Model(extra_output=True), _data(30)
    for m in (new, metric, fresh):
        m.update(model, x)
    for name, state in _tensors(new).items():
        assert torch.equal(getattr(metric, name), state)
        assert torch.equal(getattr(fresh, name), state)


def _old_accumulate(state: torch.Tensor, state_exp: torch.Tensor, inc: torch.Tensor, exp: torch.Tensor,
                    common: torch.Tensor) -> torch.Tensor:
    """The accumulation as it was before the states were updated in place (the reference)."""
    return torch.ldexp(state, 2.0 * (state_exp - common)) + torch.ldexp(inc, 2.0 * (exp - common))


@pytest.mark.parametrize("groups", [0, 3, 8])
def test_streamed_update_gives_the_bits_of_the_reference_update(groups: int) -> None:
    from liegg_lightning.functional.symmetry import _scaled, symmetry_update

    gen = torch.Generator().manual_seed(5)
    metric = LieGGMetric(ACTION, jackknife_groups=groups)
    gram, group_grams = torch.zeros(25, 25, dtype=torch.float64), torch.zeros(groups, 25, 25, dtype=torch.float64)
    tangent = torch.zeros(25, 25, dtype=torch.float64)
    exp, t_exp = torch.tensor(-4096.0, dtype=torch.float64), torch.tensor(-4096.0, dtype=torch.float64)
    for scale in (1.0, 1e-5, 1e7, 3.0):  # the exponent rises, stays and falls
        rows = torch.randn(9, 2, 25, generator=gen, dtype=torch.float64) * scale
        rows[4, 1, 3] = float("nan")
        x = torch.randn(9, 10, generator=gen, dtype=torch.float64) * scale
        metric.update_rows(rows, x)
        upd = symmetry_update(rows, groups, group_keys=x)
        finite = torch.isfinite(rows).flatten(1).all(1)
        common = torch.maximum(exp, upd.exponent)
        gram = _old_accumulate(gram, exp, upd.gram, upd.exponent, common)
        group_grams = _old_accumulate(group_grams, exp, upd.group_grams, upd.exponent, common)
        exp = common
        t, e = _scaled(ACTION.tangent_gram(x, mask=finite))
        t_common = torch.maximum(t_exp, e)
        tangent, t_exp = _old_accumulate(tangent, t_exp, t, e, t_common), t_common
    assert torch.equal(metric.gram, gram)
    assert torch.equal(metric.scale_exponent, exp)
    assert torch.equal(metric.group_grams, group_grams)
    assert torch.equal(metric.tangent_gram, tangent)
    assert torch.equal(metric.tangent_exponent, t_exp)


@pytest.mark.parametrize("action", [VectorAction(dim=4, components=3), VectorAction(dim=3, affine=True)])
def test_kronecker_tangents_give_the_dense_tangent_gram(action: VectorAction) -> None:
    from liegg_lightning.functional.symmetry import _diagonal_blocks, _kronecker_tangents

    x = torch.randn(7, action.dim * (action.components or 2), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([True, False, True, True, True, False, True])
    s = _kronecker_tangents(action, x, mask)
    assert s is not None
    dense = action.tangent_gram(x, mask=mask)
    assert torch.equal(torch.kron(torch.eye(action.dim, dtype=torch.float64), s), dense)
    blocks = torch.zeros_like(dense)
    _diagonal_blocks(blocks, action.dim).add_(s[..., None])
    assert torch.equal(blocks, dense)
    x[0, 0] = float("inf")  # kron would spread NaN over the zero blocks: the dense form is used
    assert _kronecker_tangents(action, x, None) is None


# ----------------------------------------------------------------------------- memory: derivative passes in chunks


class _Counting(torch.nn.Module):
    """A float64 MLP that records the batch size of every call."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.w1 = torch.nn.Parameter(torch.randn(10, 16, generator=gen, dtype=torch.float64) / 3)
        self.w2 = torch.nn.Parameter(torch.randn(16, 3, generator=gen, dtype=torch.float64) / 4)
        self.sizes: list = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return torch.tanh(x @ self.w1) @ self.w2


@pytest.mark.parametrize("derivative", ["reverse", "forward"])
def test_chunked_analysis_equals_the_unchunked_one(derivative: str) -> None:
    x = _data(40).double()
    whole = LieGGMetric(ACTION, derivative=derivative, memory_budget=None)
    whole.update(_Counting(), x)
    chunked = LieGGMetric(ACTION, derivative=derivative)
    chunked.cap_pass_memory(1)
    chunked.update(_Counting(), x)
    assert whole.pass_chunks == (40, 25, None)
    # nothing fits: one sample per pass, and one tangent (forward) or one row's gradients (reverse) at a time
    assert chunked.pass_chunks == ((1, 1, None) if derivative == "forward" else (1, 25, 1))
    for name in ("gram", "group_grams", "tangent_gram"):
        exponent = "tangent_exponent" if name == "tangent_gram" else "scale_exponent"
        a = torch.ldexp(getattr(whole, name), 2 * getattr(whole, exponent))
        b = torch.ldexp(getattr(chunked, name), 2 * getattr(chunked, exponent))
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15 * float(a.abs().max()))
    r1, r2 = whole.compute(), chunked.compute()
    torch.testing.assert_close(r2.variances, r1.variances, rtol=1e-10, atol=1e-14 * float(r1.variances.max()))
    torch.testing.assert_close(r2.variance_stderr, r1.variance_stderr, rtol=1e-8, atol=1e-14)
    # the leading generator is the same direction (eigenvectors are defined up to sign)
    u, v = r1.generators[0].flatten(), r2.generators[0].flatten()
    assert float((u @ v).abs() / (u.norm() * v.norm())) == pytest.approx(1.0, abs=1e-10)


def test_a_budget_splits_the_batch_into_passes_that_fit() -> None:
    from liegg_lightning._memory import analysis_bytes

    m, x = ACTION.num_generators, _data(12).double()
    # the default budget holds the whole batch: the derivative pass sees all 12 samples at once
    roomy, model = LieGGMetric(ACTION, derivative="reverse"), _Counting()
    roomy.update(model, x)
    assert 12 in model.sizes
    assert roomy.pass_chunks == (12, m, None)
    # a budget that the Gram matrices fill exactly leaves nothing for the passes: one sample each
    exact = {"jackknife_groups": 0, "memory_budget": analysis_bytes(m)}
    tight, model = LieGGMetric(ACTION, derivative="reverse", **exact), _Counting()
    assert tight.pass_budget == 0
    tight.update(model, x)
    assert tight.pass_chunks == (1, m, 1)  # and the 3 rows' input gradients one at a time
    assert max(model.sizes) <= 2  # two probe calls of 2 samples
    assert model.sizes.count(1) == 12  # and 12 passes of 1
    # forward mode splits the tangents as well: one JVP pass per sample and per basis tangent
    forward, model = LieGGMetric(ACTION, derivative="forward", **exact), _Counting()
    forward.update(model, x)
    assert forward.pass_chunks == (1, 1, None)
    assert model.sizes.count(1) == 12 * m
    assert float(forward.num_samples) == float(tight.num_samples) == 12


def test_pass_chunks_arithmetic_on_hand_counted_footprints() -> None:
    from liegg_lightning._memory import PassFootprint, pass_chunks

    # 100 bytes of activations, a 2-element float32 input, 1 row per sample, m = 2: a forward pass
    # holds per sample 3 activation-sized tensors (primal + 2 tangents), each with its float64 input
    # tangent (2 * 8 * 2 = 32 bytes), and 3 float64 copies of the 1 x 2 rows: 3 * 132 + 48 = 444 bytes
    fp = PassFootprint(activation_bytes=100, input_bytes=8, rows=1, element_size=4, largest_bytes=10)
    assert pass_chunks(fp, 2, True, 10, None) == (10, 2, None)  # no budget: one pass
    assert pass_chunks(fp, 2, True, 10, 444 * 3 + 443) == (3, 2, None)
    assert pass_chunks(fp, 2, True, 10, 10**9) == (10, 2, None)  # never more samples than the batch
    # one sample does not fit: fewer tangents (the primal 132 + 48, then 132 per tangent)
    assert pass_chunks(fp, 2, True, 10, 132 * 2 + 48) == (1, 1, None)
    # reverse: the graph (100) + per row 2 float64 gradients of the input (32) + the rows (48) = 180
    wide = PassFootprint(activation_bytes=100, input_bytes=8, rows=5, element_size=4)
    assert pass_chunks(wide, 2, False, 10, 100 + 5 * 32 + 5 * 48) == (1, 2, None)
    assert pass_chunks(wide, 2, False, 10, 100 + 2 * 32 + 5 * 48) == (1, 2, 2)  # two rows' gradients at once
    assert pass_chunks(wide, 2, False, 10, 0) == (1, 2, 1)  # the least there is
