"""A zoo of models scored in one process: ``score --benchmark B --models zoo.yaml --out DIR``.

The zoo file is a YAML list of model specs, each with a ``name``. Each model is loaded in turn;
its results go to ``DIR/<name>.json`` (what ``score --json`` writes for it) and all of them to
``DIR/table.md``. A model already scored is skipped (``--overwrite`` scores it again), and one
that fails to load or score is listed at the end instead of stopping the others.
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


def score_zoo(specs: list[ModelSpec], out_dir: Path, score_one: Callable[[ModelSpec], list[Any]], *, overwrite: bool = False) -> ZooOutcome:
    """Score each spec with ``score_one`` (every benchmark and config), writing its file as it
    goes, so an interrupted zoo resumes where it stopped; then the combined table."""
    outcome = ZooOutcome()
    _check_ours(out_dir, [f"{spec.config_name}.json" for spec in specs])
    out_dir.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        name = spec.config_name
        target = out_dir / f"{name}.json"
        if target.is_file() and not overwrite:
            log.info("%s: scored before (%s); skipped", name, target)
            outcome.skipped.append(name)
            continue
        try:
            results = score_one(spec)
        except BuilderError as error:  # a model that cannot be loaded or scored: the others go on
            log.warning("%s: failed: %s", name, error)
            outcome.failed[name] = str(error)
            continue
        write_bytes_atomic(target, results_bytes(result_payload(results)))
        outcome.scored.append(name)
    write_table(out_dir, [spec.config_name for spec in specs])
    return outcome


#: how the zoo's table begins (it is the zoo's own when it does)
TABLE_HEADING = "# FMR of the zoo\n"


def _check_ours(out_dir: Path, results: list[str]) -> None:
    """Before any model is scored: the files the zoo would write or skip in ``out_dir`` are its
    own when they exist (a result file written by score, the zoo's table). A user's
    ``resnet.json`` was taken as "scored before" and their ``table.md`` replaced."""
    from builder.leaderboard import is_result_file

    for name in results:
        path = out_dir / name
        if path.exists() and not is_result_file(path):
            raise BuilderError(f"--out {out_dir}: {name} is there and was not written by 'build-benchmark score'; "
                               "give another --out, or move that file")
    table = out_dir / "table.md"
    if table.exists() and not begins_with(table, TABLE_HEADING):
        raise BuilderError(f"--out {out_dir}: table.md is there and is not a zoo's table; give another --out, or move that file")


def write_table(out_dir: Path, names: list[str]) -> Path:
    """``DIR/table.md``: the leaderboard of every zoo model that has a result file."""
    from builder.leaderboard import leaderboard_markdown, load_results

    rows, left_out = [], []
    for name in names:
        path = out_dir / f"{name}.json"
        if not path.is_file():
            continue
        try:
            rows.extend(load_results([path]))
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
