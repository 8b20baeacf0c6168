"""Every common architecture works with the defaults, and gives the float64 brute force's answer.

One small random-weight stand-in per family, built from the same blocks as the real models
(``examples/standins.py``: torchvision's and timm's wheels do not import beside the CPU torch
here): a ViT with fused attention (``F.scaled_dot_product_attention``, and
``nn.MultiheadAttention`` with its fast path), a MobileNet (depthwise convolutions,
squeeze-and-excitation, hard-swish), a ResNet (basic blocks, batch norm), a 1-D CNN with a
1-generator algebra (``SignalAction()``) and a 3-D CNN (``VolumeAction``). The reference is the
model in float64 with a full per-sample Jacobian by autograd (``reference.py``), contracted with
the tangents.

Then what a derivative cannot see: a graph cut inside ``forward`` (``torch.no_grad()``,
``.detach()``) is not reported as a symmetry, and an operation without a forward-mode derivative
hands over to reverse mode.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable

import pytest
import reference as R
import torch
from _lightning_models import TinyRegressor, o5_data, quiet_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from liegg_lightning import (
    GroupAction,
    ImageAction,
    LieGGCallback,
    LieGGMetric,
    SignalAction,
    VectorAction,
    VolumeAction,
    analyze,
)
from liegg_lightning.functional.polarization import DisconnectedGraphError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import standins  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _loader(n: int = 128, batch_size: int = 32) -> DataLoader:
    return DataLoader(o5_data(n, seed=1), batch_size=batch_size)


def _random(shape: tuple, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _smooth(shape: tuple, seed: int = 0) -> Tensor:
    """Inputs smooth on the grid (noise blurred along every spatial axis), so derivatives mean something."""
    x = _random(shape, seed)
    for axis in range(2, x.ndim):
        x = (x + x.roll(1, axis) + x.roll(-1, axis)) / 3
    return x


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights from a fixed seed (and batch-norm statistics that are not the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(1.0 + 0.1 * torch.rand(b.shape, generator=gen))
    return model.eval()


def _reference_variances(model: nn.Module, x: Tensor, tangents: Callable[[Tensor], Tensor]) -> Tensor:
    """Ascending ``sigma_i^2 / N`` of the float64 brute-force polarization matrix."""
    model64 = copy.deepcopy(model).double()
    e = R.polarization_matrix(model64, x.double(), tangents)
    return torch.linalg.eigvalsh(R.gram(e)) / x.shape[0]


def _assert_matches_reference(model: nn.Module, x: Tensor, action: GroupAction, tangents: Callable) -> None:
    metric = LieGGMetric(action)  # the defaults
    metric.update(model, x)
    report = metric.compute()
    expected = _reference_variances(model, x, tangents)
    scale = float(expected.max())
    assert scale > 0
    torch.testing.assert_close(report.variances, expected, rtol=2e-3, atol=2e-5 * scale)
    assert report.nullity < action.num_generators
    return metric.resolved_derivative  # type: ignore[return-value]


def _image_tangents(x: Tensor) -> Tensor:
    return R.image_tangents(x, affine=False)


def _action_tangents(action: GroupAction) -> Callable[[Tensor], Tensor]:
    return lambda sample: action.tangents(sample[None].double())[0]


@pytest.mark.parametrize("attention", ["sdpa", "mha"])
def test_vit_with_fused_attention_works_with_the_defaults(attention: str) -> None:
    model = _seeded(standins.vit_tiny(num_classes=10, image=16, patch=4, dim=16, depth=2, heads=2,
                                      attention=attention))
    mode = _assert_matches_reference(model, _smooth((4, 3, 16, 16)), ImageAction(), _image_tangents)
    assert mode == "forward"  # m = 4 tangent passes against 10 outputs: no fallback was needed


def test_mobilenet_block_depthwise_and_squeeze_excite_works_with_the_defaults() -> None:
    model = _seeded(standins.mobilenet_v3_small(num_classes=10, config=standins.MOBILENET_V3_SMALL[:4], hidden=32))
    mode = _assert_matches_reference(model, _smooth((3, 3, 32, 32), seed=1), ImageAction(), _image_tangents)
    assert mode == "forward"


def test_resnet_basic_blocks_work_with_the_defaults() -> None:
    model = _seeded(standins.resnet18(num_classes=10, width=8, blocks=(1, 1)))
    mode = _assert_matches_reference(model, _smooth((3, 3, 16, 16), seed=2), ImageAction(), _image_tangents)
    assert mode == "forward"


def test_3d_cnn_on_volumes_works_with_the_defaults() -> None:
    action = VolumeAction()
    model = _seeded(standins.cnn3d(num_classes=12, channels=(4, 8)))
    mode = _assert_matches_reference(model, _smooth((2, 1, 8, 8, 8), seed=3), action, _action_tangents(action))
    assert mode == "forward"  # m = 9 < 12 outputs


def test_1d_cnn_with_a_one_generator_algebra_reports_1d_fields() -> None:
    action = SignalAction()
    model = _seeded(standins.cnn1d(num_classes=5, channels=(8, 16)))
    x = _smooth((8, 1, 64), seed=4)
    mode = _assert_matches_reference(model, x, action, _action_tangents(action))
    assert mode == "forward"  # 1 tangent pass against 5 outputs
    report = analyze(model, x, action)
    for name in ("singular_values", "variances", "normalized_variances", "variance_stderr", "relative_variances"):
        assert tuple(getattr(report, name).shape) == (1,), name
    assert tuple(report.generators.shape) == (1, 1, 1)
    assert report.generator_shape == (1, 1)
    summary = report.summary()
    assert summary["nullity"] == 0.0
    assert summary["symmetry_variance"] == pytest.approx(float(report.variances[0]))
    assert repr(report).startswith("SymmetryReport(m=1, nullity=0,")


def test_1000_classes_take_m_tangent_passes_not_1000_backward_passes() -> None:
    """The common case: with the defaults forward mode (4 passes) is chosen over 1,000 reverse passes."""
    model = _seeded(standins.resnet18(num_classes=1000, width=4, blocks=(1,)))
    metric = LieGGMetric(ImageAction())
    metric.update(model, _smooth((2, 3, 16, 16)))
    assert metric.resolved_derivative == "forward"
    few = LieGGMetric(ImageAction())
    few.update(_seeded(standins.resnet18(num_classes=2, width=4, blocks=(1,))), _smooth((2, 3, 16, 16)))
    assert few.resolved_derivative == "reverse"  # 2 backward passes against 4 tangent passes


# ----------------------------------------------------------------------------- what a derivative cannot see


class LinearProbe(nn.Module):
    """A frozen feature extractor and a linear head; ``cut`` says how the features are frozen."""

    def __init__(self, cut: str = "") -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)
        self.cut = cut

    def forward(self, x: Tensor) -> Tensor:
        if self.cut == "no_grad":
            with torch.no_grad():
                features = self.body(x)
        elif self.cut == "detach":
            features = self.body(x).detach()
        else:
            features = self.body(x)
        return self.head(features)


O5 = VectorAction(dim=5, components=2)


def _o5_tangents(sample: Tensor) -> Tensor:
    return R.vector_tangents(sample, 5)


def test_no_grad_inside_forward_is_not_a_symmetry_and_auto_gives_the_uncut_answer() -> None:
    probe = _seeded(LinearProbe("no_grad"))
    x = _random((64, 10))
    # m = 25 generators against 3 outputs: 'auto' starts in reverse mode, which sees a zero gradient
    with pytest.warns(UserWarning, match="cut inside the model.*Using forward mode instead"):
        report = analyze(probe, x, O5)
    uncut = copy.deepcopy(probe)
    uncut.cut = ""
    expected = _reference_variances(uncut, x, _o5_tangents)
    torch.testing.assert_close(report.variances, expected, rtol=2e-3, atol=1e-6 * float(expected.max()))
    assert report.nullity < 25
    forward = analyze(probe, x, O5, derivative="forward")  # both modes that can see it agree
    torch.testing.assert_close(forward.variances, report.variances)


def test_no_grad_with_explicit_reverse_mode_refuses_and_names_forward() -> None:
    with pytest.raises(DisconnectedGraphError, match="derivative='forward'"):
        analyze(_seeded(LinearProbe("no_grad")), _random((16, 10)), O5, derivative="reverse")


def test_detach_inside_forward_is_refused_in_both_modes_never_nullity_m() -> None:
    probe = _seeded(LinearProbe("detach"))
    with pytest.raises(DisconnectedGraphError, match="Neither derivative mode"):
        analyze(probe, _random((16, 10)), O5)
    with pytest.raises(DisconnectedGraphError, match=r"`\.detach\(\)`"):
        analyze(probe, _random((16, 10)), O5, derivative="forward")


class _SquareWithoutJvp(torch.autograd.Function):
    """``x**2`` with a backward but no forward-mode derivative."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:  # type: ignore[override]
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class _NoJvpModel(nn.Module):
    """An O(5)-invariant map with 30 outputs (so 'auto' starts in forward mode) through an op without a JVP."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(1, 30)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(_SquareWithoutJvp.apply(x).sum(1, keepdim=True))


def test_an_operation_without_forward_derivative_falls_back_to_reverse_with_one_line() -> None:
    model = _seeded(_NoJvpModel())
    x = _random((32, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = analyze(model, x, O5, batch_size=8)  # four batches: the fallback is said once
    lines = [str(w.message) for w in caught if "Using reverse mode instead" in str(w.message)]
    assert len(lines) == 1, lines
    reverse = analyze(model, x, O5, derivative="reverse")
    torch.testing.assert_close(report.variances, reverse.variances)
    assert report.nullity == 10  # the summed squares of both 5-vectors: so(5), 10 generators
    with pytest.raises(NotImplementedError, match="derivative='reverse'"):
        analyze(model, x, O5, derivative="forward")


# ----------------------------------------------------------------------------- through the callback


class _FrozenBackbone(TinyRegressor):
    """A linear probe: the features are computed under ``torch.no_grad()`` inside ``forward``."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.net[1](self.net[0](x))
        return self.net[2](features)


