"""Shard writers. Each kind registers in ``WRITERS`` and writes one shard atomically."""

# importing the modules registers their kinds
from builder.writers import parquet, webdataset_writer  # noqa: E402,F401
from builder.writers.base import WRITERS, OutputSample, ShardSchema, ShardWriter

__all__ = ["WRITERS", "OutputSample", "ShardSchema", "ShardWriter"]
