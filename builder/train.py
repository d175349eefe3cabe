"""Train small components from scratch, for domains without a pretrained VQGAN or CLIP.

The embedded demo uses this on first run; ``build-benchmark train`` exposes it. Each
trainer writes a checkpoint in the same format its loader reads, and all randomness comes
from the component's ``train.seed`` (by default derived from the recipe's ``seed``).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

from builder.checkpoints import save_state_dict
from builder.components.base import ComponentContext, image_size_cap_problem
from builder.config import ModelSpec, TrainConfig
from builder.errors import ComponentError
from builder.images import to_nchw
from builder.preflight import missing_weights
from builder.sources.base import SourceContext, open_source
from builder.sources.decode import SampleRejected, load_rgb

log = logging.getLogger(__name__)


def load_training_data(ctx: ComponentContext, train: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All readable images (uint8 N,3,H,W) and labels of the training split."""
    size = train.image_size or ctx.image_size
    problem = image_size_cap_problem(size)
    if problem:
        raise ComponentError(f"{'train.' if train.image_size else ''}{problem}")
    leak = (ctx.evaluated_source or ctx.source).training_split_problem(train.split, ctx.source, ctx.base_dir)
    if leak:
        raise ComponentError(leak)
    source = open_source(ctx.source, SourceContext(ctx.base_dir, ctx.cache_dir), split=train.split)
    pixels, labels = [], []
    for item in source.items(0, len(source)):
        try:
            pixels.append(load_rgb(item.load, size))
            labels.append(item.label)
        except SampleRejected:
            continue
    if not pixels:
        raise ComponentError(f"no readable training images in split '{train.split}'")
    images = to_nchw(np.stack(pixels))
    return images, torch.tensor(labels, dtype=torch.long)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random rotation (±15°), scale (±10%), shift (±10%), contrast and noise."""
    n = len(images)

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1).to(images.device)

    angle, scale, shift = uniform(n) * math.radians(15), 1 + uniform(n) * 0.1, uniform(n, 2) * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    contrast = 1 + uniform(n, 1, 1, 1) * 0.3
    noise = torch.randn(images.shape, generator=generator).to(images.device) * (uniform(n, 1, 1, 1).abs() * 0.08)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    return ((moved - mean) * contrast + mean + noise).clamp(0, 1)


def fit(
    parameters: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
    train: TrainConfig,
    seed: int,
    device: str,
    what: str,
) -> None:
    """Adam with cosine decay over ``train.epochs``; shuffling and augmentation seeded."""
    images, labels = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(parameters, lr=train.lr)
    steps = train.epochs * math.ceil(len(labels) / train.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for epoch in range(train.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), train.batch_size):
            index = order[start : start + train.batch_size]
            batch = images[index].to(device).float() / 255
            if train.augment:
                batch = augment(batch, generator)
            loss = loss_fn(batch, labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        log.info("train %s: epoch %d/%d loss %.4f", what, epoch + 1, train.epochs, total / len(labels))


@contextmanager
def seeded_rng(seed: int, device: str = "cpu") -> Iterator[None]:
    """Torch's global random state seeded for the block and restored after it: dropout, drop-path
    and initialisation inside a trainer then depend on the component's seed alone, not on what
    ran before in the same process."""
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def seeded(seed: int, build: Callable[[], Any]) -> Any:
    """``build()`` with torch seeded by ``seed``, the global generator left as it was."""
    with seeded_rng(seed):
        return build()


def train_classifier(spec: ModelSpec, ctx: ComponentContext, out: Path) -> None:
    """Train a classifier spec from scratch with cross-entropy, on the outputs it is used through:
    with ``class_ranges``, each super-class's pooled logit (its members' logsumexp), as
    :func:`builder.components.models.load_classifier` pools them."""
    from builder.components.models import build_classifier, pooled

    train = spec.train or TrainConfig()
    seed = ctx.train_seed(spec)
    classifier = pooled(seeded(seed, lambda: build_classifier(spec, ctx, pretrained=False)), spec, ctx.class_names).to(ctx.device).train()

    def loss_fn(batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(classifier(batch), labels)

    fit(classifier.parameters(), loss_fn, load_training_data(ctx, train), train, seed, ctx.device, spec.model)
    save_state_dict({k: v.cpu() for k, v in classifier.net.state_dict().items()}, out)


def trainer_for(component: Any) -> Callable[[Any, ComponentContext, Path], None]:
    """The training function for a trainable component config: a classifier spec's is here,
    every other kind's is the ``trainer`` its registry entry carries."""
    from builder.preflight import family_of

    if isinstance(component, ModelSpec):
        return train_classifier
    registry = family_of(component)
    trainer = registry.entry(component.kind).trainer if registry is not None else None
    if trainer is None:
        raise ComponentError(f"{type(component).__name__} has a train block but nothing here can train it; give its weights instead")
    return trainer


def train_component(component: Any, ctx: ComponentContext, out: Path) -> None:
    """Train ``component`` into ``out`` with torch's global random state seeded by its train seed,
    so the same recipe gives the same weights whichever command trains them and whatever ran
    before in the process."""
    with seeded_rng(ctx.train_seed(component), ctx.device):
        trainer_for(component)(component, ctx, out)


def ensure_weights(configs: Iterable[Any], ctx: ComponentContext) -> list[Path]:
    """Train, now, every component of ``configs`` whose trained weights are missing: an explicit
    step before loading (the loaders never train). Returns the checkpoints written."""
    written = []
    for component, path in missing_weights(configs, ctx):
        log.info("no trained weights at %s yet, training them", path)
        train_component(component, ctx, path)
        written.append(path)
    return written
