"""The engine's execution modes measured: precision (fp32, bf16), ``torch.compile`` of the
decoder, and slot refill, each on and off, in one run on the same components, images and seed.

Sections (each writes its figures into the JSON as soon as it ends, so a run cut short keeps
what it measured):

- **modes**: real-size random-weight components (VQGAN f16-16384 at 256 px, CLIP ViT-B/32 over
  1000 prompts that runs in full and accepts every step, a timm ConvNeXt; see
  ``build_throughput.components``) at the full budget: images/s, seconds per image-step and
  peak GPU memory for fp32 and bf16, eager and compiled. Compilation is timed apart (a first
  call at the same batch shape), then the timed run;
- **drift**: how far bf16 moves the benchmark against fp32. On the digits demo (its trained
  components, all test digits, the recipe's budget) for each reference model: the share of
  samples whose step count differs, whose accept decision differs (perturbed flag and stop
  reason), and SA, PA, FMR of each precision. On real-size random weights with a real CLIP
  verdict (labels are CLIP's own prediction on each reconstruction, so fp32 accepts it): the
  step and decision shares (FMR is undefined there: a random reference model has SA ~ 0);
- **refill**: half the samples stop at once (the oracle also rejects odd labels), on the demo's
  components and on the real-size ones: the engine with slots refilled against the engine
  before refill (one batch at a time, shrinking as samples stop); whether the outputs are
  equal is reported (they are in float64; in float32 and bf16 a GPU's kernels may differ by
  batch size);
- **layout**: the decoder's forward and backward to the latent at the engine's batch, with its
  weights and latent in channels-first (torch's default, what the engine uses) against
  ``channels_last``, alternating, on the demo's components and the real-size ones, in fp32 and
  bf16. The engine stays channels-first unless this measures a gain.

    python benchmarks/bench_modes.py --device cuda --json bench_modes_gpu.json   # < 8 min on an H100
    python benchmarks/bench_modes.py --device cpu --images 2 --batch-size 2 --budget 1 \
        --demo-budget 2 --demo-images 20 --refill-images 4 --no-compile   # a quick check here

The demo's components are read from ``$FMR_BUILDER_CACHE`` (trained there on first use).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from builder.config import PerturbationConfig
from builder.engine import CompiledDecoder, PerturbationResult, autocast_for, perturb_batch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_build import device_name, gpu_peak_mb, load_demo, reset_gpu_peak, sync  # noqa: E402
from build_throughput import components  # noqa: E402


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - started, result


def random_inputs(count: int, size: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    drawn = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=drawn).to(device)
    return images, torch.randint(0, 1000, (count,), generator=drawn).to(device)


def measure_modes(args: argparse.Namespace, parts: tuple[Any, Any, Any], compiled_too: bool, rows: list[dict[str, Any]],
                  saved: Callable[[], None]) -> None:
    """images/s, s per image-step and peak GPU memory of every (precision, compile) pair,
    appended to ``rows`` (``saved`` after each)."""
    generator, oracle, model = parts
    images, labels = random_inputs(args.images, args.size, args.seed, args.device)
    compiled = compiled_too
    decoder = CompiledDecoder(generator) if compiled else generator
    for precision in ("fp32", "bf16"):
        config = PerturbationConfig(budget=args.budget, precision=precision)
        warm = images[: args.batch_size]
        first, _ = timed(partial(perturb_batch, decoder, oracle, model, warm, labels[: len(warm)],
                                 config.model_copy(update={"budget": 1}), batch_size=args.batch_size), args.device)
        reset_gpu_peak(args.device)
        seconds, _ = timed(partial(perturb_batch, decoder, oracle, model, images, labels, config,
                                   batch_size=args.batch_size, keep_latents=False), args.device)
        image_steps = args.images * (1 + args.budget)
        rows.append({"precision": precision, "compile": compiled, "images": args.images, "batch_size": args.batch_size,
                     "budget": args.budget, "seconds": round(seconds, 3), "images_per_s": round(args.images / seconds, 3),
                     "s_per_image_step": round(seconds / image_steps, 6), "first_call_s": round(first, 2),
                     "peak_gpu_mb": gpu_peak_mb(args.device)})
        print(f"modes  {precision} compile={compiled!s:5}  {rows[-1]['images_per_s']:8.3f} images/s  "
              f"{rows[-1]['s_per_image_step'] * 1e3:8.3f} ms/image-step  first call {first:6.1f} s  "
              f"peak {rows[-1]['peak_gpu_mb']} MB", flush=True)
        saved()


def drift(fp32: PerturbationResult, bf16: PerturbationResult, labels: torch.Tensor) -> dict[str, Any]:
    """How bf16's outputs differ from fp32's, per sample, and the benchmark figures of each."""
    n = len(labels)
    decision = [a != b for a, b in zip(fp32.stop_reason, bf16.stop_reason, strict=True)]
    decision = [d or bool(x != y) for d, x, y in zip(decision, fp32.perturbed.tolist(), bf16.perturbed.tolist(), strict=True)]
    figures = {}
    for name, result in (("fp32", fp32), ("bf16", bf16)):
        sa = float((result.pred_before == labels).float().mean()) * 100
        pa = float((result.pred_after == labels).float().mean()) * 100
        figures[name] = {"sa": round(sa, 2), "pa": round(pa, 2), "fmr": round(pa / sa * 100, 2) if sa else None,
                         "mean_steps": round(float(result.steps.float().mean()), 3), "perturbed": round(float(result.perturbed.float().mean()) * 100, 2)}
    fmr_a, fmr_b = figures["fp32"]["fmr"], figures["bf16"]["fmr"]
    return {
        "samples": n,
        "steps_differ_share": round(float((fp32.steps != bf16.steps).float().mean()), 4),
        "decision_differ_share": round(sum(decision) / n, 4) if n else 0.0,
        "max_abs_step_difference": int((fp32.steps - bf16.steps).abs().max()) if n else 0,
        "fmr_difference": round(fmr_b - fmr_a, 2) if fmr_a is not None and fmr_b is not None else None,
        **figures,
    }


def measure_demo_drift(args: argparse.Namespace) -> dict[str, Any]:
    settings = {"device": args.device, "demo_batch_size": args.demo_batch_size}
    out = {}
    for name in args.demo_models:
        suite = load_demo({**settings, "demo_model": name}, args.demo_images, args.demo_budget)
        results = {}
        for precision in ("fp32", "bf16"):
            config = suite.config.model_copy(update={"precision": precision})
            seconds, results[precision] = timed(partial(perturb_batch, suite.generator, suite.oracle, suite.model, suite.images,
                                                        suite.labels, config, mask=suite.mask, batch_size=suite.batch_size), args.device)
            results[precision + "_seconds"] = round(seconds, 2)
        out[name] = {**drift(results["fp32"], results["bf16"], suite.labels),
                     "seconds": {"fp32": results["fp32_seconds"], "bf16": results["bf16_seconds"]}, "budget": args.demo_budget}
        row = out[name]
        print(f"drift  digits-demo {name}: steps differ {row['steps_differ_share']:.1%}, decisions differ {row['decision_differ_share']:.1%}, "
              f"FMR fp32 {row['fp32']['fmr']} bf16 {row['bf16']['fmr']}", flush=True)
    return out


class SelfLabelledClip:
    """The CLIP oracle's real verdict (argmax over the 1000 prompts equals the label)."""

    def __init__(self, clip: Any) -> None:
        self.clip = clip

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = self.clip.probabilities(images)
        return probabilities.argmax(dim=1) == labels, probabilities.gather(1, labels[:, None]).squeeze(1)


