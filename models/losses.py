"""Training losses of BusReF (paper eqs. 4-13, read as in method-notes.md) as pure functions.

All images are (B, 1, H, W) float in [0, 1]; masks are (B, 1, H, W) bool or {0, 1} float.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from busref.models.networks.layers import Match

Tensor = torch.Tensor


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float, dtype: torch.dtype, device: str) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype).to(device)


def _gaussian_filter(x: Tensor, size: int, sigma: float) -> Tensor:
    """Gaussian filter of every channel of (B, C, H, W), 'valid' borders: (B, C, H - size + 1, W - size + 1).

    Separable (two 1-D passes): the same sums as the 2-D window, but the 11x11 SSIM window and the
    17x17 saliency blur cost 1/5 and 1/8 of the MACs; they made up 90 % of a fusion training step.
    """
    g = _gaussian_1d(size, sigma, x.dtype, str(x.device))
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)


def ssim(x: Tensor, y: Tensor, *, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Mean SSIM (Wang et al. 2004), Gaussian window 11/1.5, 'valid' borders; per sample (B,)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my, xx, yy, xy = _gaussian_filter(torch.cat((x, y, x * x, y * y, x * y), dim=1), window, sigma).unbind(1)
    sxx, syy, sxy = xx - mx * mx, yy - my * my, xy - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(x: Tensor) -> Tensor:
    """4-neighbour Laplacian, replicate padding: (B, C, H, W) -> same shape."""
    k = LAPLACIAN.to(x).view(1, 1, 3, 3).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


def reconstruction_loss(image: Tensor, recon: Tensor, lam: float = 1.0) -> Tensor:
    """Eq. 4: ``||I - I_re||_2 + lambda (1 - SSIM)``; the norm is the root mean square (so the
    two terms have similar magnitude whatever the image size)."""
    rmse = torch.sqrt(((image - recon) ** 2).flatten(1).mean(1) + 1e-12)
    return (rmse + lam * (1 - ssim(image, recon))).mean()


def enhanced_gradient_target(vis: Tensor, ir: Tensor, gamma: float = 0.7) -> Tensor:
    """Eq. 7: per pixel, the Laplacian of the source with the larger |Laplacian|, enhanced as
    ``g |g|^gamma / |g| = sign(g) |g|^gamma`` (the ``I_x, I_y`` of eq. 7 mean ``I_v, I_r``)."""
    gv, gr = laplacian(vis), laplacian(ir)
    g = torch.where(gv.abs() > gr.abs(), gv, gr)
    return torch.sign(g) * (g.abs() + 1e-12) ** gamma


SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude ``sqrt(Sx^2 + Sy^2)`` (the kernel of the EI metric), replicate
    padding: (B, 1, H, W) -> same shape; the small epsilon keeps the gradient finite at 0."""
    k = torch.stack((SOBEL_X, SOBEL_X.T)).to(x).view(2, 1, 3, 3)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)
    return torch.sqrt((g**2).sum(1, keepdim=True) + 1e-8)


def max_gradient_loss(fused: Tensor, vis: Tensor, ir: Tensor) -> Tensor:
    """Mean ``| |grad F| - max(|grad V|, |grad R|) |`` on Sobel magnitudes: every edge of either
    source at its full strength (the texture loss of SeAFusion, Tang et al. 2022)."""
    target = torch.maximum(sobel_magnitude(vis), sobel_magnitude(ir))
    return (sobel_magnitude(fused) - target).abs().mean()


