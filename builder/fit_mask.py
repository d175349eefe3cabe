"""``build-benchmark fit-mask``: perturb a recipe's first images without a mask and fit the
sparse-VQGAN mask on their latents (:mod:`builder.sparse` holds the fit itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from builder.errors import BuilderError
from builder.images import to_nchw
from builder.sparse import MaskFit, fit_l1_mask, generator_identity


def fit_mask_from_recipe(
    loaded: Any,
    *,
    strength: float,
    samples: int,
    config_name: Optional[str],
    device: str,
    cache_dir: Path,
    batch_size: Optional[int] = None,
    generator_name: Optional[str] = None,
) -> tuple[MaskFit, dict[str, Any]]:
    """Perturb the recipe's first ``samples`` images (no mask) and fit the mask on their latents
    (of ``generator_name``'s latent, in a several-generator recipe; default: its first)."""
    from builder.build.runner import load_components, read_unit
    from builder.build.units import WorkUnit
    from builder.components.base import ComponentContext
    from builder.config import recipe_to_dict
    from builder.engine import perturb_batch
    from builder.fileio import sha256_json
    from builder.registry import unknown_name_message
    from builder.sources.base import SourceContext, open_source

    _, generator = loaded.recipe.generator_named(generator_name)
    if "mask" not in type(generator).model_fields:
        raise BuilderError(f"fit-mask: generator kind '{generator.kind}' takes no mask, so a fitted one could not be used; "
                           "fit masks for a latent generator (vqgan, vae, pixel)")
    # the mask is fitted on unmasked steps: the one the recipe names (maybe this fit's own output,
    # not made yet) is neither loaded nor used
    generator = generator.model_copy(update={"mask": None})
    recipe = loaded.recipe.model_copy(update={"generator": generator, "generators": None})  # that generator alone
    source = open_source(recipe.source, SourceContext(loaded.base_dir, cache_dir))
    class_names = tuple(source.class_names)
    context = ComponentContext(device, cache_dir, loaded.base_dir, class_names, recipe.image_size, recipe.source, recipe.seed)
    parts = load_components(recipe, context)
    name = config_name or next(iter(parts.models))
    if name not in parts.models:
        raise BuilderError(unknown_name_message("reference model", name, list(parts.models)))
    total = min(len(source), samples)
    inputs = read_unit(source, WorkUnit(0, 0, total, 1), recipe.image_size, class_names)
    step = batch_size or recipe.batch_size
    starts, finals = [], []
    for begin in range(0, len(inputs.labels), step):
        chunk = slice(begin, begin + step)
        images = to_nchw(inputs.pixels[chunk]).to(device)
        labels = torch.from_numpy(inputs.labels[chunk]).to(device)
        result = perturb_batch(next(iter(parts.generators.values())), parts.oracle, parts.models[name], images, labels,
                               recipe.perturbation_for(generator))
        moved = result.steps > 0
        starts.append(result.latent_start[moved].cpu().numpy())
        finals.append(result.latent_final[moved].cpu().numpy())
    fit = fit_l1_mask(np.concatenate(starts), np.concatenate(finals), strength=strength, seed=loaded.recipe.seed)
    recorded = recipe_to_dict(recipe)
    provenance = {
        "recipe": recipe.name,
        "recipe_sha256": sha256_json(recorded),
        # what the mask's dimensions mean: check_generator_mask refuses it for another generator
        **generator_identity(generator, next(iter(parts.generators.values())), recipe.image_size),
        "reference_model": name,
        "samples": total,
        "lambda": strength,
        "seed": loaded.recipe.seed,
    }
    return fit, provenance
