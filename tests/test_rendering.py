"""Tests for ``liegg_lightning.rendering``: every picture renders, is not blank, and shows what it says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from liegg_lightning import ImageAction, TangentAction, VectorAction  # noqa: E402
from liegg_lightning import rendering as R  # noqa: E402
from liegg_lightning.functional.symmetry import _symmetry_compute as build_report  # noqa: E402


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    plt.close("all")
    yield
    leaked = plt.get_fignums()
    plt.close("all")
    assert leaked == [], "a test left pyplot figures open"


def _orthogonal(m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return q


def _report(eigenvalues, action, num_samples=10, reference=None, basis=None):
    """A report from the Gram matrix ``Q diag(eigenvalues) Q^T`` (``Q`` random orthogonal unless given)."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    q = _orthogonal(ev.size) if basis is None else basis
    gram = torch.from_numpy(q @ np.diag(ev) @ q.T)
    return build_report(gram, num_samples, num_samples, 0, action, reference=reference)


def _so_reference(dim: int) -> torch.Tensor:
    """Orthonormal coefficient vectors of so(dim), built by hand: (E_ab - E_ba) / sqrt(2)."""
    rows = []
    for a in range(dim):
        for b in range(a + 1, dim):
            e = torch.zeros(dim, dim, dtype=torch.float64)
            e[a, b], e[b, a] = 1.0, -1.0
            rows.append(e.reshape(-1) / 2**0.5)
    return torch.stack(rows)


def _assert_picture(arr: np.ndarray) -> None:
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[2] == 3
    assert arr.shape[0] >= 64 and arr.shape[1] >= 64
    assert arr.std() > 5.0, "image is (nearly) blank"
    colours = np.unique(arr.reshape(-1, 3), axis=0)
    assert len(colours) > 10, "image has almost no distinct colours"


def _images(fig) -> list:
    return [im for ax in fig.axes for im in ax.get_images()]


# ---------------------------------------------------------------- spectrum


def test_plot_spectrum_log_floor_nullity_and_biases():
    action = VectorAction(dim=3)
    # three exact zeros, then a gap of 1e8 to the rest: the nullity is 3
    eigs = [0.0, 0.0, 0.0] + [10.0 * (i + 1) for i in range(6)]
    report = _report(eigs, action, num_samples=10, reference=_so_reference(3))
    assert report.nullity == 3 and report.biases is not None

    fig, ax = R.plot_spectrum(report)  # no ax: a pyplot figure, as TorchMetrics' plot() makes
    assert plt.fignum_exists(fig.number)
    assert ax.get_yscale() == "log"
    line = ax.get_lines()[0]
    y = np.asarray(line.get_ydata(), dtype=float)
    assert np.all(y > 0), "zero variances must be clamped to a positive floor"
    expected = np.asarray(eigs) / 10.0  # variances = eigenvalues / N
    assert np.allclose(y[3:], expected[3:], rtol=1e-9)
    assert np.all(y[:3] < 1e-10)
    # the boundary between the learned symmetries and the rest
    boundaries = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [2.5, 2.5]]
    assert len(boundaries) == 1
    # biases live on a second axis, between 0 and 1
    assert len(fig.axes) == 2
    bias_y = np.asarray(fig.axes[1].get_lines()[0].get_ydata(), dtype=float)
    assert np.allclose(bias_y, report.biases.numpy())
    _assert_picture(R.figure_to_array(fig))
    assert plt.get_fignums() == []


def test_plot_spectrum_into_given_axes_without_biases():
    report = _report([1e-6, 1.0, 2.0, 3.0], VectorAction(dim=2))
    assert report.biases is None
    fig = plt.figure(figsize=(4, 3))
    ax = fig.add_subplot(1, 1, 1)
    out_fig, out_ax = R.plot_spectrum(report, ax=ax)
    assert out_fig is fig and out_ax is ax
    assert len(fig.axes) == 1, "no bias axis without biases"
    _assert_picture(R.figure_to_array(fig))


def test_spectrum_figure_all_zero_spectrum():
    report = _report([0.0] * 4, VectorAction(dim=2))
    assert report.nullity == 4  # a zero Gram matrix: everything is a symmetry
    fig = R.spectrum_figure(report)
    y = np.asarray(fig.axes[0].get_lines()[0].get_ydata(), dtype=float)
    assert np.all(y > 0) and np.all(np.isfinite(y))
    _assert_picture(R.figure_to_array(fig))


# ---------------------------------------------------------------- generators


def test_generators_figure_symmetric_colour_scale_for_one_signed_generator():
    action = VectorAction(dim=2)
    # the null direction is (1, 1, 1, 1) / 2: a generator whose entries all have one sign
    basis = np.linalg.qr(np.column_stack([np.ones(4), _orthogonal(4, seed=3)[:, :3]]))[0]
    report = _report([0.0, 1.0, 2.0, 3.0], action, num_samples=4, basis=basis)
    lead = report.generators[0].numpy()
    assert np.all(lead > 0) or np.all(lead < 0)

    fig = R.generators_figure(report, k=1)
    (image,) = _images(fig)
    assert image.get_cmap().name == "RdBu_r"
    lo, hi = image.get_clim()
    assert lo == pytest.approx(-0.5) and hi == pytest.approx(0.5)
    _assert_picture(R.figure_to_array(fig))


