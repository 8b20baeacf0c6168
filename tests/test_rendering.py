"""Tests for ``liegg_lightning.pictures.rendering``: every picture renders, is not blank, and shows what it says."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

from liegg_lightning import ImageAction, TangentAction, VectorAction  # noqa: E402
from liegg_lightning.functional.symmetry import symmetry_compute as build_report  # noqa: E402
from liegg_lightning.pictures import rendering as R  # noqa: E402


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
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.uint8
    assert arr.ndim == 3
    assert arr.shape[2] == 3
    assert arr.shape[0] >= 64
    assert arr.shape[1] >= 64
    assert arr.std() > 5.0, "image is (nearly) blank"
    colours = np.unique(arr.reshape(-1, 3), axis=0)
    assert len(colours) > 10, "image has almost no distinct colours"


def _drawn(picture):
    """A picture's canvas drawn as an array, and its layout."""
    canvas, layout = picture
    return canvas.to_array(), layout


def _figure_array(fig) -> np.ndarray:
    """A matplotlib figure drawn by Agg as an ``(H, W, 3)`` uint8 array; closed where pyplot holds it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    plt.close(fig)
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ---------------------------------------------------------------- card pictures: shared checks


def _mpl_colour(name, fraction):
    """matplotlib's own colour for ``fraction`` in [0, 1], as 0..255 floats (the independent reference)."""
    return np.asarray(matplotlib.colormaps[name](float(np.clip(fraction, 0.0, 1.0)))[:3]) * 255.0


def _close(pixel, expected, tol=6.0):
    return np.abs(np.asarray(pixel, dtype=float) - expected).max() <= tol


def test_card_pictures_fit_a_tensorboard_card():
    action = VectorAction(dim=3)
    report = _report([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], action, reference=_so_reference(3))
    pictures = [R.generators_image(report), R.spectrum_image(report), R.spectrum_history_image([report.variances])]
    for picture in pictures:
        _assert_picture(picture)
        assert picture.shape[1] == R.CARD_WIDTH <= 400  # shown about 1:1 in a ~350 px card, not shrunk


# ---------------------------------------------------------------- generators


