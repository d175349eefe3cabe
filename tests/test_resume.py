"""Resumable builds: finished work units are kept, partial ones redone, mismatches refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from helpers import TINY_MODELS, assert_one_line_error, shard_hashes

from builder.cli import main


def build(recipe: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", str(out), "--no-progress", *extra])


def final_state(out: Path) -> tuple[dict[str, str], list[str], str]:
    manifest = json.loads((out / "manifest.json").read_text())
    keys = [k for p in sorted((out / "_stats" / "cnn").glob("test-*.json")) for k in json.loads(p.read_text())["keys"]]
    return shard_hashes(out), keys, manifest["id"]


@pytest.fixture
def clean_build(tiny_recipe: Path, tmp_path: Path) -> tuple[dict[str, str], list[str], str]:
    out = tmp_path / "clean"
    assert build(tiny_recipe, out).exit_code == 0
    return final_state(out)


def test_resume_redoes_only_the_missing_units(tiny_recipe: Path, tmp_path: Path, clean_build) -> None:
    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    kept = out / "cnn" / "test-00000-of-00003.parquet"
    kept_mtime = kept.stat().st_mtime_ns
    (out / "_stats" / "cnn" / "test-00001-of-00003.json").unlink()  # unit 1 never finished
    (out / "cnn" / "test-00002-of-00003.tar").write_bytes(b"torn")  # unit 2's shard damaged
    (out / "cnn" / ".test-00003.parquet.tmp-999").write_bytes(b"half")  # a temp file left by a crash
    result = build(tiny_recipe, out)
    assert result.exit_code == 0, result.output
    assert final_state(out) == clean_build
    assert kept.stat().st_mtime_ns == kept_mtime  # the intact unit was not redone
    assert not list((out / "cnn").glob(".*"))
    keys = final_state(out)[1]
    assert len(keys) == len(set(keys)) == 12


def test_changed_recipe_or_seed_is_refused(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(tiny_recipe, out, "--limit", "6").exit_code == 0
    result = build(tiny_recipe, out, "--limit", "6", "--set", "perturbation.budget=2")
    assert result.exit_code == 2 and "recipe.perturbation.budget: 3 -> 2" in result.output and "--overwrite" in result.output
    result = build(tiny_recipe, out, "--limit", "6", "--seed", "5")
    assert result.exit_code == 2 and "recipe.seed: 0 -> 5" in result.output
    result = build(tiny_recipe, out)
    assert result.exit_code == 2 and "limit: 6 -> None" in result.output
    # in float32 a sample's bytes depend on the batch its kernels ran in: a resume batches alike
    result = build(tiny_recipe, out, "--limit", "6", "--batch-size", "1")
    assert result.exit_code == 2 and "batch_size: 4 -> 1" in result.output
    assert build(tiny_recipe, out, "--limit", "6", "--batch-size", "4").exit_code == 0  # the recipe's, given


def unit_count(out: Path) -> int:
    return len(list((out / "_stats" / "cnn").glob("test-*.json"))) if (out / "_stats" / "cnn").is_dir() else 0


@pytest.mark.slow
def test_kill_minus_nine_then_resume_equals_an_uninterrupted_build(tiny_recipe: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(tiny_recipe.read_text())
    data["output"]["samples_per_shard"] = 1  # 13 work units: many places to die in
    recipe = tiny_recipe.with_name("one-per-shard.yaml")
    recipe.write_text(yaml.safe_dump(data))
    clean = tmp_path / "clean"
    assert build(recipe, clean).exit_code == 0
    expected = final_state(clean)
    command = [sys.executable, "-m", "builder.cli", "-q", "run", str(recipe), "--no-progress", "--device", "cpu"]
    rng = random.Random(1234)
    points = sorted(rng.sample(range(1, 12), 5))
    for point in points:
        out = tmp_path / f"killed-at-{point}"
        process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while unit_count(out) < point and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert not (out / "manifest.json").exists() or point >= 13, f"build finished before the kill at {point}"
        resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert final_state(out) == expected, f"killed after {point} units"


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_says_how_to_resume(tiny_recipe: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(tiny_recipe.read_text())
    data["output"]["samples_per_shard"] = 1
    recipe = tiny_recipe.with_name("one-per-shard.yaml")
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "builder.cli", "-q", "run", str(recipe), "--out", str(out), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while unit_count(out) < 3 and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "resume with the same command" in stderr and "Traceback" not in stderr
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp file left
    partial = json.loads((out / "manifest.json").read_text())  # says exactly what is there
    finished = sorted((out / "_stats" / "cnn").glob("*.json"))
    assert partial["complete"] is False and partial["progress"] == {"units_done": len(finished), "units_total": 13}
    stats = [json.loads(path.read_text()) for path in finished]
    assert [s["num_samples"] for s in partial["configs"]["cnn"]["shards"]] == [s["num_samples"] for s in stats]
    assert partial["configs"]["cnn"]["num_samples"] == sum(s["num_samples"] for s in stats)
    assert not (out / "README.md").exists()
    refused = CliRunner().invoke(main, ["-q", "verify", str(out)])
    assert refused.exit_code == 1 and "interrupted" in refused.output and "resume it" in refused.output
    assert build(recipe, out).exit_code == 0
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_changed_weights_are_refused_on_resume(tiny_recipe: Path, tmp_path: Path) -> None:
    import torch

    from tiny_models import tiny_cnn

    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    manifest = (out / "manifest.json").read_bytes()
    torch.manual_seed(99)
    torch.save(tiny_cnn(3).state_dict(), tiny_recipe.parent / "theta.pt")  # retrained in place
    for missing in (False, True):  # every unit finished (it was "resumed" under the old id), or one left to build
        if missing:
            (out / "_stats" / "cnn" / "test-00002-of-00003.json").unlink()
        result = build(tiny_recipe, out)
        assert result.exit_code == 2 and "was built with different settings (weights.reference model cnn weights.sha256" in result.output
        assert (out / "manifest.json").read_bytes() == manifest


def test_a_resume_on_another_kind_of_device_is_refused_before_it_builds(tiny_recipe: Path, tmp_path: Path) -> None:
    """Units built on one kind of device or torch and units built on another are never one
    benchmark: a resume on another kind stops before it builds a unit (it used to build them all
    and fail at the end, leaving a dir that no resume could finish); --overwrite rebuilds."""
    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    for unit in (0, 1):
        path = out / "_stats" / "cnn" / f"test-0000{unit}-of-00003.json"
        stats = json.loads(path.read_text())
        path.write_text(json.dumps({**stats, "built_with": {"device": "NVIDIA H100 80GB HBM3", "torch": "2.4.0"}}))
    missing = out / "_stats" / "cnn" / "test-00002-of-00003.json"
    missing.unlink()
    result = build(tiny_recipe, out)
    assert_one_line_error(result, "cnn/test-00000-of-00003 was built with torch 2.4.0 on NVIDIA H100 80GB HBM3, this run has torch",
                          "resume on that kind of device and torch", "or pass --overwrite")
    assert not missing.exists()  # nothing was built
    assert build(tiny_recipe, out, "--overwrite").exit_code == 0
    # another processor type is another kind of device: a CPU build resumed on another CPU model is refused too
    import torch

    path = out / "_stats" / "cnn" / "test-00000-of-00003.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "built_with": {"device": "cpu (Some Other CPU)", "torch": torch.__version__}}))
    missing.unlink()
    assert_one_line_error(build(tiny_recipe, out), f"was built with torch {torch.__version__} on cpu (Some Other CPU), this run has torch")
    # and so is another thread count: CPU kernels split their sums by thread (--workers 2 gave other bytes than one process)
    from builder.build.executors.base import cpu_model

    own = f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    for units in (0, 1):
        path = out / "_stats" / "cnn" / f"test-0000{units}-of-00003.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "built_with": {"device": own.replace(" threads", "0 threads"), "torch": torch.__version__}}))
    assert_one_line_error(build(tiny_recipe, out), f"0 threads), this run has torch {torch.__version__} on {own}",
                          "with the same thread count: the same --workers and OMP_NUM_THREADS")


def test_a_resume_with_other_package_versions_is_refused(tiny_recipe: Path, tmp_path: Path) -> None:
    """Pillow's zlib, numpy or a model library's code at another version gives other bytes: a
    resume with them is refused before it builds, as another torch is; units recorded before the
    packages were (0.2.1) resume on their device and torch alone."""
    from builder.build.executors.base import byte_shaping_versions
    from builder.build.finalize import check_one_kind_of_device

    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    paths = [out / "_stats" / "cnn" / f"test-0000{unit}-of-00003.json" for unit in range(3)]
    recorded = json.loads(paths[0].read_text())["built_with"]
    assert recorded["packages"] == byte_shaping_versions() and "pillow" in recorded["packages"] and "pillow's zlib" in recorded["packages"]
    manifest = (out / "manifest.json").read_bytes()
    assert json.loads(manifest)["built_with"] == recorded  # what built it, for whoever rebuilds it
    assert f"on `{recorded['device']}` with torch {recorded['torch']} (another kind of device" in (out / "README.md").read_text()
    for path in paths[:2]:
        stats = json.loads(path.read_text())
        older = {**stats["built_with"]["packages"], "pillow": "9.0.0", "timm": "0.9.2"}
        path.write_text(json.dumps({**stats, "built_with": {**stats["built_with"], "packages": older}}))
    paths[2].unlink()
    assert_one_line_error(build(tiny_recipe, out), "cnn/test-00000-of-00003 was built with other packages than this run has "
                          "(pillow 9.0.0 against", "resume with the versions that built it, or pass --overwrite")
    assert not paths[2].exists()  # nothing was built
    for path in paths[:2]:  # units of 0.2.1 recorded no packages
        stats = json.loads(path.read_text())
        path.write_text(json.dumps({**stats, "built_with": {key: stats["built_with"][key] for key in ("device", "torch")}}))
    assert build(tiny_recipe, out).exit_code == 0 and paths[2].exists()
    assert (out / "manifest.json").read_bytes() == manifest
    # the finished units are never one benchmark with other packages, whichever path stitched them
    from builder.build.finalize import UnitRecords
    from builder.errors import OutputError

    shards = [json.loads(path.read_text()) for path in paths]
    shards[0]["built_with"] = {**shards[0]["built_with"], "packages": recorded["packages"]}
    shards[2]["built_with"] = {**shards[2]["built_with"], "packages": {**recorded["packages"], "numpy": "1.0.0"}}
    with pytest.raises(OutputError, match=r"the finished units were built with other packages \(numpy .* against 1.0.0, at cnn unit 2\)"):
        check_one_kind_of_device(UnitRecords(tallies={}, shards={"cnn": shards}, rejects=[]))


def test_a_unit_from_a_worker_unlike_the_first_is_left_pending(tiny_recipe: Path, tmp_path: Path) -> None:
    """In a pool of mixed workers the odd one's unit is refused and its stats file removed, so
    the unit is pending again for a resume on one kind of worker."""
    from types import SimpleNamespace

    from builder.build.driver import _checked
    from builder.build.executors.base import UnitResult, WorkerInfo
    from builder.build.units import WorkUnit
    from builder.errors import OutputError
    from builder.storage import open_storage

    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    stats = json.loads((out / "_stats" / "cnn" / "test-00001-of-00003.json").read_text())
    plan = SimpleNamespace(recipe=SimpleNamespace(output=SimpleNamespace(split="test")), storage=open_storage(out, ()))
    unit = WorkUnit(1, stats["start"], stats["stop"], 3)
    first = WorkerInfo({"cnn": stats["reference_weights_sha256"]}, "cpu", "2.14.1")
    _checked(plan, unit, UnitResult(unit, [stats], first), first)  # type: ignore[arg-type]
    assert (out / "_stats" / "cnn" / "test-00001-of-00003.json").exists()
    other = WorkerInfo(first.fingerprints, "NVIDIA H100 80GB HBM3", "2.14.1")
    with pytest.raises(OutputError, match="workers differ"):
        _checked(plan, unit, UnitResult(unit, [stats], other), first)  # type: ignore[arg-type]
    assert not (out / "_stats" / "cnn" / "test-00001-of-00003.json").exists()
    (out / "_stats" / "cnn" / "test-00001-of-00003.json").write_text(json.dumps(stats))
    packaged = WorkerInfo(first.fingerprints, "cpu", "2.14.1", {"pillow": "12.0.0", "timm": "1.0.31"})
    lacking = WorkerInfo(first.fingerprints, "cpu", "2.14.1", {"pillow": "12.0.0"})  # a package one worker lacks is not compared
    _checked(plan, unit, UnitResult(unit, [stats], lacking), packaged)  # type: ignore[arg-type]
    older = WorkerInfo(first.fingerprints, "cpu", "2.14.1", {"pillow": "11.3.0", "timm": "1.0.31"})
    with pytest.raises(OutputError, match="workers differ: one has pillow 12.0.0 against 11.3.0 installed"):
        _checked(plan, unit, UnitResult(unit, [stats], older), packaged)  # type: ignore[arg-type]
    assert not (out / "_stats" / "cnn" / "test-00001-of-00003.json").exists()


def test_a_generator_checkpoint_replaced_in_place_is_refused_on_resume(tiny_recipe: Path, tmp_path: Path) -> None:
    """The generator's and oracle's weight files are part of what a build is (their kinds list them)."""
    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    (out / "_stats" / "cnn" / "test-00002-of-00003.json").unlink()
    checkpoint = tiny_recipe.parent / "vqgan.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")  # other bytes, same name
    assert_one_line_error(build(tiny_recipe, out), "different settings", "weights.generator weights.sha256")


def test_disk_full_keeps_finished_units_and_resumes(tiny_recipe: Path, tmp_path: Path, clean_build, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from builder import fileio

    real_fsync, calls = fileio.os.fsync, []

    def filling_disk(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= 6:  # build.json, then unit 0 (two shards + stats), then unit 1 dies
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    out = tmp_path / "out"
    monkeypatch.setattr(fileio.os, "fsync", filling_disk)
    result = build(tiny_recipe, out)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "resume with the same command" in lines[0]
    assert unit_count(out) == 1 and not [p for p in out.rglob(".*") if p.is_file()]
    monkeypatch.setattr(fileio.os, "fsync", real_fsync)
    assert build(tiny_recipe, out).exit_code == 0
    assert final_state(out) == clean_build


def test_sigterm_during_any_commands_download_leaves_no_temp_file(tiny_build: Path, tmp_path: Path) -> None:
    """Only run stopped on SIGTERM as on Ctrl-C: score (verify, publish, train...) killed while
    downloading a checkpoint left its temp file in the cache, never cleaned up."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(8 << 20))
            self.end_headers()
            self.wfile.write(b"\0" * (1 << 20))
            self.wfile.flush()
            release.wait(60)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump({"model": f"py:{TINY_MODELS}:tiny_cnn", "checkpoint": f"http://127.0.0.1:{server.server_port}/theta.pt"}))
    cache = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-m", "builder.cli", "-q", "score", "--benchmark", str(tiny_build), "--model", str(spec),
                                "--cache-dir", str(cache), "--workers", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in cache.rglob(".*.tmp-*") if p.is_file()] and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        release.set()
        server.shutdown()
    assert process.returncode == 130 and stderr.strip().endswith("interrupted") and "Traceback" not in stderr, stderr
    assert not [p for p in cache.rglob(".*.tmp-*") if p.is_file()]


