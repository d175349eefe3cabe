"""Helpers several test modules share (tests never import one another)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from builder.checkpoints import weights_fingerprint
from builder.cli import main
from builder.components.oracles import ClassifierOracle
from builder.components.preprocess import PreprocessedClassifier, Preprocessing
from builder.components.vqgan import TamingVQGAN, VQGANGenerator
from builder.config import parse_component
from builder.fileio import sha256_file, sha256_json, write_json_atomic
from builder.images import encode_image
from builder.sources.base import SourceContext, open_source
from builder.writers import WRITERS, OutputSample, ShardSchema

from tiny_models import TINY_VQGAN_YAML, color_net, tiny_cnn

# ----------------------------------------------------------------------------- from test_cli


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit 2, exactly one ``error:`` line holding every fragment, no traceback; returns the line."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def shard_hashes(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {f["path"]: f["sha256"] for c in manifest["configs"].values() for s in c["shards"] for f in s["files"].values()}


# ----------------------------------------------------------------------------- from test_consumers


def expected_records(root: Path, config: str) -> dict[str, dict[str, Any]]:
    """Every record of a config as the build wrote it, read from the tar members' JSON."""

    manifest = json.loads((root / "manifest.json").read_text())
    records: dict[str, dict[str, Any]] = {}
    for shard in manifest["configs"][config]["shards"]:
        with tarfile.open(root / shard["files"]["webdataset"]["path"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    records[record["key"]] = record
    assert len(records) == manifest["configs"][config]["num_samples"]
    assert sum(r["perturbed"] for r in records.values()) == manifest["configs"][config]["num_perturbed"]
    return records


def check_rows(rows: list[dict[str, Any]], expected: dict[str, dict[str, Any]], class_names: list[str], size: int = 16) -> None:
    assert sorted(row["key"] for row in rows) == sorted(expected)
    for row in rows:
        record = expected[row["key"]]
        for field in ("label", "class_name", "source_id", "perturbed", "steps", "stop_reason", "pred_before", "pred_after"):
            assert row[field] == record[field], (row["key"], field)
        assert row["oracle_prob"] == pytest.approx(record["oracle_prob"], abs=1e-6)
        assert class_names[row["label"]] == row["class_name"]
        image = row["image"]
        assert isinstance(image, Image.Image) and image.size == (size, size)


# ----------------------------------------------------------------------------- from test_executors


FAULTS = Path(__file__).parent / "faults"


def build(recipe: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", str(out), "--device", "cpu", "--no-progress", *extra])


def every_file(root: Path) -> dict[str, bytes]:
    """Everything a build leaves but its own bookkeeping (``_stats`` records who built what)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "_stats" not in p.parts}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- from test_sources


RED = (255, 0, 0)


GREEN = (0, 255, 0)


BLUE = (0, 0, 255)


def make_source(data: dict, tmp_path: Path, **kwargs):
    config = parse_component("sources", data, ("source",))
    return open_source(config, SourceContext(base_dir=tmp_path, cache_dir=tmp_path / "cache"), **kwargs)


def png_bytes(image: Image.Image, fmt: str = "PNG", **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def solid(color, size=(6, 4), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def write_shard(path: Path, samples: list[tuple[str, tuple[int, int, int], int]]) -> None:
    import webdataset

    with open(path, "wb") as stream:
        writer = webdataset.TarWriter(stream)
        for key, color, label in samples:
            writer.write({"__key__": key, "png": png_bytes(solid(color)), "cls": label})
        writer.close()


# ----------------------------------------------------------------------------- from test_engine


def make_components(seed: int, dtype: torch.dtype = torch.float64, requantize: bool = False):
    torch.manual_seed(seed)
    params = yaml.safe_load(TINY_VQGAN_YAML)["model"]["params"]
    generator = VQGANGenerator(TamingVQGAN(params).eval().to(dtype), requantize=requantize)
    model = PreprocessedClassifier(tiny_cnn(3), Preprocessing(input_size=16), 3, "py:tiny").eval().to(dtype)
    oracle_net = PreprocessedClassifier(tiny_cnn(3, width=4), Preprocessing(input_size=16), 3, "py:oracle").eval().to(dtype)
    return generator, ClassifierOracle(oracle_net), model


def to_grid(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 255) / 255


def batch_inputs(generator, oracle, seed: int, n: int = 12):
    generator_rng = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=generator_rng, dtype=torch.uint8)
    dtype = next(generator.model.parameters()).dtype if hasattr(generator, "model") else torch.float64
    with torch.no_grad():
        recon = to_grid(generator.decode(generator.encode(images.to(dtype) / 255)))
        labels = oracle.classifier(recon).argmax(dim=1)
    labels[0] = (labels[0] + 1) % 3  # one sample the oracle rejects at the start
    return images, labels


# ----------------------------------------------------------------------------- from test_engine and test_generators_vae_attributes


TINY_VAE = {"block_out_channels": [8, 8], "latent_channels": 2, "norm_num_groups": 4, "mid_block_add_attention": False}
#: every attribute, with steps and range ends that are float32 values (the engine's bounds are these exactly)
TINY_EDITS = {
    "rotate": {"step": 0.5, "range": [-2.0, 2.0]},
    "scale": {"step": 0.015625, "range": [0.9375, 1.0625]},
    "translate": {"step": 0.0078125, "range": [-0.03125, 0.03125]},
    "brightness": {"step": 0.0078125, "range": [-0.03125, 0.03125]},
    "contrast": {"step": 0.03125, "range": [0.875, 1.125]},
    "saturation": {"step": 0.03125, "range": [0.875, 1.125]},
    "blur": {"step": 0.0625, "range": [0.0, 0.25]},
}


def tiny_vae(seed: int = 0, dtype: torch.dtype = torch.float64):
    """A random tiny AutoencoderKL generator (f2, 2 latent channels)."""
    from builder.components.vae import VAEArchitecture, VAEGenerator, build_autoencoder

    torch.manual_seed(seed)
    return VAEGenerator(build_autoencoder(VAEArchitecture.model_validate(TINY_VAE)).eval().requires_grad_(False).to(dtype))


def attributes_generator(edits: dict = TINY_EDITS, image_size: int = 16):
    """The attributes generator of ``edits``, validated as a recipe section is."""
    from types import SimpleNamespace

    from builder.components.attributes import load_attributes

    config = parse_component("generators", {"kind": "attributes", "attributes": edits}, ("generator",))
    return load_attributes(config, SimpleNamespace(device="cpu", image_size=image_size))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- from test_score and test_report


TINY_MODELS = Path(__file__).parent / "tiny_models.py"
COLOR_CLASSES = ("red", "green", "blue")
COLOR = {0: (220, 10, 10), 1: (10, 220, 10), 2: (10, 10, 220)}


def patch(label: int) -> np.ndarray:
    return np.tile(np.array(COLOR[label], dtype=np.uint8), (8, 8, 1))


def _config_shards(root: Path, config: str, samples: list[OutputSample], schema: ShardSchema, fmt: str) -> list[dict[str, Any]]:
    half = len(samples) // 2
    shards = []
    for unit, part in enumerate((samples[:half], samples[half:])):
        writer = WRITERS.get(fmt)()
        path = root / config / f"test-{unit:05d}-of-00002{writer.suffix}"
        writer.write(path, part, schema)
        entry = {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        shards.append({"unit": unit, "num_samples": len(part), "num_perturbed": sum(s.record["perturbed"] for s in part), "files": {fmt: entry}})
    return shards


def hand_built_benchmark(root: Path, rows: list[tuple[int, int, int, bool, int]], keep_originals: bool = True, fmt: str = "parquet",
                         configs: tuple[str, ...] = ("ref",)) -> Path:
    """rows: (label, colour of the original, colour of the perturbed image, perturbed, steps).
    The colour decides what ColorNet predicts, so SA and PA are known exactly. ``fmt``: the one
    output format its shards are written in; each of ``configs`` holds the same rows."""
    from builder.components.preprocess import PreprocessedClassifier, Preprocessing

    schema = ShardSchema(COLOR_CLASSES, "png", keep_originals)
    spec = {"model": f"py:{TINY_MODELS}:color_net", "name": "ref"}
    reference = PreprocessedClassifier(color_net(3), Preprocessing(input_size=8), 3, spec["model"])
    entries = {}
    for config in configs:
        samples = []
        for index, (label, original, shown, perturbed, steps) in enumerate(rows):
            record = {
                "key": f"{index:08d}", "label": label, "class_name": COLOR_CLASSES[label], "source_id": f"s/{index}",
                "reference_model": config, "perturbed": perturbed, "steps": steps, "stop_reason": "x", "oracle_prob": 1.0,
                "pred_before": original, "loss_before": 0.0, "pred_after": shown, "loss_after": 0.0,
            }
            samples.append(OutputSample(record["key"], encode_image(patch(shown), "png"), encode_image(patch(original), "png"), record))
        entries[config] = {"reference_model": {**spec, "name": config}, "reference_weights_sha256": weights_fingerprint(reference),
                           "shards": _config_shards(root, config, samples, schema, fmt), "num_samples": len(samples),
                           "num_perturbed": sum(s.record["perturbed"] for s in samples)}
    recipe = {"image_size": 8, "source": {"kind": "sklearn-digits"}, "output": {"keep_originals": keep_originals}}
    manifest = {
        "format": "fmr-benchmark/1", "id": sha256_json([entry["shards"] for entry in entries.values()]), "class_names": list(COLOR_CLASSES),
        "recipe": recipe, "recipe_sha256": sha256_json(recipe), "split": "test", "source_samples": len(rows), "num_rejects": 0, "configs": entries,
    }
    write_json_atomic(root / "manifest.json", manifest)
    return root


# ----------------------------------------------------------------------------- from test_gallery and test_report


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("FMR_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"FMR_REQUIRE_CHROMIUM=1 but {CHROMIUM} is missing")
        pytest.skip(f"headless Chromium is not installed ({CHROMIUM})")
    return CHROMIUM


def run_chromium(profile: Path, url: str, *flags: str) -> str:
    """Chromium on ``url`` with a fresh profile; stdout (the DOM with --dump-dom)."""
    command = [str(chromium()), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def needs_compiler() -> None:
    """torch.compile on a CPU builds C++: skip without a compiler, unless CI requires the test."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        if os.environ.get("FMR_REQUIRE_COMPILER"):
            pytest.fail("FMR_REQUIRE_COMPILER is set but no C++ compiler is on PATH (install g++)")
        pytest.skip("torch.compile on a CPU needs a C++ compiler (g++)")
