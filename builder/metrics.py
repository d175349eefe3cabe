"""SA, PA, FMR and friends from per-sample outcomes, with seeded bootstrap intervals.

One meaning per name: ``pa`` is the paper's PA, the accuracy on the whole generated set
(unperturbed samples keep their image), so ``fmr == 100 * pa / sa``; ``pa_perturbed`` is the
accuracy on the perturbed samples only. Files written before this naming (``pa`` perturbed-only,
``pa_all`` the numerator) are read through :func:`upgrade_figures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

METRICS = ("sa", "pa", "pa_perturbed", "fmr", "vr", "mean_steps")


@dataclass(frozen=True)
class Outcomes:
    """Per-sample arrays of one model on one benchmark config."""

    labels: np.ndarray
    pred_original: np.ndarray
    pred_perturbed: np.ndarray
    perturbed: np.ndarray
    steps: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), np.nan)


def metrics_from_counts(weights: np.ndarray, outcomes: Outcomes) -> dict[str, np.ndarray]:
    """Every metric for each row of ``weights`` (B, n): how often each sample is drawn."""
    correct_original = outcomes.pred_original == outcomes.labels
    correct_perturbed = outcomes.pred_perturbed == outcomes.labels
    perturbed = outcomes.perturbed.astype(bool)
    n = weights.sum(axis=1)
    n_perturbed = weights @ perturbed
    sa = _ratio(weights @ correct_original, n)
    pa = _ratio(weights @ correct_perturbed, n)
    return {
        "sa": sa,
        "pa": pa,
        "pa_perturbed": _ratio(weights @ (correct_perturbed & perturbed), n_perturbed),
        "fmr": 100 * _ratio(pa, sa),
        "vr": _ratio(n_perturbed, n),
        "mean_steps": _ratio(weights @ (outcomes.steps * perturbed), n_perturbed),
    }


def compute_metrics(outcomes: Outcomes, *, bootstrap: int = 1000, seed: int = 0, chunk: int = 100) -> dict[str, Any]:
    """Point estimates and 95% percentile-bootstrap intervals (resampling samples, seeded)."""
    n = len(outcomes)
    point = {k: float(v[0]) for k, v in metrics_from_counts(np.ones((1, n)), outcomes).items()}
    result: dict[str, Any] = {"n": n, **point}
    if bootstrap <= 0 or n == 0:
        return result
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    for start in range(0, bootstrap, chunk):
        size = min(chunk, bootstrap - start)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(size)]).astype(np.float64)
        for key, values in metrics_from_counts(counts, outcomes).items():
            draws[key].append(values)
    for key in METRICS:
        values = np.concatenate(draws[key])
        values = values[~np.isnan(values)]
        result[f"{key}_ci"] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else [float("nan")] * 2
    return result


def figure_texts(row: Mapping[str, Any]) -> dict[str, str]:
    """A build's mean steps, FMR and PA (perturbed only) as shown in its card and summary: "–"
    where the figure is undefined (no correct original: FMR; no perturbed sample: the other two),
    which the manifest records as 0.0 and a reader took for "every sample wrong"."""
    perturbed, sa = row.get("num_perturbed", 1), row.get("sa")
    return {
        "mean_steps": "–" if not perturbed else f"{row['mean_steps']:.2f}",
        "fmr": "–" if not sa else f"{row['fmr']:.1f}",
        "pa_perturbed": "–" if not perturbed else f"{100 * row['pa_perturbed']:.1f}",
    }


#: the old names of figures (and their ``_ci`` intervals): perturbed-only ``pa``, numerator ``pa_all``
_OLD_NAMES = {"pa": "pa_perturbed", "pa_all": "pa"}


def upgrade_figures(row: Mapping[str, Any]) -> dict[str, Any]:
    """A result or manifest row under today's names; a row written before the rename (it has
    ``pa_all``) has its ``pa``/``pa_all`` figures, intervals and per-class rows renamed. A
    ``pa_all`` of None is a checked manifest's unset field, not an old row."""
    if row.get("pa_all") is None:
        return {key: value for key, value in row.items() if key != "pa_all"}
    upgraded = {key: value for key, value in row.items() if key not in ("pa", "pa_all", "pa_ci", "pa_all_ci")}
    for old, new in _OLD_NAMES.items():
        for suffix in ("", "_ci"):
            if old + suffix in row:
                upgraded[new + suffix] = row[old + suffix]
    if isinstance(row.get("per_class"), list):
        upgraded["per_class"] = [upgrade_figures(item) if isinstance(item, Mapping) else item for item in row["per_class"]]
    return upgraded


def per_class(outcomes: Outcomes, class_names: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for label, name in enumerate(class_names):
        members = outcomes.labels == label
        if not members.any():
            continue
        subset = Outcomes(*(array[members] for array in (outcomes.labels, outcomes.pred_original, outcomes.pred_perturbed, outcomes.perturbed, outcomes.steps)))
        rows.append({"label": label, "class_name": name, **compute_metrics(subset, bootstrap=0)})
    return rows
