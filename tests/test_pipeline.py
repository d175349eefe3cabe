"""The runner never waits on I/O: the next unit is read while this one is perturbed, and a unit's
shards are written while the next one is perturbed. Shown by ordering, not by timing: each
test makes one side wait for an event that only an overlapping pipeline can produce (a serial
runner would never produce it, and the wait fails after ``PATIENCE`` seconds instead of hanging)."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import assert_one_line_error, build, every_file, temp_files

import builder.build.runner as runner_module
import builder.engine
from builder.build import BuildOptions, UnitRunner, plan_build
from builder.build.pipeline import BackgroundWriter, Prefetcher, WriteSkipped
from builder.build.units import WorkUnit
from builder.paths import default_cache_dir
from builder.recipes import load_recipe

PATIENCE = 60.0  # seconds an event may take on a loaded machine; only a broken pipeline waits this long


class Recorder:
    """Wraps the runner's read, the engine and the stats write; records the order of events and
    lets a test make one of them wait for another."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int]] = []
        self.seen: dict[tuple[str, int], threading.Event] = {}
        self.waits: dict[tuple[str, int], tuple[str, int]] = {}  # before this event goes on, that one must have happened
        self.lock = threading.Lock()
        self.perturb_calls = 0
        self.interrupt_at: int | None = None  # this perturbation raises KeyboardInterrupt as it begins
        read, perturb, write = runner_module.read_unit, builder.engine.perturb_batch, runner_module.write_stats

        def reading(source: Any, unit: WorkUnit, *args: Any) -> Any:
            self.mark("read", unit.index)
            return read(source, unit, *args)

        def perturbing(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                index, self.perturb_calls = self.perturb_calls, self.perturb_calls + 1
            self.mark("perturb", index)
            if index == self.interrupt_at:
                raise KeyboardInterrupt
            result = perturb(*args, **kwargs)
            self.mark("perturbed", index)
            return result

        def writing(storage: Any, relative: str, stats: dict[str, Any]) -> None:
            self.mark("stats", stats["unit"])
            write(storage, relative, stats)

        monkeypatch.setattr(runner_module, "read_unit", reading)
        monkeypatch.setattr(builder.engine, "perturb_batch", perturbing)
        monkeypatch.setattr(runner_module, "write_stats", writing)

    def event(self, name: str, index: int) -> threading.Event:
        with self.lock:
            return self.seen.setdefault((name, index), threading.Event())

    def mark(self, name: str, index: int) -> None:
        with self.lock:
            self.events.append((name, index))
        self.event(name, index).set()
        awaited = self.waits.get((name, index))
        if awaited is not None and not self.event(*awaited).wait(PATIENCE):
            raise AssertionError(f"{name} {index} waited in vain for {awaited[0]} {awaited[1]}: no overlap")


def runner_for(recipe: Path, out: Path) -> tuple[UnitRunner, list[tuple[WorkUnit, list[str]]]]:
    """A unit runner as a build makes it, and the build's units in order (3 units of 5 samples
    of the tiny recipe, one config: ``cnn``)."""
    plan = plan_build(load_recipe(str(recipe)), BuildOptions(out_dir=out, device="cpu", cache_dir=default_cache_dir()))
    return UnitRunner(plan.settings), sorted(plan.pending_units().items(), key=lambda item: item[0].index)


def test_the_next_unit_is_read_while_this_one_is_perturbed(tiny_recipe: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    recorder.waits[("perturbed", 0)] = ("read", 1)  # unit 0's perturbation cannot end before unit 1's read began
    recorder.waits[("perturbed", 1)] = ("read", 2)
    result = build(tiny_recipe, tmp_path / "out")
    assert result.exit_code == 0, result.output
    events = recorder.events
    assert events.index(("read", 1)) < events.index(("perturbed", 0))
    assert events.index(("read", 2)) < events.index(("perturbed", 1))


def test_a_unit_is_written_while_the_next_one_is_perturbed(tiny_recipe: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    recorder.waits[("stats", 0)] = ("perturb", 1)  # unit 0's files cannot be done before unit 1's perturbation began
    recorder.waits[("stats", 1)] = ("perturb", 2)
    result = build(tiny_recipe, tmp_path / "out")
    assert result.exit_code == 0, result.output
    events = recorder.events
    assert events.index(("perturb", 1)) < events.index(("stats", 0)) < events.index(("stats", 1)) < events.index(("stats", 2))


def test_a_streamed_build_gives_the_bytes_of_one_unit_per_call(tiny_recipe: Path, tmp_path: Path) -> None:
    """The in-process build streams units through ``run_many``; worker processes and Ray actors
    call ``run`` once per unit with a hint of the next: both write the same shards."""
    out = tmp_path / "streamed"
    assert build(tiny_recipe, out).exit_code == 0
    runner, units = runner_for(tiny_recipe, tmp_path / "called")
    try:
        for position, (unit, configs) in enumerate(units):
            upcoming = units[position + 1][0] if position + 1 < len(units) else None
            assert [s["config"] for s in runner.run(unit, configs, upcoming=upcoming)] == configs
    finally:
        runner.close()
    streamed, called = every_file(out), every_file(tmp_path / "called")
    shards = sorted(name for name in streamed if name.startswith("cnn/"))
    assert len(shards) == 6 and sorted(name for name in called if name.startswith("cnn/")) == shards
    assert all(streamed[name] == called[name] for name in shards)


def test_a_failed_background_write_is_one_line_and_leaves_no_stats(tiny_recipe: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from builder import fileio

    real_fsync, threads = fileio.os.fsync, []

    def full_after_unit_0(fd: int) -> None:
        name = threading.current_thread().name
        if name.startswith("unit-writer"):
            threads.append(name)
            if len(threads) > 3:  # unit 0: two shards and its stats; unit 1's first shard fails
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", full_after_unit_0)
    out = tmp_path / "out"
    assert_one_line_error(build(tiny_recipe, out), "No space left on device", "resume with the same command")
    assert len(threads) == 4, "the failing write did not run on the writer thread"
    assert sorted(p.name for p in (out / "_stats" / "cnn").iterdir()) == ["test-00000-of-00003.json"]
    assert sorted(p.name for p in (out / "cnn").iterdir()) == ["test-00000-of-00003.parquet", "test-00000-of-00003.tar"]
    assert temp_files(out) == []


def test_an_interrupt_lets_the_running_write_finish_and_begins_no_other(tiny_recipe: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(monkeypatch)
    recorder.waits[("stats", 0)] = ("perturb", 1)  # unit 0's write is still running when unit 1's perturbation is stopped
    recorder.interrupt_at = 1
    out = tmp_path / "out"
    runner, units = runner_for(tiny_recipe, out)
    try:
        with pytest.raises(KeyboardInterrupt):
            list(runner.run_many(units))
        # run_many gave up only once unit 0's running write was done; no other write began
        assert ("stats", 0) in recorder.events and ("perturb", 2) not in recorder.events
        assert [p.name for p in (out / "_stats" / "cnn").iterdir()] == ["test-00000-of-00003.json"]
        assert sorted(p.name for p in (out / "cnn").iterdir()) == ["test-00000-of-00003.parquet", "test-00000-of-00003.tar"]
        assert temp_files(out) == []
    finally:
        runner.close()


def test_the_writer_holds_back_beyond_its_limit_and_stops_after_a_failure() -> None:
    writer = BackgroundWriter(limit=2)
    gate, third_submitted, order = threading.Event(), threading.Event(), []

    def task(name: str, after: threading.Event | None = None) -> Callable[[], None]:
        def run() -> None:
            if after is not None:
                after.wait(PATIENCE)
            order.append(name)
        return run

    futures = []

    def submit_third() -> None:
        futures.append(writer.submit(task("third")))
        third_submitted.set()

    try:
        futures += [writer.submit(task("first", after=gate)), writer.submit(task("second"))]
        submitter = threading.Thread(target=submit_third)
        submitter.start()
        assert not third_submitted.wait(0.2)  # two pending: the third waits (a slow machine only makes this pass later)
        gate.set()
        submitter.join(PATIENCE)
        assert third_submitted.is_set()
        assert [future.result(PATIENCE) for future in futures] == [None] * 3 and order == ["first", "second", "third"]

        def fail() -> None:
            raise OSError(errno.EIO, "Input/output error")

        failing, skipped = writer.submit(fail), writer.submit(task("after the failure"))
        with pytest.raises(OSError):
            failing.result(PATIENCE)
        with pytest.raises(WriteSkipped):
            skipped.result(PATIENCE)
        assert order == ["first", "second", "third"]
    finally:
        writer.close()


def test_the_prefetcher_keeps_at_most_its_bound() -> None:
    reads: list[int] = []

    def read(key: int) -> int:
        reads.append(key)
        return key * 10

    prefetcher: Prefetcher[int, int] = Prefetcher(read, keep=2)
    try:
        for key in (1, 2, 3):  # 1 is dropped when 3 starts
            prefetcher.start(key)
        assert list(prefetcher.reads) == [2, 3]
        assert prefetcher.take(3) == 30 and prefetcher.take(1) == 10 and prefetcher.take(2) == 20
        assert reads.count(2) == 1 and reads.count(3) == 1 and not prefetcher.reads
    finally:
        prefetcher.close()


def two_model_recipe(tiny_recipe: Path) -> Path:
    """The tiny recipe with a second reference model (two configs sharing each unit's originals)."""
    import yaml

    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["reference_models"].append({**recipe["reference_models"][0], "name": "cnn2"})
    path = tiny_recipe.with_name("two-models.yaml")
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_units_originals_are_encoded_once_for_every_config(tiny_recipe: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import builder.build.pipeline as pipeline

    encoded: list[int] = []
    real = pipeline.encode_image

    def counting(pixels: Any, image_format: str) -> bytes:
        encoded.append(1)
        return real(pixels, image_format)

    monkeypatch.setattr(pipeline, "encode_image", counting)
    result = build(two_model_recipe(tiny_recipe), tmp_path / "out")
    assert result.exit_code == 0, result.output
    samples = 12  # 13 image files, one of them corrupt
    assert len(encoded) == samples * (2 + 1)  # each config's perturbed images, and the originals once


@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_the_encoders_threads_do_not_change_a_byte(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   image_format: str) -> None:
    import numpy as np

    import builder.build.pipeline as pipeline
    from builder.images import encode_image

    images = np.random.default_rng(0).integers(0, 256, (9, 20, 20, 3), dtype=np.uint8)
    encoder = pipeline.ImageEncoder(image_format, threads=4)
    try:
        assert encoder.encode(images) == [encode_image(image, image_format) for image in images]
    finally:
        encoder.close()
    recipe = two_model_recipe(tiny_recipe)
    files = {}
    for threads in (1, 4):
        monkeypatch.setattr(pipeline, "encode_threads", lambda threads=threads: threads)
        out = tmp_path / f"threads-{threads}"
        result = build(recipe, out, "--set", f"output.image_encoding={image_format}")
        assert result.exit_code == 0, result.output
        files[threads] = {name: data for name, data in every_file(out).items() if name.startswith(("cnn", "cnn2"))}
    assert len(files[1]) == 12 and files[1] == files[4]


def test_the_write_benchmark_runs_through_the_builds_own_encoder_and_writers(tmp_path: Path) -> None:
    """benchmarks/bench_write.py is a script, not a test: this only keeps it runnable (no timing is checked)."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_write.py"
    out = tmp_path / "write.json"
    done = subprocess.run([sys.executable, str(script), "--size", "16", "--images", "3", "--configs", "2", "--threads", "1", "2",
                           "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["format"], row["threads"], row["samples"]) for row in rows] == [("png", 1, 6), ("png", 2, 6), ("webp", 1, 6), ("webp", 2, 6)]
    assert all(row["samples_per_s"] > 0 for row in rows) and "cores per GPU" in done.stdout
