"""Algorithm 1: the batched engine against a plain per-image implementation, on tiny models."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_EDITS, attributes_generator, batch_inputs, make_components, needs_compiler, tiny_vae, to_grid
from torch.nn import functional as F

from builder.components.oracles import ClassifierOracle
from builder.config import PerturbationConfig
from builder.engine import STOP_BUDGET, STOP_NON_FINITE, STOP_NOT_ACCEPTED, STOP_REJECTED, perturb_batch


def sign_step(latent: torch.Tensor, gradient: torch.Tensor, config: PerturbationConfig) -> torch.Tensor:
    return latent + config.step_size * gradient.sign()


def attribute_step(edits: dict):
    """The attributes kind's rule, written out: each parameter by its own step along the sign of
    its gradient, clipped to its range; the original pixels in front of it never move."""
    names = [n for name in edits for n in (["translate_x", "translate_y"] if name == "translate" else [name])]
    spec = [edits["translate" if n.startswith("translate_") else n] for n in names]
    steps = torch.tensor([s["step"] for s in spec], dtype=torch.float64)
    low = torch.tensor([s["range"][0] for s in spec], dtype=torch.float64)
    high = torch.tensor([s["range"][1] for s in spec], dtype=torch.float64)

    def step(latent: torch.Tensor, gradient: torch.Tensor, config: PerturbationConfig) -> torch.Tensor:
        values = latent[:, -len(names):] + steps * gradient[:, -len(names):].sign()
        return torch.cat([latent[:, : -len(names)], torch.minimum(torch.maximum(values, low), high)], dim=1)

    return step


def algorithm1(generator, oracle, model, image: torch.Tensor, label: int, config: PerturbationConfig, move=sign_step):
    """Plain, one-image Algorithm 1, written from the paper's description."""
    x = image[None].double() / 255
    y = torch.tensor([label])
    with torch.no_grad():
        latent = generator.encode(x)
        current = to_grid(generator.decode(latent))
    if not oracle.judge(current, y)[0].item():
        return x[0], 0, False
    steps = 0
    for _ in range(config.budget):
        probe = latent.clone().requires_grad_(True)
        decoded = generator.decode(probe)
        on_grid = decoded + (to_grid(decoded) - decoded).detach()  # what is judged, gradient passed straight through
        loss = F.cross_entropy(model(on_grid), y)
        (gradient,) = torch.autograd.grad(loss, probe)
        if not torch.isfinite(gradient).all():
            break
        candidate = move(latent, gradient, config)
        with torch.no_grad():
            decoded = to_grid(generator.decode(candidate))
        if not oracle.judge(decoded, y)[0].item():
            break
        latent, current, steps = candidate, decoded, steps + 1
    return current[0], steps, True


class ConfidenceOracle:
    """Accepts while theta's probability of the label stays above a threshold: it rejects at
    different steps for different samples, so every way a sample can end is exercised."""

    def __init__(self, model, threshold: float) -> None:
        self.model, self.threshold = model, threshold

    def judge(self, images: torch.Tensor, labels: torch.Tensor):
        with torch.no_grad():
            probability = self.model(images).softmax(-1).gather(1, labels[:, None]).squeeze(1)
        return probability >= self.threshold, probability


def pixel_step(latent: torch.Tensor, gradient: torch.Tensor, config: PerturbationConfig) -> torch.Tensor:
    """The pixel baseline's projected sign step: pixels stay in [0, 1]."""
    return (latent + config.step_size * gradient.sign()).clamp(0, 1)


def generator_of(kind: str, seed: int, vqgan):
    """The tiny generator of ``kind`` in float64, and its step rule written out."""
    if kind == "vqgan":
        return vqgan, sign_step
    if kind == "vae":
        return tiny_vae(seed), sign_step
    if kind == "pixel":
        from builder.components.pixel import PixelGenerator

        return PixelGenerator(), pixel_step
    return attributes_generator(TINY_EDITS), attribute_step(TINY_EDITS)


@pytest.mark.parametrize("seed, batch_size, kind", [(0, None, "vqgan"), (1, None, "vqgan"), (0, 3, "vqgan"), (1, 5, "vqgan"),
                                                    (0, None, "vae"), (1, 5, "vae"), (0, None, "attributes"), (1, 5, "attributes"),
                                                    (0, None, "pixel"), (1, 5, "pixel")])
