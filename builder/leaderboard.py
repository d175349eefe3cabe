"""Leaderboard from score result files: a sorted markdown table and an FMR bar chart."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from builder.errors import BuilderError
from builder.fileio import atomic_write, begins_with, write_bytes_atomic
from builder.manifest import load_json_bounded, validation_problem
from builder.metrics import upgrade_figures

log = logging.getLogger(__name__)


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


#: the optional per-sample field of a result (``ScoreResult.sample_predictions``); files written
#: before it existed have none, and a leaderboard or card never needs it
PREDICTIONS_FIELD = "sample_predictions"
#: the most samples one result's predictions may list (a result file is at most 64 MiB anyway)
MAX_PREDICTIONS = 5_000_000
#: a result file's size bound: one ImageNet result with its sample_predictions is about 0.9 MB
MAX_RESULT_BYTES = 512 << 20


class SamplePredictions(BaseModel):
    """``sample_predictions`` of a result: three lists of one length, in the benchmark's order."""

    model_config = ConfigDict(extra="forbid", strict=True)

    keys: list[str] = Field(max_length=MAX_PREDICTIONS)
    pred_perturbed: list[int] = Field(max_length=MAX_PREDICTIONS)
    pred_original: list[int] = Field(max_length=MAX_PREDICTIONS)

    @model_validator(mode="after")
    def _one_length(self) -> "SamplePredictions":
        if not len(self.keys) == len(self.pred_perturbed) == len(self.pred_original):
            raise ValueError(f"keys, pred_perturbed and pred_original differ in length ({len(self.keys)}, {len(self.pred_perturbed)}, {len(self.pred_original)})")
        return self


def sample_predictions(row: dict[str, Any], what: str) -> Optional[SamplePredictions]:
    """The checked per-sample predictions of a result row; None for a result without them."""
    raw = row.get(PREDICTIONS_FIELD)
    if raw is None:
        return None
    try:
        return SamplePredictions.model_validate(raw)
    except ValidationError as error:
        raise BuilderError(f"{what}: {PREDICTIONS_FIELD}.{validation_problem(error)}; re-score with 'build-benchmark score --json'") from None


