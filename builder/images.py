"""Deterministic image encoding (no timestamps, lossless, so pixels survive a round trip)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """uint8 (H, W, 3) -> PNG or lossless WebP bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB")
    if image_format == "webp":
        image.save(buffer, format="WEBP", lossless=True, quality=100, method=4, exact=True)
    else:
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def to_nchw(pixels: np.ndarray) -> Any:
    """uint8 (N, H, W, 3) images as decoded -> a contiguous (N, 3, H, W) tensor, the layout the
    components take (still uint8: the caller picks device and scale)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()


def to_chw(pixels: np.ndarray) -> Any:
    """One uint8 (H, W, 3) image -> a contiguous (3, H, W) tensor."""
    return to_nchw(pixels[None])[0]
