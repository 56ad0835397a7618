"""busref.keypoints: the SIFT + RANSAC affine shared by the ``sift`` baseline, the learned method's
keypoint start and the daemon's."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from busref.keypoints import keypoint_affine


def scene(shape: tuple[int, int] = (240, 320), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2.0)
    return (image - image.min()) / np.ptp(image)


def corners_error(found: np.ndarray, truth: np.ndarray, shape: tuple[int, int]) -> float:
    h, w = shape
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T
    return float(np.abs(found @ corners - truth @ corners).max())


@pytest.mark.parametrize("degrees", [0.0, 25.0, -40.0])
def test_it_finds_a_rotation_scale_and_shift_far_beyond_a_network_s_range(degrees: float) -> None:
    reference = scene()
    truth = cv2.getRotationMatrix2D((150.0, 110.0), degrees, 1.08)  # reference pixel -> moving pixel
    truth[:, 2] += (12.0, -7.0)
    moving = cv2.warpAffine(reference, truth, (320, 240))  # moving(truth p) = reference(p)
    found = keypoint_affine(reference, moving)
    assert found is not None and found.inliers >= 12 and found.matches >= found.inliers
    assert corners_error(found.matrix, truth, reference.shape) < 0.5


def test_images_of_different_sizes_and_8_bit_input() -> None:
    """An IR frame at another resolution: the affine maps visible pixels to IR pixels; the visible
    image is shrunk to ``max_side``, the IR is not, and each keeps its pixel-centre convention."""
    reference = scene((480, 640))
    truth = np.array([[0.5, 0.0, -0.25], [0.0, 0.5, -0.25]])  # a half-size IR of the same view
    moving = cv2.resize(reference, (320, 240), interpolation=cv2.INTER_AREA)
    found = keypoint_affine((reference * 255).astype(np.uint8), (moving * 255).astype(np.uint8), max_side=320)
    assert found is not None
    assert corners_error(found.matrix, truth, reference.shape) < 0.5


def test_no_answer_without_shared_structure() -> None:
    assert keypoint_affine(np.zeros((120, 160), np.float32), scene((120, 160))) is None  # a lens cap
    assert keypoint_affine(scene(seed=1), scene(seed=2)) is None  # two unrelated scenes


@pytest.mark.parametrize(("reference", "kwargs", "match"), [
    (np.zeros((8, 8), np.float32), {}, "reference must be a 2-D gray image of at least 16x16"),
    (np.zeros((32, 32, 3), np.uint8), {}, r"reference must be a 2-D gray image.*\(32, 32, 3\)"),
    (np.full((32, 32), np.nan, np.float32), {}, "reference must be uint8 or finite float"),
    (np.zeros((32, 32), np.float32), {"ratio": 1.5}, "0 < ratio < 1"),
    (np.zeros((32, 32), np.float32), {"min_inliers": 2}, "min_inliers >= 3"),
])
def test_bad_input_is_refused_with_a_message_naming_it(reference: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        keypoint_affine(reference, np.zeros((32, 32), np.float32), **kwargs)
