"""Torch's deterministic algorithms for a build (``run --deterministic``).

On a GPU a build's bytes are not reproducible run to run with torch's defaults: cuDNN picks
convolution kernels that accumulate with atomics, and two runs of the same demo on an H200 gave
other images and, for one sample in 150, another step count (``benchmarks/bench_determinism.py``).
Deterministic mode asks torch and cuDNN for reproducible kernels only; an op that has none then
fails with its name, before any unit (the runner's rehearsal step) instead of differing in
silence. A CPU build is already reproducible run to run; the mode costs nothing there.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Optional

from builder.errors import ComponentError

#: what cuBLAS needs for reproducible matrix products (CUDA >= 10.2); read when its handle is made
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class TorchDeterminism:
    """torch's process-wide switches that decide whether kernels may differ run to run."""

    algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool


def current() -> TorchDeterminism:
    import torch

    return TorchDeterminism(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)


def apply(state: TorchDeterminism) -> None:
    import torch

    torch.use_deterministic_algorithms(state.algorithms, warn_only=state.warn_only)
    torch.backends.cudnn.deterministic = state.cudnn_deterministic
    torch.backends.cudnn.benchmark = state.cudnn_benchmark


def enable(warn_only: bool = False) -> TorchDeterminism:
    """Deterministic algorithms on, for this process; returns the switches as they were, for
    :func:`apply` to restore. ``CUBLAS_WORKSPACE_CONFIG`` is set unless given: cuBLAS reads it
    when this process makes its first handle, so a worker (spawned, or a Ray actor) calls this
    before it loads any component."""
    previous = current()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    apply(TorchDeterminism(algorithms=True, warn_only=warn_only, cudnn_deterministic=True, cudnn_benchmark=False))
    return previous


@contextlib.contextmanager
def mode(on: bool, warn_only: bool = False) -> Iterator[None]:
    """Deterministic algorithms on inside the block when ``on`` (see :func:`enable`), then
    torch's switches as they were; nothing at all when not ``on``."""
    before = enable(warn_only) if on else None
    try:
        yield
    finally:
        if before is not None:
            apply(before)


def one_line_error(error: BaseException, what: str, device: str) -> Optional[ComponentError]:
    """torch's error for an op with no deterministic implementation, as one line naming ``what``
    failed (``config cnn``, ``loading the components``) and the op; None for any other error."""
    op = nondeterministic_op(error)
    if op is None:
        return None
    return ComponentError(f"{what}: {op} has no deterministic implementation on {device} (--deterministic); run without --deterministic")


def nondeterministic_op(error: BaseException) -> Optional[str]:
    """The op torch names in its error for an op with no deterministic implementation (in
    deterministic mode), or None for any other error."""
    marker = " does not have a deterministic implementation"
    text = str(error)
    return (text.partition(marker)[0].strip() or "an op") if isinstance(error, RuntimeError) and marker in text else None
