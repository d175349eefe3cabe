"""The embedded demo end to end, training included (the README's first command)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import shard_hashes

from builder.build import BuildOptions, UnitRunner, plan_build
from builder.cli import main
from builder.paths import default_cache_dir
from builder.recipes import load_recipe


@pytest.mark.slow
def test_digits_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", "digits-demo", "--out", str(out), "--device", "cpu", "--no-progress"])
    first_run = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert "convnext" in result.output and "vit" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source_samples"] == 450 and manifest["num_rejects"] == 0

    from datasets import load_dataset

    plan = plan_build(load_recipe("digits-demo"), BuildOptions(out_dir=tmp_path / "unused", device="cpu", cache_dir=default_cache_dir()))
    components = UnitRunner(plan.settings).components  # the build's own components, loaded the build's way
    for name, figures in manifest["configs"].items():
        dataset = load_dataset(str(out), name=name, split="test")
        assert len(dataset) == 450 == figures["num_samples"]
        # the demo is meaningful: most samples perturbed, the reference model's accuracy drops on them
        assert figures["perturbed_share"] > 0.8, figures
        assert figures["pa_perturbed"] < figures["sa"] - 0.1, figures
        perturbed = dataset.filter(lambda row: row["perturbed"])
        images = torch.from_numpy(np.stack([np.asarray(image) for image in perturbed["image"]])).permute(0, 3, 1, 2)
        labels = torch.tensor(perturbed["label"])
        # every perturbed image, re-read from the written PNG, is still accepted by the oracle
        accepted, probability = components.oracle.judge(images.float() / 255, labels)
        assert accepted.all(), f"{name}: {int((~accepted).sum())} perturbed samples rejected on re-check"
        assert np.allclose(probability.numpy(), perturbed["oracle_prob"], atol=1e-4)
        # and the records hold the reference model's real predictions on them
        with torch.no_grad():
            predictions = components.models[name](images.float() / 255).argmax(-1)
        assert predictions.tolist() == perturbed["pred_after"]

    # what a consumer reads: datasets (streaming too) and the webdataset builder match the records
    from helpers import check_rows, expected_records

    for name in manifest["configs"]:
        expected = expected_records(out, name)
        check_rows(list(load_dataset(str(out), name=name, split="test", streaming=True)), expected, manifest["class_names"], size=16)
        shards = sorted(str(out / s["files"]["webdataset"]["path"]) for s in manifest["configs"][name]["shards"])
        tars = load_dataset("webdataset", data_files={"test": shards}, split="test")
        assert sorted(tars["__key__"]) == sorted(expected) and all(row["json"] == expected[row["__key__"]] for row in tars)

    # anyone can check it, and it is ready to publish: verify with the oracle, a dry-run plan
    verified = CliRunner().invoke(main, ["-q", "verify", str(out), "--oracle"])
    assert verified.exit_code == 0, verified.output
    assert "100.0%" in verified.output
    plan = CliRunner().invoke(main, ["-q", "publish", str(out), "--repo-id", "fmr/digits-demo", "--dry-run"], env={"HF_TOKEN": "hf_never_printed"})
    assert plan.exit_code == 0, plan.output
    assert "convnext/test-00000-of-00003.parquet" in plan.output and "README.md" in plan.output
    assert "hf_never_printed" not in plan.output

    # a second run reuses the trained components from the cache
    cached = {p: p.stat().st_mtime for p in (default_cache_dir() / "digits-demo").rglob("*") if p.is_file()}
    started = time.monotonic()
    again = CliRunner().invoke(main, ["run", "digits-demo", "--out", str(tmp_path / "again"), "--limit", "20", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert time.monotonic() - started < first_run / 3
    assert {p: p.stat().st_mtime for p in cached} == cached
    assert os.environ["FMR_BUILDER_CACHE"] in str(default_cache_dir())

    # determinism: the same seed gives the same bytes; another seed trains other components
    # (their seeds derive from the recipe's) and so gives another, equally valid benchmark
    same = CliRunner().invoke(main, ["run", "digits-demo", "--out", str(tmp_path / "same"), "--limit", "20", "--no-progress"])
    other = CliRunner().invoke(main, ["run", "digits-demo", "--out", str(tmp_path / "other"), "--limit", "20", "--seed", "1", "--no-progress"])
    assert same.exit_code == 0 and other.exit_code == 0, (same.output, other.output)
    hashes = {name: shard_hashes(tmp_path / name) for name in ("again", "same", "other")}
    assert hashes["again"] == hashes["same"]
    assert set(hashes["other"]) == set(hashes["again"])
    assert all(hashes["other"][path] != hashes["again"][path] for path in hashes["again"])


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "digits"


@pytest.mark.slow
def test_dynamic_scoring_on_the_demo(tmp_path: Path) -> None:
    """The paper's protocol: regenerate the demo against the evaluated model itself."""
    saved, report = tmp_path / "live", tmp_path / "live.json"
    result = CliRunner().invoke(main, [
        "score", "--dynamic", "--recipe", "digits-demo", "--model", str(EXAMPLES / "convnext-augmented.yaml"),
        "--limit", "60", "--save", str(saved), "--bootstrap", "200", "--json", str(report), "--workers", "0",
    ])
    assert result.exit_code == 0, result.output
    assert "dynamic" in result.output
    (live,) = json.loads(report.read_text())["results"]
    assert live["mode"] == "dynamic" and live["white_box"] and live["n"] == 60
    assert 0 < live["vr"] <= 1 and live["sa"] > 0.8
    manifest = json.loads((saved / "manifest.json").read_text())
    assert list(manifest["configs"]) == ["evaluated"]
    assert manifest["configs"]["evaluated"]["fmr"] == pytest.approx(live["fmr"], abs=1e-3)
    # with --benchmark as well, static and dynamic FMR are printed side by side
    both = CliRunner().invoke(main, [
        "score", "--benchmark", str(saved), "--dynamic", "--recipe", "digits-demo", "--limit", "20",
        "--model", str(EXAMPLES / "convnext-augmented.yaml"), "--bootstrap", "0", "--workers", "0",
    ])
    assert both.exit_code == 0, both.output
    assert "static vs dynamic FMR" in both.output