def test_generators_image_cells_have_the_colour_of_their_entries():
    action = VectorAction(dim=3)
    eigs = [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    q = _orthogonal(9, seed=1)
    report = _report(eigs, action, num_samples=5, reference=_so_reference(3), basis=q)
    picture, layout = _drawn(R._generators_picture(report, 4))
    _assert_picture(picture)
    # one scale for all panels, from the largest entry of the shown unit generators (sign-free)
    limit = np.abs(q[:, :4]).max()
    assert layout["limit"] == pytest.approx(limit)
    assert len(layout["panels"]) == 4
    assert layout["numbers"]
    for i, panel in enumerate(layout["panels"]):
        x0, y0, x1, y1 = panel["box"]
        cell_w, cell_h = (x1 - x0) / 3, (y1 - y0) / 3
        gen = report.generators[i].numpy()
        for r in range(3):
            for c in range(3):
                # a pixel near the cell's corner: the entry's number is written in its middle
                px = picture[int(y0 + r * cell_h + 2), int(x0 + c * cell_w + 2)]
                assert _close(px, _mpl_colour("RdBu_r", (gen[r, c] + limit) / (2 * limit))), (i, r, c)


def test_generators_image_symmetric_scale_for_one_signed_generator():
    action = VectorAction(dim=2)
    # the null direction is (1, 1, 1, 1) / 2: a generator whose entries all have one sign
    basis = np.linalg.qr(np.column_stack([np.ones(4), _orthogonal(4, seed=3)[:, :3]]))[0]
    report = _report([0.0, 1.0, 2.0, 3.0], action, num_samples=4, basis=basis)
    lead = report.generators[0].numpy()
    assert np.all(lead > 0) or np.all(lead < 0)
    picture, layout = _drawn(R._generators_picture(report, 1))
    assert layout["limit"] == pytest.approx(0.5)
    x0, y0, _, _ = layout["panels"][0]["box"]
    # +-0.5 is an end of the diverging map, not its centre: a saturated red or blue cell
    expected = _mpl_colour("RdBu_r", 1.0 if lead[0, 0] > 0 else 0.0)
    assert _close(picture[int(y0) + 2, int(x0) + 2], expected)


@pytest.mark.parametrize(("shape", "drawn"), [((3,), (1, 3)), ((2, 2, 2), (4, 2)), ((2, 3), (2, 3))])
def test_generators_image_other_generator_shapes(shape, drawn):
    m = int(np.prod(shape))
    action = TangentAction(lambda x: x[:, None].expand(-1, m, *x.shape[1:]), generator_shape=shape)
    report = _report(np.arange(m, dtype=float), action)
    picture, layout = _drawn(R._generators_picture(report, 2))
    assert [p["shape"] for p in layout["panels"]] == [drawn, drawn]
    _assert_picture(picture)


def test_generators_image_large_generators_wrap_and_drop_numbers():
    action = VectorAction(dim=16)
    report = _report(np.arange(256, dtype=float), action)
    picture, layout = _drawn(R._generators_picture(report, 4))
    assert not layout["numbers"]  # 16 columns in a card: colour only
    boxes = [p["box"] for p in layout["panels"]]
    assert len({b[1] for b in boxes}) == 2, "4 panels of 16x16 wrap onto two rows"
    assert picture.shape[1] == R.CARD_WIDTH
    small = _report(np.arange(4, dtype=float), VectorAction(dim=2))
    _, small_layout = R._generators_picture(small, 4)
    assert small_layout["numbers"]
    assert len({p["box"][1] for p in small_layout["panels"]}) == 1


def test_generators_image_k_larger_than_m_and_zero():
    report = _report([0.0, 1.0, 2.0, 3.0], VectorAction(dim=2))
    assert len(R._generators_picture(report, 10)[1]["panels"]) == 4
    assert R._generators_picture(report, 0)[1]["panels"] == []


def test_cell_text_is_short_and_rounded():
    assert [R._entry_text(v) for v in (0.7071, -0.5, 0.001, -0.004, 1.0, -0.999)] == [".71", "-.5", "0", "0", "1.0",
                                                                                      "-1.0"]


# ---------------------------------------------------------------- spectrum


def test_spectrum_image_markers_sit_at_the_log_variances_with_error_bars():
    action = VectorAction(dim=3)
    eigs = np.array([0.0, 1e-6, 2e-6] + [10.0 * (i + 1) for i in range(6)])
    report = _report(eigs, action, num_samples=10, reference=_so_reference(3))
    report.variance_stderr = torch.from_numpy(np.where(eigs > 0, 0.5 * eigs / 10, 0.0))  # as a newer report has
    picture, layout = _drawn(R._spectrum_picture(report))
    _assert_picture(picture)
    (x0, y0, x1, y1), (lo, hi) = layout["box"], layout["ylim"]

    def at(i, log_value):
        fx = (i + 0.5) / len(eigs)
        return int(round(x0 + fx * (x1 - x0))), int(round(y1 - (log_value - lo) / (hi - lo) * (y1 - y0)))

    blue = np.array([31, 119, 180], dtype=float)
    for i, v in enumerate(eigs / 10):
        if v > 0:
            x, y = at(i, np.log10(v))
            assert _close(picture[y, x], blue, tol=40), i
            # the error bar's upper end (v + se) is drawn too, above the marker
            xe, ye = at(i, np.log10(1.5 * v))
            assert _close(picture[ye, xe], blue, tol=60), i
    # zeros sit at the floor: a hollow marker (white centre, blue ring) at the floor's height
    x, y = at(0, np.log10(layout["floor"]))
    assert picture[y, x].min() > 200


def test_spectrum_title_holds_the_numbers_and_survives_nan():
    report = _report([0.0, 0.0, 0.0] + [10.0 * (i + 1) for i in range(6)], VectorAction(dim=3), num_samples=10,
                     reference=_so_reference(3))
    first, second = R._spectrum_title(report)
    assert "nullity 3" in first
    assert "N 10" in first
    assert "bias" in second
    assert "closure" in second
    assert "±" not in second
    report.closure_error = float("nan")
    report.symmetry_bias = float("nan")
    report.biases = torch.full_like(report.biases, float("nan"))
    report.variance_stderr = torch.full_like(report.variances, 0.25)
    first, second = R._spectrum_title(report)
    assert "closure n/a" in second
    assert "bias n/a" in second
    assert "±0.2" in second
    _assert_picture(R.spectrum_image(report))  # NaN biases are left out, not drawn at 0
    _assert_picture(_figure_array(R.plot_spectrum(report)[0]))


def test_spectrum_image_empty_and_all_zero():
    _assert_picture(R.spectrum_image(_report([0.0] * 4, VectorAction(dim=2))))
    empty = _report([0.0], VectorAction(dim=1))
    empty.variances = torch.zeros(0, dtype=torch.float64)
    assert R.spectrum_image(empty).shape[1] == R.CARD_WIDTH


def test_plot_spectrum_draws_the_card_picture_with_matplotlib():
    action = VectorAction(dim=3)
    # three exact zeros, then a gap of 1e8 to the rest: the nullity is 3
    eigs = np.array([0.0, 0.0, 0.0] + [10.0 * (i + 1) for i in range(6)])
    report = _report(eigs, action, num_samples=10, reference=_so_reference(3))
    assert report.nullity == 3
    fig, ax = R.plot_spectrum(report)  # no ax: a pyplot figure, as TorchMetrics' plot() makes
    assert plt.fignum_exists(fig.number)
    assert fig is ax.figure
    assert round(fig.get_figwidth() * fig.dpi) == R.CARD_WIDTH
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "nullity 3" in texts
    assert "bias" in texts
    picture = _figure_array(fig)
    assert plt.get_fignums() == []
    _assert_picture(picture)
    layout = R._spectrum_picture(report)[1]
    (x0, y0, x1, y1), (lo, hi) = layout["box"], layout["ylim"]

    def at(i, fraction):
        return int(round(y1 - fraction * (y1 - y0))), int(round(x0 + (i + 0.5) / eigs.size * (x1 - x0)))

    blue = np.array([31, 119, 180], dtype=float)
    for i, v in enumerate(eigs / 10):  # variances = eigenvalues / N, on the log axis
        if v > 0:
            assert _close(picture[at(i, (np.log10(v) - lo) / (hi - lo))], blue, tol=40), i
    # zeros sit at the floor: a hollow marker, white inside
    assert picture[at(0, (np.log10(layout["floor"]) - lo) / (hi - lo))].min() > 200
    orange = np.array([230, 120, 20], dtype=float)
    for i, b in enumerate(report.biases.numpy()):  # the bias axis runs from -0.05 to 1.05
        assert _close(picture[at(i, (b + 0.05) / 1.1)], orange, tol=40), i


def test_plot_spectrum_into_given_axes_without_biases():
    report = _report([1e-6, 1.0, 2.0, 3.0], VectorAction(dim=2))
    assert report.biases is None
    fig = plt.figure(figsize=(4, 3))
    ax = fig.add_subplot(1, 1, 1)
    out_fig, out_ax = R.plot_spectrum(report, ax=ax)
    assert out_fig is fig
    assert out_ax is ax
    assert len(fig.axes) == 1
    assert not any("bias" in t.get_text() for t in ax.texts), "no bias axis without biases"
    _assert_picture(_figure_array(fig))


# ---------------------------------------------------------------- history


def test_history_scales_each_row_so_the_untrained_row_does_not_dominate():
    # untrained: small outputs, a flat spectrum; trained: larger outputs, two symmetries learned
    untrained = torch.tensor([1.0e-3, 1.1e-3, 1.2e-3, 1.3e-3, 1.4e-3, 1.5e-3], dtype=torch.float64)
    trained = torch.tensor([1e-5, 2e-5, 10.0, 11.0, 12.0, 13.0], dtype=torch.float64)
    table = R.spectrum_history_table([untrained, trained])
    # independent reference: log10(variance / mean of its own row)
    for row, spectrum in zip(table, (untrained, trained)):
        assert np.allclose(row, np.log10(spectrum.numpy() / spectrum.numpy().mean()), atol=1e-12)
    # scaling a row does not change it: the picture shows the spectrum's shape, not the outputs' size
    assert np.allclose(R.spectrum_history_table([1e6 * untrained, trained]), table)

    picture, layout = _drawn(R._history_picture([untrained, trained], ["epoch 1", "epoch 2"]))
    x0, y0, x1, _ = layout["box"]
    row_h = layout["row_height"]
    col_w = (x1 - x0) / 6

    def luminance(r, c):
        return picture[int(y0 + (r + 0.5) * row_h), int(x0 + (c + 0.5) * col_w)].astype(float).mean()

    # the learned symmetries are the darkest cells; the untrained row's first column is not
    assert luminance(1, 0) < luminance(0, 0) - 60
    assert luminance(1, 1) < luminance(0, 0) - 60
    lo, hi = layout["limits"]
    for r, c in [(0, 0), (1, 0), (1, 3)]:
        fraction = (np.clip(table[r, c], lo, hi) - lo) / (hi - lo)
        assert _close(picture[int(y0 + (r + 0.5) * row_h), int(x0 + (c + 0.5) * col_w)],
                      _mpl_colour("viridis", fraction))


def test_history_labels_and_integer_ticks():
    spectra = [torch.linspace(1.0, 2.0, 7) * (i + 1) for i in range(40)]
    labels = [f"epoch {i + 1}" for i in range(39)] + ["validate"]
    picture, layout = _drawn(R._history_picture(spectra, labels))
    _assert_picture(picture)
    shown = layout["labelled_rows"]
    assert shown[-1] == 39, "the newest analysis is always labelled"
    assert len(shown) < 40
    assert len(set(np.diff(shown))) == 1
    assert R._index_ticks(7) == [0, 1, 2, 3, 4, 5, 6]
    assert R._index_ticks(25) == [0, 5, 10, 15, 20]
    assert R._index_ticks(1024) == [0, 200, 400, 600, 800, 1000]
    assert all(isinstance(t, int) for t in R._index_ticks(100))


def test_history_ragged_zero_and_bad_labels():
    table = R.spectrum_history_table([torch.tensor([0.0, 1.0, 2.0]), torch.arange(1.0, 5.0)])
    assert table.shape == (2, 4)
    assert np.isnan(table[0, 3])
    assert np.isneginf(table[0, 0])
    _assert_picture(R.spectrum_history_image([torch.tensor([0.0, 1.0, 2.0]), torch.arange(1.0, 5.0)]))
    _assert_picture(R.spectrum_history_image([torch.zeros(3)]))
    with pytest.raises(ValueError, match="one label per spectrum"):
        R.spectrum_history_image([torch.ones(3)], ["a", "b"])
    with pytest.raises(ValueError, match="at least one spectrum"):
        R.spectrum_history_image([])


# ---------------------------------------------------------------- orbits


def _square_image(channels: int) -> torch.Tensor:
    img = torch.zeros(channels, 16, 20)
    for c in range(channels):
        img[c, 3 + c : 9 + c, 4:10] = 1.0 + c
    return img


ROTATION = torch.tensor([[0.0, -1.0], [1.0, 0.0]]) / 2**0.5
SCALING = torch.eye(2) / 2**0.5


def _vector_model():
    # |r1| and r1.r2 are so(3)-invariant; r1[0] is not
    def f(x):
        r1, r2 = x[:, :3], x[:, 3:]
        return torch.stack([r1.norm(dim=1), (r1 * r2).sum(1), r1[:, 0]], 1)

    return f


def test_orbit_outputs_match_the_model_on_matrix_exponentials():
    action = VectorAction(dim=3, components=2)
    x = torch.tensor([1.0, -0.5, 0.25, 0.3, 2.0, -1.0], dtype=torch.float64)
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    shear = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    ts = (-0.6, 0.0, 0.3)
    out = R.orbit_outputs(_vector_model(), action, x, rot, shear, ts=ts)
    assert set(out) == {"ts", "most", "least"}
    assert out["most"].shape == (3, 3)
    for key, gen in (("most", rot), ("least", shear)):
        for row, t in zip(out[key], ts):
            g = scipy.linalg.expm(t * gen.numpy())
            r1, r2 = g @ x.numpy()[:3], g @ x.numpy()[3:]
            assert np.allclose(row, [np.linalg.norm(r1), r1 @ r2, r1[0]], atol=1e-10)
    # the invariant components stay flat along the rotation; the shear moves them
    assert np.ptp(out["most"][:, :2], axis=0).max() < 1e-10
    assert np.ptp(out["least"][:, :2], axis=0).min() > 1e-2


def test_orbit_outputs_leave_the_model_alone():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)).eval()
    before = [p.detach().clone() for p in model.parameters()]
    out = R.orbit_outputs(model, VectorAction(dim=3, components=2), torch.randn(6), torch.eye(3), -torch.eye(3))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert out["most"].dtype == np.float64
    assert out["most"].shape == (len(R.ORBIT_CURVE_TS), 2)
    seen = []
    R.orbit_outputs(lambda x: seen.append(x.device) or torch.zeros(len(x), 2), VectorAction(dim=3, components=2),
                    torch.randn(6), torch.eye(3), torch.eye(3), device="meta")  # the model runs where it is told
    assert seen == [torch.device("meta")]
    with pytest.raises(ValueError, match="one row per input"):
        R.orbit_outputs(lambda x: x.sum(), VectorAction(dim=3), torch.randn(3), torch.eye(3), torch.eye(3))
    with pytest.raises(ValueError, match="at least one value"):
        R.orbit_outputs(model, VectorAction(dim=3, components=2), torch.randn(6), torch.eye(3), torch.eye(3), ts=())


