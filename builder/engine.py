"""Algorithm 1 of Zhang et al., batched.

For each image x with label y: b0 = encode(x), x0 = g(b0). If the oracle h rejects x0 the
sample keeps x and is flagged not perturbed. Otherwise, up to ``budget`` times, move b by
``step_size`` in the direction that raises theta's loss on y, decode, and keep the new
image only while h still says y; the first rejection ends the sample at its last accepted
image. Each step decodes once, and that decode serves both the oracle check and the next
gradient. Every image the oracle judges is on the 8-bit grid that gets written, so a re-check
of the saved file gives the same verdict.

The batch is a set of slots kept full (continuous batching): a sample that stops frees its
slot and the next waiting sample takes it, its reconstruction decoded in the same call as the
others' next step. Every sample's loss is its own (summed, never averaged over the batch), so
its result does not depend on which samples share its batch: exactly so in float64 (tested
against a per-image Algorithm 1); in float32 kernels round differently for other batch shapes,
so the bytes are those of a given batch size (a build's identity records it). Only the tail of
a call, when no sample is left waiting, runs on a smaller batch.

Precision: under ``bf16`` the decoder, the oracle and the reference model run in bfloat16
autocast; the latent, the loss, the gradient and the step stay in float32.

Host-device syncs: one per step, its decisions read back together before the gradient is
computed: the oracle's verdicts and whether each moved sample's last gradient was finite. A
non-finite gradient is not read back when it is taken: its sample steps by zero, and the next
read-back stops it at its last accepted image (the wasted row costs one decode). The
bookkeeping (who holds a slot, steps, stop reasons) is mirrored on the host, and rows are
picked with ``nonzero_static`` of a size the host already knows, so no boolean-mask indexing
waits for the device.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

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
    #: (N, P) the generator's named parameters of each final image (its ``attributes(latent)``),
    #: kept whatever ``keep_latents`` says; (N, 0) for generators without any
    attributes: torch.Tensor


def to_pixel_grid(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the uint8 grid, passing gradients straight through: the
    oracle judges exactly the image that is written (a plugin decoder's 1.01 was judged as
    itself and written as 2/255, wrapped around by the uint8 cast)."""
    return images + (torch.round(images.clamp(0, 1) * 255) / 255 - images).detach()


