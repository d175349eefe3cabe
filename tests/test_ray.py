"""``--executor ray`` on a real local Ray cluster (``ray.init(num_cpus=2)``): the same bytes as a
single-process build, and a worker killed between shard and stats is replaced."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from helpers import FAULTS, build, every_file, temp_files

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
pytestmark = pytest.mark.slow  # a Ray cluster takes a while to start on 2 cores


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2-CPU local cluster whose workers carry the fault hook (tests/faults/sitecustomize.py);
    the hook fires only when the returned mark file is absent."""
    mark = tmp_path_factory.mktemp("ray") / "killed"
    mark.write_text("armed later")
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "FMR_KILL_MARK", "FMR_RESTART_DELAY")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(FAULTS), saved["PYTHONPATH"] or ""])
    os.environ["FMR_KILL_MARK"] = str(mark)
    os.environ["FMR_RESTART_DELAY"] = "6"  # the replacement actor loads slowly, as real components do
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
        yield mark
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def single(tiny_recipe: Path, tmp_path: Path) -> dict[str, bytes]:
    """One process with an actor's one thread (--cpus-per-worker 1): on a CPU the thread count
    shapes the bytes, so that is the build the actors' must equal."""
    import torch

    out, threads = tmp_path / "single", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert build(tiny_recipe, out).exit_code == 0
    finally:
        torch.set_num_threads(threads)
    return every_file(out)


def test_ray_workers_give_the_same_bytes(cluster: Path, tiny_recipe: Path, tmp_path: Path, single: dict[str, bytes]) -> None:
    out = tmp_path / "ray"
    result = build(tiny_recipe, out, "--executor", "ray", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert every_file(out) == single


def test_a_ray_actor_killed_between_shard_and_stats_is_replaced(cluster: Path, tiny_recipe: Path, tmp_path: Path,
                                                                 single: dict[str, bytes]) -> None:
    """The replacement takes seconds to load: the unit waits for it (each call made while it
    restarted failed at once and counted as another death, so a busy machine used up the tries)."""
    cluster.unlink()  # arm the hook: the next actor to finish a unit's shards dies before its stats
    out = tmp_path / "ray-faulty"
    result = build(tiny_recipe, out, "--executor", "ray", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert cluster.is_file(), "the fault was never injected"
    assert every_file(out) == single
    assert temp_files(out) == []


def test_a_component_error_in_an_actor_is_one_line(cluster: Path, tiny_recipe: Path, tmp_path: Path) -> None:
    from helpers import assert_one_line_error

    (tmp_path / "theta.pt").write_bytes(b"broken")
    out = tmp_path / "out"
    assert_one_line_error(build(tiny_recipe, out, "--executor", "ray", "--workers", "2"), "theta.pt")
    assert not out.exists()


def test_workers_the_cluster_cannot_place_are_refused_or_warned(caplog: pytest.LogCaptureFixture) -> None:
    """Actors asking for more than the cluster has wait forever (the build hung with no word): on
    a local cluster this run started, which cannot grow, that is one line before any actor
    starts; on a joined cluster, which may autoscale, a warning."""
    from types import SimpleNamespace

    from builder.build.executors.ray import RayPool
    from builder.errors import BuilderError

    shut: list[bool] = []
    pool = RayPool.__new__(RayPool)
    pool.ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0}, kill=lambda *a, **k: None, shutdown=lambda: shut.append(True))
    pool.capacity, pool.actors, pool.idle, pool.expects, pool.started_ray = 3, [], [], {}, True
    with pytest.raises(BuilderError, match=r"^--executor ray: 3 worker\(s\) ask for 3 CPUs in all, the Ray cluster has 2; lower --workers"):
        pool._check_resources(1, 0)
    assert shut == [True]  # the cluster started for nothing is shut down
    pool.started_ray = True
    pool._check_resources(0.5, 0)  # 1.5 CPUs fit
    with pytest.raises(BuilderError, match="ask for 3 GPUs in all, the Ray cluster has 0"):
        pool._check_resources(0.5, 1)
    pool.started_ray = False
    with caplog.at_level("WARNING", logger="builder.build.executors.ray"):
        pool._check_resources(1, 0)
    assert "the workers it cannot place wait until it grows" in caplog.text and "GPUs" not in caplog.text
    # a GPU cluster built on its CPUs, without a word, when --device cuda was not given
    pool.ray.cluster_resources = lambda: {"CPU": 8.0, "GPU": 4.0}
    caplog.clear()
    with caplog.at_level("WARNING", logger="builder.build.executors.ray"):
        pool._check_resources(1, 0)
    assert "the workers compute on CPUs (--device cpu, the default on Ray) although the cluster has 4 GPUs; pass --device cuda" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="builder.build.executors.ray"):
        pool._check_resources(1, 1)
    assert not caplog.text
