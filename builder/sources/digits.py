"""The embedded data set: scikit-learn's 8x8 handwritten digits (ships in the wheel, no network)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Literal

import numpy as np

from builder.config import SourceConfig
from builder.sources.base import SOURCES, SourceContext, SourceItem, check_class_names, open_preflight

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class DigitsConfig(SourceConfig):
    split: Literal["train", "test", "all"] = "test"

    def splits_overlap(self, first: str, second: str) -> bool:
        return first == second or "all" in (first, second)


def _to_image(pixels: np.ndarray):  # -> PIL.Image.Image
    from PIL import Image

    return Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")


@SOURCES.register("sklearn-digits", config=DigitsConfig, description="scikit-learn's 8x8 digits; every 4th sample is test", preflight=open_preflight)
class DigitsSource:
    def __init__(self, config: DigitsConfig, ctx: SourceContext) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        indices = np.arange(len(data.target))
        if config.split == "test":
            indices = indices[indices % 4 == 0]
        elif config.split == "train":
            indices = indices[indices % 4 != 0]
        self._images = data.images[indices]
        self._labels = data.target[indices]
        self._ids = indices
        self.class_names = check_class_names(config.class_names, DIGIT_NAMES, "sklearn-digits")

    def __len__(self) -> int:
        return len(self._labels)

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        for i in range(start, min(stop, len(self))):
            yield SourceItem(i, f"digits/{int(self._ids[i])}", int(self._labels[i]), partial(_to_image, self._images[i]))
