"""The spectrum against an independent float64 brute force, and the measures against analytic answers."""

from __future__ import annotations

import math
import re

import pytest
import reference as R
import torch
from conftest import O5Model, gaussian_blobs

from liegg_lightning import ImageAction, LieGGMetric, VectorAction, analyze
from liegg_lightning._memory import check_memory_budget as _check_memory_budget
from liegg_lightning.functional import spectrum as S
from liegg_lightning.functional.symmetry import _sample_groups, accumulate, new_state, symmetry_update

pytestmark = pytest.mark.usefixtures("single_thread")

O5 = VectorAction(dim=5, components=2)


def _brute_force(model: O5Model, inputs: torch.Tensor):
    """Singular values (ascending), right singular vectors and ``E`` of a float64 copy of ``model``."""
    m64 = O5Model(extra_output=model.extra_output, breaking=model.breaking).double().eval()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    e = R.polarization_matrix(m64, inputs.double(), lambda s: R.vector_tangents(s, 5))
    s, v = R.spectrum(e)
    return s, v, e


# ----------------------------------------------------------------------------- against the brute force


@pytest.mark.parametrize("breaking", [0.0, 1e-3])
def test_singular_values_match_brute_force(o5_inputs: torch.Tensor, breaking: float) -> None:
    model = O5Model(breaking=breaking).eval()
    report = analyze(model, o5_inputs, O5, reference_algebra="so")
    s, v, _ = _brute_force(model, o5_inputs)
    assert report.num_samples == 256
    assert report.num_rows == 256 * 3
    err = float((report.singular_values - s).abs().max())
    assert err <= 1e-6 * float(s.max()), (err, float(s.max()))
    # the least invariant generators (well separated) match the reference's singular vectors
    vecs = O5.to_vector(report.generators)  # (m, m), one generator a row
    cos = (vecs[-5:] * v[:, -5:].T).sum(1).abs()
    assert float((1 - cos).max()) < 1e-8


def test_near_symmetric_smallest_variances_match_and_float32_gram_cannot(o5_inputs: torch.Tensor) -> None:
    # every so(5) direction broken at 1e-3: the ten smallest variances sit ~1e-6 below the largest
    model = O5Model(breaking=1e-3).eval()  # float32 model, as in training
    report = analyze(model, o5_inputs, O5)
    s, _, e = _brute_force(model, o5_inputs)
    n = o5_inputs.shape[0]
    ref_var = s[:10] ** 2 / n
    assert float(ref_var.max() / (s[-1] ** 2 / n)) < 1e-4  # genuinely near-symmetric
    engine_err = float((report.variances[:10] / ref_var - 1).abs().max())
    assert engine_err < 1e-3, engine_err
    # the same rows accumulated in a float32 Gram matrix lose these directions
    e32 = e.float()
    lam32 = torch.linalg.eigvalsh(e32.T @ e32).double().clamp_min(0)
    gram32_err = float((lam32[:10] / n / ref_var - 1).abs().max())
    assert gram32_err > 10 * 1e-3, gram32_err  # fails the 0.1% bar by an order of magnitude
    assert gram32_err > 1000 * engine_err


def test_float32_svd_of_E_cannot_resolve_deeper_symmetries(o5_inputs: torch.Tensor) -> None:
    # a float64 model broken at 1e-6 (variance ratio ~1e-12): the float64 Gram still resolves the
    # smallest variances to 0.1%, the original's float32 SVD of the full E does not
    model = O5Model(breaking=1e-6).double().eval()
    x = o5_inputs.double()
    report = analyze(model, x, O5)
    e = R.polarization_matrix(model, x, lambda s: R.vector_tangents(s, 5))
    s, _ = R.spectrum(e)
    n = x.shape[0]
    ref_var = s[:10] ** 2 / n
    engine_err = float((report.variances[:10] / ref_var - 1).abs().max())
    assert engine_err < 1e-3, engine_err
    s32 = torch.linalg.svdvals(e.float()).flip(0).double()
    svd32_err = float((s32[:10] ** 2 / n / ref_var - 1).abs().max())
    assert svd32_err > 3e-3, svd32_err
    assert svd32_err > 10 * engine_err


