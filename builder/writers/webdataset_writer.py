"""WebDataset tars: ``<key>.<png|webp>``, ``<key>.original.<ext>``, ``<key>.cls``, ``<key>.json``.

Members are written in key order with a fixed mtime, owner and mode, so the same samples
give the same bytes.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Optional, Sequence

from builder.fileio import atomic_write
from builder.writers.base import WRITERS, OutputSample, ShardSchema

FIXED_MTIME = 1_577_836_800.0  # 2020-01-01T00:00:00Z


@WRITERS.register("webdataset", description="tar shards readable by webdataset.WebDataset")
class WebDatasetWriter:
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

    @staticmethod
    def _samples(path: Path) -> list[dict[str, bytes]]:
        """The tar's samples in member (= key) order: extension -> bytes."""
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    key, _, extension = member.name.partition(".")
                    samples.setdefault(key, {})[extension] = handle.read()
        return [samples[key] for key in sorted(samples)]

    def read_records(self, path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
        records = [json.loads(parts["json"]) for parts in self._samples(path)]
        return [{name: record.get(name) for name in columns} for record in records]

    def read_images(self, path: Path, rows: Sequence[int]) -> list[tuple[bytes, Optional[bytes]]]:
        samples = self._samples(path)
        found = []
        for row in rows:
            parts = samples[row]
            image = next(data for extension, data in parts.items() if extension not in ("json", "cls") and not extension.startswith("original."))
            original = next((data for extension, data in parts.items() if extension.startswith("original.")), None)
            found.append((image, original))
        return found
