"""Deterministic image encoding (no timestamps, lossless, so pixels survive a round trip)."""

from __future__ import annotations

import io

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
