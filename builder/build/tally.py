"""Per-config counts: what each unit's stats file records, and what the summary adds up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder.engine import STOP_NON_FINITE


@dataclass
class ConfigTally:
    """Running counts of one config (reference model) over the units written so far."""

    samples: int = 0
    perturbed: int = 0
    steps: int = 0
    correct_before: int = 0
    correct_after_perturbed: int = 0
    correct_after: int = 0
    non_finite: int = 0

    COUNTS = ("samples", "perturbed", "steps", "correct_before", "correct_after_perturbed", "correct_after", "non_finite")

    @staticmethod
    def counts_of(records: list[dict[str, Any]]) -> dict[str, int]:
        """What one work unit adds to the tally (stored in its stats file, for resume)."""
        return {
            "samples": len(records),
            "perturbed": sum(r["perturbed"] for r in records),
            "steps": sum(r["steps"] for r in records if r["perturbed"]),
            "correct_before": sum(r["pred_before"] == r["label"] for r in records),
            "correct_after_perturbed": sum(r["perturbed"] and r["pred_after"] == r["label"] for r in records),
            "correct_after": sum(r["pred_after"] == r["label"] for r in records),
            "non_finite": sum(r["stop_reason"] == STOP_NON_FINITE for r in records),
        }

    def add(self, counts: dict[str, int]) -> None:
        for key in self.COUNTS:
            setattr(self, key, getattr(self, key) + int(counts.get(key, 0)))

    def summary(self) -> dict[str, Any]:
        share = self.perturbed / self.samples if self.samples else 0.0
        sa = self.correct_before / self.samples if self.samples else 0.0
        pa = self.correct_after / self.samples if self.samples else 0.0
        return {
            "num_samples": self.samples,
            "num_perturbed": self.perturbed,
            "perturbed_share": round(share, 6),
            "mean_steps": round(self.steps / self.perturbed, 4) if self.perturbed else 0.0,
            "sa": round(sa, 6),
            "pa": round(pa, 6),
            "pa_perturbed": round(self.correct_after_perturbed / self.perturbed, 6) if self.perturbed else 0.0,
            "fmr": round(100 * pa / sa, 4) if sa else 0.0,
            "num_non_finite": self.non_finite,
        }
