"""Find, load and override recipes: YAML path or bundled name -> validated :class:`Recipe`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.config import Recipe, parse_recipe
from builder.errors import RecipeError
from builder.paths import bundled_dir
from builder.registry import unknown_name_message
from builder.safeyaml import MAX_DEPTH, load_yaml_text, one_line, read_recipe_text


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus where it came from (relative paths resolve against ``base_dir``)."""

    recipe: Recipe
    origin: str
    base_dir: Path


def bundled_recipes() -> dict[str, Path]:
    directory = bundled_dir("recipes")
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def describe_bundled() -> list[tuple[str, str]]:
    """(name, one-line description) of each bundled recipe."""
    rows = []
    for name, path in bundled_recipes().items():
        data = load_yaml_text(read_recipe_text(path), what=f"recipe {path}")
        description = data.get("description", "") if isinstance(data, dict) else ""
        lines = str(description).strip().splitlines()
        rows.append((name, lines[0] if lines else ""))
    return rows


def locate(recipe: str) -> Path:
    """The recipe file: a path as given, else a bundled recipe of that name. A folder is not a
    recipe: one named like a bundled recipe (``run digits-demo --out digits-demo``, then again)
    does not hide it."""
    path = Path(recipe)
    shown = one_line(recipe, 200)
    known = bundled_recipes()
    try:
        if path.suffix in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise RecipeError(f"recipe file not found: {shown}; check the path, or give a bundled recipe's name ('build-benchmark recipes' lists them)")
            return path
        if recipe not in known and path.is_dir():
            raise RecipeError(f"recipe {shown}: is a directory, not a recipe file; give a .yaml path or a bundled recipe's name")
    except OSError as error:  # e.g. a name too long for the file system
        raise RecipeError(f"recipe {shown}: cannot be opened ({error.strerror}); check the path") from None
    if recipe in known:
        return known[recipe]
    raise RecipeError(unknown_name_message("recipe", shown, list(known)) + " (or give a .yaml path)")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    what = f"--set '{one_line(assignment, 200)}'"
    if "=" not in assignment:
        raise RecipeError(f"{what}: expected dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise RecipeError(f"{what}: empty key in '{one_line(dotted, 200)}'; write dotted.key=value, e.g. seed=1")
    if len(keys) > MAX_DEPTH:
        raise RecipeError(f"{what}: more than {MAX_DEPTH} keys in '{one_line(dotted, 200)}'; set a shallower key")
    value = load_yaml_text(raw, what=what, fix="quote it") if raw.strip() else ""
    if re.search(r"(^|\s)#", raw) and "#" not in json.dumps(value, default=str):
        # YAML reads ' #' as a comment: 'description=Build #2' set 'Build', without a word
        raise RecipeError(f"{what}: YAML reads ' #' as the start of a comment, so the value would be {one_line(repr(value), 80)}; "
                          f"quote it: {one_line(dotted, 200)}='{one_line(raw.strip(), 200)}'")
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        node = _child(node, key, ".".join(keys[: depth + 1]), assignment)
    _assign(node, keys[-1], value, assignment)


def _child(node: Any, key: str, where: str, assignment: str) -> Any:
    if isinstance(node, list):
        index = _index(node, key, where, assignment)
        return node[index]
    if isinstance(node, dict):
        if not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        return node[key]
    raise RecipeError(f"--set '{one_line(assignment, 200)}': '{one_line(where, 200)}' is not a mapping or list")


def _assign(node: Any, key: str, value: Any, assignment: str) -> None:
    if isinstance(node, list):
        node[_index(node, key, key, assignment)] = value
    elif isinstance(node, dict):
        node[key] = value
    else:
        raise RecipeError(f"--set '{one_line(assignment, 200)}': cannot set '{one_line(key, 200)}' inside a scalar")


def _index(node: list[Any], key: str, where: str, assignment: str) -> int:
    if not (key.isascii() and key.isdigit()) or int(key) >= len(node):  # '²'.isdigit() but int('²') fails
        raise RecipeError(f"--set '{one_line(assignment, 200)}': '{one_line(where, 200)}' needs an index below {len(node)}")
    return int(key)


def load_recipe(recipe: str, overrides: tuple[str, ...] = ()) -> LoadedRecipe:
    """Read, bound-check and validate a recipe; the ``--set`` overrides apply before validation."""
    path = locate(recipe)
    # a tree without shared nodes: a YAML alias (*name) must not let one --set change two places
    data = load_yaml_text(read_recipe_text(path), what=f"recipe {one_line(str(path), 200)}")
    if isinstance(data, dict):
        for assignment in overrides:
            apply_override(data, assignment)
    return LoadedRecipe(parse_recipe(data), str(path), path.resolve().parent)