def test_batched_engine_equals_per_image_algorithm(seed: int, batch_size, kind: str) -> None:
    """All samples in one batch, and fewer slots than samples (slots refilled as samples stop),
    for every generator kind's latent and step rule."""
    vqgan, _, model = make_components(seed)
    generator, move = generator_of(kind, seed, vqgan)
    images, labels = batch_inputs(generator, ClassifierOracle(model), seed, n=16)
    with torch.no_grad():
        recon = to_grid(generator.decode(generator.encode(images.double() / 255)))
        start = model(recon).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    oracle = ConfidenceOracle(model, float(start[1:].quantile(0.2)))
    config = PerturbationConfig(step_size=0.0003, budget=8)
    finished: list[int] = []
    result = perturb_batch(generator, oracle, model, images, labels, config, dtype=torch.float64, batch_size=batch_size, on_done=finished.append)
    assert sum(finished) == len(labels)
    for i in range(len(labels)):
        expected_image, expected_steps, expected_perturbed = algorithm1(generator, oracle, model, images[i], int(labels[i]), config, move)
        assert int(result.steps[i]) == expected_steps, f"sample {i}"
        assert bool(result.perturbed[i]) == expected_perturbed
        assert torch.equal(result.images[i], torch.round(expected_image * 255).to(torch.uint8)), f"sample {i}"
    assert set(result.stop_reason) == {STOP_NOT_ACCEPTED, STOP_REJECTED, STOP_BUDGET}
    assert ((result.steps > 0) & (result.steps < config.budget)).any()


def test_unperturbed_sample_keeps_its_original_pixels() -> None:
    generator, oracle, model = make_components(3)
    images, labels = batch_inputs(generator, oracle, 3, n=4)
    result = perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(step_size=0.05, budget=3), dtype=torch.float64)
    assert not result.perturbed[0]
    assert torch.equal(result.images[0], images[0])


def test_every_perturbed_image_is_accepted_when_rechecked_from_uint8() -> None:
    generator, oracle, model = make_components(4, dtype=torch.float32)
    images, labels = batch_inputs(generator, oracle, 4, n=16)
    result = perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(step_size=0.05, budget=6))
    accepted, probability = oracle.judge(result.images.float() / 255, labels)
    assert accepted[result.perturbed].all()
    assert torch.allclose(probability, result.oracle_prob, atol=1e-5)


def test_loss_rises_along_the_accepted_steps() -> None:
    generator, oracle, model = make_components(5)
    images, labels = batch_inputs(generator, oracle, 5, n=16)
    result = perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(step_size=0.02, budget=10), dtype=torch.float64)
    moved = result.steps > 0
    assert moved.any()
    assert (result.loss_after[moved] > result.loss_before[moved]).float().mean() > 0.7


def test_zero_budget_returns_the_reconstruction() -> None:
    generator, oracle, model = make_components(6)
    images, labels = batch_inputs(generator, oracle, 6, n=4)
    result = perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(budget=0), dtype=torch.float64)
    assert (result.steps == 0).all()
    assert all(r in (STOP_BUDGET, STOP_NOT_ACCEPTED) for r in result.stop_reason)


def test_non_finite_gradient_ends_the_sample_at_its_last_good_step() -> None:
    generator, oracle, _ = make_components(7)

    class Exploding(torch.nn.Module):
        num_classes = 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.flatten(1)[:, :3] * 0 + 1) / (x.flatten(1)[:, :3] * 0)  # inf logits, NaN gradients

    images, labels = batch_inputs(generator, oracle, 7, n=4)
    result = perturb_batch(generator, oracle, Exploding(), images, labels, PerturbationConfig(step_size=0.05, budget=5), dtype=torch.float64)
    perturbed = result.perturbed.nonzero().squeeze(1).tolist()
    assert perturbed
    for i in perturbed:
        assert result.stop_reason[i] == STOP_NON_FINITE
        assert int(result.steps[i]) == 0


