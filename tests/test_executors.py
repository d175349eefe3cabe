"""Scale-out: the same build on spawned local processes (and on Ray, see test_ray.py) gives the
same bytes as a single-process build, and survives a worker killed between shard and stats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import FAULTS, assert_one_line_error, build, every_file, temp_files

from builder.cli import main


@pytest.fixture
def single(tiny_recipe: Path, tmp_path: Path) -> dict[str, bytes]:
    """One process with the threads each of two workers gets: on a CPU the thread count shapes
    the bytes (kernels split their sums by thread), so that is the build the workers' must equal."""
    import torch

    out, threads = tmp_path / "single", torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        result = build(tiny_recipe, out)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return every_file(out)


@pytest.mark.slow
def test_local_workers_give_the_same_bytes(tiny_recipe: Path, tmp_path: Path, single: dict[str, bytes]) -> None:
    out = tmp_path / "two"
    result = build(tiny_recipe, out, "--executor", "local", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert every_file(out) == single
    assert "manifest id" in result.output


@pytest.mark.slow
def test_a_worker_killed_between_shard_and_stats_is_replaced(tiny_recipe: Path, tmp_path: Path, single: dict[str, bytes],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    mark = tmp_path / "killed"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FMR_KILL_MARK", str(mark))
    out = tmp_path / "faulty"
    result = build(tiny_recipe, out, "--workers", "2")
    assert result.exit_code == 0, result.output
    assert mark.is_file(), "the fault was never injected"
    assert every_file(out) == single
    assert temp_files(out) == []


@pytest.mark.slow
def test_a_component_error_in_a_worker_is_one_line_and_leaves_nothing(tiny_recipe: Path, tmp_path: Path) -> None:
    (tmp_path / "theta.pt").write_bytes(b"broken")
    out = tmp_path / "out"
    assert_one_line_error(build(tiny_recipe, out, "--workers", "2"), "theta.pt")
    assert not out.exists()


def test_two_builds_cannot_write_into_one_dir(tiny_recipe: Path, tmp_path: Path) -> None:
    from builder.outdir import output_lock

    out = tmp_path / "locked"
    with output_lock(out):
        assert_one_line_error(build(tiny_recipe, out), "another build is writing into")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("flags, fragment", [
    (["--ray-address", "auto"], "--executor ray"),
    (["--executor", "ray", "--device", "cuda:1"], "Ray assigns each actor its GPU"),
    (["--workers", "0"], "--workers"),
])
def test_executor_flags_that_do_not_fit_are_one_line(tiny_recipe: Path, tmp_path: Path, flags: list[str], fragment: str) -> None:
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(tmp_path / "o"), "--no-progress", *flags])
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_sigterm_stops_the_workers_instead_of_waiting_for_their_units(tiny_recipe: Path, tmp_path: Path, single: dict[str, bytes]) -> None:
    """Only the driver gets a scheduler's SIGTERM: it waited for every unit in flight to end
    (minutes on a GPU, past the grace period). Now its workers are stopped, the partial manifest
    lists what is there, and the same command finishes with the single-process bytes."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "builder.cli", "-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress",
               "--device", "cpu", "--workers", "2"]
    tag = f"fmr-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "FMR_TEST_TAG": tag, "FMR_SLOW_STATS": "120", "PYTHONPATH": os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("cnn/*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # a unit's shards are written: it now waits before its stats
    assert process.poll() is None, "the build ended before the signal"
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 45 and process.returncode == 130, stderr
    assert not list(out.glob("_stats/cnn/*.json")) and json.loads((out / "manifest.json").read_text())["complete"] is False
    deadline = time.monotonic() + 30
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not tagged_processes(tag), "worker processes outlived the stopped build"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert every_file(out) == single


@pytest.mark.slow
def test_kill_minus_nine_of_the_driver_then_resume_with_workers(tiny_recipe: Path, tmp_path: Path, single: dict[str, bytes]) -> None:
    """The driver dies mid-build (its worker processes are orphaned); the same command again
    finishes with the same bytes as an uninterrupted single-process build."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "builder.cli", "-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress",
               "--device", "cpu", "--workers", "2"]
    tag = f"fmr-test-{os.getpid()}-{time.monotonic_ns()}"  # marks the driver's processes, workers included
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FMR_TEST_TAG": tag})
    deadline = time.monotonic() + 120
    while not list((out / "_stats" / "cnn").glob("*.json")) if (out / "_stats" / "cnn").is_dir() else True:
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists(), "the build finished before the kill"
    deadline = time.monotonic() + 30
    while tagged_processes(tag) and time.monotonic() < deadline:  # orphaned workers leave with their driver
        time.sleep(0.2)
    assert not tagged_processes(tag), "worker processes outlived their killed driver"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert every_file(out) == single
    assert temp_files(out) == []


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment carries ``FMR_TEST_TAG=tag`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"FMR_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
