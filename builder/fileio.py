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


def temp_beside(path: Path) -> Path:
    """A temp name beside ``path``, unique to this host and process, that :data:`TEMP_FILE` matches."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp name beside ``path``, fsync, then rename over it; discard on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_beside(path)
    try:
        with open(temp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


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
