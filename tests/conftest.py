"""Shared fixtures: a private cache per test session and tiny, fast components."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from builder.components.base import ComponentContext
from builder.config import parse_component

from tiny_models import TINY_VQGAN_YAML, tiny_cnn

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


TINY_MODELS = Path(__file__).parent / "tiny_models.py"
COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A recipe over a 3-class ImageFolder (with one corrupt file) and tiny random components."""
    from builder.components.vqgan import TamingVQGAN

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(color) + rng.integers(-30, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "green" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "vqgan.yaml").write_text(TINY_VQGAN_YAML)
    torch.manual_seed(0)
    torch.save({"state_dict": TamingVQGAN(yaml.safe_load(TINY_VQGAN_YAML)["model"]["params"]).state_dict()}, tmp_path / "vqgan.ckpt")
    torch.save(tiny_cnn(3).state_dict(), tmp_path / "theta.pt")
    torch.save(tiny_cnn(3, width=4).state_dict(), tmp_path / "oracle.pt")
    recipe = {
        "name": "tiny",
        "description": "tiny test recipe",
        "source": {"kind": "imagefolder", "path": "images"},
        "image_size": 16,
        "batch_size": 4,
        "reference_models": [{"name": "cnn", "model": f"py:{TINY_MODELS}:tiny_cnn", "checkpoint": "theta.pt"}],
        "generator": {"kind": "vqgan", "config": "vqgan.yaml", "checkpoint": "vqgan.ckpt"},
        "oracle": {"kind": "classifier", "model": {"model": f"py:{TINY_MODELS}:tiny_cnn", "kwargs": {"width": 4}, "checkpoint": "oracle.pt"}},
        "perturbation": {"step_size": 0.01, "budget": 3},
        "output": {"samples_per_shard": 5},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def tiny_build(tiny_recipe: Path, tmp_path: Path) -> Path:
    """The tiny recipe built into ``tmp_path/built`` (12 samples in 3 shards, one reject)."""
    from builder.cli import main

    out = tmp_path / "built"
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(out), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def reading_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The local Hub stand-in (tests/hub_stub.py) with huggingface_hub and datasets pointed at it
    and a fresh token in HF_TOKEN; its ``token`` attribute holds the token."""
    import secrets

    from hub_stub import HubStub, use_hub_stub

    stub = HubStub(f"hf_{secrets.token_hex(20)}").start()
    use_hub_stub(monkeypatch, stub, tmp_path / "hf-home", token=stub.token)
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def _build_cache() -> dict[str, Path]:
    return {}


@pytest.fixture
def built(request: pytest.FixtureRequest, _build_cache: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of the tiny build (12 samples, 3 shards), built once per test module."""
    if "dir" not in _build_cache:
        _build_cache["dir"] = tmp_path_factory.mktemp("tiny-once") / "built"
        shutil.copytree(request.getfixturevalue("tiny_build"), _build_cache["dir"])
    target = tmp_path / "bench"
    shutil.copytree(_build_cache["dir"], target)
    return target
