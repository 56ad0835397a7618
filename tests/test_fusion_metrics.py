"""Fusion metrics and classical fusion baselines on small images whose scores are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from busref.models.fusion_baselines import average, laplacian_pyramid_maxabs
from busref.models.metrics.fusion import (
    _DMEY_BANK,
    FUSION_METRICS,
    _fmi_windows,
    _WindowTable,
    chen_varshney,
    cross_entropy,
    edge_intensity,
    entropy,
    fmi_wavelet,
    fusion_metrics,
    mutual_information,
    qabf,
    spatial_frequency,
    ssim,
    standard_deviation,
    vif,
    wavelet_feature,
)


def _texture(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """Smooth-ish random 8-bit texture with full 0..255 range."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 255.0, (shape[0] // 4 + 1, shape[1] // 4 + 1))
    image = np.kron(coarse, np.ones((4, 4)))[: shape[0], : shape[1]] + rng.uniform(-20.0, 20.0, shape)
    image = np.round(np.clip(image, 0.0, 255.0))
    image[0, 0], image[-1, -1] = 0.0, 255.0
    return image


def _halves(low: float, high: float, shape: tuple[int, int] = (12, 12)) -> np.ndarray:
    """Left half ``low``, right half ``high``: a vertical step edge."""
    image = np.full(shape, low)
    image[:, shape[1] // 2 :] = high
    return image


# ------------------------------------------------------------------------------------------------
# Single-image metrics
# ------------------------------------------------------------------------------------------------


def test_edge_intensity_of_a_step_edge_matches_the_sobel_response() -> None:
    # The 3x3 Sobel x-response is (1 + 2 + 1) * 100 on the two columns either side of the step and 0
    # elsewhere (replicated borders add no edge), so the mean magnitude is 400 * 2 / 12.
    assert edge_intensity(_halves(0.0, 100.0)) == pytest.approx(400.0 * 2 / 12)
    assert edge_intensity(np.full((12, 12), 77.0)) == 0.0


def test_spatial_frequency_of_constant_and_checkerboard() -> None:
    assert spatial_frequency(np.full((8, 10), 200.0)) == 0.0
    rows, cols, a = 8, 10, 50.0
    checker = a * (np.add.outer(np.arange(rows), np.arange(cols)) % 2)
    # Every neighbour difference is +-a; VIFB divides both sums by the pixel count.
    expected = a * math.sqrt((cols - 1) / cols + (rows - 1) / rows)
    assert spatial_frequency(checker) == pytest.approx(expected)


def test_entropy_and_standard_deviation_of_a_two_level_image() -> None:
    image = _halves(0.0, 255.0)
    assert entropy(image) == pytest.approx(1.0)
    assert entropy(np.full((5, 5), 3.0)) == 0.0
    assert standard_deviation(_halves(0.0, 100.0)) == pytest.approx(50.0)


def test_histogram_metrics_truncate_to_grey_levels() -> None:
    # 10.7 truncates to level 10, and 10 - 1e-12 (float error on a whole level) counts as 10: one level.
    assert entropy(np.array([[10.0, 10.7], [10.0 - 1e-12, 10.5]])) == 0.0
    assert entropy(np.array([[9.9, 10.0], [9.9, 10.0]])) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# Information-theoretic metrics
# ------------------------------------------------------------------------------------------------


def test_cross_entropy_is_zero_for_identical_images_and_matches_a_hand_case() -> None:
    x = _texture(0)
    assert cross_entropy(x, x, x) == 0.0
    vis = _halves(0.0, 255.0, (8, 8))  # P_V = (1/2, 1/2)
    fused = np.zeros((8, 8))
    fused[:, 6:] = 255.0  # P_F = (3/4, 1/4)
    ce_vis = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    # R == F contributes 0; CE is the mean of the two terms.
    assert cross_entropy(fused, vis, fused) == pytest.approx(ce_vis / 2)


def test_mutual_information_of_identical_and_independent_images() -> None:
    x = _texture(1)
    assert mutual_information(x, x, x) == pytest.approx(2 * entropy(x))
    rows = 255.0 * (np.arange(8)[:, None] % 2) * np.ones((1, 8))
    cols = rows.T.copy()  # every (row level, column level) pair is equally likely: independent
    assert mutual_information(rows, cols, cols) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# FMI_w
# ------------------------------------------------------------------------------------------------


def _reference_fmi_window(a: np.ndarray, f: np.ndarray) -> float:
    """Fast-FMI of one window pair, written as Haghighat's loops (explicit lower Frechet bound)."""
    if np.array_equal(a, f):
        return 1.0

    def pdf(x: np.ndarray) -> np.ndarray:
        span = x.max() - x.min()
        y = np.ones_like(x) if span == 0 else (x - x.min()) / span
        return y / y.sum()

    pa, pf = pdf(a), pdf(f)
    ca, cf = np.concatenate([[0.0], np.cumsum(pa)]), np.concatenate([[0.0], np.cumsum(pf)])
    ta, tf = pa - pa.mean(), pf - pf.mean()
    s = float(np.sum(ta * tf))
    c = 0.0 if s == 0 else s / math.sqrt(float(np.sum(ta * ta) * np.sum(tf * tf)))
    n = len(pa)
    idx = np.arange(1, n + 1)
    sd_a = math.sqrt(max(float(np.sum(idx**2 * pa) - np.sum(idx * pa) ** 2), 0.0))
    sd_f = math.sqrt(max(float(np.sum(idx**2 * pf) - np.sum(idx * pf) ** 2), 0.0))

    def bound(x: float, y: float) -> float:
        return min(x, y) if c >= 0 else max(x + y - 1.0, 0.0)

    k = 0.0
    if c != 0 and sd_a > 0 and sd_f > 0:
        cov = sum(bound(cf[i], ca[j]) - cf[i] * ca[j] for i in range(1, n + 1) for j in range(1, n + 1))
        k = c / (cov / (sd_f * sd_a))
    joint_entropy = 0.0
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            up = bound(cf[i], ca[j]) - bound(cf[i - 1], ca[j]) - bound(cf[i], ca[j - 1]) + bound(cf[i - 1], ca[j - 1])
            p = k * up + (1 - k) * pf[i - 1] * pa[j - 1]
            if p != 0:
                joint_entropy -= p * math.log2(abs(p))
    h_a = -sum(p * math.log2(p) for p in pa if p > 0)
    h_f = -sum(p * math.log2(p) for p in pf if p > 0)
    mi = h_a + h_f - joint_entropy
    return 0.0 if mi == 0 else 2 * mi / (h_a + h_f)


@pytest.mark.parametrize("window", [2, 3])
@pytest.mark.parametrize("case", ["random", "affine", "patch", "quantised", "mirrored", "flat"])
def test_fmi_windows_match_the_reference_loops(case: str, window: int) -> None:
    rng = np.random.default_rng(7)
    a, f = rng.uniform(0, 1, (9, 11)), rng.uniform(0, 1, (9, 11))
    if case == "affine":  # same pdf in every window, different raw values: FMI 1 via the full model
        f = 2 * a + 1
    elif case == "patch":  # identical except a constant patch: covers the identical-window shortcut
        f = a.copy()
        f[3:6, 4:8] = 0.3
    elif case == "quantised":  # ties in the CDFs and zero-probability positions
        a, f = np.round(a * 2) / 2, np.round(f * 3) / 3
    elif case == "mirrored":  # negative correlations: the lower Frechet bound
        f = a.copy()
        f[:, ::2] = 1 - a[:, ::2]
    elif case == "flat":
        a[2:7, 2:8] = 0.5
        f = a**2
    table_a, table_f = _WindowTable(a, window), _WindowTable(f, window)
    ours = _fmi_windows(
        table_a.windows(0, table_a.n_columns), table_f.windows(0, table_f.n_columns), table_a.same_as(table_f)
    )
    patches = [
        (slice(y, y + window), slice(x, x + window))
        for x in range(a.shape[1] - window + 1)
        for y in range(a.shape[0] - window + 1)
    ]
    reference = [_reference_fmi_window(a[p].ravel("F"), f[p].ravel("F")) for p in patches]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)
    if case == "affine":
        np.testing.assert_allclose(ours, 1.0, atol=1e-10)


