"""Scoring throughput: `score` end to end versus the model's bare forward time on the same images.

The target is score time <= 1.25 x bare forward time: decoding runs in worker processes
while the model works. Usage:

    python benchmarks/score_throughput.py BENCHMARK_DIR --model ref:vit [--workers 2] [--batch-size 64]
    python benchmarks/score_throughput.py --synthetic 256 --size 224 --model timm:convnext_tiny.fb_in1k

``--synthetic N`` writes a throw-away benchmark of N random images at ``--size`` px (10 classes)
and scores a random-weight model of the real size on it.
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


def synthetic_benchmark(root: Path, count: int, size: int) -> Path:
    """A benchmark dir of random images, written with the real writers and a minimal manifest."""
    from builder.fileio import sha256_file, write_json_atomic
    from builder.images import encode_image
    from builder.writers import WRITERS, OutputSample, ShardSchema

    rng = np.random.default_rng(0)
    names = tuple(f"class{i}" for i in range(10))
    schema = ShardSchema(names, "png", True)
    samples = []
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        record = {"key": f"{index:08d}", "label": int(index % 10), "class_name": names[index % 10], "source_id": str(index),
                  "reference_model": "none", "perturbed": True, "steps": 1, "stop_reason": "", "oracle_prob": 1.0,
                  "pred_before": 0, "loss_before": 0.0, "pred_after": 0, "loss_after": 0.0}
        samples.append(OutputSample(record["key"], encode_image(pixels, "png"), encode_image(pixels[::-1].copy(), "png"), record))
    shards = []
    for unit in range(4):
        path = root / "cfg" / f"test-{unit:05d}-of-00004.parquet"
        part = samples[unit::4]
        WRITERS.get("parquet")().write(path, part, schema)
        shards.append({"num_samples": len(part), "files": {"parquet": {"path": f"cfg/{path.name}", "sha256": sha256_file(path)}}})
    write_json_atomic(root / "manifest.json", {
        "format": "fmr-benchmark/1", "id": "synthetic", "class_names": list(names),
        "recipe": {"image_size": size, "source": {"kind": "sklearn-digits"}, "output": {"keep_originals": True}},
        "configs": {"cfg": {"reference_model": {"model": "none"}, "shards": shards}},
    })
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", nargs="?")
    parser.add_argument("--model", required=True)
    parser.add_argument("--synthetic", type=int, default=0, help="write N random images instead of reading BENCHMARK")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--config", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if args.synthetic:
        import tempfile

        args.benchmark = str(synthetic_benchmark(Path(tempfile.mkdtemp(prefix="fmr-throughput-")), args.synthetic, args.size))
        args.model = as_model_spec(args.model).model_copy(update={"pretrained": False, "num_classes": 10})
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
