"""A new source kind, generator kind, oracle kind, model scheme and output format, registered from
this module alone (nothing in builder/ names them), and ``run --dry-run``, ``run``, ``verify``
(with ``--oracle``) and ``score`` working with each.

The module is a plugin as a user would write one: ``build-benchmark --plugin test_plugin_kinds``
imports it (the tests pass the flag; a subprocess shows a fresh interpreter finds the kinds
through it alone), and an installed package would name it in the ``builder.plugins`` entry
point group instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from builder.checkpoints import fetch_location, find_location, load_state_dict, save_state_dict
from builder.cli import main
from builder.components.base import ComponentContext
from builder.components.preprocess import PreprocessedClassifier, Preprocessing
from builder.config import GeneratorConfig, ModelSpec, OracleConfig, SourceConfig
from builder.fileio import atomic_write
from builder.preflight import Check, PreflightContext, Weights, size_checks
from builder.registry import GENERATORS, MODELS, ORACLES, SOURCES, WRITERS, loaded_plugins
from builder.sources.base import SourceContext, SourceItem
from builder.writers.base import OutputSample, ShardSchema, ShardWriter

GRAYS = {"dark": 40, "mid": 128, "light": 215}
PLUGIN = ["--plugin", Path(__file__).stem]

# ----------------------------------------------------------------------------- a source kind


class GrayLevelsConfig(SourceConfig):
    count: int = 12


def _gray_image(level: int, index: int) -> Any:
    from PIL import Image

    noise = torch.Generator().manual_seed(index)
    pixels = (level + torch.randint(-20, 20, (8, 8, 3), generator=noise)).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="RGB")


def gray_levels_preflight(config: GrayLevelsConfig, ctx: PreflightContext, where: str) -> list[Check]:
    names = tuple(GRAYS)
    return [Check(where, f"gray-levels: {config.count} samples, {len(names)} classes", classes=len(names), class_names=names, samples=config.count)]


@SOURCES.register("gray-levels", config=GrayLevelsConfig, description="noisy gray squares, one class per gray level",
                  preflight=gray_levels_preflight)
class GrayLevelsSource:
    def __init__(self, config: GrayLevelsConfig, ctx: SourceContext) -> None:
        self.count = config.count
        self.class_names = tuple(GRAYS)

    def __len__(self) -> int:
        return self.count

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        levels = list(GRAYS.values())
        for i in range(start, min(stop, self.count)):
            yield SourceItem(i, f"gray/{i}", i % 3, lambda i=i: _gray_image(levels[i % 3], i))


# ----------------------------------------------------------------------------- a generator kind


class BrightenConfig(GeneratorConfig):
    pass


class Brighten:
    """g(x, b) = clamp(b): the latent is the image (a pixel-space stand-in)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.clamp(0, 1)


def brighten_preflight(config: BrightenConfig, ctx: PreflightContext, where: str) -> list[Check]:
    return [Check(where, "brighten: nothing to load"), *size_checks(config, ctx.image_size, lambda size: None, "any size")]


@GENERATORS.register("brighten", config=BrightenConfig, preflight=brighten_preflight)
def load_brighten(config: BrightenConfig, ctx: ComponentContext) -> Brighten:
    """Pixel steps, for the plugin test."""
    return Brighten()


# ----------------------------------------------------------------------------- an oracle kind


class NearestGrayConfig(OracleConfig):
    prototypes: str  # a weights location: a safetensors file with one mean colour per class


class NearestGray:
    """Accept when the image's mean colour is nearest its class's prototype."""

    def __init__(self, prototypes: torch.Tensor) -> None:
        self.prototypes = prototypes

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = torch.cdist(images.mean(dim=(2, 3)), self.prototypes.to(images.device))
        probabilities = (-50 * distance).softmax(dim=-1)
        return probabilities.argmax(dim=-1) == labels, probabilities.gather(1, labels[:, None]).squeeze(1)


def nearest_gray_preflight(config: NearestGrayConfig, ctx: PreflightContext, where: str) -> list[Check]:
    found = find_location(config.prototypes, ctx)
    classes = len(load_state_dict(found.path)["prototypes"]) if found.ready and found.path is not None else None
    return [Check(where, f"nearest-gray over {classes or '?'} prototypes", classes=classes)]


def nearest_gray_weights(config: NearestGrayConfig, where: str) -> list[Weights]:
    return [Weights(f"{where} weights", config.prototypes, config)]


@ORACLES.register("nearest-gray", config=NearestGrayConfig, preflight=nearest_gray_preflight, weights=nearest_gray_weights)
def load_nearest_gray(config: NearestGrayConfig, ctx: ComponentContext) -> NearestGray:
    """Mean colour against per-class prototypes."""
    path = fetch_location(config.prototypes, ctx.locations)
    return NearestGray(load_state_dict(path, what="oracle prototypes")["prototypes"].float())


