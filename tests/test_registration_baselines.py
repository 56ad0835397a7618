"""Classical registration baselines (models/baselines/registration.py) on synthetic pairs with a known affine.

Both "modalities" are one analytic texture (a soft checkerboard, whose corners SIFT needs, plus
random Gaussian blobs) sampled exactly, so the true reference -> moving grid is known. The true
affine is a rotation plus an asymmetric translation: a method that returned the map in the
wrong direction (moving -> reference) would be off by about 7 px, far above the 1 px bound.
"""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from busref import conventions
from busref.models.baselines.registration import (
    EccGradient,
    IdentityMethod,
    MattesMIAffine,
    RegistrationMethod,
    _checked_affine_grid,
    make_method,
)
from busref.models.metrics.registration import endpoint_error, warp_numpy

H, W = 96, 128
affine_grid = partial(conventions.affine_grid, coordinates="pixel")  # the baselines' pixel grids


def _texture(x: np.ndarray, y: np.ndarray, checker: float = 0.6) -> np.ndarray:
    """Smooth texture in [0, 1] defined at any real pixel position (x, y)."""
    rng = np.random.default_rng(0)
    value = checker * np.tanh(3.0 * np.sin(2 * np.pi * x / 16) * np.sin(2 * np.pi * y / 16))
    for _ in range(25):
        cx, cy = rng.uniform(-10, W + 10), rng.uniform(-10, H + 10)
        sigma, amplitude = rng.uniform(3, 10), rng.uniform(-1, 1)
        value = value + amplitude * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return np.clip(0.5 + 0.35 * value, 0.0, 1.0)


def _true_affine(angle_deg: float, shift: tuple[float, float]) -> np.ndarray:
    """Reference -> moving pixel affine: rotation about the image centre, then ``shift``."""
    angle = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    return np.column_stack((rot, centre - rot @ centre + np.array(shift)))


def _pair(matrix: np.ndarray, checker: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vis, ir, true grid, mask): ``ir(true(q)) = vis(q)`` exactly; mask = true(q) inside the IR."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    vis = _texture(xs, ys, checker)
    inverse = np.linalg.inv(np.vstack((matrix, [0.0, 0.0, 1.0])))[:2]
    ir = _texture(*np.moveaxis(affine_grid(inverse, H, W).astype(np.float64), -1, 0), checker)
    true = affine_grid(matrix, H, W).astype(np.float64)
    mask = (true[..., 0] >= 0) & (true[..., 0] <= W - 1) & (true[..., 1] >= 0) & (true[..., 1] <= H - 1)
    return vis.astype(np.float32), ir.astype(np.float32), true, mask


@pytest.fixture(scope="module")
def shifted_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return _pair(_true_affine(3.0, (3.0, -2.0)))


@pytest.mark.parametrize("name", ["sift", "ecc", "mi", "ngf-mind"])
def test_baseline_recovers_a_known_affine(name: str, shifted_pair) -> None:
    vis, ir, true, mask = shifted_pair
    identity_epe = endpoint_error(affine_grid(np.eye(2, 3), H, W), true, mask)["mean"]
    grid = make_method(name).register(vis, ir)
    assert grid is not None, f"{name} failed on an easy synthetic pair"
    assert grid.shape == (H, W, 2) and grid.dtype == np.float32
    epe = endpoint_error(grid, true, mask)["mean"]
    assert identity_epe > 3.0
    assert epe < 1.0, f"{name}: EPE {epe:.2f} px"


@pytest.mark.parametrize("name", ["ecc", "mi", "ngf-mind"])
def test_multimodal_baselines_survive_inverted_contrast(name: str, shifted_pair) -> None:
    # IR and visible intensities disagree; ECC on gradient magnitude and MI do not need them to agree.
    vis, ir, true, mask = shifted_pair
    grid = make_method(name).register(vis, 1.0 - ir)
    assert grid is not None
    assert endpoint_error(grid, true, mask)["mean"] < 1.0


