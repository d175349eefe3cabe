"""Several generators in one build (the paper's Table 3 as one benchmark): each (reference model x
generator) pair is one config, named ``<model>-<generator>``, with its generator recorded in the
manifest and its own card section; resume, verify, score, publish and dynamic scores handle it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import TINY_MODELS
from helpers import TINY_EDITS, assert_one_line_error, build, check_rows, expected_records, needs_compiler, shard_hashes

from builder.cli import main
from builder.config import parse_recipe, recipe_to_dict
from builder.errors import RecipeError
from builder.recipes import load_recipe
from builder.verify import verify_benchmark

CONFIGS = ["cnn-vqgan", "cnn-attributes", "cnn-pixel"]
#: the manifest (and so the card) lists configs sorted by name
LISTED = sorted(CONFIGS)


def several(recipe: Path, **generators: dict) -> Path:
    """``recipe`` with its generator replaced by the ``generators`` mapping (default: vqgan,
    attributes and pixel, the pixel one with its own step size)."""
    data = yaml.safe_load(recipe.read_text())
    vqgan = data.pop("generator")
    data["generators"] = generators or {
        "vqgan": vqgan,
        "attributes": {"kind": "attributes", "attributes": TINY_EDITS},
        "pixel": {"kind": "pixel", "step_size": 0.02},
    }
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe


@pytest.fixture(scope="module")
def _built_once() -> dict[str, Path]:
    return {}


@pytest.fixture
def multi(tiny_recipe: Path, tmp_path: Path, _built_once: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe with three generators (``tiny_recipe`` is rewritten so), built once per
    module; each test gets its own copy in ``tmp_path/multi``."""
    several(tiny_recipe)
    if "dir" not in _built_once:
        _built_once["dir"] = tmp_path_factory.mktemp("multi-once") / "multi"
        result = build(tiny_recipe, _built_once["dir"])
        assert result.exit_code == 0, result.output
    shutil.copytree(_built_once["dir"], tmp_path / "multi")
    return tmp_path / "multi"


# ----------------------------------------------------------------------------- the recipe


def test_configs_are_every_model_with_every_generator(tiny_recipe: Path) -> None:
    data = yaml.safe_load(several(tiny_recipe).read_text())
    data["reference_models"].append({**data["reference_models"][0], "name": "cnn2"})
    recipe = parse_recipe(data)
    assert [c.name for c in recipe.build_configs] == [*CONFIGS, "cnn2-vqgan", "cnn2-attributes", "cnn2-pixel"]
    pixel = recipe.build_config("cnn-pixel")
    assert (pixel.generator_name, pixel.generator.kind, pixel.model.config_name) == ("pixel", "pixel", "cnn")
    assert pixel.perturbation.step_size == 0.02 and recipe.build_config("cnn-vqgan").perturbation.step_size == 0.01
    with pytest.raises(RecipeError, match="unknown config 'cnn-vae'.*cnn-vqgan"):
        recipe.build_config("cnn-vae")


def test_a_one_generator_recipe_is_written_as_before(tiny_recipe: Path) -> None:
    """Neither ``generators`` nor an unset ``step_size`` appear: old recipes keep their hashes."""
    recipe = load_recipe(str(tiny_recipe)).recipe
    written = recipe_to_dict(recipe)
    assert "generators" not in written and "step_size" not in written["generator"]
    assert [c.name for c in recipe.build_configs] == ["cnn"]


