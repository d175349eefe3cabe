"""benchmarks/bench_build.py and bench_modes.py are scripts, not tests: these keep them runnable
on tiny sizes and check what they must never get wrong (engine and per-image loop agree in
float64; every figure they print is there). No timing is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_build.py"
TINY = {"--demo-images": 6, "--demo-batch-size": 3, "--demo-budget": 2, "--demo-per-image": 2, "--demo-float64": 2,
        "--demo-float64-budget": 2, "--demo-rss-n": 2, "--demo-rss-budget": 1, "--demo-reps": 1, "--demo-repeats": 1,
        "--demo-warmup": 0}


@pytest.mark.slow
def test_bench_build_demo_runs_and_reports_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    sizes = [str(part) for pair in TINY.items() for part in pair]
    done = subprocess.run([sys.executable, str(SCRIPT), "--only", "demo", *sizes, "--modes", "bf16", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    demo = report["results"]["digits-demo"]
    assert demo["equality_float64"]["all_equal"] and demo["equality_float64"]["samples"] == 2
    assert demo["engine"]["images"] == 6 and demo["per_image"]["images"] == 2 and demo["speedup"]["images_per_s"] > 0
    flops = demo["flops_per_image_step"]
    assert set(flops) == {"decoder_fwd_bwd", "reference_fwd_bwd", "oracle_fwd"} and all(value > 0 for value in flops.values())
    assert all(rate > 0 for rate in demo["flop_rates"].values()) and report["matmul_flops_per_s"]["fp32"] > 0
    [mode] = demo["modes"]
    assert mode["mode"] == "bf16" and mode["flops_per_image_step"] == pytest.approx(sum(flops.values()))
    assert demo["rss"]["4N"]["count"] == 4 * demo["rss"]["N"]["count"]
    for text in ("engine / per-image =", "GFLOP per image-step", "peak RSS 4N/N", "bf16: first call"):
        assert text in done.stdout, text


@pytest.mark.slow
def test_bench_modes_layout_and_refill_run_on_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "modes.json"
    script = SCRIPT.with_name("bench_modes.py")
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--only", "layout", "refill", "--layout-on", "demo",
                           "--refill-on", "demo", "--demo-images", "8", "--demo-batch-size", "4", "--demo-budget", "2",
                           "--layout-rounds", "1", "--no-compile", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    [layout] = report["layout"]
    assert layout["components"] == "demo" and layout["batch_size"] == 4
    for precision in ("fp32", "bf16"):
        figures = layout[precision]
        assert len(figures["channels_first_s"]) == len(figures["channels_last_s"]) == 1 and figures["channels_last_speedup"] > 0
    [refill] = report["refill"]
    assert refill["images"] == 8 and refill["batch_size"] == 4 and refill["gain"] > 0
    assert "layout demo bf16" in done.stdout and "refill demo" in done.stdout
