"""Background I/O for the unit runner: the next unit is read while this one is perturbed, and a
config's shards are encoded and written while the engine goes on with the next config or unit.

Threads, not processes: Pillow releases the GIL while it decodes, resizes and encodes PNG and
WebP, so threads overlap them with the engine without a second copy of the source or of a unit's
pixels crossing a pipe. The source is read, and the output written, by one thread each, in
order, so the files appear in the order a serial build writes them; the images themselves are
encoded on a pool of threads (:class:`ImageEncoder`), because one thread cannot keep up with a
GPU: at 256 px, PNG takes about 8 ms and lossless WebP about 320 ms per image on this project's
CPU, against about 200 ms per image for the whole engine on one H100.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from concurrent.futures import Future
from typing import Callable, Generic, Hashable, Iterable, Optional, TypeVar

import numpy as np

from builder.images import encode_image

log = logging.getLogger(__name__)

#: units read ahead of the one being perturbed (a unit of 1,000 images at 256 px is ~200 MB)
READ_AHEAD = 1
#: reads kept at most, started or done: the look-ahead and a hint for the next call
KEPT_READS = 2
#: (unit, config) shards waiting for the writer or being written, at most (back-pressure)
PENDING_WRITES = 2

#: image-encoding threads at most (more than a GPU's write rate needs)
MAX_ENCODE_THREADS = 8

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Prefetcher(Generic[K, T]):
    """``read(key)`` run ahead of need on one thread; at most ``keep`` reads kept (the oldest
    unclaimed one is dropped), so a hint for a unit that goes elsewhere costs one read, not memory."""

    def __init__(self, read: Callable[[K], T], keep: int = KEPT_READS) -> None:
        self.read, self.keep = read, keep
        self.reads: collections.OrderedDict[K, Future[T]] = collections.OrderedDict()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="unit-reader")

    def start(self, key: K) -> None:
        """Begin reading ``key`` in the background unless it already is."""
        if key in self.reads:
            return
        while len(self.reads) >= self.keep:
            _, dropped = self.reads.popitem(last=False)
            dropped.cancel()
        self.reads[key] = self.executor.submit(self.read, key)

    def take(self, key: K) -> T:
        """The read of ``key`` (started now if it was not), which then leaves the cache; its
        error, if it failed, is raised here."""
        self.start(key)
        return self.reads.pop(key).result()

    def close(self) -> None:
        for future in self.reads.values():
            future.cancel()
        self.reads.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)


class WriteSkipped(Exception):
    """A write not begun because an earlier one failed (that failure is the one reported)."""


class BackgroundWriter:
    """Tasks run in order on one thread, at most ``limit`` of them submitted and unfinished:
    :meth:`submit` waits for the oldest beyond that, and raises its error if it failed. After a
    failure no later task begins, as in a serial build, which stops at its first failed write."""

    def __init__(self, limit: int = PENDING_WRITES) -> None:
        self.limit = limit
        self.outstanding: collections.deque[Future[object]] = collections.deque()
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="unit-writer")
        self.failed = threading.Event()

    def submit(self, task: Callable[[], T]) -> Future[T]:
        while self.outstanding and self.outstanding[0].done():
            self.outstanding.popleft().result()  # a failure surfaces at the first chance
        while len(self.outstanding) >= self.limit:
            self.outstanding.popleft().result()
        future = self.executor.submit(self._guarded, task)
        self.outstanding.append(future)  # type: ignore[arg-type]
        return future

    def _guarded(self, task: Callable[[], T]) -> T:
        if self.failed.is_set():
            raise WriteSkipped("an earlier write failed")
        try:
            return task()
        except BaseException:
            self.failed.set()
            raise

    def finish(self, futures: Iterable[Future[T]]) -> None:
        """Wait for these tasks, whatever their outcome (after a failure, later ones are skipped)."""
        concurrent.futures.wait(list(futures))

    def abandon(self, futures: Iterable[Future[T]]) -> None:
        """Stop after an error or an interrupt: tasks not begun are cancelled, the one being run
        finishes (a shard or stats file is written whole or not at all either way)."""
        running = [future for future in futures if not future.cancel()]
        concurrent.futures.wait(running)
        self.outstanding = collections.deque(future for future in self.outstanding if not future.done())
        if not self.outstanding:
            self.failed.clear()  # a later stream starts afresh

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.outstanding.clear()


def encode_threads() -> int:
    """As many threads as torch computes on (a Ray actor's ``--cpus-per-worker`` share, a
    process worker's share of the cores), at most :data:`MAX_ENCODE_THREADS`."""
    import torch

    return max(1, min(MAX_ENCODE_THREADS, torch.get_num_threads()))


class ImageEncoder:
    """Images encoded on a pool of threads, in order: the bytes are those of a serial encode."""

    def __init__(self, image_format: str, threads: Optional[int] = None) -> None:
        self.image_format = image_format
        self.executor = concurrent.futures.ThreadPoolExecutor(threads or encode_threads(), thread_name_prefix="image-encoder")

    def start(self, images: Iterable[np.ndarray]) -> list[Future[bytes]]:
        """Begin encoding each uint8 (H, W, 3) image; their bytes come from the futures, in order."""
        return [self.executor.submit(encode_image, image, self.image_format) for image in images]

    def encode(self, images: Iterable[np.ndarray]) -> list[bytes]:
        return [future.result() for future in self.start(images)]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
