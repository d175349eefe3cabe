"""Models and generators named by Hub id, fetched from the local Hub stand-in (tests/hub_stub.py)
as from the Hub: the loaders' own download paths, not a local directory standing in for them."""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import yaml
from click.testing import CliRunner
from helpers import assert_one_line_error, build, shard_hashes
from safetensors.torch import save_file

from builder.cli import main
from builder.components.oracles import register_builtin_clip_configs
from builder.components.vae import VAEArchitecture, build_autoencoder
from builder.verify import verify_benchmark

TINY_VAE = {"block_out_channels": [8, 8], "latent_channels": 2, "norm_num_groups": 4, "mid_block_add_attention": False}


def saved_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_vae_by_hub_id_is_fetched_once_and_builds(tiny_recipe: Path, tmp_path: Path, reading_hub) -> None:
    """``generator: {kind: vae, model: org/name, subfolder: vae, revision: <sha>}``, as a Stable
    Diffusion VAE is named: the dry run says it will be fetched, the build fetches config and
    safetensors weights at the pinned commit, verifies with the oracle, and the dry run after
    finds its config in the HF cache."""
    torch.manual_seed(0)
    build_autoencoder(VAEArchitecture.model_validate(TINY_VAE)).save_pretrained(tmp_path / "saved" / "vae")
    reading_hub.add_files("org/tiny-vae", saved_files(tmp_path / "saved"), kind="models")
    pinned = reading_hub.commit_sha("org/tiny-vae", kind="models")
    reading_hub.add_files("org/tiny-vae", {"vae/config.json": b"{}"}, kind="models")  # main moves on, and breaks
    data = yaml.safe_load(tiny_recipe.read_text())
    data["generator"] = {"kind": "vae", "model": "org/tiny-vae", "subfolder": "vae", "revision": pinned}
    tiny_recipe.write_text(yaml.safe_dump(data))

    before = CliRunner().invoke(main, ["run", str(tiny_recipe), "--dry-run"])
    assert before.exit_code == 0, before.output
    assert "org/tiny-vae: downloaded from the Hub on the first run" in before.output
    out = tmp_path / "out"
    result = build(tiny_recipe, out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["configs"]["cnn"]["num_perturbed"] > 0
    report = verify_benchmark(out, oracle=True, recipe=str(tiny_recipe))
    assert report.ok and report.oracle_rates == {"cnn": 1.0}, report.failures
    after = CliRunner().invoke(main, ["run", str(tiny_recipe), "--dry-run"])
    assert "org/tiny-vae: config in the HF cache" in after.output, after.output
    # without the pin, main's broken config.json is refused in one line before diffusers reads it
    data["generator"].pop("revision")
    tiny_recipe.write_text(yaml.safe_dump(data))
    broken = build(tiny_recipe, tmp_path / "unpinned")
    assert_one_line_error(broken, "block_out_channels must be a list", "give an AutoencoderKL config.json")


def test_a_timm_model_by_hub_id_or_folder_scores_and_dry_runs(built: Path, tiny_recipe: Path, tmp_path: Path, reading_hub) -> None:
    """``timm:hf-hub:org/name[@rev]`` (a model pushed with timm's push_to_hf_hub) and
    ``timm:local-dir:<folder>`` (save_for_hf) are timm.create_model's own sources: both score
    the same; a pinned revision is honoured when main has moved on; the dry run finds the
    config offline once fetched; a missing repo is one line."""
    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model("test_convnext", num_classes=3), tmp_path / "saved", safe_serialization=True)
    reading_hub.add_files("org/tiny-timm", saved_files(tmp_path / "saved"), kind="models")
    pinned = reading_hub.commit_sha("org/tiny-timm", kind="models")
    reading_hub.add_files("org/tiny-timm", {"config.json": b'{"architecture": "no_such_net"}'}, kind="models")

    results = {}
    for name, spec in (("hub", f"timm:hf-hub:org/tiny-timm@{pinned}"), ("folder", f"timm:local-dir:{tmp_path / 'saved'}")):
        out = tmp_path / f"{name}.json"
        scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", spec, "--workers", "0",
                                           "--bootstrap", "0", "--json", str(out)])
        assert scored.exit_code == 0, scored.output
        [results[name]] = json.loads(out.read_text())["results"]
    assert results["hub"]["n"] == 12 and results["hub"]["sample_predictions"] == results["folder"]["sample_predictions"]
    assert results["hub"]["sa"] == results["folder"]["sa"] and results["hub"]["pa"] == results["folder"]["pa"]

    data = yaml.safe_load(tiny_recipe.read_text())
    data["reference_models"] = [{"name": "hub", "model": "timm:hf-hub:org/tiny-timm", "revision": pinned},
                                {"name": "unfetched", "model": "timm:hf-hub:org/other-timm"}]
    tiny_recipe.write_text(yaml.safe_dump(data))
    dry = CliRunner().invoke(main, ["run", str(tiny_recipe), "--dry-run"])
    assert "timm:hf-hub:org/tiny-timm: config in the HF cache" in dry.output, dry.output
    assert "timm:hf-hub:org/other-timm: downloaded from the Hub on the first run" in dry.output
    missing = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", "timm:hf-hub:org/other-timm", "--workers", "0"])
    assert_one_line_error(missing, "timm:hf-hub:org/other-timm: cannot load it", "fix the repo id, revision or folder")
    unpinned = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", "timm:hf-hub:org/tiny-timm", "--workers", "0"])
    assert_one_line_error(unpinned, "timm:hf-hub:org/tiny-timm: Unknown model (no_such_net)")  # main's config, not the pin's


