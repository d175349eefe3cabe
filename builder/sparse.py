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
        return features, np.concatenate([np.zeros(len(index)), np.ones(len(index))])

    (x_train, y_train), (x_test, y_test) = pairs(train), pairs(test)
    scale = x_train.std(axis=0) + 1e-8
    model = LogisticRegression(C=1.0 / strength, solver="liblinear", random_state=seed, max_iter=2000, **_l1_penalty())
    model.fit(x_train / scale, y_train)
    chosen = np.abs(model.coef_[0]) > 0
    if not chosen.any():
        raise BuilderError(f"fit-mask kept no latent dimension at --lambda {strength:g}: such a mask would stop every step "
                           f"of every sample; lower --lambda (e.g. {strength / 10:g})")
    accuracy = float(model.score(x_test / scale, y_test))
    if accuracy < NEAR_CHANCE:
        log.warning("fit-mask: held-out accuracy of original vs perturbed is %.1f%%, near chance: the %d dimensions kept may not be "
                    "the ones the perturbation moves; use more --samples or a lower --lambda", 100 * accuracy, int(chosen.sum()))
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
