"""Parquet shards with the ``datasets`` Image struct, ClassLabel labels and the record columns.

The ``datasets`` features travel in the schema metadata, so ``load_dataset`` types the
columns the same way whether it reads the card or the files alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from builder.fileio import atomic_write
from builder.images import SIGNATURE_BYTES, image_problem
from builder.writers.base import ATTRIBUTES_FIELD, AUDIT_COLUMNS, RECORD_FIELDS, WRITERS, OutputSample, ShardSchema, ShardWriter

ARROW_TYPES = {"string": "string", "bool": "bool_", "int32": "int32", "float32": "float32", "class_label": "int64"}


def arrow_schema(schema: ShardSchema) -> Any:
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field("image", image)]
    if schema.keep_originals:
        fields.append(pa.field("original_image", image))
    fields += [pa.field(name, getattr(pa, ARROW_TYPES[dtype])()) for name, dtype in RECORD_FIELDS]
    if schema.attributes:
        fields.append(pa.field(ATTRIBUTES_FIELD, pa.struct([(name, pa.float32()) for name in schema.attributes])))
    metadata = {"huggingface": json.dumps({"info": {"features": schema.features()}})}
    return pa.schema(fields, metadata=metadata)


@WRITERS.register("parquet", description="Parquet shards for datasets.load_dataset")
class ParquetWriter(ShardWriter):
    suffix = ".parquet"

    def write(self, path: Path, samples: Sequence[OutputSample], schema: ShardSchema) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ordered = sorted(samples, key=lambda s: s.key)
        extension = schema.image_format
        columns: dict[str, list[Any]] = {
            "image": [{"bytes": s.image, "path": f"{s.key}.{extension}"} for s in ordered]
        }
        if schema.keep_originals:
            columns["original_image"] = [
                {"bytes": s.original, "path": f"{s.key}.original.{extension}"} if s.original is not None else None
                for s in ordered
            ]
        for name in schema.record_fields:
            columns[name] = [s.record[name] for s in ordered]
        table = pa.Table.from_pydict(columns, schema=arrow_schema(schema))
        with atomic_write(path) as handle:
            pq.write_table(table, handle, compression="zstd", row_group_size=100)

    def read_records(self, path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=list(columns)).to_pylist()

    def audit(self, path: Path, schema: ShardSchema) -> tuple[list[dict[str, Any]], list[str]]:
        """The records, and every sample whose image (or original, when kept) is missing or not
        an image of the schema's encoding, read a row group at a time (not decoded)."""
        import pyarrow.parquet as pq

        rows = self.read_records(path, AUDIT_COLUMNS)
        keys = [row.get("key") for row in rows]
        parquet = pq.ParquetFile(path)
        present = parquet.schema_arrow.names
        wanted = ["image"] + (["original_image"] if schema.keep_originals else [])
        problems = [f"has no column {column}" for column in wanted if column not in present]
        for column in (column for column in wanted if column in present):
            position = 0
            for batch in parquet.iter_batches(batch_size=256, columns=[column]):
                for cell in batch.column(0).to_pylist():
                    problem = image_problem(cell["bytes"][:SIGNATURE_BYTES] if cell and cell["bytes"] else None, schema.image_format)
                    if problem:
                        problems.append(f"sample {keys[position] if position < len(keys) else position}: its {column} is {problem}")
                    position += 1
        return rows, problems

    def read_images(self, path: Path, rows: Sequence[int]) -> list[tuple[bytes, Optional[bytes]]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with_originals = "original_image" in pq.read_schema(path).names
        picked = pa.array(list(rows), type=pa.int64())  # typed: an empty list would be a null array, which take refuses
        table = pq.read_table(path, columns=["image", "original_image"] if with_originals else ["image"]).take(picked)
        images = table.column("image").to_pylist()
        originals = table.column("original_image").to_pylist() if with_originals else [None] * len(images)
        return [(image["bytes"], original["bytes"] if original else None) for image, original in zip(images, originals, strict=False)]