@pytest.mark.parametrize("channels", [None, 1, 2, 3])
def test_orbit_image_thumbnails_are_the_transformed_input(channels):
    action = ImageAction()
    x = _square_image(1)[0] if channels is None else _square_image(channels)
    ts = (-0.5, 0.0, 0.5)
    picture, layout = _drawn(R._orbit_picture(action, x, ROTATION, SCALING, ts, None))
    _assert_picture(picture)
    assert len(layout["thumbs"]) == 2 * len(ts)
    assert layout["panels"] == []
    lo, hi = layout["intensity"]
    for k, (gen, t) in enumerate([(g, t) for g in (ROTATION, SCALING) for t in ts]):
        moved = action.transform(x[None], gen, t)[0].numpy()
        if channels is None:
            expected = moved[..., None].repeat(3, -1)
        elif channels == 3:
            expected = np.moveaxis(moved, 0, -1)
        else:
            expected = moved.mean(axis=0)[..., None].repeat(3, -1)
        expected = np.clip((expected - lo) / (hi - lo), 0, 1) * 255
        x0, y0, w, h = layout["thumbs"][k]
        rows, cols = expected.shape[:2]
        for r, c in [(rows // 2, cols // 2), (5, 6), (rows - 1, 0)]:
            shown = picture[int(y0 + (r + 0.5) * h / rows), int(x0 + (c + 0.5) * w / cols)]
            assert np.abs(shown - expected[r, c]).max() <= 1.0, (k, r, c)


def test_orbit_image_with_outputs_draws_both_orbits_on_one_scale():
    action = ImageAction()
    x = _square_image(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(320, 3)).eval()
    orbit = R.orbit_outputs(model, action, x, ROTATION, SCALING)
    picture, layout = _drawn(R._orbit_picture(action, x, ROTATION, SCALING, R.ORBIT_TS, orbit))
    _assert_picture(picture)
    most, least = layout["panels"]
    assert most["ylim"] == least["ylim"]  # one scale: a flat line looks flat next to a moving one
    both = np.concatenate([orbit["most"], orbit["least"]])
    assert most["ylim"][0] < both.min()
    assert most["ylim"][1] > both.max()
    centre = int(np.argmin(np.abs(orbit["ts"])))
    assert most["change"] == pytest.approx(np.abs(orbit["most"] - orbit["most"][centre]).max())


def test_orbit_image_vectors_need_outputs_and_keep_the_most_moving_components():
    action = VectorAction(dim=3, components=2)
    x = torch.tensor([1.0, -0.5, 0.25, 0.3, 2.0, -1.0])
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert R.orbit_image(action, x, rot, torch.eye(3)) is None
    ts = np.linspace(-0.6, 0.6, 5)
    still = np.ones((5, 12))
    moving = np.ones((5, 12))
    moving[:, 3] += ts  # only component 3 moves
    picture, layout = _drawn(R._orbit_picture(action, x, rot, torch.eye(3), R.ORBIT_TS,
                                       {"ts": ts, "most": still, "least": moving}))
    _assert_picture(picture)
    shown = layout["panels"][0]["shown"]
    assert len(shown) == R._MAX_CURVES
    assert 3 in shown
    assert layout["panels"][0]["change"] == 0.0
    assert layout["panels"][1]["change"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="orbit_outputs"):
        R.orbit_image(action, x, rot, rot, orbit={"most": still})


def test_orbit_propagates_not_implemented():
    action = TangentAction(lambda x: x[:, None].expand(-1, 4, *x.shape[1:]), generator_shape=(2, 2))
    with pytest.raises(NotImplementedError):
        R.orbit_image(action, torch.ones(2, 4, 4), torch.eye(2), torch.eye(2))
    with pytest.raises(NotImplementedError):
        R.orbit_outputs(lambda x: x, action, torch.ones(4), torch.eye(2), torch.eye(2))


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
        assert f"{eigs[i] / 5:.3g}" in header
        assert "bias" in header
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


def test_figure_to_png_closes_pyplot_figures():
    fig, ax = plt.subplots(figsize=(2, 1), dpi=100)
    ax.plot([0, 1], [1, 0])
    png = R.figure_to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []


def test_matplotlib_draws_each_card_picture_as_the_array_does():
    from liegg_lightning.pictures.layers import _layers_picture

    model, x, report = _image_report()
    action = ImageAction()
    orbit = R.orbit_outputs(model, action, x[0], report.generators[0], report.generators[-1])
    canvases = [R._generators_picture(report, 4)[0], R._spectrum_picture(report, "fit · epoch 4")[0],
                R._history_picture([report.variances] * 3, None)[0],
                R._orbit_picture(action, x[0], report.generators[0], report.generators[-1], R.ORBIT_TS, orbit)[0],
                _layers_picture({"0": report, "": report})[0]]
    for canvas in canvases:
        fig = canvas.to_figure()  # outside pyplot: nothing for pyplot to keep
        assert [t.get_text() for t in fig.axes[0].texts] == [t.text for t in canvas.texts]
        # glyphs are rasterised differently; without the text, the two drawings agree up to the
        # anti-aliasing of lines (a line's edge pixel a shade lighter or darker)
        canvas.texts.clear()
        array, drawn = canvas.to_array(), _figure_array(canvas.to_figure())
        assert drawn.shape == array.shape
        differs = np.abs(drawn.astype(int) - array.astype(int)).max(axis=2) > 150
        assert differs.mean() < 0.002, differs.mean()
    assert plt.get_fignums() == []


def _image_report():
    from liegg_lightning import analyze

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 16 * 20, 3)).eval()
    x = torch.stack([_square_image(1) * (1 + 0.1 * i) for i in range(8)])
    return model, x, analyze(model, x, ImageAction(), reference_algebra="rotation")