def test_callback_plan_line_names_the_mode_its_passes_and_the_output_reduction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    callback = LieGGCallback(O5, every_n_epochs=1, log_images=False, save_reports=False)
    with caplog.at_level(logging.INFO):
        quiet_trainer(max_epochs=2, callbacks=[callback]).fit(TinyRegressor(outputs=3), _loader(256), _loader())
    lines = [r.getMessage() for r in caplog.records if "samples per analysis" in r.getMessage()]
    assert len(lines) == 1
    # 3 outputs against m = 25: three backward passes beat 25 tangent passes
    assert "derivative: reverse mode: 3 backward passes a batch (forward: 25 tangent passes), " \
           "output_mode='jacobian'" in lines[0], lines[0]


def test_callback_on_a_frozen_backbone_under_no_grad_never_logs_nullity_m() -> None:
    callback = LieGGCallback(O5, log_images=False, save_reports=False, every_n_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet_trainer(max_epochs=1, callbacks=[callback]).fit(_FrozenBackbone(outputs=3), _loader(), _loader())
    assert callback.history, "no analysis ran"
    assert all(h["nullity"] < 25 for h in callback.history), callback.history
    assert all(h["symmetry_variance"] > 0 for h in callback.history)


def test_callback_validate_with_a_one_generator_algebra_logs_its_values() -> None:
    callback = LieGGCallback(SignalAction(), log_images=False, save_reports=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = quiet_trainer(callbacks=[callback]).validate(TinyRegressor(outputs=3), _loader())
    assert callback.history
    assert callback.history[-1]["nullity"] in (0.0, 1.0)
    assert any(key.endswith("symmetry_variance") for key in results[0]), results


@pytest.mark.slow
def test_real_models_benchmark_quick_writes_its_table(tmp_path: Path) -> None:
    """The benchmark runs end to end; only machine-independent facts are checked (no timing)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_models.py"
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--threads", "1", "--cases", "cnn1d", "energy", "--samples", "16",
         "--json", str(out)], capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["cnn1d"]["derivative"] == "forward"  # one tangent pass against 10 outputs
    assert rows["cnn1d"]["passes"] == 1
    assert rows["energy"]["derivative"] == "reverse"  # one output against m = 12
    assert rows["energy"]["nullity"] == 6  # E(3): three rotations and three translations
    for row in rows.values():
        assert row["analyze_s"] > 0
        assert row["forward_backward_s"] > 0
        assert row["peak_rss_mb"] >= row["peak_rss_forward_backward_mb"] > 0
    assert "| cnn1d" in proc.stdout
