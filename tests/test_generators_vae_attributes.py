"""The ``vae`` (diffusers AutoencoderKL) and ``attributes`` (named edits) generators: builds that
pass ``verify --oracle``, attribute values that reproduce the written pixels and stay in their
ranges, masks on the VAE latent, and training a VAE from a recipe."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import TINY_VAE, assert_one_line_error, attributes_generator, batch_inputs, build, make_components, tiny_vae
from PIL import Image

from builder.cli import main
from builder.components.base import ComponentContext
from builder.components.vae import VAEArchitecture, VAEConfig, build_autoencoder, load_vae
from builder.config import PerturbationConfig, parse_component
from builder.engine import perturb_batch
from builder.errors import RecipeError
from builder.registry import GENERATORS
from builder.verify import verify_benchmark

#: ranges whose ends float32 cannot hold exactly (0.1, 0.12): written values must still stay inside
EDITS = {
    "rotate": {"step": 3.0, "range": [-12.0, 12.0]},
    "scale": {"step": 0.05, "range": [0.8, 1.2]},
    "translate": {"step": 0.05, "range": [-0.1, 0.1]},
    "brightness": {"step": 0.04, "range": [-0.12, 0.12]},
    "contrast": {"step": 0.1, "range": [0.7, 1.3]},
    "saturation": {"step": 0.1, "range": [0.5, 1.5]},
    "blur": {"step": 0.2, "range": [0.0, 0.6]},
}


def with_generator(recipe: Path, generator: dict, **changes) -> Path:
    data = yaml.safe_load(recipe.read_text())
    data["generator"] = generator
    data.update(changes)
    recipe.write_text(yaml.safe_dump(data))
    return recipe


def save_tiny_vae(path: Path) -> None:
    torch.manual_seed(0)
    build_autoencoder(VAEArchitecture.model_validate(TINY_VAE)).save_pretrained(path)


# ----------------------------------------------------------------------------- builds


def test_vae_build_from_a_diffusers_dir_passes_verify_with_the_oracle(tiny_recipe: Path, tmp_path: Path) -> None:
    save_tiny_vae(tmp_path / "vae-dir" / "vae")
    recipe = with_generator(tiny_recipe, {"kind": "vae", "model": "vae-dir", "subfolder": "vae"})
    out = tmp_path / "out"
    result = build(recipe, out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["configs"]["cnn"]["num_perturbed"] > 0
    report = verify_benchmark(out, oracle=True, recipe=str(recipe))
    assert report.ok, report.failures
    assert report.oracle_rates == {"cnn": 1.0}


def _attribute_rows(out: Path) -> tuple[list[dict], dict[str, dict]]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows, tar_records = [], {}
    for shard in manifest["configs"]["cnn"]["shards"]:
        rows += pq.read_table(out / shard["files"]["parquet"]["path"]).to_pylist()
        with tarfile.open(out / shard["files"]["webdataset"]["path"]) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    tar_records[record["key"]] = record
    return rows, tar_records


def test_attributes_build_records_values_that_reproduce_the_image(tiny_recipe: Path, tmp_path: Path) -> None:
    recipe = with_generator(tiny_recipe, {"kind": "attributes", "attributes": EDITS}, perturbation={"budget": 6})
    out = tmp_path / "out"
    assert build(recipe, out).exit_code == 0
    report = verify_benchmark(out, oracle=True, recipe=str(recipe))
    assert report.ok, report.failures
    assert report.oracle_rates == {"cnn": 1.0}
    rows, tar_records = _attribute_rows(out)
    generator = attributes_generator(EDITS)
    names = generator.attribute_names
    moved = 0
    for row in rows:
        values = row["attributes"]
        assert list(values) == list(names) and tar_records[row["key"]]["attributes"] == values
        for name, value in values.items():  # never outside its range
            low, high = EDITS["translate" if name.startswith("translate_") else name]["range"]
            assert low <= value <= high, (row["key"], name, value)
        if not row["perturbed"]:
            continue
        moved += row["steps"] > 0
        original = torch.from_numpy(np.array(Image.open(io.BytesIO(row["original_image"]["bytes"])))).permute(2, 0, 1)[None].float() / 255
        latent = generator.encode(original)
        latent[:, -len(names):] = torch.tensor([list(values.values())], dtype=torch.float32)
        again = torch.round(generator.decode(latent) * 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        written = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        assert np.array_equal(again, written), row["key"]
    assert moved > 0
    card = (out / "README.md").read_text()
    assert "name: attributes" in card and "name: translate_x" in card


def test_the_attributes_column_is_read_as_a_struct_by_datasets(tiny_recipe: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    recipe = with_generator(tiny_recipe, {"kind": "attributes", "attributes": {"rotate": EDITS["rotate"]}}, perturbation={"budget": 2})
    out = tmp_path / "out"
    assert build(recipe, out).exit_code == 0
    ds = datasets.load_dataset("parquet", data_files=str(out / "cnn" / "*.parquet"), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.features["attributes"] == {"rotate": datasets.Value("float32")}
    assert all(-12 <= row["attributes"]["rotate"] <= 12 for row in ds)


# ----------------------------------------------------------------------------- the generators


def test_an_attribute_never_leaves_its_range() -> None:
    generator = attributes_generator(EDITS)
    latent = generator.encode(torch.rand(5, 3, 16, 16))
    pixels = latent[:, : generator.pixels].clone()
    for step in range(40):
        direction = torch.randn(latent.shape) + (3 if step < 20 else -3)  # push out of both ends
        latent = generator.step(latent, direction, 0.001)
        values = generator.attributes(latent)
        for index, name in enumerate(generator.attribute_names):
            low, high = EDITS["translate" if name.startswith("translate_") else name]["range"]
            assert ((values[:, index] >= low) & (values[:, index] <= high)).all(), name
    assert torch.equal(latent[:, : generator.pixels], pixels)  # only the parameters ever move


def test_the_identity_reproduces_the_original_and_every_attribute_has_a_gradient() -> None:
    generator = attributes_generator(EDITS)
    images = torch.randint(0, 256, (3, 3, 16, 16)).double() / 255
    latent = generator.encode(images).requires_grad_(True)
    decoded = generator.decode(latent)
    assert torch.equal(torch.round(decoded * 255), torch.round(images * 255))
    (gradient,) = torch.autograd.grad((decoded * torch.randn(3, 16, 16, dtype=torch.float64)).sum(), latent)
    assert (generator.attributes(gradient).abs() > 0).all()  # blur too: a sign step can leave 0


def test_attribute_recipes_are_checked_at_the_edge() -> None:
    for edits, fragment in (
        ({"rotate": {"step": 1, "range": [5, 10]}}, "must hold the identity 0.0"),
        ({"twist": {"step": 1, "range": [-1, 1]}}, "unknown attribute 'twist'"),
        ({}, "at least one attribute"),
        ({"blur": {"step": 0, "range": [0, 1]}}, "greater than 0"),
    ):
        with pytest.raises(RecipeError, match=fragment):
            parse_component("generators", {"kind": "attributes", "attributes": edits}, ("generator",))


def test_vae_recipes_are_checked_at_the_edge() -> None:
    for data, fragment in (
        ({"model": "a/b", "architecture": TINY_VAE}, "not both or neither"),
        ({}, "not both or neither"),
        ({"model": "a/b", "checkpoint": "x.safetensors"}, "go with architecture"),
        ({"architecture": {**TINY_VAE, "block_out_channels": [8, 6]}}, "multiple of norm_num_groups"),
    ):
        with pytest.raises(RecipeError, match=fragment):
            parse_component("generators", {"kind": "vae", **data}, ("generator",))


def test_vae_latent_is_the_scaled_posterior_mean(tmp_path: Path, context: ComponentContext) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(**{**VAEArchitecture.model_validate(TINY_VAE).kwargs(), "scaling_factor": 0.5, "shift_factor": 0.1})
    model.save_pretrained(tmp_path / "vae")
    generator = load_vae(VAEConfig(kind="vae", model=str(tmp_path / "vae")), context)
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        mean = model.encode(images * 2 - 1).latent_dist.mean
        latent = generator.encode(images)
        assert torch.allclose(latent, (mean - 0.1) * 0.5, atol=1e-6)
        assert torch.allclose(generator.decode(latent), ((model.decode(mean).sample + 1) / 2).clamp(0, 1), atol=1e-5)


def test_a_mask_on_the_vae_latent_restricts_the_steps() -> None:
    _, oracle, model = make_components(0)
    generator = tiny_vae()
    images, labels = batch_inputs(generator, oracle, 0, n=12)
    mask = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    config = PerturbationConfig(step_size=0.05, budget=4)
    masked = perturb_batch(generator, oracle, model, images, labels, config, mask=mask, dtype=torch.float64)
    change = (masked.latent_final - masked.latent_start).abs()
    assert (masked.steps > 0).any()
    assert torch.equal(change[:, mask == 0], torch.zeros_like(change[:, mask == 0]))
    assert (change[:, mask == 1] > 0).any()
    free = perturb_batch(generator, oracle, model, images, labels, config, dtype=torch.float64)
    assert ((free.latent_final - free.latent_start).abs()[:, mask == 0] > 0).any()


def test_the_registry_answers_for_both_kinds() -> None:
    for name in ("vae", "attributes"):
        entry = GENERATORS.entry(name)
        assert entry.config is not None and entry.preflight is not None and entry.description
    assert GENERATORS.entry("vae").trainer is not None and GENERATORS.entry("vae").weights is not None


# ----------------------------------------------------------------------------- train, dry run, fit-mask


def vae_digits_recipe(tmp_path: Path) -> Path:
    recipe = {
        "name": "vae-digits",
        "source": {"kind": "sklearn-digits", "split": "test"},
        "image_size": 16,
        "batch_size": 16,
        "reference_models": [{"name": "cnn", "model": "py:" + str(Path(__file__).parent / "tiny_models.py") + ":tiny_cnn", "pretrained": False}],
        "generator": {"kind": "vae", "architecture": TINY_VAE, "checkpoint": "cache:vae-test/vae.safetensors",
                      "train": {"epochs": 1, "batch_size": 128, "lr": 0.003}},
        "oracle": {"kind": "classifier", "model": {"model": "py:" + str(Path(__file__).parent / "tiny_models.py") + ":tiny_cnn",
                                                   "kwargs": {"width": 4}, "pretrained": False}},
        "perturbation": {"step_size": 0.05, "budget": 4},
    }
    path = tmp_path / "vae.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_train_generator_trains_a_vae_the_build_then_loads(tmp_path: Path) -> None:
    recipe = vae_digits_recipe(tmp_path)
    cache = tmp_path / "cache"
    dry = CliRunner().invoke(main, ["-q", "run", str(recipe), "--dry-run", "--cache-dir", str(cache)])
    assert dry.exit_code == 0, dry.output
    assert "trained on the first run" in dry.output and "a multiple of f2" in dry.output
    trained = CliRunner().invoke(main, ["-q", "train", "generator", str(recipe), "--device", "cpu", "--cache-dir", str(cache)])
    assert trained.exit_code == 0, trained.output
    written = Path(trained.output.strip().removeprefix("wrote "))
    assert written.is_file() and written.parent == cache / "vae-test"
    dry = CliRunner().invoke(main, ["-q", "run", str(recipe), "--dry-run", "--cache-dir", str(cache)])
    assert "trained earlier, in the cache" in dry.output
    out = tmp_path / "mask.safetensors"
    fitted = CliRunner().invoke(main, ["-q", "fit-mask", str(recipe), "--out", str(out), "--samples", "48", "--lambda", "0.5",
                                       "--device", "cpu", "--cache-dir", str(cache)])
    assert fitted.exit_code == 0, fitted.output
    from builder.sparse import load_mask

    assert tuple(load_mask(out, expected_channels=2).shape) == (2, 8, 8)


def test_a_size_the_vae_cannot_take_is_one_line(tmp_path: Path) -> None:
    recipe = vae_digits_recipe(tmp_path)
    result = CliRunner().invoke(main, ["-q", "train", "generator", str(recipe), "--set", "image_size=15", "--device", "cpu",
                                       "--cache-dir", str(tmp_path / "cache")])
    assert_one_line_error(result, "image_size 15", "downsamples by 2", "use 14 or 16")


def test_fit_mask_refuses_a_generator_that_takes_no_mask(tiny_recipe: Path, tmp_path: Path) -> None:
    recipe = with_generator(tiny_recipe, {"kind": "attributes", "attributes": {"rotate": EDITS["rotate"]}})
    result = CliRunner().invoke(main, ["-q", "fit-mask", str(recipe), "--out", str(tmp_path / "m.safetensors"), "--device", "cpu"])
    assert_one_line_error(result, "generator kind 'attributes' takes no mask")