# ----------------------------------------------------------------------------- known variances


def test_known_variances_equal_quadratic_form_and_finite_differences(o5_inputs: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(11)
    general = 3.0 * torch.randn(5, 5, generator=gen, dtype=torch.float64)  # not unit norm on purpose
    antisym = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    antisym = antisym - antisym.T
    known = {"general": general, "antisymmetric": antisym, "scaling": torch.eye(5, dtype=torch.float64)}
    model = O5Model(breaking=1e-3).double().eval()
    x = o5_inputs.double()
    n = x.shape[0]
    report = analyze(model, x, O5, known_generators=known)
    model.requires_grad_(False)  # plain forward passes below
    _, _, e = _brute_force(model, o5_inputs)
    g = R.gram(e)
    for name, h in known.items():
        v = h.reshape(-1)
        quad = float(v @ g @ v) / (n * float(v @ v))
        assert report.known_variances[name] == pytest.approx(quad, rel=1e-9)
        # finite difference E ||F(exp(eps h) x) - F(x)||^2 / eps^2 along the unit generator
        unit = h / h.norm()
        eps = 1e-6
        base = model(x)
        moved = model(O5.transform(x, unit, eps))
        fd = float(((moved - base) ** 2).sum(1).mean()) / eps**2
        g_exp = torch.linalg.matrix_exp(eps * unit)
        moved_indep = model((x.reshape(n, 2, 5) @ g_exp.T).reshape(n, 10))
        fd_indep = float(((moved_indep - base) ** 2).sum(1).mean()) / eps**2
        assert report.known_variances[name] == pytest.approx(fd, rel=1e-4)
        assert report.known_variances[name] == pytest.approx(fd_indep, rel=1e-4)
    # the broken antisymmetric direction is orders of magnitude more invariant than the others
    assert report.known_variances["antisymmetric"] < 1e-4 * report.known_variances["general"]


def test_known_variances_of_images_match_finite_differences() -> None:
    images = gaussian_blobs(8, 32, 32, seed=9, sigma=(2.0, 3.0))
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def model(img: torch.Tensor) -> torch.Tensor:
        f = img.flatten(1)
        return torch.stack([(f**2).sum(1), torch.tanh((img * w).flatten(1).sum(1) / 10)], 1)

    action = ImageAction(affine=True)
    names = ["rotation", "scaling", "shear", "translation_x"]
    report = analyze(model, images, action, known_generators=names)
    eps = 1e-4
    for name in names:
        h = action.known_generator(name)
        # symmetric difference: bilinear resampling then matches the central differences
        diff = model(action.transform(images, h, eps)) - model(action.transform(images, h, -eps))
        fd = float((diff**2).sum(1).mean()) / (2 * eps) ** 2
        assert report.known_variances[name] == pytest.approx(fd, rel=1e-3), name


# ----------------------------------------------------------------------------- the measures


def test_estimate_nullity_on_synthetic_spectra() -> None:
    def lam(*values: float) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    assert S.estimate_nullity(lam(1e-12, 2e-12, 1.0, 2.0, 3.0)) == 2
    assert S.estimate_nullity(lam(1.0, 1.5, 2.0, 3.0)) == 0  # no gap
    assert S.estimate_nullity(lam(0.0, 0.0, 0.0, 1.0)) == 3  # exact zeros count at the float64 floor
    # the largest gap wins, wherever it lies
    assert S.estimate_nullity(lam(1e-14, 1e-8, 1e-7, 1.0, 1.0)) == 3
    assert S.estimate_nullity(lam(1e-14, 1e-4, 1e-3, 1.0, 1.0)) == 1
    # scale-free: the issue's so(3) spectrum (a 109x gap above 1 % of the mean) at any scale
    issue = lam(0.0101, 0.0113, 0.0124, 1.35, 1.6, 2.0, 2.2, 2.9, 3.1)
    for scale in (1e-200, 1e-3, 1.0, 1e3, 1e200):
        assert S.estimate_nullity(issue * scale) == 3, scale
    # a gap under 1 / tolerance does not count
    assert S.estimate_nullity(lam(0.2, 1.0, 1.0, 1.0)) == 0
    assert S.estimate_nullity(lam(0.2, 1.0, 1.0, 1.0), tolerance=0.5) == 1
    assert S.estimate_nullity(lam(0.0, 0.0)) == 2
    assert S.estimate_nullity(lam(3.0)) == 0
    assert S.estimate_nullity(torch.zeros(0, dtype=torch.float64)) == 0


def test_estimate_nullity_judges_gaps_against_their_standard_errors() -> None:
    lam = torch.tensor([0.01, 1.0, 1.1], dtype=torch.float64)  # a 100x gap: log 4.61
    nan = float("nan")
    se = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert S.estimate_nullity(lam, se(0.5, 0.05)) == 1  # 4.61 - 2 * 0.5 = 3.61 >= log 10
    assert S.estimate_nullity(lam, se(1.5, 0.05)) == 0  # 4.61 - 3 = 1.61 < log 10: not significant
    assert S.estimate_nullity(lam, se(1.5, 0.05), confidence=1.0) == 1
    assert S.estimate_nullity(lam, se(nan, nan)) == 1  # unknown errors: the gap alone
    # the most significant gap, not the largest, wins: 1000x +- 2 against 100x +- 0
    two = torch.tensor([1e-5, 1e-2, 1.0, 1.2], dtype=torch.float64)
    assert S.estimate_nullity(two, se(2.0, 0.0, 0.01)) == 2
    assert S.estimate_nullity(two, se(0.0, 0.0, 0.01)) == 1
    with pytest.raises(ValueError, match=r"gap_stderr.*\(3,\)"):
        S.estimate_nullity(two, se(1.0))
    with pytest.raises(ValueError, match="tolerance"):
        S.estimate_nullity(two, tolerance=2.0)


def test_log_gaps_are_scale_free_and_floored() -> None:
    lam = torch.tensor([[0.0, 1e-20, 1.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    gaps = S.log_gaps(lam)
    # both tiny values sit at the floor 1e-15 * 4
    torch.testing.assert_close(gaps[0], torch.tensor([0.0, math.log(1 / 4e-15), math.log(4.0)], dtype=torch.float64))
    torch.testing.assert_close(S.log_gaps(lam * 1e-100), gaps)
    assert torch.equal(gaps[1], torch.zeros(3, dtype=torch.float64))


def test_jackknife_stderr_of_means_is_the_textbook_one() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.1], dtype=torch.float64)
    # delete-one: the standard error of the mean, s / sqrt(n)
    reps = torch.stack([torch.cat([x[:j], x[j + 1 :]]).mean(0) for j in range(60)])
    se = S.jackknife_stderr(x.mean(0), reps, torch.ones(60, dtype=torch.float64))
    torch.testing.assert_close(se, x.std(0) / math.sqrt(60), rtol=1e-12, atol=0)
    # 6 equal groups: the spread of the group means, sd / sqrt(G)
    groups = x.reshape(6, 10, 3)
    reps = torch.stack([torch.cat([groups[:j], groups[j + 1 :]]).reshape(-1, 3).mean(0) for j in range(6)])
    se = S.jackknife_stderr(x.mean(0), reps, torch.full((6,), 10.0, dtype=torch.float64))
    torch.testing.assert_close(se, groups.mean(1).std(0) / math.sqrt(6), rtol=1e-12, atol=0)
    # unequal groups (weighted delete-a-group jackknife): for a mean the pseudo-values are the group
    # means and the jackknife estimate is the mean itself, so var = (1/G) sum n_j (m_j - m)^2 / (N - n_j)
    sizes = [5, 12, 20, 23]
    parts = x[:, 0].split(sizes)
    est = x[:, 0].mean()
    reps = torch.stack([torch.cat([p for i, p in enumerate(parts) if i != j]).mean() for j in range(4)])
    var = sum(s * (float(p.mean()) - float(est)) ** 2 / (60 - s) for s, p in zip(sizes, parts)) / 4
    counts = torch.tensor(sizes, dtype=torch.float64)
    assert float(S.jackknife_stderr(est, reps, counts)) == pytest.approx(math.sqrt(float(var)), rel=1e-12)
    # empty groups are left out; with fewer than two non-empty groups the error is undefined
    padded = torch.cat([reps, est[None]])
    assert float(S.jackknife_stderr(est, padded, torch.cat([counts, torch.zeros(1, dtype=torch.float64)]))) == (
        pytest.approx(math.sqrt(float(var)), rel=1e-12)
    )
    assert math.isnan(float(S.jackknife_stderr(est, reps[:2], torch.tensor([60.0, 0.0], dtype=torch.float64))))


def test_biases_are_distances_and_principal_angle_sines() -> None:
    # reference: span(e0, e1) in R^4; generators rotated out of it by known angles
    q = torch.eye(4, dtype=torch.float64)[:2]
    a, b = 0.3, 0.05
    v = torch.zeros(4, 2, dtype=torch.float64)
    v[:, 0] = torch.tensor([math.cos(a), 0.0, math.sin(a), 0.0], dtype=torch.float64)
    v[:, 1] = torch.tensor([0.0, math.cos(b), 0.0, math.sin(b)], dtype=torch.float64)
    torch.testing.assert_close(S.reference_biases(v, q), torch.tensor([math.sin(a), math.sin(b)], dtype=torch.float64))
    assert S.subspace_bias(v, q) == pytest.approx(math.sin(a), rel=1e-12)
    # rotating within the subspace changes nothing
    c, s = math.cos(0.7), math.sin(0.7)
    mix = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    assert S.subspace_bias(v @ mix, q) == pytest.approx(math.sin(a), rel=1e-12)
    # for so(n) the bias is the norm of the symmetric part of the unit generator
    h = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h = h / h.norm()
    ref = R.so_basis(4).reshape(6, 16)
    sym = 0.5 * (h + h.T)
    assert float(S.reference_biases(h.reshape(16, 1), ref)[0]) == pytest.approx(float(sym.norm()), rel=1e-12)


def test_closure_error_analytic() -> None:
    assert S.closure_error(R.so_basis(3)) == pytest.approx(0.0, abs=1e-14)
    assert S.closure_error(R.so_basis(5)) == pytest.approx(0.0, abs=1e-14)
    # E_01 and E_10 of gl(2): [E_01, E_10] = diag(1, -1), orthogonal to both, of norm sqrt(2)
    pair = torch.stack([R.unit_matrix(2, 0, 1), R.unit_matrix(2, 1, 0)])
    assert S.closure_error(pair) == pytest.approx(math.sqrt(2.0), rel=1e-12)
    assert math.isnan(S.closure_error(pair[:1]))  # undefined with fewer than two generators, not perfect
    assert math.isnan(S.closure_error(pair[:0]))
    assert S.closure_error(torch.zeros(2, 6, dtype=torch.float64)) is None


def test_closure_error_stays_bounded_for_large_algebras() -> None:
    # so(32): 496 generators, 122,760 pairs; a Lie algebra, so every sampled commutator closes
    big = R.so_basis(32)
    assert S.closure_error(big) == pytest.approx(0.0, abs=1e-12)
    # chunking changes nothing: tiny chunks give the all-at-once answer of an explicit double loop
    g = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q = torch.linalg.qr(g.reshape(6, 9).T).Q
    worst = 0.0
    for a in range(6):
        for b in range(a + 1, 6):
            c = (g[a] @ g[b] - g[b] @ g[a]).reshape(9)
            worst = max(worst, float((c - q @ (q.T @ c)).norm()))
    assert S.closure_error(g, chunk_bytes=1) == pytest.approx(worst, rel=1e-12)
    # sampled pairs never exceed the exact maximum
    assert S.closure_error(g, max_pairs=5) <= worst + 1e-12


def test_fewer_rows_than_generators_warns() -> None:
    metric = LieGGMetric(VectorAction(dim=4))
    metric.update(lambda x: (x * x).sum(1, keepdim=True), torch.randn(5, 4))
    with pytest.warns(UserWarning, match="5 rows for m=16 generators"):
        metric.compute()


def test_gram_update_drops_and_counts_non_finite_samples() -> None:
    rows = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bad = rows.clone()
    bad[1, 2, 0] = float("nan")
    bad[3, 0, 3] = float("inf")
    update = new_state(4)
    finite = accumulate(update, bad)
    keep = rows[[0, 2, 4]].reshape(-1, 4)
    torch.testing.assert_close(torch.ldexp(update.gram, 2 * update.exponent), keep.T @ keep)
    assert (int(update.num_samples), int(update.num_rows), int(update.num_skipped)) == (3, 9, 2)
    assert finite.tolist() == [True, False, True, False, True]
    # jackknife groups: the partial Gram matrices sum to the whole, non-finite samples count nowhere
    update = symmetry_update(bad, num_groups=3)
    torch.testing.assert_close(torch.ldexp(update.group_grams.sum(0), 2 * update.exponent), keep.T @ keep)
    assert float(update.group_counts.sum()) == 3.0


def test_jackknife_groups_depend_on_the_sample_alone() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(600, 7, generator=gen)
    rows = torch.randn(600, 2, 5, generator=gen, dtype=torch.float64)

    def partials(idx: torch.Tensor) -> torch.Tensor:
        upd = symmetry_update(rows[idx], num_groups=8, group_keys=x[idx])
        return torch.ldexp(upd.group_grams, 2 * upd.exponent)

    whole = partials(torch.arange(600))
    # any batching and any order (as with several processes or another batch size) give the same groups
    perm = torch.randperm(600, generator=gen)
    pieces = sum(partials(chunk) for chunk in perm.split(77))
    torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-12)
    # and each group is the Gram matrix of its own samples, computed here by brute force
    ids = torch.tensor([int(_sample_groups(x[i : i + 1], 8)) for i in range(600)])
    for g in range(8):
        sub = rows[ids == g].reshape(-1, 5)
        torch.testing.assert_close(whole[g], sub.T @ sub, rtol=1e-12, atol=1e-12)
    # balanced: 600 samples, 75 expected per group
    counts = torch.bincount(ids, minlength=8)
    assert int(counts.min()) > 45, counts.tolist()
    assert int(counts.max()) < 105, counts.tolist()
    # one changed bit moves a sample to an unrelated group (about 7 in 8 times)
    nudged = x.clone()
    nudged[:, 3] = torch.nextafter(nudged[:, 3], torch.tensor(float("inf")))
    assert float((_sample_groups(nudged, 8) != ids).double().mean()) > 0.7


def test_solve_spectrum_is_ascending_and_clamped() -> None:
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    lam = torch.tensor([3.0, -1e-18, 1.0, 2.0], dtype=torch.float64)
    evals, evecs = S.solve_spectrum(q @ torch.diag(lam) @ q.T)
    torch.testing.assert_close(evals, torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64), rtol=0, atol=1e-14)
    assert float(evals.min()) >= 0.0
    # eigenvectors are those columns of q, up to sign
    order = [1, 2, 3, 0]
    torch.testing.assert_close((evecs * q[:, order]).sum(0).abs(), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        S.solve_spectrum(torch.full((2, 2), float("nan"), dtype=torch.float64))


def test_memory_budget_message_states_the_estimate() -> None:
    with pytest.raises(ValueError, match="MiB") as info:
        _check_memory_budget(400, 1 << 20)
    stated = float(re.search(r"([0-9.]+) MiB", str(info.value)).group(1))
    assert stated >= 8 * 400 * 400 / 2**20  # at least the float64 Gram matrix itself
    assert _check_memory_budget(10, None) > 0
    # a tiny budget is stated in a unit that shows it, never "0.0 MiB"
    with pytest.raises(ValueError, match=r"over the memory budget of 10 bytes") as info:
        _check_memory_budget(4, 10)
    assert "0.0 MiB" not in str(info.value)
    # the metric refuses before allocating: an m whose Gram matrix needs ~100 TiB fails cleanly
    with pytest.raises(ValueError, match="GiB"):
        LieGGMetric(VectorAction(dim=2000))
