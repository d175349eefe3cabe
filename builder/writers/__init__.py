"""Shard writers. Each kind registers in ``WRITERS`` and writes one shard atomically."""

from builder.writers.base import WRITERS, OutputSample, ShardSchema, ShardWriter

# importing the modules registers their kinds
from builder.writers import parquet, webdataset_writer  # noqa: E402,F401

__all__ = ["WRITERS", "OutputSample", "ShardSchema", "ShardWriter"]