@pytest.mark.parametrize(("change", "fragments"), [
    ({"generator": {"kind": "pixel"}}, ("recipe error at <recipe>", "exactly one of them")),
    ({"generators": {}}, ("recipe error at generators", "at least one generator")),
    ({"generators": {"Big Name": {"kind": "pixel"}}}, ("recipe error at generators", "'Big Name'", "lowercase")),
    ({"generators": {"px": {"kind": "pixle"}}}, ("recipe error at generators.px.kind", "did you mean 'pixel'")),
    ({"generators": {"px": {"kind": "pixel", "step_size": -1}}}, ("recipe error at generators.px.step_size", "greater than 0")),
    ({"generators": {"a": {"kind": "attributes", "attributes": {"rotate": {"step": 1, "range": [-1, 1]}}, "step_size": 0.1}}},
     ("recipe error at generators.a", "its own step")),
])
def test_bad_generator_sections_are_one_line_errors(tiny_recipe: Path, change: dict, fragments: tuple[str, ...]) -> None:
    data = yaml.safe_load(several(tiny_recipe).read_text())
    data.update(change)
    with pytest.raises(RecipeError) as error:
        parse_recipe(data)
    message = str(error.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_colliding_config_names_are_refused(tiny_recipe: Path) -> None:
    data = yaml.safe_load(several(tiny_recipe, **{"b-c": {"kind": "pixel"}, "c": {"kind": "pixel"}}).read_text())
    data["reference_models"] = [{**data["reference_models"][0], "name": "a"}, {**data["reference_models"][0], "name": "a-b"}]
    with pytest.raises(RecipeError, match="'a-b-c' repeats"):
        parse_recipe(data)


# ----------------------------------------------------------------------------- the build


def test_a_build_with_three_generators(multi: Path, tiny_recipe: Path) -> None:
    manifest = json.loads((multi / "manifest.json").read_text())
    assert list(manifest["configs"]) == LISTED
    recorded = {name: config["generator"] for name, config in manifest["configs"].items()}
    assert {name: (g["name"], g["kind"]) for name, g in recorded.items()} == {
        "cnn-vqgan": ("vqgan", "vqgan"), "cnn-attributes": ("attributes", "attributes"), "cnn-pixel": ("pixel", "pixel")}
    assert recorded["cnn-pixel"]["step_size"] == 0.02
    for name in CONFIGS:
        assert manifest["configs"][name]["reference_model"]["model"].endswith(":tiny_cnn")
        for row in pq.read_table(multi / manifest["configs"][name]["shards"][0]["files"]["parquet"]["path"]).to_pylist():
            assert row["reference_model"] == "cnn"
            assert ("attributes" in row) == (name == "cnn-attributes")
    report = verify_benchmark(multi, oracle=True, recipe=str(tiny_recipe))
    assert report.ok, report.failures
    assert report.oracle_rates == dict.fromkeys(CONFIGS, 1.0)


def test_each_config_is_what_a_build_with_that_generator_alone_writes(multi: Path, tiny_recipe: Path, tmp_path: Path) -> None:
    """Same bytes: a config does not depend on the other generators beside it."""
    generators = yaml.safe_load(tiny_recipe.read_text())["generators"]
    for name in ("attributes", "pixel"):
        alone = tmp_path / f"alone-{name}.yaml"
        data = yaml.safe_load(tiny_recipe.read_text())
        data["generators"] = {name: generators[name]}
        alone.write_text(yaml.safe_dump(data))
        result = build(alone, tmp_path / name)
        assert result.exit_code == 0, result.output
        own = {path.split("/", 1)[1]: digest for path, digest in shard_hashes(tmp_path / name).items()}
        together = {path.split("/", 1)[1]: digest for path, digest in shard_hashes(multi).items() if path.startswith(f"cnn-{name}/")}
        assert own == together and own


def test_a_weightless_component_does_not_change_with_the_generators_beside_it(tiny_recipe: Path, tmp_path: Path) -> None:
    """Every component was built from one random stream after every generator: a reference
    model without weights (random init) changed when a generator was added, and with it every
    config's shards (SA 33% with two generators, 67% alone)."""
    several(tiny_recipe)
    data = yaml.safe_load(tiny_recipe.read_text())
    data["reference_models"][0].pop("checkpoint")
    fingerprints = {}
    for names in (("vqgan", "pixel"), ("pixel",)):
        recipe = tmp_path / f"{'-'.join(names)}.yaml"
        recipe.write_text(yaml.safe_dump({**data, "generators": {name: data["generators"][name] for name in names}}))
        out = tmp_path / "-".join(names)
        assert build(recipe, out).exit_code == 0
        fingerprints[names] = json.loads((out / "manifest.json").read_text())["configs"]["cnn-pixel"]["reference_weights_sha256"]
    assert fingerprints[("vqgan", "pixel")] == fingerprints[("pixel",)]


def test_the_card_has_a_section_and_features_per_config(multi: Path) -> None:
    card = (multi / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    features = {info["config_name"]: [next(iter(f)) if isinstance(f, dict) and "name" not in f else f["name"] for f in info["features"]]
                for info in header["dataset_info"]}
    assert [entry["config_name"] for entry in header["configs"]] == LISTED
    assert "attributes" in features["cnn-attributes"] and "attributes" not in features["cnn-pixel"]
    assert "| config | reference model | generator |" in card
    for name, generator in zip(CONFIGS, ("vqgan", "attributes", "pixel"), strict=True):
        assert f"### `{name}`" in card and f"generator `{generator}`" in card
    assert "One config per reference model and generator" in card


def test_datasets_loads_every_config(multi: Path) -> None:
    from datasets import load_dataset

    manifest = json.loads((multi / "manifest.json").read_text())
    for config in CONFIGS:
        dataset = load_dataset(str(multi), name=config, split="test")
        rows = list(dataset)
        check_rows(rows, expected_records(multi, config), manifest["class_names"])
        assert ("attributes" in dataset.features) == (config == "cnn-attributes")


def test_resume_rebuilds_only_what_is_missing(tiny_recipe: Path, tmp_path: Path) -> None:
    multi = tmp_path / "own"  # a build of this very recipe file: the copies were built from another
    assert build(several(tiny_recipe), multi).exit_code == 0
    before = shard_hashes(multi)
    stats = multi / "_stats" / "cnn-attributes" / "test-00001-of-00003.json"
    stats.unlink()
    (multi / "cnn-attributes" / "test-00001-of-00003.parquet").unlink()
    result = build(tiny_recipe, multi)
    assert result.exit_code == 0, result.output
    assert stats.is_file() and shard_hashes(multi) == before
    again = build(tiny_recipe, multi)
    assert again.exit_code == 0 and shard_hashes(multi) == before


def test_score_reports_every_config(multi: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({"model": f"py:{TINY_MODELS}:tiny_cnn", "checkpoint": str(tmp_path / "theta.pt")}))
    result = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(multi), "--model", str(model), "--trust-remote-code",
                                       "--device", "cpu", "--bootstrap", "10", "--workers", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())["results"]
    assert [r["config"] for r in results] == LISTED
    assert all(r["white_box"] for r in results)  # one reference model under every generator
    manifest = json.loads((multi / "manifest.json").read_text())
    for row in results:
        assert row["fmr"] == pytest.approx(manifest["configs"][row["config"]]["fmr"], abs=1e-6)
    # two models on three configs: the transfer matrix, one row per config, the white-box cells starred
    other = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(multi), "--model", str(model), "--model", f"py:{TINY_MODELS}:color_net",
                                      "--trust-remote-code", "--device", "cpu", "--bootstrap", "0", "--workers", "0", "--json", str(out)])
    assert other.exit_code == 0, other.output
    matrix = other.output[other.output.index("transfer matrix: FMR (* white-box)"):].splitlines()
    rows = {line.split()[0]: line.split()[-2:] for line in matrix[2:5]}
    assert sorted(rows) == LISTED and len(matrix[1].split()) == 4  # 'built against' and the two models
    both = json.loads(out.read_text())["results"]
    cnn, color = dict.fromkeys(r["name"] for r in both)  # columns in the order the models were given
    scored = {(r["config"], r["name"]): r for r in both}
    for config, cells in rows.items():
        assert cells == [f"{scored[(config, cnn)]['fmr']:.1f}*", f"{scored[(config, color)]['fmr']:.1f}"], (config, cells)


