"""A zoo of models scored in one process: ``score --benchmark B --models zoo.yaml --out DIR``.

The zoo file is a YAML list of model specs, each with a ``name``. Each model is loaded in turn;
its results go to ``DIR/<name>.json`` (what ``score --json`` writes for it) and all of them to
``DIR/table.md``. A model already scored on the same benchmarks and configs with the same spec
is skipped (``--overwrite`` scores it again; a file of anything else is refused), and one that
fails to load or score is listed at the end instead of stopping the others; the table shows
only this run's models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from builder.config import ModelSpec, format_validation_error
from builder.errors import BuilderError, RecipeError
from builder.fileio import begins_with, write_bytes_atomic
from builder.leaderboard import results_bytes

log = logging.getLogger(__name__)

#: the largest zoo a file may list (each entry loads a model)
MAX_MODELS = 1000


@dataclass
class ZooOutcome:
    """What one zoo run did, model by model."""

    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def load_zoo(path: Path) -> list[ModelSpec]:
    """The zoo file's specs, each with a unique ``name`` (it names its result file)."""
    from builder.safeyaml import load_yaml_text, read_recipe_text

    if not path.is_file():
        raise RecipeError(f"--models {path}: no such file; give a YAML list of model specs")
    entries = load_yaml_text(read_recipe_text(path), what=f"--models {path}")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_MODELS:
        raise RecipeError(f"--models {path}: expected a list of 1 to {MAX_MODELS} model specs ({{name: ..., model: ...}}); fix the file")
    specs: list[ModelSpec] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise RecipeError(f"--models {path}: entry {index} needs a name (it names DIR/<name>.json); add 'name: <slug>'")
        try:
            specs.append(ModelSpec.model_validate(entry))
        except ValidationError as error:
            raise format_validation_error(error, ModelSpec, ("--models", str(index))) from None
    names = [spec.config_name for spec in specs]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:
        raise RecipeError(f"--models {path}: the name '{repeated}' is used twice; give each model its own name")
    return specs


def result_payload(results: list[Any]) -> dict[str, Any]:
    """What ``score --json`` writes: the tool, and every result."""
    from builder import __version__

    return {"tool": {"name": "fmr-builder", "version": __version__}, "results": [result.to_json() for result in results]}


def score_zoo(specs: list[ModelSpec], out_dir: Path, score_one: Callable[[ModelSpec], list[Any]], *,
              planned: frozenset[tuple[str, str]], overwrite: bool = False) -> ZooOutcome:
    """Score each spec with ``score_one`` on every ``planned`` (benchmark_id, config) pair, writing
    its file as it goes, so an interrupted zoo resumes where it stopped; then the table of this
    run's models. A file counts as scored before only when it holds this very plan and spec."""
    outcome = ZooOutcome(skipped=_scored_before(out_dir, specs, planned, overwrite))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [spec.config_name for spec in specs]
    try:
        for spec in specs:
            if spec.config_name not in outcome.skipped:
                _score_model(spec, out_dir / f"{spec.config_name}.json", score_one, outcome)
    finally:  # an unexpected error still leaves the table of what this run holds, not an older one
        shown = set(outcome.scored) | set(outcome.skipped)
        notes = {name: _note(out_dir, name, outcome.failed.get(name)) for name in names if name not in shown}
        write_table(out_dir, [name for name in names if name in shown], notes)
    return outcome


def _score_model(spec: ModelSpec, target: Path, score_one: Callable[[ModelSpec], list[Any]], outcome: ZooOutcome) -> None:
    """One model: its file written, or its failure listed (the others go on)."""
    try:
        results = score_one(spec)
    except BuilderError as error:  # a model that cannot be loaded or scored
        log.warning("%s: failed: %s", spec.config_name, error)
        outcome.failed[spec.config_name] = str(error)
        return
    write_bytes_atomic(target, results_bytes(result_payload(results)))
    outcome.scored.append(spec.config_name)


