from __future__ import annotations

import numpy as np
import pytest
import torch

from busref.models import losses
from busref.models.metrics.fusion import chen_varshney


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


def test_sobel_magnitude_of_a_ramp():
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6) / 10  # slope 0.1 per pixel along x
    mag = losses.sobel_magnitude(x)
    assert torch.allclose(mag[..., 1:-1, 1:-1], torch.full((4, 4), 0.8), atol=1e-3)  # Sobel gain 8


def test_max_gradient_loss_is_zero_for_the_stronger_source_only():
    vis = torch.rand(2, 1, 16, 16)
    flat = torch.full_like(vis, 0.5)
    assert losses.max_gradient_loss(vis, vis, flat) < 1e-3
    assert losses.max_gradient_loss(flat, vis, flat) > 0.1


def test_histogram_loss_matches_the_mixture_not_the_pixels():
    vis = torch.rand(2, 1, 8, 8)
    assert losses.histogram_loss(vis, vis, vis) < 1e-6
    # A permutation of the pixels has the same histogram: the loss only sees grey-level distributions.
    assert losses.histogram_loss(vis.flip(-1), vis, vis) < 1e-6
    # Sources that repeat each of their values twice: the mixture's quantiles are then exactly the
    # values of one copy of each, so a fused image made of those copies scores 0.
    half_v, half_r = torch.rand(2, 1, 4, 8), torch.rand(2, 1, 4, 8)
    fused = torch.cat((half_v, half_r), dim=2)
    assert losses.histogram_loss(fused, half_v.repeat(1, 1, 2, 1), half_r.repeat(1, 1, 2, 1)) < 1e-6
    assert losses.histogram_loss(vis, vis, torch.zeros_like(vis)) > 0.1


def test_saliency_fidelity_loss_follows_the_locally_salient_source():
    # Left half: textured visible, flat IR; right half the reverse. The ideal fused image copies
    # the textured source on each side; copying the flat one there loses its detail.
    torch.manual_seed(0)
    texture, flat = torch.rand(1, 1, 48, 48), torch.full((1, 1, 48, 48), 0.5)
    left = torch.zeros(1, 1, 48, 48, dtype=torch.bool)
    left[..., :24] = True
    vis, ir = torch.where(left, texture, flat), torch.where(left, flat, texture)
    inner = (slice(None), slice(None), slice(None), slice(2, 14))  # away from the seam and border
    best = losses.saliency_fidelity_loss(texture, vis, ir)
    worst = losses.saliency_fidelity_loss(flat, vis, ir)
    assert losses.saliency_fidelity_loss(vis[inner], vis[inner], flat[inner]) < 1e-6
    assert best < 0.2 * worst
    # A brightness offset is left to the histogram term: it costs (almost) nothing.
    assert losses.saliency_fidelity_loss(texture + 0.2, vis, ir) < best + 1e-4


def test_perceptual_distortion_loss_is_the_chen_varshney_metric_inside_the_frame():
    """On whole images whose Sobel responses the padding does not change (a flat frame), the loss
    is the metric Q_cv / 255^2; and it prefers the source that is salient where it is."""
    rng = np.random.default_rng(0)
    images = [np.pad(rng.integers(0, 256, (44, 60)).astype(np.float64), 2, constant_values=0.0) for _ in range(3)]
    for image in images:
        image[10, 10] = 255.0  # every min-max stretch maps 0..255 onto itself
    metric = chen_varshney(*images)
    loss = losses.perceptual_distortion_loss(*(torch.from_numpy(i / 255.0)[None, None] for i in images))
    assert metric == pytest.approx(float(loss) * 255**2, rel=1e-5)  # the stretch and Sobel epsilons
    texture, flat = torch.rand(1, 1, 48, 48), torch.full((1, 1, 48, 48), 0.5)
    textured_vis = losses.perceptual_distortion_loss(texture, texture, flat)
    assert textured_vis < 1e-9 < losses.perceptual_distortion_loss(flat, texture, flat)


def test_fusion_loss_adds_the_optional_terms_only_when_weighted():
    vis, ir, fused = torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24)
    plain, logs = losses.fusion_loss(fused, vis, ir)
    assert set(logs) == {"wsim", "grad"}
    extra, logs = losses.fusion_loss(fused, vis, ir, max_grad_weight=2.0, histogram_weight=3.0, saliency_weight=4.0)
    expected = (plain + 2.0 * losses.max_gradient_loss(fused, vis, ir) + 3.0 * losses.histogram_loss(fused, vis, ir)
                + 4.0 * losses.saliency_fidelity_loss(fused, vis, ir))
    assert torch.isclose(extra, expected, atol=1e-6)
    assert set(logs) == {"wsim", "grad", "max_grad", "hist", "salfid"}


def test_match_loss_reads_the_truth_at_each_levels_points_inside_the_mask():
    from busref.models.networks.busref import normalised_base
    from busref.models.networks.layers import Match

    h, w = 9, 11
    truth = normalised_base(torch.zeros(1, 1, h, w)) * 0.9  # a scaling about the centre
    mask = torch.ones(1, 1, h, w)
    coarse = normalised_base(torch.zeros(1, 1, 3, 4)).flatten(1, 2)  # a 3x4 level's points
    right = Match(coarse, coarse * 0.9)  # zero error reads as sqrt(1e-6) px: endpoint_loss keeps the root smooth
    assert losses.match_loss([right], truth, mask, (h, w)) < 2e-3
    one_px = torch.tensor([2.0 / (w - 1), 0.0])  # 1 px to the right at (h, w)
    shifted = Match(coarse, coarse * 0.9 + one_px)
    assert torch.isclose(losses.match_loss([right, shifted], truth, mask, (h, w)), torch.tensor(0.5), atol=1e-3)
    mask[..., : w // 2 + 1] = 0  # the left half and centre column: only points right of it count
    off = coarse.clone()
    off[..., 0] = torch.where(coarse[..., 0] < 0.1, coarse[..., 0] * 0.9 + 5 * one_px[0], coarse[..., 0] * 0.9)
    off[..., 1] *= 0.9
    assert losses.match_loss([Match(coarse, off)], truth, mask, (h, w)) < 2e-3
