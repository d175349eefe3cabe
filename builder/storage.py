"""Where a build's files live: a local dir, or a prefix on an object store behind an fsspec URL.

One small interface serves the planner (list, read, check a unit's files, delete owned files),
the unit runner (write a shard, then its stats), the finalizer (publish the final files) and
the readers (a local mirror of a URL for ``verify``, ``score`` and ``publish``).

A local dir keeps the rules it always had: each file is written under a temp name and renamed.
An object store has no rename, so a file is written whole to a local temp file first, hashed,
and only then put as one object (S3, GCS and Azure make an object visible only once its
upload, multipart or not, completes): a partial upload never appears under a final name.
fsspec and its implementation for the URL's scheme (s3fs, gcsfs, adlfs) are imported only when
a URL is given; credentials and endpoints come from their usual configuration (environment
variables such as ``AWS_ENDPOINT_URL``, ``FSSPEC_S3_*``, config files) or ``--storage-option``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence, Union

from builder.errors import OutputError
from builder.fileio import TEMP_FILE, inside, json_bytes, remove_orphaned_temp_files, sha256_file, temp_beside, write_bytes_atomic

log = logging.getLogger(__name__)

#: what ``--out`` and the readers accept: a local dir, or an fsspec URL such as ``s3://bucket/prefix``
Location = Union[Path, str]
URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
#: a local mirror of a URL lives here, below the cache dir
MIRRORS = "remote-outputs"
MIRROR_INDEX = ".mirror.json"
#: a shard is written with this callable to the local path it is given
Writer = Callable[[Path], None]


def is_url(location: Location) -> bool:
    """Whether ``location`` names an object store (``file://`` is a local dir, like a plain path)."""
    match = URL.match(location) if isinstance(location, str) else None
    return match is not None and match.group("scheme").lower() != "file"


def local_path(location: str) -> str:
    """A ``file://`` URL's path (``file:///data/x`` and ``file://localhost/data/x`` are /data/x);
    anything else as it is. Taken for a path, it was a folder named 'file:' under the cwd."""
    if not location.lower().startswith("file://"):
        return location
    rest = location[len("file://"):]
    return rest[len("localhost"):] if rest.lower().startswith("localhost/") else rest


def parse_storage_options(pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--storage-option key=value`` pairs, in order (passed to the fsspec filesystem as strings)."""
    options = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OutputError(f"--storage-option {pair!r} is not KEY=VALUE; give e.g. --storage-option endpoint_url=http://127.0.0.1:9000")
        options.append((key.strip(), value))
    return tuple(options)


def check_relative(relative: str) -> str:
    """A file's name inside a build, as a POSIX path that stays inside it (no ``..``, no root)."""
    parts = relative.split("/")
    if not relative or "\\" in relative or "\x00" in relative or any(part in ("", ".", "..") for part in parts):
        raise OutputError(f"refusing the file name {relative[:80]!r}: it would lead outside the output; use plain names")
    return relative


class Storage(Protocol):
    """A build's output: a local dir or a URL prefix. ``relative`` names are POSIX paths inside it."""

    @property
    def location(self) -> str:
        """As the user gave it, for messages."""
        ...

    @property
    def local_dir(self) -> Optional[Path]:
        """The dir, when the output is local (None for an object store)."""
        ...

    def show(self, relative: str) -> str:
        """``relative`` as the user would name it (a path or a URL)."""
        ...

    def is_empty(self) -> bool:
        ...

    def list_files(self) -> list[str]:
        """Every file below, as sorted relative POSIX paths."""
        ...

    def versions(self) -> dict[str, Optional[list[Any]]]:
        """Every file below with its size and version (a local file's mtime, an object's ETag or
        its store's like; None where the store lists none): whether anything changed since a
        listing, told without reading a byte."""
        ...

    def subdirs(self, relative: str) -> list[str]:
        """Names of the directories (prefixes) directly inside ``relative``."""
        ...

    def files_in(self, relative: str) -> list[str]:
        """Names of the files directly inside the directory ``relative``, sorted."""
        ...

    def size(self, relative: str) -> Optional[int]:
        """Bytes of the regular file ``relative``; None when there is none."""
        ...

    def read_bytes(self, relative: str) -> Optional[bytes]:
        ...

    def matches(self, relative: str, size: Any, sha256: Any) -> bool:
        """Whether ``relative`` is a regular file of ``size`` bytes with this sha256."""
        ...

    def write_file(self, relative: str, write: Writer) -> tuple[str, int]:
        """Have ``write`` write the file, then make it appear whole under ``relative``; (sha256, bytes)."""
        ...

    def put_bytes(self, relative: str, data: bytes) -> None:
        """``data`` appears whole under ``relative``, replacing what was there."""
        ...

    def put_file(self, local: Path, relative: str) -> None:
        """The local file ``local`` appears whole under ``relative`` (copied, not moved)."""
        ...

    def delete(self, relatives: Sequence[str]) -> None:
        """Remove these files; absent ones are fine."""
        ...

    def local_copy(self, cache_dir: Path) -> Path:
        """A local dir holding what is stored here (but ``_stats/``): the dir itself, or a mirror."""
        ...


def walk_files(out_dir: Path) -> Iterator[str]:
    """Every file, link or other non-directory below ``out_dir``, as a relative POSIX path;
    symlinked directories are listed as entries, never followed."""
    for directory, subdirs, files in os.walk(out_dir, followlinks=False):
        base = Path(directory).relative_to(out_dir)
        for name in sorted(files) + sorted(d for d in subdirs if (Path(directory) / d).is_symlink()):
            yield (base / name).as_posix()


@dataclass(frozen=True)
class LocalStorage:
    """A local dir: atomic writes by rename, as every local build has always done."""

    root: Path

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def local_dir(self) -> Optional[Path]:
        return self.root

    def path(self, relative: str) -> Path:
        return inside(self.root, *check_relative(relative).split("/"))

    def show(self, relative: str) -> str:
        return str(self.root / relative)

    def is_empty(self) -> bool:
        return not self.root.is_dir() or not any(self.root.iterdir())

    def list_files(self) -> list[str]:
        return list(walk_files(self.root)) if self.root.is_dir() else []

    def versions(self) -> dict[str, Optional[list[Any]]]:
        found: dict[str, Optional[list[Any]]] = {}
        for relative in self.list_files():
            stat = (self.root / relative).lstat()
            found[relative] = [stat.st_size, stat.st_mtime_ns]
        return found

    def subdirs(self, relative: str) -> list[str]:
        directory = self.root / relative
        if not directory.is_dir() or directory.is_symlink():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.is_symlink())

    def files_in(self, relative: str) -> list[str]:
        directory = self.root / relative
        return sorted(p.name for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []

    def size(self, relative: str) -> Optional[int]:
        path = self.root / relative
        return path.stat().st_size if path.is_file() else None

    def read_bytes(self, relative: str) -> Optional[bytes]:
        path = self.root / relative
        return path.read_bytes() if path.is_file() else None

    def matches(self, relative: str, size: Any, sha256: Any) -> bool:
        path = self.root / relative
        return not path.is_symlink() and path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256

    def write_file(self, relative: str, write: Writer) -> tuple[str, int]:
        path = self.path(relative)
        write(path)  # the writer writes atomically: temp name, fsync, rename
        return sha256_file(path), path.stat().st_size

    def put_bytes(self, relative: str, data: bytes) -> None:
        write_bytes_atomic(self.path(relative), data)

    def put_file(self, local: Path, relative: str) -> None:
        target = self.path(relative)
        if local.resolve() != target.resolve():
            write_bytes_atomic(target, local.read_bytes())

    def delete(self, relatives: Sequence[str]) -> None:
        for relative in relatives:
            (self.root / relative).unlink(missing_ok=True)

    def local_copy(self, cache_dir: Path) -> Path:
        return self.root


class RemoteStorage:
    """A prefix on an object store, through fsspec. There is no rename: every file is put whole,
    once it is complete (see the module docstring); listings are never served from a cache,
    since other processes write here too."""

    def __init__(self, url: str, options: Optional[Mapping[str, str]] = None) -> None:
        self.location = url.rstrip("/")
        self.local_dir: Optional[Path] = None
        self.fs, root = filesystem_of(self.location, dict(options or {}))
        self.root = str(root).rstrip("/")

    def key(self, relative: str) -> str:
        return f"{self.root}/{check_relative(relative)}"

    def show(self, relative: str) -> str:
        return f"{self.location}/{relative}"

    @contextlib.contextmanager
    def errors(self, action: str, relative: str = "") -> Iterator[None]:
        """Any failure of the store (network, permissions, a missing bucket) as one line."""
        try:
            yield
        except OutputError:
            raise
        except Exception as error:  # noqa: BLE001 - every backend raises its own types
            where = self.show(relative) if relative else self.location
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise OutputError(f"cannot {action} {where}: {reason}; check the bucket, its credentials and the endpoint "
                              "(fsspec's config, AWS_ENDPOINT_URL or --storage-option), then run the same command again") from None

    def info(self) -> dict[str, dict[str, Any]]:
        """Every object below the prefix, by relative name, with what the store says of it."""
        with self.errors("list"):
            self.fs.invalidate_cache()
            if self.fs.isfile(self.root):
                raise OutputError(f"{self.location} is an object, not a prefix; give the prefix (the 'folder') of a benchmark")
            found = self.fs.find(self.root, detail=True) if self.fs.exists(self.root) else {}
        prefix = self.root + "/"
        return {name[len(prefix):]: entry for name, entry in sorted(found.items())
                if name.startswith(prefix) and entry.get("type", "file") == "file" and not _folder_marker(name[len(prefix):], entry)}

    def is_empty(self) -> bool:
        return not self.info()

    def list_files(self) -> list[str]:
        return list(self.info())

    def versions(self) -> dict[str, Optional[list[Any]]]:
        return {name: _identity(entry) for name, entry in self.info().items()}

    def subdirs(self, relative: str) -> list[str]:
        depth = relative.count("/") + 2
        return sorted({name.split("/")[depth - 1] for name in self.list_files() if name.startswith(relative + "/") and name.count("/") >= depth})

    def files_in(self, relative: str) -> list[str]:
        return sorted(name.rsplit("/", 1)[-1] for name in self.list_files() if name.rsplit("/", 1)[0] == relative)

    def size(self, relative: str) -> Optional[int]:
        with self.errors("read", relative):
            try:
                self.fs.invalidate_cache(self.key(relative))  # another process may have put it since
                entry = self.fs.info(self.key(relative))
            except FileNotFoundError:
                return None
        return int(entry["size"]) if entry.get("type", "file") == "file" else None

    def read_bytes(self, relative: str) -> Optional[bytes]:
        with self.errors("read", relative):
            try:
                return bytes(self.fs.cat_file(self.key(relative)))
            except FileNotFoundError:
                return None

    def matches(self, relative: str, size: Any, sha256: Any) -> bool:
        if self.size(relative) != size:
            return False
        digest = hashlib.sha256()
        with self.errors("read", relative), self.fs.open(self.key(relative), "rb", block_size=1 << 22) as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest() == sha256

    def write_file(self, relative: str, write: Writer) -> tuple[str, int]:
        with tempfile.TemporaryDirectory(prefix="fmr-upload-") as staging:
            local = Path(staging) / relative.rsplit("/", 1)[-1]
            write(local)
            digest, size = sha256_file(local), local.stat().st_size
            self.put_file(local, relative)
        return digest, size

    def put_bytes(self, relative: str, data: bytes) -> None:
        with self.errors("write", relative):
            self.fs.pipe_file(self.key(relative), data)

    def put_file(self, local: Path, relative: str) -> None:
        """One whole-object upload of a finished local file (the only way a file gets here)."""
        with self.errors("write", relative):
            self.fs.put_file(str(local), self.key(relative))

    def delete(self, relatives: Sequence[str]) -> None:
        for relative in relatives:
            with self.errors("delete", relative), contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.key(relative))

    def local_copy(self, cache_dir: Path) -> Path:
        return mirror(self, cache_dir)


def filesystem_of(url: str, options: Mapping[str, str]) -> tuple[Any, str]:
    """The fsspec filesystem and path of ``url``; a one-line error naming the package to install
    when the scheme's implementation is missing."""
    import fsspec
    from fsspec.registry import known_implementations

    scheme = url.split("://", 1)[0].lower()
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        package = str(known_implementations.get(scheme, {}).get("class", scheme)).split(".")[0]
        raise OutputError(f"{url}: no fsspec implementation of {scheme}:// is installed; pip install {package}") from None
    except ValueError:
        raise OutputError(f"{url}: {scheme}:// is not a storage scheme fsspec knows; give a local dir or a URL such as s3://bucket/prefix") from None
    try:
        return fsspec.core.url_to_fs(url, **options)
    except Exception as error:  # noqa: BLE001 - a bad option or URL, whatever the backend
        raise OutputError(f"{url}: cannot open it ({' '.join(str(error).split())[:200]}); check the URL and --storage-option values") from None


def check_options_fit(location: str, options: Sequence[tuple[str, str]], *, on_the_hub: bool = False) -> None:
    """Options for a URL's store given with a local dir (or a Hub dataset, read through
    huggingface_hub): one line, never silently ignored."""
    if options and (on_the_hub or not is_url(location)):
        what = "a Hub dataset" if on_the_hub else "a local dir"
        raise OutputError(f"--storage-option goes with a URL such as s3://bucket/prefix, not {location} ({what}); drop it")


def open_storage(location: Location, options: Sequence[tuple[str, str]] = ()) -> Storage:
    """The storage of ``location``: a path or ``file://`` URL is a local dir, any other URL an object store."""
    text = str(location)
    if is_url(location):
        return RemoteStorage(text, dict(options))
    check_options_fit(text, options)
    return LocalStorage(Path(local_path(text)))


# ------------------------------------------------------------------------------ local mirrors


def mirror_dir(url: str, cache_dir: Path) -> Path:
    """Where the local mirror of ``url`` lives: one dir per URL, named so a person can tell which."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", url.split("://", 1)[-1]).strip("-")[-48:]
    return cache_dir / MIRRORS / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def mirror(storage: RemoteStorage, cache_dir: Path) -> Path:
    """A local copy of everything under ``storage`` but ``_stats/``, for the readers of a built
    benchmark (``verify``, ``score``, ``publish``) and the finalizer's preview and gallery.

    An object is downloaded again only when it changed in the store (its size and ETag, or
    modification time) or its copy changed here (its size and mtime: ``publish`` re-renders the
    card in the copy, the finalizer writes the final files there); files gone from the store are
    removed from the copy. So the copy is what the store holds, and ``verify`` checks its bytes.
    """
    from builder.manifest import STATS_DIR

    dest = mirror_dir(storage.location, cache_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with _mirror_lock(dest):  # one mirroring of a URL at a time: another's downloads are not stale files
        for folder in {dest, *(path.parent for path in dest.rglob(".*.tmp-*"))}:  # of mirrorings killed before
            remove_orphaned_temp_files(folder)
        index_path = dest / MIRROR_INDEX
        try:
            previous = json.loads(index_path.read_text()) if index_path.is_file() else {}
        except ValueError:
            previous = {}
        listing = {name: _identity(entry) for name, entry in storage.info().items() if name.split("/")[0] != STATS_DIR}
        index, fetched = {}, 0
        for name, identity in listing.items():
            target = inside(dest, *check_relative(name).split("/"))
            if identity is None or previous.get(name) != [identity, _local_identity(target)]:
                _download(storage, name, target)
                fetched += 1
            index[name] = [identity, _local_identity(target)]
        for stale in [name for name in walk_files(dest) if name != MIRROR_INDEX and name not in listing and not _is_temp(name)]:
            (dest / stale).unlink(missing_ok=True)
        write_bytes_atomic(index_path, json_bytes(index))
    log.info("mirrored %s to %s: %d of %d file(s) downloaded", storage.location, dest, fetched, len(listing))
    return dest


@contextlib.contextmanager
def _mirror_lock(dest: Path) -> Iterator[None]:
    """An exclusive lock on the mirror ``dest`` (a file beside it), held while it is brought up
    to date: a second reader of the same URL waits instead of deleting the first one's
    downloads as stale files."""
    import fcntl

    with open(dest.with_name(dest.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_temp(name: str) -> bool:
    """An atomic write's temp file (``.<name>.tmp-...``), of a download or of the finalizer."""
    return TEMP_FILE.match(name.rsplit("/", 1)[-1]) is not None


#: what stores list as an object's version: S3's ETag, GCS's md5Hash or generation, modification
#: times under the names fsspec's backends give them (memory, ftp, webhdfs, local)
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "LastModified", "last_modified", "updated", "mtime", "modify",
                 "modificationTime", "created")


