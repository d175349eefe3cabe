"""The output directory's life cycle: fresh, replaced (--overwrite) or resumed.

A build owns only what it writes: ``_stats/`` (``build.json``, what is being built, and one
``<config>/<shard>.json`` per finished work unit), the shard files in its config dirs (named
``<split>-NNNNN-of-NNNNN.<suffix>``), the final files at the top (manifest, card, preview,
rejects, gallery, leaderboard) and the temp files of its atomic writes. Anything else in the
dir belongs to the user: it is never deleted without ``--force-clean``.

Preparing the dir happens in two steps so that a build that fails before its first shard
(a component that does not load) changes nothing: :func:`inspect_output` only reads and
decides, :func:`claim_output` deletes and writes ``build.json``.

The same rules hold for an object store (``--out s3://bucket/prefix``, see
:mod:`builder.storage`), read and written through the same :class:`~builder.storage.Storage`;
only the lock cannot: an object store has no ``flock``, so two builds into one URL are the
user's to avoid (a warning says so).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional

from builder.errors import OutputError
from builder.fileio import TEMP_FILE, json_bytes, write_json_atomic
from builder.manifest import CONFIG_NAME, FINAL_FILES, MANIFEST, MAX_MANIFEST_BYTES, STATS_DIR, ManifestError, parse_json_bounded
from builder.storage import Storage

log = logging.getLogger(__name__)

IDENTITY_FILE = "build.json"
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-\d{5,}-of-\d{5,}(?P<suffix>\.[A-Za-z0-9]+)$")  # 00000 up, 100000 and more too
SHOWN = 3  # foreign files named in one refusal


@dataclass(frozen=True)
class OutputState:
    """What :func:`inspect_output` found and decided; :func:`claim_output` carries it out."""

    storage: Storage
    mode: Literal["fresh", "overwrite", "resume"]
    completed: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: relative POSIX paths of the build's own files to delete
    remove: tuple[str, ...] = ()
    kept_foreign: tuple[str, ...] = ()
    #: directories to drop once the deletions leave them empty (a local dir's; a store has none)
    dirs: tuple[Path, ...] = ()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return items
    return {prefix: value}


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    flat_old, flat_new = _flatten(old), _flatten(new)
    for key in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(key) != flat_new.get(key):
            return f"{key}: {flat_old.get(key)!r} -> {flat_new.get(key)!r}"
    return "nothing"


def _read_json(storage: Storage, relative: str) -> Any:
    """A JSON file of a previous build, or None when it is absent or not readable as ours."""
    size = storage.size(relative)
    if size is None or size > MAX_MANIFEST_BYTES:
        return None
    try:
        return parse_json_bounded(storage.read_bytes(relative) or b"", storage.show(relative))
    except (ManifestError, OSError):
        return None


def _is_format(payload: Any) -> bool:
    return isinstance(payload, dict) and str(payload.get("format", "")).startswith("fmr-benchmark/")


def previous_build(storage: Storage) -> tuple[Any, Any]:
    """(build.json, manifest.json) of the build in ``storage``, each None unless it parses as
    ours: a directory is a build only if one of them says so."""
    identity = _read_json(storage, f"{STATS_DIR}/{IDENTITY_FILE}")
    manifest = _read_json(storage, MANIFEST)
    return (identity if _is_format(identity) else None), (manifest if _is_format(manifest) else None)


def config_dirs(storage: Storage, *payloads: Any) -> set[str]:
    """Config dir names a build there may have written: from build.json, the manifest, ``_stats/``."""
    names: set[str] = set()
    for payload in payloads:
        if isinstance(payload, dict):
            for key in ("configs",):
                value = payload.get(key)
                names.update(str(n) for n in (value if isinstance(value, (list, dict)) else []))
    names.update(storage.subdirs(STATS_DIR))
    return {name for name in names if CONFIG_NAME.match(name)}


def is_owned(relative: str, configs: set[str]) -> bool:
    """Whether the file at ``relative`` (POSIX, inside the output dir) is one a build writes."""
    parts = relative.split("/")
    if parts[0] == STATS_DIR:
        return True
    temp = TEMP_FILE.match(parts[-1])
    if len(parts) == 1:
        return (temp.group("name") if temp else parts[0]) in FINAL_FILES
    # in a config dir: its shards, and any temp file of an atomic write (left by a crash)
    return len(parts) == 2 and parts[0] in configs and bool(temp or is_shard_name(parts[1]))


def is_shard_name(name: str) -> bool:
    """``<split>-NNNNN-of-NNNNN<suffix>`` with the suffix of a registered output format."""
    from builder.registry import WRITERS

    match = SHARD_NAME.match(name)
    return match is not None and match.group("suffix") in {entry.factory.suffix for entry in WRITERS}


def _few(paths: list[str]) -> str:
    shown = ", ".join(paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def inspect_output(storage: Storage, identity: dict[str, Any], *, overwrite: bool, force_clean: bool = False) -> OutputState:
    """Decide what a build into ``storage`` keeps, resumes and deletes; writes nothing."""
    mode, previous, manifest = first_look(storage, identity, overwrite=overwrite)
    if mode == "fresh":
        return OutputState(storage, "fresh")
    configs = config_dirs(storage, previous, manifest, identity)
    files = storage.list_files()
    foreign = [f for f in files if not is_owned(f, configs)]
    if mode == "overwrite":
        return _overwrite(storage, files, foreign, configs, force_clean)
    return _resume(storage, files, foreign, configs, force_clean)


def check_foreign_files(storage: Storage, mode: str, identity: dict[str, Any], previous: Any, manifest: Any, *, force_clean: bool) -> None:
    """The refusals :func:`inspect_output` makes about files a build did not write, by the
    listing alone (no shard read): for a dry run, which passed a dir the run then refused."""
    if mode == "fresh":
        return
    configs = config_dirs(storage, previous, manifest, identity)
    files = storage.list_files()
    foreign = [f for f in files if not is_owned(f, configs)]
    if mode == "overwrite":
        _overwrite(storage, files, foreign, configs, force_clean)
    elif not force_clean and any(f.split("/")[0] in configs for f in foreign):
        _resume(storage, files, foreign, configs, force_clean)  # raises before it reads a unit


def first_look(storage: Storage, identity: dict[str, Any], *, overwrite: bool,
               compared: Optional[Iterable[str]] = None) -> tuple[Literal["fresh", "overwrite", "resume"], Any, Any]:
    """What a build may do with ``storage`` by its records alone (no shard is read): write it
    fresh, overwrite or resume the build there (with that build's build.json and manifest.json),
    or an OutputError. ``compared``: the identity's keys to compare (a dry run knows only the
    settings'); default: all of it."""
    out_dir = storage.location
    if storage.local_dir is not None and storage.local_dir.exists() and not storage.local_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; give a directory")
    if storage.is_empty():
        return "fresh", None, None
    previous, manifest = previous_build(storage)
    if previous is None and manifest is None:
        verb = "overwrite" if overwrite else "write into"
        raise OutputError(
            f"refusing to {verb} {out_dir}: it is not empty and holds no build of this tool "
            "(no readable _stats/build.json or manifest.json); give an empty or new directory"
        )
    if overwrite:
        return "overwrite", previous, manifest
    if previous is None:
        raise OutputError(f"--out {out_dir} holds a benchmark from an older version; pass --overwrite or pick a new dir")
    recorded = previous if compared is None else {key: previous.get(key) for key in compared}
    if recorded != identity:
        raise OutputError(
            f"--out {out_dir} was built with different settings ({first_difference(recorded, identity)}); "
            "pass --overwrite to start over or pick a new dir"
        )
    return "resume", previous, manifest


def _overwrite(storage: Storage, files: list[str], foreign: list[str], configs: set[str], force_clean: bool) -> OutputState:
    out_dir = storage.location
    if foreign and not force_clean:
        raise OutputError(
            f"refusing to overwrite {out_dir}: it holds {len(foreign)} file(s) the build did not write "
            f"({_few(foreign)}); move them out, or add --force-clean to delete them too"
        )
    doomed = files if force_clean else [f for f in files if f not in set(foreign)]
    dirs = _all_dirs(storage.local_dir) if force_clean else _owned_dirs(storage.local_dir, configs)
    return OutputState(storage, "overwrite", remove=tuple(doomed), dirs=dirs)


def _owned_dirs(out_dir: Path | None, configs: set[str]) -> tuple[Path, ...]:
    if out_dir is None:
        return ()
    return tuple(out_dir / name for name in sorted(configs)) + tuple(out_dir / STATS_DIR / name for name in sorted(configs))


def _all_dirs(out_dir: Path | None) -> tuple[Path, ...]:
    if out_dir is None:
        return ()
    return tuple(Path(d) for d, _, _ in os.walk(out_dir, followlinks=False) if Path(d) != out_dir)


def _resume(storage: Storage, files: list[str], foreign: list[str], configs: set[str], force_clean: bool) -> OutputState:
    """Keep every intact unit; remove the build's own partial or stale files; leave the user's.
    Foreign files inside a config dir would be picked up by the card's data_files globs."""
    in_the_way = [f for f in foreign if f.split("/")[0] in configs]
    if in_the_way and not force_clean:
        raise OutputError(
            f"refusing to resume into {storage.location}: {len(in_the_way)} file(s) the build did not write are in its config dirs "
            f"({_few(in_the_way)}), where loaders would read them; move them out, or add --force-clean to delete them"
        )
    completed, keep = _complete_units(storage, files, configs)
    foreign_set = set(foreign)
    stale = [f for f in files if f not in keep and (f not in foreign_set or f in in_the_way)]
    final = set(FINAL_FILES)  # replaced atomically at the end, never half-written
    remove = tuple(f for f in stale if f not in final and f != f"{STATS_DIR}/{IDENTITY_FILE}")
    kept = tuple(f for f in foreign if f not in in_the_way)
    return OutputState(storage, "resume", completed, remove, kept, _owned_dirs(storage.local_dir, configs))


def _unit_is_intact(storage: Storage, stats: dict[str, Any], configs: set[str]) -> bool:
    entries = stats.get("files")
    if not isinstance(entries, dict):
        return False
    for file in entries.values():
        relative = file.get("path") if isinstance(file, dict) else None
        if not isinstance(relative, str) or not is_owned(relative, configs) or relative.startswith(STATS_DIR):
            return False
        if not storage.matches(relative, file.get("bytes"), file.get("sha256")):
            return False
    return True


def _complete_units(storage: Storage, files: list[str], configs: set[str]) -> tuple[dict[tuple[str, str], dict[str, Any]], set[str]]:
    """(stats of each intact unit by (config, shard stem), relative paths those units own)."""
    completed: dict[tuple[str, str], dict[str, Any]] = {}
    keep: set[str] = set()
    for relative in sorted(f for f in files if f.count("/") == 2 and f.startswith(f"{STATS_DIR}/") and f.endswith(".json")):
        _, config, name = relative.split("/")
        stats = _read_json(storage, relative)
        if not isinstance(stats, dict) or stats.get("config") != config:
            continue
        if _unit_is_intact(storage, stats, configs):
            completed[(stats["config"], name[: -len(".json")])] = stats
            keep.add(relative)
            keep.update(f["path"] for f in stats["files"].values())
    return completed, keep


@contextlib.contextmanager
def output_lock(storage: Storage | Path) -> Iterator[None]:
    """Hold an exclusive lock on the output dir (created if needed) while a build writes into it:
    two builds into one dir would delete each other's work. The OS drops the lock when the
    process ends, however it ends. An object store has nothing to lock: a warning says so."""
    import fcntl

    out_dir = storage if isinstance(storage, Path) else storage.local_dir
    if out_dir is None:
        log.warning("%s is on an object store, which has no lock: nothing stops a second build from writing there at the same "
                    "time and deleting this one's work; run one build per URL at a time", getattr(storage, "location", storage))
        yield
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(out_dir, os.O_RDONLY)
    except OSError as error:
        raise OutputError(f"cannot prepare --out {out_dir}: {error.strerror or error}; check its permissions and free space") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another build is writing into {out_dir} right now; wait for it to finish or pick another dir") from None
        yield
    finally:
        os.close(handle)


def check_unlocked(storage: Storage) -> None:
    """Fail fast, before any component loads, when another build holds the output dir."""
    if storage.local_dir is not None and storage.local_dir.is_dir():
        with output_lock(storage.local_dir):
            pass


def remove_temp_files(storage: Storage, configs: list[str]) -> int:
    """Temp files of atomic writes left by killed workers (call when no worker is writing).
    An object store has none: nothing is ever put there under a temp name."""
    out_dir = storage.local_dir
    if out_dir is None:
        return 0
    removed = 0
    for directory in [out_dir, *(out_dir / name for name in configs), *(out_dir / STATS_DIR / name for name in configs)]:
        for path in directory.glob(".*.tmp-*") if directory.is_dir() else []:
            if TEMP_FILE.match(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def claim_output(state: OutputState, identity: dict[str, Any]) -> None:
    """Carry out ``state``: delete what it names, drop emptied dirs, record the identity."""
    storage, out_dir = state.storage, state.storage.location
    try:
        if storage.local_dir is not None:
            storage.local_dir.mkdir(parents=True, exist_ok=True)
        storage.delete(sorted(state.remove, reverse=True))
        for directory in sorted(state.dirs, key=lambda d: -len(d.parts)):  # deepest first
            if directory.is_dir() and not directory.is_symlink():
                with contextlib.suppress(OSError):
                    directory.rmdir()  # fails, harmlessly, unless empty
        if state.mode != "resume" and storage.local_dir is not None:
            write_json_atomic(storage.local_dir / STATS_DIR / IDENTITY_FILE, identity)
        elif state.mode != "resume":
            storage.put_bytes(f"{STATS_DIR}/{IDENTITY_FILE}", json_bytes(identity))
    except OSError as error:
        raise OutputError(f"cannot prepare --out {out_dir}: {error.strerror or error}; check its permissions and free space") from None
    if state.mode == "resume":
        log.info("resuming %s: %d work units complete, %d partial or stale files removed", out_dir, len(state.completed), len(state.remove))
    elif state.remove:
        log.info("replacing the build in %s: %d files removed", out_dir, len(state.remove))
    if state.kept_foreign:
        log.info("kept %d file(s) in %s that the build did not write: %s", len(state.kept_foreign), out_dir, _few(list(state.kept_foreign)))
