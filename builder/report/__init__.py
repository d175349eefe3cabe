"""``build-benchmark report``: score results compared by looking, on one self-contained page.

Sections: FMR per model with its interval, the transfer matrix as a heatmap, FMR per class,
accuracy against attribute values (attribute builds) and, per model, the perturbed images it
gets wrong. The last two (and per-class figures of a result scored without ``--per-class``)
need the result's per-sample predictions and the benchmark it was scored on; a section that
cannot be drawn for a result says why instead, and the rest of the page is still written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from builder.errors import BuilderError
from builder.fileio import write_bytes_atomic
from builder.report.inputs import Benchmarks, open_given, read_results
from builder.report.page import render_page
from builder.report.sections import Section, attribute_section, errors_section, fmr_section, per_class_section, transfer_section

log = logging.getLogger(__name__)

#: wrong images shown per model by default (a 1000-class zoo page stays a few MB)
PER_MODEL = 24


@dataclass(frozen=True)
class ReportSummary:
    """What was written: the page, its size, how many results, and each section."""

    path: Path
    size: int
    results: int
    sections: list[Section]

    def line(self) -> str:
        """The CLI's summary line."""
        skipped = [section.id for section in self.sections if not section.shown]
        shown = len(self.sections) - len(skipped)
        tail = f"; skipped: {', '.join(skipped)} (the page says why)" if skipped else ""
        return f"wrote {self.path} ({self.size} bytes): {self.results} result(s), {shown} of {len(self.sections)} sections{tail}"


def write_report(results: Sequence[Path], out: Path, *, benchmarks: Sequence[str] = (), per_model: int = PER_MODEL,
                 cache_dir: Optional[Path] = None, storage_options: Sequence[tuple[str, str]] = ()) -> ReportSummary:
    """Read the result files (or dirs of them), find their benchmarks (``benchmarks``: copies
    to use, matched by manifest id), and write the page to ``out`` atomically."""
    if per_model < 1:
        raise BuilderError(f"per_model must be at least 1, got {per_model}")
    rows = read_results(results)
    finder = Benchmarks(open_given(benchmarks, cache_dir=cache_dir, storage_options=storage_options))
    joinings = [finder.resolve(result) for result in rows]
    sections = [
        fmr_section(rows),
        transfer_section(rows),
        per_class_section(rows, joinings),
        attribute_section(rows, joinings),
        errors_section(rows, joinings, per_model),
    ]
    data = render_page(rows, sections).encode("utf-8")
    write_bytes_atomic(out, data)
    for section in sections:
        if not section.shown:
            log.info("report: section %s skipped: %s", section.id, " ".join(section.notes) or "nothing to show")
    return ReportSummary(out, len(data), len(rows), sections)


__all__ = ["ReportSummary", "write_report", "PER_MODEL"]