def test_dynamic_score_regenerates_through_each_generator(tiny_recipe: Path, tmp_path: Path) -> None:
    """One regenerated benchmark, and one result, per generator; ``--save`` keeps only one."""
    several(tiny_recipe)
    spec = yaml.safe_load(tiny_recipe.read_text())["reference_models"][0]
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({**spec, "checkpoint": str(tiny_recipe.parent / spec["checkpoint"])}))
    out = tmp_path / "dynamic.json"
    args = ["-q", "score", "--dynamic", "--recipe", str(tiny_recipe), "--model", str(model), "--limit", "4", "--device", "cpu",
            "--bootstrap", "0", "--trust-remote-code"]
    result = CliRunner().invoke(main, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())["results"]
    assert [(r["config"], r["mode"], r["n"]) for r in results] == [(f"evaluated-{g}", "dynamic", 4) for g in ("vqgan", "attributes", "pixel")]
    assert all(r["white_box"] for r in results)
    refused = CliRunner().invoke(main, [*args, "--save", str(tmp_path / "kept")])
    assert_one_line_error(refused, "--save keeps one generated benchmark", "3 generators")


def test_publish_plans_every_config(multi: Path) -> None:
    from builder.publish import plan_upload

    planned = [f.path for f in plan_upload(multi).files]
    for config in CONFIGS:
        assert {f"{config}/test-0000{i}-of-00003.{ext}" for i in range(3) for ext in ("parquet", "tar")} <= set(planned)


