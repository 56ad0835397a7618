"""NGF instance optimisation (models/refinement.py): the similarity, the optimiser, its config."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from busref.models.geometry import identity_grid, normalised_to_pixel, pixel_to_normalised
from busref.models.local_structure import mind_descriptor
from busref.models.refinement import (
    DESCRIPTOR_REFINEMENT,
    RefinementConfig,
    descriptor_iterations,
    ngf_similarity,
    refine_grid,
)

H, W = 64, 80
FAST = RefinementConfig(scales=(2, 1), iterations=(60, 40))


def _texture(shift: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """(1, 1, H, W) smooth blobs in [0, 1] sampled at (x + dx, y + dy): ``_texture(s)(p - s) = _texture()(p)``,
    so the grid that registers ``_texture(s)`` onto ``_texture()`` is ``p -> p - s``."""
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    xs, ys = xs + shift[0], ys + shift[1]
    value = np.zeros_like(xs)
    for _ in range(30):
        cx, cy, sigma, amp = rng.uniform(-5, W + 5), rng.uniform(-5, H + 5), rng.uniform(2, 6), rng.uniform(-1, 1)
        value += amp * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    return torch.from_numpy(np.clip(0.5 + 0.3 * value, 0, 1)).float()[None, None]


def _epe(grid: torch.Tensor, shift: tuple[float, float]) -> float:
    """Mean pixel error of a normalised grid against the translation ``p -> p - shift`` (inner pixels)."""
    truth = identity_grid(H, W) - torch.tensor(shift)
    return float((normalised_to_pixel(grid, H, W) - truth)[:, 8:-8, 8:-8].norm(dim=-1).mean())


def test_ngf_scores_edges_of_either_polarity_and_ignores_flat_images() -> None:
    image = _texture()
    ones = torch.ones_like(image)
    same = ngf_similarity(image, image, ones, 0.01)
    assert 0.3 < float(same) < 1.0
    # A hot road is bright in IR and dark in visible: an inverted copy scores the same.
    assert torch.isclose(ngf_similarity(image, 1.0 - image, ones, 0.01), same)
    assert float(ngf_similarity(image, _texture((3.0, 0.0)), ones, 0.01)) < 0.8 * float(same)
    assert float(ngf_similarity(image, torch.full_like(image, 0.5), ones, 0.01)) == 0.0


def test_mind_describes_structure_not_contrast() -> None:
    image = _texture()
    descriptor = mind_descriptor(image)
    assert descriptor.shape == (1, 4, H, W)
    assert float(descriptor.min()) > 0 and torch.allclose(descriptor.amax(dim=1), torch.ones(1, H, W))
    # An inverted copy (IR against visible) has the same descriptor, a rescaled one nearly (only
    # the variance floor of flat areas sees the scale); a shifted one does not.
    assert torch.allclose(mind_descriptor(1.0 - image), descriptor, atol=1e-4)
    assert float((mind_descriptor(0.9 - 0.5 * image) - descriptor).abs().mean()) < 0.01
    assert float((mind_descriptor(_texture((3.0, 0.0))) - descriptor).abs().mean()) > 0.05
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        mind_descriptor(image.expand(1, 2, H, W))


def test_mind_with_diagonal_neighbours_has_eight_channels_and_the_same_invariances() -> None:
    image = _texture()
    descriptor = mind_descriptor(image, 1, diagonal=1)
    assert descriptor.shape == (1, 8, H, W)
    assert torch.allclose(descriptor.amax(dim=1), torch.ones(1, H, W))
    assert torch.allclose(mind_descriptor(1.0 - image, 1, diagonal=1), descriptor, atol=1e-4)
    assert float((mind_descriptor(_texture((3.0, 0.0)), 1, diagonal=1) - descriptor).abs().mean()) > 0.05
    with pytest.raises(ValueError, match=r"diagonal must be within 0\.\.radius"):
        mind_descriptor(image, 1, diagonal=2)
    with pytest.raises(ValueError, match="patch odd"):
        mind_descriptor(image, 2, patch=2)


def test_ngf_rejects_mismatched_shapes() -> None:
    image = _texture()
    with pytest.raises(ValueError, match="one shape"):
        ngf_similarity(image, image[..., :-1], torch.ones_like(image), 0.01)


def test_refinement_recovers_a_shift_across_inverted_contrast() -> None:
    shift = (2.5, -1.5)
    vis, ir = _texture(), 1.0 - _texture(shift)  # ir(p - shift) = 1 - vis(p)
    start = pixel_to_normalised(identity_grid(H, W), H, W)
    assert _epe(start, shift) > 2.5
    refined = refine_grid(vis, ir, start, FAST)
    assert refined.shape == start.shape and not refined.requires_grad
    assert _epe(refined, shift) < 0.5


def test_refinement_keeps_a_correct_grid_and_takes_a_moving_image_of_another_size() -> None:
    shift = (2.0, 1.0)
    vis = _texture()
    ir = torch.nn.functional.interpolate(_texture(shift), size=(2 * H, 2 * W), mode="bilinear",
                                         align_corners=True)
    truth = pixel_to_normalised(identity_grid(H, W) - torch.tensor(shift), H, W)
    assert _epe(refine_grid(vis, ir, truth, FAST), shift) < 0.3


def test_refinement_guards_its_inputs() -> None:
    vis = _texture()
    start = pixel_to_normalised(identity_grid(H, W), H, W)
    with pytest.raises(ValueError, match=r"\(1, 1, H, W\)"):
        refine_grid(vis[0], vis, start)
    with pytest.raises(ValueError, match="grid must be"):
        refine_grid(vis, vis, start[:, :-1])


@pytest.mark.parametrize(("fields", "message"), [
    ({"scales": (4, 1), "iterations": (10,)}, "same, non-zero length"),
    ({"scales": (0,), "iterations": (10,)}, "scales must be >= 1"),
    ({"control": (1, 8)}, "at least 2x2"),
    ({"edge_noise": 0.0}, "greater than 0"),
    ({"mind_weight": -1.0}, "greater than or equal to 0"),
    ({"descriptor_guard": 0.9}, "greater than or equal to 1"),
    ({"step": 1}, "Extra inputs are not permitted"),
])
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        RefinementConfig(**fields)


def test_descriptor_iterations_recover_a_shift_and_the_guard_keeps_a_start_they_would_spoil() -> None:
    shift = (2.0, -1.0)
    vis, ir = _texture(), _texture(shift)
    start = pixel_to_normalised(identity_grid(H, W), H, W)
    config = RefinementConfig(descriptor_iterations=16)
    # Features that agree where the images do (the images' own MIND) lead to the truth.
    result = descriptor_iterations(vis, ir, start, (mind_descriptor(vis), mind_descriptor(ir)), config)
    assert _epe(result, shift) < 0.5 < 2.0 < _epe(start, shift)
    # Features that claim the opposite shift pull away from it; the MIND residual rises and the guard
    # hands the start back unchanged.
    wrong = (mind_descriptor(vis), mind_descriptor(_texture((-shift[0], -shift[1]))))
    assert torch.equal(descriptor_iterations(vis, ir, start, wrong, config), start)


def test_the_default_refinement_reads_no_descriptor() -> None:
    # A descriptor is an opt-in (busref eval / register --descriptor): the one trained on RoadScene
    # matched its JPEG block grid, so by default the refinement is NGF + MIND only.
    assert not RefinementConfig().uses_descriptor
    assert DESCRIPTOR_REFINEMENT.uses_descriptor and DESCRIPTOR_REFINEMENT.descriptor_iterations > 0
