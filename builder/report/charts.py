"""The report's charts: matplotlib figures written as SVG for inlining into the page.

Every label comes from result files or manifests, so mathtext is off (a ``$`` in a model name
is text, not a formula to parse), and each figure has its own hash salt: the ids of its clip
paths and markers are stable from run to run and never collide with another inlined figure's.
"""

from __future__ import annotations

import contextlib
import io
import re
from typing import Any, Iterator

import numpy as np

from builder.report.figures import Curve, TransferMatrix

#: more classes than this: the per-class chart numbers its ticks instead of naming each class
NAMED_TICKS = 40


@contextlib.contextmanager
def chart_style(name: str) -> Iterator[None]:
    """rcParams for one chart, from building its figure to writing its SVG."""
    import matplotlib

    matplotlib.use("Agg")
    style: dict[str, Any] = {"text.parse_math": False, "svg.hashsalt": f"fmr-report-{name}", "svg.id": f"chart-{name}",
                             "svg.fonttype": "none", "font.size": 9}
    with matplotlib.rc_context(style):  # type: ignore[arg-type]
        yield


def short(label: str, limit: int = 40) -> str:
    """A chart label of at most ``limit`` characters: the end of a long one (names derived from
    paths differ at their end); the page's tables give every name in full."""
    return label if len(label) <= limit else "..." + label[-(limit - 3):]


def to_svg(figure: Any) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, DOCTYPE or metadata); closes it."""
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    finally:
        plt.close(figure)
    text = buffer.getvalue().decode("utf-8")
    text = text[text.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)


def fmr_bars(rows: list[dict[str, Any]]) -> str:
    """FMR per result with its 95% interval: the leaderboard's chart, as SVG."""
    from builder.leaderboard import fmr_figure

    with chart_style("fmr"):
        return to_svg(fmr_figure(rows))


def transfer_heatmap(matrix: TransferMatrix) -> str:
    """The transfer matrix as a heatmap of FMR, each cell written on it (* white-box, - not scored)."""
    from matplotlib import pyplot as plt

    with chart_style("transfer"):
        rows, columns = matrix.fmr.shape
        row_labels, column_labels = [short(label) for label in matrix.rows], [short(label) for label in matrix.columns]
        width = 2.2 + 1.1 * columns + 0.07 * max(map(len, row_labels))
        figure, axes = plt.subplots(figsize=(width, 1.2 + 0.5 * rows + 0.05 * max(map(len, column_labels))), layout="constrained")
        top = max(100.0, float(np.nanmax(matrix.fmr)) if np.isfinite(matrix.fmr).any() else 100.0)
        image = axes.imshow(np.ma.masked_invalid(matrix.fmr), cmap="viridis", vmin=0, vmax=top, aspect="auto")
        axes.set_xticks(range(columns), labels=column_labels, rotation=30, ha="right")
        axes.set_yticks(range(rows), labels=row_labels)
        axes.set_xlabel("evaluated model")
        axes.set_ylabel("built against (config)")
        for (i, j), value in np.ndenumerate(matrix.fmr):
            text = "-" if np.isnan(value) else f"{value:.1f}{'*' if matrix.white_box[i, j] else ''}"
            light = np.isnan(value) or value / top >= 0.6  # viridis is dark below that
            axes.text(j, i, text, ha="center", va="center", color="black" if light else "white")
        figure.colorbar(image, ax=axes, label="FMR")
        return to_svg(figure)


def per_class_chart(name: str, classes: list[str], series: list[tuple[str, dict[str, float]]]) -> str:
    """FMR per class, one line per result (a gap where a result has no figure for a class)."""
    from matplotlib import pyplot as plt

    with chart_style(name):
        figure, axes = plt.subplots(figsize=(min(16.0, 3.0 + 0.3 * len(classes)), 3.6), layout="constrained")
        positions = np.arange(len(classes))
        for label, figures in series:
            axes.plot(positions, [figures.get(c, np.nan) for c in classes], marker="o", markersize=3, linewidth=1, label=short(label, 60))
        if len(classes) <= NAMED_TICKS:
            axes.set_xticks(positions, labels=classes, rotation=45, ha="right")
        else:
            axes.set_xlabel("class index")
        axes.set_ylabel("FMR")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        figure.legend(fontsize=8, loc="outside lower center")
        return to_svg(figure)


def attribute_chart(name: str, curves: list[tuple[str, dict[str, Curve]]]) -> str:
    """Accuracy against each attribute's value, one panel per attribute, one line per result."""
    from matplotlib import pyplot as plt

    attributes = list(dict.fromkeys(attribute for _, by_name in curves for attribute in by_name))
    with chart_style(name):
        figure, panels = plt.subplots(1, len(attributes), figsize=(0.5 + 3.0 * len(attributes), 3.0), squeeze=False, layout="constrained")
        for axes, attribute in zip(panels[0], attributes, strict=True):
            for label, by_name in curves:
                if attribute in by_name:
                    curve = by_name[attribute]
                    axes.plot(curve.centers, 100 * curve.accuracy, marker="o", markersize=3, linewidth=1, label=short(label, 60))
            axes.set_title(attribute)
            axes.set_ylim(-3, 105)
            axes.grid(alpha=0.3)
        panels[0][0].set_ylabel("accuracy on perturbed samples (%)")
        figure.legend(*panels[0][0].get_legend_handles_labels(), fontsize=8, loc="outside lower center")
        return to_svg(figure)