def test_render_pictures_all_four_and_orbit_only_with_what_it_needs():
    model, x, report = _image_report()
    action = ImageAction()
    orbit = R.orbit_outputs(model, action, x[0], report.generators[0], report.generators[-1])
    pictures = R.render_pictures(report, action, spectra=[report.variances] * 3, labels=["epoch 1", "epoch 2",
                                 "validate"], example_input=x[0], orbit=orbit)
    assert set(pictures) == {"generators", "spectrum", "spectrum_history", "orbit"}
    laid_out = R.picture_canvases(report, action, spectra=[report.variances] * 3, labels=["epoch 1", "epoch 2",
                                  "validate"], example_input=x[0], orbit=orbit)
    assert all(np.array_equal(laid_out[tag].to_array(), pictures[tag]) for tag in pictures)  # one layout, drawn
    for picture in pictures.values():
        _assert_picture(picture)
    without = R.render_pictures(report, action, spectra=[], example_input=None, num_generators=0)
    assert set(without) == {"spectrum"}
    vec = _report([0.0, 1.0, 2.0, 3.0], VectorAction(dim=2))
    assert "orbit" not in R.render_pictures(vec, VectorAction(dim=2), spectra=[vec.variances],
                                            example_input=torch.ones(2))


def test_a_full_set_of_pictures_makes_no_matplotlib_figure():
    # the card pictures are drawn on a numpy canvas: no matplotlib figure (1.1-1.8 s a set through them,
    # issue 10) is made on the way; their time is measured by docs/time_pictures.py, not asserted here
    import subprocess
    import sys

    code = (
        "import torch\n"
        "import matplotlib.figure as F\n"
        "made = []\n"
        "original = F.Figure.__init__\n"
        "F.Figure.__init__ = lambda self, *a, **k: (made.append(1), original(self, *a, **k))[1]\n"
        "from liegg_lightning import ImageAction, analyze\n"
        "from liegg_lightning.pictures import rendering as R\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))\n"
        "x = torch.randn(16, 1, 8, 8)\n"
        "report = analyze(model, x, ImageAction(), known_generators=['rotation'])\n"
        "orbit = R.orbit_outputs(model, ImageAction(), x[0], report.generators[0], report.generators[-1])\n"
        "pictures = R.render_pictures(report, ImageAction(), spectra=[report.variances] * 3, labels=['a', 'b', 'c'],\n"
        "                             example_input=x[0], orbit=orbit, layers={'': report, '0': report})\n"
        "assert len(pictures) >= 5, sorted(pictures)\n"
        "print(len(made))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "0"


def _package_imports(module) -> list:
    """Every ``liegg_lightning`` module ``module`` imports, at its top or inside its functions."""
    tree = ast.parse(Path(module.__file__).read_text())
    found = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    found += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    return [name for name in found if name and name.startswith("liegg_lightning")]


def test_picture_modules_import_matplotlib_lazily_and_each_other_one_way():
    from liegg_lightning.pictures import canvas
    from liegg_lightning.pictures import layers as rendering_layers

    for module in (canvas, rendering_layers, R):
        tree = ast.parse(Path(module.__file__).read_text())
        for node in tree.body:  # no module-level matplotlib or Pillow import, except under TYPE_CHECKING
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith(("matplotlib", "PIL")) for a in node.names), module
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(("matplotlib", "PIL")), module
    # the canvas is the ground floor, the layers stand on it, rendering on both: no circle
    assert not any(name.startswith(("liegg_lightning.pictures.rendering", "liegg_lightning.pictures.layers"))
                   for name in _package_imports(canvas))
    assert "liegg_lightning.pictures.rendering" not in _package_imports(rendering_layers)


