"""The paper's sparse VQGAN: find the few latent dimensions that carry "style".

Encode originals, perturb them (Algorithm 1), and fit an L1-regularised logistic regression
that tells original latents from perturbed ones; the dimensions with non-zero weight form the
mask. A recipe's ``generator.mask`` then lets only those dimensions move.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from builder.errors import BuilderError, CheckpointError
from builder.fileio import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskFit:
    mask: torch.Tensor  # bool (C, H, W)
    sparsity: float  # share of latent dimensions left out
    accuracy: float  # held-out accuracy of original-vs-perturbed classification
    train_pairs: int
    test_pairs: int


def fit_l1_mask(start: np.ndarray, final: np.ndarray, *, strength: float, seed: int, held_out: float = 0.25) -> MaskFit:
    """``start``/``final``: (N, C, H, W) latents before and after perturbation, same samples."""
    from sklearn.linear_model import LogisticRegression

    if len(start) < 4:
        raise BuilderError(f"fit-mask needs at least 4 perturbed samples with accepted steps, got {len(start)}; use more --samples")
    shape = start.shape[1:]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(start))
    cut = max(1, int(round(len(start) * held_out)))
    test, train = order[:cut], order[cut:]

    def pairs(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = np.concatenate([start[index].reshape(len(index), -1), final[index].reshape(len(index), -1)])
        return features, np.concatenate([np.zeros(len(index)), np.ones(len(index))])

    (x_train, y_train), (x_test, y_test) = pairs(train), pairs(test)
    scale = x_train.std(axis=0) + 1e-8
    model = LogisticRegression(C=1.0 / strength, solver="liblinear", random_state=seed, max_iter=2000, **_l1_penalty())
    model.fit(x_train / scale, y_train)
    chosen = np.abs(model.coef_[0]) > 0
    accuracy = float(model.score(x_test / scale, y_test))
    mask = torch.from_numpy(chosen.reshape(shape))
    return MaskFit(mask, float(1 - chosen.mean()), accuracy, len(train), len(test))


def _l1_penalty() -> dict[str, Any]:
    """scikit-learn 1.8 replaced ``penalty="l1"`` by ``l1_ratio=1``; support both."""
    import sklearn

    major, minor = (int(part) for part in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


def save_mask(path: Path, fit: MaskFit, provenance: dict[str, Any]) -> None:
    from safetensors.torch import save

    metadata = {
        "sparsity": f"{fit.sparsity:.6f}",
        "heldout_accuracy": f"{fit.accuracy:.6f}",
        "train_pairs": str(fit.train_pairs),
        "test_pairs": str(fit.test_pairs),
        "provenance": json.dumps(provenance, sort_keys=True),
    }
    data = save({"mask": fit.mask.to(torch.uint8).contiguous()}, metadata=metadata)
    with atomic_write(path) as handle:
        handle.write(data)


def load_mask(path: Path, expected_channels: Optional[int] = None) -> torch.Tensor:
    """A float (C, H, W) mask of 0/1 from a ``fit-mask`` file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"generator mask not found: {path}; create it with 'build-benchmark fit-mask'")
    try:
        mask = load_file(str(path))["mask"]
    except (SafetensorError, KeyError, OSError) as error:
        raise CheckpointError(f"generator mask {path} is not a fit-mask file ({error})") from None
    if mask.dim() != 3 or (expected_channels is not None and mask.shape[0] != expected_channels):
        raise CheckpointError(f"generator mask {path} has shape {tuple(mask.shape)}; expected ({expected_channels}, H, W)")
    return mask.float()


def mask_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata() or {})


def fit_mask_from_recipe(
    loaded: Any,
    *,
    strength: float,
    samples: int,
    config_name: Optional[str],
    device: str,
    cache_dir: Path,
    batch_size: Optional[int] = None,
) -> tuple[MaskFit, dict[str, Any]]:
    """Perturb the recipe's first ``samples`` images (no mask) and fit the mask on their latents."""
    from builder.build.runner import load_components, read_unit
    from builder.build.units import WorkUnit
    from builder.components.base import ComponentContext
    from builder.config import recipe_to_dict
    from builder.engine import perturb_batch
    from builder.fileio import sha256_json
    from builder.registry import unknown_name_message
    from builder.sources.base import SourceContext, open_source

    recipe = loaded.recipe
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
        images = torch.from_numpy(inputs.pixels[chunk]).permute(0, 3, 1, 2).contiguous().to(device)
        labels = torch.from_numpy(inputs.labels[chunk]).to(device)
        result = perturb_batch(parts.generator, parts.oracle, parts.models[name], images, labels, recipe.perturbation)
        moved = result.steps > 0
        starts.append(result.latent_start[moved].cpu().numpy())
        finals.append(result.latent_final[moved].cpu().numpy())
    fit = fit_l1_mask(np.concatenate(starts), np.concatenate(finals), strength=strength, seed=loaded.recipe.seed)
    recorded = recipe_to_dict(recipe)
    provenance = {
        "recipe": recipe.name,
        "recipe_sha256": sha256_json(recorded),
        "generator": recorded["generator"],
        "reference_model": name,
        "samples": total,
        "lambda": strength,
        "seed": loaded.recipe.seed,
    }
    return fit, provenance