def test_a_clip_oracle_by_hub_id_or_folder_builds_the_same(tiny_recipe: Path, tmp_path: Path, reading_hub) -> None:
    """``oracle: {kind: clip, model: hf-hub:org/name}`` (open_clip's own Hub form, as SigLIP and
    DFN models are published) and ``local-dir:<folder>`` build the same bytes; the dry run finds
    the config once fetched; a pretrained tag beside them, which open_clip would ignore, is one
    line."""
    register_builtin_clip_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("fmr-tiny-clip", pretrained=None)
    config = open_clip.get_model_config("fmr-tiny-clip")
    saving = importlib.import_module("open_clip.push_to_hf_hub")  # save_for_hf, less the tokenizer files its default tokenizer has none of
    (tmp_path / "clip-folder").mkdir()
    save_file(model.state_dict(), tmp_path / "clip-folder" / saving.HF_SAFE_WEIGHTS_NAME)
    saving.save_config_for_hf(model, tmp_path / "clip-folder" / saving.HF_CONFIG_NAME, model_config=config)
    reading_hub.add_files("org/tiny-clip", saved_files(tmp_path / "clip-folder"), kind="models")

    data = yaml.safe_load(tiny_recipe.read_text())
    outs = {}
    for name, oracle_model in (("hub", "hf-hub:org/tiny-clip"), ("folder", "local-dir:clip-folder")):
        data["oracle"] = {"kind": "clip", "model": oracle_model, "template": "a photo of something {}"}
        tiny_recipe.write_text(yaml.safe_dump(data))
        if name == "hub":
            dry = CliRunner().invoke(main, ["run", str(tiny_recipe), "--dry-run"])
            assert "open_clip hf-hub:org/tiny-clip: downloaded from the Hub on the first run" in dry.output, dry.output
        outs[name] = tmp_path / name
        result = build(tiny_recipe, outs[name])
        assert result.exit_code == 0, result.output
        report = verify_benchmark(outs[name], oracle=True, recipe=str(tiny_recipe))
        assert report.ok, report.failures
    assert shard_hashes(outs["hub"]) == shard_hashes(outs["folder"])
    # the same model scored as a zero-shot classifier (clip: scheme), from the Hub and from the folder
    scores = {}
    for name, spec in (("hub", "clip:hf-hub:org/tiny-clip"), ("folder", f"clip:local-dir:{tmp_path / 'clip-folder'}")):
        scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(outs["hub"]), "--model", spec, "--workers", "0",
                                           "--bootstrap", "0", "--json", str(tmp_path / f"{name}.json")])
        assert scored.exit_code == 0, scored.output
        [scores[name]] = json.loads((tmp_path / f"{name}.json").read_text())["results"]
    assert scores["hub"]["n"] == 12 and scores["hub"]["sample_predictions"] == scores["folder"]["sample_predictions"]
    data["oracle"] = {"kind": "clip", "model": "hf-hub:org/tiny-clip"}
    tiny_recipe.write_text(yaml.safe_dump(data))
    dry = CliRunner().invoke(main, ["run", str(tiny_recipe), "--dry-run"])
    assert "open_clip hf-hub:org/tiny-clip: config in the HF cache" in dry.output, dry.output
    data["oracle"]["pretrained"] = "laion2b_s34b_b79k"
    tiny_recipe.write_text(yaml.safe_dump(data))
    assert_one_line_error(build(tiny_recipe, tmp_path / "tagged"), "brings its own weights, so pretrained 'laion2b_s34b_b79k' would be ignored")

    # main moves on and breaks; revision: pins the commit the benchmark was built with (open_clip itself reads only main)
    pinned = reading_hub.commit_sha("org/tiny-clip", kind="models")
    reading_hub.add_files("org/tiny-clip", {"open_clip_config.json": b'{"model_cfg": {}}'}, kind="models")
    data["oracle"] = {"kind": "clip", "model": "hf-hub:org/tiny-clip", "revision": pinned, "template": "a photo of something {}"}
    tiny_recipe.write_text(yaml.safe_dump(data))
    result = build(tiny_recipe, tmp_path / "pinned")
    assert result.exit_code == 0, result.output
    assert shard_hashes(tmp_path / "pinned") == shard_hashes(outs["hub"])
    assert verify_benchmark(tmp_path / "pinned", oracle=True, recipe=str(tiny_recipe)).ok
    (tmp_path / "pinned-spec.yaml").write_text(yaml.safe_dump({"model": "clip:hf-hub:org/tiny-clip", "revision": pinned}))
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(outs["hub"]), "--model", str(tmp_path / "pinned-spec.yaml"),
                                       "--workers", "0", "--bootstrap", "0", "--json", str(tmp_path / "pinned.json")])
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "pinned.json").read_text())["results"][0]["sample_predictions"] == scores["hub"]["sample_predictions"]
    data["oracle"].pop("revision")
    tiny_recipe.write_text(yaml.safe_dump(data))
    assert_one_line_error(build(tiny_recipe, tmp_path / "unpinned"), "open_clip hf-hub:org/tiny-clip: cannot load it")
    data["oracle"] = {"kind": "clip", "model": "ViT-B-32", "revision": pinned}
    tiny_recipe.write_text(yaml.safe_dump(data))
    assert_one_line_error(build(tiny_recipe, tmp_path / "misplaced"), "revision goes with a Hub model (hf-hub:org/name)")