def measure_real_drift(args: argparse.Namespace, parts: tuple[Any, Any, Any]) -> dict[str, Any]:
    generator, accepting, model = parts
    oracle = SelfLabelledClip(accepting.clip)
    images, _ = random_inputs(args.drift_images, args.size, args.seed + 1, args.device)
    with torch.no_grad():
        reconstruction = torch.round(generator.decode(generator.encode(images.float() / 255)) * 255) / 255
        labels = oracle.clip.probabilities(reconstruction).argmax(dim=1)
    results = {precision: perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(budget=args.budget, precision=precision),
                                        batch_size=args.batch_size, keep_latents=False) for precision in ("fp32", "bf16")}
    row = drift(results["fp32"], results["bf16"], labels)
    row["note"] = "labels are CLIP's fp32 prediction on each reconstruction; the random reference model's SA/PA/FMR mean nothing"
    print(f"drift  real-size: steps differ {row['steps_differ_share']:.1%}, decisions differ {row['decision_differ_share']:.1%}, "
          f"mean steps fp32 {row['fp32']['mean_steps']} bf16 {row['bf16']['mean_steps']}", flush=True)
    return row


class OddLabelsRejected:
    """The wrapped oracle's verdict for even labels; odd labels rejected at once (after the
    oracle's forward pass, so they cost what a real rejection costs): half the samples stop at
    their reconstruction."""

    def __init__(self, oracle: Any) -> None:
        self.oracle = oracle

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        accepted, probability = self.oracle.judge(images, labels)
        return accepted & (labels % 2 == 0), probability