# ----------------------------------------------------------------------------- a model scheme


def mean_rgb_net(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))


def mean_rgb_preflight(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    target = spec.model.partition(":")[2]
    problem = None if target == "linear" else f"{where}: meanrgb has one architecture, 'linear' (got '{target}')"
    return [Check(where, f"{spec.model} (mean colour -> linear)", problem)]


@MODELS.register("meanrgb", description="a linear layer on the mean colour", preflight=mean_rgb_preflight)
def build_mean_rgb(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    count = spec.num_classes or len(ctx.class_names)
    return PreprocessedClassifier(mean_rgb_net(count), Preprocessing(input_size=ctx.image_size), count, spec.model)


# ----------------------------------------------------------------------------- an output format


FIXED_TIME = (2020, 1, 1, 0, 0, 0)


@WRITERS.register("zipped", description="one zip per shard: <key>.json, <key>.image, <key>.original")
class ZipWriter(ShardWriter):
    suffix = ".zip"

    def write(self, path: Path, samples: Sequence[OutputSample], schema: ShardSchema) -> None:
        with atomic_write(path) as handle, zipfile.ZipFile(handle, "w") as archive:
            for sample in sorted(samples, key=lambda s: s.key):
                parts = {"json": json.dumps(sample.record, sort_keys=True).encode(), "image": sample.image}
                if schema.keep_originals and sample.original is not None:
                    parts["original"] = sample.original
                for part, data in parts.items():
                    archive.writestr(zipfile.ZipInfo(f"{sample.key}.{part}", FIXED_TIME), data)

    def _parts(self, path: Path) -> list[dict[str, bytes]]:
        samples: dict[str, dict[str, bytes]] = {}
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                key, _, part = name.partition(".")
                samples.setdefault(key, {})[part] = archive.read(name)
        return [samples[key] for key in sorted(samples)]

    def read_records(self, path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
        return [{name: json.loads(parts["json"]).get(name) for name in columns} for parts in self._parts(path)]

    def read_images(self, path: Path, rows: Sequence[int]) -> list[tuple[bytes, Optional[bytes]]]:
        samples = self._parts(path)
        return [(samples[row]["image"], samples[row].get("original")) for row in rows]


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(autouse=True)
def plugins_forgotten_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's --plugin imports are forgotten after it: the plugin list is process state that
    builds hand on to their workers, and later tests' workers (Ray actors) cannot import this
    test module."""
    from builder import registry

    monkeypatch.setattr(registry, "_loaded_plugins", set(registry._loaded_plugins))


@pytest.fixture
def plugged_recipe(tmp_path: Path) -> Path:
    """A recipe made only of this module's kinds, with the files its weights come from."""
    prototypes = torch.tensor([[level / 255] * 3 for level in GRAYS.values()])
    save_state_dict({"prototypes": prototypes}, tmp_path / "prototypes.safetensors")
    torch.manual_seed(0)
    save_state_dict(mean_rgb_net(3).state_dict(), tmp_path / "theta.safetensors")
    recipe = {
        "name": "plugged",
        "source": {"kind": "gray-levels", "count": 12},
        "image_size": 8,
        "batch_size": 4,
        "reference_models": [{"name": "mean", "model": "meanrgb:linear", "checkpoint": str(tmp_path / "theta.safetensors")}],
        "generator": {"kind": "brighten"},
        "oracle": {"kind": "nearest-gray", "prototypes": "prototypes.safetensors"},
        "perturbation": {"step_size": 0.05, "budget": 3},
        "output": {"formats": ["zipped"], "samples_per_shard": 5},
    }
    path = tmp_path / "plugged.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, [*PLUGIN, "-q", *args])


def test_dry_run_asks_each_plugin_kind(plugged_recipe: Path) -> None:
    result = cli("run", str(plugged_recipe), "--dry-run")
    assert result.exit_code == 0, result.output
    for line in ("ok   source: gray-levels: 12 samples, 3 classes", "ok   reference model mean: meanrgb:linear (mean colour -> linear)",
                 "ok   generator: brighten: nothing to load", "ok   oracle: nearest-gray over 3 prototypes",
                 "ok   oracle weights: prototypes.safetensors: local file", "ok   class count: 3 classes everywhere it is known",
                 "plan 12 samples -> 3 work units, 3 shards (1 config(s) x zipped)"):
        assert line in result.output, result.output
    assert "reference model mean weights:" in result.output and "theta.safetensors: local file" in result.output


def test_dry_run_reports_a_plugin_kinds_own_problem(plugged_recipe: Path) -> None:
    result = cli("run", str(plugged_recipe), "--dry-run", "--set", "reference_models.0.model=meanrgb:deep")
    assert result.exit_code == 2
    assert "FAIL reference model mean: meanrgb has one architecture, 'linear' (got 'deep')" in result.output


def test_run_verify_and_score_with_plugin_kinds(plugged_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "built"
    result = cli("run", str(plugged_recipe), "--out", str(out), "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    shards = sorted(p.name for p in (out / "mean").iterdir())
    assert shards == [f"test-0000{i}-of-00003.zip" for i in range(3)]
    assert (out / "gallery.html").stat().st_size > 0 and (out / "preview.png").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["configs"]["mean"]["num_samples"] == 12

    result = cli("verify", str(out), "--oracle", "--recipe", str(plugged_recipe))
    assert result.exit_code == 0, result.output
    assert "is consistent" in result.output and "of the perturbed images keep their label" in result.output

    result = cli("score", "--benchmark", str(out), "--model", "ref:mean", "--workers", "0", "--bootstrap", "0", "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert scored["white_box"] and scored["n"] == 12
    figures = manifest["configs"]["mean"]
    assert (scored["sa"], scored["pa"]) == pytest.approx((figures["sa"], figures["pa"]), abs=1e-6)


@pytest.mark.slow
def test_worker_processes_know_the_plugin_kinds(plugged_recipe: Path, tmp_path: Path) -> None:
    """Spawned workers import the driver's plugins: the same bytes as a build in this process."""
    single, spread = tmp_path / "single", tmp_path / "spread"
    assert cli("run", str(plugged_recipe), "--out", str(single), "--device", "cpu", "--no-progress").exit_code == 0
    result = cli("run", str(plugged_recipe), "--out", str(spread), "--device", "cpu", "--no-progress", "--workers", "2")
    assert result.exit_code == 0, result.output
    shards = sorted(p.relative_to(single) for p in single.glob("mean/*.zip"))
    assert shards and all((single / p).read_bytes() == (spread / p).read_bytes() for p in shards)


def test_verify_reads_a_plugin_format_and_reports_its_damage(plugged_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "built"
    assert cli("run", str(plugged_recipe), "--out", str(out), "--device", "cpu", "--no-progress").exit_code == 0
    (out / "mean" / "test-00001-of-00003.zip").write_bytes(b"not a zip")
    result = cli("verify", str(out))
    assert result.exit_code == 1
    assert "mean/test-00001-of-00003.zip: not readable as zipped" in result.output


def test_a_fresh_interpreter_finds_the_kinds_through_the_plugin_flag(plugged_recipe: Path) -> None:
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "builder.cli", *PLUGIN, "-q", "run", str(plugged_recipe), "--dry-run"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   oracle: nearest-gray over 3 prototypes" in done.stdout
    without = subprocess.run(command[:3] + command[5:], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert without.returncode == 2 and "unknown source kind 'gray-levels'" in without.stderr


def test_a_missing_plugin_is_one_line() -> None:
    result = CliRunner().invoke(main, ["--plugin", "no_such_plugin_module", "recipes"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --plugin no_such_plugin_module: no module named 'no_such_plugin_module'; install it or put its directory on PYTHONPATH"
    )
    assert "no_such_plugin_module" not in loaded_plugins()  # never handed on to worker processes


def test_installed_entry_points_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from builder import registry

    class Point:
        name, value = "broken", "no_such_entry_point_module:register"

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Point()] if group == registry.PLUGIN_GROUP else [])
    monkeypatch.setattr(registry, "_loaded_plugins", set())
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 2
    assert "entry point 'broken' (builder.plugins): no module named 'no_such_entry_point_module'" in result.output


def test_the_readme_example_registers_a_complete_oracle_kind(tmp_path: Path) -> None:
    """The "Extending" section's one-file kind runs as written and answers dry-run's questions."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    code = next(block for block in readme.split("```python\n")[1:] if block.startswith("# my_kinds.py")).split("```")[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_kinds"})  # noqa: S102 - the repository's own README
    entry = ORACLES.entry("nearest-colour")
    config = entry.config(kind="nearest-colour", prototypes="protos.safetensors")
    assert entry.preflight is not None and entry.weights is not None
    assert entry.preflight(config, PreflightContext(tmp_path, tmp_path), "oracle")[0].detail == "nearest-colour, prototypes protos.safetensors"
    assert [w.location for w in entry.weights(config, "oracle")] == ["protos.safetensors"]
    save_state_dict({"prototypes": torch.eye(3)}, tmp_path / "protos.safetensors")
    context = ComponentContext("cpu", tmp_path, tmp_path, tuple(GRAYS), 8, GrayLevelsConfig(kind="gray-levels"))
    accepted, _ = entry.factory(config, context).judge(torch.zeros(2, 3, 4, 4).index_fill_(1, torch.tensor([1]), 1.0), torch.tensor([1, 0]))
    assert accepted.tolist() == [True, False]
