"""Turn any source image into the RGB, square, fixed-size array the engine consumes."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import numpy as np

from builder.errors import first_line

MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold, applied per image
#: the raster formats a source's image may be read as. Pillow picks a format by a file's content,
#: not its name: left to choose, it opens PostScript named ``x.png`` as EPS and runs Ghostscript
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
#: the file names of those formats (an imagefolder lists these; PPM's plugin also reads PGM/PBM)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")


class SampleRejected(Exception):
    """A sample that cannot be used; its reason goes to rejects.jsonl."""


def bomb_reason() -> str:
    return f"image exceeds the {MAX_PIXELS} pixel limit (decompression bomb guard)"


def open_untrusted(file: str | Path | IO[bytes]):  # -> PIL.Image.Image
    """``file`` opened lazily as one of :data:`IMAGE_FORMATS` only; anything else (EPS, PDF...)
    raises ``UnidentifiedImageError``, which :func:`load_rgb` turns into a rejection."""
    from PIL import Image

    return Image.open(file, formats=IMAGE_FORMATS)


def check_pixels(width: int, height: int) -> None:
    """Reject an image above Pillow's decompression-bomb limit (which Pillow only warns about up
    to twice that) or above ``MAX_PIXELS``, before its pixels are decoded."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max(1, width) * max(1, height) > Image.MAX_IMAGE_PIXELS:
        raise SampleRejected(bomb_reason())
    if width * height > MAX_PIXELS:
        raise SampleRejected(f"image of {width}x{height} pixels exceeds the {MAX_PIXELS} pixel limit")


def _to_rgb(image: Any) -> Any:
    from PIL import Image

    if image.mode.startswith("I;16"):  # 16-bit: a fixed 0..65535 range
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(array / 257.0).clip(0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):  # no fixed range: stretch to the image's own maximum
        array = np.asarray(image, dtype=np.float64)
        high = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray(np.round(array / high * 255.0).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


#: the longest side over the shortest an image may have: the shorter side is resized to the
#: image size first, so a 1 x 100000 strip needed 26 GB at 256 px
MAX_ASPECT = 64


def check_aspect(width: int, height: int) -> None:
    """Refuse a strip far longer than wide (no photograph of one object) before it is resized."""
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise SampleRejected(f"{width}x{height} pixels: more than {MAX_ASPECT} times longer than wide")


def _upright(image: Any) -> Any:
    """``image`` turned as its EXIF orientation says; a damaged EXIF block (Pillow raises
    struct.error or TypeError reading it) leaves its orientation unknown: the sample is skipped."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001 - any failure of the EXIF parser: its orientation is unknown
        raise SampleRejected(f"unreadable EXIF orientation ({type(error).__name__}: {first_line(error)})") from None


def load_rgb(loader: Any, image_size: int) -> np.ndarray:
    """``loader()`` -> uint8 array (image_size, image_size, 3): EXIF-upright, shorter side
    resized (bicubic) and centre-cropped. Raises :class:`SampleRejected` with a reason.
    Thread-safe (the runner decodes on a reader thread): the pixel limits are checked here,
    not by turning Pillow's bomb warning into an error, which would change process-wide state."""
    from PIL import Image, UnidentifiedImageError

    try:
        with loader() as opened:
            check_pixels(*opened.size)
            check_aspect(*opened.size)
            opened.load()
            image = _to_rgb(_upright(opened))
    except SampleRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning: under -W error
        raise SampleRejected(bomb_reason()) from None
    except UnidentifiedImageError as error:
        raise SampleRejected(f"not a readable image ({type(error).__name__})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise SampleRejected(f"corrupt image ({first_line(error)})") from None
    scale = image_size / min(image.size)
    size = (max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - image_size) // 2, (image.height - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8).copy()
