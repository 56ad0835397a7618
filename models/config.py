"""Model and training configuration: pydantic v2 data, validated once at the edge."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from busref.models.augment import PhotometricConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusConfig(_Strict):
    """Reconstructor widths: F1 has ``width`` channels, F2 ``2 width``, F3/F4 ``4 width``."""

    width: int = Field(16, ge=4, le=128)


class AffineConfig(_Strict):
    width: int = Field(32, ge=8, le=256)
    kernels: int = Field(4, ge=1, le=8, description="K kernels of each dynamic convolution")


class DeformableConfig(_Strict):
    width: int = Field(24, ge=4, le=256, description="channels of the descriptor towers and heads of both levels")
    refinements: int = Field(1, ge=1, le=3, description="deformable passes (each re-encodes the warped IR)")


class GafConfig(_Strict):
    """The pyramid GAF (models.networks.gaf): attention channels, its resolution, pyramid depth."""

    width: int = Field(16, ge=4, le=64)
    pool: int = Field(8, ge=2, le=32, description="attention weights are computed at 1/pool resolution")
    levels: int = Field(5, ge=2, le=8, description="Laplacian band-pass levels (the base is at 1/2**levels)")


class ModelConfig(_Strict):
    """The whole BusReF model. ``registration_size`` is (H, W), multiples of 8."""

    bus: BusConfig = BusConfig()
    affine: AffineConfig = AffineConfig()
    deformable: DeformableConfig = DeformableConfig()
    gaf: GafConfig = GafConfig()
    registration_size: tuple[int, int] = (192, 256)

    @field_validator("registration_size")
    @classmethod
    def _multiple_of_8(cls, v: tuple[int, int]) -> tuple[int, int]:
        if any(s % 8 or s < 32 for s in v):
            raise ValueError(f"registration_size {v} must be multiples of 8 and >= 32")
        return v


class StageConfig(_Strict):
    """One training stage's schedule."""

    steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    crop: tuple[int, int] = (128, 160)
    validate_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(500, ge=1)


class LossWeights(_Strict):
    """Weights of the loss terms (paper symbols in the field descriptions)."""

    ssim_re: float = Field(1.0, description="lambda of eq. 4")
    ssim_fuse: float = Field(1.0, description="sigma of eq. 8")
    grad_fuse: float = Field(10.0, description="weight of L_grad (eq. 6-7)")
    gamma: float = Field(0.7, description="gradient enhancement exponent of eq. 7")
    max_grad_fuse: float = Field(0.0, description="weight of the Sobel max-gradient term (losses.max_gradient_loss); "
                                 "raises EI, SF and Qabf")
    hist_fuse: float = Field(0.0, description="weight of the histogram term (losses.histogram_loss); lowers CE")
    salfid_fuse: float = Field(0.0, description="weight of the saliency-weighted source fidelity term "
                               "(losses.saliency_fidelity_loss); lowers Q_cv")
    qcv_fuse: float = Field(0.0, description="weight of the perceptual distortion term "
                            "(losses.perceptual_distortion_loss, Q_cv / 255^2); lowers Q_cv")
    mncc: float = Field(1.0, description="epsilon of eq. 13")
    mg: float = Field(1000.0, description="weight of L_MG (eq. 12); Laplacian differences are ~1e-3")
    smooth: float = Field(0.01, description="smoothness of the displacement field; the field is in normalised "
                          "units, its squared differences are ~1e-6, so weights below ~1e3 do next to nothing "
                          "(the shipped registration fine-tunes used 1e4-1e5)")
    supervised: float = Field(0.1, description="masked end-point error against the synthetic truth")
    affine_supervised: float = Field(0.1, description="the same for the coarse (affine) grid alone")
    match: float = Field(0.0, description="the same for each matching level's own estimate (losses.match_loss)")


class TrainConfig(_Strict):
    model: ModelConfig = ModelConfig()
    losses: LossWeights = LossWeights()
    bus: StageConfig = StageConfig(steps=2000, batch_size=8, lr=2e-3, crop=(128, 128))
    fusion: StageConfig = StageConfig(steps=2000, batch_size=8, lr=2e-3, crop=(128, 128))
    registration: StageConfig = StageConfig(steps=4000, batch_size=8, lr=1e-3, crop=(192, 256))
    photometric: PhotometricConfig = Field(PhotometricConfig(), description="registration inputs' augmentation")
    max_level: Literal["moderate", "hard"] = "hard"
    level_margin: float = Field(1.15, ge=1.0, le=2.0, description="train slightly beyond max_level")
    seed: int = 0
    workers: int = Field(0, ge=0)


def load_train_config(path: str | Path | None) -> TrainConfig:
    """Read a YAML training config (None: the defaults); errors name the file and field."""
    if path is None:
        return TrainConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read training config: {exc}") from exc
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid training config:\n{exc}") from exc
