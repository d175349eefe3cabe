"""A local ImageFolder: one sub-folder per class, class names from the folder names."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterator

from builder.config import SourceConfig
from builder.sources.base import SOURCES, SourceContext, SourceItem, check_class_names
from builder.errors import SourceError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")


class ImageFolderConfig(SourceConfig):
    path: str
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS


def open_image(path: Path):  # -> PIL.Image.Image
    from PIL import Image

    return Image.open(path)  # lazy: the decoder checks the size before reading pixels


@SOURCES.register("imagefolder", config=ImageFolderConfig, description="root/<class>/<image>, classes sorted by name")
class ImageFolderSource:
    def __init__(self, config: ImageFolderConfig, ctx: SourceContext) -> None:
        root = Path(config.path).expanduser()
        root = root if root.is_absolute() else ctx.base_dir / root
        if not root.is_dir():
            raise SourceError(f"imagefolder: {root} is not a directory; check source.path")
        classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if not classes:
            raise SourceError(f"imagefolder: {root} has no class sub-folders")
        self.class_names = check_class_names(config.class_names, classes, f"imagefolder {root}")
        suffixes = tuple(s.lower() for s in config.extensions)
        self._files: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            for file in sorted((root / name).rglob("*")):
                if file.is_file() and not file.name.startswith(".") and file.suffix.lower() in suffixes:
                    self._files.append((file, label))
        self._root = root

    def __len__(self) -> int:
        return len(self._files)

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        for i in range(start, min(stop, len(self))):
            path, label = self._files[i]
            yield SourceItem(i, path.relative_to(self._root).as_posix(), label, partial(open_image, path))
