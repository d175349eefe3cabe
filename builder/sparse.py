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
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch

from builder.errors import BuilderError, CheckpointError
from builder.fileio import atomic_write

if TYPE_CHECKING:
    from builder.components.base import ComponentContext

log = logging.getLogger(__name__)


#: a held-out accuracy below this tells original from perturbed latents little better than a coin
NEAR_CHANCE = 0.6


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
        return features.astype(np.float64), np.concatenate([np.zeros(len(index)), np.ones(len(index))])

    (x_train, y_train), (x_test, y_test) = pairs(train), pairs(test)
    live, standardise = _standardiser(x_train, len(start))
    model = LogisticRegression(C=1.0 / strength, solver="liblinear", random_state=solver_seed(seed), max_iter=2000, **_l1_penalty())
    model.fit(standardise(x_train), y_train)
    chosen = np.zeros(x_train.shape[1], dtype=bool)
    chosen[live] = np.abs(model.coef_[0]) > 0
    if not chosen.any():
        raise BuilderError(f"fit-mask kept no latent dimension at --lambda {strength:g}: such a mask would stop every step "
                           f"of every sample; lower --lambda (e.g. {strength / 10:g})")
    accuracy = float(model.score(standardise(x_test), y_test))
    if accuracy < NEAR_CHANCE:
        log.warning("fit-mask: held-out accuracy of original vs perturbed is %.1f%%, near chance: the %d dimensions kept may not be "
                    "the ones the perturbation moves; use more --samples or a lower --lambda", 100 * accuracy, int(chosen.sum()))
    mask = torch.from_numpy(chosen.reshape(shape))
    return MaskFit(mask, float(1 - chosen.mean()), accuracy, len(train), len(test))


def _standardiser(x_train: np.ndarray, samples: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The dimensions that vary over the fitting samples, and the map that centres and scales
    them. liblinear penalises its intercept, so an uncentred feature stood in for it: a latent
    dimension equal in every sample, never moved, was kept. A constant one is left out of the fit."""
    live = np.ptp(x_train, axis=0) > 0
    if not live.any():
        raise BuilderError(f"fit-mask: every latent dimension is the same in all {samples} samples, before and after perturbing: "
                           "nothing to fit; check the generator's encoder, or use more --samples")
    mean = x_train[:, live].mean(axis=0)
    scale = x_train[:, live].std(axis=0)
    return live, lambda x: (x[:, live] - mean) / scale


def solver_seed(seed: int) -> int:
    """The recipe's seed (up to 2**63) as the 32-bit ``random_state`` scikit-learn takes, the same
    on every run: a larger one stopped fit-mask, after its perturbing, with InvalidParameterError."""
    return int(seed) % 2**32


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
        handle.write(sorted_header(data))


def sorted_header(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted: safetensors writes its metadata in
    hash order, which changes between processes, and the same fit must give the same bytes. The
    header is padded to 8 bytes with spaces, as the format asks; the tensor data is unchanged."""
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + size :]


def load_mask(path: Path, expected_channels: Optional[int] = None) -> torch.Tensor:
    """A float (C, H, W) mask of 0/1 from a ``fit-mask`` file. A mask may come from a URL or the
    Hub: one of other values, or of no dimension kept, would run a build whose steps move nothing."""
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
    if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
        bad = mask[~((mask == 0) | (mask == 1))].flatten()[0].item()
        raise CheckpointError(f"generator mask {path} holds {bad!r}, not only 0 and 1 (1 = the latent dimension may move); "
                              "make it with 'build-benchmark fit-mask'")
    if not mask.any():
        raise CheckpointError(f"generator mask {path} keeps no latent dimension (all 0): no step would move anything; "
                              "fit it again with a lower --lambda")
    return mask.float()


#: the provenance keys :func:`generator_identity` gives; a mask without them records no generator
IDENTITY_KEYS = ("generator", "generator_weights_sha256", "image_size")


def generator_identity(config: Any, generator: Any, image_size: int) -> dict[str, Any]:
    """What a mask's dimensions mean, recorded by fit-mask in its provenance: the generator's config
    (its mask left out), the sha256 of its weights (None without a torch ``model``) and image_size."""
    from builder.checkpoints import weights_fingerprint

    settings = {key: value for key, value in config.model_dump(mode="json").items() if key != "mask"}
    model = getattr(generator, "model", None)
    weights = weights_fingerprint(model) if isinstance(model, torch.nn.Module) else None
    return {"generator": settings, "generator_weights_sha256": weights, "image_size": image_size}