def test_fmi_wavelet_of_identical_images_is_one_and_of_unrelated_ones_lower() -> None:
    x = _texture(2, (24, 28))
    assert fmi_wavelet(x, x, x) == 1.0
    assert fmi_wavelet(_texture(3, (24, 28)), x, x) < 0.9


def test_dmey_bank_is_an_orthogonal_low_high_pair() -> None:
    low, high = _DMEY_BANK[:, 0], _DMEY_BANK[:, 1]
    assert low.sum() == pytest.approx(math.sqrt(2.0), abs=1e-12)
    assert np.dot(low, high) == pytest.approx(0.0, abs=1e-15)
    # dmey is an FIR approximation of the Meyer wavelet: unit energy and zero DC only to ~1e-3.
    assert abs(high.sum()) < 2e-3
    np.testing.assert_allclose([low @ low, high @ high], 1.0, atol=3e-3)


def test_wavelet_feature_of_a_constant_image() -> None:
    # Symmetric extension keeps a constant c constant, so each band is c times the product of its two
    # filters' DC gains; the mosaic [cA, cH; cV, cD] is then rescaled to [0, 1].
    c = 40.0
    feature = wavelet_feature(np.full((10, 7), c))
    rows, cols = (10 + 61) // 2, (7 + 61) // 2  # floor((n + taps - 1) / 2) per band
    assert feature.shape == (2 * rows, 2 * cols)
    g_low, g_high = _DMEY_BANK.sum(axis=0)
    bands = c * np.array([[g_low * g_low, g_low * g_high], [g_high * g_low, g_high * g_high]])
    expected = (bands - bands.min()) / (bands.max() - bands.min())
    for (r, q), value in np.ndenumerate(expected):
        np.testing.assert_allclose(feature[r * rows : (r + 1) * rows, q * cols : (q + 1) * cols], value, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Edge- and perception-based metrics
# ------------------------------------------------------------------------------------------------


def test_qabf_of_perfect_fusion_is_the_product_of_the_two_sigmoids_at_one() -> None:
    x = _texture(4)
    expected = 0.9994 / (1 + math.exp(-15 * (1 - 0.5))) * 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))
    assert qabf(x, x, x) == pytest.approx(expected, rel=1e-12)
    assert qabf(np.zeros_like(x), x, _texture(5)) < 0.01


