"""GAF: the gradient-aware fusion network, as learned blending of two Laplacian pyramids.

The paper's GAF (Figure 4) weighs the two modalities with attention from gradient (Laplacian)
and intensity features. Here that attention chooses, per pixel and per scale, between the
band-pass coefficients of the two sources: high frequencies are copied, never re-synthesised,
so they cannot be blurred away, and at initialisation the network is the classical max-abs
Laplacian-pyramid fusion (Burt & Adelson 1983), which training can only move from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.networks.layers import act, conv

#: 5-tap binomial low-pass (the kernel of OpenCV's pyrDown); its outer product is the 5x5 kernel.
BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def pyramid_down(x: torch.Tensor) -> torch.Tensor:
    """Binomial blur and 2x decimation, replicate borders: (N, 1, H, W) -> (N, 1, ceil(H/2), ceil(W/2)).

    One 5x5 convolution rather than two 1-D passes: ONNX Runtime ran it in 3.2 ms instead of 5.5
    on two 640x512 planes (one CPU thread).
    """
    k = torch.tensor(BINOMIAL, dtype=x.dtype, device=x.device) / 16.0
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), (k[:, None] * k[None, :]).view(1, 1, 5, 5), stride=2)


def pyramid_up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of ``x`` to the size of ``like`` (the finer level)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pyramids of (N, 1, H, W) images: ``(bands, lowpass)``, the ``levels`` band-pass images finest
    first then the low-pass base (``levels + 1`` tensors), and the Gaussian pyramid ``G_0 = x, ...
    G_levels``.

    Exactly invertible whatever the filters: each band is ``G_k - up(G_{k+1})``, so adding the
    bands back from the base reproduces ``x`` to rounding.
    """
    bands, lowpass = [], [x]
    for _ in range(levels):
        smaller = pyramid_down(x)
        bands.append(x - pyramid_up(smaller, x))
        lowpass.append(smaller)
        x = smaller
    bands.append(x)
    return bands, lowpass


#: Keeps the band contrast finite where both sources are flat (band values are ~1e-2 at edges).
EPS = 1e-4


class GAF(nn.Module):
    """Fuse visible luminance and registered IR: ``(B, 1, H, W) x 2 -> (B, 1, H, W)`` in [0, 1].

    Both images are decomposed into ``levels`` Laplacian bands and a low-pass base. Band ``k``
    of the result is ``g_k (w_k V_k + (1 - w_k) R_k)``, the base ``w_b V_b + (1 - w_b) R_b``;
    the pyramid is then collapsed and clipped to [0, 1]. ``g_k`` is one learned gain per band: a
    per-pixel gain map from the attention, tried first, stayed within 1.09-1.16 over a held-out
    frame at full resolution and cost two more full-resolution resizes. The band weight logits
    have two parts:

    * detail (each band at its own resolution, depthwise): ``a_k (E_V - E_R) / (E_V + E_R + eps)``
      with ``E = |band|`` filtered by a learned 3x3 kernel per band (initially the identity), a
      contrast that does not depend on the band's scale;
    * attention (at ``1/pool``): a small CNN on both sources' low-pass images and pooled band
      energies (the gradient sensing of the paper's GAF), with a context branch at ``1/(2 pool)``,
      gives a logit per band and the base's weight logit, resized to each level.

    The attention head starts at zero and ``a_k`` at 20: the initial network is (soft) max-abs
    selection on every band, the mean on the base and gain 1, i.e. the classical Laplacian-pyramid
    fusion. H and W must be multiples of ``pool``.
    """

    def __init__(self, width: int = 16, pool: int = 8, levels: int = 5) -> None:
        super().__init__()
        if pool & (pool - 1) or not 2 <= pool <= 2 ** (levels - 1):
            raise ValueError(f"pool must be a power of 2 in [2, 2 ** (levels - 1)], got {pool}")
        self.levels, self.pool = levels, pool
        self.scale = pool.bit_length() - 1  # the pyramid level at 1/pool
        inputs = 2 * (2 + self.scale)  # per modality: the low-pass image and one energy per band down to 1/pool
        self.attention = nn.Sequential(conv(inputs, width), act(), conv(width, width), act(),
                                       conv(width, width, groups=width), nn.Conv2d(width, width, 1), act())
        self.context = nn.Sequential(conv(width, width, stride=2), act(), conv(width, width), act())
        self.head = nn.Conv2d(2 * width, levels + 1, 1)  # a weight logit per band, then the base's
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        identity = torch.zeros(levels, 1, 3, 3)
        identity[:, :, 1, 1] = 1.0
        self.energy = nn.Parameter(identity)
        self.sharpness = nn.Parameter(torch.full((levels,), 20.0))
        self.log_gain = nn.Parameter(torch.zeros(levels))

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        if vis.shape != ir.shape or vis.dim() != 4 or vis.shape[1] != 1 or vis.shape[2] % self.pool \
                or vis.shape[3] % self.pool:
            raise ValueError(f"GAF expects two (B, 1, H, W) tensors, H and W multiples of {self.pool}, got "
                             f"{tuple(vis.shape)} and {tuple(ir.shape)}")
        # Each modality has its own pyramid: stacking them in one batch saved nothing and split
        # every full-resolution tensor again with copies (51 Slice nodes in the ONNX graph).
        bands_v, lowpass_v = laplacian_pyramid(vis, self.levels)
        bands_r, lowpass_r = laplacian_pyramid(ir, self.levels)
        magnitudes_v, magnitudes_r = [b.abs() for b in bands_v[:-1]], [b.abs() for b in bands_r[:-1]]
        hidden = self.attention(torch.cat((self._features(lowpass_v, magnitudes_v),
                                           self._features(lowpass_r, magnitudes_r)), dim=1))
        context = F.interpolate(self.context(hidden), size=hidden.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(torch.cat((hidden, context), dim=1))
        base_v, base_r = bands_v[-1], bands_r[-1]
        fused = base_r + torch.sigmoid(pyramid_up(logits[:, -1:], base_v)) * (base_v - base_r)
        for k in range(self.levels - 1, -1, -1):
            band_v, band_r = bands_v[k], bands_r[k]
            e_v = F.conv2d(magnitudes_v[k], self.energy[k : k + 1], padding=1)
            e_r = F.conv2d(magnitudes_r[k], self.energy[k : k + 1], padding=1)
            contrast = self.sharpness[k] * (e_v - e_r) / (e_v + e_r + EPS)
            weight = torch.sigmoid(contrast + pyramid_up(logits[:, k : k + 1], band_v))
            fused = pyramid_up(fused, band_v) + self.log_gain[k].exp() * (band_r + weight * (band_v - band_r))
        return fused.clamp(0.0, 1.0)

    def _features(self, lowpass: list[torch.Tensor], magnitudes: list[torch.Tensor]) -> torch.Tensor:
        """One modality's attention input at 1/pool: its low-pass image and the mean |band| of each
        band down to that level, (B, 2 + log2(pool), H/pool, W/pool)."""
        s = self.scale
        pooled = [F.avg_pool2d(magnitudes[k], 2 ** (s - k)) for k in range(s)]
        return torch.cat((lowpass[s], *pooled, magnitudes[s]), dim=1)
