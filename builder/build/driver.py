"""The driver: hands work units to a pool of unit runners and collects their stats.

It never touches pixels. A unit whose worker died goes back in the queue (only its configs
that have no stats file yet), a bounded number of times; any other failure stops the build.
Every result's worker must have loaded the same weights, on the same kind of device and
torch, as the first one: otherwise its bytes could differ, and the build stops.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
from typing import Any, Hashable, Optional

from builder.build.executors.base import UnitResult, WorkerDied, WorkerInfo, WorkerPool, package_difference
from builder.build.plan import BuildPlan
from builder.build.tally import ConfigTally
from builder.build.units import WorkUnit
from builder.errors import BuilderError, OutputError
from builder.manifest import STATS_DIR

log = logging.getLogger(__name__)

MAX_DEATHS_PER_UNIT = 3


def dispatch(plan: BuildPlan, pool: WorkerPool, reference: WorkerInfo, bar: Any, tallies: dict[str, ConfigTally]) -> None:
    """Run every pending unit of ``plan`` on ``pool``; returns when all have their stats."""
    queue = collections.deque(plan.pending_units().items())
    inflight: dict[Hashable, tuple[WorkUnit, list[str]]] = {}
    deaths: collections.Counter[int] = collections.Counter()
    collected: set[tuple[int, str]] = set()
    while queue or inflight:
        while queue and len(inflight) < pool.capacity:
            unit, configs = queue.popleft()
            inflight[pool.submit(unit, configs, next_for_worker(queue, pool.capacity))] = (unit, configs)
        died = False
        for handle, outcome in pool.wait(list(inflight)):
            unit, configs = inflight.pop(handle)
            if isinstance(outcome, WorkerDied):
                died = True
                deaths[unit.index] += 1
                _requeue(plan, queue, unit, configs, deaths[unit.index], outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                fresh = [s for s in outcome.stats if (unit.index, s["config"]) not in collected]
                collected.update((unit.index, s["config"]) for s in fresh)
                _checked(plan, unit, outcome, reference)
                _collect(UnitResult(unit, fresh, outcome.worker), bar, tallies, getattr(pool, "streams_progress", False))
        if died and pool.restart():
            for unit, configs in inflight.values():  # the restart lost them too
                queue.appendleft((unit, configs))
            inflight.clear()


def next_for_worker(queue: collections.deque[tuple[WorkUnit, list[str]]], capacity: int) -> Optional[WorkUnit]:
    """The unit a worker just handed one is likely to get next: with ``capacity`` workers taking
    units in turn, the others take the first ``capacity - 1`` of the queue before it is free again."""
    return queue[capacity - 1][0] if len(queue) >= capacity else None


def _requeue(plan: BuildPlan, queue: Any, unit: WorkUnit, configs: list[str], count: int, error: WorkerDied) -> None:
    if count > MAX_DEATHS_PER_UNIT:
        raise BuilderError(
            f"work unit {unit.index} (samples {unit.start}-{unit.stop - 1}) lost its worker {count} times ({error}); "
            "check the workers' memory and logs, then resume with the same command"
        )
    left = [name for name in configs if not unit_is_recorded(plan, unit, name)]
    log.warning("work unit %d: %s; running it again (%d of %d)", unit.index, error, count, MAX_DEATHS_PER_UNIT)
    if left:
        queue.append((unit, left))


def unit_is_recorded(plan: BuildPlan, unit: WorkUnit, config: str) -> bool:
    """Whether ``unit`` of ``config`` has its stats file, which is written last."""
    relative = f"{STATS_DIR}/{config}/{unit.shard_stem(plan.recipe.output.split)}.json"
    try:
        data = plan.storage.read_bytes(relative)
        payload = json.loads(data) if data is not None else None
    except (OSError, ValueError, OutputError):  # unreadable: the unit runs again
        return False
    return isinstance(payload, dict) and payload.get("config") == config


def _checked(plan: BuildPlan, unit: WorkUnit, outcome: UnitResult, reference: WorkerInfo) -> None:
    """Refuse a unit from a worker unlike the first; its stats files are removed first, so the
    unit is pending again and a resume on one kind of worker can finish the dir."""
    try:
        check_same_worker(reference, outcome.worker)
    except OutputError:
        stem = unit.shard_stem(plan.recipe.output.split)
        with contextlib.suppress(OSError, OutputError):
            plan.storage.delete([f"{STATS_DIR}/{stats['config']}/{stem}.json" for stats in outcome.stats])
        raise


def _collect(result: UnitResult, bar: Any, tallies: dict[str, ConfigTally], streamed: bool) -> None:
    for stats in result.stats:
        tallies[stats["config"]].add(stats["tally"])
        if not streamed:
            bar.update(stats["num_samples"] + len(stats["rejects"]))
        summary = tallies[stats["config"]].summary()
        bar.set_postfix(config=stats["config"], perturbed=f"{summary['perturbed_share']:.0%}", mean_steps=f"{summary['mean_steps']:.1f}")


def check_same_worker(reference: WorkerInfo, worker: WorkerInfo) -> None:
    """Refuse a worker whose weights, device kind, torch or other packages differ from the first one's."""
    for name, fingerprint in worker.fingerprints.items():
        if reference.fingerprints.get(name) != fingerprint:
            raise OutputError(
                f"a worker loaded other weights for reference model '{name}' ({fingerprint[:12]}… instead of "
                f"{str(reference.fingerprints.get(name))[:12]}…); every worker must see the same checkpoints and caches"
            )
    if (worker.device, worker.torch) != (reference.device, reference.torch):
        raise OutputError(
            f"workers differ: one runs torch {worker.torch} on {worker.device}, another torch {reference.torch} on "
            f"{reference.device}; their bytes would differ, so give every worker the same kind of device and packages"
        )
    difference = package_difference(reference.packages, worker.packages)
    if difference:
        raise OutputError(f"workers differ: one has {difference} installed; their bytes would differ, so install the same "
                          "package versions on every worker")
