"""Leaderboard from score result files: a sorted markdown table and an FMR bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.fileio import atomic_write, write_bytes_atomic


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise BuilderError(f"result file {path}: cannot read it ({error})") from None
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, list) or not all(isinstance(r, dict) and "fmr" in r for r in results):
            raise BuilderError(f"result file {path}: not written by 'build-benchmark score --json'")
        rows.extend(results)
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
            f"{100 * row['sa']:.1f} | {100 * row['pa_all']:.1f} | {row['fmr']:.1f}{ci(row, 'fmr')} | {setting} |"
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