def step_direction(gradient: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "sign":
        return gradient.sign()
    if kind == "l2":
        norms = gradient.flatten(1).norm(dim=1).clamp_min(1e-12)
        return gradient / norms.view(-1, *([1] * (gradient.dim() - 1)))
    return gradient


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """Autocast for the components' forward passes: bfloat16 for ``bf16``, none for ``fp32``
    (never float16: VAE decoders overflow in it)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def move(generator: Generator, latent: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
    """One step from ``latent`` along ``direction``: the generator's own ``step`` rule when it has
    one (per-parameter steps, ranges), else ``latent + step_size * direction``."""
    step = getattr(generator, "step", None)
    if step is not None:
        moved: torch.Tensor = step(latent, direction, step_size)
        return moved
    return latent + step_size * direction


class CompiledDecoder:
    """A generator whose decode runs through ``torch.compile``. The slots keep the decode's batch
    shape fixed until a call's tail, where one recompile with a dynamic batch size serves every
    shorter batch. Only the batch may become dynamic: dynamo keeps one shape history per
    function, shared by every generator of a class compiled in the process, so a second
    generator of another latent size (a recipe's second VQGAN, another image size) would
    otherwise get symbolic channels and spatial sizes, which inductor fails to lower (torch
    2.14, a VQGAN decoder's backward). Encode (once per image) stays eager; everything else
    (``mask``, ``step``, ``attributes``) is the generator's own."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._decode = torch.compile(generator.decode)

    def __getattr__(self, name: str) -> object:
        if name == "generator":  # not set yet: no recursion while unpickling
            raise AttributeError(name)
        return getattr(self.generator, name)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.generator.encode(images)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        torch._dynamo.mark_static(latent, list(range(1, latent.dim())))
        return self._decode(latent)


class _OracleIn:
    """An oracle that judges under a build's precision."""

    def __init__(self, oracle: Oracle, precision: str) -> None:
        self.oracle, self.precision = oracle, precision

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast_for(self.precision, images.device):
            accepted, probability = self.oracle.judge(images, labels)
        return accepted, at_least_fp32(probability)


def judging_in(precision: str, oracle: Oracle) -> Oracle:
    """``oracle`` judging as a build of ``precision`` did, so a re-check of a bf16 build's images
    gives the verdicts the build acted on."""
    return oracle if precision == "fp32" else _OracleIn(oracle, precision)


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """bfloat16 results up to float32; float32 and float64 kept as they are."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def rows_of(mask: torch.Tensor, count: int) -> Optional[torch.Tensor]:
    """The positions of a 1-D ``mask`` holding ``count`` (known on the host) true values, without
    a sync; None when every row is true (the caller then takes the tensor as it is)."""
    if count == len(mask):
        return None
    return torch.nonzero_static(mask, size=count).squeeze(1)


def pick(tensor: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
    return tensor if rows is None else tensor[rows]


@dataclass
class _Decoded:
    """One decode of the slots' samples (``index``, with ``fresh`` of them new) and its verdicts."""

    index: torch.Tensor
    samples: list[int]  # ``index`` on the host
    fresh: int
    images: torch.Tensor
    accepted: torch.Tensor  # judged by the oracle and moved by a finite gradient
    verdicts: list[bool]  # ``accepted`` on the host: the step's one read-back
    finite: list[bool]  # whether each sample's step came from a finite gradient (new ones: True)
    latent: torch.Tensor
    gradient: torch.Tensor


def _decode_judge_grad(generator: Generator, oracle: Oracle, model: Classifier, latent: torch.Tensor, labels: torch.Tensor,
                       finite: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor, list[bool], list[bool], torch.Tensor]:
    """One decode: (images on the pixel grid, the verdicts, them and ``finite`` on the host, and
    d loss / d latent for accepted rows). A row is accepted when the oracle says its label and its
    step came from a finite gradient (``finite``); both are read back at once, the step's sync."""
    latent = latent.detach().requires_grad_(True)
    with torch.enable_grad():
        with autocast_for(precision, latent.device):
            decoded = generator.decode(latent)
        images = to_pixel_grid(decoded.to(latent.dtype))
        judged, _ = oracle.judge(images.detach(), labels)
        accepted = judged.to(torch.bool) & finite
        verdicts, finite_host = torch.stack([accepted, finite]).tolist()
        gradient = torch.zeros_like(latent)
        count = sum(verdicts)
        if count:
            rows = rows_of(accepted, count)
            with autocast_for(precision, latent.device):
                logits = model(pick(images, rows))
            loss = F.cross_entropy(at_least_fp32(logits), pick(labels, rows), reduction="sum")
            gradient = torch.autograd.grad(loss, latent)[0].to(latent.dtype)
    return images.detach(), accepted, verdicts, finite_host, gradient


def rehearse(generator: Generator, oracle: Oracle, model: Classifier, count: int, image_size: int, precision: str,
             device: str, dtype: torch.dtype = torch.float32) -> None:
    """One step of a full batch of ``count`` grey images, every row taken as accepted: the
    encode, the decode with its gradient, the oracle and the reference model forward and
    backward, at the shapes (and the memory) of a build's first step. A batch that does not fit
    on the device, or a component failing on these shapes, fails here, while the workers load,
    before a build touches its output (``--overwrite`` had already deleted the old build)."""
    labels = torch.zeros(count, dtype=torch.long, device=device)
    images = torch.full((count, 3, image_size, image_size), 0.5, dtype=dtype, device=device)
    with torch.no_grad():
        latent = generator.encode(images).to(dtype)
    everyone = torch.ones(count, dtype=torch.bool, device=device)
    _decode_judge_grad(generator, _AcceptingAll(judging_in(precision, oracle)), model, latent, labels, everyone, precision)


class _AcceptingAll:
    """An oracle that judges (its cost is paid) and then accepts every row, so a rehearsal takes
    the gradient of the whole batch."""

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        accepted, probability = self.oracle.judge(images, labels)
        return torch.ones_like(accepted, dtype=torch.bool), probability


def _score(model: Classifier, images: torch.Tensor, labels: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad(), autocast_for(precision, images.device):
        logits = model(images)
    logits = at_least_fp32(logits)
    return logits.argmax(dim=-1), F.cross_entropy(logits, labels, reduction="none")


class _Slots:
    """Per-sample state of one call: the results so far and which samples hold a slot."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, keep_latents: bool,
                 describe: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        n, device = len(labels), labels.device
        self.labels, self.dtype, self.keep_latents = labels, dtype, keep_latents
        self.describe = describe  # latent -> (N, P) named parameters, recorded for every sample
        self.attributes: Optional[torch.Tensor] = None
        self.final = images.to(device, copy=True)  # uint8: every judged image is on the 8-bit grid
        self.steps = torch.zeros(n, dtype=torch.long, device=device)
        self.perturbed = torch.zeros(n, dtype=torch.bool, device=device)
        self.pred_before = torch.zeros(n, dtype=torch.long, device=device)
        self.loss_before = torch.zeros(n, dtype=dtype, device=device)
        self.reasons = [STOP_NOT_ACCEPTED] * n
        self.latent_start: Optional[torch.Tensor] = None
        self.latent_final: Optional[torch.Tensor] = None
        self.steps_host = [0] * n  # ``steps`` mirrored on the host: the budget decision needs no sync
        self.waiting = 0  # samples [waiting, n) have not had a slot yet
        self.active = torch.zeros(0, dtype=torch.long, device=device)  # samples holding a slot
        self.active_host: list[int] = []  # ``active`` on the host
        self.latent: Optional[torch.Tensor] = None  # their current (accepted) latents
        self.gradient: Optional[torch.Tensor] = None

    def originals(self, start: int, stop: int) -> torch.Tensor:
        """Samples [start, stop) as they came, from ``final`` (already on the device, and untouched
        until a sample is admitted): no index goes to the host, no image comes from it."""
        return self.final[start:stop].to(self.dtype) / 255

    def record_latents(self, index: torch.Tensor, latent: torch.Tensor, start: bool) -> None:
        if self.describe is not None:
            values = self.describe(latent).detach()
            if self.attributes is None:
                self.attributes = values.new_zeros((len(self.labels), values.shape[1]))
            self.attributes[index] = values
        if not self.keep_latents:
            return
        if self.latent_start is None or self.latent_final is None:
            shape = (len(self.labels), *latent.shape[1:])
            self.latent_start = latent.new_zeros(shape)
            self.latent_final = latent.new_zeros(shape)
        if start:
            self.latent_start[index] = latent
        self.latent_final[index] = latent


def _admit(
    slots: _Slots, generator: Generator, model: Classifier, count: int, mask: Optional[torch.Tensor], precision: str
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Encode the next ``count`` waiting samples: (their indices, their starting latents)."""
    index = torch.arange(slots.waiting, slots.waiting + count, device=slots.labels.device)
    if count == 0:
        return index, None
    originals = slots.originals(slots.waiting, slots.waiting + count)
    slots.waiting += count
    slots.pred_before[index], loss = _score(model, originals, slots.labels[index], precision)
    slots.loss_before[index] = loss.to(slots.dtype)
    with torch.no_grad():
        latent = generator.encode(originals).to(slots.dtype)
    if mask is not None and tuple(mask.shape) != tuple(latent.shape[1:]):
        raise ComponentError(
            f"the generator mask has shape {tuple(mask.shape)} but the latent is {tuple(latent.shape[1:])}; "
            "fit the mask with this recipe's generator and image_size"
        )
    slots.record_latents(index, latent, start=True)
    return index, latent


def _candidates(slots: _Slots, generator: Generator, config: PerturbationConfig,
                mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next latent of every sample holding a slot, and whether its gradient was finite, on
    the device: nothing is read back here. A sample whose gradient is not finite steps by zero
    (no NaN reaches a decode); the next read-back stops it."""
    device = slots.labels.device
    if slots.latent is None or slots.gradient is None or not slots.active_host:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, torch.zeros(0, device=device), empty.to(torch.bool)
    finite = torch.isfinite(slots.gradient.flatten(1)).all(dim=1)
    shape = (-1, *([1] * (slots.gradient.dim() - 1)))
    gradient = torch.where(finite.view(shape), slots.gradient, torch.zeros_like(slots.gradient))
    # the mask first, then the direction: an l2 step normalised over every dimension and masked
    # after was shorter than step_size by the share of dimensions masked out
    direction = step_direction(gradient if mask is None else gradient * mask, config.direction)
    return slots.active, move(generator, slots.latent, direction, config.step_size), finite


def perturb_batch(
    generator: Generator,
    oracle: Oracle,
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: PerturbationConfig,
    mask: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
    batch_size: Optional[int] = None,
    keep_latents: bool = True,
    on_done: Optional[Callable[[int], None]] = None,
) -> PerturbationResult:
    """Run Algorithm 1 on uint8 images (N, 3, H, W) with integer labels, ``batch_size`` slots at
    a time (default: all N at once); ``on_done(k)`` is called as k more samples finish.

    ``mask`` (broadcastable to the latent, 1 = may move) restricts the steps to those latent
    dimensions: the paper's sparse VQGAN. ``keep_latents=False`` leaves ``latent_start`` and
    ``latent_final`` empty (they cost memory a build does not need); a generator with named
    parameters (``attributes(latent)``) has them recorded for every sample all the same.
    A generator with a ``step(latent, direction, step_size)`` method moves its latent itself."""
    slots = _Slots(images, labels, dtype, keep_latents, getattr(generator, "attributes", None))
    width = max(1, batch_size or len(labels))
    precision = config.precision
    oracle = judging_in(precision, oracle)  # the oracle judges in the build's precision, as verify re-judges
    while slots.waiting < len(labels) or slots.active_host:
        held = len(slots.active_host)
        old_host = slots.active_host
        old, moved, finite = _candidates(slots, generator, config, mask)
        first = slots.waiting
        new, fresh = _admit(slots, generator, model, min(width - len(old_host), len(labels) - slots.waiting), mask, precision)
        index = torch.cat([old, new])
        if len(index):
            latent = moved if fresh is None else torch.cat([moved.to(fresh.dtype), fresh]) if old_host else fresh
            finite = torch.cat([finite, torch.ones(len(new), dtype=torch.bool, device=finite.device)])
            decoded, accepted, verdicts, finite_host, gradient = _decode_judge_grad(
                generator, oracle, model, latent, labels[index], finite, precision)
            samples = old_host + list(range(first, slots.waiting))
            decode = _Decoded(index, samples, len(new), decoded, accepted, verdicts, finite_host, latent, gradient)
            _settle(slots, decode, config.budget)
        else:
            slots.active, slots.active_host, slots.latent, slots.gradient = old, [], None, None
        if on_done is not None and held + len(new) > len(slots.active_host):
            on_done(held + len(new) - len(slots.active_host))
    return _finish(slots, oracle, model, width, precision)


def _settle(slots: _Slots, step: _Decoded, budget: int) -> None:
    """Apply one decode's verdicts: who moved, who stopped, who holds a slot for the next step.
    The decisions are taken on the host (``verdicts``, ``steps_host``); the device follows them."""
    old = len(step.samples) - step.fresh
    is_new = torch.arange(len(step.samples), device=step.index.device) >= old
    slots.perturbed[step.index] |= step.accepted & is_new
    slots.steps[step.index] += (step.accepted & ~is_new).to(slots.steps.dtype)
    kept, going = [], []
    for position, (sample, ok, finite) in enumerate(zip(step.samples, step.verdicts, step.finite, strict=True)):
        if not ok:
            if position < old:
                slots.reasons[sample] = STOP_REJECTED if finite else STOP_NON_FINITE
            continue
        slots.reasons[sample] = STOP_BUDGET
        slots.steps_host[sample] += position < old
        kept.append(sample)
        going.append(slots.steps_host[sample] < budget)
    rows = rows_of(step.accepted, len(kept))
    kept_index, latent, gradient = pick(step.index, rows), pick(step.latent, rows), pick(step.gradient, rows)
    slots.final[kept_index] = torch.round(pick(step.images, rows) * 255).to(torch.uint8)
    slots.record_latents(kept_index, latent, start=False)
    on = rows_of(slots.steps[kept_index] < budget, sum(going))
    slots.active, slots.latent, slots.gradient = pick(kept_index, on), pick(latent, on), pick(gradient, on)
    slots.active_host = [sample for sample, goes in zip(kept, going, strict=True) if goes]


def _finish(slots: _Slots, oracle: Oracle, model: Classifier, width: int, precision: str) -> PerturbationResult:
    """Scores after, and the oracle's verdict on each final image, ``width`` at a time."""
    n = len(slots.labels)
    preds, losses, probs = [], [], []
    for start in range(0, n, width):
        part = slice(start, start + width)
        final = slots.final[part].to(slots.dtype) / 255
        pred, loss = _score(model, final, slots.labels[part], precision)
        with torch.no_grad():
            _, prob = oracle.judge(final, slots.labels[part])
        preds.append(pred)
        losses.append(loss.to(slots.dtype))
        probs.append(at_least_fp32(prob))
    empty = torch.zeros(0, dtype=slots.dtype, device=slots.labels.device)
    return PerturbationResult(
        images=slots.final,
        steps=slots.steps,
        perturbed=slots.perturbed,
        oracle_prob=torch.cat(probs) if probs else empty,
        pred_before=slots.pred_before,
        loss_before=slots.loss_before,
        pred_after=torch.cat(preds) if preds else slots.pred_before.clone(),
        loss_after=torch.cat(losses) if losses else empty,
        stop_reason=slots.reasons,
        latent_start=slots.latent_start if slots.latent_start is not None else empty,
        latent_final=slots.latent_final if slots.latent_final is not None else empty,
        attributes=slots.attributes if slots.attributes is not None else empty.new_zeros((n, 0)),
    )
