"""Photometric augmentation of registration inputs: the appearance changes a new camera brings.

Why: the registration nets trained on one thermal camera pair scored 9.1 px on another thermal
rig and 15.5 px on NIR pairs (moderate level): they learn that camera's tone curve and polarity.
Drawing a different tone curve, contrast, blur, noise and (for IR) polarity per sample makes the
matching depend on structure, which is what two cameras of one scene share.

Only the *network inputs* are augmented; the losses compare the clean images, so what the
networks are asked to produce is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

Tensor = torch.Tensor


class PhotometricConfig(BaseModel):
    """Ranges of :func:`photometric_jitter`; ``probability`` 0 turns it off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probability: float = Field(0.0, ge=0, le=1, description="share of samples augmented (0: none)")
    max_log_gamma: float = Field(0.5, ge=0, description="tone curve x ** exp(U(-g, g))")
    contrast: tuple[float, float] = Field((0.6, 1.4), description="contrast factor range about the image mean")
    max_blur_sigma: float = Field(1.0, ge=0, description="Gaussian blur sigma U(0, s), pixels")
    max_noise: float = Field(0.02, ge=0, description="Gaussian noise std U(0, n), intensity units")
    invert: float = Field(0.2, ge=0, le=1, description="chance of inverting the polarity (1 - x)")


def _gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Per-sample separable Gaussian blur: ``images`` (B, 1, H, W), ``sigma`` (B,) pixels (0: unchanged)."""
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    s = sigma.clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, 2r+1); sigma ~0 gives a delta
    b = images.shape[0]
    x = images.transpose(0, 1)  # (1, B, H, W): one group per sample
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=b)
    return x.transpose(0, 1)


def photometric_jitter(images: Tensor, config: PhotometricConfig, *, allow_invert: bool,
                       generator: torch.Generator | None = None) -> Tensor:
    """A random tone curve, contrast, blur, noise and (if ``allow_invert``) polarity per sample.

    ``images`` ``(B, 1, H, W)`` float in [0, 1] -> same shape and dtype, clipped to [0, 1]. Draws
    come from ``generator`` on the CPU (reproducible runs), then move to the images' device.

    Example::

        >>> x = torch.rand(4, 1, 32, 32)
        >>> photometric_jitter(x, PhotometricConfig(probability=1.0), allow_invert=True).shape
        torch.Size([4, 1, 32, 32])
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
    if config.probability == 0:
        return images
    b = images.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return (low + (high - low) * torch.rand(b, generator=generator)).to(images.device, images.dtype)

    chosen = (torch.rand(b, generator=generator) < config.probability).to(images.device)
    out = images.clamp(0, 1) ** torch.exp(uniform(-config.max_log_gamma, config.max_log_gamma))[:, None, None, None]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * uniform(*config.contrast)[:, None, None, None] + mean
    out = _gaussian_blur(out, uniform(0, config.max_blur_sigma))
    noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype)
    out = out + noise * uniform(0, config.max_noise)[:, None, None, None]
    if allow_invert:
        flip = (uniform(0, 1) < config.invert)[:, None, None, None]
        out = torch.where(flip, 1 - out, out)
    out = out.clamp(0, 1)
    return torch.where(chosen[:, None, None, None], out, images)
