"""Each classifier's own preprocessing, as a differentiable module on [0, 1] images."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from builder.config import PreprocessConfig


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def overridden(self, spec: PreprocessConfig) -> "Preprocessing":
        values = {k: v for k, v in spec.model_dump().items() if v is not None}
        return Preprocessing(**{**self.__dict__, **values})


class Preprocess(nn.Module):
    """Resize the shorter side to input_size / crop_pct, centre-crop, normalise (timm's eval transform)."""

    def __init__(self, config: Preprocessing) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size
        scale = math.floor(size / self.config.crop_pct)
        height, width = images.shape[-2:]
        if min(height, width) != scale:
            ratio = scale / min(height, width)
            target = (max(scale, round(height * ratio)), max(scale, round(width * ratio)))
            mode = self.config.interpolation
            images = F.interpolate(
                images,
                size=target,
                mode=mode,
                **({} if mode == "nearest" else {"align_corners": False, "antialias": True}),
            )
        top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
        images = images[..., top : top + size, left : left + size]
        return (images - self.mean) / self.std


class PreprocessedClassifier(nn.Module):
    """theta as the engine sees it: [0, 1] images in, logits out."""

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, num_classes: int, spec: str) -> None:
        super().__init__()
        self.net = net
        self.preprocess = Preprocess(preprocessing)
        self.num_classes = num_classes
        self.spec = spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(images))
