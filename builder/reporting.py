"""Plain-text tables of score results for the terminal."""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence


def _pct(value: float, interval: Sequence[float] | None = None) -> str:
    text = f"{100 * value:5.1f}"
    return text + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def setting_of(mode: Optional[str], white_box: Optional[bool]) -> str:
    """How a model was scored: ``dynamic`` (a benchmark regenerated against the model itself,
    whatever its white_box flag says), ``white-box`` (the model a static config was built
    against) or ``transfer``."""
    return "dynamic" if mode == "dynamic" else ("white-box" if white_box else "transfer")


def _setting(result: Any) -> str:
    return setting_of(result.mode, result.white_box)


def format_results(results: Sequence[Any]) -> str:
    width = max([10, *(len(r.config) for r in results)])  # <model>-<generator> configs run long
    header = f"{'benchmark':<24} {'config':<{width}} {'model':<24} {'setting':<9} {'n':>6}  {'SA':<20} {'PA':<20} {'FMR':<20} {'VR':>6} {'steps':>6}"
    lines = [header]
    for r in results:
        fmr = r.intervals.get("fmr")
        fmr_text = f"{r.fmr:5.1f}" + (f" [{fmr[0]:.1f}, {fmr[1]:.1f}]" if fmr else "")
        lines.append(
            f"{r.benchmark[-24:]:<24} {r.config:<{width}} {r.name[-24:]:<24} {_setting(r):<9} {r.n:>6}  "
            f"{_pct(r.sa, r.intervals.get('sa')):<20} {_pct(r.pa, r.intervals.get('pa')):<20} {fmr_text:<20} "
            f"{100 * r.vr:5.1f}% {r.mean_steps:6.1f}"
        )
    lines.append("SA: originals; PA: the generated set (unperturbed samples keep x); FMR = PA / SA x 100; VR: share perturbed; 95% bootstrap intervals")
    return "\n".join(lines)


def format_per_class(result: Any) -> str:
    lines = [f"per class: {result.name} on {result.benchmark} / {result.config}", f"{'class':<16} {'n':>6} {'SA':>7} {'PA':>7} {'FMR':>7}"]
    for row in result.per_class or []:
        lines.append(f"{row['class_name'][:16]:<16} {row['n']:>6} {100 * row['sa']:7.1f} {100 * row['pa']:7.1f} {row['fmr']:7.1f}")
    return "\n".join(lines)


def format_transfer_matrix(results: Sequence[Any]) -> str:
    """FMR of each evaluated model (columns) on each benchmark config (rows, built against its reference)."""
    first_names: dict[str, str] = {}  # one column per model and checkpoint, named as its first result
    for r in results:
        first_names.setdefault(_model_identity(r), r.name)
    models, names = list(first_names), distinct_names(list(first_names.values()))
    rows = list(dict.fromkeys((r.benchmark, r.config, r.reference_model) for r in results))
    cell = {(r.benchmark, r.config, _model_identity(r)): r for r in results}
    labels = [f"{config} ({reference})" for _, config, reference in rows]
    if len({benchmark for benchmark, _, _ in rows}) > 1 and len(set(labels)) < len(labels):
        labels = [f"{label} on {benchmark}" for (benchmark, _, _), label in zip(rows, labels, strict=True)]
    width = min(64, max([40, *(len(label) + 1 for label in labels)]))
    lines = ["transfer matrix: FMR (* white-box)", f"{'built against':<{width}}" + "".join(f"{name[-20:]:>22}" for name in names)]
    for (benchmark, config, _), label in zip(rows, labels, strict=True):
        values = []
        for model in models:
            r = cell.get((benchmark, config, model))
            values.append(f"{r.fmr:.1f}{'*' if r.white_box else ' '}" if r else "-")
        lines.append(f"{_shortened(label, len(config) + 2, width - 1):<{width}}" + "".join(f"{v:>22}" for v in values))
    return "\n".join(lines)


def _shortened(label: str, keep: int, width: int) -> str:
    """``label`` cut to ``width`` in its middle: its first ``keep`` characters (the config's name and " (")
    stay whole, and so does its end; a long reference path loses its middle, marked '...'."""
    if len(label) <= width:
        return label
    tail = max(width - keep - 3, 0)
    return label[:keep] + "..." + (label[-tail:] if tail else "")


def _model_identity(result: Any) -> str:
    """What tells two evaluated models apart: the whole spec (a checkpoint included), not its name."""
    return json.dumps(getattr(result, "model_spec", None) or result.name, sort_keys=True)


def distinct_names(names: Sequence[str]) -> list[str]:
    """``names`` with a repeated one numbered (``m #1``, ``m #2``), so columns and bars of two
    models that share a name (one spec, two checkpoints) stay apart."""
    counts = {name: names.count(name) for name in names}
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{name} #{seen[name]}" if counts[name] > 1 else name)
    return out


def format_side_by_side(static: Sequence[Any], live: Sequence[Any]) -> str:
    lines = ["static vs dynamic FMR (a model far better on the static set than live was tuned to it)"]
    for result in live:
        for other in (s for s in static if s.model_spec == result.model_spec):
            apart = "" if other.n == result.n else " (other samples: a --limit or another recipe; not comparable)"
            lines.append(f"{result.name}: static {other.fmr:.1f} on {other.config} (n {other.n}), dynamic {result.fmr:.1f} (n {result.n}){apart}")
    return "\n".join(lines)
