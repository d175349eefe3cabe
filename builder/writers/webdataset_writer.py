"""WebDataset tars: ``<key>.<png|webp>``, ``<key>.original.<ext>``, ``<key>.cls``, ``<key>.json``.

Members are written in key order with a fixed mtime, owner and mode, so the same samples
give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

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