def test_a_local_pretrained_folder_is_part_of_the_build_identity(tmp_path: Path) -> None:
    """A diffusers VAE or an open_clip model kept as a local folder is fingerprinted by its files:
    files replaced in place were taken for the old model, and a resume stitched the two."""
    from builder.build.plan import weights_fingerprint
    from builder.checkpoints import ResolveContext
    from builder.config import parse_recipe, recipe_to_dict

    for name in ("vae", "clip"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "sub" / "weights.safetensors").write_bytes(b"first")
    recipe = parse_recipe({
        "name": "folders", "source": {"kind": "sklearn-digits", "split": "test"}, "image_size": 32,
        "reference_models": [{"model": "py:builder.zoo:digits_convnext", "pretrained": False}],
        "generator": {"kind": "vae", "model": "vae"},
        "oracle": {"kind": "clip", "model": "local-dir:clip", "pretrained": ""},
    })
    context = ResolveContext(tmp_path, tmp_path / "cache")
    before = weights_fingerprint(recipe, context)
    assert set(before) >= {"generator folder", "oracle folder"} and before["generator folder"]["location"] == "vae"
    for name, what in (("vae", "generator folder"), ("clip", "oracle folder")):
        (tmp_path / name / "sub" / "weights.safetensors").write_bytes(b"other")
        after = weights_fingerprint(recipe, context)
        assert after[what] != before[what] and {k: v for k, v in after.items() if k != what} == {k: v for k, v in before.items() if k != what}
        before = after
    (tmp_path / "vit" / "sub").mkdir(parents=True)
    (tmp_path / "vit" / "sub" / "model.safetensors").write_bytes(b"first")
    with_hf = parse_recipe({**recipe_to_dict(recipe), "reference_models": [{"model": "hf:vit", "name": "vit"}]})
    first = weights_fingerprint(with_hf, context)["reference model vit folder"]
    (tmp_path / "vit" / "sub" / "model.safetensors").write_bytes(b"other")
    assert weights_fingerprint(with_hf, context)["reference model vit folder"] != first
    hub = parse_recipe({**recipe_to_dict(recipe), "generator": {"kind": "vae", "model": "org/not-a-folder"}})
    assert "generator folder" not in weights_fingerprint(hub, context)  # a Hub id: pinned by its revision, not hashed


