from __future__ import annotations

import torch

from models import losses


def test_mncc_of_image_with_itself_and_its_negative():
    x = torch.rand(2, 1, 16, 16)
    mask = torch.ones_like(x, dtype=torch.bool)
    assert torch.allclose(losses.masked_ncc(x, x, mask), torch.ones(2), atol=1e-5)
    assert torch.allclose(losses.masked_ncc(x, -x, mask), -torch.ones(2), atol=1e-5)
    assert torch.isclose(losses.mncc_loss(x, x, mask), torch.tensor(-1.0), atol=1e-5)


def test_mncc_ignores_pixels_outside_the_mask():
    x = torch.rand(1, 1, 8, 8)
    y = x.clone()
    y[..., :2] = torch.rand(1, 1, 8, 2)  # corrupt a region the mask excludes
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., :2] = False
    assert torch.isclose(losses.masked_ncc(x, y, mask)[0], torch.tensor(1.0), atol=1e-5)


def test_ssim_identity_and_reconstruction_loss_zero():
    x = torch.rand(1, 1, 24, 24)
    assert torch.isclose(losses.ssim(x, x)[0], torch.tensor(1.0), atol=1e-5)
    assert losses.reconstruction_loss(x, x) < 1e-4


def test_enhanced_gradient_target_picks_larger_and_enhances():
    vis = torch.zeros(1, 1, 5, 5)
    vis[0, 0, 2, 2] = 0.04
    ir = torch.zeros(1, 1, 5, 5)
    t = losses.enhanced_gradient_target(vis, ir, gamma=0.7)
    lap = losses.laplacian(vis)[0, 0, 2, 2]
    assert torch.isclose(t[0, 0, 2, 2], -(lap.abs() ** 0.7), atol=1e-6)
    assert t[0, 0, 2, 2].abs() > lap.abs()  # |g|^0.7 > |g| for |g| < 1


def test_smoothness_and_endpoint():
    assert losses.smoothness_loss(torch.ones(1, 2, 6, 6)) == 0
    truth = torch.zeros(1, 4, 5, 2)
    shifted = truth + torch.tensor([2.0 / 4 * 3, 2.0 / 3 * 4])  # (3, 4) px in a 4x5 image
    mask = torch.ones(1, 1, 4, 5, dtype=torch.bool)
    assert torch.isclose(losses.endpoint_loss(shifted, truth, mask, (4, 5)), torch.tensor(5.0), atol=1e-3)
