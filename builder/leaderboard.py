"""Leaderboard from score result files: a sorted markdown table and an FMR bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from builder.errors import BuilderError
from builder.fileio import atomic_write, write_bytes_atomic
from builder.manifest import load_json_bounded, validation_problem
from builder.metrics import upgrade_figures


class ResultRow(BaseModel):
    """The fields of one ``score --json`` result that leaderboards and cards read. Result files
    are shared and downloaded: they are checked, and nothing in them is ever run."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(max_length=200)
    model: str = Field(max_length=2000)
    benchmark: str = Field(max_length=2000)
    benchmark_id: str = Field(max_length=200)
    config: str = Field(max_length=200)
    sa: float = Field(ge=0, le=1)
    pa: float = Field(ge=0, le=1)  # the FMR numerator (files before the rename: read through upgrade_figures)
    pa_perturbed: Optional[float] = Field(None, ge=0, le=1)
    fmr: float = Field(ge=0, le=1e6)
    fmr_ci: Optional[list[float]] = Field(None, min_length=2, max_length=2)
    white_box: bool = False
    mode: str = "static"


def checked_rows(rows: Any, what: str) -> list[dict[str, Any]]:
    """``rows`` as result dicts, each checked against :class:`ResultRow`; one line otherwise."""
    if not isinstance(rows, list):
        raise BuilderError(f"{what}: not written by 'build-benchmark score --json' (no list of results)")
    rows = [upgrade_figures(row) if isinstance(row, dict) else row for row in rows]
    for index, row in enumerate(rows):
        try:
            ResultRow.model_validate(row)
        except ValidationError as error:
            raise BuilderError(f"{what}: result {index}: {validation_problem(error)}; give a file written by 'build-benchmark score --json'") from None
    return list(rows)


def result_files(paths: list[Path]) -> list[Path]:
    """The result files ``paths`` name: a directory (``score --models --out DIR``) is its ``*.json``."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise BuilderError(f"{path}: no result files (*.json) in this directory; give the --out DIR of 'score --models' or RESULT.json files")
            files.extend(found)
        else:
            files.append(path)
    return files


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in result_files(paths):
        payload = load_json_bounded(Path(path), f"result file {path}", max_bytes=64 << 20)
        rows.extend(checked_rows(payload.get("results") if isinstance(payload, dict) else None, f"result file {path}"))
    return rows


def leaderboard_markdown(rows: list[dict[str, Any]]) -> str:
    def ci(row: dict[str, Any], key: str) -> str:
        low, high = row.get(f"{key}_ci") or (None, None)
        return f" [{low:.1f}, {high:.1f}]" if low is not None and key == "fmr" else ""

    lines = [
        "| rank | model | benchmark | config | SA | PA | FMR (95% CI) | setting |",
        "|---:|---|---|---|---:|---:|---:|---|",
    ]
    ordered = sorted(rows, key=lambda r: (-r["fmr"], r["name"]))
    for rank, row in enumerate(ordered, 1):
        setting = "white-box" if row.get("white_box") else ("dynamic" if row.get("mode") == "dynamic" else "transfer")
        lines.append(
            f"| {rank} | {row['name']} (`{row['model']}`) | `{row['benchmark']}` ({row['benchmark_id'][:8]}) | {row['config']} | "
            f"{100 * row['sa']:.1f} | {100 * row['pa']:.1f} | {row['fmr']:.1f}{ci(row, 'fmr')} | {setting} |"
        )
    return "\n".join(lines) + "\n"


def leaderboard_chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ordered = sorted(rows, key=lambda r: r["fmr"])
    labels = [f"{r['name']} on {r['config']}" for r in ordered]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.2))
    errors = [[r["fmr"] - (r.get("fmr_ci") or [r["fmr"]] * 2)[0] for r in ordered], [(r.get("fmr_ci") or [r["fmr"]] * 2)[1] - r["fmr"] for r in ordered]]
    colors = ["tab:orange" if r.get("white_box") else "tab:blue" for r in ordered]
    axes.barh(labels, [r["fmr"] for r in ordered], xerr=errors, color=colors, capsize=3)
    axes.set_xlabel("FMR = PA / SA x 100 (orange: white-box, blue: transfer)")
    axes.set_xlim(0, max(100.0, max(r["fmr"] for r in ordered) * 1.05))
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120, metadata={"Software": None})
    plt.close(figure)


def write_leaderboard(paths: list[Path], out_dir: Path) -> tuple[Path, Path]:
    rows = load_results(paths)
    if not rows:
        raise BuilderError("no results in the given files")
    markdown, chart = out_dir / "leaderboard.md", out_dir / "fmr.png"
    write_bytes_atomic(markdown, ("# FMR leaderboard\n\n" + leaderboard_markdown(rows) + "\n![FMR](fmr.png)\n").encode())
    leaderboard_chart(rows, chart)
    return markdown, chart