def test_a_caption_changes_only_the_title_of_each_picture():
    _, _, report = _image_report()
    plain = R.spectrum_image(report)
    captioned = R.spectrum_image(report, caption="validate @ epoch 9")
    assert plain.shape[1] == captioned.shape[1] <= R.CARD_WIDTH
    assert captioned.shape[0] <= R.CARD_HEIGHT
    rows = min(len(plain), len(captioned))
    differs = np.nonzero((plain[:rows] != captioned[:rows]).any(axis=(1, 2)))
    assert differs[0].size > 0  # the caption is drawn
    assert differs[0].min() < 30  # in the title line at the top


def test_generators_take_as_many_cards_as_their_numbers_need_and_none_is_larger_than_a_card():
    five = _report(np.linspace(1.0, 25.0, 25), VectorAction(5))
    two = _report(np.linspace(1.0, 4.0, 4), ImageAction())
    pages5, pages2 = R.generator_pages(five, 4), R.generator_pages(two, 4)
    assert sum(count for _, count in pages5) == 4
    assert len(pages5) >= 2
    assert pages2 == [(0, 4)]  # 2x2 generators fit four to a card
    pictures = R.render_pictures(five, VectorAction(5), num_generators=4, caption="fit · epoch 4")
    assert {"generators", f"generators_h{pages5[1][0]}"} <= set(pictures)
    assert all(p.shape[0] <= R.CARD_HEIGHT and p.shape[1] <= R.CARD_WIDTH for p in pictures.values())
    with pytest.raises(TypeError):
        R.render_pictures(five, VectorAction(5), num_generator=4)  # a misspelt keyword is refused, not ignored


def test_the_layers_picture_is_a_card_and_names_each_maps_border_share():
    from liegg_lightning.pictures.layers import _layers_picture

    _, _, report = _image_report()
    ringed = build_report(torch.eye(4, dtype=torch.float64), 10, 10, 0, ImageAction())
    ringed.border_share = 0.69
    picture, layout = _drawn(_layers_picture({"conv1": report, "conv2": ringed}, known=None, k=4, caption="epoch 3"))
    assert picture.shape[0] <= R.CARD_HEIGHT
    assert picture.shape[1] <= R.CARD_WIDTH
    assert layout["row_labels"][1].endswith("ring 69%")
    assert "ring" not in layout["row_labels"][0] or math.isfinite(report.border_share)