def check_generator_mask(config: Any, generator: Any, ctx: "ComponentContext", where: str = "generator") -> None:
    """Refuse a loaded generator's mask that does not fit it: of another latent shape at the
    recipe's image_size (else the engine refused it only after the build claimed its output
    dir), or fitted on another generator (its dimensions mean other things there). Call it once
    the generator is loaded, before the build touches its output."""
    from builder.checkpoints import fetch_location

    mask = getattr(generator, "mask", None)
    if getattr(config, "mask", None) is None or mask is None:  # a kind without a mask (attributes) too
        return
    path = fetch_location(config.mask, ctx.locations)
    with torch.no_grad():
        latent = tuple(generator.encode(torch.zeros(1, 3, ctx.image_size, ctx.image_size, device=ctx.device)).shape[1:])
    if tuple(mask.shape) != latent:
        raise CheckpointError(f"{where} mask {path} has shape {tuple(mask.shape)} but this generator's latent at image_size "
                              f"{ctx.image_size} is {latent}; fit the mask with this recipe's generator and image_size ('build-benchmark fit-mask')")
    recorded = _provenance(path)
    if not all(key in recorded for key in IDENTITY_KEYS):
        log.warning("%s mask %s records no generator it was fitted on (hand-made, or fitted by an older version): it cannot be "
                    "checked against this generator; fit it again with 'build-benchmark fit-mask' to be sure", where, path)
        return
    problem = provenance_problem(recorded, generator_identity(config, generator, ctx.image_size))
    if problem:
        raise CheckpointError(f"{where} mask {path} was fitted {problem}: its dimensions mean other things here; "
                              "fit it again for this generator with 'build-benchmark fit-mask'")


def _provenance(path: Path) -> dict[str, Any]:
    """The provenance fit-mask saved in the file, {} when there is none or it is not JSON."""
    try:
        recorded = json.loads(mask_metadata(path).get("provenance", "{}"))
    except json.JSONDecodeError:
        return {}
    return recorded if isinstance(recorded, dict) else {}


def provenance_problem(recorded: dict[str, Any], current: dict[str, Any]) -> Optional[str]:
    """How the generator a mask was fitted on differs from ``current`` (:func:`generator_identity`),
    None when it does not. The weights decide when both sides have them, so a moved checkpoint or
    a new step_size still fits; else the config does, less the settings of how it is used."""
    from builder.components.base import NOT_SHAPING_WEIGHTS

    if recorded["image_size"] != current["image_size"]:
        return f"at image_size {recorded['image_size']}, not this recipe's {current['image_size']}"
    old, new = recorded["generator_weights_sha256"], current["generator_weights_sha256"]
    if old is not None and new is not None:
        return None if old == new else f"on other generator weights (sha256 {str(old)[:12]}, these are {new[:12]})"
    def used(settings: Any) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k not in NOT_SHAPING_WEIGHTS} if isinstance(settings, dict) else {}

    was, now = used(recorded["generator"]), used(current["generator"])
    differ = sorted(key for key in was.keys() | now.keys() if was.get(key) != now.get(key))
    if differ:
        key = differ[0]
        return f"on another generator ({key} {was.get(key)!r}, this one's is {now.get(key)!r})"
    return None


def mask_shape_problem(location: str, ctx: Any, latent: tuple[int, ...], image_size: int) -> Optional[str]:
    """For a dry run: why the mask file at ``location`` cannot fit a latent of shape ``latent``
    (read from the file's header, nothing loaded), or None, also when the file is not here yet
    (a download, or fit-mask not run: the weights checks say so)."""
    from safetensors import SafetensorError, safe_open

    from builder.checkpoints import find_location

    try:
        found = find_location(location, ctx)
    except BuilderError:
        return None
    if found.path is None or not found.ready:
        return None
    try:
        with safe_open(str(found.path), "pt") as handle:
            shape = tuple(handle.get_slice("mask").get_shape())
    except (SafetensorError, KeyError, OSError) as error:
        return f"generator mask {location} is not a fit-mask file ({error})"
    if shape != latent:
        return (f"generator mask {location} has shape {shape} but this generator's latent at image_size {image_size} is {latent}; "
                "fit the mask with this recipe's generator and image_size ('build-benchmark fit-mask')")
    return None


def mask_shape_checks(config: Any, ctx: Any, where: str, checks: list[Any], latent: Callable[[int], tuple[int, ...]]) -> list[Any]:
    """A generator kind's dry-run ``checks`` and, when they passed and it has a ``mask``, one
    more if the mask cannot fit ``latent(image_size)`` (see :func:`mask_shape_problem`)."""
    from builder.preflight import Check

    if config.mask is None or ctx.image_size is None or any(check.problem for check in checks):
        return checks
    wrong = mask_shape_problem(config.mask, ctx, latent(ctx.image_size), ctx.image_size)
    return [*checks, Check(f"{where} mask", config.mask, f"{where} mask: {wrong}")] if wrong else checks


def mask_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return dict(handle.metadata() or {})
