"""What a sparse-VQGAN mask must be before a build uses it: fitted on centred latents with a
valid solver seed, of 0/1 values keeping something, of the generator's latent shape, and fitted
on that generator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from builder.cli import main
from builder.components.base import ComponentContext
from builder.components.vqgan import TamingVQGAN
from builder.errors import CheckpointError
from builder.recipes import load_recipe
from builder.registry import GENERATORS
from builder.sparse import MaskFit, check_generator_mask, fit_l1_mask, generator_identity, load_mask, mask_metadata, provenance_problem, save_mask

from tiny_models import TINY_VQGAN_YAML


def _dead_dimension_latents(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """18 latent dimensions: (0, 0, 0) equal in every sample and never moved, (1, 2, 2) moved alike in all."""
    rng = np.random.default_rng(0)
    start = rng.normal(size=(n, 2, 3, 3))
    start[:, 0, 0, 0] = 0.7
    final = start + 0.3 * np.sign(rng.normal(size=start.shape))
    final[:, 0, 0, 0] = 0.7
    final[:, 1, 2, 2] = start[:, 1, 2, 2] + 1.0
    return start, final


def test_a_dimension_that_never_varies_is_never_kept() -> None:
    """Uncentred features let a constant dimension stand in for liblinear's penalised intercept."""
    start, final = _dead_dimension_latents()
    fit = fit_l1_mask(start, final, strength=3.0, seed=0)
    assert not fit.mask[0, 0, 0] and fit.mask[1, 2, 2]
    shifted = fit_l1_mask(start + 5.0, final + 5.0, strength=3.0, seed=0)  # centred: an offset changes nothing
    assert torch.equal(shifted.mask, fit.mask)


def test_a_seed_past_32_bits_fits_the_same_every_time() -> None:
    start, final = _dead_dimension_latents(60)
    first = fit_l1_mask(start, final, strength=1.0, seed=2**40)
    again = fit_l1_mask(start, final, strength=1.0, seed=2**40)
    assert torch.equal(first.mask, again.mask) and first.accuracy == again.accuracy


