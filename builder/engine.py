"""Algorithm 1 of Zhang et al., batched.

For each image x with label y: b0 = encode(x), x0 = g(b0). If the oracle h rejects x0 the
sample keeps x and is flagged not perturbed. Otherwise, up to ``budget`` times, move b by
``step_size`` in the direction that raises theta's loss on y, decode, and keep the new
image only while h still says y; the first rejection ends the sample at its last accepted
image. Samples that have stopped leave the batch; each step decodes once, and that decode
serves both the oracle check and the next gradient. Every image the oracle judges is on
the 8-bit grid that gets written, so a re-check of the saved file gives the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from builder.components.base import Classifier, Generator, Oracle
from builder.config import PerturbationConfig
from builder.errors import ComponentError

STOP_NOT_ACCEPTED = "oracle rejected the reconstruction"
STOP_REJECTED = "oracle rejected a step"
STOP_BUDGET = "budget exhausted"
STOP_NON_FINITE = "non-finite gradient"


@dataclass(frozen=True)
class PerturbationResult:
    """Per-sample outcome of a batch; ``images`` are uint8 (N, 3, H, W)."""

    images: torch.Tensor
    steps: torch.Tensor
    perturbed: torch.Tensor
    oracle_prob: torch.Tensor
    pred_before: torch.Tensor
    loss_before: torch.Tensor
    pred_after: torch.Tensor
    loss_after: torch.Tensor
    stop_reason: list[str]
    latent_start: torch.Tensor
    latent_final: torch.Tensor


def to_pixel_grid(images: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid, passing gradients straight through."""
    return images + (torch.round(images * 255) / 255 - images).detach()


def step_direction(gradient: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "sign":
        return gradient.sign()
    if kind == "l2":
        norms = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
        return gradient / norms.view(-1, *([1] * (gradient.dim() - 1)))
    return gradient


def _decode_judge_grad(
    generator: Generator, oracle: Oracle, model: Classifier, latent: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode: (images on the pixel grid, oracle verdict, d loss / d latent for accepted rows)."""
    latent = latent.detach().requires_grad_(True)
    with torch.enable_grad():
        images = to_pixel_grid(generator.decode(latent))
        accepted, _ = oracle.judge(images.detach(), labels)
        gradient = torch.zeros_like(latent)
        if accepted.any():
            loss = F.cross_entropy(model(images[accepted]), labels[accepted], reduction="sum")
            gradient = torch.autograd.grad(loss, latent)[0]
    return images.detach(), accepted, gradient


def _score(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = model(images)
        return logits.argmax(dim=-1), F.cross_entropy(logits, labels, reduction="none")


def perturb_batch(
    generator: Generator,
    oracle: Oracle,
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: PerturbationConfig,
    mask: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> PerturbationResult:
    """Run Algorithm 1 on a batch of uint8 images (N, 3, H, W) with integer labels.

    ``mask`` (broadcastable to the latent, 1 = may move) restricts the steps to those latent
    dimensions: the paper's sparse VQGAN."""
    originals = images.to(dtype) / 255
    pred_before, loss_before = _score(model, originals, labels)
    with torch.no_grad():
        latent = generator.encode(originals)
    if mask is not None and tuple(mask.shape) != tuple(latent.shape[1:]):
        raise ComponentError(
            f"the generator mask has shape {tuple(mask.shape)} but the latent is {tuple(latent.shape[1:])}; "
            "fit the mask with this recipe's generator and image_size"
        )
    latent_start, latent_final = latent.clone(), latent.clone()
    final = originals.clone()
    steps = torch.zeros(len(labels), dtype=torch.long, device=labels.device)
    reasons = [STOP_NOT_ACCEPTED] * len(labels)

    decoded, accepted, gradient = _decode_judge_grad(generator, oracle, model, latent, labels)
    perturbed = accepted.clone()
    final[accepted] = decoded[accepted]
    active = accepted.nonzero().squeeze(1)
    latent, gradient = latent[active], gradient[active]
    for index in active.tolist():
        reasons[index] = STOP_BUDGET

    for _ in range(config.budget):
        finite = torch.isfinite(gradient.flatten(1)).all(dim=1)
        for index in active[~finite].tolist():
            reasons[index] = STOP_NON_FINITE
        active, latent, gradient = active[finite], latent[finite], gradient[finite]
        if len(active) == 0:
            break
        direction = step_direction(gradient, config.direction)
        if mask is not None:
            direction = direction * mask
        candidate = latent + config.step_size * direction
        decoded, accepted, next_gradient = _decode_judge_grad(generator, oracle, model, candidate, labels[active])
        for index in active[~accepted].tolist():
            reasons[index] = STOP_REJECTED
        active, latent, gradient = active[accepted], candidate[accepted], next_gradient[accepted]
        final[active] = decoded[accepted]
        latent_final[active] = latent
        steps[active] += 1

    pred_after, loss_after = _score(model, final, labels)
    _, oracle_prob = oracle.judge(final, labels)
    return PerturbationResult(
        images=torch.round(final * 255).to(torch.uint8),
        steps=steps,
        perturbed=perturbed,
        oracle_prob=oracle_prob,
        pred_before=pred_before,
        loss_before=loss_before,
        pred_after=pred_after,
        loss_after=loss_after,
        stop_reason=reasons,
        latent_start=latent_start,
        latent_final=latent_final,
    )


