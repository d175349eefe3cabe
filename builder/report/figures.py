"""The numbers each report section draws, apart from the drawing, so tests can check them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from builder.metrics import Outcomes, per_class
from builder.report.inputs import Joined


@dataclass(frozen=True)
class TransferMatrix:
    """FMR of each evaluated model (columns) on each benchmark config (rows: built against its
    reference model); NaN where that model was not scored on that config."""

    rows: list[str]
    columns: list[str]
    fmr: np.ndarray
    white_box: np.ndarray


def transfer_matrix(rows: list[dict[str, Any]]) -> TransferMatrix:
    """Rows in the order results name configs, columns in the order they name models; a later
    result of the same model on the same config replaces an earlier one."""
    several = len({row["benchmark_id"] for row in rows}) > 1
    configs: dict[tuple[str, str], str] = {}
    for row in rows:  # a config is named after the reference model it was built against
        configs.setdefault((row["benchmark_id"], row["config"]), row["config"] + (f" @ {row['benchmark_id'][:8]}" if several else ""))
    columns = list(dict.fromkeys(row["name"] for row in rows))
    fmr = np.full((len(configs), len(columns)), np.nan)
    white_box = np.zeros(fmr.shape, dtype=bool)
    keys = list(configs)
    for row in rows:
        at = keys.index((row["benchmark_id"], row["config"])), columns.index(row["name"])
        fmr[at], white_box[at] = float(row["fmr"]), bool(row.get("white_box"))
    return TransferMatrix(list(configs.values()), columns, fmr, white_box)


class _ClassRow(BaseModel):
    """One row of a result's ``per_class`` (data from elsewhere: checked before it is drawn)."""

    model_config = ConfigDict(extra="allow")

    class_name: str = Field(max_length=500)
    fmr: Optional[float] = None


def per_class_from_result(row: dict[str, Any]) -> Optional[list[tuple[str, float]]]:
    """(class, FMR) of the result's own ``per_class`` (score --per-class); None without one or
    when it is not a list of class rows."""
    listed = row.get("per_class")
    if not isinstance(listed, list) or not listed:
        return None
    try:
        checked = [_ClassRow.model_validate(item) for item in listed]
    except ValidationError:
        return None
    return _distinct([(item.class_name, math.nan if item.fmr is None else float(item.fmr)) for item in checked])


def per_class_from_predictions(joined: Joined) -> list[tuple[str, float]]:
    """(class, FMR) computed from the per-sample predictions, as ``score --per-class`` does."""
    samples = joined.samples
    outcomes = Outcomes(samples.labels, joined.pred_original, joined.pred_perturbed, samples.perturbed, samples.steps)
    return _distinct([(str(item["class_name"]), float(item["fmr"])) for item in per_class(outcomes, samples.bench.class_names)])


def _distinct(series: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """``series`` with a repeated class name numbered (``crane #1``, ``crane #2``): the chart
    keys its bars by name, and two classes of one name (ImageNet's two cranes) merged into one."""
    from builder.reporting import distinct_names

    return list(zip(distinct_names([name for name, _ in series]), [value for _, value in series], strict=True))


@dataclass(frozen=True)
class Curve:
    """Accuracy in bins of one attribute's value: bin centres, accuracy, samples per bin."""

    centers: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray


def binned_accuracy(values: np.ndarray, correct: np.ndarray, bins: int) -> Curve:
    """Accuracy in ``bins`` equal-width bins spanning the values (empty bins left out); one bin
    when every value is the same."""
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return Curve(np.array([low]), np.array([float(correct.mean())]), np.array([len(values)]))
    edges = np.linspace(low, high, bins + 1)
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    keep = counts > 0
    return Curve(((edges[:-1] + edges[1:]) / 2)[keep], hits[keep] / counts[keep], counts[keep])


def attribute_curves(joined: Joined, bins: int = 8) -> dict[str, Curve]:
    """Per attribute, the model's accuracy on the perturbed samples (the unperturbed ones sit at
    the identity) against the value the sample ended at; {} without attributes or perturbed samples."""
    samples = joined.samples
    chosen = samples.perturbed.copy()
    correct = joined.pred_perturbed == samples.labels
    curves = {}
    for name, values in samples.attributes.items():
        mask = chosen & np.isfinite(values)
        if mask.any():
            curves[name] = binned_accuracy(values[mask], correct[mask], bins)
    return curves


@dataclass(frozen=True)
class Misses:
    """Perturbed samples the model gets wrong: those shown (indices into the samples), how many
    there are, and how many of them it gets right on the original (the perturbation flipped them)."""

    shown: list[int]
    total: int
    flipped: int


def misclassified(joined: Joined, limit: int) -> Misses:
    """The oracle accepted every perturbed image with its label, so a wrong prediction on one is
    the model's error. Flipped ones first (right on the original), then by key."""
    samples = joined.samples
    wrong = np.flatnonzero(samples.perturbed & (joined.pred_perturbed != samples.labels))
    right_before = joined.pred_original == samples.labels
    ordered = sorted(wrong.tolist(), key=lambda index: (not right_before[index], samples.keys[index]))
    return Misses(ordered[:limit], len(ordered), int(right_before[wrong].sum()))