def test_ssim_of_identical_images_is_one_and_of_constants_has_a_closed_form() -> None:
    x = _texture(6)
    assert ssim(x, x, x) == pytest.approx(1.0, abs=1e-12)
    c1 = (0.01 * 255) ** 2
    source, fused = np.full((16, 16), 100.0), np.full((16, 16), 120.0)
    # Zero variances leave only the luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    expected = (2 * 100.0 * 120.0 + c1) / (100.0**2 + 120.0**2 + c1)
    assert ssim(fused, source, source) == pytest.approx(expected)


def test_vif_of_identical_images_is_one_and_of_a_flat_fusion_is_zero() -> None:
    x, y = _texture(7, (48, 48)), _texture(8, (48, 48))
    assert vif(x, x, x) == pytest.approx(1.0, abs=1e-6)
    assert vif(np.full_like(x, 128.0), x, y) == 0.0
    assert 0.0 < vif((x + y) / 2, x, y) < 1.0


def test_chen_varshney_is_zero_for_perfect_fusion_and_grows_with_distortion() -> None:
    x, y = _texture(9), _texture(10)
    assert chen_varshney(x, x, x) == 0.0
    mild = chen_varshney(np.clip(x + np.random.default_rng(0).normal(0, 5, x.shape), 0, 255), x, x)
    strong = chen_varshney(y, x, x)
    assert 0.0 < mild < strong


# ------------------------------------------------------------------------------------------------
# Registry, input guards
# ------------------------------------------------------------------------------------------------


def test_fusion_metrics_reports_every_registered_metric_with_its_direction() -> None:
    x, y = _texture(11), _texture(12)
    scores = fusion_metrics((x + y) / 2, x, y)
    assert list(scores) == list(FUSION_METRICS)
    assert list(scores)[:5] == ["EI", "CE", "SF", "FMI_w", "Q_cv"]
    assert all(math.isfinite(value) for value in scores.values())
    lower_is_better = {key for key, metric in FUSION_METRICS.items() if not metric.higher_is_better}
    assert lower_is_better == {"CE", "Q_cv"}


def test_fusion_metrics_truncates_to_grey_levels_unless_told_not_to() -> None:
    x, y = _texture(20), _texture(21)
    fused = (x + y) / 2  # half the pixels end in .5
    assert fusion_metrics(fused, x, y) == fusion_metrics(np.floor(fused), x, y)
    assert fusion_metrics(fused, x, y, quantise=False)["EI"] == edge_intensity(fused)
    assert fusion_metrics(fused, x, y, quantise=False)["EI"] != fusion_metrics(fused, x, y)["EI"]


