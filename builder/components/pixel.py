"""The pixel-space baseline the paper contrasts with: the "latent" is the image itself.

Each step moves every pixel by at most ``perturbation.step_size`` (in [0, 1] units, with the
default ``sign`` direction), so after k accepted steps no pixel is further than k times the
step from the original: a bounded, adversarial-attack-like perturbation, judged by the same
oracle. No weights, no training; ``mask`` (a (3, H, W) fit-mask file) restricts it to pixels.
"""

from __future__ import annotations

from typing import Optional

import torch

from builder.checkpoints import ResolveContext, fetch_location
from builder.components.base import GENERATORS, ComponentContext, image_size_cap_problem, image_size_preflight
from builder.config import GeneratorConfig
from builder.errors import ComponentError
from builder.preflight import Check, PreflightContext


class PixelConfig(GeneratorConfig):
    mask: Optional[str] = None  # a file from `build-benchmark fit-mask`: perturb only those pixels

    def image_size_problem(self, image_size: int, locations: ResolveContext) -> str | None:
        """Pixels take any size (the common MAX_IMAGE_SIZE bound aside)."""
        return None


class PixelGenerator:
    """g(x, b) = clamp(b, 0, 1) with b0 = x."""

    def __init__(self, mask: Optional[torch.Tensor] = None) -> None:
        self.mask = mask

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.clamp(0, 1)

    def step(self, latent: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        """The projected step of a pixel attack: a pixel stepped past 0 or 1 stays on the bound.
        Left outside, the clamp in ``decode`` gave it no gradient, so it could never move back."""
        return (latent + step_size * direction).clamp(0, 1)


def pixel_preflight(config: PixelConfig, ctx: PreflightContext, where: str) -> list[Check]:
    """The image sizes, and a mask's shape against the (3, image_size, image_size) pixels."""
    from builder.sparse import mask_shape_checks

    return mask_shape_checks(config, ctx, where, image_size_preflight(config, ctx, where), lambda size: (3, size, size))


@GENERATORS.register("pixel", config=PixelConfig, description="no generator: steps move the pixels directly (baseline)",
                     preflight=pixel_preflight)
def load_pixel(config: PixelConfig, ctx: ComponentContext) -> PixelGenerator:
    problem = image_size_cap_problem(ctx.image_size)
    if problem:
        raise ComponentError(problem)
    mask = None
    if config.mask is not None:
        from builder.sparse import load_mask

        mask = load_mask(fetch_location(config.mask, ctx.locations), expected_channels=3).to(ctx.device)
    return PixelGenerator(mask)
