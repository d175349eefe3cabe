"""The report's sections: each is a chart or table, or the reasons it was left out.

Every string that comes from a result file or a manifest (names, specs, paths, class names,
keys) is escaped here, where it enters the HTML: result files are data from elsewhere.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from builder.report.charts import attribute_chart, fmr_bars, per_class_chart, transfer_heatmap
from builder.report.figures import attribute_curves, misclassified, per_class_from_predictions, per_class_from_result, transfer_matrix
from builder.report.inputs import Joined, Joining, Result, Samples
from builder.reporting import setting_of

log = logging.getLogger(__name__)
esc = html.escape


@dataclass(frozen=True)
class Section:
    """One part of the page: its HTML (escaped already), notes in plain text, whether it shows anything."""

    id: str
    title: str
    body: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def shown(self) -> bool:
        return bool(self.body)


def _number(value: Any, scale: float = 1.0) -> str:
    return f"{scale * float(value):.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def fmr_section(results: Sequence[Result]) -> Section:
    """FMR per result with its interval (bars), and every figure in a table."""
    rows = [result.row for result in results]
    head = "".join(f"<th>{name}</th>" for name in ("model", "config (built against)", "benchmark", "setting", "n", "SA", "PA", "PA perturbed", "FMR [95% CI]", "file"))
    lines = []
    for result in sorted(results, key=lambda r: (-r.row["fmr"], r.row["name"])):
        row = result.row
        low, high = (row.get("fmr_ci") or [None, None])[:2]
        interval = f" [{_number(low)}, {_number(high)}]" if low is not None else ""
        cells = (f"{row['name']} ({row['model']})", f"{row['config']} ({row.get('reference_model', '?')})", f"{row['benchmark']} ({row['benchmark_id'][:8]})",
                 setting_of(row.get("mode"), row.get("white_box")), str(row.get("n", "-")), _number(row["sa"], 100), _number(row["pa"], 100), _number(row.get("pa_perturbed"), 100),
                 f"{_number(row['fmr'])}{interval}", str(result.source))
        lines.append('<tr class="result">' + "".join(f"<td>{esc(str(cell))}</td>" for cell in cells) + "</tr>")
    table = f'<table class="figures"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'
    body = f'<div class="chart">{fmr_bars(rows)}</div>\n{table}'
    notes = ["SA: accuracy on the originals; PA: on the generated set (unperturbed samples keep x); FMR = PA / SA x 100; "
             "PA perturbed: on the perturbed samples only; 95% bootstrap intervals."]
    return Section("fmr", "FMR per model", body, notes)


def transfer_section(results: Sequence[Result]) -> Section:
    """FMR of each evaluated model on each config, i.e. against each reference model."""
    matrix = transfer_matrix([result.row for result in results])
    notes = ["Rows: the benchmark configs, each built against its reference model; columns: the evaluated models. "
             "* white-box (the evaluated model is the reference model); - not scored."]
    if matrix.fmr.size == 1:
        notes.append("One model on one config: score more models or configs to compare transfer.")
    return Section("transfer", "Transfer matrix", f'<div class="chart">{transfer_heatmap(matrix)}</div>', notes)


def _class_series(result: Result, joining: Joining) -> tuple[Optional[list[tuple[str, float]]], str]:
    """A result's per-class FMR, from its own ``per_class`` or else its predictions; why, if not its own."""
    own = per_class_from_result(result.row)
    if own is not None:
        return own, ""
    if isinstance(joining, Joined):
        return per_class_from_predictions(joining), "computed from its per-sample predictions (scored without --per-class)."
    return None, f"skipped, it has no per-class figures (score --per-class) and {joining}"


