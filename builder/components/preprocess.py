"""Each classifier's own preprocessing, as a differentiable module on [0, 1] images."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Union

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
    #: the model reads its channels as BGR (MobileViT's ``do_flip_channel_order``); ``mean`` and
    #: ``std`` are then in that order too
    bgr: bool = False

    def overridden(self, spec: PreprocessConfig, owner: str = "model") -> "Preprocessing":
        """These settings with the spec's overrides; ``owner`` names the model in errors."""
        values = {k: v for k, v in spec.model_dump().items() if v is not None}
        result = Preprocessing(**{**self.__dict__, **values})
        if not all(math.isfinite(s) and s > 0 for s in result.std):  # normalising would divide by it
            raise ComponentError(f"{owner}: preprocess.std {list(result.std)} must be positive numbers; fix preprocess.std")
        if not all(math.isfinite(m) for m in result.mean):
            raise ComponentError(f"{owner}: preprocess.mean {list(result.mean)} must be finite numbers; fix preprocess.mean")
        return result


def crop_fraction(crop: int, resize: int) -> float:
    """The crop_pct for which ``floor(crop / crop_pct) == resize`` exactly (float-safe)."""
    fraction = crop / resize
    return fraction if math.floor(crop / fraction) == resize else crop / (resize + 1e-9)


def rgb(values: Union[float, Iterable[Any]], owner: str, what: str) -> tuple[float, float, float]:
    """Three floats, one per channel, from a library's config (a mean or a std; one number
    stands for all three)."""
    numbers = (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(value) for value in values)
    if len(numbers) != 3:
        raise ComponentError(f"{owner}: its {what} has {len(numbers)} values, not one per RGB channel; set preprocess.{what}")
    return numbers[0], numbers[1], numbers[2]


@functools.lru_cache(maxsize=64)
def resize_matrix(size_in: int, size_out: int, mode: str) -> torch.Tensor:
    """(size_out, size_in) float64 weights of a 1-D antialiased ``mode`` resize, as
    ``F.interpolate`` (align_corners=False, antialias=True) computes them: it resizes the
    identity. Resized along the width: torch 2.14 gets a height-only antialiased resize of a
    width-1 tensor wrong. Callers must not modify it (cached)."""
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor, whatever mode the first caller was in
        identity = torch.eye(size_in, dtype=torch.float64).view(size_in, 1, 1, size_in)
        columns = F.interpolate(identity, size=(1, size_out), mode=mode, align_corners=False, antialias=True)
        return columns.view(size_in, size_out).T.contiguous()


