"""Shared fixtures: a private cache per test session and tiny, fast components."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.components.base import ComponentContext
from builder.config import parse_component

CLASS_NAMES = ("zero", "one", "two")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache from a test."""
    monkeypatch.setenv("FMR_BUILDER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def context(tmp_path: Path) -> ComponentContext:
    """Three classes, 16 px images, CPU, a fresh cache."""
    source = parse_component("sources", {"kind": "sklearn-digits", "class_names": None}, ("source",))
    return ComponentContext(
        device="cpu",
        cache_dir=tmp_path / "cache",
        base_dir=tmp_path,
        class_names=CLASS_NAMES,
        image_size=16,
        source=source,
    )
