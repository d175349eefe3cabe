"""A local ImageFolder: one sub-folder per class, class names from the folder names."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from builder.config import SourceConfig
from builder.errors import SourceError
from builder.paths import in_recipe_dir
from builder.sources.base import (
    SOURCES,
    SourceContext,
    SourceItem,
    check_class_names,
    open_preflight,
    printable_id,
)
from builder.sources.decode import IMAGE_EXTENSIONS, SampleRejected, open_untrusted


class ImageFolderConfig(SourceConfig):
    path: str
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS


def open_image(path: Path):  # -> PIL.Image.Image
    """The image at ``path``, lazily (the decoder checks the size before reading pixels).
    Anything but a regular file is rejected before it is opened: opening a FIFO named
    ``x.png`` would block forever, and a device could be read without end."""
    from PIL import UnidentifiedImageError

    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        what = "a broken symbolic link" if os.path.islink(path) else "unreadable"
        raise SampleRejected(f"{what} ({error.strerror or type(error).__name__})") from None
    if not stat.S_ISREG(mode):
        raise SampleRejected(f"not a regular file but {_file_kind(mode)}; only image files are read")
    try:
        return open_untrusted(path)
    except UnidentifiedImageError:
        raise
    except OSError as error:
        if error.errno is None:  # the decoder's own complaint: a corrupt image, said by load_rgb
            raise
        raise SampleRejected(f"cannot read the file ({error.strerror or type(error).__name__})") from None


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def _class_folders(root: Path) -> tuple[str, ...]:
    """The sub-folders of ``root``, sorted; a name that cannot be a class name (not UTF-8, a
    line break) and a broken link where a class may be meant are errors, never skipped, since
    a skipped class would silently shift every later class's label."""
    try:
        entries = sorted(root.iterdir())
    except OSError as error:
        raise SourceError(f"imagefolder: cannot list {root}: {error.strerror or error}; fix its permissions") from None
    classes = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not entry.exists():
            raise SourceError(f"imagefolder: {printable_id(str(entry))} is a broken symbolic link; fix its target or remove it")
        if not entry.is_dir():
            continue
        if printable_id(entry.name) != entry.name:
            what = "has a line break or control character" if _is_utf8(entry.name) else "is not valid UTF-8"
            raise SourceError(f"imagefolder: class folder {printable_id(entry.name)!r} in {root} {what}; rename it")
        classes.append(entry.name)
    return tuple(classes)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # the file system's surrogate escapes of undecodable bytes
        return False
    return True


def _files_below(folder: Path) -> list[Path]:
    """Every non-directory entry below ``folder`` (symbolic links to folders are not followed,
    as ``Path.rglob`` does not), sorted like ``sorted(folder.rglob("*"))``. Hidden folders
    (``.ipynb_checkpoints``, ``.git``) are not entered: they hold copies, not more samples. A
    folder that cannot be listed is an error: ``rglob`` would skip its images without a word."""

    def fail(error: OSError) -> None:
        where = printable_id(str(error.filename)) if error.filename else str(folder)
        raise SourceError(f"imagefolder: cannot list {where}: {error.strerror or error}; fix its permissions")

    found: list[Path] = []
    for top, folders, files in os.walk(folder, onerror=fail):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found.extend(Path(top, name) for name in files)
    return sorted(found)


def _empty_class_error(root: Path, name: str, suffixes: tuple[str, ...]) -> SourceError:
    """A class folder without an image file (``__MACOSX``, a stray folder) would still be a
    class, shifting the label of every class after it; torchvision's ImageFolder refuses it too."""
    return SourceError(
        f"imagefolder: class folder {name!r} in {root} has no image file ({', '.join(suffixes)}); "
        "remove it, or list it in source.class_names to keep a class without samples"
    )


@SOURCES.register("imagefolder", config=ImageFolderConfig, description="root/<class>/<image>, classes sorted by name", preflight=open_preflight)
class ImageFolderSource:
    def __init__(self, config: ImageFolderConfig, ctx: SourceContext) -> None:
        root = in_recipe_dir(config.path, ctx.base_dir)
        if not root.is_dir():
            raise SourceError(f"imagefolder: {root} is not a directory; check source.path")
        classes = _class_folders(root)
        if not classes:
            raise SourceError(f"imagefolder: {root} has no class sub-folders")
        suffixes = tuple(s.lower() for s in config.extensions)
        self._files: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            files = [file for file in _files_below(root / name) if not file.name.startswith(".") and file.suffix.lower() in suffixes]
            if not files and name not in (config.class_names or ()):  # a declared class may be empty
                raise _empty_class_error(root, name, suffixes)
            self._files.extend((file, label) for file in files)  # FIFOs, broken links...: listed, and rejected when read
        self.class_names = check_class_names(config.class_names, classes, f"imagefolder {root}")
        self._root = root

    def __len__(self) -> int:
        return len(self._files)

    def listing(self, used: int) -> list[list[Any]]:
        """Each file's id, label and size (a file replaced in place mostly changes its size)."""
        return [[printable_id(path.relative_to(self._root).as_posix()), label, _size(path)] for path, label in self._files[:used]]

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        for i in range(start, min(stop, len(self))):
            path, label = self._files[i]
            yield SourceItem(i, printable_id(path.relative_to(self._root).as_posix()), label, partial(open_image, path))


def _size(path: Path) -> int:
    """A listed file's size, -1 when it cannot be read (a broken link: rejected when read)."""
    try:
        return path.stat().st_size
    except OSError:
        return -1
