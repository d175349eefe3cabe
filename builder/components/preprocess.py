"""Each classifier's own preprocessing, as a differentiable module on [0, 1] images."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from builder.config import PreprocessConfig
from builder.errors import ComponentError


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def overridden(self, spec: PreprocessConfig, owner: str = "model") -> "Preprocessing":
        """These settings with the spec's overrides; ``owner`` names the model in errors."""
        values = {k: v for k, v in spec.model_dump().items() if v is not None}
        result = Preprocessing(**{**self.__dict__, **values})
        if not all(math.isfinite(s) and s > 0 for s in result.std):  # normalising would divide by it
            raise ComponentError(f"{owner}: preprocess.std {list(result.std)} must be positive numbers; fix preprocess.std")
        if not all(math.isfinite(m) for m in result.mean):
            raise ComponentError(f"{owner}: preprocess.mean {list(result.mean)} must be finite numbers; fix preprocess.mean")
        return result


class Preprocess(nn.Module):
    mean: torch.Tensor  # buffers, declared for the type checker
    std: torch.Tensor

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


class PooledClassifier(nn.Module):
    members: torch.Tensor  # buffers, declared for the type checker
    owners: torch.Tensor

    """A classifier over super-classes: each one's logit is the logsumexp of its members' logits,
    i.e. its probability is the sum of theirs (Restricted ImageNet from a 1000-class model)."""

    def __init__(self, inner: PreprocessedClassifier, groups: list[list[int]]) -> None:
        super().__init__()
        self.inner = inner
        self.num_classes = len(groups)
        self.spec = inner.spec
        members = torch.tensor([i for group in groups for i in group])
        owners = torch.tensor([g for g, group in enumerate(groups) for _ in group])
        self.register_buffer("members", members, persistent=False)
        self.register_buffer("owners", owners, persistent=False)

    @property
    def net(self) -> nn.Module:
        return self.inner.net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.inner(images)[:, self.members]
        owners = self.owners.expand_as(logits)
        empty = logits.new_full((logits.shape[0], self.num_classes), float("-inf"))
        peak = empty.scatter_reduce(1, owners, logits, reduce="amax").detach()  # per-group shift
        summed = torch.zeros_like(peak).scatter_add(1, owners, (logits - peak.gather(1, owners)).exp())
        return summed.log() + peak
