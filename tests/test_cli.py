"""The command line on a tiny, fast build: outputs, rejects, bad input, determinism, train."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import assert_one_line_error, shard_hashes
from PIL import Image

from builder.cli import main

from tiny_models import tiny_cnn


def invoke(*args: str):
    return CliRunner().invoke(main, ["-q", *args], catch_exceptions=False)


def test_tiny_build_writes_everything(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("run", str(tiny_recipe), "--out", str(out), "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "13 source samples, 1 rejected" in result.output and "cnn" in result.output
    assert {p.name for p in out.iterdir()} == {"README.md", "manifest.json", "preview.png", "gallery.html", "rejects.jsonl", "cnn", "_stats"}
    assert sorted(p.name for p in (out / "cnn").iterdir()) == [
        f"test-0000{i}-of-00003.{ext}" for i in range(3) for ext in ("parquet", "tar")
    ]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"index": 8, "source_id": "green/5.png", "reason": rejects[0]["reason"]}]
    assert "image" in rejects[0]["reason"]
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["configs"]["cnn"]
    assert config["num_samples"] == 12 and manifest["num_rejects"] == 1
    assert [s["num_samples"] for s in config["shards"]] == [5, 4, 3]  # the reject fell in the second unit
    for shard in config["shards"]:
        for file in shard["files"].values():
            assert (out / file["path"]).stat().st_size == file["bytes"]
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp file left behind

    from datasets import load_dataset

    dataset = load_dataset(str(out), name="cnn", split="test")
    assert len(dataset) == 12 and dataset.features["label"].names == ["blue", "green", "red"]
    assert sorted(dataset["key"]) == dataset["key"]
    assert "green/5.png" not in dataset["source_id"]


def test_same_seed_same_bytes(tiny_recipe: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert invoke("run", str(tiny_recipe), "--out", str(out), "--device", "cpu", "--no-progress").exit_code == 0
    assert shard_hashes(first) == shard_hashes(second)
    assert json.loads((first / "manifest.json").read_text())["id"] == json.loads((second / "manifest.json").read_text())["id"]


def test_precision_option_is_part_of_the_recipe_and_verify_judges_in_it(tiny_recipe: Path, tmp_path: Path) -> None:
    """``run --precision bf16`` is ``--set perturbation.precision=bf16``: recorded in the manifest,
    its own manifest id, and ``verify --oracle`` re-judges in bf16 as the build judged."""
    from builder.verify import verify_benchmark

    fp32, bf16, by_set = tmp_path / "fp32", tmp_path / "bf16", tmp_path / "set"
    for out, extra in ((fp32, ()), (bf16, ("--precision", "bf16")), (by_set, ("--set", "perturbation.precision=bf16"))):
        assert invoke("run", str(tiny_recipe), "--out", str(out), "--device", "cpu", "--no-progress", *extra).exit_code == 0
    manifests = {out.name: json.loads((out / "manifest.json").read_text()) for out in (fp32, bf16, by_set)}
    assert manifests["bf16"]["recipe"]["perturbation"]["precision"] == "bf16"
    assert manifests["bf16"]["id"] == manifests["set"]["id"] != manifests["fp32"]["id"]
    assert shard_hashes(bf16) == shard_hashes(by_set)
    report = verify_benchmark(bf16, oracle=True, recipe=str(tiny_recipe))
    assert report.ok and report.oracle_rates == {"cnn": 1.0}, report.failures
    # score --dynamic --precision: the regenerated benchmark is built in it
    spec = yaml.safe_load(tiny_recipe.read_text())["reference_models"][0]
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({**spec, "checkpoint": str(tiny_recipe.parent / spec["checkpoint"])}))
    scored = invoke("score", "--dynamic", "--recipe", str(tiny_recipe), "--model", str(model), "--limit", "4", "--device", "cpu",
                    "--bootstrap", "0", "--trust-remote-code", "--precision", "bf16", "--save", str(tmp_path / "dynamic"), "--per-class")
    assert scored.exit_code == 0, scored.output
    assert "per class: " in scored.output and "dynamic" in scored.output  # --per-class covers the regenerated benchmark too
    assert json.loads((tmp_path / "dynamic" / "manifest.json").read_text())["recipe"]["perturbation"]["precision"] == "bf16"
    for flag in (("--precision", "bf16"), ("--compile",), ("--limit", "4")):  # regeneration options without --dynamic
        refused = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(bf16), "--model", str(model), *flag])
        assert_one_line_error(refused, f"{flag[0]} goes with --dynamic")
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump([{**yaml.safe_load(model.read_text()), "name": "cnn"}]))
    for flag in (("--checkpoint", "other.pt"), ("--json", str(tmp_path / "ignored.json")), ("--per-class",)):  # a zoo run has no use for them
        refused = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(bf16), "--models", str(zoo), "--out", str(tmp_path / "zoo"), *flag])
        assert_one_line_error(refused, f"{flag[0]} does not go with --models ZOO.yaml")
    assert not (tmp_path / "ignored.json").exists()


def test_existing_output_needs_overwrite(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert invoke("run", str(tiny_recipe), "--out", str(out), "--limit", "3", "--no-progress").exit_code == 0
    again = invoke("run", str(tiny_recipe), "--out", str(out), "--limit", "3", "--no-progress")
    assert again.exit_code == 0  # the same command on a finished dir resumes: nothing left to do
    assert_one_line_error(invoke("run", str(tiny_recipe), "--out", str(out), "--no-progress"), "different settings", "limit: 3 -> None", "--overwrite")
    result = invoke("run", str(tiny_recipe), "--out", str(out), "--overwrite", "--limit", "4", "--no-progress")
    assert result.exit_code == 0 and json.loads((out / "manifest.json").read_text())["source_samples"] == 4
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert_one_line_error(invoke("run", str(tiny_recipe), "--out", str(foreign), "--overwrite"), "holds no build of this tool")
    assert_one_line_error(invoke("run", str(tiny_recipe), "--out", str(foreign)), "holds no build of this tool")
    assert (foreign / "thesis.tex").exists()


def test_bad_recipe_key_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    result = invoke("run", str(tiny_recipe), "--out", str(tmp_path / "o"), "--set", "generator.chekpoint=x")
    assert_one_line_error(result, "generator.chekpoint", "did you mean 'checkpoint'")
    assert not (tmp_path / "o").exists()


def test_missing_and_mismatched_checkpoints_stop_the_run(tiny_recipe: Path, tmp_path: Path) -> None:
    result = invoke("run", str(tiny_recipe), "--out", str(tmp_path / "o1"), "--set", "reference_models.0.checkpoint=gone.pt")
    assert_one_line_error(result, "not found", "gone.pt")
    torch.save(tiny_cnn(5).state_dict(), tmp_path / "five.pt")
    result = invoke("run", str(tiny_recipe), "--out", str(tmp_path / "o2"), "--set", "reference_models.0.checkpoint=five.pt")
    assert_one_line_error(result, "does not fit", "(5, 32)", "(3, 32)")


def test_label_outside_the_classes_stops_the_run(tiny_recipe: Path, tmp_path: Path) -> None:
    import webdataset as wds

    shard = tmp_path / "labels.tar"
    buffer = __import__("io").BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    with wds.TarWriter(str(shard)) as writer:
        writer.write({"__key__": "a", "png": buffer.getvalue(), "cls": b"0"})
        writer.write({"__key__": "b", "png": buffer.getvalue(), "cls": b"7"})
    result = invoke(
        "run", str(tiny_recipe), "--out", str(tmp_path / "o"), "--no-progress",
        "--set", "source={kind: webdataset, urls: labels.tar, class_names: [blue, green, red]}",
    )
    assert_one_line_error(result, "labels.tar/b", "label 7 is outside the 3 classes")


def test_recipes_lists_the_demo() -> None:
    result = invoke("recipes")
    assert result.exit_code == 0 and "digits-demo" in result.output and "no network" in result.output


def test_bad_device_is_rejected(tiny_recipe: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tiny_recipe), "--out", str(tmp_path / "o"), "--device", "gpu0"])
    assert result.exit_code == 2 and "--device" in result.output


def test_train_model_writes_a_loadable_checkpoint(tiny_recipe: Path, tmp_path: Path) -> None:
    """train reads other data than the benchmark evaluates (--set source.path=...); the
    evaluated images themselves are refused (an imagefolder has no split to keep apart)."""
    import shutil

    shutil.copytree(tiny_recipe.parent / "images", tiny_recipe.parent / "train_images")
    target = tmp_path / "trained.safetensors"
    block = ("--set", "reference_models.0.train={epochs: 2, batch_size: 4, lr: 0.01}")
    leak = invoke("train", "model", str(tiny_recipe), "--out", str(target), *block)
    assert_one_line_error(leak, "source kind 'imagefolder' has no split, so a train block would train on the very samples the benchmark evaluates")
    assert not target.exists()
    elsewhere = invoke("train", "model", str(tiny_recipe), *block, "--set", "source.path=train_images")  # no --out: a build would never read them
    assert_one_line_error(elsewhere, "trains the reference model cnn on other data than a build of the recipe reads", "pass --out FILE")
    result = invoke("train", "model", str(tiny_recipe), "--out", str(target), *block, "--set", "source.path=train_images")
    assert result.exit_code == 0, result.output
    assert target.is_file()
    out = tmp_path / "out"
    result = invoke("run", str(tiny_recipe), "--out", str(out), "--no-progress", "--set", f"reference_models.0.checkpoint={target}")
    assert result.exit_code == 0, result.output
    # weights already there (the recipe's own theta.pt, given by hand, no train block) are replaced only when asked
    theta = tiny_recipe.parent / "theta.pt"
    kept = theta.read_bytes()
    refused = invoke("train", "model", str(tiny_recipe), "--config", "cnn", "--set", "source.path=train_images")
    assert_one_line_error(refused, f"{theta} exists: the reference model cnn's weights are there already; pass --overwrite")
    assert theta.read_bytes() == kept
    replaced = invoke("train", "model", str(tiny_recipe), "--name", "cnn", "--overwrite", "--set", "source.path=train_images")
    assert replaced.exit_code == 0, replaced.output
    assert theta.read_bytes() != kept


def test_pixel_generator_baseline_is_bounded_per_step(tiny_recipe: Path, tmp_path: Path) -> None:
    """generator.kind pixel: the latent is the image; k accepted steps move a pixel by <= k * step."""
    import pyarrow.parquet as pq

    out = tmp_path / "pixel"
    result = invoke(
        "run", str(tiny_recipe), "--out", str(out), "--no-progress",
        "--set", "generator={kind: pixel}", "--set", "perturbation.step_size=0.02", "--set", "perturbation.budget=4",
    )
    assert result.exit_code == 0, result.output
    rows = [r for p in sorted((out / "cnn").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rows) == 12 and any(r["steps"] > 0 for r in rows)
    moved = 0
    for row in rows:
        image = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])), dtype=np.int16)
        original = np.asarray(Image.open(io.BytesIO(row["original_image"]["bytes"])), dtype=np.int16)
        change = np.abs(image - original).max()
        assert change <= round(row["steps"] * 0.02 * 255) + 1, (row["key"], change, row["steps"])
        moved += change > 0
    assert moved > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["generator"] == {"kind": "pixel", "mask": None}


def test_every_option_the_readme_documents_exists() -> None:
    """The README's command table against the CLI: a merge once dropped ``run --precision`` and
    ``--compile`` while the README went on documenting them. Each backticked span in a command's
    row is checked against that command, or against the command it names (`score --json`)."""
    import re

    import click

    def options(command: click.Command) -> set[str]:
        found = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        if isinstance(command, click.Group):  # train {generator,oracle,model}: any subcommand's
            found |= {opt for sub in command.commands.values() for opt in options(sub)}
        return found | {opt for param in main.params for opt in (*param.opts, *param.secondary_opts)}

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `build-benchmark ")]
    assert len(rows) >= 10
    checked = 0
    for row in rows:
        name = row.split()[2].strip("`")
        own = main if name.startswith("-") else main.commands[name]  # `build-benchmark --plugin MODULE ...`
        for span in re.findall(r"`([^`]+)`", row):
            first = span.split()[0]
            command = main.commands.get(span.split()[1]) if first == "build-benchmark" and len(span.split()) > 1 else main.commands.get(first)
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
                assert flag in options(command or own), f"README documents {flag} for '{(command or own).name}': {span}"
                checked += 1
    assert checked >= 40


def test_ctrl_c_says_resume_only_where_there_is_something_to_resume(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted build keeps its finished units; an interrupted verify or score has nothing to
    resume (every command used to print the build's resume line)."""
    import builder.build
    import builder.verify

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(builder.build, "build_benchmark", interrupted)
    monkeypatch.setattr(builder.verify, "verify_benchmark", interrupted)
    run = CliRunner().invoke(main, ["run", str(tiny_recipe), "--out", str(tmp_path / "out"), "--no-progress"])
    assert run.exit_code == 130 and run.output.strip() == "interrupted: finished work units are kept; resume with the same command"
    verify = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert verify.exit_code == 130 and verify.output.strip() == "interrupted"
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(tmp_path), "--model", "timm:resnet18", "--overwrite"])
    assert_one_line_error(scored, "--overwrite goes with --models ZOO.yaml --out DIR")


def test_a_file_url_is_the_local_dir_it_names(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out file:///abs was taken for the relative path 'file:/abs': the build went under the
    current directory and failed; verify, score and gallery found no such directory."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    url = f"file://{out}"
    built = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", url, "--no-progress"])
    assert built.exit_code == 0, built.output
    assert (out / "manifest.json").is_file() and not (tmp_path / "file:").exists()
    assert CliRunner().invoke(main, ["-q", "verify", url]).exit_code == 0
    assert CliRunner().invoke(main, ["-q", "gallery", f"file://localhost{out}"]).exit_code == 0
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", url, "--model", "ref:cnn", "--trust-remote-code", "--workers", "0", "--bootstrap", "0"])
    assert scored.exit_code == 0, scored.output
