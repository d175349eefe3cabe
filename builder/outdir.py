"""The output directory's life cycle: fresh, replaced (--overwrite) or resumed.

A build writes ``_stats/build.json`` (what is being built) before any shard, and one
``_stats/<config>/<shard>.json`` after each finished work unit. Re-running the same command
keeps every unit whose stats file lists files that still exist with the recorded sha256,
deletes everything else the build wrote, and does only the missing units.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from builder.errors import OutputError
from builder.fileio import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

STATS_DIR = "_stats"
IDENTITY_FILE = "build.json"
FINAL_FILES = ("manifest.json", "README.md", "preview.png", "rejects.jsonl", "gallery.html", "leaderboard.json")


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


def _is_ours(out_dir: Path) -> bool:
    return (out_dir / STATS_DIR).is_dir() or (out_dir / "manifest.json").is_file()


def _start_fresh(out_dir: Path, identity: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create --out {out_dir}: {error.strerror}") from None
    write_json_atomic(out_dir / STATS_DIR / IDENTITY_FILE, identity)
    return {}


def open_output(out_dir: Path, identity: dict[str, Any], overwrite: bool) -> dict[tuple[str, str], dict[str, Any]]:
    """Prepare ``out_dir``; returns the stats of work units already complete, by (config, shard stem)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; give a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return _start_fresh(out_dir, identity)
    if not _is_ours(out_dir):
        verb = "overwrite" if overwrite else "write into"
        raise OutputError(f"refusing to {verb} {out_dir}: it is not empty and does not look like a benchmark dir")
    if overwrite:
        shutil.rmtree(out_dir)
        return _start_fresh(out_dir, identity)
    identity_path = out_dir / STATS_DIR / IDENTITY_FILE
    if not identity_path.is_file():
        raise OutputError(f"--out {out_dir} holds a benchmark from an older version; pass --overwrite or pick a new dir")
    previous = json.loads(identity_path.read_text())
    if previous != identity:
        raise OutputError(
            f"--out {out_dir} was built with different settings ({first_difference(previous, identity)}); "
            "pass --overwrite to start over or pick a new dir"
        )
    return _keep_complete_units(out_dir)


def _unit_is_intact(out_dir: Path, stats: dict[str, Any]) -> bool:
    for file in stats.get("files", {}).values():
        path = out_dir / file["path"]
        if not path.is_file() or path.stat().st_size != file["bytes"] or sha256_file(path) != file["sha256"]:
            return False
    return True


def _keep_complete_units(out_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    completed: dict[tuple[str, str], dict[str, Any]] = {}
    keep: set[Path] = {out_dir / STATS_DIR / IDENTITY_FILE}
    for stats_path in sorted((out_dir / STATS_DIR).glob("*/*.json")):
        try:
            stats = json.loads(stats_path.read_text())
        except json.JSONDecodeError:
            continue
        if _unit_is_intact(out_dir, stats):
            completed[(stats["config"], stats_path.stem)] = stats
            keep.add(stats_path)
            keep.update(out_dir / f["path"] for f in stats["files"].values())
    removed = 0
    for path in sorted(out_dir.rglob("*"), reverse=True):
        final = path.parent == out_dir and path.name in FINAL_FILES  # replaced atomically at the end
        if path.is_file() and path not in keep and not final:
            path.unlink()
            removed += 1
    log.info("resuming %s: %d work units complete, %d partial or stale files removed", out_dir, len(completed), removed)
    return completed