def results_bytes(payload: dict[str, Any]) -> bytes:
    """A results file as every JSON file is written (indented, sorted keys), except that each
    result's per-sample lists stay on one line: 50,000 samples take about 1 MB, not 2.6."""
    import json
    import secrets

    from builder.fileio import json_bytes

    nonce, compact = secrets.token_hex(8), dict[str, str]()
    rows = []
    for row in payload.get("results", []):
        if isinstance(row, dict) and row.get(PREDICTIONS_FIELD) is not None:
            token = f"{PREDICTIONS_FIELD}-{nonce}-{len(compact)}"
            compact[token] = json.dumps(row[PREDICTIONS_FIELD], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            row = {**row, PREDICTIONS_FIELD: token}
        rows.append(row)
    text = json_bytes({**payload, "results": rows}).decode("utf-8")
    for token, value in compact.items():
        text = text.replace(f'"{token}"', value, 1)
    return text.encode("utf-8")


def without_predictions(row: dict[str, Any]) -> dict[str, Any]:
    """A result row without its per-sample predictions (what a leaderboard keeps)."""
    return {key: value for key, value in row.items() if key != PREDICTIONS_FIELD}


def checked_rows(rows: Any, what: str) -> list[dict[str, Any]]:
    """``rows`` as result dicts, each checked against :class:`ResultRow`; one line otherwise."""
    if not isinstance(rows, list):
        raise BuilderError(f"{what}: not written by 'build-benchmark score --json' (no list of results)")
    rows = [upgrade_figures(row) if isinstance(row, dict) else row for row in rows]
    kept = []
    for index, row in enumerate(rows):
        if isinstance(row, dict) and "fmr" in row and _undefined(row["fmr"]):
            log.warning("%s: result %d (%s on %s) left out: SA is 0, so FMR is undefined", what, index, row.get("name"), row.get("config"))
            continue
        try:
            ResultRow.model_validate(row)
        except ValidationError as error:
            raise BuilderError(f"{what}: result {index}: {validation_problem(error)}; give a file written by 'build-benchmark score --json'") from None
        kept.append(row)
    return kept


def _undefined(value: Any) -> bool:
    """FMR of a model with SA 0: null in a result file (NaN in files written before that)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


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


def row_identity(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """What makes two result rows one result (benchmark build, config, model name and spec): a
    file given twice, or a model scored again, is one row of a leaderboard, not two."""
    spec = json.dumps(row.get("model_spec", row["model"]), sort_keys=True)
    return (row["benchmark_id"], row["config"], row["name"], spec)


def unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each result once, the last given winning (as a card's merged leaderboard):
    ``leaderboard a.json a.json`` ranked the same result 1st and 2nd."""
    kept = {row_identity(row): row for row in rows}
    if len(kept) < len(rows):
        log.info("%d result(s) given more than once; each is listed once", len(rows) - len(kept))
    return list(kept.values())


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in result_files(paths):
        payload = load_json_bounded(Path(path), f"result file {path}", max_bytes=MAX_RESULT_BYTES)
        rows.extend(checked_rows(payload.get("results") if isinstance(payload, dict) else None, f"result file {path}"))
    return rows


def leaderboard_markdown(rows: list[dict[str, Any]], *, for_card: bool = False) -> str:
    """The sorted table of ``rows``. ``for_card``: the table of a benchmark's own card, where
    every row is that benchmark (no benchmark column, which would show where the scorer kept
    its copy) and a model's local folders are left out (only file names are published)."""

    def ci(row: dict[str, Any], key: str) -> str:
        low, high = row.get(f"{key}_ci") or (None, None)
        return f" [{low:.1f}, {high:.1f}]" if low is not None and key == "fmr" else ""

    lines = (["| rank | model | config | SA | PA | FMR (95% CI) | setting |", "|---:|---|---|---:|---:|---:|---|"] if for_card else
             ["| rank | model | benchmark | config | SA | PA | FMR (95% CI) | setting |", "|---:|---|---|---|---:|---:|---:|---|"])
    from builder.reporting import setting_of

    ordered = sorted(rows, key=lambda r: (-r["fmr"], r["name"]))
    rank, previous = 0, None
    for index, row in enumerate(ordered, 1):
        if row["fmr"] != previous:  # equal FMR, equal rank (1, 2, 2, 4)
            rank, previous = index, row["fmr"]
        model = without_folders(row["model"]) if for_card else row["model"]
        where = "" if for_card else f" {_code(row['benchmark'])} ({_cell(row['benchmark_id'][:8])}) |"
        lines.append(
            f"| {rank} | {_cell(row['name'])} ({_code(model)}) |{where} {_cell(row['config'])} | "
            f"{100 * row['sa']:.1f} | {100 * row['pa']:.1f} | {row['fmr']:.1f}{ci(row, 'fmr')} | {setting_of(row.get('mode'), row.get('white_box'))} |"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """``text`` as one cell of a Markdown table: result files are shared and downloaded, so a
    name may not end the row ('|', a line break) nor carry HTML, a link or an image into a
    published card; it reads as written."""
    import html

    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]!|#])", r"\\\1", text)


def _code(text: str) -> str:
    """``text`` as a code span in a table cell (where HTML is shown as written): one line, no
    backtick to end the span early, '|' escaped as GFM tables need inside code too."""
    return "`" + " ".join(str(text).split()).replace("`", "'").replace("|", "\\|") + "`"


#: an absolute or home-relative path's folders, up to its last '/' (in a spec such as py:/home/me/net.py:fn)
_FOLDERS = re.compile(r"(?<![\w.-])(?:~|/)[^\s:`|]*/")


def without_folders(spec: str) -> str:
    """``spec`` with the folders of the local paths it names left out: ``py:/home/me/nets.py:small``
    is published as ``py:nets.py:small``."""
    return _FOLDERS.sub("", spec)


def public_row(row: dict[str, Any]) -> dict[str, Any]:
    """A result row fit to publish beside a card: the local paths it names (the benchmark as
    typed, a model's file, a checkpoint) keep only their last part, and credentials in a URL
    are masked. The card's stored leaderboard keeps only such rows, so a re-scored model still
    replaces its own row."""
    return {key: _public(value) if key in _LOCATION_FIELDS else value for key, value in row.items()}


#: the fields of a result row that name files and folders (the figures and class names do not)
_LOCATION_FIELDS = ("benchmark", "model", "model_spec", "reference_model")


def _public(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_public(item) for item in value]
    if not isinstance(value, str):
        return value
    if "://" in value:  # a location others can reach, less its credentials
        from builder.checkpoints import redacted

        return redacted(value)
    if value.startswith(("/", "~", "./", "../")):
        return value.rstrip("/").rpartition("/")[2] or value
    return without_folders(value)


#: each setting's bar colour in the FMR chart
SETTING_COLORS = {"white-box": "tab:orange", "transfer": "tab:blue", "dynamic": "tab:green"}


def fmr_figure(rows: list[dict[str, Any]]) -> Any:
    """Horizontal FMR bars with their 95% intervals, lowest first (a matplotlib Figure; the
    leaderboard saves it as PNG, the report as inline SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from builder.reporting import distinct_names

    ordered = sorted(rows, key=lambda r: r["fmr"])
    several = len({r["benchmark_id"] for r in ordered}) > 1
    labels = distinct_names([f"{r['name']} on {r['config']}" + (f" ({r['benchmark_id'][:8]})" if several else "") for r in ordered])
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(ordered) + 1.2))
    errors = [[_span(r, 0) for r in ordered], [_span(r, 1) for r in ordered]]
    from builder.reporting import setting_of

    settings = [setting_of(r.get("mode"), r.get("white_box")) for r in ordered]
    colors = [SETTING_COLORS[setting] for setting in settings]
    positions = list(range(len(ordered)))  # one bar per result: equal labels on a categorical axis would share one
    axes.barh(positions, [r["fmr"] for r in ordered], xerr=errors, color=colors, capsize=3)
    axes.set_yticks(positions, labels)
    legend = ", ".join(f"{SETTING_COLORS[setting][4:]}: {setting}" for setting in SETTING_COLORS if setting in settings)
    axes.set_xlabel(f"FMR = PA / SA x 100 ({legend})")
    axes.set_xlim(0, max(100.0, max(r["fmr"] for r in ordered) * 1.05))
    figure.tight_layout()
    return figure


def _span(row: dict[str, Any], end: int) -> float:
    """How far the interval's low (0) or high (1) end lies from the FMR: 0 without an interval,
    or where a NaN or an interval not holding the point would draw a negative error bar."""
    low_high = row.get("fmr_ci") or [row["fmr"]] * 2
    span = float(low_high[1]) - row["fmr"] if end else row["fmr"] - float(low_high[0])
    return span if span > 0 else 0.0


def leaderboard_chart(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib import pyplot as plt

    figure = fmr_figure(rows)
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120, metadata={"Software": None})
    plt.close(figure)


#: how leaderboard.md begins (the pair leaderboard.md + fmr.png is the tool's own when it does)
LEADERBOARD_HEADING = "# FMR leaderboard\n"


def read_result_file(path: Path) -> Optional[dict[str, Any]]:
    """The payload of ``path`` when it is a result file ``score --json`` wrote (its tool named
    in it); None for any other file, which is the user's and never taken or replaced."""
    try:
        payload = load_json_bounded(path, str(path), max_bytes=MAX_RESULT_BYTES)
    except BuilderError:
        return None
    ours = isinstance(payload, dict) and isinstance(payload.get("tool"), dict) and payload["tool"].get("name") == "fmr-builder"
    return payload if ours else None


def is_result_file(path: Path) -> bool:
    """Whether ``path`` is a result file ``score --json`` wrote (its tool named in it)."""
    return read_result_file(path) is not None


def write_leaderboard(paths: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """``DIR/leaderboard.md`` and ``DIR/fmr.png`` of the results; a pair already there is
    replaced only when it is the tool's own (its markdown begins as this one does)."""
    rows = unique_rows(load_results(paths))
    if not rows:
        raise BuilderError("no results in the given files")
    markdown, chart = out_dir / "leaderboard.md", out_dir / "fmr.png"
    ours = begins_with(markdown, LEADERBOARD_HEADING)
    foreign = [path.name for path in (markdown, chart) if path.exists() and not ours]
    if foreign:
        raise BuilderError(f"--out {out_dir}: {', '.join(foreign)} is there and was not written by 'build-benchmark leaderboard'; "
                           "give another --out, or move it")
    write_bytes_atomic(markdown, (LEADERBOARD_HEADING + "\n" + leaderboard_markdown(rows) + "\n![FMR](fmr.png)\n").encode())
    leaderboard_chart(rows, chart)
    return markdown, chart