def refill_inputs(args: argparse.Namespace, which: str, parts: Optional[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any, torch.Tensor, torch.Tensor, PerturbationConfig, int]:
    """(generator, oracle, model, images, labels, config, batch size) of a refill comparison."""
    if which == "demo":
        suite = load_demo({"device": args.device, "demo_batch_size": args.demo_batch_size, "demo_model": args.demo_models[0]},
                          args.demo_images, args.demo_budget)
        return (suite.generator, OddLabelsRejected(suite.oracle), suite.model, suite.images, suite.labels,
                suite.config, suite.batch_size)
    if parts is None:
        raise SystemExit("refill on real-size components needs them loaded")
    generator, accepting, model = parts
    images, labels = random_inputs(args.refill_images, args.size, args.seed + 2, args.device)
    config = PerturbationConfig(budget=args.budget, precision=args.refill_precision)
    return generator, OddLabelsRejected(accepting), model, images, labels, config, args.batch_size


def measure_refill(args: argparse.Namespace, which: str, parts: Optional[tuple[Any, Any, Any]]) -> dict[str, Any]:
    """Half the samples stop at once: slots refilled against one batch at a time that shrinks as
    samples stop (the engine before refill), each timed twice, alternating, after a warm-up."""
    generator, oracle, model, images, labels, config, size = refill_inputs(args, which, parts)

    def shrinking() -> list[PerturbationResult]:
        return [perturb_batch(generator, oracle, model, images[i : i + size], labels[i : i + size], config, keep_latents=False)
                for i in range(0, len(labels), size)]

    def refilled() -> PerturbationResult:
        return perturb_batch(generator, oracle, model, images, labels, config, batch_size=size, keep_latents=False)

    warm = config.model_copy(update={"budget": 1})
    perturb_batch(generator, oracle, model, images[:size], labels[:size], warm, keep_latents=False)
    times: dict[str, list[float]] = {"shrinking": [], "refilled": []}
    outputs: dict[str, Any] = {}
    for _ in range(2):
        for name, run in (("shrinking", shrinking), ("refilled", refilled)):
            seconds, outputs[name] = timed(run, args.device)
            times[name].append(round(seconds, 3))
    old, new = outputs["shrinking"], outputs["refilled"]
    equal = torch.equal(torch.cat([r.steps for r in old]), new.steps) and torch.equal(torch.cat([r.images for r in old]), new.images)
    best_old, best_new = min(times["shrinking"]), min(times["refilled"])
    retries = torch.cuda.memory_stats().get("num_alloc_retries") if args.device.startswith("cuda") else None
    row = {"components": which, "images": len(labels), "batch_size": size, "budget": config.budget, "precision": config.precision,
           "accepted_share": round(float(new.perturbed.float().mean()), 3), "shrinking_s": times["shrinking"], "refilled_s": times["refilled"],
           "gain": round(best_old / best_new, 3), "outputs_equal": equal, "cuda_alloc_retries": retries}
    print(f"refill {which}: half stop at once: shrinking {best_old:.2f} s, refilled {best_new:.2f} s, gain {row['gain']:.2f}x, "
          f"outputs equal {equal}, alloc retries {retries}", flush=True)
    return row


def generator_modules(generator: Any) -> list[torch.nn.Module]:
    """The torch modules a generator holds (its attributes), whose memory format ``layout`` sets."""
    held = getattr(generator, "generator", generator)  # a CompiledDecoder wraps one
    return [value for value in vars(held).values() if isinstance(value, torch.nn.Module)]


def measure_layout(args: argparse.Namespace, which: str, parts: Optional[tuple[Any, Any, Any]]) -> dict[str, Any]:
    """Decoder forward + backward to the latent, channels-first against channels_last, in rounds
    that alternate the two (each round converts the weights and the latent), per precision."""
    if which == "demo":
        suite = load_demo({"device": args.device, "demo_batch_size": args.demo_batch_size, "demo_model": args.demo_models[0]},
                          args.demo_batch_size, 1)
        generator, images = suite.generator, suite.images
    elif parts is None:
        raise SystemExit("layout on real-size components needs them loaded")
    else:
        generator, images = parts[0], random_inputs(args.batch_size, args.size, args.seed + 3, args.device)[0]
    with torch.no_grad():
        latent = generator.encode(images.float() / 255)
    formats = {"channels_first": torch.contiguous_format, "channels_last": torch.channels_last}

    def decode_backward(probe_from: torch.Tensor, precision: str) -> None:
        probe = probe_from.detach().requires_grad_(True)
        with torch.enable_grad(), autocast_for(precision, probe.device):
            decoded = generator.decode(probe)
        torch.autograd.backward(decoded, grad_tensors=torch.ones_like(decoded), inputs=[probe])

    row: dict[str, Any] = {"components": which, "batch_size": len(latent)}
    for precision in ("fp32", "bf16"):
        times: dict[str, list[float]] = {name: [] for name in formats}
        for _ in range(args.layout_rounds):
            for name, memory_format in formats.items():
                for module in generator_modules(generator):
                    module.to(memory_format=memory_format)
                probe = latent.contiguous(memory_format=memory_format)
                decode_backward(probe, precision)  # the first call after converting: reorders, autotuning
                times[name].append(timed(partial(decode_backward, probe, precision), args.device)[0])
        for module in generator_modules(generator):
            module.to(memory_format=torch.contiguous_format)
        best = {name: min(values) for name, values in times.items()}
        row[precision] = {**{f"{name}_s": [round(t, 4) for t in values] for name, values in times.items()},
                          "channels_last_speedup": round(best["channels_first"] / best["channels_last"], 3)}
        print(f"layout {which} {precision}: decoder fwd+bwd at batch {len(latent)}: channels-first {best['channels_first']:.4f} s, "
              f"channels_last {best['channels_last']:.4f} s ({row[precision]['channels_last_speedup']:.2f}x)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="convnext_tiny", help="timm model of the real-size reference")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--drift-images", type=int, default=32)
    parser.add_argument("--demo-images", type=int, default=450)
    parser.add_argument("--demo-batch-size", type=int, default=150)
    parser.add_argument("--demo-budget", type=int, default=50)
    parser.add_argument("--demo-models", nargs="+", default=["convnext", "vit"])
    parser.add_argument("--refill-images", type=int, default=64)
    parser.add_argument("--refill-precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--refill-on", nargs="+", default=["demo", "real"], choices=["demo", "real"])
    parser.add_argument("--layout-rounds", type=int, default=3)
    parser.add_argument("--layout-on", nargs="+", default=["demo", "real"], choices=["demo", "real"])
    parser.add_argument("--only", nargs="+", default=["demo", "refill", "drift", "modes", "layout"],
                        choices=["demo", "refill", "drift", "modes", "layout"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    results: dict[str, Any] = {"device": device_name(args.device), "torch": torch.__version__, "args": vars(args),
                               "tf32": {"cudnn_conv": torch.backends.cudnn.allow_tf32, "cuda_matmul": torch.backends.cuda.matmul.allow_tf32}}

    def save(key: str, value: Any) -> None:
        results[key] = value
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    started = time.perf_counter()
    parts: Optional[tuple[Any, Any, Any]] = None
    if ({"drift", "modes"} & set(args.only) or ("refill" in args.only and "real" in args.refill_on)
            or ("layout" in args.only and "real" in args.layout_on)):
        parts = components(args.model, args.device, args.seed)
    rows: list[dict[str, Any]] = []
    # the most wanted figures first: a run cut short by its time limit keeps them
    for compiled in [False, True] if args.compile else [False]:
        if "modes" in args.only and parts is not None:
            try:
                measure_modes(args, parts, compiled, rows, lambda: save("modes", rows))
            except Exception as error:  # a compile failure on this machine is a finding, not a crash
                save("modes_error", f"{type(error).__name__}: {error}"[:2000])
                print(f"modes failed: {type(error).__name__}: {str(error)[:500]}", flush=True)
        if compiled:
            break
        if "demo" in args.only:
            save("demo_drift", measure_demo_drift(args))
        if "refill" in args.only:
            save("refill", [measure_refill(args, which, parts) for which in args.refill_on])
        if "drift" in args.only and parts is not None:
            save("real_drift", measure_real_drift(args, parts))
        if "layout" in args.only:
            save("layout", [measure_layout(args, which, parts) for which in args.layout_on])
    save("total_s", round(time.perf_counter() - started, 1))
    print(f"done in {results['total_s']} s on {results['device']}")


if __name__ == "__main__":
    main()