class _PoisonedGradient(torch.autograd.Function):
    """Identity forward; backward gives NaN for the rows whose image falls in a band of its mean,
    so samples meet a non-finite gradient at different steps, or never."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.poisoned = (x.flatten(1).mean(dim=1) * 997) % 1 < 0.25
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.where(ctx.poisoned.view(-1, 1, 1, 1), torch.full_like(grad, float("nan")), grad)


class PoisonedModel(torch.nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.num_classes = model, model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_PoisonedGradient.apply(x))


@pytest.mark.parametrize("batch_size", [None, 3])
def test_non_finite_gradients_at_different_steps_end_as_the_per_image_algorithm_does(batch_size) -> None:
    """A non-finite gradient is not read back when it is taken: its sample steps by zero and the
    next read-back stops it. Samples meet one at different steps; each ends as Algorithm 1 does,
    at its last accepted image, and the others in its batch go on untouched."""
    vqgan, _, base = make_components(21)
    model = PoisonedModel(base)
    images, labels = batch_inputs(vqgan, ClassifierOracle(base), 21, n=16)
    oracle = ClassifierOracle(base)
    config = PerturbationConfig(step_size=0.0003, budget=8)
    result = perturb_batch(vqgan, oracle, model, images, labels, config, dtype=torch.float64, batch_size=batch_size)
    for i in range(len(labels)):
        expected_image, expected_steps, expected_perturbed = algorithm1(vqgan, oracle, model, images[i], int(labels[i]), config)
        assert int(result.steps[i]) == expected_steps, f"sample {i}"
        assert bool(result.perturbed[i]) == expected_perturbed
        assert torch.equal(result.images[i], torch.round(expected_image * 255).to(torch.uint8)), f"sample {i}"
    ended = {int(result.steps[i]) for i, reason in enumerate(result.stop_reason) if reason == STOP_NON_FINITE}
    assert len(ended) >= 2 and STOP_BUDGET in result.stop_reason  # at different steps, and not every sample


def test_one_read_back_per_decode(monkeypatch) -> None:
    """The step's decisions (the oracle's verdicts and the gradients' finiteness) come back to the
    host in one read-back per decode: on a GPU each read-back waits for the device."""
    generator, oracle, model = make_components(22)
    images, labels = batch_inputs(generator, oracle, 22, n=12)
    recording = RecordingGenerator(generator)
    reads: list[str] = []
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1])
    result = perturb_batch(recording, oracle, model, images, labels, PerturbationConfig(step_size=0.0003, budget=6),
                           dtype=torch.float64, batch_size=5)
    monkeypatch.undo()
    assert int(result.steps.sum()) > 0 and len(recording.sizes) > 6
    assert reads == ["tolist"] * len(recording.sizes)


def test_requantized_latents_still_get_gradients() -> None:
    generator, oracle, model = make_components(8, requantize=True)
    images, labels = batch_inputs(generator, oracle, 8, n=6)
    result = perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(step_size=0.5, budget=4), dtype=torch.float64)
    assert result.perturbed.any()


class RecordingGenerator:
    """Wraps a generator and records the batch size of every decode."""

    def __init__(self, generator) -> None:
        self.generator, self.sizes = generator, []

    def encode(self, images):
        return self.generator.encode(images)

    def decode(self, latent):
        self.sizes.append(len(latent))
        return self.generator.decode(latent)


def test_slots_stay_full_while_samples_wait_and_results_match_one_big_batch() -> None:
    """Samples stopping at very different steps: a refilled batch of 4 decodes 4 at a time until
    no sample waits, and every output equals the one-batch run's."""
    generator, _, model = make_components(11)
    images, labels = batch_inputs(generator, ClassifierOracle(model), 11, n=16)
    with torch.no_grad():
        recon = to_grid(generator.decode(generator.encode(images.double() / 255)))
        start = model(recon).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    oracle = ConfidenceOracle(model, float(start[1:].quantile(0.3)))
    config = PerturbationConfig(step_size=0.0003, budget=10)
    whole = perturb_batch(generator, oracle, model, images, labels, config, dtype=torch.float64)
    recording = RecordingGenerator(generator)
    refilled = perturb_batch(recording, oracle, model, images, labels, config, dtype=torch.float64, batch_size=4)
    assert len(set(whole.steps.tolist())) >= 3  # samples do stop at very different steps
    for field in ("images", "steps", "perturbed", "pred_after", "latent_final"):
        assert torch.equal(getattr(whole, field), getattr(refilled, field)), field
    assert refilled.stop_reason == whole.stop_reason
    first_short = next(i for i, size in enumerate(recording.sizes) if size < 4)
    assert set(recording.sizes[:first_short]) == {4}  # full while samples wait ...
    assert all(size < 4 for size in recording.sizes[first_short:])  # ... short only in the tail
    assert first_short > len(recording.sizes) / 2


def test_bf16_precision_keeps_outputs_on_the_grid_and_accepted() -> None:
    """bfloat16 autocast: the step and latent stay float32, the images the oracle accepted are
    those written, and most samples take the same number of steps as in float32."""
    generator, oracle, model = make_components(12, dtype=torch.float32)
    images, labels = batch_inputs(generator, oracle, 12, n=16)
    config = PerturbationConfig(step_size=0.05, budget=6)
    fp32 = perturb_batch(generator, oracle, model, images, labels, config)
    bf16 = perturb_batch(generator, oracle, model, images, labels, config.model_copy(update={"precision": "bf16"}), batch_size=5)
    assert bf16.images.dtype == torch.uint8 and bf16.latent_final.dtype == torch.float32
    assert bf16.loss_after.dtype == torch.float32 and torch.isfinite(bf16.loss_after).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        accepted, _ = oracle.judge(bf16.images.float() / 255, labels)
    assert accepted[bf16.perturbed].all()
    assert (bf16.steps == fp32.steps).float().mean() >= 0.5


