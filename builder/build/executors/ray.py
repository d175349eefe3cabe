"""The Ray executor: unit runners as Ray Core actors, on one machine or a cluster.

Each actor loads the components once and owns them; the driver only hands out units and
waits with ``ray.wait``. Workers read their own source items and write their shards and
stats straight into the output dir (a path every node sees), so no pixels or shard bytes go
through the object store: a task returns only the unit's stats. An actor that dies (a node
lost, out of memory) is restarted by Ray (``max_restarts``); its unit goes back to the
driver's queue (``max_task_retries=0``: the driver knows which configs still lack stats). Not
``ray.util.ActorPool`` (it can wedge on a dead actor) and not Ray Data (its file names
cannot match a local build's).
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Optional

from builder.build.executors.base import UnitResult, WorkerDied, WorkerInfo
from builder.build.plan import Execution, RunnerSettings
from builder.build.units import WorkUnit
from builder.errors import BuilderError, first_line

log = logging.getLogger(__name__)

ACTOR_RESTARTS = 3
#: how long the driver waits for a restarted actor to load its components again, and how often it asks
RESTART_WAIT_S = 900.0
RESTART_POLL_S = 30.0
INSTALL_HINT = "pip install 'fmr-builder[ray]' (or: pip install 'ray[default]')"


class RayUnitRunner:
    """The actor: one :class:`UnitRunner`, loaded when the actor starts (again after a restart).
    A load error is kept and raised by every call, so the driver gets its one-line message."""

    def __init__(self, settings: RunnerSettings, threads: Optional[int] = None) -> None:
        """``threads``: torch's thread count, the actor's CPUs (Ray left torch on every core of
        the node, so an actor's bytes were those of a build of the node's core count, whatever
        --cpus-per-worker said, and its unit records said so)."""
        import torch

        from builder.build.runner import UnitRunner

        if threads:
            torch.set_num_threads(threads)
        self.runner: Any = None
        self.failure: BaseException | None = None
        try:
            self.runner = UnitRunner(settings)
        except Exception as error:  # noqa: BLE001 - raised again, whole, by info() and run()
            self.failure = error

    def _ready(self) -> Any:
        if self.failure is not None:
            raise self.failure
        return self.runner

    def info(self) -> WorkerInfo:
        return self._ready().info

    def run(self, unit: WorkUnit, configs: list[str], upcoming: Optional[WorkUnit] = None) -> UnitResult:
        runner = self._ready()
        return UnitResult(unit, runner.run(unit, configs, upcoming=upcoming), runner.info)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BuilderError(f"--executor ray needs Ray, which is not installed; {INSTALL_HINT}") from None
    return ray


class RayPool:
    """``execution.workers`` actors (default 1), each with ``gpus_per_worker`` GPUs (default 1
    with ``--device cuda``, else 0) and ``cpus_per_worker`` CPUs (default 1)."""

    streams_progress = False

    def __init__(self, settings: RunnerSettings, execution: Execution) -> None:
        self.ray = import_ray()
        self.started_ray = False
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=execution.ray_address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = execution.ray_address or "a new local cluster"
                raise BuilderError(f"--executor ray: cannot start or join {where} ({first_line(error)}); "
                                   "start one with 'ray start --head' and pass --ray-address auto") from None
            self.started_ray = True
        gpus = execution.gpus_per_worker if execution.gpus_per_worker is not None else (1.0 if settings.device == "cuda" else 0.0)
        self.capacity = execution.workers or 1
        self._check_resources(execution.cpus_per_worker or 1, gpus)
        actor = self.ray.remote(num_cpus=execution.cpus_per_worker or 1, num_gpus=gpus,
                                max_restarts=ACTOR_RESTARTS, max_task_retries=0)(RayUnitRunner)
        self.settings, self.actor = settings, actor
        self.threads = max(1, int(execution.cpus_per_worker or 1))  # torch computes on the CPUs Ray gives the actor
        self.actors: list[Any] = []
        self.idle: list[Any] = []
        self.owner: dict[Hashable, Any] = {}
        self.expects: dict[Any, Optional[WorkUnit]] = {}  # actor -> the unit it was told comes next

    def _check_resources(self, cpus: float, gpus: float) -> None:
        """Actors the cluster cannot place wait forever: on the local cluster started here (it
        cannot grow) that is a one-line error before any starts; a cluster joined by address may
        be autoscaling, so there it is a warning."""
        have = self.ray.cluster_resources()
        if gpus == 0 and float(have.get("GPU", 0.0)) > 0:
            log.warning("--executor ray: the workers compute on CPUs (--device cpu, the default on Ray) although the cluster has "
                        "%g GPUs; pass --device cuda to build on them", float(have["GPU"]))
        short = [(what, need, float(have.get(what, 0.0))) for what, need in (("CPU", cpus * self.capacity), ("GPU", gpus * self.capacity))
                 if need > float(have.get(what, 0.0))]
        if not short:
            return
        what, need, there = short[0]
        text = (f"--executor ray: {self.capacity} worker(s) ask for {need:g} {what}s in all, the Ray cluster has {there:g}")
        if self.started_ray:
            self.close()
            raise BuilderError(f"{text}; lower --workers, --cpus-per-worker or --gpus-per-worker, or join a larger cluster with --ray-address")
        log.warning("%s now: the workers it cannot place wait until it grows", text)

    def probe(self) -> WorkerInfo:
        """Start one actor first (it trains any missing weights, once), then the others; all must
        load, and the first one's info is the reference."""
        self.actors = [self.actor.remote(self.settings, self.threads)]
        first = self._ready(self.actors[0])
        self.actors += [self.actor.remote(self.settings, self.threads) for _ in range(self.capacity - 1)]
        for actor in self.actors[1:]:
            self._ready(actor)
        self.idle = list(self.actors)
        return first

    def _ready(self, actor: Any) -> WorkerInfo:
        info = self._get(actor.info.remote())
        if isinstance(info, BaseException):
            raise info
        return info

    def submit(self, unit: WorkUnit, configs: list[str], upcoming: Optional[WorkUnit] = None) -> Hashable:
        """Run ``unit`` on an idle actor, the one that was told it comes next if any (it read it
        ahead); ``upcoming`` is read ahead on this one."""
        told = [i for i, actor in enumerate(self.idle) if self.expects.get(actor) == unit]
        actor = self.idle.pop(told[0] if told else -1)
        ref = actor.run.remote(unit, configs, upcoming)
        self.owner[ref] = actor
        self.expects[actor] = upcoming
        return ref

    def wait(self, handles: list[Hashable]) -> list[tuple[Hashable, Any]]:
        ready, _ = self.ray.wait(list(handles), num_returns=1)
        outcomes = []
        for ref in ready:
            actor = self.owner.pop(ref)
            outcome = self._get(ref)
            if isinstance(outcome, WorkerDied):
                self._await_restart(actor)
            self.idle.append(actor)
            outcomes.append((ref, outcome))
        return outcomes

    def _await_restart(self, actor: Any) -> None:
        """Ray restarts a dead actor (up to ACTOR_RESTARTS times), reloading its components; a
        call made while it restarts fails at once (ActorUnavailableError), so the unit handed
        straight back to it lost its worker again and again within seconds, on a busy machine
        all its tries. Wait until the actor answers, or is gone for good (then the next call
        says so)."""
        import time

        exceptions = self.ray.exceptions
        deadline = time.monotonic() + RESTART_WAIT_S
        while time.monotonic() < deadline:
            try:
                self.ray.get(actor.info.remote(), timeout=RESTART_POLL_S)
                return
            except (exceptions.ActorUnavailableError, exceptions.GetTimeoutError):
                time.sleep(0.5)
            except exceptions.RayError:  # died for good, or its components no longer load: the next call tells
                return
        log.warning("a restarted Ray actor did not answer within %.0f s; handing it work anyway", RESTART_WAIT_S)

    def _get(self, ref: Any) -> Any:
        """The task's result, or the exception it ended with: a dead actor as WorkerDied, an
        error raised in the actor as itself (Ray wraps it; the cause is what the user needs)."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except (exceptions.ActorDiedError, exceptions.ActorUnavailableError, exceptions.WorkerCrashedError) as error:
            return WorkerDied(f"a Ray actor died ({type(error).__name__})")
        except exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            return cause if isinstance(cause, BaseException) else error

    def restart(self) -> bool:
        """Ray restarts a dead actor itself; the other actors' units are still running."""
        return False

    def stop(self) -> None:
        """On an interrupt: as :meth:`close`, which kills the actors without waiting."""
        self.close()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors, self.idle, self.expects = [], [], {}
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False
