"""Algorithm 1's cost per image with the paper's component sizes, on whatever device is here.

Random weights of the real architectures: VQGAN f16-16384 at 256 px (taming), CLIP ViT-B/32
(open_clip, 1000 prompts) as the oracle, and a timm reference model (ConvNeXt-T by default).
Random weights would make the oracle reject at once, so the timing oracle runs CLIP in full
and then accepts every step: each image pays for the whole (reduced) budget. The figure per
step is then extrapolated to the paper's budget of 50. ``--mask-keep`` adds a random sparse
mask keeping that share of latent dimensions (the paper keeps ~0.7% on ImageNet), to show its
effect on time.

    python benchmarks/build_throughput.py --images 2 --budget 3 --device cpu
    python benchmarks/build_throughput.py --images 32 --budget 5 --device cuda --batch-size 32

Writes a JSON line of figures to stdout (and --json PATH).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from typing import Any

import torch

from builder.checkpoints import BUILTIN_DIR
from builder.components.oracles import ClipZeroShotOracle
from builder.components.preprocess import PreprocessedClassifier, Preprocessing
from builder.components.vqgan import TamingVQGAN, VQGANGenerator, read_taming_config
from builder.config import PerturbationConfig
from builder.engine import perturb_batch


class AcceptingOracle:
    """Pays for a real CLIP forward, then accepts (random weights would reject everything)."""

    def __init__(self, clip: ClipZeroShotOracle) -> None:
        self.clip = clip

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = self.clip.probabilities(images)
        return torch.ones_like(labels, dtype=torch.bool), probabilities.gather(1, labels[:, None]).squeeze(1)


def components(model_name: str, device: str, seed: int) -> tuple[VQGANGenerator, AcceptingOracle, PreprocessedClassifier]:
    import open_clip
    import timm
    from timm.data import resolve_model_data_config

    torch.manual_seed(seed)
    params = read_taming_config(BUILTIN_DIR / "vqgan" / "vqgan_imagenet_f16_16384.yaml")
    generator = VQGANGenerator(TamingVQGAN(params).eval().requires_grad_(False).to(device), requantize=False)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    oracle = ClipZeroShotOracle(clip, open_clip.get_tokenizer("ViT-B-32"), [f"an image of class {i}" for i in range(1000)], device)
    net = timm.create_model(model_name, pretrained=False)
    data = resolve_model_data_config(net)
    preprocessing = Preprocessing(int(data["input_size"][-1]), str(data["interpolation"]), float(data["crop_pct"]), tuple(data["mean"]), tuple(data["std"]))
    model = PreprocessedClassifier(net, preprocessing, 1000, model_name).eval().requires_grad_(False).to(device)
    return generator, AcceptingOracle(oracle), model


def memory_estimate_mb(generator: VQGANGenerator, oracle: AcceptingOracle, model: PreprocessedClassifier, size: int, batch: int) -> dict[str, float]:
    """GPU memory for a batch, estimated on any device: the weights, plus the tensors autograd
    saves for one image's decode -> reference-model backward (the step's peak), times the batch."""
    from torch.nn import functional as F

    modules = [generator.model, oracle.clip.model, model]
    weights = sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
    weight_storages = {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weight_storages:  # weights are counted once, above
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    device = next(generator.model.parameters()).device
    latent = generator.encode(torch.rand(1, 3, size, size, device=device)).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = F.cross_entropy(model(generator.decode(latent)), torch.zeros(1, dtype=torch.long, device=device))
    torch.autograd.grad(loss, latent)
    per_image = sum(saved.values())
    return {
        "weights_mb": round(weights / 2**20),
        "saved_activations_mb_per_image": round(per_image / 2**20),
        "estimated_gpu_mb_at_batch": round((weights + batch * per_image) / 2**20),
    }


def step_flops(generator: VQGANGenerator, oracle: AcceptingOracle, model: PreprocessedClassifier, size: int) -> int:
    """Floating-point operations of one image's step (decode, reference model forward and
    backward to the latent, oracle forward): a device-independent cost to scale GPU time by."""
    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    device = next(generator.model.parameters()).device
    latent = generator.encode(torch.rand(1, 3, size, size, device=device)).detach().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        images = generator.decode(latent)
        oracle.judge(images.detach(), torch.zeros(1, dtype=torch.long, device=device))
        F.cross_entropy(model(images), torch.zeros(1, dtype=torch.long, device=device)).backward()
    return int(counter.get_total_flops())


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def run(args: argparse.Namespace) -> dict[str, Any]:
    generator, oracle, model = components(args.model, args.device, args.seed)
    mask = None
    if args.mask_keep is not None:
        shape = (256, args.size // 16, args.size // 16)
        mask = (torch.rand(shape, generator=torch.Generator().manual_seed(args.seed)) < args.mask_keep).float().to(args.device)
    generated = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=generated).to(args.device)
    labels = torch.randint(0, 1000, (args.images,), generator=generated).to(args.device)
    config = PerturbationConfig(budget=args.budget)
    perturb_batch(generator, oracle, model, images[:1], labels[:1], PerturbationConfig(budget=1), mask=mask)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for start in range(0, args.images, args.batch_size):
        chunk = slice(start, start + args.batch_size)
        result = perturb_batch(generator, oracle, model, images[chunk], labels[chunk], config, mask=mask)
        if mask is not None:
            moved = (result.latent_final - result.latent_start).abs() > 0
            assert not moved[:, mask == 0].any(), "masked dimensions moved"
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    per_step = seconds / args.images / (args.budget + 1)  # budget steps + the reconstruction check
    return {
        **memory_estimate_mb(generator, oracle, model, args.size, args.memory_batch),
        "gflops_per_image_step": round(step_flops(generator, oracle, model, args.size) / 1e9, 1),
        "memory_batch": args.memory_batch,
        "device": args.device,
        "model": args.model,
        "size": args.size,
        "images": args.images,
        "batch_size": args.batch_size,
        "budget": args.budget,
        "mask_keep": args.mask_keep,
        "seconds": round(seconds, 2),
        "seconds_per_image_step": round(per_step, 3),
        "seconds_per_image_at_budget_50": round(per_step * 51, 1),
        "hours_per_1k_images_at_budget_50": round(per_step * 51 * 1000 / 3600, 2),
        "peak_memory_mb": round(peak_memory_mb(args.device)),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--budget", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mask-keep", type=float, default=None, help="share of latent dims a random mask keeps, e.g. 0.007")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-batch", type=int, default=32, help="batch size the GPU memory estimate is for")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    figures = run(args)
    line = json.dumps(figures)
    print(line)
    if args.json:
        with open(args.json, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
