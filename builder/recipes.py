"""Find, load and override recipes: YAML path or bundled name -> validated :class:`Recipe`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder.config import Recipe, parse_recipe
from builder.errors import RecipeError
from builder.paths import bundled_dir
from builder.registry import unknown_name_message


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
        data = yaml.safe_load(path.read_text()) or {}
        lines = str(data.get("description", "")).strip().splitlines()
        rows.append((name, lines[0] if lines else ""))
    return rows


def locate(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {recipe}")
        return path
    known = bundled_recipes()
    if recipe in known:
        return known[recipe]
    raise RecipeError(unknown_name_message("recipe", recipe, list(known)) + " (or give a .yaml path)")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise RecipeError(f"--set '{assignment}': expected dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise RecipeError(f"--set '{assignment}': empty key in '{dotted}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise RecipeError(f"--set '{assignment}': the value is not valid YAML; quote it") from None
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
    raise RecipeError(f"--set '{assignment}': '{where}' is not a mapping or list")


def _assign(node: Any, key: str, value: Any, assignment: str) -> None:
    if isinstance(node, list):
        node[_index(node, key, key, assignment)] = value
    elif isinstance(node, dict):
        node[key] = value
    else:
        raise RecipeError(f"--set '{assignment}': cannot set '{key}' inside a scalar")


def _index(node: list[Any], key: str, where: str, assignment: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise RecipeError(f"--set '{assignment}': '{where}' needs an index below {len(node)}")
    return int(key)


def _unshare(node: Any) -> Any:
    """A copy in which no dict or list is reachable twice (YAML anchors become independent)."""
    if isinstance(node, dict):
        return {key: _unshare(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshare(value) for value in node]
    return node


def load_recipe(recipe: str, overrides: tuple[str, ...] = ()) -> LoadedRecipe:
    path = locate(recipe)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe {path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    data = _unshare(data)  # a YAML alias (*name) must not let one --set change two places
    if isinstance(data, dict):
        for assignment in overrides:
            apply_override(data, assignment)
    return LoadedRecipe(parse_recipe(data), str(path), path.resolve().parent)