@pytest.mark.parametrize("name", ["ecc", "mi", "ngf-mind"])
def test_zero_padding_of_the_moving_image_does_not_drag_the_fit(name: str) -> None:
    # The protocol's moving IR is zero outside the sensor; its sharp border must not be matched.
    # No checkerboard here: shifted by half its period it is its own negative, which MI cannot
    # tell from the truth, and this shift is close to that.
    matrix = _true_affine(4.0, (6.0, -5.0))
    vis, _, true, mask = _pair(matrix, checker=0.0)
    inverse = np.linalg.inv(np.vstack((matrix, [0.0, 0.0, 1.0])))[:2]
    padded_ir = warp_numpy(vis, affine_grid(inverse, H, W)).astype(np.float32)
    assert (padded_ir == 0).mean() > 0.05
    grid = make_method(name).register(vis, padded_ir)
    assert grid is not None
    assert endpoint_error(grid, true, mask & (warp_numpy(padded_ir, true) > 0))["mean"] < 1.0


def test_identity_method_returns_the_identity_grid() -> None:
    vis = np.zeros((20, 30), dtype=np.float32)
    grid = IdentityMethod().register(vis, vis)
    assert grid is not None and grid.dtype == np.float32 and grid.shape == (20, 30, 2)
    assert grid[7, 11].tolist() == [11.0, 7.0]


@pytest.mark.parametrize("name", ["sift", "ecc", "mi", "ngf-mind"])
def test_featureless_images_give_none(name: str) -> None:
    flat = np.full((H, W), 0.5, dtype=np.float32)
    assert make_method(name).register(flat, flat) is None


def test_implausible_or_non_finite_affines_are_rejected() -> None:
    assert _checked_affine_grid("t", np.array([[3.0, 0, 0], [0, 3.0, 0]]), (4, 5)) is None
    assert _checked_affine_grid("t", np.array([[1.0, 0, np.nan], [0, 1.0, 0]]), (4, 5)) is None
    grid = _checked_affine_grid("t", np.array([[1.0, 0, 2.0], [0, 1.0, 0]]), (4, 5))
    assert grid is not None and grid[0, 0].tolist() == [2.0, 0.0]


@pytest.mark.parametrize(
    ("vis", "ir", "message"),
    [
        (np.zeros((32, 32)), np.zeros((32, 40)), "same shape"),
        (np.zeros((32, 32, 3)), np.zeros((32, 32)), "2-D"),
        (np.zeros((32, 32)), np.full((32, 32), 255.0), r"\[0, 1\]"),
        (np.zeros((8, 32)), np.zeros((8, 32)), ">= 16"),
    ],
)
def test_bad_pairs_raise_a_clear_value_error(vis: np.ndarray, ir: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EccGradient().register(vis, ir)


def test_make_method_builds_each_baseline_and_lists_valid_names_on_error() -> None:
    for name in ("identity", "sift", "ecc", "mi", "ngf-mind"):
        method = make_method(name)
        assert isinstance(method, RegistrationMethod) and method.name == name
    with pytest.raises(ValueError, match=r"'bogus'.*identity, sift, ecc, mi, ngf-mind"):
        make_method("bogus")


def test_mi_refuses_seed_zero_which_simpleitk_reads_as_wall_clock() -> None:
    with pytest.raises(ValueError, match="seed"):
        MattesMIAffine(seed=0)


def test_mi_is_repeatable_and_restores_itks_thread_count(shifted_pair) -> None:
    vis, ir, _, _ = shifted_pair
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    first, second = MattesMIAffine().register(vis, ir), MattesMIAffine().register(vis, ir)
    assert first is not None and second is not None
    np.testing.assert_array_equal(first, second)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == threads


def test_ecc_refuses_a_schedule_that_does_not_end_affine() -> None:
    with pytest.raises(ValueError, match="MOTION_AFFINE"):
        EccGradient(motions=(cv2.MOTION_AFFINE, cv2.MOTION_EUCLIDEAN))
