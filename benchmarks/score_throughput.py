"""Scoring throughput: `score` end to end versus the model's bare forward time on the same images.

The target is score time <= 1.25 x bare forward time: decoding runs in worker processes
while the model works. Usage:

    python benchmarks/score_throughput.py BENCHMARK_DIR --model ref:vit [--workers 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from builder.benchmark import open_benchmark
from builder.images import decode_image
from builder.paths import default_cache_dir
from builder.score import as_model_spec, load_model_for, reference_spec, score


def bare_forward_seconds(model, images: torch.Tensor, batch_size: int) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size].float() / 255)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark")
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    bench = open_benchmark(args.benchmark)
    config = bench.config(args.config)
    spec = as_model_spec(reference_spec(bench, args.model))
    model = load_model_for(bench, spec, "cpu", default_cache_dir(), Path.cwd())
    images, originals = [], []
    for part in bench.read_columns(config, ["image", "original_image"]):
        images += [decode_image(cell["bytes"]) for cell in part["image"]]
        originals += [decode_image(cell["bytes"]) for cell in part["original_image"]]
    both = torch.from_numpy(np.stack(images + originals)).permute(0, 3, 1, 2).contiguous()
    bare_forward_seconds(model, both[: args.batch_size], args.batch_size)  # warm-up
    bare = bare_forward_seconds(model, both, args.batch_size)
    started = time.perf_counter()
    score(bench, spec, config=config, workers=args.workers, batch_size=args.batch_size, bootstrap=0)
    scored = time.perf_counter() - started
    print(f"{len(images)} samples x 2 images: bare forward {bare:.2f} s, score {scored:.2f} s, ratio {scored / bare:.2f} (target <= 1.25)")


if __name__ == "__main__":
    main()
