"""Where bundled data and the cache live (no state: every function reads the environment)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CACHE_ENV = "FMR_BUILDER_CACHE"


def bundled_dir(kind: str) -> Path:
    """``recipes`` or ``cards``: inside the wheel, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "_bundled" / kind
    return installed if installed.is_dir() else package.parent / kind


def default_cache_dir() -> Path:
    """``$FMR_BUILDER_CACHE``, else ``$XDG_CACHE_HOME/fmr-builder``, else ``~/.cache/fmr-builder``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fmr-builder"


def in_recipe_dir(text: str, base_dir: Path) -> Path:
    """A path a recipe (or spec) names: ``~`` expanded, and a relative one taken from ``base_dir``,
    the recipe's folder, not from wherever the command runs."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def source_locations(config: Any, base_dir: Path) -> dict[str, str]:
    """The source's path-like settings that name something on this machine, resolved against the
    recipe's dir (``{"path:./data": "/abs/data"}``): two recipes of the same text read other data
    when their folders differ. Settings naming nothing here (a Hub id) are left out."""
    locations = {}
    for key, value in config.model_dump(mode="json").items():
        for text in [value] if isinstance(value, str) else (value if isinstance(value, list) else []):
            where = in_recipe_dir(text, base_dir) if isinstance(text, str) and key != "kind" and text else None
            if where is not None and where.exists():
                locations[f"{key}:{text}"] = str(where.resolve())
    return locations