def _hand_made(path: Path, mask: torch.Tensor, provenance: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    save_file({"mask": mask.contiguous()}, str(path), metadata={"provenance": json.dumps(provenance)})
    return path


@pytest.mark.parametrize(("values", "said"), [
    (torch.zeros(2, 3, 3, dtype=torch.uint8), r"keeps no latent dimension \(all 0\)"),
    (torch.full((2, 3, 3), -1.0), r"holds -1\.0, not only 0 and 1"),
    (torch.full((2, 3, 3), 0.5), r"holds 0\.5, not only 0 and 1"),
    (torch.full((2, 3, 3), float("nan")), r"holds nan, not only 0 and 1"),
])
def test_a_mask_of_other_values_or_of_nothing_is_refused(tmp_path: Path, values: torch.Tensor, said: str) -> None:
    path = _hand_made(tmp_path / "m.safetensors", values, {})
    with pytest.raises(CheckpointError, match=rf"^generator mask {path} {said}[^\n]*$"):
        load_mask(path, expected_channels=2)


def test_a_bool_or_float_mask_of_0_and_1_loads(tmp_path: Path) -> None:
    kept = torch.zeros(2, 3, 3, dtype=torch.bool)
    kept[1, 2, 2] = True
    for mask in (kept, kept.float()):
        assert torch.equal(load_mask(_hand_made(tmp_path / "m.safetensors", mask, {}), expected_channels=2), kept.float())


def _generator(recipe: Path, mask: Path, image_size: int = 16) -> tuple[Any, Any, ComponentContext]:
    """The recipe's generator config, the generator loaded with ``mask``, and its context."""
    loaded = load_recipe(str(recipe), (f"generator.mask={mask}", f"image_size={image_size}"))
    recipe_ = loaded.recipe
    ctx = ComponentContext("cpu", recipe.parent / "cache", loaded.base_dir, ("blue", "green", "red"), image_size, recipe_.source, recipe_.seed)
    return recipe_.generator, GENERATORS.get("vqgan")(recipe_.generator, ctx), ctx


def test_a_mask_of_another_latent_height_and_width_is_refused_at_loading(tiny_recipe: Path) -> None:
    """It passed loading and was refused by the engine only after the build claimed its output dir."""
    mask = tiny_recipe.parent / "mask.safetensors"
    save_mask(mask, MaskFit(torch.ones(8, 4, 4, dtype=torch.bool), 0.0, 1.0, 1, 1), {})
    config, generator, ctx = _generator(tiny_recipe, mask)
    with pytest.raises(CheckpointError, match=rf"^generator mask {mask} has shape \(8, 4, 4\) but this generator's latent at image_size 16 "
                                              r"is \(8, 8, 8\); fit the mask with this recipe's generator and image_size [^\n]*$"):
        check_generator_mask(config, generator, ctx)


def test_the_dry_run_reads_a_masks_shape_from_its_header(tiny_recipe: Path) -> None:
    """A mask of another height and width passed the dry run and was refused only when loaded."""
    from click.testing import CliRunner

    from builder.cli import main

    mask = tiny_recipe.parent / "mask.safetensors"
    for shape, fine in (((8, 4, 4), False), ((8, 8, 8), True)):
        save_mask(mask, MaskFit(torch.ones(*shape, dtype=torch.bool), 0.0, 1.0, 1, 1), {})
        result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--set", f"generator.mask={mask}"])
        if fine:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code == 2 and (f"generator mask: generator mask {mask} has shape (8, 4, 4) but this generator's latent at "
                                              "image_size 16 is (8, 8, 8)") in result.output, result.output
    # the pixel generator's latent is the image: (3, image_size, image_size)
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--set", "generator={kind: pixel, mask: mask.safetensors}"])
    assert result.exit_code == 2 and "generator mask: generator mask mask.safetensors has shape (8, 8, 8) but this generator's latent at " \
                                     "image_size 16 is (3, 16, 16)" in result.output, result.output
    # a diffusers VAE's: (latent_channels, image_size / 2 ** (levels - 1), ...), from its architecture or config.json
    vae = ("generator={kind: vae, architecture: {block_out_channels: [8, 8], latent_channels: 2, norm_num_groups: 4, "
           "mid_block_add_attention: false}, checkpoint: vae.safetensors, mask: mask.safetensors}")
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--set", vae])
    assert result.exit_code == 2 and "generator mask: generator mask mask.safetensors has shape (8, 8, 8) but this generator's latent at " \
                                     "image_size 16 is (2, 8, 8)" in result.output, result.output
    save_mask(mask, MaskFit(torch.ones(2, 8, 8, dtype=torch.bool), 0.0, 1.0, 1, 1), {})
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--set", vae])
    assert "has shape" not in result.output, result.output


def test_a_mask_fitted_on_another_generator_is_refused(tiny_recipe: Path, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """fit-mask records the generator it fitted on; a mask of the same latent shape from another
    generator was taken, its dimensions meaning other things there. Unrecorded: a warning."""
    import builder.fit_mask

    folder = tiny_recipe.parent  # the tiny oracle accepts too few steps to fit on: the fit itself is stood in for
    monkeypatch.setattr(builder.fit_mask, "fit_l1_mask", lambda start, final, **_: MaskFit(torch.ones(8, 8, 8, dtype=torch.bool), 0.0, 1.0, 1, 1))
    fitted = CliRunner().invoke(main, ["-q", "fit-mask", str(tiny_recipe), "--out", str(folder / "mask.safetensors"), "--samples", "12",
                                       "--device", "cpu", "--cache-dir", str(folder / "cache")])
    assert fitted.exit_code == 0, fitted.output
    mask = folder / "mask.safetensors"
    provenance = json.loads(mask_metadata(mask)["provenance"])
    assert provenance["image_size"] == 16 and "mask" not in provenance["generator"] and len(provenance["generator_weights_sha256"]) == 64
    config, generator, ctx = _generator(tiny_recipe, mask)
    caplog.clear()
    with caplog.at_level("WARNING", logger="builder.sparse"):
        check_generator_mask(config, generator, ctx)  # the generator it was fitted on
    assert "mask" not in caplog.text
    torch.manual_seed(1)  # the same architecture, other weights, in place
    torch.save({"state_dict": TamingVQGAN(yaml.safe_load(TINY_VQGAN_YAML)["model"]["params"]).state_dict()}, folder / "vqgan.ckpt")
    config, generator, ctx = _generator(tiny_recipe, mask)
    with pytest.raises(CheckpointError, match=rf"^generator mask {mask} was fitted on other generator weights \(sha256 [0-9a-f]{{12}}, "
                                              r"these are [0-9a-f]{12}\): [^\n]*fit it again for this generator[^\n]*$"):
        check_generator_mask(config, generator, ctx)
    hand_made = _hand_made(folder / "hand.safetensors", torch.ones(8, 8, 8), {"by": "hand"})
    config, generator, ctx = _generator(tiny_recipe, hand_made)
    with caplog.at_level("WARNING", logger="builder.sparse"):
        check_generator_mask(config, generator, ctx)
    assert f"generator mask {hand_made} records no generator it was fitted on" in caplog.text


def test_the_provenance_comparison() -> None:
    """The weights decide when both sides have them; else the config, less how it is used."""
    pixel = {"generator": {"kind": "pixel", "step_size": None}, "generator_weights_sha256": None, "image_size": 16}
    assert provenance_problem(pixel, {**pixel, "generator": {"kind": "pixel", "step_size": 0.1}}) is None
    assert provenance_problem(pixel, {**pixel, "image_size": 32}) == "at image_size 16, not this recipe's 32"
    other = {**pixel, "generator": {"kind": "vae", "model": "a/b"}}
    assert provenance_problem(other, pixel) == "on another generator (kind 'vae', this one's is 'pixel')"
    weighed = {**other, "generator_weights_sha256": "a" * 64}
    assert provenance_problem(weighed, {**weighed, "generator": {"kind": "vae", "model": "./moved"}}) is None


def test_the_identity_leaves_the_mask_out(tiny_recipe: Path) -> None:
    mask = tiny_recipe.parent / "m.safetensors"
    save_mask(mask, MaskFit(torch.ones(8, 8, 8, dtype=torch.bool), 0.0, 1.0, 1, 1), {})
    config, generator, _ = _generator(tiny_recipe, mask)
    identity = generator_identity(config, generator, 16)
    assert identity == generator_identity(config.model_copy(update={"mask": None}), generator, 16) and "mask" not in identity["generator"]


def test_a_generator_kind_without_a_mask_is_not_checked() -> None:
    """The attributes kind has no ``mask`` setting: loading a recipe with it stopped on the check."""
    from types import SimpleNamespace

    check_generator_mask(SimpleNamespace(kind="attributes"), SimpleNamespace(), ctx=None)  # type: ignore[arg-type]