def test_a_resume_after_the_source_listing_changed_in_the_middle_is_refused(tiny_recipe: Path, tmp_path: Path) -> None:
    """Moving a mislabelled image to its class kept the sample count and the first and last ids:
    the resume shifted every later sample by one, never built one and kept a stale one, and
    verify passed. Every used sample's id and label (and a file's size) is part of the identity."""
    from builder.build.plan import source_fingerprint
    from builder.config import parse_recipe
    from builder.sources.base import SourceContext, open_source

    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    for stem in ("test-00001-of-00003", "test-00002-of-00003"):  # interrupted after the first unit
        (out / "_stats" / "cnn" / f"{stem}.json").unlink()
    images = tiny_recipe.parent / "images"
    (images / "blue" / "1.png").rename(images / "green" / "1b.png")
    assert_one_line_error(build(tiny_recipe, out), "was built with different settings (source.listing_sha256")
    (images / "green" / "1b.png").rename(images / "blue" / "1.png")
    assert build(tiny_recipe, out).exit_code == 0  # the same listing again: it resumes
    # a file replaced in place by one of another size, and the limit's samples only
    recipe = parse_recipe(yaml.safe_load(tiny_recipe.read_text()))
    context = SourceContext(tiny_recipe.parent, tmp_path / "cache")

    def printed(used: int | None) -> str:
        return source_fingerprint(open_source(recipe.source, context), recipe.source, tiny_recipe.parent, used)["listing_sha256"]

    before, first_five = printed(None), printed(5)
    (images / "red" / "3.png").write_bytes((images / "red" / "0.png").read_bytes() + b"\0")
    assert printed(None) != before and printed(5) == first_five  # red/3.png is the last sample: past a limit of 5