class Preprocess(nn.Module):
    mean: torch.Tensor  # buffers, declared for the type checker
    std: torch.Tensor

    """Resize the shorter side to input_size / crop_pct, centre-crop (zero-padding a side shorter
    than input_size, as torchvision's centre crop does), normalise (timm's eval transform).

    The antialiased resize runs as two matrix products with ``F.interpolate``'s own weights:
    the same function (equal to 1e-15 in float64, forward and backward; nearer float64 than
    torch's float32 kernel), and a backward pass that is deterministic on CUDA, where
    ``upsample_bicubic2d_aa_backward`` accumulates with atomics and a GPU build differed from
    run to run (benchmarks/bench_determinism.py on an H200)."""

    def __init__(self, config: Preprocessing) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        #: resize weights on the device, per (size_in, size_out, device, dtype): copied there once,
        #: never per step (a host-to-device copy waits for the queued work)
        self._weights: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def _resize_weights(self, size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
        key = (size_in, size_out, like.device, like.dtype)
        if key not in self._weights:
            with torch.inference_mode(False):  # a copy of the cache's own, never an inference tensor: gradients use it later
                self._weights[key] = resize_matrix(size_in, size_out, self.config.interpolation).to(like.device, like.dtype, copy=True)
        return self._weights[key]

    def resize(self, images: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
        """``F.interpolate(images, target, mode, align_corners=False, antialias=True)``, or
        nearest-neighbour as it is, in the images' own precision (no autocast, as
        ``F.interpolate``)."""
        if self.config.interpolation == "nearest":
            return F.interpolate(images, size=target, mode="nearest")
        rows = self._resize_weights(images.shape[-2], target[0], images)
        columns = self._resize_weights(images.shape[-1], target[1], images)
        with torch.autocast(images.device.type, enabled=False):
            return rows @ images @ columns.T

    def fingerprint_text(self) -> str:
        """What of the preprocessing no buffer holds (size, crop, interpolation), for the model's
        fingerprint: the same weights at another input size are another function."""
        return repr(self.config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size
        scale = math.floor(size / self.config.crop_pct)
        height, width = images.shape[-2:]
        if min(height, width) != scale:
            ratio = scale / min(height, width)
            target = (max(scale, round(height * ratio)), max(scale, round(width * ratio)))
            images = self.resize(images, target)
        short_h, short_w = max(size - images.shape[-2], 0), max(size - images.shape[-1], 0)
        if short_h or short_w:  # a crop_pct above 1 (MobileViT's default: resized to 224, cropped to 256)
            images = F.pad(images, (short_w // 2, short_w - short_w // 2, short_h // 2, short_h - short_h // 2))
        top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
        images = images[..., top : top + size, left : left + size]
        if self.config.bgr:
            images = images.flip(-3)
        return (images - self.mean) / self.std


class PreprocessedClassifier(nn.Module):
    """theta as the engine sees it: [0, 1] images in, logits out.

    ``logits_field`` names the attribute of the net's output that holds the logits (Transformers
    models return an output object); ``outputs`` keeps only these logits, in this order (a
    pretrained model's labels mapped onto the benchmark's classes); ``weights_loaded`` says the
    scheme loaded the spec's checkpoint itself (CLIP: its text embeddings come from the weights).
    """

    outputs: Optional[torch.Tensor]  # a buffer, declared for the type checker

    def __init__(
        self,
        net: nn.Module,
        preprocessing: Preprocessing,
        num_classes: int,
        spec: str,
        *,
        logits_field: Optional[str] = None,
        outputs: Optional[Sequence[int]] = None,
        weights_loaded: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.preprocess = Preprocess(preprocessing)
        self.num_classes = num_classes if outputs is None else len(outputs)
        self.spec = spec
        self.logits_field = logits_field
        self.weights_loaded = weights_loaded
        self.register_buffer("outputs", None if outputs is None else torch.tensor(list(outputs)), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.net(self.preprocess(images))
        if self.logits_field is not None:
            logits = getattr(logits, self.logits_field)
        self._check_width(logits, len(images))
        return logits if self.outputs is None else logits[:, self.outputs]

    def _check_width(self, logits: torch.Tensor, count: int) -> None:
        """A net must give one logit per class and image: a factory that ignored ``num_classes``
        (5 outputs on a 3-class benchmark) had its argmax land on classes the benchmark lacks,
        and SA, PA and FMR came out wrong without a word. Shapes only: no sync."""
        if not isinstance(logits, torch.Tensor):
            raise ComponentError(f"{self.spec}: the model returned {type(logits).__name__}, not a tensor of logits; "
                                 "make its forward return (batch, classes) logits")
        wide = self.num_classes if self.outputs is None else None
        if logits.dim() != 2 or logits.shape[0] != count or (wide is not None and logits.shape[1] != wide):
            want = f"({count}, {wide})" if wide is not None else f"({count}, classes)"
            raise ComponentError(f"{self.spec}: the model returned logits of shape {tuple(logits.shape)} for {count} images, "
                                 f"expected {want}; make its head give one logit per class (a py: factory gets num_classes)")


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
        """Each super-class's logsumexp of its members' logits, in at least fp32 (bf16 autocast
        would take the sum of exponentials in bf16)."""
        raw = self.inner(images)
        logits = raw.to(torch.promote_types(raw.dtype, torch.float32))[:, self.members]
        owners = self.owners.expand_as(logits)
        empty = logits.new_full((logits.shape[0], self.num_classes), float("-inf"))
        peak = empty.scatter_reduce(1, owners, logits, reduce="amax").detach()  # per-group shift
        summed = torch.zeros_like(peak).scatter_add(1, owners, (logits - peak.gather(1, owners)).exp())
        return summed.log() + peak
