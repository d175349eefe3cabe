"""WebDataset tars: ``<key>.<png|webp>``, ``<key>.original.<ext>``, ``<key>.cls``, ``<key>.json``.

Members are written in key order with a fixed mtime, owner and mode, so the same samples
give the same bytes.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from builder.fileio import atomic_write
from builder.manifest import json_depth_ok
from builder.writers.base import WRITERS, OutputSample, ShardSchema, ShardWriter

FIXED_MTIME = 1_577_836_800.0  # 2020-01-01T00:00:00Z
MAX_RECORD_BYTES = 1 << 20  # a sample's .json member; the build writes a few hundred bytes


@WRITERS.register("webdataset", description="tar shards readable by webdataset.WebDataset")
class WebDatasetWriter(ShardWriter):
    suffix = ".tar"

    def write(self, path: Path, samples: Sequence[OutputSample], schema: ShardSchema) -> None:
        import webdataset as wds

        with atomic_write(path) as handle:
            with wds.TarWriter(handle, user="fmr", group="fmr", mode=0o444, encoder=False, mtime=FIXED_MTIME) as tar:
                self._write_all(tar, samples, schema)

    @staticmethod
    def _write_all(tar: object, samples: Sequence[OutputSample], schema: ShardSchema) -> None:
        for sample in sorted(samples, key=lambda s: s.key):
            entry = {
                "__key__": sample.key,
                schema.image_format: sample.image,
                "cls": str(sample.record["label"]).encode(),
                "json": json.dumps(sample.record, sort_keys=True).encode(),
            }
            if schema.keep_originals and sample.original is not None:
                entry[f"original.{schema.image_format}"] = sample.original
            tar.write(entry)  # type: ignore[attr-defined]

    def read_records(self, path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
        members = _members(path, lambda extension: extension == "json")
        return [{name: _record(parts).get(name) for name in columns} for _, parts in sorted(members.items())]

    def read_images(self, path: Path, rows: Sequence[int]) -> list[tuple[bytes, Optional[bytes]]]:
        """Only the wanted samples' image members are read. Rows count the samples that have a
        record (``.json``), in key order, as :meth:`read_records` does: a stray member is no row."""
        with tarfile.open(path, "r:") as tar:
            keys = sorted({key for key, _, extension in (member.name.partition(".") for member in tar.getmembers()) if extension == "json"})
        if any(not 0 <= row < len(keys) for row in rows):
            raise ValueError(f"asked for rows up to {max(rows)}, but it holds {len(keys)} samples")
        wanted = {keys[row] for row in rows}
        members = _members(path, lambda extension: extension not in ("json", "cls"), wanted)
        found = []
        for row in rows:
            parts = members.get(keys[row], {})
            image = next((data for extension, data in parts.items() if not extension.startswith("original.")), None)
            if image is None:
                raise ValueError(f"sample {keys[row]} has no image member")
            original = next((data for extension, data in parts.items() if extension.startswith("original.")), None)
            found.append((image, original))
        return found

    def audit(self, path: Path, schema: ShardSchema) -> tuple[list[dict[str, Any]], list[str]]:
        """Records from the ``.json`` members, and the samples lacking a part, whose ``.cls`` or
        ``.json`` disagrees with the member names, or whose image is no image (by its first bytes)."""
        extension = schema.image_format
        needed = (extension, "cls", "json") + ((f"original.{extension}",) if schema.keep_originals else ())
        names, image_problems = _listing(path, extension)
        parts: dict[str, set[str]] = {}
        for name in names:
            key, _, part = name.partition(".")
            parts.setdefault(key, set()).add(part)
        payloads = _members(path, lambda part: part in ("json", "cls"))
        records, problems = [], []
        for key, have in parts.items():
            missing = [p for p in needed if p not in have]
            if missing:
                problems.append(f"sample {key} lacks {', '.join('.' + p for p in missing)}")
                continue
            record = _audited(key, payloads[key]["json"], payloads[key]["cls"], problems)
            if record is not None:
                records.append(record)
        return records, problems + image_problems


def _listing(path: Path, extension: str) -> tuple[list[str], list[str]]:
    """In one pass over the tar: every member's name, and the image members (perturbed and
    original) that are not images of ``extension`` by their first bytes (none is decoded, nor
    held in memory)."""
    from builder.images import SIGNATURE_BYTES, image_problem

    names, problems = [], []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            names.append(member.name)
            key, _, part = member.name.partition(".")
            handle = tar.extractfile(member) if member.isfile() and part in (extension, f"original.{extension}") else None
            problem = image_problem(handle.read(SIGNATURE_BYTES), extension) if handle is not None else None
            if problem:
                problems.append(f"sample {key}: its .{part} is {problem}")
    return names, problems


def _members(path: Path, keep: Callable[[str], bool], keys: Optional[set[str]] = None) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} of the tar's file members whose extension ``keep`` accepts
    (and whose key is in ``keys``, when given); other members' data is never read."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            if member.isfile() and keep(extension) and (keys is None or key in keys):
                handle = tar.extractfile(member)
                if handle is not None:
                    samples.setdefault(key, {})[extension] = handle.read()
    return samples


def record_json(payload: bytes) -> Any:
    """A sample's ``.json`` member, parsed within bounds (a tar may be downloaded); ValueError
    (UnicodeDecodeError and JSONDecodeError are ones) when it is not small, shallow, valid JSON."""
    if len(payload) > MAX_RECORD_BYTES or not json_depth_ok(payload.decode("utf-8")):
        raise ValueError("too large or too deeply nested")
    return json.loads(payload)


def _record(parts: dict[str, bytes]) -> dict[str, Any]:
    record = record_json(parts.get("json", b"{}"))
    if not isinstance(record, dict):
        raise ValueError("a sample's .json is not an object")
    return record


def _audited(key: str, payload: bytes, cls: bytes, problems: list[str]) -> Optional[dict[str, Any]]:
    try:
        data = record_json(payload)
    except ValueError:
        problems.append(f"{key}.json is not valid JSON")
        return None
    if not isinstance(data, dict):
        problems.append(f"{key}.json is not an object")
        return None
    if data.get("key") != key:
        problems.append(f"{key}.json has key {data.get('key')!r}, expected {key!r} (its member name)")
    if cls.decode("utf-8", "replace").strip() != str(data.get("label")):
        problems.append(f"{key}.cls is {cls[:20]!r} but {key}.json has label {data.get('label')!r}")
    return {"key": key, "label": data.get("label"), "class_name": data.get("class_name"), "perturbed": data.get("perturbed")}
