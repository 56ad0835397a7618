from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from busref.models.geometry import (
    affine_to_grid,
    compose,
    identity_grid,
    invert_affine,
    invert_field,
    normalised_to_pixel,
    pixel_affine_to_theta,
    pixel_to_normalised,
    reconstructible_mask,
    theta_to_pixel_affine,
    warp,
    warp_features,
)


def test_identity_grid_convention():
    g = identity_grid(3, 4)
    assert g.shape == (1, 3, 4, 2)
    assert g[0, 2, 1].tolist() == [1.0, 2.0]  # G[y, x] = (x, y)


def test_warp_by_identity_returns_the_image():
    image = torch.rand(2, 1, 9, 13, dtype=torch.float64)
    assert torch.allclose(warp(image, identity_grid(9, 13, batch=2, dtype=torch.float64)), image)


def test_warp_shift_moves_content_and_pads_with_zeros():
    image = torch.arange(20, dtype=torch.float64).view(1, 1, 4, 5)
    grid = identity_grid(4, 5, dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = warp(image, grid)
    assert torch.equal(out[0, 0, :, :4], image[0, 0, :, 1:])
    assert torch.equal(out[0, 0, :, 4], torch.zeros(4, dtype=torch.float64))


def test_pixel_normalised_round_trip_and_corners():
    g = identity_grid(5, 7, dtype=torch.float64)
    n = pixel_to_normalised(g, 5, 7)
    assert n[0, 0, 0].tolist() == [-1.0, -1.0] and n[0, -1, -1].tolist() == [1.0, 1.0]
    assert torch.allclose(normalised_to_pixel(n, 5, 7), g)


def test_theta_pixel_affine_matches_affine_grid():
    theta = torch.tensor([[[0.9, 0.1, 0.05], [-0.08, 1.1, -0.02]]], dtype=torch.float64)
    size = (6, 9)
    expected = normalised_to_pixel(F.affine_grid(theta, (1, 1, *size), align_corners=True), *size)
    pixel = theta_to_pixel_affine(theta, size, size)
    assert torch.allclose(affine_to_grid(pixel, *size), expected, atol=1e-12)
    assert torch.allclose(pixel_affine_to_theta(pixel, size, size), theta, atol=1e-12)


def test_invert_field_of_pure_affine_is_the_inverse_affine():
    a = torch.tensor([[[1.02, 0.05, 3.0], [-0.04, 0.97, -2.0]]], dtype=torch.float64)
    zero = torch.zeros(1, 2, 10, 12, dtype=torch.float64)
    inv = invert_field(a, zero, 10, 12)
    assert torch.allclose(inv, affine_to_grid(invert_affine(a), 10, 12), atol=1e-9)


def test_inverse_composition_is_identity_inside_the_mask():
    from busref.models.geometry import apply_affine, displacement_grid
    from busref.models.misalignment import LEVELS, deformation_from_draws

    lv = LEVELS["hard"]
    u = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, size=(1, 56)))
    amp = torch.tensor([[lv.rot_deg, lv.scale, lv.shear, lv.trans, lv.elastic]], dtype=torch.float64)
    affine, phi = deformation_from_draws(u, amp, 48, 64)
    forward = displacement_grid(affine, phi)
    inverse = invert_field(affine, phi, 48, 64)
    mask = reconstructible_mask(forward, inverse, (48, 64))[0, 0]
    assert 0.5 < mask.double().mean() < 1.0
    # T(T^-1(q)) = A(p + phi(p)) at p = T^-1(q), phi sampled there: exact to the fixed point's tolerance.
    p = inverse
    round_trip = apply_affine(affine, p + warp(phi, p, padding_mode="border").permute(0, 2, 3, 1))
    err = (round_trip - identity_grid(48, 64, dtype=torch.float64))[0].norm(dim=-1)
    assert err[mask].max() < 1e-6


def test_compose_of_opposite_shifts_is_identity_in_the_interior():
    ident = identity_grid(6, 8, dtype=torch.float64)
    shift = torch.tensor([2.0, 1.0], dtype=torch.float64)
    composed = compose(ident + shift, ident - shift)
    assert torch.allclose(composed[0, 1:, 2:], ident[0, 1:, 2:])


def test_reconstructible_mask_identity_is_full_and_shift_cuts_the_edge():
    h, w = 8, 10
    ident = identity_grid(h, w, dtype=torch.float64)
    assert reconstructible_mask(ident, ident, (h, w)).all()
    shift = torch.tensor([3.0, 0.0], dtype=torch.float64)
    mask = reconstructible_mask(ident + shift, ident - shift, (h, w))[0, 0]
    # Content of the moving image's last 3 columns does not exist: reference columns 0..2 are lost.
    assert not mask[:, :3].any() and mask[:, 3:].all()


def test_warp_rejects_bad_shapes():
    with pytest.raises(ValueError, match="grid must be"):
        warp(torch.rand(1, 1, 4, 4), torch.rand(1, 4, 4))


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("size", [(9, 11), (2, 3), (1, 5)])  # the border path clamps corners to Hs-2, Ws-2
def test_the_gather_feature_warp_equals_grid_sample_with_its_gradients(padding_mode: str, size: tuple[int, int]
                                                                        ) -> None:
    image = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(2, 7, 8, 2, dtype=torch.float64) * 2.6 - 1.3).requires_grad_()  # past every edge

    def both(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return warp_features(image, g, padding_mode), F.grid_sample(image, g, mode="bilinear",
                                                                    padding_mode=padding_mode, align_corners=True)

    ours, theirs = both(grid)
    assert torch.allclose(ours, theirs, atol=1e-12)
    weights = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), (image, grid)),
                    torch.autograd.grad((theirs * weights).sum(), (image, grid)), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    # Exact pixel centres and corners, where a floor is easy to get wrong (values only: at the
    # border itself the two pick different subgradients).
    exact = grid.detach().clone()
    exact[:, 0, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.2, -0.5], [1.0, -1.0]], dtype=torch.float64)
    assert torch.allclose(*both(exact), atol=1e-12)


def test_the_gather_feature_warp_refuses_reflection_padding() -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        warp_features(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 2, 2), "reflection")
