"""The sparse VQGAN: fitting the mask, saving it, and perturbing only the masked dimensions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import batch_inputs, make_components

from builder.config import PerturbationConfig
from builder.engine import perturb_batch
from builder.errors import CheckpointError, ComponentError
from builder.sparse import fit_l1_mask, load_mask, mask_metadata, save_mask


def test_the_fit_finds_the_dimensions_that_move() -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=(300, 4, 3, 3))
    final = start.copy()
    final[:, 1, 2, 0] += 1.5  # only two latent dimensions carry the perturbation
    final[:, 3, 0, 1] -= 1.5
    fit = fit_l1_mask(start, final, strength=20.0, seed=0)
    assert fit.mask[1, 2, 0] and fit.mask[3, 0, 1]
    assert int(fit.mask.sum()) <= 4 and fit.sparsity >= 1 - 4 / 36
    assert fit.accuracy > 0.7 and fit.test_pairs == 75  # the two shifted Gaussians overlap: Bayes limit ~0.86


def test_a_fit_that_keeps_nothing_is_refused_and_one_near_chance_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """A mask of no dimension was saved and advertised: every step of a build with it moves
    nothing. A fit that cannot tell original from perturbed latents says so."""
    from builder.errors import BuilderError

    rng = np.random.default_rng(0)
    start = rng.normal(size=(40, 4, 3, 3))
    final = start + 0.01 * rng.normal(size=start.shape)  # moves nowhere in particular
    with pytest.raises(BuilderError, match=r"^fit-mask kept no latent dimension at --lambda 1e\+06: .*lower --lambda \(e.g. 100000\)$"):
        fit_l1_mask(start, final, strength=1e6, seed=0)
    with caplog.at_level("WARNING", logger="builder.sparse"):
        fit = fit_l1_mask(start, final, strength=0.01, seed=0)
    assert fit.accuracy < 0.6 and "near chance" in caplog.text


def test_mask_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    start = rng.normal(size=(40, 2, 2, 2))
    fit = fit_l1_mask(start, start + 0.5, strength=1.0, seed=0)
    path = tmp_path / "mask.safetensors"
    save_mask(path, fit, {"recipe": "x", "lambda": 1.0})
    assert torch.equal(load_mask(path, expected_channels=2).bool(), fit.mask)
    metadata = mask_metadata(path)
    assert json.loads(metadata["provenance"]) == {"recipe": "x", "lambda": 1.0}
    assert float(metadata["sparsity"]) == pytest.approx(fit.sparsity, abs=1e-6)
    with pytest.raises(CheckpointError, match=r"expected \(8, H, W\)"):
        load_mask(path, expected_channels=8)
    with pytest.raises(CheckpointError, match="not found"):
        load_mask(tmp_path / "none.safetensors")


def test_masked_perturbation_moves_only_the_masked_dimensions() -> None:
    generator, oracle, model = make_components(0)
    images, labels = batch_inputs(generator, oracle, 0, n=12)
    generator_rng = torch.Generator().manual_seed(0)
    mask = (torch.rand(8, 8, 8, generator=generator_rng) < 0.2).double()
    result = perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(step_size=0.05, budget=5), mask=mask, dtype=torch.float64)
    moved = result.steps > 0
    assert moved.any()
    change = (result.latent_final - result.latent_start).abs()
    assert torch.equal(change[:, mask == 0], torch.zeros_like(change[:, mask == 0]))  # unmasked: equal to b0
    assert (change[moved][:, mask == 1] > 0).any()
    unmasked = perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(step_size=0.05, budget=5), dtype=torch.float64)
    assert ((unmasked.latent_final - unmasked.latent_start).abs()[:, mask == 0] > 0).any()  # the mask did the work


def test_a_masked_l2_step_is_step_size_long() -> None:
    """The l2 direction was normalised over every dimension and masked after: with 20% of the
    dimensions kept, each step was about half as long as step_size."""
    generator, oracle, model = make_components(0)
    images, labels = batch_inputs(generator, oracle, 0, n=12)
    mask = (torch.rand(8, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.2).double()
    config = PerturbationConfig(step_size=0.05, budget=1, direction="l2")
    result = perturb_batch(generator, oracle, model, images, labels, config, mask=mask, dtype=torch.float64)
    moved = result.steps == 1
    assert moved.any()
    lengths = (result.latent_final - result.latent_start)[moved].flatten(1).norm(dim=1)
    assert torch.allclose(lengths, torch.full_like(lengths, 0.05))


def test_mask_of_the_wrong_shape_is_a_clear_error() -> None:
    generator, oracle, model = make_components(0)
    images, labels = batch_inputs(generator, oracle, 0, n=2)
    with pytest.raises(ComponentError, match=r"mask has shape \(8, 4, 4\) but the latent is \(8, 8, 8\)"):
        perturb_batch(generator, oracle, model, images, labels, PerturbationConfig(budget=1), mask=torch.ones(8, 4, 4, dtype=torch.float64), dtype=torch.float64)
