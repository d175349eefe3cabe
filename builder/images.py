"""Deterministic image encoding (no timestamps, lossless, so pixels survive a round trip)."""

from __future__ import annotations

import io
from typing import Any, Optional

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


#: how many leading bytes :func:`image_problem` reads
SIGNATURE_BYTES = 12


def image_problem(head: Optional[bytes], image_format: str) -> Optional[str]:
    """Why ``head`` (an image's first bytes, or None) cannot be a ``png`` or ``webp`` image as
    the writers encode them; None when its signature says it is one. Cheap enough for verify to
    run on every image without decoding it."""
    if not head:
        return "missing (no bytes)"
    if image_format == "png" and not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "not a PNG image"
    if image_format == "webp" and not (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "not a WebP image"
    return None


#: the encodings a benchmark's images are written in (:func:`encode_image`), as Pillow names them
BENCHMARK_FORMATS = ("PNG", "WEBP")


def open_benchmark_image(data: bytes) -> Any:
    """``data`` opened by Pillow as one of :data:`BENCHMARK_FORMATS` only: a benchmark may be a
    download, and Pillow left to pick the format by content would open a PostScript member as
    EPS, which runs Ghostscript. Anything else raises PIL.UnidentifiedImageError (an OSError)."""
    from PIL import Image

    return Image.open(io.BytesIO(data), formats=BENCHMARK_FORMATS)


def decode_image(data: bytes) -> np.ndarray:
    with open_benchmark_image(data) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def to_nchw(pixels: np.ndarray) -> Any:
    """uint8 (N, H, W, 3) images as decoded -> a contiguous (N, 3, H, W) tensor, the layout the
    components take (still uint8: the caller picks device and scale)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()


def to_chw(pixels: np.ndarray) -> Any:
    """One uint8 (H, W, 3) image -> a contiguous (3, H, W) tensor."""
    return to_nchw(pixels[None])[0]
