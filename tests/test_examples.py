"""The examples run end to end (as subprocesses, in their ``--quick`` modes) and print what they promise.

Also checks of the examples' own building blocks against independent facts: the O(5) target is
invariant under a random orthogonal matrix, and the batched image rotation agrees with
``ImageAction.transform`` along the rotation generator.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from liegg_lightning import ImageAction, SymmetryReport

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))


def run_example(script: str, args: List[str], tmp_path: Path) -> Dict[str, Any]:
    """Run ``examples/<script>`` and parse the JSON object on its last stdout line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{script} printed nothing"
    return json.loads(lines[-1])


def assert_finite(result: Dict[str, Any], keys: List[str]) -> None:
    for key in keys:
        assert key in result, f"missing {key!r} in {sorted(result)}"
        assert isinstance(result[key], (int, float)), f"{key} = {result[key]!r}"
        assert math.isfinite(result[key]), f"{key} = {result[key]!r}"


def event_files(log_dir: Path) -> List[Path]:
    return list(log_dir.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_o5_regression_quick(tmp_path: Path) -> None:
    args = ["--quick", "--threads", "1", "--log-dir", str(tmp_path / "logs")]
    result = run_example("o5_regression.py", args, tmp_path)
    assert_finite(result, ["symmetry_variance", "symmetry_bias", "subspace_bias", "nullity", "test_mse",
                           "variance_gap"])
    assert 0 <= result["nullity"] <= 25
    # closure needs two symmetries: undefined (NaN), not a perfect 0, below that
    assert math.isfinite(result["closure_error"]) == (result["nullity"] >= 2), result["closure_error"]
    # unit generators: their distance to a subspace, and a sine, lie in [0, 1]
    assert 0 <= result["symmetry_bias"] <= 1 + 1e-9
    assert 0 <= result["subspace_bias"] <= 1 + 1e-9
    assert result["variance_gap"] >= 1 - 1e-9  # variances are sorted ascending
    assert event_files(Path(result["log_dir"])), "no TensorBoard events written"
    reports = sorted((Path(result["log_dir"]) / "liegg").glob("liegg-report_validate_*.json"))
    assert reports, "the callback saved no report"
    # the printed numbers are the callback's report of the final model on the validation split
    assert SymmetryReport.load(reports[-1]).symmetry_variance == pytest.approx(result["symmetry_variance"], rel=1e-12)


@pytest.mark.slow
def test_rotated_digits_quick(tmp_path: Path) -> None:
    args = ["--quick", "--threads", "1", "--log-dir", str(tmp_path / "logs")]
    result = run_example("rotated_digits.py", args, tmp_path)
    assert_finite(result, ["symmetry_variance", "symmetry_bias", "rotation_variance", "scaling_variance",
                           "val_accuracy", "initial_symmetry_bias"])
    assert 0 <= result["val_accuracy"] <= 1
    assert 0 <= result["symmetry_bias"] <= 1 + 1e-9
    # the smallest variance is the minimum of the Rayleigh quotient: no named generator can beat it
    assert result["symmetry_variance"] <= result["rotation_variance"] * (1 + 1e-9)
    assert result["symmetry_variance"] <= result["scaling_variance"] * (1 + 1e-9)
    assert event_files(Path(result["log_dir"])), "no TensorBoard events written"


@pytest.mark.slow
def test_cli_fit_with_yaml_config(tmp_path: Path) -> None:
    args = [
        "fit", "--config", str(EXAMPLES / "config.yaml"),
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.log_every_n_steps=1",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--model.width=32", "--data.num_train=1000", "--data.num_val=200", "--data.num_test=200",
    ]
    result = run_example("cli.py", args, tmp_path)
    assert_finite(result, ["symmetry_variance", "symmetry_bias", "subspace_bias", "nullity"])
    # every_n_epochs=10 in the YAML: the only analysis is the final model's, validated after fit
    # (trainer.current_epoch is 1 by then)
    assert result["epoch"] == 1
    reports = list((tmp_path / "logs").rglob("liegg-report_*.json"))
    assert len(reports) == 1, "the YAML-configured callback saved no report, or more than one"
    assert reports[0].name.startswith("liegg-report_validate_epoch0001_")
    assert SymmetryReport.load(reports[0]).symmetry_bias == pytest.approx(result["symmetry_bias"], rel=1e-12)


def test_o5_target_is_orthogonally_invariant() -> None:
    from o5_common import make_o5_data, o5_target

    x, y = make_o5_data(256, seed=3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    x64 = x.double()
    moved = (x64.reshape(-1, 2, 5) @ q.T).reshape(-1, 10)
    torch.testing.assert_close(o5_target(moved), o5_target(x64), rtol=1e-10, atol=1e-10)
    # the target really depends on the input (the check above is not vacuous)
    assert float(y.std()) > 1.0


def test_rotate_matches_image_action_transform() -> None:
    from rotated_digits import rotate

    images = torch.rand(3, 1, 17, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    images[..., :4, :] = 0  # an asymmetric picture: a wrong direction would show
    angle = 0.7
    mine = rotate(images, torch.full((3,), angle, dtype=torch.float64))
    generator = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # exp(t h) is a rotation by t
    theirs = ImageAction().transform(images, generator, t=angle)
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)
    assert float((mine - images).abs().max()) > 0.1


@pytest.mark.slow
def test_lorentz_quick(tmp_path: Path) -> None:
    args = ["--quick", "--threads", "1", "--log-dir", str(tmp_path / "logs")]
    result = run_example("lorentz.py", args, tmp_path)
    assert_finite(result, ["symmetry_variance", "symmetry_bias", "subspace_bias", "nullity", "test_mse",
                           "variance_gap", "rotation_variance", "boost_variance"])
    assert 0 <= result["nullity"] <= 16
    assert 0 <= result["subspace_bias"] <= 1 + 1e-9
    assert set(result["boosted"]) == {"0", "1", "2"}
    # boosting the test events does not change their targets: rapidity 0 is the test split itself
    assert result["boosted"]["0"]["mse"] == pytest.approx(result["test_mse"], rel=1e-5)
    assert event_files(Path(result["log_dir"])), "no TensorBoard events written"


def test_lorentz_target_and_boost_are_lorentz_invariant() -> None:
    from lorentz import boost_z, invariant_mass, make_lorentz_data, rapidities

    x, y = make_lorentz_data(256, seed=3)
    x64 = x.double()
    p = x64.reshape(-1, 2, 4)
    # on the mass shell, with masses in [0.5, 1.5]
    mass2 = p[..., 0] ** 2 - p[..., 1:].pow(2).sum(-1)
    assert float(mass2.min()) > 0.25 - 1e-5
    assert float(mass2.max()) < 2.25 + 1e-5
    # a boost along z by rapidity y: cosh/sinh mixing of E and p_z, then the target is unchanged
    boosted = boost_z(x64, 0.9).reshape(-1, 2, 4)
    torch.testing.assert_close(boosted[..., 0], math.cosh(0.9) * p[..., 0] + math.sinh(0.9) * p[..., 3])
    torch.testing.assert_close(invariant_mass(boost_z(x64, 0.9)), invariant_mass(x64), rtol=1e-10, atol=1e-10)
    # the target is the invariant mass from its definition, sqrt((E1 + E2)^2 - |p1 + p2|^2)
    s = p[..., 0].sum(1) ** 2 - p[..., 1:].sum(1).pow(2).sum(-1)
    torch.testing.assert_close(y.double().squeeze(1), s.sqrt(), rtol=1e-6, atol=1e-6)
    assert float(rapidities(x).max()) > 1.0


@pytest.mark.slow
def test_nonlinear_quick(tmp_path: Path) -> None:
    result = run_example("nonlinear.py", ["--quick", "--threads", "1"], tmp_path)
    assert_finite(result, ["oscillator_cosine", "oscillator_gap", "oscillator_nullity", "digits_hflip",
                           "digits_rot90", "digits_rotation_30deg", "digits_hflip_untrained"])
    assert 0 <= result["oscillator_cosine"] <= 1 + 1e-9
    assert result["oscillator_gap"] >= 1 - 1e-9  # variances are sorted ascending
    assert 0 <= result["oscillator_nullity"] <= 20
    assert all(result[f"digits_{name}"] >= 0 for name in ("hflip", "vflip", "rot90", "rotation_30deg"))


def test_hamiltonian_field_conserves_the_energy() -> None:
    from nonlinear import energy, hamiltonian_field

    z = torch.randn(50, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(energy(z).sum(), z)
    # dH/dt along X_H is grad H . X_H = 0 (by hand: q^3 p - p q^3)
    assert float((grad * hamiltonian_field(z)).sum(1).abs().max()) < 1e-12


@pytest.mark.slow
def test_pretrained_quick_analyses_a_classifier_and_its_stages(tmp_path: Path) -> None:
    result = run_example("pretrained.py", ["--quick"], tmp_path)
    assert result["model"].startswith("stand-in for resnet18 (random weights")  # said, not hidden
    assert result["samples"] == 4
    assert_finite(result, ["symmetry_variance", "rotation_variance", "scaling_variance", "nullity"])
    assert 0 <= result["nullity"] <= 4
    # the variance along a named generator is bounded below by the smallest eigenvalue of the same Gram
    assert result["rotation_variance"] >= result["symmetry_variance"] * (1 - 1e-9)
    assert result["scaling_variance"] >= result["symmetry_variance"] * (1 - 1e-9)
    assert list(result["layers"]) == ["layer1", "layer2", "layer3", "layer4", "fc"]
    for layer in result["layers"].values():
        assert 0 <= layer["nullity"] <= 4
        assert layer["rotation_over_mean"] > 0