def test_fit_mask_and_train_pick_a_generator_by_name(tiny_recipe: Path, tmp_path: Path) -> None:
    several(tiny_recipe)
    mask = tmp_path / "mask.safetensors"
    result = CliRunner().invoke(main, ["-q", "fit-mask", str(tiny_recipe), "--out", str(mask), "--generator", "pixel", "--samples", "100",
                                       "--lambda", "0.5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "--set generators.pixel.mask=" in result.output and mask.is_file()
    fitted = mask.read_bytes()
    kept = CliRunner().invoke(main, ["-q", "fit-mask", str(tiny_recipe), "--out", str(mask), "--generator", "pixel", "--device", "cpu"])
    assert_one_line_error(kept, f"--out {mask} exists; pass --overwrite to replace it")  # before any fitting
    assert mask.read_bytes() == fitted
    other = str(tmp_path / "other.safetensors")
    wrong = CliRunner().invoke(main, ["-q", "fit-mask", str(tiny_recipe), "--out", other, "--generator", "pixle", "--device", "cpu"])
    assert_one_line_error(wrong, "unknown generator 'pixle'", "did you mean 'pixel'")
    refused = CliRunner().invoke(main, ["-q", "fit-mask", str(tiny_recipe), "--out", other, "--generator", "attributes", "--device", "cpu"])
    assert_one_line_error(refused, "takes no mask")


def test_fit_mask_on_a_recipe_that_names_the_mask_it_will_write(tiny_recipe: Path, tmp_path: Path) -> None:
    """The recipe may already name the mask (the usual edit before fitting it, or a re-fit):
    fitting runs unmasked and neither needs nor reads that file (it stopped with 'mask not found')."""
    several(tiny_recipe)
    mask = tmp_path / "mask.safetensors"
    args = ["-q", "fit-mask", str(tiny_recipe), "--out", str(mask), "--generator", "pixel", "--samples", "100", "--lambda", "0.5",
            "--device", "cpu", "--set", f"generators.pixel.mask={mask}"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    fitted = mask.read_bytes()
    again = CliRunner().invoke(main, [*args[:4], str(tmp_path / "again.safetensors"), *args[5:]])  # the named mask exists now
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.safetensors").read_bytes() == fitted


def test_a_mask_is_checked_by_the_dry_run_and_a_replaced_one_is_refused_on_resume(tiny_recipe: Path, tmp_path: Path) -> None:
    """The mask a generator reads is checked offline (the dry run passed and the build then
    stopped), and fingerprinted like weights: a resume after it was fitted again in place is
    refused instead of mixing two masks in one benchmark."""
    from builder.sparse import MaskFit, save_mask

    mask = tmp_path / "mask.safetensors"
    dry = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--set", f"generator.mask={mask}"])
    assert dry.exit_code == 2 and f"FAIL generator mask: {mask} does not exist; fix the path or create it with 'build-benchmark fit-mask'" in dry.output
    save_mask(mask, MaskFit(torch.ones(8, 8, 8, dtype=torch.bool), 0.0, 1.0, 1, 1), {"test": "first"})  # the tiny VQGAN's latent: 8 x 8 x 8
    out = tmp_path / "out"
    args = ["-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress", "--set", f"generator.mask={mask}"]
    assert CliRunner().invoke(main, [*args, "--limit", "5"]).exit_code == 0
    (out / "_stats" / "cnn" / "test-00000-of-00001.json").unlink()
    save_mask(mask, MaskFit(torch.zeros(8, 8, 8, dtype=torch.bool), 1.0, 1.0, 1, 1), {"test": "fitted again"})
    assert_one_line_error(CliRunner().invoke(main, [*args, "--limit", "5"]), "different settings", "mask")


def test_step_size_and_mask_do_not_retrain_a_generator(tmp_path: Path) -> None:
    """They say how a generator is used, not what it is: tuning them keeps its trained weights'
    file and seed, so digits-compare shares digits-vae's VAE; the train block still counts."""
    from builder.components.base import ComponentContext

    recipe = load_recipe("digits-compare").recipe
    context = ComponentContext("cpu", tmp_path, tmp_path, tuple("0123456789"), recipe.image_size, recipe.source, recipe.seed)
    vae = recipe.named_generators["vae"]
    checkpoint = tmp_path / "vae.safetensors"
    alone = load_recipe("digits-vae").recipe.generator
    assert context.trained_location(checkpoint, vae) == context.trained_location(checkpoint, alone)
    for changed in ({"step_size": 0.2}, {"mask": "mask.safetensors"}):
        assert context.trained_location(checkpoint, vae.model_copy(update=changed)) == context.trained_location(checkpoint, vae)
        assert context.train_seed(vae.model_copy(update=changed)) == context.train_seed(vae)
    retrained = vae.model_copy(update={"train": vae.train.model_copy(update={"epochs": 3})})  # type: ignore[union-attr]
    assert context.trained_location(checkpoint, retrained) != context.trained_location(checkpoint, vae)


def test_ref_names_a_config_or_the_reference_model_all_its_configs_share(multi: Path) -> None:
    from builder.benchmark import open_benchmark
    from builder.errors import BuilderError
    from builder.score import reference_spec

    bench = open_benchmark(str(multi))
    by_model = reference_spec(bench, "ref:cnn", trust_remote_code=True)
    assert by_model == reference_spec(bench, "ref:cnn-pixel", trust_remote_code=True)
    assert by_model.model.endswith(":tiny_cnn")  # type: ignore[union-attr]
    with pytest.raises(BuilderError, match="unknown config .*'cnn-vae'.*choices"):
        reference_spec(bench, "ref:cnn-vae", trust_remote_code=True)


@pytest.mark.slow
def test_compile_builds_two_vqgans_of_different_latent_sizes(tiny_recipe: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``run --compile`` with two generators of one kind and different latent sizes (8 x 8 and
    4 x 4): the second decoder compiles in the process the first was compiled in, and the
    build verifies, the oracle re-check included."""
    import torch

    from builder.components.vqgan import TamingVQGAN

    from tiny_models import TINY_VQGAN_YAML

    needs_compiler()
    coarse = yaml.safe_load(TINY_VQGAN_YAML)
    coarse["model"]["params"]["ddconfig"]["ch_mult"] = [1, 2, 2]
    (tiny_recipe.parent / "coarse.yaml").write_text(yaml.safe_dump(coarse))
    torch.manual_seed(1)
    torch.save({"state_dict": TamingVQGAN(coarse["model"]["params"]).state_dict()}, tiny_recipe.parent / "coarse.ckpt")
    vqgan = yaml.safe_load(tiny_recipe.read_text())["generator"]
    several(tiny_recipe, vqgan=vqgan, coarse={"kind": "vqgan", "config": "coarse.yaml", "checkpoint": "coarse.ckpt"})
    result = build(tiny_recipe, tmp_path / "compiled", "--compile")
    assert result.exit_code == 0, result.output
    report = verify_benchmark(tmp_path / "compiled", oracle=True, recipe=str(tiny_recipe))
    assert report.ok, report.failures
    assert report.oracle_rates == {"cnn-coarse": 1.0, "cnn-vqgan": 1.0}

    # score --dynamic --compile: the same engine, each generator's decoder compiled
    spec = yaml.safe_load(tiny_recipe.read_text())["reference_models"][0]
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({**spec, "checkpoint": str(tiny_recipe.parent / spec["checkpoint"])}))
    with caplog.at_level(logging.INFO, logger="builder.build.runner"):
        result = CliRunner().invoke(main, ["score", "--dynamic", "--recipe", str(tiny_recipe), "--model", str(model), "--limit", "4",
                                           "--device", "cpu", "--bootstrap", "0", "--trust-remote-code", "--compile"])
    assert result.exit_code == 0, result.output
    compiled = [r.getMessage() for r in caplog.records if "through torch.compile" in r.getMessage()]
    assert sorted(compiled) == [f"decoder of {name} through torch.compile: each compiles on its first batch (about half a minute on a GPU)"
                                for name in ("coarse", "vqgan")]
    assert "evaluated-coarse" in result.output and "evaluated-vqgan" in result.output
