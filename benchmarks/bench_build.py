"""The build engine measured: against a plain per-image Algorithm 1, against its compute floor,
and for memory, in one run on the same components, weights, images and seed.

For each set of components (``digits-demo``: the demo recipe's trained tiny components and its
test digits; ``real-size``: random weights of the paper's sizes, VQGAN f16-16384 at 256 px, CLIP
ViT-B/32 over 1000 prompts and a timm ConvNeXt, built by ``build_throughput.components``):

- **engine**: ``builder.engine.perturb_batch`` over the images in batches, as a build runs it;
- **per-image**: Algorithm 1 written plainly for one image at a time (below, from the paper and
  the engine's rules: one decode per step serves the oracle's check on the 8-bit grid and the
  next gradient; stop at the first rejection, at the budget or at a non-finite gradient; an image
  whose reconstruction the oracle rejects is kept as it is, not perturbed). Its outputs (uint8
  images, step counts, perturbed flags, stop reasons) are compared with the engine's, sample by
  sample, exactly; any difference is reported, never hidden. The digits also get the same check
  in float64 (where ``tests/test_engine.py`` asserts exact equality), so a float32 difference
  can be told apart from a difference of algorithm;
- **floor**: what a step cannot avoid, each part timed alone at the engine's batch size: decoder
  forward + backward to the latent, reference model forward + backward, oracle forward;
- **FLOP rates**: each floor part's FLOPs per image-step, counted once with torch's FLOP counter
  (matrix products and convolutions), over the time of the engine, its floor, the decoder's
  pass alone and the per-image loop, beside one large matrix product on the device (fp32 and
  bf16): how near the work runs to what the device does, which no ratio between two
  implementations shows;
- **whole build** (``--only build``): digits-demo built by ``build_benchmark`` in this process
  (one worker), its wall time against the engine's alone (``UnitRunner._perturb_unit``: the
  engine and its results to the host), with the time the reader thread spent reading and
  decoding and the writer thread encoding and writing, which the build overlaps with the
  engine: how much of that I/O stayed hidden, and what the units cost beyond the engine;
- **RSS**: the engine over N, then 4N images (in batches that divide N), each in a fresh
  subprocess, outputs kept as a unit's are until written: memory should not grow with N. The
  peak is the child's own VmHWM from /proc, reset after loading to give the engine's peak
  alone too. Not ``getrusage``: a child started from a big parent reports the parent's peak as
  its ru_maxrss (exec carries it over), and RUSAGE_CHILDREN then does too; the child's
  ru_maxrss is kept in the JSON to show it.

Timings: the engine and the per-image loop are timed ``*_repeats`` times (the outputs of every
repeat must be identical) and the floor's parts in rounds of ``*_reps`` reps, one round before
each timed run and one after the last, so that the load of a shared machine weighs on both
alike; each figure is the median, and the spread of the runs and reps is printed with the
load average: on a CPU shared with other work the figures move by a factor of two or more
from run to run (process CPU time, in the JSON, moves with them: idle threads spin). Warm-up
runs first at every batch size (``*_warmup``). On CUDA every timing is bracketed by ``torch.cuda.synchronize()``, and peak GPU
memory is reported.

A *step* below is an image-step: one decode of one image (with the oracle's verdict and, when
accepted, the gradient); a sample costs 1 + steps decodes (+1 for the step that was rejected).
``s/step`` is seconds per image-step; the floor's s/step is one batch-step of the floor divided
by the batch size, so the engine's overhead, ``time / (image-steps x floor) - 1``, also counts
its tail, where stopped samples leave the batch and the batch shrinks. The once-per-image work
(encode, the reference model's scores before and after, the final oracle verdict) is outside
the floor and so inside the overhead; it is timed too and shown in the JSON.

    python benchmarks/bench_build.py                       # CPU preset, < 10 min on 2 cores
    python benchmarks/bench_build.py --device cuda --json bench_build_gpu.json   # GPU preset
    python benchmarks/bench_build.py --device cuda --precision bf16 --compile     # a build's fast setting
    python benchmarks/bench_build.py --device cuda --modes bf16 fp32+compile bf16+compile --json bench_build_gpu.json
        # everything in fp32 eager, then the engine and its floor in the three other modes on the same
        # loaded components (images/s, s/step, peak GPU memory, compile time): the issue's GPU run
    python benchmarks/bench_build.py --only real --real-images 2 --real-budget 1   # quick look
    python benchmarks/bench_build.py --only build --demo-budget 2 --build-images 40   # a whole build, quickly

``--preset cpu|gpu`` (default from ``--device``) sets the sizes; each can be overridden. The
GPU preset runs the real-size components at the paper's budget (50 steps) on 64 images. No
network is needed: random weights for the real-size parts, and the demo's components are
trained locally on first use (cached in ``$FMR_BUILDER_CACHE`` or ~/.cache/fmr-builder).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.nn import functional as F

from builder.config import PerturbationConfig
from builder.engine import (
    STOP_BUDGET,
    STOP_NON_FINITE,
    STOP_NOT_ACCEPTED,
    STOP_REJECTED,
    CompiledDecoder,
    autocast_for,
    judging_in,
    perturb_batch,
)

HERE = Path(__file__).resolve().parent

#: sizes per preset; every key is also a command-line option (``demo_images`` -> ``--demo-images``)
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "demo_images": 150,  # the engine runs on these: one batch of the recipe's size
        "demo_batch_size": 150,
        "demo_budget": 10,  # reduced from the recipe's 50 to fit the CPU run in minutes
        "demo_per_image": 8,  # the per-image loop runs on the first this many
        "demo_float64": 4,  # engine vs per-image again in float64, on the first this many ...
        "demo_float64_budget": 3,  # ... at this budget (float64 convolutions are slow on a CPU)
        "demo_rss_n": 50,  # RSS: N and 4N (the digits test split has 450)
        "demo_rss_budget": 2,
        "demo_reps": 2,  # floor reps per round; a round before each timed run and one after the last
        "demo_repeats": 2,  # timed runs of the engine and of the per-image loop (the median counts)
        "demo_warmup": 1,
        "real_images": 2,
        "real_batch_size": 2,
        "real_budget": 2,
        "real_per_image": 1,
        "real_float64": 0,
        "real_float64_budget": 0,
        "real_rss_n": 1,
        "real_rss_budget": 0,  # the reconstruction's decode + verdict + gradient: a step's peak memory
        "real_reps": 1,
        "real_repeats": 1,
        "real_warmup": 0,  # a CPU needs none for these sizes; the floor's first round comes first anyway
        "build_images": 60,  # whole build: digits-demo on this many images (at demo_budget, demo_batch_size) ...
        "build_shard": 20,  # ... in units of this many, so that reads and writes can overlap the engine
    },
    "gpu": {
        "demo_images": 450,  # the whole test split, in three batches of the recipe's size
        "demo_batch_size": 150,
        "demo_budget": 50,
        "demo_per_image": 32,
        "demo_float64": 16,
        "demo_float64_budget": 50,
        "demo_rss_n": 100,
        "demo_rss_budget": 50,
        "demo_reps": 3,
        "demo_repeats": 2,
        "demo_warmup": 2,
        "real_images": 64,
        "real_batch_size": 32,  # ~1.2 GB of saved activations per image at 256 px: ~40 GB
        "real_budget": 50,  # the paper's
        "real_per_image": 16,
        "real_float64": 0,
        "real_float64_budget": 0,
        "real_rss_n": 16,
        "real_rss_budget": 50,
        "real_reps": 3,
        "real_repeats": 1,
        "real_warmup": 2,
        "build_images": 450,
        "build_shard": 90,
    },
}


# --------------------------------------------------------------------------- device helpers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_gpu_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb(device: str) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """(wall seconds, this process's CPU seconds, result) of one call of ``fn``."""
    sync(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return time.perf_counter() - started, time.process_time() - cpu_started, result


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of one large square matrix product on ``device`` in ``dtype`` (best of several):
    a scale for the FLOP rates below, not a peak (a convolution can beat it; on CUDA, fp32
    matrix products run without TF32 by torch's default while cuDNN convolutions use it)."""
    size = 4096 if device.startswith("cuda") else 2048
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    best = min(timed(lambda: a @ b, device)[0] for _ in range(10 if device.startswith("cuda") else 5))
    return 2 * size**3 / best


# --------------------------------------------------------------------------- components


@dataclass
class Suite:
    """One set of components with its images: what every measurement of a row group shares."""

    name: str
    generator: Any
    oracle: Any
    model: Any
    images: torch.Tensor  # uint8 (N, 3, H, W) on the device
    labels: torch.Tensor
    config: PerturbationConfig
    batch_size: int
    mask: Optional[torch.Tensor]
    about: dict[str, Any]


def load_demo(settings: dict[str, Any], count: int, budget: int) -> Suite:
    """digits-demo as a build loads it: its recipe, its cached (or now trained) components, and
    the first ``count`` test digits read through the build's own reader."""
    import numpy as np

    from builder.build import BuildOptions, UnitRunner, plan_build, read_unit
    from builder.build.units import WorkUnit
    from builder.paths import default_cache_dir
    from builder.recipes import load_recipe

    device = settings["device"]
    loaded = load_recipe("digits-demo")
    recipe = loaded.recipe
    with tempfile.TemporaryDirectory() as tmp:  # planning reads the (absent) output dir, writes nothing
        plan = plan_build(loaded, BuildOptions(out_dir=Path(tmp) / "out", device=device, cache_dir=default_cache_dir(), progress=False))
        runner = UnitRunner(plan.settings)
    parts = runner.components
    name = settings["demo_model"]
    if name not in parts.models:
        raise SystemExit(f"digits-demo has no reference model '{name}'; choices: {', '.join(parts.models)}")
    count = min(count, len(runner.source))
    inputs = read_unit(runner.source, WorkUnit(0, 0, count, 1), recipe.image_size, plan.settings.class_names)
    images = torch.from_numpy(np.ascontiguousarray(inputs.pixels)).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(inputs.labels).to(device)
    config = recipe.perturbation.model_copy(update={"budget": budget})
    generator = next(iter(parts.generators.values()))  # the demo has one
    return Suite(
        "digits-demo", generator, parts.oracle, parts.models[name], images, labels, config,
        settings["demo_batch_size"], getattr(generator, "mask", None),
        {"recipe": "digits-demo", "reference_model": name, "image_size": recipe.image_size,
         "weights_sha256": parts.fingerprints[name], "source_samples": len(runner.source)},
    )


def load_real(settings: dict[str, Any], count: int, budget: int, parts: Optional[tuple[Any, Any, Any]] = None) -> Suite:
    """Random weights of the paper's sizes, built by build_throughput.components (or ``parts``
    it built before): an oracle that runs CLIP in full and accepts, so every image pays for the
    whole budget; random images and labels."""
    device, seed, size = settings["device"], settings["seed"], settings["real_size"]
    if parts is None:
        sys.path.insert(0, str(HERE))
        from build_throughput import components

        parts = components(settings["real_model"], device, seed)
    generator, oracle, model = parts
    drawn = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=drawn).to(device)
    labels = torch.randint(0, 1000, (count,), generator=drawn).to(device)
    return Suite(
        "real-size", generator, oracle, model, images, labels, PerturbationConfig(budget=budget),
        settings["real_batch_size"], None,
        {"generator": "VQGAN f16-16384 (taming config), random weights", "oracle": "CLIP ViT-B-32, random weights, 1000 prompts, accepts every step",
         "reference_model": f"timm {settings['real_model']}, random weights", "image_size": size},
    )


def load_suite(which: str, settings: dict[str, Any], count: int, budget: int) -> Suite:
    suite = load_demo(settings, count, budget) if which == "demo" else load_real(settings, count, budget)
    return in_modes(suite, settings)


def in_modes(suite: Suite, settings: dict[str, Any]) -> Suite:
    """The suite as a build with ``--precision`` and ``--compile`` runs it: the engine, the
    per-image loop and the floor all see the same autocast and the same compiled decoder."""
    precision = settings.get("precision", "fp32")
    generator = CompiledDecoder(suite.generator) if settings.get("compile") else suite.generator
    return dataclasses.replace(suite, generator=generator, config=suite.config.model_copy(update={"precision": precision}),
                               about={**suite.about, "precision": precision, "compiled_decoder": bool(settings.get("compile"))})


def eager(generator: Any) -> Any:
    """The generator under a CompiledDecoder (the float64 check copies and casts it)."""
    return generator.generator if isinstance(generator, CompiledDecoder) else generator


def cast_copy(obj: Any, dtype: torch.dtype, depth: int = 0) -> Any:
    """A deep copy of a component with its modules and floating tensors in ``dtype``."""
    if depth == 0:
        obj = copy.deepcopy(obj)
    if isinstance(obj, torch.nn.Module):
        return obj.to(dtype)
    for key, value in list(vars(obj).items()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            setattr(obj, key, value.to(dtype))
        elif isinstance(value, torch.nn.Module):
            value.to(dtype)
        elif hasattr(value, "__dict__") and not isinstance(value, type) and depth < 3:
            cast_copy(value, dtype, depth + 1)
    return obj


# --------------------------------------------------------------------------- Algorithm 1, plain


@dataclass
class Outcome:
    """One sample's result, as the engine reports it."""

    image: torch.Tensor  # uint8 (3, H, W)
    steps: int
    perturbed: bool
    reason: str


def per_image_algorithm1(generator: Any, oracle: Any, model: Any, image: torch.Tensor, label: torch.Tensor,
                         config: PerturbationConfig, mask: Optional[torch.Tensor] = None,
                         dtype: torch.dtype = torch.float32) -> Outcome:
    """Algorithm 1 of Zhang et al. for one image, one decode per step.

    b = encode(x); x' = g(b) on the 8-bit grid. If the oracle rejects x', keep x (not perturbed).
    Else up to ``budget`` times: b <- b + step_size * sign(d loss(theta(g(b)), y) / d b), decode,
    and keep the new image only while the oracle still says y. The decode that the oracle judges
    is the one the next gradient comes from (the gradient passes straight through the rounding).
    """
    x = image[None].to(dtype) / 255
    y = label.view(1)
    precision = config.precision
    oracle = judging_in(precision, oracle)

    def decode_judge_grad(latent: torch.Tensor) -> tuple[torch.Tensor, bool, Optional[torch.Tensor]]:
        latent = latent.detach().requires_grad_(True)
        with torch.enable_grad():
            with autocast_for(precision, latent.device):  # bf16: the components' passes, not the latent or the step
                decoded = generator.decode(latent).to(latent.dtype)
            on_grid = decoded + (torch.round(decoded * 255) / 255 - decoded).detach()
            accepted = bool(oracle.judge(on_grid.detach(), y)[0].item())
            if not accepted:
                return on_grid.detach(), False, None
            with autocast_for(precision, latent.device):
                logits = model(on_grid)
            loss = F.cross_entropy(logits.float() if logits.dtype == torch.bfloat16 else logits, y, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, latent)
        return on_grid.detach(), True, gradient

    with torch.no_grad():
        latent = generator.encode(x)
    current, accepted, gradient = decode_judge_grad(latent)
    if not accepted:
        return Outcome(image.cpu(), 0, False, STOP_NOT_ACCEPTED)
    steps, reason = 0, STOP_BUDGET
    for _ in range(config.budget):
        assert gradient is not None
        if not bool(torch.isfinite(gradient).all()):
            reason = STOP_NON_FINITE
            break
        if config.direction == "sign":
            direction = gradient.sign()
        elif config.direction == "l2":
            direction = gradient / gradient.flatten().norm().clamp_min(1e-12)
        else:
            direction = gradient
        if mask is not None:
            direction = direction * mask
        candidate = latent + config.step_size * direction
        decoded, accepted, next_gradient = decode_judge_grad(candidate)
        if not accepted:
            reason = STOP_REJECTED
            break
        latent, current, gradient, steps = candidate, decoded, next_gradient, steps + 1
    return Outcome(torch.round(current[0] * 255).to(torch.uint8).cpu(), steps, True, reason)


def image_steps(outcomes: list[Outcome]) -> int:
    """Decodes performed: the reconstruction, each accepted step, and the rejected one."""
    return sum(1 + o.steps + (o.reason == STOP_REJECTED) for o in outcomes)


# --------------------------------------------------------------------------- measurements


def run_engine(suite: Suite, count: int, batch_size: int, dtype: torch.dtype = torch.float32,
               parts: Optional[tuple[Any, Any, Any]] = None) -> list[Outcome]:
    generator, oracle, model = parts or (suite.generator, suite.oracle, suite.model)
    outcomes: list[Outcome] = []
    for start in range(0, count, batch_size):
        chunk = slice(start, min(count, start + batch_size))
        result = perturb_batch(generator, oracle, model, suite.images[chunk], suite.labels[chunk], suite.config,
                               mask=suite.mask, dtype=dtype)
        images, steps, perturbed = result.images.cpu(), result.steps.cpu().tolist(), result.perturbed.cpu().tolist()
        outcomes += [Outcome(images[i], steps[i], perturbed[i], result.stop_reason[i]) for i in range(len(steps))]
    return outcomes


def run_per_image(suite: Suite, count: int, dtype: torch.dtype = torch.float32,
                  parts: Optional[tuple[Any, Any, Any]] = None) -> list[Outcome]:
    generator, oracle, model = parts or (suite.generator, suite.oracle, suite.model)
    return [
        per_image_algorithm1(generator, oracle, model, suite.images[i], suite.labels[i], suite.config, suite.mask, dtype)
        for i in range(count)
    ]


class DecodeCounter:
    """A generator that counts its decodes; everything else is the generator's own."""

    def __init__(self, generator: Any) -> None:
        self.generator, self.decodes = generator, 0

    def __getattr__(self, name: str) -> Any:
        if name == "generator":
            raise AttributeError(name)
        return getattr(self.generator, name)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.generator.encode(images)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        self.decodes += 1
        return self.generator.decode(latent)


def host_syncs(suite: Suite, count: int, batch_size: int) -> Optional[dict[str, Any]]:
    """On CUDA, the synchronizing calls one engine run makes, by torch's sync debug mode, per
    decode: the design is one, the step's read-back of its decisions. None off CUDA."""
    if suite.images.device.type != "cuda":
        return None
    counter = DecodeCounter(suite.generator)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            perturb_batch(counter, suite.oracle, suite.model, suite.images[:count], suite.labels[:count], suite.config,
                          mask=suite.mask, batch_size=batch_size)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return {"syncs": syncs, "decodes": counter.decodes, "syncs_per_decode": syncs / max(1, counter.decodes)}


def compare(engine: list[Outcome], reference: list[Outcome]) -> dict[str, Any]:
    """Sample-by-sample, exact: uint8 images, step counts, perturbed flags, stop reasons."""
    rows = list(zip(engine, reference, strict=True))
    image_equal = [torch.equal(a.image, b.image) for a, b in rows]
    steps_equal = [a.steps == b.steps for a, b in rows]
    flags_equal = [a.perturbed == b.perturbed and a.reason == b.reason for a, b in rows]
    differ = [i for i, ok in enumerate(zip(image_equal, steps_equal, flags_equal, strict=True)) if not all(ok)]
    pixel = [int((a.image.int() - b.image.int()).abs().max()) for a, b in rows]
    return {
        "samples": len(rows),
        "all_equal": not differ,
        "equal_samples": len(rows) - len(differ),
        "images_equal": sum(image_equal),
        "steps_equal": sum(steps_equal),
        "perturbed_and_stop_reason_equal": sum(flags_equal),
        "max_abs_pixel_difference": max(pixel, default=0),
        "differing_samples": [
            {"index": i, "engine_steps": rows[i][0].steps, "per_image_steps": rows[i][1].steps,
             "engine_reason": rows[i][0].reason, "per_image_reason": rows[i][1].reason, "max_abs_pixel_difference": pixel[i]}
            for i in differ[:10]
        ],
    }


class Floor:
    """The unavoidable work of one step at a batch size, each part timed alone: decoder forward +
    backward to the latent, reference model forward + backward (to its input), oracle forward.
    Also timed, outside the floor: the three chained as one step (a check on the sum), and the
    once-per-image work (encode, the reference model's two scores, the final oracle verdict).
    Reps are taken in rounds around the runs they are compared with, so that a shared
    machine's load weighs on both alike; each figure is the median of its reps."""

    PARTS = ("decoder_fwd_bwd", "reference_fwd_bwd", "oracle_fwd")
    EXTRAS = ("chained", "once_per_image")

    def __init__(self, suite: Suite, batch_size: int) -> None:
        self.suite, self.device = suite, str(suite.images.device)
        self.count = min(batch_size, len(suite.labels))
        self.originals = suite.images[: self.count].float() / 255
        self.labels = suite.labels[: self.count]
        with torch.no_grad():
            self.latent = suite.generator.encode(self.originals)
            self.decoded = suite.generator.decode(self.latent)
        self.upstream = torch.rand_like(self.decoded)
        self.wall: dict[str, list[float]] = {name: [] for name in (*self.PARTS, *self.EXTRAS)}
        self.cpu: dict[str, list[float]] = {name: [] for name in (*self.PARTS, *self.EXTRAS)}

    def in_precision(self, part: Callable[[], None]) -> None:
        with autocast_for(self.suite.config.precision, self.latent.device):
            part()

    # the gradient to a fresh leaf only, as autograd.grad takes it: ``backward`` with ``inputs``,
    # which torch's FLOP counter can follow (it cannot follow ``autograd.grad``)
    def decoder_fwd_bwd(self, generator: Any = None) -> None:
        probe = self.latent.detach().requires_grad_(True)
        with torch.enable_grad():
            decoded = (generator or self.suite.generator).decode(probe)
            torch.autograd.backward(decoded, grad_tensors=self.upstream, inputs=[probe])

    def reference_fwd_bwd(self) -> None:
        probe = self.decoded.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(self.suite.model(probe).to(probe.dtype), self.labels, reduction="sum")
            torch.autograd.backward(loss, inputs=[probe])

    def oracle_fwd(self) -> None:
        self.suite.oracle.judge(self.decoded, self.labels)

    def chained(self) -> None:
        probe = self.latent.detach().requires_grad_(True)
        with torch.enable_grad():
            images = self.suite.generator.decode(probe).to(probe.dtype)  # as the engine: decoded images in the latent's dtype
            self.suite.oracle.judge(images.detach(), self.labels)
            logits = self.suite.model(images)
            torch.autograd.grad(F.cross_entropy(logits.to(probe.dtype), self.labels, reduction="sum"), probe)

    def once_per_image(self) -> None:
        with torch.no_grad():
            self.suite.model(self.originals)
            self.suite.generator.encode(self.originals)
            self.suite.model(self.decoded)
            self.suite.oracle.judge(self.decoded, self.labels)

    def flops_per_image_step(self) -> dict[str, float]:
        """Each part's floating-point operations per image, counted once by torch's FLOP counter
        (matrix products and convolutions, as in MFU figures; elementwise work and norms are not
        counted); the decoder eager, as a compiled one does the same operations."""
        from torch.utils.flop_counter import FlopCounterMode

        parts: tuple[Callable[[], None], ...] = (partial(self.decoder_fwd_bwd, eager(self.suite.generator)), self.reference_fwd_bwd,
                                                 self.oracle_fwd)
        counted = {}
        for name, part in zip(self.PARTS, parts, strict=True):
            with FlopCounterMode(display=False) as counter:
                self.in_precision(part)
            counted[name] = counter.get_total_flops() / self.count
        return counted

    def rep(self, extras: tuple[str, ...] = ()) -> None:
        """One timed round of the parts (and of ``extras``), each in the suite's precision."""
        for name in (*self.PARTS, *extras):
            wall, cpu, _ = timed(partial(self.in_precision, getattr(self, name)), self.device)
            self.wall[name].append(wall)
            self.cpu[name].append(cpu)

    def summary(self) -> dict[str, Any]:
        def per_step(times: dict[str, list[float]], pick: Callable[[list[float]], float]) -> float:
            return sum(pick(times[name]) for name in self.PARTS)

        median = {name: statistics.median(self.wall[name]) for name in self.PARTS}
        batch_seconds = sum(median.values())
        extra = {name: statistics.median(self.wall[name]) if self.wall[name] else None for name in self.EXTRAS}
        return {
            "batch_size": self.count,
            "reps": len(self.wall[self.PARTS[0]]),
            "seconds_per_batch_step": batch_seconds,
            "seconds_per_image_step": batch_seconds / self.count,
            "cpu_seconds_per_image_step": per_step(self.cpu, statistics.median) / self.count,
            "best_seconds_per_image_step": per_step(self.wall, min) / self.count,
            "parts_seconds_per_batch_step": median,
            "parts_share": {name: value / batch_seconds for name, value in median.items()},
            "chained_seconds_per_batch_step": extra["chained"],
            "once_per_image_seconds": None if extra["once_per_image"] is None else extra["once_per_image"] / self.count,
            "wall_times": self.wall,
            "cpu_times": self.cpu,
        }


def memory_status() -> dict[str, float]:
    """This process's current (VmRSS) and peak (VmHWM) resident set, MB, from /proc. Unlike
    getrusage's ru_maxrss, VmHWM is this process's own: a child spawned from a big parent
    reports the parent's peak in ru_maxrss (the exec inherits it), and the parent's
    RUSAGE_CHILDREN then shows it too."""
    figures = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    if "VmHWM" not in figures:  # not Linux: the portable figure
        figures = {"VmRSS": peak_rss_mb(), "VmHWM": peak_rss_mb()}
    return figures


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def save_parts(suite: Suite, path: Path) -> None:
    """The loaded components, pickled whole, for the RSS subprocesses: the same weights (and
    CLIP's text features) without building them again."""
    torch.save((suite.generator, suite.oracle, suite.model), path)


def rss_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load, run the engine over ``count`` images in batches, keep its
    outputs (as a unit's are kept until written); report this process's peak RSS, and the peak
    during the engine alone (VmHWM reset after loading)."""
    settings = spec["settings"]
    device = settings["device"]
    if spec.get("parts_file"):
        sys.path.insert(0, str(HERE))  # the pickled oracle's class lives in build_throughput
        parts = torch.load(spec["parts_file"], weights_only=False, map_location=device)
        suite = load_real(settings, spec["count"], spec["budget"], parts)
    else:
        suite = load_suite(spec["suite"], settings, spec["count"], spec["budget"])
    suite.batch_size = spec["batch_size"]
    loaded = memory_status()
    reset = reset_peak_rss()
    reset_gpu_peak(device)
    kept: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []
    started = time.perf_counter()
    for start in range(0, len(suite.labels), suite.batch_size):
        chunk = slice(start, start + suite.batch_size)
        result = perturb_batch(suite.generator, suite.oracle, suite.model, suite.images[chunk], suite.labels[chunk], suite.config, mask=suite.mask)
        kept.append((result.images.cpu(), result.steps.cpu(), list(result.stop_reason)))
    sync(device)
    seconds = time.perf_counter() - started
    after = memory_status()
    return {
        "count": len(suite.labels),
        "batch_size": suite.batch_size,
        "budget": suite.config.budget,
        "seconds": seconds,
        "image_steps": sum(int(n) + 1 + (r == STOP_REJECTED) for _, steps, reasons in kept for n, r in zip(steps.tolist(), reasons, strict=True)),
        "rss_after_load_mb": round(loaded["VmRSS"], 1),
        "peak_rss_loading_mb": round(loaded["VmHWM"], 1),
        "peak_rss_engine_mb": round(after["VmHWM"], 1) if reset else None,
        "peak_rss_mb": round(max(loaded["VmHWM"], after["VmHWM"]), 1),
        "ru_maxrss_mb": round(peak_rss_mb(), 1),
        "peak_gpu_mb": gpu_peak_mb(device),
        "kept_output_mb": round(sum(images.numel() for images, _, _ in kept) / 2**20, 2),
    }


def measure_rss(which: str, settings: dict[str, Any], n: int, batch_size: int, budget: int, parts_file: Optional[Path]) -> dict[str, Any]:
    """Peak RSS of builds of N and 4N images, each in its own subprocess, in batches of
    ``batch_size`` (which divides N, so that N and 4N differ only in the number of batches)."""
    runs: dict[str, Any] = {}
    for label, count in (("N", n), ("4N", 4 * n)):
        spec = {"suite": which, "count": count, "budget": budget, "batch_size": batch_size, "settings": settings,
                "parts_file": str(parts_file) if parts_file else None}
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the RSS subprocess for {which} {label}={count} failed:\n{done.stderr[-4000:]}")
        runs[label] = json.loads(done.stdout.strip().splitlines()[-1])
    runs["ratio_4N_to_N"] = runs["4N"]["peak_rss_mb"] / runs["N"]["peak_rss_mb"]
    if runs["N"]["peak_rss_engine_mb"] and runs["4N"]["peak_rss_engine_mb"]:
        runs["engine_ratio_4N_to_N"] = runs["4N"]["peak_rss_engine_mb"] / runs["N"]["peak_rss_engine_mb"]
    if runs["N"]["count"] * 4 != runs["4N"]["count"]:
        runs["note"] = f"the source has fewer than 4N samples: 4N ran on {runs['4N']['count']}"
    return runs


def timed_runs(run: Callable[[], list[Outcome]], around: Floor, extras: tuple[str, ...], *, repeats: int, reps: int,
               device: str) -> tuple[list[Outcome], dict[str, Any]]:
    """``run`` timed ``repeats`` times, with a round of ``reps`` floor reps before each and after the last."""
    walls, cpus, outputs = [], [], []
    peak_gpu = None
    for _ in range(repeats):
        for _ in range(reps):
            around.rep()
        reset_gpu_peak(device)
        wall, cpu, out = timed(run, device)
        walls.append(wall)
        cpus.append(cpu)
        outputs.append(out)
        peak_gpu = gpu_peak_mb(device)
    around.rep(extras)
    for _ in range(reps - 1):
        around.rep()
    first = outputs[0]
    repeatable = all(compare(first, other)["all_equal"] for other in outputs[1:])
    seconds, steps = statistics.median(walls), image_steps(first)
    return first, {"images": len(first), "seconds": seconds, "images_per_s": len(first) / seconds, "image_steps": steps,
                   "seconds_per_image_step": seconds / steps, "cpu_seconds_per_image_step": statistics.median(cpus) / steps,
                   "all_seconds": walls, "all_cpu_seconds": cpus, "repeats_identical": repeatable, "peak_gpu_mb": peak_gpu}


#: ``--modes``: precision, and whether the decoder is compiled
MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "fp32+compile": ("fp32", True), "bf16+compile": ("bf16", True)}


def measure_mode(base: Suite, mode: str, settings: dict[str, Any], batch: int, first: list[Outcome], flops: float,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """The engine and its floor again in ``mode``, on the components already loaded: images/s,
    seconds per image-step, peak GPU memory, the first call (compilation) timed apart, and how
    the outputs differ from the first mode's; ``flops`` per image-step, the same in every mode."""
    precision, compiled = MODES[mode]
    prefix = "demo" if base.name == "digits-demo" else "real"
    suite = in_modes(dataclasses.replace(base, generator=eager(base.generator), about=dict(base.about)),
                     {"precision": precision, "compile": compiled})
    warm = dataclasses.replace(suite, config=suite.config.model_copy(update={"budget": 0}))
    tail = max(1, batch // 2)  # a shorter batch, as at a unit's tail: a compiled decoder recompiles once for any size

    def first_calls() -> None:
        run_engine(warm, batch, batch)  # compiles at the batch's shape
        run_engine(warm, tail, tail)

    first_call, _, _ = timed(first_calls, settings["device"])
    for _ in range(max(0, settings[f"{prefix}_warmup"] - 1)):
        run_engine(warm, batch, batch)
    every_shape_once(suite, len(first), batch)
    floor = Floor(suite, batch)
    outcomes, row = timed_runs(partial(run_engine, suite, len(first), batch), floor, Floor.EXTRAS, repeats=settings[f"{prefix}_repeats"],
                               reps=settings[f"{prefix}_reps"], device=settings["device"])
    row.update(mode=mode, precision=precision, compiled_decoder=compiled, first_call_seconds=first_call,  # both first calls
               floor_seconds_per_image_step=floor.summary()["seconds_per_image_step"], against_first_mode=compare(outcomes, first))
    row["overhead"] = row["seconds_per_image_step"] / row["floor_seconds_per_image_step"] - 1
    row["flops_per_image_step"] = flops
    row["engine_flop_rate"] = row["flops_per_image_step"] / row["seconds_per_image_step"]
    log(f"{base.name}: {mode}: engine {row['images_per_s']:.3g} images/s, first call {first_call:.1f}s, overhead {row['overhead']:+.1%}")
    return row


def every_shape_once(suite: Suite, count: int, batch: int) -> None:
    """On CUDA, one untimed engine run over the images: each batch size of a shrinking tail costs
    a first-call setup the first time it is met (cuDNN's plans for that shape, the caching
    allocator's growth; on an H200, 2026-11-27: a first digits-demo
    run of 39 s against 2.1 s for the next, its tail passing through many sizes once), which a
    warm-up at the full batch alone leaves inside the first timed run. A build pays it once per
    worker and shape. Nothing on a CPU."""
    if suite.images.device.type == "cuda":
        run_engine(suite, count, batch)


def flop_rates(flops: dict[str, float], figures: dict[str, Any]) -> dict[str, float]:
    """FLOP/s the engine, the per-image loop and the floor sustain, and the decoder's pass alone
    at the engine's batch: how close the work runs to what the device does (``matmul_rate``)."""
    total, floor = sum(flops.values()), figures["floor"]
    decoder_seconds = floor["parts_seconds_per_batch_step"]["decoder_fwd_bwd"] / floor["batch_size"]
    return {"engine": total / figures["engine"]["seconds_per_image_step"],
            "per_image": total / figures["per_image"]["seconds_per_image_step"],
            "floor": total / floor["seconds_per_image_step"],
            "decoder_fwd_bwd": flops["decoder_fwd_bwd"] / decoder_seconds}


def measure_suite(which: str, settings: dict[str, Any], log: Callable[[str], None],
                  save: Callable[[dict[str, Any]], None] = lambda figures: None) -> dict[str, Any]:
    """One set of components measured; ``save`` gets the figures so far after each part, so that
    a run cut short (a lease's time limit) keeps what it measured."""
    prefix = "demo" if which == "demo" else "real"
    device, warmup, reps = settings["device"], settings[f"{prefix}_warmup"], settings[f"{prefix}_reps"]
    count, budget = settings[f"{prefix}_images"], settings[f"{prefix}_budget"]

    started = time.perf_counter()
    torch.manual_seed(settings["seed"])
    suite = load_suite(which, settings, count, budget)
    count, batch = len(suite.labels), min(suite.batch_size, len(suite.labels))
    per_image_count = min(settings[f"{prefix}_per_image"], count)
    log(f"{suite.name}: loaded in {time.perf_counter() - started:.1f}s; {count} images, batch {batch}, budget {budget}")
    figures: dict[str, Any] = {"components": suite.about, "images": count, "batch_size": batch, "budget": budget,
                               "step_size": suite.config.step_size, "direction": suite.config.direction,
                               "load_average_start": list(os.getloadavg())}

    # warm-up at the shapes each path will see (one decode + verdict + gradient at each batch size)
    warm_suite = copy.copy(suite)
    warm_suite.config = suite.config.model_copy(update={"budget": 0})
    for _ in range(warmup):
        run_engine(warm_suite, batch, batch)
        run_per_image(warm_suite, 1)
    every_shape_once(suite, count, batch)
    floor, floor_one = Floor(suite, batch), Floor(suite, 1)
    repeats = settings[f"{prefix}_repeats"]

    measured = partial(timed_runs, repeats=repeats, reps=reps, device=device)

    # the engine over all images, then the plain per-image loop on the first of them
    engine, figures["engine"] = measured(partial(run_engine, suite, count, batch), floor, Floor.EXTRAS)
    figures["engine"].update(steps_mean=sum(o.steps for o in engine) / count, perturbed=sum(o.perturbed for o in engine),
                             stop_reasons={r: sum(o.reason == r for o in engine) for r in sorted({o.reason for o in engine})})
    log(f"{suite.name}: engine {figures['engine']['images_per_s']:.3g} images/s (runs {figures['engine']['all_seconds']})")
    reference, figures["per_image"] = measured(partial(run_per_image, suite, per_image_count), floor_one, ("once_per_image",))
    steps = figures["per_image"]["image_steps"]
    figures["equality_float32"] = compare(engine[:per_image_count], reference)
    figures["speedup"] = {
        "images_per_s": figures["engine"]["images_per_s"] / figures["per_image"]["images_per_s"],
        "per_image_step": figures["per_image"]["seconds_per_image_step"] / figures["engine"]["seconds_per_image_step"],
        "note": (f"per-image ran on the first {per_image_count} of the {count} images ({steps} image-steps; the engine "
                 f"did {image_steps(engine[:per_image_count])} on them)" if per_image_count < count else "same images"),
    }
    log(f"{suite.name}: per-image {figures['per_image']['images_per_s']:.3g} images/s (runs {figures['per_image']['all_seconds']}); "
        f"outputs equal on {figures['equality_float32']['equal_samples']}/{per_image_count}")

    # the compute floor and the overheads above it
    figures["floor"], figures["floor_batch_1"] = floor.summary(), floor_one.summary()
    for key, ref in (("engine", figures["floor"]), ("per_image", figures["floor_batch_1"])):
        row = figures[key]
        row["floor_seconds_per_image_step"] = ref["seconds_per_image_step"]
        row["floor_seconds"] = row["image_steps"] * ref["seconds_per_image_step"]
        row["overhead"] = row["seconds"] / row["floor_seconds"] - 1
        row["overhead_cpu_time"] = row["cpu_seconds_per_image_step"] / ref["cpu_seconds_per_image_step"] - 1
        row["once_per_image_seconds"] = row["images"] * ref["once_per_image_seconds"]
        row["overhead_beyond_floor_and_once_per_image"] = row["seconds"] / (row["floor_seconds"] + row["once_per_image_seconds"]) - 1
    log(f"{suite.name}: floor {figures['floor']['seconds_per_image_step']:.3g} s/image-step at batch {batch}; "
        f"engine overhead {figures['engine']['overhead']:+.1%}")
    figures["flops_per_image_step"] = flops = floor.flops_per_image_step()
    figures["flop_rates"] = flop_rates(flops, figures)
    save(figures)

    figures["host_syncs"] = host_syncs(suite, min(count, batch), batch)
    if figures["host_syncs"] is not None:
        log(f"{suite.name}: {figures['host_syncs']['syncs_per_decode']:.2f} host-device syncs per decode")

    # the same algorithm in float64, where engine and per-image must agree exactly
    n64 = min(settings[f"{prefix}_float64"], count)
    if n64:
        parts64 = tuple(cast_copy(part, torch.float64) for part in (eager(suite.generator), suite.oracle, suite.model))
        suite64 = copy.copy(suite)  # float64, eager, no autocast: where engine and per-image must agree exactly
        suite64.config = suite.config.model_copy(update={"budget": min(budget, settings[f"{prefix}_float64_budget"]), "precision": "fp32"})
        figures["equality_float64"] = compare(run_engine(suite64, n64, n64, torch.float64, parts64),
                                              run_per_image(suite64, n64, torch.float64, parts64))
        figures["equality_float64"].update(engine_batch_size=n64, budget=suite64.config.budget)
        log(f"{suite.name}: float64 outputs equal on {figures['equality_float64']['equal_samples']}/{n64}")
        del parts64, suite64

    # the engine again in each further mode, on the same components and images
    figures["modes"] = []
    for mode in settings.get("modes") or ():
        figures["modes"].append(measure_mode(suite, mode, settings, batch, engine, sum(flops.values()), log))
        save(figures)

    # peak RSS of builds of N and 4N images, in subprocesses
    with tempfile.TemporaryDirectory() as tmp:
        parts_file = None
        if which == "real":  # its CLIP text features take minutes on a CPU: hand the built parts over
            parts_file = Path(tmp) / "parts.pt"
            save_parts(suite, parts_file)
        del suite, warm_suite, floor, floor_one, engine, reference
        rss_n = settings[f"{prefix}_rss_n"]
        rss_batch = max(d for d in range(1, min(batch, rss_n) + 1) if rss_n % d == 0)
        figures["rss"] = measure_rss(which, settings, rss_n, rss_batch, settings[f"{prefix}_rss_budget"], parts_file)
    rss = figures["rss"]
    log(f"{which}: peak RSS N {rss['N']['peak_rss_mb']:.0f} MB, 4N {rss['4N']['peak_rss_mb']:.0f} MB")
    figures["load_average_end"] = list(os.getloadavg())
    return figures


# --------------------------------------------------------------------------- a whole build


class Stopwatch:
    """Seconds spent inside wrapped functions, per name, summed over the threads that call them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return timed_call


def measure_whole_build(settings: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """digits-demo built whole, in this process: build, units, engine, reads, encoding, writes."""
    import builder.build.driver as driver
    import builder.build.pipeline as pipeline
    import builder.build.runner as runner
    from builder.build import BuildOptions, build_benchmark
    from builder.build.plan import Execution
    from builder.paths import default_cache_dir
    from builder.recipes import load_recipe

    budget, shard, count = settings["demo_budget"], settings["build_shard"], settings["build_images"]
    loaded = load_recipe("digits-demo", (f"perturbation.budget={budget}", f"output.samples_per_shard={shard}",
                                         f"perturbation.precision={settings.get('precision', 'fp32')}"))
    watch = Stopwatch()
    wrapped = {"units": (driver, "dispatch"), "engine": (runner.UnitRunner, "_perturb_unit"), "read": (runner, "read_unit"),
               "encode": (pipeline, "encode_image"), "write": (runner.UnitRunner, "_write_unit")}
    saved = {name: getattr(owner, attribute) for name, (owner, attribute) in wrapped.items()}
    try:
        for name, (owner, attribute) in wrapped.items():
            setattr(owner, attribute, watch.wrap(name, saved[name]))
        with tempfile.TemporaryDirectory() as tmp:
            options = BuildOptions(out_dir=Path(tmp) / "out", device=settings["device"], cache_dir=default_cache_dir(),
                                   batch_size=settings["demo_batch_size"], limit=count, progress=False,
                                   compile=bool(settings.get("compile")))
            wall, _, summary = timed(lambda: build_benchmark(loaded, options, Execution(workers=1)), settings["device"])
    finally:
        for name, (owner, attribute) in wrapped.items():
            setattr(owner, attribute, saved[name])
    t = {name: watch.seconds.get(name, 0.0) for name in wrapped}
    io = t["read"] + t["encode"] + t["write"]
    figures = {"images": count, "samples_per_shard": shard, "units": -(-count // shard), "budget": budget,
               "batch_size": settings["demo_batch_size"], "configs": len(loaded.recipe.reference_models),
               "build_seconds": wall, **{f"{name}_seconds": value for name, value in t.items()},
               "serial_estimate_seconds": t["engine"] + io,
               "io_hidden_share": (t["engine"] + io - t["units"]) / io if io else None,
               "units_over_engine": t["units"] / t["engine"] - 1 if t["engine"] else None}
    log(whole_build_line(figures))
    return figures


def whole_build_line(f: dict[str, Any]) -> str:
    hidden = "-" if f["io_hidden_share"] is None else f"{f['io_hidden_share']:.0%}"
    beyond = "-" if f["units_over_engine"] is None else f"{f['units_over_engine']:+.1%}"
    return (f"whole build (digits-demo, {f['images']} images in {f['units']} units x {f['configs']} configs, budget {f['budget']}, "
            f"batch {f['batch_size']}): {f['build_seconds']:.1f}s, of which units {f['units_seconds']:.1f}s; engine alone "
            f"{f['engine_seconds']:.1f}s; reader thread {f['read_seconds']:.1f}s, encoder threads {f['encode_seconds']:.1f}s, writer thread "
            f"writing {f['write_seconds']:.1f}s; waiting on all of that would take ~{f['serial_estimate_seconds']:.1f}s: "
            f"{hidden} of the I/O hidden, units {beyond} over the engine")


# --------------------------------------------------------------------------- report


def flop_rate(value: float) -> str:
    return f"{value / 1e12:.3g} TFLOP/s" if value >= 1e12 else f"{value / 1e9:.3g} GFLOP/s"


def flops_line(name: str, r: dict[str, Any], matmul: dict[str, float]) -> str:
    flops, rates = r["flops_per_image_step"], r["flop_rates"]
    total = sum(flops.values())
    shares = ", ".join(f"{part.split('_')[0]} {value / total:.0%}" for part, value in flops.items())
    scale = ", ".join(f"{flop_rate(value)} {dtype}" for dtype, value in matmul.items())
    return (f"{name}: {total / 1e9:.3g} GFLOP per image-step ({shares}; matrix products and convolutions); sustained: engine "
            f"{flop_rate(rates['engine'])}, its floor {flop_rate(rates['floor'])}, the decoder's pass alone "
            f"{flop_rate(rates['decoder_fwd_bwd'])}, per-image loop {flop_rate(rates['per_image'])}; one large matrix product "
            f"on this device: {scale}")


def table(results: dict[str, Any], device: str, matmul: dict[str, float]) -> str:
    head = ("components", "measurement", "images/s", "s/step", "floor s/step", "overhead %", "peak RSS MB")
    rows: list[tuple[str, ...]] = []

    def num(value: Optional[float], digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    for name, r in results.items():
        for key, label in (("engine", f"engine (batch {r['batch_size']}, {r['engine']['images']} img)"),
                           ("per_image", f"per-image (batch 1, {r['per_image']['images']} img)")):
            row = r[key]
            rows.append((name, label, num(row["images_per_s"]), num(row["seconds_per_image_step"]),
                         num(row["floor_seconds_per_image_step"]), f"{100 * row['overhead']:.1f}", "-"))
        for mode in r.get("modes", []):
            rows.append((name, f"engine {mode['mode']} (batch {r['batch_size']}, {mode['images']} img)", num(mode["images_per_s"]),
                         num(mode["seconds_per_image_step"]), num(mode["floor_seconds_per_image_step"]), f"{100 * mode['overhead']:.1f}", "-"))
        for label in ("N", "4N"):
            run = r["rss"][label]
            rows.append((name, f"build {label}={run['count']} (batch {run['batch_size']}, budget {run['budget']})",
                         num(run["count"] / run["seconds"]), num(run["seconds"] / run["image_steps"]), "-", "-",
                         f"{run['peak_rss_mb']:.0f}"))
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(cell).ljust(w) if i < 2 else str(cell).rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("s/step: seconds per image-step (one image's decode + oracle verdict + gradient); floor s/step: decoder "
                 "fwd+bwd + reference fwd+bwd + oracle fwd, each timed alone at the row's batch size, per image; overhead: "
                 "time / (image-steps x floor) - 1; each figure the median of its repeats")
    for name, r in results.items():
        e, s, eq = r["engine"], r["speedup"], r["equality_float32"]
        lines.append(f"{name}: engine / per-image = {s['images_per_s']:.1f}x images/s, {s['per_image_step']:.1f}x per image-step"
                     + ("" if s["note"] == "same images" else f" ({s['note']})"))
        verdict = "all equal (images, steps, perturbed, stop reasons)" if eq["all_equal"] else (
            f"MISMATCH in {eq['samples'] - eq['equal_samples']}: images equal {eq['images_equal']}/{eq['samples']} (max difference "
            f"{eq['max_abs_pixel_difference']} of 255), steps equal {eq['steps_equal']}/{eq['samples']}, perturbed and stop "
            f"reason equal {eq['perturbed_and_stop_reason_equal']}/{eq['samples']}")
        lines.append(f"{name}: outputs float32, engine vs per-image, {eq['samples']} sample(s): {verdict}")
        if "equality_float64" in r:
            eq64 = r["equality_float64"]
            lines.append(f"{name}: outputs float64 (batch {eq64['engine_batch_size']}, budget {eq64['budget']}), {eq64['samples']} sample(s): "
                         + ("all equal" if eq64["all_equal"] else f"MISMATCH: {eq64['samples'] - eq64['equal_samples']} differ"))
        f = r["floor"]
        shares = ", ".join(f"{k} {v:.0%}" for k, v in f["parts_share"].items())
        chained = f["chained_seconds_per_batch_step"] / f["batch_size"]
        lines.append(f"{name}: floor at batch {f['batch_size']}: {f['seconds_per_image_step']:.3g} s/image-step, median of {f['reps']} reps "
                     f"(each part at its best: {f['best_seconds_per_image_step']:.3g}; the three chained as one step: {chained:.3g}); parts: {shares}")
        lines.append(flops_line(name, r, matmul))
        spread = "; ".join(f"{label} runs {', '.join(f'{t:.3g}' for t in r[key]['all_seconds'])} s"
                           for key, label in (("engine", "engine"), ("per_image", "per-image")))
        reps = [sum(parts) / f["batch_size"] for parts in zip(*(f["wall_times"][part] for part in Floor.PARTS), strict=True)]
        lines.append(f"{name}: spread: {spread}; floor reps {min(reps):.3g} to {max(reps):.3g} s/image-step; "
                     f"load average {r['load_average_start'][0]:.1f} -> {r['load_average_end'][0]:.1f}")
        lines.append(f"{name}: engine {e['seconds']:.2f}s = {e['image_steps']} image-steps x floor {f['seconds_per_image_step']:.3g}s "
                     f"({e['floor_seconds']:.2f}s) + overhead {100 * e['overhead']:.1f}% "
                     f"[{100 * e['overhead_beyond_floor_and_once_per_image']:.1f}% beyond floor + once-per-image work "
                     f"{e['once_per_image_seconds']:.2f}s]")
        rss = r["rss"]
        engine_peaks = (f"; engine phase alone {rss['N']['peak_rss_engine_mb']:.0f} -> {rss['4N']['peak_rss_engine_mb']:.0f} MB, "
                        f"4N/N = {rss['engine_ratio_4N_to_N']:.3f}" if "engine_ratio_4N_to_N" in rss else "")
        lines.append(f"{name}: peak RSS 4N/N = {rss['ratio_4N_to_N']:.3f} ({rss['N']['peak_rss_mb']:.0f} -> {rss['4N']['peak_rss_mb']:.0f} MB; "
                     f"RSS after loading {rss['N']['rss_after_load_mb']:.0f} / {rss['4N']['rss_after_load_mb']:.0f} MB{engine_peaks})"
                     + (f"; peak GPU {rss['N']['peak_gpu_mb']:.0f} -> {rss['4N']['peak_gpu_mb']:.0f} MB" if device.startswith("cuda") else ""))
        if r.get("host_syncs"):
            h = r["host_syncs"]
            lines.append(f"{name}: host-device syncs (torch's sync debug mode): {h['syncs']} in {h['decodes']} decodes, "
                         f"{h['syncs_per_decode']:.2f} per decode (the design: 1, the step's read-back)")
        if device.startswith("cuda"):
            lines.append(f"{name}: peak GPU memory engine {e['peak_gpu_mb']:.0f} MB, per-image {r['per_image']['peak_gpu_mb']:.0f} MB")
        for mode in r.get("modes", []):
            against = mode["against_first_mode"]
            lines.append(f"{name}: {mode['mode']}: first call {mode['first_call_seconds']:.1f}s"
                         + f", sustains {flop_rate(mode['engine_flop_rate'])}"
                         + (f", peak GPU memory {mode['peak_gpu_mb']:.0f} MB" if mode["peak_gpu_mb"] is not None else "")
                         + f"; against the first mode, {against['samples'] - against['steps_equal']} of {against['samples']} sample(s) "
                         f"stop at another step, {against['samples'] - against['perturbed_and_stop_reason_equal']} decide otherwise")
    return "\n".join(lines)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    preset = args.preset or ("gpu" if args.device.startswith("cuda") else "cpu")
    settings = dict(PRESETS[preset])
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings.update(preset=preset, device=args.device, seed=args.seed, demo_model=args.demo_model,
                    real_model=args.real_model, real_size=args.real_size, precision=args.precision, compile=args.compile,
                    modes=args.modes or [])
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="sizes (default: gpu for cuda, else cpu)")
    parser.add_argument("--only", choices=["demo", "real", "build"], action="append",
                        help="run only these measurements (component sets, or a whole build)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-model", default="convnext", help="digits-demo reference model")
    parser.add_argument("--real-model", default="convnext_tiny", help="timm model of the real-size reference")
    parser.add_argument("--real-size", type=int, default=256)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="as a build's --precision: autocast for the components")
    parser.add_argument("--compile", action="store_true", help="as a build's --compile: the decoder through torch.compile")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=None,
                        help="after the full measurement (in --precision/--compile), the engine and its floor again in each of these modes, "
                             "on the same loaded components: images/s, s/step, peak GPU memory, compile time")
    for key, value in PRESETS["cpu"].items():
        parser.add_argument("--" + key.replace("_", "-"), type=type(value), default=None, help=f"preset cpu: {value}, gpu: {PRESETS['gpu'][key]}")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(rss_child(json.loads(args.child))), flush=True)
        return

    settings = settings_from(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    began = time.perf_counter()
    load_start = list(os.getloadavg())

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {text}", file=sys.stderr, flush=True)

    log(f"torch {torch.__version__}, {args.device} ({device_name(args.device)}), {torch.get_num_threads()} threads, preset {settings['preset']}")
    matmul = {"fp32": matmul_rate(args.device, torch.float32), "bf16": matmul_rate(args.device, torch.bfloat16)}
    log("one large matrix product: " + ", ".join(f"{flop_rate(value)} {dtype}" for dtype, value in matmul.items()))
    results: dict[str, Any] = {}
    whole_build = None

    def report_so_far(complete: bool) -> dict[str, Any]:
        return {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": args.device,
            "device_name": device_name(args.device),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": list(os.getloadavg()),
            "matmul_flops_per_s": matmul,
            "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
            "settings": settings,
            "results": results,
            "whole_build": whole_build,
            "wall_seconds": time.perf_counter() - began,
            "complete": complete,
        }

    def save_so_far() -> None:
        if args.json:
            write_text_atomic(Path(args.json), json.dumps(report_so_far(False), indent=2, default=float) + "\n")

    def save_part(key: str, figures: dict[str, Any]) -> None:
        results[key] = figures
        save_so_far()

    for which in args.only or ["demo", "real", "build"]:
        if which == "build":
            whole_build = measure_whole_build(settings, log)
            save_so_far()
            continue
        key = "digits-demo" if which == "demo" else "real-size"
        save_part(key, measure_suite(which, settings, log, partial(save_part, key)))
    report = report_so_far(True)
    print(f"\nbench_build on {report['device_name']} ({args.device}), torch {torch.__version__}, "
          f"{report['torch_threads']} threads, {os.cpu_count()} CPUs, preset {settings['preset']}, seed {settings['seed']}; "
          f"load average {load_start[0]:.1f} at the start, {report['load_average_end'][0]:.1f} at the end\n")
    if results:
        print(table(results, args.device, report["matmul_flops_per_s"]))
    if whole_build is not None:
        print(whole_build_line(whole_build))
    print(f"\nwall time {report['wall_seconds']:.0f}s")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=2, default=float) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """A report written whole or not at all: rewritten after every part, read while a run goes on."""
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    main()
