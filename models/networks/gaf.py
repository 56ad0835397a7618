"""GAF: the gradient-aware fusion network (paper Figure 4), designed for real-time CPU use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from busref.models.networks.layers import act, conv, separable

LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


class GAF(nn.Module):
    """Fuse visible luminance and registered IR: ``(B, 1, H, W) x 2 -> (B, 1, H, W)`` in [0, 1].

    Feature extractor (shared by both modalities), gradient sensing (a fixed Laplacian on the
    features), a max-pool branch (high frequency: pooled |Laplacian|) and an avg-pool branch
    (low frequency: pooled features), each with an MLP (1x1 convs) giving inter-modality
    logits; a sigmoid weight map ``w`` takes ``w`` of the visible features and ``1 - w`` of the
    IR ones; output convs and tanh mapped to [0, 1].

    Speed (issue 3: 640x512 in about 30 ms of one CPU core): each image is first folded 2x2
    into 4 channels at half resolution (pixel unshuffle, lossless), the convs run there, and
    the output is unfolded back (pixel shuffle); the attention branches work at ``1/pool`` of
    the input resolution and give one weight map. H, W must be multiples of ``pool`` (and 2).
    """

    def __init__(self, width: int = 8, pool: int = 4) -> None:
        super().__init__()
        c = width
        self.pool = max(pool // 2, 1)  # pooling happens on the half-resolution features
        self.stem = nn.Sequential(conv(4, c), act(), separable(c, c), act())
        self.register_buffer("laplacian", torch.tensor(LAPLACIAN).expand(c, 1, 3, 3).clone(), persistent=False)
        self.high = nn.Sequential(nn.Conv2d(2 * c, c, 1), act(), nn.Conv2d(c, 1, 1))
        self.low = nn.Sequential(nn.Conv2d(2 * c, c, 1), act(), nn.Conv2d(c, 1, 1))
        self.out = nn.Sequential(separable(c, c), act(), conv(c, 4))
        self.width = width

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        if vis.shape != ir.shape or vis.dim() != 4 or vis.shape[1] != 1:
            raise ValueError(f"GAF expects two (B, 1, H, W) tensors, got {tuple(vis.shape)} and {tuple(ir.shape)}")
        b = vis.shape[0]
        feats = self.stem(F.pixel_unshuffle(torch.cat((vis, ir), dim=0), 2))  # both modalities at once
        grad = F.conv2d(feats, self.laplacian, padding=1, groups=self.width).abs()
        fv, fr = feats[:b], feats[b:]
        high = self.high(torch.cat((F.max_pool2d(grad[:b], self.pool), F.max_pool2d(grad[b:], self.pool)), dim=1))
        low = self.low(torch.cat((F.avg_pool2d(fv, self.pool), F.avg_pool2d(fr, self.pool)), dim=1))
        weight = torch.sigmoid(F.interpolate(high + low, size=fv.shape[-2:], mode="bilinear", align_corners=False))
        fused = fr + weight * (fv - fr)
        return (torch.tanh(F.pixel_shuffle(self.out(fused), 2)) + 1.0) * 0.5