def histogram_loss(fused: Tensor, vis: Tensor, ir: Tensor) -> Tensor:
    """1-D Wasserstein distance between each fused image's grey values and the equal mixture of
    both sources' (mean gap of sorted values), averaged over the batch.

    The mixture is the histogram that minimises the summed cross entropy (CE metric) of the two
    sources relative to the fused one; sorting both sides makes it differentiable. The 2N sorted
    source values are averaged in consecutive pairs to give the mixture's N quantiles.
    """
    b = fused.shape[0]
    f = fused.reshape(b, -1).sort(dim=1).values
    mixture = torch.cat((vis.reshape(b, -1), ir.reshape(b, -1)), dim=1).sort(dim=1).values
    return (f - mixture.view(b, -1, 2).mean(-1)).abs().mean()


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of a (B, 1, H, W) image, kernel side ``4 sigma + 1``, replicate padding."""
    half = int(2 * sigma)
    return _gaussian_filter(F.pad(x, (half, half, half, half), mode="replicate"), 2 * half + 1, sigma)


def saliency_fidelity_loss(fused: Tensor, vis: Tensor, ir: Tensor, *, window: float = 4.0,
                           eps: float = 1e-4) -> Tensor:
    """Mean ``w_V |d(F - V)| + w_R |d(F - R)|``: locally, follow the source whose edges dominate.

    A differentiable stand-in for the Chen-Varshney metric (Q_cv), which weighs each tile's
    distortion to a source by that source's edge energy. Here the saliency ``S`` of a source is
    its squared Sobel magnitude blurred with a Gaussian of std ``window`` (about a 16-pixel Q_cv
    tile), ``w_V = S_V / (S_V + S_R + eps)`` and likewise ``w_R``; the weights are constants (the
    sources have no gradient). ``d`` removes the difference's local mean (the same Gaussian):
    Q_cv's contrast-sensitivity filter all but ignores slow brightness offsets, so they are left
    to the histogram term instead of fighting it.
    """
    s_v, s_r = _blur(sobel_magnitude(vis) ** 2, window), _blur(sobel_magnitude(ir) ** 2, window)
    total = s_v + s_r + eps
    loss = fused.new_zeros(())
    for source, saliency in ((vis, s_v), (ir, s_r)):
        diff = fused - source
        loss = loss + (saliency / total * (diff - _blur(diff, window)).abs()).mean()
    return loss


def _mannos_sakrison_csf(shape: tuple[int, int], frame: tuple[int, int], dtype: torch.dtype,
                         device: torch.device) -> Tensor:
    """Mannos-Sakrison CSF on the ``rfft2`` grid of an image of ``shape`` (H, W), radial frequency in
    (cycles per ``frame``) / 4 as in ``models.metrics.fusion.chen_varshney`` (which has ``frame =
    shape``): a crop is filtered as part of a frame of that size. Returns (H, W // 2 + 1)."""
    ky = torch.fft.fftfreq(shape[0], dtype=torch.float64) * frame[0] / 4.0
    kx = torch.fft.rfftfreq(shape[1], dtype=torch.float64) * frame[1] / 4.0
    radius = torch.hypot(ky[:, None], kx[None, :])
    csf = 2.6 * (0.0192 + 0.144 * radius) * torch.exp(-((0.144 * radius) ** 1.1))
    return csf.to(dtype=dtype, device=device)


def _min_max(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Each image of (B, 1, H, W) stretched to [0, 1] by its own minimum and maximum."""
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    return (x - low) / (high - low + eps)


def perceptual_distortion_loss(fused: Tensor, vis: Tensor, ir: Tensor, *, frame: tuple[int, int] | None = None,
                               window: int = 16, alpha: float = 5.0) -> Tensor:
    """The Chen-Varshney distortion (the Q_cv metric) as a differentiable loss, mean over the batch.

    As ``models.metrics.fusion.chen_varshney`` on the [0, 1] scale (the metric's value / 255^2): each
    image min-max stretched; per ``window`` tile the saliency of a source is the sum of its Sobel
    magnitudes to the power ``alpha`` (constants: the sources have no gradient) and its distortion the
    tile mean of the square of ``S - F`` filtered by the contrast-sensitivity function; the loss is
    the saliency-weighted mean distortion. It weighs the middle frequencies (periods of about 1/30 of
    the frame) where one source's edges dominate, which the local high-pass of
    :func:`saliency_fidelity_loss` leaves out. ``frame`` (H, W): the size of the whole image a crop
    stands for (default: the input's). Deviation: replicate instead of zero padding for the Sobel
    filter, so that crop borders are not edges. H and W must be multiples of ``window``.
    """
    shape = tuple(fused.shape[-2:])
    csf = _mannos_sakrison_csf(shape, frame or shape, fused.dtype, fused.device)
    f = _min_max(fused)
    num = den = fused.new_zeros(fused.shape[0])
    for source in (vis, ir):
        s = _min_max(source)
        saliency = F.avg_pool2d(sobel_magnitude(s).detach() ** alpha, window)
        filtered = torch.fft.irfft2(torch.fft.rfft2(s - f) * csf, s=shape)
        distortion = F.avg_pool2d(filtered * filtered, window)
        num = num + (saliency * distortion).sum(dim=(1, 2, 3))
        den = den + saliency.sum(dim=(1, 2, 3))
    return (num / den.clamp_min(1e-12)).mean()


#: The frame (H, W) a training crop stands for in :func:`perceptual_distortion_loss`: about the
#: size of the training images (RoadScene about 330x500, the NIR scenes about 460x700).
CROP_FRAME = (384, 512)


def fusion_loss(fused: Tensor, vis: Tensor, ir: Tensor, *, sigma: float = 1.0, grad_weight: float = 10.0,
                gamma: float = 0.7, max_grad_weight: float = 0.0, histogram_weight: float = 0.0,
                saliency_weight: float = 0.0, distortion_weight: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """Eq. 8: ``sigma L_wsim + L_grad`` with eq. 5 and eq. 6 (mean squared Laplacian error), plus
    :func:`max_gradient_loss`, :func:`histogram_loss`, :func:`saliency_fidelity_loss` and
    :func:`perceptual_distortion_loss` (crops as parts of a :data:`CROP_FRAME`) with their weights
    (terms of weight 0 are skipped)."""
    wsim = (1 - (ssim(fused, vis) + ssim(fused, ir)) / 2).mean()
    grad = ((laplacian(fused) - enhanced_gradient_target(vis, ir, gamma)) ** 2).mean()
    total = sigma * wsim + grad_weight * grad
    logs = {"wsim": wsim, "grad": grad}
    for name, weight, term in (("max_grad", max_grad_weight, max_gradient_loss),
                               ("hist", histogram_weight, histogram_loss),
                               ("salfid", saliency_weight, saliency_fidelity_loss),
                               ("qcv", distortion_weight,
                                functools.partial(perceptual_distortion_loss, frame=CROP_FRAME))):
        if weight:
            logs[name] = term(fused, vis, ir)
            total = total + weight * logs[name]
    return total, {k: float(v.detach()) for k, v in logs.items()}


def masked_ncc(x: Tensor, y: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. 11: NCC of ``x`` and ``y`` over the pixels where ``mask`` is set, per sample (B,)."""
    m = mask.to(x.dtype).flatten(1)
    n = m.sum(1).clamp_min(1.0)
    xf, yf = x.flatten(1), y.flatten(1)
    mx = (xf * m).sum(1) / n
    my = (yf * m).sum(1) / n
    dx, dy = (xf - mx[:, None]) * m, (yf - my[:, None]) * m
    return (dx * dy).sum(1) / (torch.sqrt((dx * dx).sum(1) * (dy * dy).sum(1)) + eps)


def mncc_loss(registered: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Eq. 10: ``-MNCC`` averaged over the batch."""
    return -masked_ncc(registered, target, mask).mean()


def masked_gradient_loss(fused_registered: Tensor, fused_true: Tensor, mask: Tensor) -> Tensor:
    """Eq. 12: ``||(lap F(I_x, I_y^rf) - lap F(I_x, I_y)) * M||_2`` as a masked mean square."""
    m = mask.to(fused_registered.dtype)
    diff = (laplacian(fused_registered) - laplacian(fused_true)) * m
    return (diff**2).sum() / m.sum().clamp_min(1.0)


def smoothness_loss(displacement: Tensor) -> Tensor:
    """Mean squared finite difference of a field (B, 2, H, W) (diffusion regulariser)."""
    dx = displacement[:, :, :, 1:] - displacement[:, :, :, :-1]
    dy = displacement[:, :, 1:, :] - displacement[:, :, :-1, :]
    return (dx**2).mean() + (dy**2).mean()


def endpoint_loss(grid: Tensor, truth: Tensor, mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Masked mean end-point error in pixels of an (H, W) image between normalised grids
    (B, H, W, 2); the synthetic misalignment gives the truth, so supervision is free."""
    h, w = size
    scale = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=grid.dtype, device=grid.device)
    err = torch.sqrt((((grid - truth) * scale) ** 2).sum(-1) + 1e-6)
    m = mask[:, 0].to(grid.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def match_loss(matches: Sequence[Match], truth: Tensor, mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Mean over matching levels of each level's masked end-point error (pixels of the (H, W)
    image): every cost volume gets its own geometric signal, not only through the final grid.

    ``truth`` (B, H, W, 2) normalised registration grid, ``mask`` (B, 1, H, W); both are read at
    each level's points bilinearly (align_corners=True). Without it the deformable cost volumes
    did not learn in 4700 CPU steps (their soft-argmax had cosine ~0 with the true residual).
    """
    field = truth.permute(0, 3, 1, 2)
    total = truth.new_zeros(())
    for m in matches:
        at = m.points[:, None]  # (B, 1, N, 2): a one-row grid
        target = F.grid_sample(field, at, mode="bilinear", padding_mode="border", align_corners=True)
        inside = F.grid_sample(mask.to(truth.dtype), at, mode="bilinear", padding_mode="zeros", align_corners=True)
        total = total + endpoint_loss(m.matched[:, None], target.permute(0, 2, 3, 1), inside > 0.5, size)
    return total / max(len(matches), 1)