def test_perfect_fusion_beats_a_blank_image_on_every_metric_but_ce() -> None:
    x = _texture(13)
    perfect, blank = fusion_metrics(x, x, x), fusion_metrics(np.full_like(x, 128.0), x, x)
    # VIFB's CE skips grey levels missing from F, so a blank F scores <= 0, at least as well as F = V.
    assert blank["CE"] <= perfect["CE"] == 0.0
    for key, metric in FUSION_METRICS.items():
        if key == "CE":
            continue
        better = perfect[key] > blank[key] if metric.higher_is_better else perfect[key] < blank[key]
        assert better, key


@pytest.mark.parametrize("bad_name", ["fused", "vis", "ir"])
def test_shape_mismatch_names_the_argument(bad_name: str) -> None:
    images = {"fused": _texture(14), "vis": _texture(15), "ir": _texture(16)}
    images[bad_name] = images[bad_name][:-1]
    with pytest.raises(ValueError, match="has shape") as excinfo:
        fusion_metrics(**images)
    assert bad_name in str(excinfo.value)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((20, 20, 3)), r"vis must be a 2-D \(H, W\) numpy array, got shape \(20, 20, 3\)"),
        ([[0.0] * 20] * 20, "vis must be a 2-D .* got list"),
        (np.full((20, 20), 256.0), r"vis must hold finite values in \[0.0, 255.0\]"),
        (np.full((20, 20), np.nan), "vis must hold finite values"),
    ],
)
def test_bad_input_names_the_argument(bad: object, message: str) -> None:
    good = np.zeros((20, 20))
    with pytest.raises(ValueError, match=message):
        cross_entropy(good, bad, good)  # type: ignore[arg-type]


def test_metrics_refuse_images_smaller_than_their_windows() -> None:
    tiny = np.zeros((8, 30))
    with pytest.raises(ValueError, match=">= 11"):
        ssim(tiny, tiny, tiny)
    with pytest.raises(ValueError, match=">= 17"):
        fusion_metrics(tiny, tiny, tiny)
    with pytest.raises(ValueError, match="window must be 2 or 3"):
        fmi_wavelet(np.zeros((20, 20)), np.zeros((20, 20)), np.zeros((20, 20)), window=4)


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------


def test_average_is_the_pixel_mean() -> None:
    vis, ir = _texture(17) / 255.0, _texture(18) / 255.0
    np.testing.assert_allclose(average(vis, ir), (vis + ir) / 2)


def test_laplacian_pyramid_reconstructs_identical_inputs_and_averages_constants() -> None:
    x = _texture(19, (37, 45)) / 255.0  # odd sizes exercise pyrUp's dstsize
    np.testing.assert_allclose(laplacian_pyramid_maxabs(x, x), x, atol=1e-12)
    fused = laplacian_pyramid_maxabs(np.full((32, 32), 0.2), np.full((32, 32), 0.6), levels=3)
    np.testing.assert_allclose(fused, 0.4, atol=1e-12)


def test_laplacian_pyramid_keeps_the_stronger_edge() -> None:
    vis = _halves(0.0, 1.0, (32, 32))
    ir = np.full((32, 32), 0.5)
    fused = laplacian_pyramid_maxabs(vis, ir)
    assert fused.shape == vis.shape and fused.min() >= 0.0 and fused.max() <= 1.0
    # Max-abs keeps the visible step's full detail; the average halves it.
    step = edge_intensity(255 * fused)
    assert step > 1.5 * edge_intensity(255 * average(vis, ir))


def test_baselines_reject_bad_input() -> None:
    x = np.zeros((32, 32))
    with pytest.raises(ValueError, match="ir has shape"):
        average(x, x[:, :-1])
    with pytest.raises(ValueError, match=r"vis must hold finite values in \[0.0, 1.0\]"):
        average(x + 2.0, x)
    with pytest.raises(ValueError, match="levels must be >= 1"):
        laplacian_pyramid_maxabs(x, x, levels=0)
    with pytest.raises(ValueError, match=">= 64"):
        laplacian_pyramid_maxabs(x, x, levels=6)