@pytest.mark.slow
def test_compiled_decoder_matches_eager_and_compiles_a_second_latent_size() -> None:
    """``--compile``: the engine through a compiled decoder gives the eager engine's results (in
    float64, exactly) through a tail of shrinking batches; then a second generator with another
    latent size compiles in the same process. Dynamo's shape history is shared by every
    generator of a class, and it once made the second one's channels and spatial sizes symbolic,
    which inductor failed to lower."""
    from builder.engine import CompiledDecoder

    needs_compiler()
    generator, oracle, model = make_components(13)
    images, labels = batch_inputs(generator, oracle, 13, n=7)
    config = PerturbationConfig(step_size=0.0003, budget=4)
    eager = perturb_batch(generator, oracle, model, images, labels, config, dtype=torch.float64, batch_size=4)
    compiled = perturb_batch(CompiledDecoder(generator), oracle, model, images, labels, config, dtype=torch.float64, batch_size=4)
    assert torch.equal(compiled.images, eager.images) and torch.equal(compiled.steps, eager.steps)
    assert compiled.stop_reason == eager.stop_reason and int(eager.steps.sum()) > 0

    other, _, _ = make_components(14)  # the same tiny VQGAN on 32 px images: a 16 x 16 latent, not 8 x 8
    latent = other.encode(torch.rand(2, 3, 32, 32, dtype=torch.float64))
    decoder = CompiledDecoder(other)
    probe, plain = (latent.clone().requires_grad_(True) for _ in range(2))
    (gradient,) = torch.autograd.grad(decoder.decode(probe).sum(), probe)
    (expected,) = torch.autograd.grad(other.decode(plain).sum(), plain)
    assert torch.allclose(gradient, expected, rtol=1e-9, atol=1e-12)


def test_a_pixel_stepped_past_a_bound_stays_on_it_and_can_come_back() -> None:
    """The pixel baseline's latent left [0, 1] and, clamped in decode only, got no gradient there:
    a pixel past a bound could never move back."""
    from builder.components.pixel import PixelGenerator

    generator = PixelGenerator()
    latent = torch.tensor([[0.02, 0.5, 0.99]], dtype=torch.float64)
    moved = generator.step(latent, torch.tensor([[-1.0, 1.0, 1.0]], dtype=torch.float64), 0.05)
    assert torch.allclose(moved, torch.tensor([[0.0, 0.55, 1.0]], dtype=torch.float64))
    back = generator.step(moved, torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64), 0.05)
    assert torch.allclose(back, torch.tensor([[0.05, 0.55, 0.95]], dtype=torch.float64))


def test_a_vqgan_start_is_exactly_its_codebook_vectors_whatever_the_batch() -> None:
    """encode returned the straight-through z + (z_q - z), which is not z_q in floating point and
    carries the encoder's batch-dependent rounding: in float32 a sample's start depended on its batch."""
    vqgan, _, _ = make_components(0, torch.float32)
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        together = vqgan.encode(images)
        alone = torch.cat([vqgan.encode(images[i : i + 1]) for i in range(6)])
    codebook = vqgan.model.quantize.embedding.weight
    vectors = together.permute(0, 2, 3, 1).reshape(-1, together.shape[1])
    assert torch.equal(together, alone)
    assert all(bool((codebook == vector).all(dim=1).any()) for vector in vectors)


def test_the_pixel_grid_clamps_what_a_decoder_overshoots() -> None:
    """A plugin decoder's 1.01 was judged as itself and written as 2/255 (the uint8 cast wraps
    around): the grid clamps to [0, 1] first, and gradients still pass straight through."""
    from builder.engine import to_pixel_grid

    images = torch.tensor([1.01, -0.2, 0.5, 0.25], requires_grad=True)
    grid = to_pixel_grid(images)
    assert grid.tolist() == pytest.approx([1.0, 0.0, 128 / 255, 64 / 255])
    assert (torch.round(grid * 255).to(torch.uint8)).tolist() == [255, 0, 128, 64]
    grid.sum().backward()
    assert images.grad is not None and images.grad.tolist() == [1.0, 1.0, 1.0, 1.0]