def _note(out_dir: Path, name: str, failure: str | None) -> str:
    """Why a zoo model is not in this run's table (its earlier file, if any, stays on disk)."""
    kept = f"; its earlier {name}.json is kept, not shown" if (out_dir / f"{name}.json").is_file() else ""
    if failure is not None:
        return f"failed in this run: {failure}{kept}"
    return f"not scored: the run stopped before it was done{kept}; run the zoo again"


#: how the zoo's table begins (it is the zoo's own when it does)
TABLE_HEADING = "# FMR of the zoo\n"


def _scored_before(out_dir: Path, specs: list[ModelSpec], planned: frozenset[tuple[str, str]], overwrite: bool) -> list[str]:
    """Before any model is scored: the zoo's models whose file already holds this run's results.
    Files in ``out_dir`` are the zoo's own or refused (a user's ``resnet.json`` was taken as
    scored before, their ``table.md`` replaced), and without ``overwrite`` one of another
    benchmark or spec is refused, not skipped (its figures were shown as this run's)."""
    from builder.leaderboard import read_result_file

    done = []
    for spec in specs:
        name = f"{spec.config_name}.json"
        if not (out_dir / name).exists():
            continue
        payload = read_result_file(out_dir / name)
        if payload is None:
            raise BuilderError(f"--out {out_dir}: {name} is there and was not written by 'build-benchmark score'; "
                               "give another --out, or move that file")
        if overwrite:
            continue
        if not _holds_plan(payload, spec, planned):
            raise BuilderError(f"--out {out_dir}: {name} holds results of another benchmark, config or model spec; "
                               "give another --out, or --overwrite to score it again")
        log.info("%s: scored before (%s); skipped", spec.config_name, out_dir / name)
        done.append(spec.config_name)
    table = out_dir / "table.md"
    if table.exists() and not begins_with(table, TABLE_HEADING):
        raise BuilderError(f"--out {out_dir}: table.md is there and is not a zoo's table; give another --out, or move that file")
    return done


def _holds_plan(payload: dict[str, Any], spec: ModelSpec, planned: frozenset[tuple[str, str]]) -> bool:
    """Whether a result file's rows are static scores of ``spec`` on every planned
    (benchmark_id, config) pair and on no other: what scoring it now would write."""
    rows = payload.get("results")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return False
    pairs = [(row.get("benchmark_id"), row.get("config")) for row in rows]
    if not all(isinstance(part, str) for pair in pairs for part in pair):
        return False
    wanted = spec.model_dump(mode="json")
    return (set(pairs) == planned
            and all(row.get("model_spec") == wanted and row.get("mode", "static") == "static" for row in rows))


def write_table(out_dir: Path, names: list[str], notes: dict[str, str]) -> Path:
    """``DIR/table.md``: the leaderboard of ``names`` (this run's models, scored or scored
    before), then each model left out and why (``notes``)."""
    from builder.leaderboard import leaderboard_markdown, load_results

    rows, left_out = [], [f"- {name}: {why}" for name, why in notes.items()]
    for name in names:
        try:
            rows.extend(load_results([out_dir / f"{name}.json"]))
        except BuilderError as error:  # e.g. SA 0 leaves FMR undefined: the table goes on without it
            left_out.append(f"- {name}: {error}")
    table = leaderboard_markdown(rows) if rows else "no model scored yet\n"
    if left_out:
        table += "\nNot in the table:\n\n" + "\n".join(left_out) + "\n"
    path = out_dir / "table.md"
    write_bytes_atomic(path, (TABLE_HEADING + "\n" + table).encode())
    return path


def outcome_lines(outcome: ZooOutcome, out_dir: Path) -> list[str]:
    """What to tell the user: counts, then each failed model on its own line."""
    lines = [f"zoo: {len(outcome.scored)} scored, {len(outcome.skipped)} skipped (scored before; --overwrite redoes them), "
             f"{len(outcome.failed)} failed -> {out_dir / 'table.md'}"]
    lines += [f"failed {name}: {message}" for name, message in outcome.failed.items()]
    return lines
