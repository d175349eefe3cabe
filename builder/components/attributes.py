"""Interpretable attribute edits (in the spirit of ImageNet-E): the "latent" is a handful of
named parameters (rotation, scale, translation, brightness, contrast, saturation, blur) applied
differentiably to the original image, so a benchmark says *which* change breaks a model.

Each image starts at the identity. Each step moves every enabled parameter by its own ``step``
in the direction that raises the reference model's loss (the sign of its gradient), clipped to
its ``range``; the oracle rule is Algorithm 1's. ``perturbation.step_size`` is not used: every
attribute has its own step, in its own unit. The final values are written with each sample
(the ``attributes`` column), so consumers can slice by them.

The latent of an image is its original pixels, flattened, followed by the parameters: the
engine keeps no per-sample state besides the latent, and decoding needs the original. Only
the parameters ever move.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import Field, model_validator
from torch.nn import functional as F

from builder.checkpoints import ResolveContext
from builder.components.base import GENERATORS, ComponentContext, image_size_cap_problem, image_size_preflight
from builder.config import Frozen, GeneratorConfig
from builder.errors import ComponentError

#: attribute -> (its value at the identity, its unit, the widest range it may be given)
ATTRIBUTES: dict[str, tuple[float, str, tuple[float, float]]] = {
    "rotate": (0.0, "degrees, counter-clockwise", (-180.0, 180.0)),
    "scale": (1.0, "zoom factor", (0.1, 10.0)),
    "translate": (0.0, "fraction of the image side, for x (right) and y (down)", (-1.0, 1.0)),
    "brightness": (0.0, "offset added to every channel, in [0, 1] units", (-1.0, 1.0)),
    "contrast": (1.0, "factor around the image's mean grey", (0.0, 10.0)),
    "saturation": (1.0, "factor around each pixel's grey", (0.0, 10.0)),
    "blur": (0.0, "variance of the Gaussian blur, in px^2", (0.0, 64.0)),
}
#: the heat-kernel blur is applied in steps of at most this variance (keeps its taps positive)
BLUR_VARIANCE_PER_PASS = 0.5
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


class AttributeRange(Frozen):
    """One attribute: how far a step moves it, and the interval it stays in (holding its identity)."""

    step: float = Field(gt=0, allow_inf_nan=False)
    range: tuple[float, float]


class AttributesConfig(GeneratorConfig):
    #: the attributes to perturb (at least one): name -> {step, range}
    attributes: dict[str, AttributeRange]
    #: what a geometric edit shows outside the original
    padding: Literal["zeros", "border", "reflection"] = "reflection"

    @model_validator(mode="after")
    def _known_and_in_range(self) -> "AttributesConfig":
        if not self.attributes:
            raise ValueError(f"name at least one attribute of {', '.join(ATTRIBUTES)}")
        if self.step_size is not None:
            raise ValueError("step_size is not used: every attribute has its own step (attributes.<name>.step)")
        for name, attribute in self.attributes.items():
            if name not in ATTRIBUTES:
                raise ValueError(f"unknown attribute '{name}'; choices: {', '.join(ATTRIBUTES)}")
            identity, unit, (widest_low, widest_high) = ATTRIBUTES[name]
            low, high = attribute.range
            if not widest_low <= low <= identity <= high <= widest_high:
                raise ValueError(f"{name}.range [{low}, {high}] must hold the identity {identity} within [{widest_low}, {widest_high}] ({unit})")
        return self

    def attribute_names(self) -> tuple[str, ...]:
        """The recorded parameters, in a fixed order (translate is two: x and y)."""
        names: list[str] = []
        for name in ATTRIBUTES:
            if name in self.attributes:
                names += ["translate_x", "translate_y"] if name == "translate" else [name]
        return tuple(names)

    def image_size_problem(self, image_size: int, locations: ResolveContext) -> str | None:
        """Edits take any size (the common MAX_IMAGE_SIZE bound aside)."""
        return None


def inside_float32(bound: float, inward: float) -> float:
    """``bound`` as the nearest float32 on the range's side (toward ``inward``): values are
    written as float32, and a range end that float32 rounds outward would let them cross it."""
    import numpy as np

    rounded = np.float32(bound)
    if (float(rounded) - bound) * (inward - bound) < 0:
        rounded = np.nextafter(rounded, np.float32(inward))
    return float(rounded)


def _attribute_of(parameter: str) -> str:
    return "translate" if parameter.startswith("translate_") else parameter


class AttributeGenerator:
    """g(x, b) = the edits of b applied to x, b0 = (x, identity)."""

    def __init__(self, config: AttributesConfig, image_size: int, device: str) -> None:
        self.names = self.attribute_names = config.attribute_names()
        self.padding = config.padding
        self.pixels = 3 * image_size * image_size
        self.image_size = image_size
        specs = [config.attributes[_attribute_of(name)] for name in self.names]
        self._identity = torch.tensor([ATTRIBUTES[_attribute_of(name)][0] for name in self.names], device=device)
        self._steps = torch.tensor([spec.step for spec in specs], device=device)
        self._low = torch.tensor([inside_float32(spec.range[0], math.inf) for spec in specs], device=device)
        self._high = torch.tensor([inside_float32(spec.range[1], -math.inf) for spec in specs], device=device)
        blur = config.attributes.get("blur")
        self.blur_passes = max(1, math.ceil(blur.range[1] / BLUR_VARIANCE_PER_PASS)) if blur is not None else 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        identity = self._identity.to(images.dtype).expand(len(images), -1)
        return torch.cat([images.flatten(1), identity], dim=1)

    def attributes(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, P) the parameter values a latent holds, in ``attribute_names`` order."""
        return latent[:, self.pixels :]

    def step(self, latent: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        """Every parameter moves by its own step along the sign of ``direction``, clipped to its
        range; the pixels never move (``step_size`` is not used)."""
        dtype = latent.dtype
        values = self.attributes(latent) + self._steps.to(dtype) * direction[:, self.pixels :].sign()
        values = torch.maximum(torch.minimum(values, self._high.to(dtype)), self._low.to(dtype))
        return torch.cat([latent[:, : self.pixels], values], dim=1)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        images = latent[:, : self.pixels].reshape(-1, 3, size, size)
        values = dict(zip(self.names, self.attributes(latent).unbind(1), strict=True))
        images = self._geometry(images, values)
        if "blur" in values:
            images = blur(images, values["blur"], self.blur_passes)
        return photometric(images, values).clamp(0, 1)

    def _geometry(self, images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rotation, scale and translation about the centre, in one resampling."""
        if not {"rotate", "scale", "translate_x"} & set(values):
            return images
        zero = images.new_zeros(len(images))
        angle = torch.deg2rad(values.get("rotate", zero))
        scale = values.get("scale", zero + 1)
        shift = torch.stack([values.get("translate_x", zero), values.get("translate_y", zero)], dim=1) * 2  # to [-1, 1] units
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # output -> input: the inverse of "rotate (counter-clockwise on screen), zoom, then shift"
        inverse = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
        offset = -(inverse @ shift.unsqueeze(2))
        grid = F.affine_grid(torch.cat([inverse, offset], dim=2), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)


def blur(images: torch.Tensor, variance: torch.Tensor, passes: int) -> torch.Tensor:
    """A separable Gaussian blur of per-image ``variance`` (px^2): the discrete heat kernel, the
    3-tap kernel [t, 1-2t, t] applied ``passes`` times with t = variance / (2 passes). Unlike a
    sampled Gaussian it is exact at variance 0 and has a gradient there, so a sign step can
    start moving it."""
    n, channels, height, width = images.shape
    t = (variance / (2 * passes)).view(n, 1)
    tap = torch.cat([t, 1 - 2 * t, t], dim=1)
    kernel = tap
    for _ in range(passes - 1):
        kernel = F.conv1d(F.pad(kernel, (2, 2)).unsqueeze(0), tap.flip(1).unsqueeze(1), groups=n).squeeze(0)
    kernel = kernel.repeat_interleave(channels, dim=0)  # one per image and channel
    radius = passes
    flat = images.reshape(1, n * channels, height, width)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * channels)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * channels)
    return flat.reshape(n, channels, height, width)


def photometric(images: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Brightness (offset), then contrast (around the mean grey), then saturation (around each
    pixel's grey), as torchvision's adjust_* define them but unclamped in between."""
    def per_image(name: str) -> Optional[torch.Tensor]:
        return values[name].view(-1, 1, 1, 1) if name in values else None

    weights = images.new_tensor(GREY).view(1, 3, 1, 1)
    if (offset := per_image("brightness")) is not None:
        images = images + offset
    if (factor := per_image("contrast")) is not None:
        mean = (images * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        images = (images - mean) * factor + mean
    if (factor := per_image("saturation")) is not None:
        grey = (images * weights).sum(1, keepdim=True)
        images = (images - grey) * factor + grey
    return images


@GENERATORS.register("attributes", config=AttributesConfig, preflight=image_size_preflight,
                     description="named, differentiable edits (rotate, scale, translate, brightness, contrast, saturation, blur)")
def load_attributes(config: AttributesConfig, ctx: ComponentContext) -> AttributeGenerator:
    problem = image_size_cap_problem(ctx.image_size)
    if problem:
        raise ComponentError(problem)
    return AttributeGenerator(config, ctx.image_size, ctx.device)
