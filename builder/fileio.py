"""Atomic writes and checksums: no run ever leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import socket
from pathlib import Path
from typing import IO, Any, Iterator

from builder.errors import OutputError

#: the name of a temp file beside its target while it is written (:func:`temp_beside`)
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.tmp-[A-Za-z0-9_.-]+$")


#: a temp file's name as :func:`temp_beside` makes it, with its writer: the host (its first 32
#: characters) and the process id
_WRITTEN_BY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_beside(path: Path) -> Path:
    """A temp name beside ``path``, unique to this host and process, that :data:`TEMP_FILE` matches."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_orphaned_temp_files(folder: Path) -> int:
    """Delete the temp files in ``folder`` whose writer was a process of this host that is gone
    (killed by SIGKILL or the machine's end, it could not clean up; a download of several GB
    would stay forever, the next one writing under a new name). Another host's, or a running
    process's, are left alone. Returns how many went."""
    removed = 0
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False)]
    except OSError:
        return 0
    for name in names:
        writer = _WRITTEN_BY.match(name)
        if writer is None or writer["host"] != socket.gethostname()[:32] or _alive(int(writer["pid"])):
            continue
        try:
            (folder / name).unlink()
            removed += 1
        except OSError:
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp name beside ``path``, fsync, then rename over it; discard on error. The
    file system refusing (a file where a folder should be, no permission, a full disk) is a
    one-line OutputError; an error raised by the writer itself passes through as it is."""
    temp = temp_beside(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(temp, mode)
    except OSError as error:
        raise WriteRefused(path, error) from None
    try:
        with handle:
            yield handle
            _refused_as_output_error(path, handle.flush)
            _refused_as_output_error(path, lambda: os.fsync(handle.fileno()))
        _refused_as_output_error(path, lambda: os.replace(temp, path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def _refused_as_output_error(path: Path, step: Any) -> None:
    try:
        step()
    except OSError as error:
        raise WriteRefused(path, error) from None


class WriteRefused(OutputError, OSError):
    """The file system refused a write: a one-line OutputError for the CLI, and still an OSError
    (with its errno and strerror) for a caller that handles those, such as a build that keeps
    its finished units and says to resume."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(_cannot_write(path, error))
        self.errno, self.strerror, self.filename = error.errno, error.strerror, error.filename

    def __str__(self) -> str:
        return str(self.args[0])


def _cannot_write(path: Path, error: OSError) -> str:
    """``cannot write PATH (why)``: what the file system refused, and what to do."""
    if isinstance(error, (FileExistsError, NotADirectoryError)) and error.filename:
        why = f"{error.filename} is a file, not a folder"
    else:
        why = (error.strerror or type(error).__name__) + (f": {error.filename}" if error.filename and str(error.filename) != str(path) else "")
    return f"cannot write {path} ({why}); give a path in a folder you may write to"


def begins_with(path: Path, prefix: str) -> bool:
    """Whether the file at ``path`` begins with ``prefix`` (False when it cannot be read): how a
    command tells a file it wrote itself (its heading) from a user's file of the same name."""
    expected = prefix.encode()
    try:
        with open(path, "rb") as handle:
            return handle.read(len(expected)) == expected
    except OSError:
        return False


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


def json_bytes(payload: Any) -> bytes:
    """How every JSON file of a build is written, to a local dir or an object store alike: strict
    JSON, an undefined figure (NaN, such as FMR when SA is 0) written as null."""
    return (json.dumps(without_nan(payload), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def without_nan(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    write_bytes_atomic(path, json_bytes(payload))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: Path) -> str:
    """One sha256 over a folder's files (their paths relative to it and their own sha256s): a
    pretrained model kept as a folder (a diffusers or open_clip save) is its files together."""
    digest = hashlib.sha256()
    for path in sorted(item for item in folder.rglob("*") if item.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def sha256_json(payload: Any) -> str:
    text = json.dumps(without_nan(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def inside(root: Path, *parts: str) -> Path:
    """``root/part/...``, refusing any result outside ``root`` (the second guard behind the
    recipe's own checks: a name that becomes a path never leads out of the output dir)."""
    path = root.joinpath(*parts)
    base = root.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise OutputError(f"refusing to write {path}: it resolves to {resolved}, outside {root}; use plain names without '..' or '/'")
    return path