def _identity(entry: dict[str, Any]) -> Optional[list[Any]]:
    """An object's size and version tag, as the store lists it; None when it lists no version
    (size alone cannot tell a changed file of the same size: it is downloaded every time)."""
    tag = next((entry[key] for key in _VERSION_KEYS if entry.get(key) not in (None, "")), None)
    return None if tag is None else [int(entry.get("size", -1)), str(tag)]


def _local_identity(path: Path) -> Optional[list[int]]:
    """A mirrored file's size and mtime (None when absent or not a regular file)."""
    if path.is_symlink() or not path.is_file():
        return None
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _download(storage: RemoteStorage, name: str, target: Path) -> None:
    temp = temp_beside(target)
    try:
        try:  # a store may hold an object 'a' and objects under 'a/' at once; a file system cannot
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                raise FileExistsError(target)
        except OSError:
            raise OutputError(f"{storage.show(name)}: cannot be mirrored, it is both an object and a folder of objects in the store; "
                              "remove one of the two from the store") from None
        with storage.errors("download", name):
            storage.fs.get_file(storage.key(name), str(temp))
            os.replace(temp, target)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)


def local_copy(location: Location, cache_dir: Path, options: Sequence[tuple[str, str]] = ()) -> Path:
    """A local dir holding the benchmark at ``location``: the dir itself, or a URL's mirror."""
    return open_storage(location, options).local_copy(cache_dir)


def _folder_marker(relative: str, entry: dict[str, Any]) -> bool:
    """A zero-byte key ending in '/' (the AWS console's "Create folder"): no file of a build. It
    was listed under the name '' and made a new prefix "not empty" and a finished build unreadable."""
    return (relative == "" or relative.endswith("/")) and not entry.get("size")

