"""What every executor gives the driver: a pool of unit runners behind one small interface.

The driver (:mod:`builder.build.driver`) only schedules: it hands out work units, collects
their stats, re-queues a unit whose worker died, and never touches pixels. An executor owns
the workers and their loaded components: in this process, in spawned local processes, or in
Ray actors. Every worker reports the fingerprints of the weights it loaded and the device and
torch version it runs, so the driver can refuse a worker that would write other bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Optional, Protocol, Sequence

from builder.build.units import WorkUnit
from builder.errors import BuilderError

#: distributions besides torch whose versions shape a unit's bytes: the models' code (timm,
#: open_clip, taming, transformers, diffusers), numpy's and Pillow's arithmetic, the Parquet writer
BYTE_SHAPING_PACKAGES = ("numpy", "pillow", "pyarrow", "timm", "open_clip_torch", "taming-transformers-rom1504",
                         "transformers", "diffusers")


@dataclass(frozen=True)
class WorkerInfo:
    """What shapes a worker's bytes besides the recipe: its weights, device kind, torch and the
    other packages that compute or encode (:func:`byte_shaping_versions`)."""

    fingerprints: dict[str, str]
    device: str  # "cpu" or the GPU's name
    torch: str
    packages: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "torch": self.torch, "packages": dict(sorted(self.packages.items()))}


def installed_versions(names: Sequence[str]) -> dict[str, str]:
    """The version of each of the distributions ``names`` that is installed (the others left out)."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def byte_shaping_versions() -> dict[str, str]:
    """Versions of the installed :data:`BYTE_SHAPING_PACKAGES`, and of the zlib and libwebp
    Pillow encodes with (another zlib compresses a PNG to other bytes)."""
    versions = installed_versions(BYTE_SHAPING_PACKAGES)
    from PIL import features

    for library in ("zlib", "webp"):
        version = features.version(library)
        if version:
            versions[f"pillow's {library}"] = version
    return versions


def package_difference(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """'pillow 11.3.0 against 12.1.0' for the first package both sides have at other versions,
    or '' (a package one side lacks is not compared: a worker may not need it)."""
    for name in sorted(set(before) & set(now)):
        if str(before[name]) != str(now[name]):
            return f"{name} {before[name]} against {now[name]}"
    return ""


@dataclass(frozen=True)
class UnitResult:
    """A finished unit: the stats files its runner wrote (one per config) and who wrote them."""

    unit: WorkUnit
    stats: list[dict[str, Any]]
    worker: WorkerInfo


class WorkerDied(BuilderError):
    """A worker process or actor died while it held a unit (killed, out of memory, a lost node)."""


class WorkerPool(Protocol):
    """Unit runners that the driver hands units to; ``capacity`` units can be in flight."""

    capacity: int

    def probe(self) -> WorkerInfo:
        """Start the workers (components load now: a load error is raised here, before the
        output dir is touched) and return what the first of them loaded."""
        ...

    def submit(self, unit: WorkUnit, configs: list[str], upcoming: Optional[WorkUnit] = None) -> Hashable:
        """Start ``unit``; returns a handle for :meth:`wait`. ``upcoming`` is the driver's guess
        of the unit that this unit's worker gets next (read ahead there while this one runs)."""
        ...

    def wait(self, handles: list[Hashable]) -> list[tuple[Hashable, Any]]:
        """Block until at least one handle is done: (handle, UnitResult or the exception)."""
        ...

    def restart(self) -> bool:
        """Replace dead workers (the driver calls it after a :class:`WorkerDied`); True when
        that also lost the other units in flight (they are then submitted again)."""
        ...

    def close(self) -> None:
        """Release the workers once their units are done."""
        ...

    def stop(self) -> None:
        """Release the workers now, on an interrupt: units in flight are abandoned (a unit's
        files land whole or not at all, its stats last), never waited for."""
        ...


#: builds a pool for a plan's runner settings; ``progress`` gets sample counts as they finish
PoolFactory = Callable[[Any, Optional[Callable[[int], None]]], WorkerPool]


def current_worker_info(fingerprints: dict[str, str], device: str) -> WorkerInfo:
    """This process's :class:`WorkerInfo`: the GPU's name, or the CPU's model and torch's thread
    count, stands for the device kind. Another processor type can round differently, and so can
    another thread count (CPU kernels split their sums by thread): ``--workers 2`` (threads
    split between workers) and one process gave other bytes, and a resume stitched them together."""
    import torch

    if device.startswith("cuda"):
        kind = torch.cuda.get_device_name(torch.device(device))
    else:
        kind = device.split(":")[0]
        if kind == "cpu":
            model = cpu_model()
            kind = f"cpu ({model + ', ' if model else ''}{torch.get_num_threads()} threads)"
    return WorkerInfo(dict(fingerprints), kind, torch.__version__, byte_shaping_versions())


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else the platform's word for it), or ''."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor()