def test_a_transformers_classifier_by_hub_id_scores_at_its_revision(built: Path, tmp_path: Path, reading_hub) -> None:
    """``hf:org/name`` with ``revision:``: config, image processor and safetensors weights read from
    the Hub at the pinned commit (main has moved on to a broken config) score as the saved folder
    does; its labels are matched to the benchmark's classes by name."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = {0: "red", 1: "blue", 2: "green"}  # another order than the benchmark's: matched by name
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "vit")
    reading_hub.add_files("org/tiny-vit", saved_files(tmp_path / "vit"), kind="models")
    pinned = reading_hub.commit_sha("org/tiny-vit", kind="models")
    reading_hub.add_files("org/tiny-vit", {"config.json": b'{"model_type": "no-such-type"}'}, kind="models")

    specs = {"hub": {"model": "hf:org/tiny-vit", "revision": pinned}, "folder": {"model": f"hf:{tmp_path / 'vit'}"}}
    results = {}
    for name, spec in specs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
        scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", str(tmp_path / f"{name}.yaml"),
                                           "--workers", "0", "--bootstrap", "0", "--json", str(tmp_path / f"{name}.json")])
        assert scored.exit_code == 0, scored.output
        [results[name]] = json.loads((tmp_path / f"{name}.json").read_text())["results"]
    assert results["hub"]["n"] == 12 and results["hub"]["sample_predictions"] == results["folder"]["sample_predictions"]
    unpinned = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", "hf:org/tiny-vit", "--workers", "0"])
    assert_one_line_error(unpinned, "hf:org/tiny-vit: Transformers read it but cannot load it as an image classifier", "model type `no-such-type`")  # main's config, not the pin's


def test_a_folder_whose_config_the_package_cannot_use_is_not_called_a_network_problem(built: Path, tmp_path: Path) -> None:
    """A timm or open_clip folder that is read but cannot become a model says so, with the
    installed version, instead of advising a run with network; a missing config file still
    gets that advice."""
    (tmp_path / "timm-no-arch").mkdir()
    (tmp_path / "timm-no-arch" / "config.json").write_text(json.dumps({"num_classes": 3}))
    (tmp_path / "clip-no-cfg").mkdir()
    (tmp_path / "clip-no-cfg" / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    (tmp_path / "empty").mkdir()
    cases = {
        f"timm:local-dir:{tmp_path / 'timm-no-arch'}": ("cannot load it (KeyError: 'architecture')", f"timm {timm.__version__} cannot build a model"),
        f"clip:local-dir:{tmp_path / 'clip-no-cfg'}": ("ValueError: Could not load valid config", f"open_clip_torch {open_clip.__version__}",
                                                     "cannot build a model from them; fix its config"),
        f"timm:local-dir:{tmp_path / 'empty'}": ("FileNotFoundError", "fix the repo id, revision or folder, or run once with network"),
        f"clip:local-dir:{tmp_path / 'empty'}": ("FileNotFoundError", "fix the repo id, revision or folder, or run once with network"),
    }
    for spec, fragments in cases.items():
        scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", spec, "--workers", "0"])
        message = assert_one_line_error(scored, *fragments)
        assert ("network" in message) == ("empty" in spec), message


def test_hf_weights_fetched_from_the_hub_but_unreadable_are_one_line_naming_the_cached_file(tmp_path: Path, reading_hub, context) -> None:
    """A truncated pytorch_model.bin of a Hub model was 'cannot load it from the HF cache or the
    Hub ([Errno 22] ...)', naming neither the file nor the truncation; a corrupt safetensors
    file was a raw SafetensorError."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from builder.components.models import load_classifier
    from builder.config import ModelSpec
    from builder.errors import ComponentError

    config = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "vit")
    config.save_pretrained(tmp_path / "vit")
    files = saved_files(tmp_path / "vit")
    buffer = io.BytesIO()
    torch.save(ViTForImageClassification(config).state_dict(), buffer)
    reading_hub.add_files("org/cut-vit", {**files, "pytorch_model.bin": buffer.getvalue()[: len(buffer.getvalue()) // 2]}, kind="models")
    reading_hub.add_files("org/corrupt-vit", {**files, "model.safetensors": b"\0" * 16}, kind="models")
    for repo, name, reason in (("org/cut-vit", "pytorch_model.bin", "it ends too early: truncated"),
                               ("org/corrupt-vit", "model.safetensors", "Error while deserializing header")):
        with pytest.raises(ComponentError, match=rf"^hf:{repo}: cannot read \S+/models--org--{repo[4:]}/snapshots/\w+/{name} \({reason}"
                                                 r".*\); re-download it or save it again") as caught:
            load_classifier(ModelSpec(model=f"hf:{repo}"), context)
        assert "\n" not in str(caught.value)
