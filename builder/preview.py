"""preview.png: originals above perturbed images, per config, with labels and theta's predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from builder.fileio import atomic_write

TILE = 96
CAPTION = 28


def render_preview(path: Path, rows: dict[str, list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]], class_names: tuple[str, ...]) -> None:
    from PIL import Image, ImageDraw

    columns = max((len(samples) for samples in rows.values()), default=1) or 1
    band = 18 + 2 * TILE + CAPTION
    canvas = Image.new("RGB", (columns * TILE, max(1, len(rows)) * band), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (config, samples) in enumerate(rows.items()):
        top = row * band
        draw.text((4, top + 2), f"reference model: {config}  (top: original, bottom: perturbed)", fill="black")
        for column, (original, perturbed, record) in enumerate(samples):
            left = column * TILE
            for offset, pixels in ((18, original), (18 + TILE, perturbed)):
                tile = Image.fromarray(pixels).resize((TILE, TILE), Image.Resampling.NEAREST)
                canvas.paste(tile, (left, top + offset))
            before, after = class_names[record["pred_before"]], class_names[record["pred_after"]]
            color = "darkred" if record["pred_after"] != record["label"] else "darkgreen"
            draw.text((left + 2, top + 18 + 2 * TILE), f"{record['class_name']}, {record['steps']} steps", fill="black")
            draw.text((left + 2, top + 18 + 2 * TILE + 12), f"{before}->{after}", fill=color)
    with atomic_write(path) as handle:
        canvas.save(handle, format="PNG")
