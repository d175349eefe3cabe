"""``run --dry-run``: every bundled recipe checks out offline; each kind of bad name is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main
from builder.recipes import bundled_recipes


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def dry_run(recipe: str, *extra: str):
    return CliRunner().invoke(main, ["-q", "run", recipe, "--dry-run", *extra])


@pytest.mark.parametrize("recipe", sorted(bundled_recipes()))
def test_every_bundled_recipe_passes_offline(recipe: str) -> None:
    result = dry_run(recipe)
    assert result.exit_code == 0, result.output
    assert f"dry run of {recipe}:" in result.output and "nothing downloaded" in result.output
    assert "FAIL" not in result.output


def failure(recipe: str, *extra: str) -> str:
    result = dry_run(recipe, *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    fails = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert fails and result.output.strip().splitlines()[-1].startswith("error: dry run of")
    return "\n".join(fails)


def test_bad_timm_names_are_caught() -> None:
    message = failure("imagenet-convnext", "--set", "reference_models.0.model=timm:convnext_base.fb_in22kk")
    assert "reference model convnext: timm has no pretrained 'convnext_base.fb_in22kk'; did you mean 'convnext_base.fb_in22k'?" in message
    assert "name the full pretrained tag" in failure("imagenet-convnext", "--set", "reference_models.0.model=timm:convnext_base")
    assert "did you mean 'convnext_base'" in failure("imagenet-convnext", "--set", "reference_models.0.model=timm:convnext_bse.fb_in1k")


def test_bad_open_clip_pair_is_caught() -> None:
    message = failure("imagenet-vit", "--set", "oracle.pretrained=openia")
    assert "open_clip has no pretrained 'openia' for ViT-B-32; tags: " in message and "openai" in message
    assert "did you mean 'ViT-B-32'" in failure("imagenet-vit", "--set", "oracle.model=ViT-B-23")


def test_class_count_mismatch_is_caught() -> None:
    message = failure("digits-demo", "--set", "oracle.prompt_names=[zero, one, two]")
    assert "class counts disagree: source 10" in message and "oracle prompts 3" in message
    # a pretrained model given another class count would get a random head: refused as such
    message = failure("imagenet-resnet50", "--set", "reference_models.0.num_classes=10")
    assert "num_classes 10 is not its pretrained head's 1000 classes, so its head would start random" in message


def test_a_train_block_that_would_learn_the_evaluated_samples_is_caught(tmp_path) -> None:
    """A component trained on the split the benchmark evaluates (or on a source with no split at
    all, whose samples are all evaluated) memorises its test set: SA and FMR inflated, silently."""
    message = failure("digits-demo", "--set", "source.split=train")
    assert "reference model convnext weights: train.split 'train' shares samples with the split the benchmark evaluates " \
           "(source.split 'train'), so the component would learn its own test set; train on another split" in message
    assert "shares samples" in failure("digits-demo", "--set", "source.split=all")  # all holds train
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    message = failure("digits-demo", "--set", f"source={{kind: imagefolder, path: {tmp_path / 'images'}}}")
    assert "source kind 'imagefolder' has no split, so a train block would train on the very samples the benchmark evaluates" in message


def test_missing_local_weights_and_config_are_caught(tmp_path) -> None:
    assert "does not exist" in failure("digits-demo", "--set", f"generator.config={tmp_path / 'nope.yaml'}")
    message = failure("digits-demo", "--set", f"reference_models.0.checkpoint={tmp_path / 'gone.pt'}", "--set", "reference_models.0.train=null")
    assert "gone.pt does not exist" in message


def test_plan_with_a_limit() -> None:
    result = dry_run("imagenet-convnext", "--limit", "2500")
    assert result.exit_code == 0, result.output
    assert "plan 2500 samples -> 3 work units, 6 shards" in result.output
    assert "125000 gradient steps" in result.output


def test_class_ranges_are_checked_against_the_model() -> None:
    message = failure("imagenet9", "--set", "reference_models.0.class_ranges.dog=[[990, 1005]]")
    assert "class_ranges reach index 1005 but the model has 1000 outputs" in message
    message = failure("imagenet9", "--set", "reference_models.0.class_ranges={dog: [[151, 268]]}")
    assert "reference model resnet50: timm:resnet50.tv_in1k: class_ranges has no ranges for the class 'cat'; key the ranges by the " \
           "benchmark's class names ('dog', 'cat', 'frog', 'turtle', 'bird', 'primate', 'fish', 'crab', ...)" in message
    # names the benchmark lacks were pooled by position, and passed the dry run
    renamed = "{" + ", ".join(f"c{i}: [[{i}, {i}]]" for i in range(9)) + "}"
    message = failure("imagenet9", "--set", f"reference_models.0.class_ranges={renamed}")
    assert "class_ranges names 'c0', which is not a class of the benchmark" in message


def test_find_location_never_downloads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding says where a file is or would come from; only fetching downloads."""
    import urllib.request

    from builder.checkpoints import ResolveContext, cached_download, fetch_location, find_location

    def no_network(*args, **kwargs):
        raise AssertionError("find_location opened the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    ctx = ResolveContext(tmp_path, tmp_path / "cache")
    url = "https://example.org/weights/model.ckpt"
    found = find_location(url, ctx)
    assert (found.path, found.fetchable, found.missing) == (None, True, False) and "downloaded on the first run" in found.how
    cached = cached_download(url, ctx.cache_dir)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    found = find_location(url, ctx)
    assert (found.path, found.how, found.ready) == (cached, "in the cache", True)
    assert fetch_location(url, ctx) == cached  # cached: fetching needs no network either
    hub = find_location("hf-hub:org/repo/model.safetensors@v1", ctx)
    assert (hub.path, hub.fetchable) == (None, True) and "from the Hub" in hub.how
    local = find_location("weights/theta.pt", ctx)
    assert (local.path, local.local, local.missing) == (tmp_path / "weights" / "theta.pt", True, True)


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_miss_tells_how_to_fail_fast_offline(tmp_path, monkeypatch: pytest.MonkeyPatch, offline: bool) -> None:
    """Offline, huggingface_hub retries each file for about 20 s: the one-line error says how
    not to wait (HF_HUB_OFFLINE=1), unless it is set already."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from builder.checkpoints import ResolveContext, fetch_location
    from builder.errors import CheckpointError

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    with pytest.raises(CheckpointError) as caught:
        fetch_location("hf-hub:org/repo/model.safetensors", ResolveContext(tmp_path, tmp_path / "cache"))
    line = str(caught.value)
    assert line.startswith("hf-hub:org/repo/model.safetensors: not in the HF cache and the Hub cannot be reached") and "\n" not in line
    assert ("set HF_HUB_OFFLINE=1 so that this fails at once" in line) is not offline


def test_a_dry_run_names_remote_shards_without_downloading_them(tiny_recipe, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A webdataset source over URLs was opened by the dry run, which downloaded every shard."""
    import urllib.request

    import yaml
    from helpers import write_shard

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run opened the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["source"] = {"kind": "webdataset", "urls": "https://example.org/shards/s-{0..1}.tar", "class_names": ["red", "green", "blue"]}
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = dry_run(str(path), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert "webdataset: 2 shard(s) to download on the first run, such as https://example.org/shards/s-0.tar" in result.output
    write_shard(tmp_path / "local.tar", [("a", (200, 30, 30), 0), ("b", (30, 30, 200), 2)])  # at hand: opened and counted
    recipe["source"]["urls"] = "local.tar"
    path.write_text(yaml.safe_dump(recipe))
    result = dry_run(str(path), "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0 and "webdataset: 2 samples, 3 classes" in result.output, result.output


def test_the_dry_run_says_what_a_run_would_do_with_out(tiny_build: Path, tiny_recipe: Path, tmp_path: Path) -> None:
    """``run --dry-run --out DIR`` passed while the real run refused DIR (built with other
    settings); it now tells fresh, resume, replace or refuse, and writes nothing."""
    def dry(*extra: str):
        return CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--device", "cpu", *extra])

    new = tmp_path / "new"
    assert "a run writes a fresh build" in dry("--out", str(new)).output and not new.exists()
    assert "holds a build of these settings; a run resumes it" in dry("--out", str(tiny_build)).output
    other = dry("--out", str(tiny_build), "--set", "seed=5")
    assert other.exit_code != 0 and f"--out {tiny_build} was built with different settings (recipe.seed: 0 -> 5)" in other.output
    assert "--overwrite replaces the tool's own files there" in dry("--out", str(tiny_build), "--set", "seed=5", "--overwrite").output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert "holds no build of this tool" in dry("--out", str(tmp_path / "mine")).output


def test_the_dry_run_refuses_what_the_run_refuses_about_foreign_files_and_the_source(tiny_build: Path, tiny_recipe: Path,
                                                                                       tmp_path: Path) -> None:
    """It said 'ok' for a dir the run then refused: a file the build did not write (with
    --overwrite, or inside a config dir on a resume), or the recipe copied elsewhere (its
    source is then another folder)."""
    import shutil

    def dry(recipe: Path, *extra: str):
        return CliRunner().invoke(main, ["-q", "run", str(recipe), "--dry-run", "--device", "cpu", "--out", str(tiny_build), *extra])

    (tiny_build / "results.json").write_text("{}")
    refused = dry(tiny_recipe, "--overwrite")
    assert refused.exit_code == 2 and "refusing to overwrite" in refused.output and "results.json" in refused.output, refused.output
    assert dry(tiny_recipe, "--overwrite", "--force-clean").exit_code == 0
    assert dry(tiny_recipe).exit_code == 0  # a resume leaves a file outside the config dirs be
    (tiny_build / "cnn" / "mine.txt").write_text("mine")
    refused = dry(tiny_recipe)
    assert refused.exit_code == 2 and "refusing to resume into" in refused.output and "cnn/mine.txt" in refused.output, refused.output
    (tiny_build / "cnn" / "mine.txt").unlink()
    copy = tmp_path / "copy"
    shutil.copytree(tiny_recipe.parent / "images", copy / "images")
    shutil.copy(tiny_recipe, copy / "tiny.yaml")
    for name in ("vqgan.yaml", "vqgan.ckpt", "theta.pt", "oracle.pt"):
        shutil.copy(tiny_recipe.parent / name, copy / name)
    moved = dry(copy / "tiny.yaml")
    assert moved.exit_code == 2 and "was built with different settings (source.locations:" in moved.output, moved.output


def test_a_missing_relative_file_says_where_it_was_looked_for(tiny_recipe: Path) -> None:
    """A relative path is taken from the recipe's folder: 'mask.safetensors does not exist' was
    said of a file that existed in the current directory."""
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--set", "generator.mask=mask.safetensors"])
    assert result.exit_code == 2
    assert (f"generator mask: mask.safetensors does not exist (looked for {tiny_recipe.parent / 'mask.safetensors'}: a relative path is "
            "taken from the recipe's folder)") in result.output, result.output
