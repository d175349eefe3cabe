"""Work units: contiguous ranges of source samples, each written as one shard per config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkUnit:
    index: int
    start: int
    stop: int
    total_units: int

    def shard_stem(self, split: str) -> str:
        return f"{split}-{self.index:05d}-of-{self.total_units:05d}"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_units(num_samples: int, samples_per_shard: int) -> list[WorkUnit]:
    count = max(1, -(-num_samples // samples_per_shard))
    return [
        WorkUnit(i, i * samples_per_shard, min(num_samples, (i + 1) * samples_per_shard), count)
        for i in range(count)
        if i * samples_per_shard < num_samples
    ]


def sample_key(index: int) -> str:
    """Stable, dot-free key from the source index."""
    return f"{index:08d}"
