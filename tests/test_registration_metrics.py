"""Registration metrics and the numpy warp (models/metrics/registration.py) on small known cases."""

from __future__ import annotations

import numpy as np
import pytest

from busref.models.metrics.registration import (
    endpoint_error,
    mse,
    ncc,
    registration_metrics,
    summarise,
    warp_numpy,
)

H, W = 12, 16


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((H, W))


def _identity(height: int = H, width: int = W) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack((xs, ys), axis=-1)


def test_ncc_of_an_image_with_itself_its_negation_and_an_affine_copy() -> None:
    x = _image()
    assert ncc(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ncc(x, -x) == pytest.approx(-1.0, abs=1e-12)
    assert ncc(x, 0.5 * x + 0.2) == pytest.approx(1.0, abs=1e-12)
    assert abs(ncc(x, _image(seed=1))) < 0.3


def test_ncc_of_a_constant_image_is_zero() -> None:
    assert ncc(_image(), np.full((H, W), 0.4)) == 0.0


def test_mse_of_known_arrays() -> None:
    a = np.zeros((2, 2))
    b = np.array([[0.0, 0.5], [1.0, 0.5]])
    assert mse(a, b) == pytest.approx((0.25 + 1.0 + 0.25) / 4)
    assert mse(b, b) == 0.0


def test_mask_restricts_ncc_and_mse() -> None:
    a = _image()
    b = a.copy()
    mask = np.zeros((H, W), dtype=bool)
    mask[2:8, 3:11] = True
    b[~mask] = 1.0 - b[~mask]  # anti-correlated outside the mask only
    assert mse(a, b, mask) == 0.0
    assert mse(a, b) > 0.01
    assert ncc(a, b, mask) == pytest.approx(1.0, abs=1e-12)
    assert ncc(a, b) < 0.5


def test_epe_of_a_grid_shifted_by_3_4_is_exactly_5() -> None:
    true = _identity()
    est = true + np.array([3.0, 4.0])
    mask = np.ones((H, W), dtype=bool)
    assert endpoint_error(est, true, mask) == {"mean": 5.0, "median": 5.0, "p90": 5.0}


def test_epe_only_counts_pixels_in_the_mask() -> None:
    true = _identity()
    est = true + np.array([3.0, 4.0])
    mask = np.zeros((H, W), dtype=bool)
    mask[:, :4] = True
    est[:, 4:] += 100.0
    assert endpoint_error(est, true, mask)["mean"] == pytest.approx(5.0)


def test_epe_percentiles_follow_the_error_distribution() -> None:
    true = _identity(1, 10)
    est = true.copy()
    est[0, :, 0] += np.arange(10.0)  # errors 0, 1, ..., 9 px
    epe = endpoint_error(est, true, np.ones((1, 10), dtype=bool))
    assert epe["mean"] == pytest.approx(4.5)
    assert epe["median"] == pytest.approx(4.5)
    assert epe["p90"] == pytest.approx(8.1)


def test_registration_metrics_of_a_perfect_registration() -> None:
    target = _image()
    grid = _identity()
    mask = np.ones((H, W), dtype=bool)
    metrics = registration_metrics(target, target, mask, grid, grid)
    assert set(metrics) == {"NCC", "MSE", "MNCC", "MMSE", "EPE_mean", "EPE_median", "EPE_p90"}
    assert metrics["NCC"] == pytest.approx(1.0) and metrics["MNCC"] == pytest.approx(1.0)
    assert metrics["MSE"] == 0.0 and metrics["MMSE"] == 0.0
    assert metrics["EPE_mean"] == metrics["EPE_median"] == metrics["EPE_p90"] == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ncc(np.zeros((4, 4)), np.zeros((4, 5))), "shapes differ"),
        (lambda: mse(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4), dtype=bool)), "no pixels"),
        (lambda: mse(np.zeros((4, 4)), np.zeros((4, 4)), np.ones((3, 4), dtype=bool)), "mask shape"),
        (lambda: ncc(np.zeros((4, 4, 3)), np.zeros((4, 4, 3))), "2-D"),
        (lambda: endpoint_error(np.zeros((4, 4, 2)), np.zeros((4, 5, 2)), np.ones((4, 4), dtype=bool)),
         "grid shapes differ"),
        (lambda: endpoint_error(np.zeros((4, 4)), np.zeros((4, 4)), np.ones((4, 4), dtype=bool)), "pixel grid"),
        (lambda: endpoint_error(np.full((4, 4, 2), np.nan), np.zeros((4, 4, 2)), np.ones((4, 4), dtype=bool)),
         "non-finite"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_summarise_reports_mean_std_success_failures_and_median_seconds() -> None:
    pairs = [
        {"name": "a", "MNCC": 0.5, "EPE_mean": 1.0, "seconds": 1.0, "failed": False},
        {"name": "b", "MNCC": 0.7, "EPE_mean": 3.0, "seconds": 2.0, "failed": False},
        {"name": "c", "MNCC": 0.9, "EPE_mean": 8.0, "seconds": 9.0, "failed": True},
    ]
    summary = summarise(pairs)
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx({"MNCC": 0.7, "EPE_mean": 4.0})
    assert summary["std"]["MNCC"] == pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert summary["success_2px"] == pytest.approx(1 / 3)
    assert summary["success_5px"] == pytest.approx(2 / 3)
    assert summary["failures"] == 1
    assert summary["median_seconds"] == 2.0
    assert "seconds" not in summary["mean"]


def test_summarise_leaves_out_what_the_pairs_do_not_have() -> None:
    summary = summarise([{"MNCC": 0.5}])
    assert summary == {"n": 1, "mean": {"MNCC": 0.5}, "std": {"MNCC": 0.0}}


def test_summarise_rejects_no_pairs_and_a_missing_key() -> None:
    with pytest.raises(ValueError, match="at least one pair"):
        summarise([])
    with pytest.raises(ValueError, match="pair 1: key 'EPE_mean'"):
        summarise([{"EPE_mean": 1.0}, {"MNCC": 0.3}])


def test_warp_numpy_identity_returns_the_image() -> None:
    image = _image()
    np.testing.assert_array_equal(warp_numpy(image, _identity()), image)


def test_warp_numpy_one_pixel_shift_shifts_and_zero_pads() -> None:
    image = _image()
    out = warp_numpy(image, _identity() + np.array([1.0, 0.0]))  # out(x, y) = image(x + 1, y)
    np.testing.assert_array_equal(out[:, :-1], image[:, 1:])
    np.testing.assert_array_equal(out[:, -1], 0.0)


def test_warp_numpy_interpolates_bilinearly_and_half_pads_at_the_border() -> None:
    image = np.array([[0.0, 1.0], [2.0, 3.0]])
    # centre of the 4 pixels; half a pixel left of (0, 1); half a pixel below (1, 1); NaN
    grid = np.array([[[0.5, 0.5], [-0.5, 1.0]], [[1.0, 1.5], [np.nan, 0.0]]])
    np.testing.assert_allclose(warp_numpy(image, grid), [[1.5, 1.0], [1.5, 0.0]])
    far = np.array([[[1e30, 0.0], [-1e30, 1.0]]])
    np.testing.assert_array_equal(warp_numpy(image, far), [[0.0, 0.0]])


def test_warp_numpy_matches_grid_sample_align_corners_true() -> None:
    torch = pytest.importorskip("torch", reason="torch is the protocol's reference warp")
    rng = np.random.default_rng(3)
    image = rng.random((H, W))
    grid = _identity() + rng.uniform(-2.5, 2.5, (H, W, 2))  # reaches past every border
    normalised = grid * np.array([2.0 / (W - 1), 2.0 / (H - 1)]) - 1.0
    expected = torch.nn.functional.grid_sample(
        torch.from_numpy(image)[None, None], torch.from_numpy(normalised)[None],
        mode="bilinear", padding_mode="zeros", align_corners=True,
    )[0, 0].numpy()
    np.testing.assert_allclose(warp_numpy(image, grid), expected, atol=1e-12)
