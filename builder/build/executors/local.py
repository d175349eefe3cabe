"""Local executors: the unit runner in this process, or in N spawned processes.

``ProcessPool`` uses ``concurrent.futures.ProcessPoolExecutor`` with the spawn context (CUDA
cannot be forked) and an initializer that loads the components once per process. A worker
that dies breaks the pool: the driver gets :class:`WorkerDied` for every unit in flight and
asks for a fresh pool (``multiprocessing.Pool`` would hang instead). With several visible
GPUs each process takes its own; on CPU the threads are split between the processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any, Callable, Generator, Hashable, Iterator, Optional

from builder.build.executors.base import UnitResult, WorkerDied, WorkerInfo
from builder.build.plan import RunnerSettings
from builder.build.units import WorkUnit

log = logging.getLogger(__name__)


class InProcessPool:
    """One runner in this process, streaming: units run while the driver waits, and up to
    ``capacity`` are in flight (one being written, one perturbed, one read), so the runner
    overlaps the I/O of the units around the one it perturbs (see :meth:`UnitRunner.run_many`).
    Errors (and Ctrl-C) reach the driver directly; progress is reported per batch."""

    capacity = 3
    streams_progress = True

    def __init__(self, settings: RunnerSettings, progress: Optional[Callable[[int], None]] = None) -> None:
        self.settings, self.progress = settings, progress
        self.runner: Any = None
        self.queue: collections.deque[tuple[WorkUnit, list[str]]] = collections.deque()
        self.order: collections.deque[tuple[Hashable, WorkUnit]] = collections.deque()  # submitted, not yet done
        self.stream: Optional[Generator[list[dict[str, Any]], None, None]] = None
        self.handles = itertools.count()

    def probe(self) -> WorkerInfo:
        from builder.build.runner import UnitRunner

        if self.runner is None:
            self.runner = UnitRunner(self.settings)
        return self.runner.info

    def submit(self, unit: WorkUnit, configs: list[str], upcoming: Optional[WorkUnit] = None) -> Hashable:
        """Queue ``unit`` for the runner's stream (``upcoming`` is not needed: the stream sees the queue)."""
        self.probe()
        handle = next(self.handles)
        self.queue.append((unit, configs))
        self.order.append((handle, unit))
        return handle

    def wait(self, handles: list[Hashable]) -> list[tuple[Hashable, Any]]:
        """Run the stream until the oldest unit in flight is written; results come in submission order."""
        while self.order:
            if self.stream is None:
                self.stream = self.runner.run_many(self._queued(), self.progress)
            stats = next(self.stream, None)
            if stats is None:  # the stream ran dry before the units queued since: a fresh one takes them
                self.stream = None
                continue
            handle, unit = self.order.popleft()
            return [(handle, UnitResult(unit, stats, self.runner.info))]
        return []

    def _queued(self) -> Iterator[tuple[WorkUnit, list[str]]]:
        while self.queue:
            yield self.queue.popleft()

    def restart(self) -> bool:
        """Nothing to replace: a failure here stops this process."""
        return False

    def stop(self) -> None:
        """On an interrupt: as :meth:`close` (this process's unit has already stopped)."""
        self.close()

    def close(self) -> None:
        """Pending writes finish or are abandoned (never half written) before this returns."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.runner is not None:
            self.runner.close()
            self.runner = None


# --------------------------------------------------------------------- worker process state
# Each spawned worker process holds its own runner, set once by the initializer; these two
# names live only in worker processes (the driver never sets them).
_RUNNER: Any = None
_FAILURE: Optional[BaseException] = None


def _init_worker(settings: RunnerSettings, counter: Any, threads: Optional[int], driver: int) -> None:
    """Load this process's runner once; a load error is kept and raised by its first task, so
    the driver sees the one-line error instead of a broken pool."""
    global _RUNNER, _FAILURE
    import torch

    _exit_with_parent(driver)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if threads:
        torch.set_num_threads(threads)
    if settings.device == "cuda" and torch.cuda.device_count() > 1:
        settings = replace(settings, device=f"cuda:{index % torch.cuda.device_count()}")
    try:
        from builder.build.runner import UnitRunner

        _RUNNER = UnitRunner(settings)
    except Exception as error:  # noqa: BLE001 - raised again, whole, by this worker's tasks
        _FAILURE = error


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A worker whose driver (pid ``parent``) died (``kill -9``, a lost session) exits within
    ``every`` seconds instead of lingering with its loaded models: nothing would send it work."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_runner() -> Any:
    if _FAILURE is not None:
        raise _FAILURE
    return _RUNNER


def _probe() -> WorkerInfo:
    return _worker_runner().info


def _run(unit: WorkUnit, configs: list[str], upcoming: Optional[WorkUnit]) -> UnitResult:
    runner = _worker_runner()
    return UnitResult(unit, runner.run(unit, configs, upcoming=upcoming), runner.info)


class ProcessPool:
    """``workers`` spawned processes, each with its own runner (see the module docstring)."""

    streams_progress = False

    def __init__(self, settings: RunnerSettings, workers: int) -> None:
        import torch

        self.settings, self.capacity = settings, workers
        on_gpu = settings.device.startswith("cuda")
        self.threads = None if on_gpu else max(1, torch.get_num_threads() // workers)
        self.context = multiprocessing.get_context("spawn")
        self.executor: Optional[concurrent.futures.ProcessPoolExecutor] = None

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        if self.executor is None:
            counter = self.context.Value("i", 0)
            self.executor = concurrent.futures.ProcessPoolExecutor(
                self.capacity, mp_context=self.context, initializer=_init_worker,
                initargs=(self.settings, counter, self.threads, os.getpid()),
            )
        return self.executor

    def probe(self) -> WorkerInfo:
        return _outcome(self._start().submit(_probe), raise_it=True)

    def submit(self, unit: WorkUnit, configs: list[str], upcoming: Optional[WorkUnit] = None) -> Hashable:
        return self._start().submit(_run, unit, configs, upcoming)

    def wait(self, handles: list[Hashable]) -> list[tuple[Hashable, Any]]:
        done, _ = concurrent.futures.wait(handles, return_when=concurrent.futures.FIRST_COMPLETED)  # type: ignore[arg-type]
        return [(future, _outcome(future)) for future in done]

    def restart(self) -> bool:
        """A dead process breaks the whole executor: every unit in flight is lost with it."""
        log.warning("a worker process died; starting a fresh pool of %d", self.capacity)
        self.close()
        return True

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    def stop(self) -> None:
        """On an interrupt: the workers are terminated, not waited for. Only the driver gets a
        SIGTERM, and waiting let every unit in flight run to its end (minutes on a GPU, past a
        scheduler's grace period). A unit's files are renamed into place whole and its stats
        written last, so a killed unit is simply pending again."""
        if self.executor is None:
            return
        processes = list(getattr(self.executor, "_processes", {}).values())  # terminate_workers() from Python 3.14
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=30)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = None


def _outcome(future: Any, raise_it: bool = False) -> Any:
    """A future's result, or the exception it ended with (a dead worker as WorkerDied)."""
    try:
        return future.result()
    except BrokenProcessPool:
        error: BaseException = WorkerDied(f"a worker process (pid unknown, on {os.uname().nodename}) died")
    except Exception as failure:  # noqa: BLE001 - handed to the driver, which decides
        error = failure
    if raise_it:
        raise error
    return error