def test_generators_figure_titles_and_shared_scale():
    action = VectorAction(dim=3)
    eigs = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    q = _orthogonal(9, seed=1)
    report = _report(eigs, action, num_samples=5, reference=_so_reference(3), basis=q)
    fig = R.generators_figure(report, k=4)
    images = _images(fig)
    assert len(images) == 4
    # one scale for all panels, set by the largest entry of the shown (unit) generators;
    # eigenvectors are defined up to sign, so the largest |entry| is sign-free
    limit = np.abs(q[:, :4]).max()
    for im in images:
        assert im.get_clim() == pytest.approx((-limit, limit))
        assert im.get_array().shape == (3, 3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    for i, title in enumerate(titles):
        assert f"{eigs[i] / 5:.3g}" in title  # the variance, from the eigenvalues passed in
        assert "bias" in title
    _assert_picture(R.figure_to_array(fig))


@pytest.mark.parametrize(("shape", "drawn"), [((3,), (1, 3)), ((2, 2, 2), (4, 2)), ((2, 3), (2, 3))])
def test_generators_figure_other_generator_shapes(shape, drawn):
    m = int(np.prod(shape))
    action = TangentAction(lambda x: x[:, None].expand(-1, m, *x.shape[1:]), generator_shape=shape)
    report = _report(np.arange(m, dtype=float), action)
    fig = R.generators_figure(report, k=2)
    images = _images(fig)
    assert [im.get_array().shape for im in images] == [drawn, drawn]
    assert np.allclose(images[0].get_array(), report.generators[0].numpy().reshape(drawn))
    assert "bias" not in fig.axes[0].get_title()
    _assert_picture(R.figure_to_array(fig))


def test_generators_figure_k_larger_than_m():
    report = _report([0.0, 1.0, 2.0, 3.0], VectorAction(dim=2))
    fig = R.generators_figure(report, k=10)
    assert len(_images(fig)) == 4
    _assert_picture(R.figure_to_array(fig))


# ---------------------------------------------------------------- history


@pytest.mark.parametrize("count", [1, 3])
def test_spectrum_history_figure(count):
    rng = np.random.default_rng(count)
    spectra = [torch.from_numpy(np.sort(rng.random(6)) * 10.0 ** (-i)) for i in range(count)]
    spectra[0][0] = 0.0  # a zero needs the log floor
    labels = [f"epoch {i}" for i in range(count)]
    fig = R.spectrum_history_figure(spectra, labels)
    (image,) = _images(fig)
    assert isinstance(image.norm, LogNorm)
    data = np.ma.getdata(image.get_array())
    assert data.shape == (count, 6)
    expected = np.stack([s.numpy() for s in spectra])
    positive = expected > 0
    assert np.allclose(data[positive], expected[positive])
    assert np.all(data[~positive] > 0), "zeros are drawn at a positive floor"
    ticklabels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticklabels == labels
    _assert_picture(R.figure_to_array(fig))


def test_spectrum_history_figure_ragged_and_bad_labels():
    fig = R.spectrum_history_figure([torch.ones(3), torch.arange(1.0, 5.0)])
    data = np.ma.getdata(_images(fig)[0].get_array())
    assert data.shape == (2, 4) and np.isnan(data[0, 3])
    _assert_picture(R.figure_to_array(fig))
    with pytest.raises(ValueError, match="one label per spectrum"):
        R.spectrum_history_figure([torch.ones(3)], ["a", "b"])


# ---------------------------------------------------------------- orbits


def _square_image(channels: int) -> torch.Tensor:
    img = torch.zeros(channels, 16, 20)
    for c in range(channels):
        img[c, 3 + c : 9 + c, 4:10] = 1.0 + c
    return img


ROTATION = torch.tensor([[0.0, -1.0], [1.0, 0.0]]) / 2**0.5
SCALING = torch.eye(2) / 2**0.5


@pytest.mark.parametrize("channels", [None, 1, 2, 3])
def test_orbit_figure_images(channels):
    action = ImageAction()
    x = _square_image(1)[0] if channels is None else _square_image(channels)
    ts = (-0.5, 0.0, 0.5)
    fig = R.orbit_figure(action, x, ROTATION, SCALING, ts=ts)
    images = _images(fig)
    assert len(images) == 2 * len(ts)
    for row, gen in enumerate((ROTATION, SCALING)):
        for col, t in enumerate(ts):
            moved = action.transform(x[None], gen, t)[0].numpy()
            if channels is None:
                expected = moved
            elif channels == 3:  # RGB, scaled jointly
                expected = np.moveaxis(moved, 0, -1)
            else:
                expected = moved.mean(axis=0)
            shown = np.asarray(images[row * len(ts) + col].get_array())
            if channels == 3:
                assert shown.shape == expected.shape
                # a joint affine rescaling to [0, 1]: shown = (expected - lo) / (hi - lo)
                assert np.corrcoef(shown.reshape(-1), expected.reshape(-1))[0, 1] > 0.999
            else:
                assert np.allclose(shown, expected, atol=1e-6)
    # the t = 0 panel is the input itself
    identity = np.asarray(images[1].get_array())
    raw = x.numpy() if channels is None else (x.numpy().mean(0) if channels != 3 else None)
    if raw is not None:
        assert np.allclose(identity, raw, atol=1e-5)
    _assert_picture(R.figure_to_array(fig))


def test_orbit_figure_vectors_match_matrix_exponential():
    action = VectorAction(dim=3, components=2)
    x = torch.tensor([1.0, -0.5, 0.25, 0.3, 2.0, -1.0], dtype=torch.float64)
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    shear = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    ts = (-0.6, -0.3, 0.0, 0.3, 0.6)
    fig = R.orbit_figure(action, x, rot, shear, ts=ts)
    images = _images(fig)
    assert len(images) == 2
    for image, gen in zip(images, (rot, shear)):
        table = np.asarray(image.get_array())
        assert table.shape == (len(ts), 6)
        for row, t in zip(table, ts):
            g = scipy.linalg.expm(t * gen.numpy())
            expected = (x.numpy().reshape(2, 3) @ g.T).reshape(-1)
            assert np.allclose(row, expected, atol=1e-10)
        lo, hi = image.get_clim()
        assert lo == pytest.approx(-hi)
    _assert_picture(R.figure_to_array(fig))


def test_orbit_figure_propagates_not_implemented():
    action = TangentAction(lambda x: x[:, None].expand(-1, 4, *x.shape[1:]), generator_shape=(2, 2))
    with pytest.raises(NotImplementedError):
        R.orbit_figure(action, torch.ones(4), torch.eye(2), torch.eye(2))


# ---------------------------------------------------------------- text


_NUMBER = re.compile(r"-?\d+\.\d+")


@pytest.mark.parametrize("decimals", [3, 1])
def test_generators_text_holds_rounded_generators(decimals):
    action = VectorAction(dim=3)
    eigs = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    report = _report(eigs, action, num_samples=5, reference=_so_reference(3))
    text = R.generators_text(report, k=2, decimals=decimals)
    blocks = re.split(r"\*\*h\d+\*\*", text)[1:]
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        header, _, table = block.partition("\n\n")
        assert f"{eigs[i] / 5:.3g}" in header and "bias" in header
        rows = [ln for ln in table.splitlines() if ln.startswith("|") and not ln.startswith("|-")][1:]
        assert len(rows) == 3
        values = np.array([[float(v) for v in _NUMBER.findall(row)] for row in rows])
        expected = np.round(report.generators[i].numpy(), decimals)
        assert np.allclose(values, expected, atol=1e-12)
        # each entry written with exactly `decimals` digits, and no negative zero
        entries = [e.strip() for row in rows for e in row.strip("|").split("|")]
        assert all(len(e.split(".")[1]) == decimals for e in entries)
        assert not any(set(e) <= {"-", "0", "."} and e.startswith("-") for e in entries)


def test_generators_text_without_biases_and_vector_generators():
    action = TangentAction(lambda x: x[:, None].expand(-1, 3, *x.shape[1:]), generator_shape=(3,))
    report = _report([0.0, 1.0, 2.0], action)
    text = R.generators_text(report, k=4)
    assert "bias" not in text
    assert text.count("**h") == 3  # only as many as there are
    for i in range(3):
        row = next(ln for ln in text.split(f"**h{i}**")[1].splitlines() if ln.startswith("| ") and "c0" not in ln)
        values = [float(v) for v in _NUMBER.findall(row)]
        assert np.allclose(values, np.round(report.generators[i].numpy(), 3), atol=1e-12)


# ---------------------------------------------------------------- conversion


def test_figure_to_array_and_png_close_pyplot_figures():
    fig, ax = plt.subplots(figsize=(2, 1), dpi=100)
    ax.plot([0, 1], [1, 0])
    arr = R.figure_to_array(fig)
    assert arr.shape == (100, 200, 3) and arr.dtype == np.uint8
    assert plt.get_fignums() == []

    fig, ax = plt.subplots(figsize=(2, 1), dpi=100)
    ax.plot([0, 1], [1, 0])
    png = R.figure_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def test_figures_made_here_stay_out_of_pyplot():
    report = _report([0.0, 1.0, 2.0, 3.0], VectorAction(dim=2))
    figs = [R.spectrum_figure(report), R.generators_figure(report), R.spectrum_history_figure([report.variances])]
    assert plt.get_fignums() == []
    for fig in figs:
        _assert_picture(R.figure_to_array(fig))


def test_rendering_imports_matplotlib_lazily():
    # no module-level matplotlib import, except under TYPE_CHECKING
    tree = ast.parse(Path(R.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
            if isinstance(sub, ast.Import):
                assert not any(a.name.startswith("matplotlib") for a in sub.names)
            if isinstance(sub, ast.ImportFrom):
                assert not (sub.module or "").startswith("matplotlib")
