"""How fast a worker encodes and writes its shards, against how fast its engine makes samples.

A build's writer must keep up with its engine, or the engine waits (the writer takes at most
two shards of backlog). Per sample a build encodes the perturbed image for each config and the
original once per work unit (PNG, or lossless WebP with ``output.image_encoding: webp``), then
writes each config's Parquet and tar shards. This script times exactly that path, through the
build's own encoder and writers, on images of a chosen size that compress like photographs
(smooth shapes plus sensor-like noise), for 1 to N encoding threads:

    python benchmarks/bench_write.py                         # 256 px, PNG and WebP, 1 and all threads
    python benchmarks/bench_write.py --size 224 --images 64 --configs 3 --json bench_write.json

It prints samples/s per format and thread count, and how many of those threads one GPU engine
needs at a given rate (``--engine-rate``, samples/s; the default is the one-H100 figure of
``benchmarks/README.md``, 5.15 images/s, bf16 with a compiled decoder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from builder.build.pipeline import ImageEncoder
from builder.writers import WRITERS, OutputSample, ShardSchema

CLASSES = tuple(f"class{i}" for i in range(10))


def photo_like(count: int, size: int, seed: int) -> np.ndarray:
    """uint8 (count, size, size, 3): blurred colour blobs plus noise, which PNG compresses to
    about 1.9 bytes a pixel at 256 px, as it does a photograph (pure noise: 3; a flat colour: 0.01)."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        canvas = np.zeros((size, size, 3))
        for _ in range(6):
            cy, cx, radius = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.1, 0.4)]
            weight = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
            canvas += weight[..., None] * rng.uniform(0, 255, 3)
        canvas = canvas / max(canvas.max(), 1) * 220 + rng.normal(0, 6, canvas.shape)
        images[i] = np.clip(canvas, 0, 255).astype(np.uint8)
    return images


def record(index: int, config: str) -> dict[str, Any]:
    return {"key": f"{index:08d}", "label": index % len(CLASSES), "class_name": CLASSES[index % len(CLASSES)],
            "source_id": f"src/{index}", "reference_model": config, "perturbed": True, "steps": 12, "stop_reason": "rejected",
            "oracle_prob": 0.5, "pred_before": 1, "loss_before": 0.1, "pred_after": 2, "loss_after": 2.0}


def write_unit(encoder: ImageEncoder, originals: np.ndarray, perturbed: np.ndarray, configs: int, out: Path, fmt: str) -> dict[str, float]:
    """One work unit as the runner writes it: originals encoded once, then per config the
    perturbed images encoded and every format's shard written; seconds per part."""
    schema = ShardSchema(CLASSES, fmt, keep_originals=True)
    started = time.perf_counter()
    original_bytes = encoder.encode(originals)
    parts = {"encode_originals": time.perf_counter() - started, "encode_perturbed": 0.0, "write_shards": 0.0}
    for config in range(configs):
        started = time.perf_counter()
        images = encoder.encode(perturbed)
        parts["encode_perturbed"] += time.perf_counter() - started
        samples = [OutputSample(f"{i:08d}", images[i], original_bytes[i], record(i, f"model{config}")) for i in range(len(images))]
        started = time.perf_counter()
        for name in ("parquet", "webdataset"):
            writer = WRITERS.get(name)()
            writer.write(out / f"model{config}{writer.suffix}", samples=samples, schema=schema)
        parts["write_shards"] += time.perf_counter() - started
    return parts


def measure(fmt: str, threads: int, originals: np.ndarray, perturbed: np.ndarray, configs: int, repeats: int) -> dict[str, Any]:
    encoder = ImageEncoder(fmt, threads)
    try:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            write_unit(encoder, originals[:2], perturbed[:2], 1, Path(tmp), fmt)  # warm-up
            for _ in range(repeats):
                runs.append(write_unit(encoder, originals, perturbed, configs, Path(tmp), fmt))
    finally:
        encoder.close()
    seconds = statistics.median(sum(run.values()) for run in runs)
    best = min(runs, key=lambda run: sum(run.values()))
    samples = len(perturbed) * configs
    return {"format": fmt, "threads": threads, "samples": samples, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 2), "parts_s": {key: round(value, 3) for key, value in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=32, help="samples in the work unit")
    parser.add_argument("--configs", type=int, default=1, help="reference models (configs) sharing the unit's originals")
    parser.add_argument("--formats", nargs="+", default=["png", "webp"], choices=["png", "webp"])
    parser.add_argument("--threads", nargs="+", type=int, default=None, help="encoder thread counts (default: 1 and all cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine-rate", type=float, default=5.15, help="samples/s of one GPU's engine to compare with")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or sorted({1, cores})
    originals = photo_like(args.images, args.size, args.seed)
    perturbed = np.clip(originals.astype(np.int16) + np.random.default_rng(args.seed + 1).integers(-3, 4, originals.shape), 0, 255).astype(np.uint8)
    rows = [measure(fmt, count, originals, perturbed, args.configs, args.repeats) for fmt in args.formats for count in threads]
    print(f"bench_write: {args.images} samples of {args.size} px, {args.configs} config(s), originals kept, Parquet + tar; {cores} cores")
    print(f"{'format':<7}{'threads':>8}{'samples/s':>11}{'encode originals s':>20}{'encode perturbed s':>20}{'write shards s':>16}{'cores per GPU':>15}")
    for row in rows:
        per_sample_cpu = row["seconds"] * row["threads"] / row["samples"]  # thread-seconds a sample costs, an upper bound
        row["threads_needed_at_engine_rate"] = round(per_sample_cpu * args.engine_rate, 2)
        parts = row["parts_s"]
        print(f"{row['format']:<7}{row['threads']:>8}{row['samples_per_s']:>11}{parts['encode_originals']:>20}"
              f"{parts['encode_perturbed']:>20}{parts['write_shards']:>16}{row['threads_needed_at_engine_rate']:>15}")
    print(f"cores per GPU: encoding threads busy at {args.engine_rate} samples/s per GPU (threads x seconds per sample x rate; an upper bound)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cores": cores, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