def grouped_notes(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """``(result label, reason)`` pairs as one line per reason, naming every result it applies to:
    a zoo of a hundred models gets one line, not a hundred."""
    labels: dict[str, list[str]] = {}
    for label, reason in pairs:
        labels.setdefault(reason, []).append(label)
    return [f"{', '.join(names)}: {reason}" for reason, names in labels.items()]


def per_class_section(results: Sequence[Result], joinings: Sequence[Joining]) -> Section:
    """FMR per class, one chart per benchmark, one line per result."""
    pairs: list[tuple[str, str]] = []
    groups: dict[str, list[tuple[str, dict[str, float]]]] = {}
    order: dict[str, list[str]] = {}
    for result, joining in zip(results, joinings, strict=True):
        series, reason = _class_series(result, joining)
        pairs += [(result.label, reason)] if reason else []
        if series is None:
            continue
        bench = result.row["benchmark_id"]
        groups.setdefault(bench, []).append((result.label, dict(series)))
        order[bench] = list(dict.fromkeys([*order.get(bench, []), *(name for name, _ in series)]))
    charts_html = [f'<h3>benchmark {esc(bench[:12])}</h3><div class="chart">{per_class_chart(f"per-class-{index}", order[bench], series)}</div>'
                   for index, (bench, series) in enumerate(groups.items())]
    return Section("per-class", "FMR per class", "\n".join(charts_html), grouped_notes(pairs))


def attribute_section(results: Sequence[Result], joinings: Sequence[Joining]) -> Section:
    """Accuracy against each attribute value, one chart per benchmark config with attributes."""
    pairs: list[tuple[str, str]] = []
    groups: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {}
    for result, joining in zip(results, joinings, strict=True):
        if not isinstance(joining, Joined):
            pairs.append((result.label, f"skipped, {joining}"))
        elif not joining.samples.attributes:
            pairs.append((result.label, "its benchmark config records no attribute values (not made by a generator of kind 'attributes')."))
        else:
            curves = attribute_curves(joining)
            if curves:
                groups.setdefault((result.row["benchmark_id"], result.row["config"]), []).append((result.label, curves))
            else:
                pairs.append((result.label, "its config has no perturbed samples to bin."))
    notes = grouped_notes(pairs)
    parts = [f'<h3>config {esc(config)} of benchmark {esc(bench[:12])}</h3><div class="chart">{attribute_chart(f"attributes-{index}", curves)}</div>'
             for index, ((bench, config), curves) in enumerate(groups.items())]
    if parts:
        notes.insert(0, "Each point: the model's accuracy on the perturbed samples whose value of that attribute falls in one of "
                        "8 equal-width bins (unperturbed samples keep the identity and are left out).")
    return Section("attributes", "Accuracy against attribute values", "\n".join(parts), notes)


def errors_section(results: Sequence[Result], joinings: Sequence[Joining], per_model: int) -> Section:
    """For each model, perturbed images it gets wrong; the oracle kept their label, so each is its error."""
    notes = ["Perturbed images the oracle still labels as their class but the model gets wrong; those it gets right on the "
             "original (flipped by the perturbation) first. Left: original, right: perturbed."]
    strips, pairs = [], []
    for result, joining in zip(results, joinings, strict=True):
        if isinstance(joining, Joined):
            strips.append(_strip(result, joining, per_model))
        else:
            pairs.append((result.label, f"skipped, {joining}"))
    notes += grouped_notes(pairs)
    return Section("errors", "Images each model gets wrong", "\n".join(strips), notes if strips else notes[1:])


def _strip(result: Result, joined: Joined, per_model: int) -> str:
    from builder.gallery import read_images_at

    misses = misclassified(joined, per_model)
    samples = joined.samples
    summary = (f"{misses.total} of {int(samples.perturbed.sum())} perturbed samples wrong, {misses.flipped} of them right on the original; "
               f"showing {len(misses.shown)}.")
    try:
        reader, files = samples.bench.shards(samples.config)
        images = read_images_at(reader, files, [samples.places[index] for index in misses.shown])
    except Exception as error:  # noqa: BLE001 - an unreadable shard costs this strip, not the page
        log.warning("%s: images not read: %s", result.label, error)
        summary += f" The images could not be read ({type(error).__name__}: {error})."
        images = {}
    cards = [_card(samples, joined, index, images.get(samples.places[index])) for index in misses.shown]
    return (f'<div class="strip" data-result="{esc(result.label)}"><h3>{esc(result.label)}</h3><p class="note">{esc(summary)}</p>'
            f'<div class="cards">{"".join(cards)}</div></div>')


def _picture(data: bytes, what: str) -> str:
    """An image as an inline ``<img>`` (large ones as thumbnails); a note for one that does not decode."""
    from builder.gallery import data_uri

    try:
        uri = data_uri(data)[0]
    except Exception as error:  # noqa: BLE001 - a damaged image costs its picture, not the page
        log.warning("report: an %s image does not decode: %s", what, error)
        return f'<span class="note">{what} image unreadable</span>'
    return f'<img src="{uri}" alt="{what}" title="{what}">'


def _card(samples: Samples, joined: Joined, index: int, images: Optional[tuple[bytes, Optional[bytes]]]) -> str:
    names = samples.bench.class_names
    label, predicted, before = (int(array[index]) for array in (samples.labels, joined.pred_perturbed, joined.pred_original))
    perturbed, original = images or (None, None)
    pictures = "".join(_picture(data, what) for data, what in ((original, "original"), (perturbed, "perturbed")) if data is not None)
    key = esc(samples.keys[index])
    return (f'<figure class="miss" data-key="{key}" data-label="{label}" data-pred="{predicted}"><div class="pair">{pictures}</div>'
            f'<figcaption><span class="key">{key}</span><br><b>{esc(names[label])}</b> &rarr; <span class="wrong">{esc(names[predicted])}</span>'
            f'<br>on the original: {esc(names[before])}</figcaption></figure>')
