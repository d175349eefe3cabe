"""A Hugging Face data set through ``datasets.load_dataset`` (Hub id or local dir, HF cache)."""

from __future__ import annotations

import io
from typing import Any, Iterator, Optional

from builder.config import SourceConfig
from builder.errors import SourceError
from builder.sources.base import SOURCES, SourceContext, SourceItem, check_class_names


class HuggingFaceConfig(SourceConfig):
    path: str
    name: Optional[str] = None
    split: str = "test"
    revision: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"


def _open_encoded(value: Any):  # -> PIL.Image.Image
    from PIL import Image

    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    raise ValueError("empty image cell")


@SOURCES.register("huggingface", config=HuggingFaceConfig, description="datasets.load_dataset(path, name, split)")
class HuggingFaceSource:
    def __init__(self, config: HuggingFaceConfig, ctx: SourceContext) -> None:
        import datasets

        try:
            table = datasets.load_dataset(config.path, config.name, split=config.split, revision=config.revision)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SourceError(f"huggingface source '{config.path}' split '{config.split}': {first}") from None
        for column in (config.image_column, config.label_column):
            if column not in table.column_names:
                raise SourceError(
                    f"huggingface source '{config.path}': no column '{column}'; "
                    f"columns: {', '.join(table.column_names)}"
                )
        feature = table.features[config.label_column]
        found = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else ()
        if not found and config.class_names is None:
            raise SourceError(
                f"huggingface source '{config.path}': column '{config.label_column}' is not a ClassLabel; "
                "set source.class_names"
            )
        self.class_names = check_class_names(config.class_names, found, f"huggingface {config.path}")
        self._table = table.cast_column(config.image_column, datasets.Image(decode=False))
        self._image_column = config.image_column
        self._label_column = config.label_column
        self._name = config.path

    def __len__(self) -> int:
        return len(self._table)

    def labels(self) -> list[int]:
        """All labels, read from their column alone (no image bytes)."""
        return [int(label) for label in self._table.select_columns([self._label_column])[self._label_column]]

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        stop = min(stop, len(self))
        if start >= stop:
            return
        rows = self._table[start:stop]
        for offset, (image, label) in enumerate(zip(rows[self._image_column], rows[self._label_column])):
            index = start + offset
            yield SourceItem(index, f"{self._name}/{index}", int(label), lambda v=image: _open_encoded(v))
