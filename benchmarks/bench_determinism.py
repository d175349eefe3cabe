"""Are two identical engine runs byte-identical on this device, and what does determinism cost?

The same components, images, seed and batch, run ``--runs`` times in one process: first as a build
runs by default (torch's defaults), then as ``run --deterministic`` runs (``builder.build.determinism``:
torch's deterministic algorithms, cuDNN's deterministic, non-benchmarking mode), but warning
instead of failing on an op without a deterministic implementation. Each run's uint8 images, step counts and stop
reasons are compared with the first run of its mode; each run is timed (the first of a mode also
meets every batch shape of the tail for the first time, so the median of the later runs is the
steady rate). The ops torch warns have no deterministic implementation are listed: those stay
non-deterministic even in that mode.

    python benchmarks/bench_determinism.py --device cuda --json determinism_gpu.json
    python benchmarks/bench_determinism.py --device cpu --images 16 --budget 5 --real-images 0   # quick look

On a CPU both modes are expected to be identical run to run; the question is the GPU, where
cuDNN's fastest convolution backward kernels accumulate with atomics.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS handle (the default runs come first): deterministic matmuls need it

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_build import Outcome, Suite, compare, device_name, load_demo, load_real, run_engine, sync  # noqa: E402

from builder.build import determinism  # noqa: E402


def timed_outcomes(suite: Suite, count: int, batch: int, device: str) -> tuple[float, list[Outcome]]:
    sync(device)
    started = time.perf_counter()
    outcomes = run_engine(suite, count, batch)
    sync(device)
    return time.perf_counter() - started, outcomes


def runs_in_mode(suite: Suite, count: int, batch: int, device: str, runs: int, deterministic: bool) -> dict[str, Any]:
    """``runs`` engine runs in one mode; each compared with the mode's first."""
    with determinism.mode(deterministic, warn_only=True), warnings.catch_warnings(record=True) as caught:  # as run --deterministic, but warning
        warnings.simplefilter("always")
        pairs = [timed_outcomes(suite, count, batch, device) for _ in range(runs)]
    timings, outputs = [t for t, _ in pairs], [o for _, o in pairs]
    unsupported = sorted({str(w.message).split(" does not have a deterministic")[0] for w in caught
                          if "does not have a deterministic implementation" in str(w.message)})
    against_first = [compare(other, outputs[0]) for other in outputs[1:]]
    steady = statistics.median(timings[1:]) if len(timings) > 1 else timings[0]
    return {
        "deterministic": deterministic,
        "seconds": list(timings),
        "steady_images_per_s": count / steady,
        "runs_identical_to_first": sum(c["all_equal"] for c in against_first),
        "runs_compared": len(against_first),
        "samples_differing": [c["samples"] - c["equal_samples"] for c in against_first],
        "steps_differing": [c["samples"] - c["steps_equal"] for c in against_first],
        "max_abs_pixel_difference": [c["max_abs_pixel_difference"] for c in against_first],
        "ops_without_deterministic_implementation": unsupported,
    }


def measure(name: str, load: Callable[[], Suite], count: int, device: str, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(0)
    suite = load()
    count, batch = min(count, len(suite.labels)), min(suite.batch_size, count)
    figures: dict[str, Any] = {"images": count, "batch_size": batch, "budget": suite.config.budget, "about": suite.about}
    for key, deterministic in (("default", False), ("deterministic", True)):
        row = figures[key] = runs_in_mode(suite, count, batch, device, runs, deterministic)
        log(f"{name} {key}: {row['runs_identical_to_first']}/{row['runs_compared']} runs identical to the first; "
            f"samples differing {row['samples_differing']}, steps differing {row['steps_differing']}, "
            f"max pixel difference {row['max_abs_pixel_difference']}; {row['steady_images_per_s']:.3g} images/s "
            f"(runs {', '.join(f'{s:.2f}' for s in row['seconds'])} s)")
        if row["ops_without_deterministic_implementation"]:
            log(f"{name} {key}: no deterministic implementation: {'; '.join(row['ops_without_deterministic_implementation'])}")
    figures["determinism_cost"] = figures["default"]["steady_images_per_s"] / figures["deterministic"]["steady_images_per_s"] - 1
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=150, help="digits-demo images (one batch of the recipe's 150)")
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--real-images", type=int, default=8, help="real-size random-weight images (0: skip)")
    parser.add_argument("--real-budget", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    began = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {text}", file=sys.stderr, flush=True)

    settings = {"device": args.device, "seed": 0, "demo_model": "convnext", "demo_batch_size": 150,
                "real_model": "convnext_tiny", "real_size": 256, "real_batch_size": max(1, args.real_images)}
    report: dict[str, Any] = {"torch": torch.__version__, "device": args.device, "device_name": device_name(args.device),
                              "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
                              "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"], "results": {}}
    suites = [("digits-demo", lambda: load_demo(settings, args.images, args.budget), args.images)]
    if args.real_images:
        suites.append(("real-size", lambda: load_real(settings, args.real_images, args.real_budget), args.real_images))
    for name, load, count in suites:
        report["results"][name] = measure(name, load, count, args.device, args.runs, log)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    log(f"done on {report['device_name']}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
