"""The package's shape: one configuration, a TorchMetrics-like metric, lazy imports, check_action."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import O5Model  # noqa: E402

import liegg_lightning  # noqa: E402
from liegg_lightning import ImageAction, LieGGMetric, VectorAction, analyze  # noqa: E402

O5 = VectorAction(dim=5, components=2)


def test_importing_the_package_does_not_import_lightning() -> None:
    code = ("import sys, liegg_lightning; print('lightning' in sys.modules); "
            "print(liegg_lightning.LieGGCallback.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "LieGGCallback"]  # Lightning only once the callback is asked for


def test_the_version_is_defined_once() -> None:
    assert importlib.metadata.version("liegg_lightning") == liegg_lightning.__version__


def test_calling_the_metric_only_updates() -> None:
    x = torch.randn(128, 10, generator=torch.Generator().manual_seed(0))
    called, updated = LieGGMetric(O5), LieGGMetric(O5)
    assert called(O5Model(), x) is None  # no per-batch eigen-solve, no report
    updated.update(O5Model(), x)
    torch.testing.assert_close(called.gram, updated.gram, rtol=0, atol=0)
    assert int(called.num_samples) == 128


def test_repr_shows_the_configuration() -> None:
    text = repr(LieGGMetric(O5, reference_algebra="so", output_mode="random", num_projections=3))
    for part in ("VectorAction(dim=5, components=2)", "output_mode='random'", "num_projections=3",
                 "reference_algebra='so'"):
        assert part in text
    assert "padding_mode='border'" in repr(ImageAction(padding_mode="border"))


def test_plot_takes_a_report_or_a_list_of_reports() -> None:
    import matplotlib.pyplot as plt

    x = torch.randn(128, 10, generator=torch.Generator().manual_seed(0))
    reports = [analyze(O5Model(breaking=b), x, O5) for b in (0.0, 1e-2)]
    metric = LieGGMetric(O5)
    fig, ax = metric.plot(reports)
    assert len(ax.get_lines()) == 2
    assert ax.get_yscale() == "log"
    plt.close(fig)
    fig, ax = metric.plot(reports[0])  # one report: the spectrum picture, as the callback logs it
    assert any("nullity" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_analyze_leaves_a_given_metric_untouched_and_refuses_mixed_options() -> None:
    x = torch.randn(64, 10, generator=torch.Generator().manual_seed(2))
    metric = LieGGMetric(O5, reference_algebra="so")
    report = analyze(O5Model(), x, metric)
    assert report.nullity == 10
    assert float(metric.num_samples) == 0.0
    with pytest.raises(ValueError, match="only with a GroupAction"):
        analyze(O5Model(), x, metric, output_mode="sum")


def test_render_pictures_draws_the_picture_of_depth_for_layer_reports() -> None:
    from liegg_lightning.pictures.rendering import render_pictures

    x = torch.randn(64, 10, generator=torch.Generator().manual_seed(3))
    reports = analyze(O5Model(), x, O5, layers={"": None, "g.0": None})
    images = render_pictures(reports[""], O5, spectra=[reports[""].variances], layers=reports)
    assert images["layers"].dtype.name == "uint8"
    assert images["layers"].ndim == 3
    assert "layers" not in render_pictures(reports[""], O5, spectra=[reports[""].variances])


def _module_level_imports(path) -> list:
    """The modules a file imports outside functions (``if TYPE_CHECKING:`` blocks excluded)."""
    import ast

    names = []

    def visit(body) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.append(node.module or "")
                names.extend(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return names


def _every_import(path) -> list:
    import ast

    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


def test_only_the_callback_folder_imports_lightning() -> None:
    from pathlib import Path

    package = Path(liegg_lightning.__file__).parent
    importers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                       if any(n.split(".")[0] in ("lightning", "pytorch_lightning") for n in _every_import(p)))
    assert importers, "the callback imports Lightning somewhere"
    assert all(name.startswith("callback/") for name in importers), importers


def test_the_maths_never_import_the_callback_or_pictures_at_module_level() -> None:
    from pathlib import Path

    package = Path(liegg_lightning.__file__).parent
    maths = [p for p in package.rglob("*.py") if p.parent.name not in ("callback", "pictures")]
    assert len(maths) > 10  # the top level and functional/
    for path in maths:
        upstairs = [n for n in _module_level_imports(path)
                    if n.startswith(("liegg_lightning.callback", "liegg_lightning.pictures"))]
        if path == package / "__init__.py":  # the public in_analysis lives with the state it reads
            assert upstairs == ["liegg_lightning.callback._state", "liegg_lightning.callback._state.in_analysis"]
        else:
            assert upstairs == [], path
    # pictures draw reports; they never reach into the callback
    for path in (package / "pictures").glob("*.py"):
        assert not any(n.startswith("liegg_lightning.callback") for n in _every_import(path)), path


def test_importing_the_callback_state_does_not_import_lightning() -> None:
    code = ("import sys, liegg_lightning.callback._state as s; "
            "print('lightning' in sys.modules, callable(s.in_analysis))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