@pytest.mark.slow
def test_fit_mask_then_a_masked_build(tmp_path: Path) -> None:
    from builder.sparse import mask_metadata

    mask = tmp_path / "mask.safetensors"
    fitted = CliRunner().invoke(main, ["fit-mask", "digits-demo", "--out", str(mask), "--samples", "120"])
    assert fitted.exit_code == 0, fitted.output
    assert "latent dimensions kept (sparsity" in fitted.output and "held-out accuracy" in fitted.output
    metadata = mask_metadata(mask)
    assert 0.5 < float(metadata["sparsity"]) < 1 and json.loads(metadata["provenance"])["recipe"] == "digits-demo"
    out = tmp_path / "masked"
    built = CliRunner().invoke(main, ["run", "digits-demo", "--out", str(out), "--limit", "40", "--no-progress", "--set", f"generator.mask={mask}"])
    assert built.exit_code == 0, built.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["generator"]["mask"] == str(mask)
    assert manifest["configs"]["convnext"]["num_perturbed"] > 0


@pytest.mark.slow
def test_the_generator_comparison_demo(tmp_path: Path) -> None:
    """``digits-compare``: one command, one config per generator, each summarised and verified."""
    from builder.verify import verify_benchmark

    out = tmp_path / "compare"
    result = CliRunner().invoke(main, ["run", "digits-compare", "--out", str(out), "--device", "cpu", "--no-progress", "--limit", "60"])
    assert result.exit_code == 0, result.output
    configs = ["convnext-attributes", "convnext-pixel", "convnext-vae", "convnext-vqgan"]
    summary = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith("convnext-")}
    assert sorted(summary) == configs and all(len(row) == 8 for row in summary.values())  # samples ... FMR, PA pert.
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["configs"]) == configs
    assert {name: manifest["configs"][name]["generator"]["kind"] for name in configs} == {
        "convnext-attributes": "attributes", "convnext-pixel": "pixel", "convnext-vae": "vae", "convnext-vqgan": "vqgan"}
    for name in configs:
        figures = manifest["configs"][name]
        assert figures["num_samples"] == 60 and float(summary[name][6]) == pytest.approx(figures["fmr"], abs=0.05)
    report = verify_benchmark(out, oracle=True)
    assert report.ok, report.failures
    assert report.oracle_rates == dict.fromkeys(configs, 1.0)
