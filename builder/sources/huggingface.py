"""A Hugging Face data set through ``datasets.load_dataset`` (Hub id or local dir, HF cache)."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from builder.config import SourceConfig
from builder.errors import SourceError, first_line
from builder.paths import in_recipe_dir
from builder.preflight import Check
from builder.sources.base import (
    SOURCES,
    SourceContext,
    SourceItem,
    check_class_names,
    check_label,
    declared_classes,
    open_preflight,
)
from builder.sources.decode import open_untrusted
from builder.sources.imagefolder import open_image

#: the integer dtypes a label column may have (a float or a string is not a class index)
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


class HuggingFaceConfig(SourceConfig):
    path: str
    name: str | None = None
    split: str = "test"
    revision: str | None = None
    image_column: str = "image"
    label_column: str = "label"

    def splits_overlap(self, first: str, second: str) -> bool:
        """Whether two ``datasets`` split specs (``train``, ``train[:30]``, ``train[10%:]+test``)
        may share samples: parts of one split overlap unless both are slices in one unit with
        disjoint ranges. Compared as text, ``train[:30]`` and ``train`` were two splits, and a
        component trained on the 30 evaluated images."""
        ours, theirs = split_parts(first), split_parts(second)
        if ours is None or theirs is None:  # a spec this cannot read: one split name in common is enough
            return first == second or bool(split_names(first) & split_names(second))
        return any(_parts_overlap(one, other) for one in ours for other in theirs)


#: one part of a split spec: ``name``, or ``name[from:to]`` in samples or percent
SPLIT_PART = re.compile(r"^\s*([\w.-]+)\s*(?:\[\s*(-?\d+)?\s*(%)?\s*:\s*(-?\d+)?\s*(%)?\s*\])?\s*$")


def split_names(spec: str) -> set[str]:
    """The split names a spec reads (``train[:10%]+test`` -> {train, test})."""
    return {part.split("[", 1)[0].strip() for part in spec.split("+")}


def split_parts(spec: str) -> list[tuple[str, int | None, int | None, str]] | None:
    """``spec``'s parts as (name, from, to, unit); None when a part is not of that form."""
    parts = []
    for text in spec.split("+"):
        match = SPLIT_PART.match(text)
        if match is None:
            return None
        name, low, low_pct, high, high_pct = match.groups()
        unit = "%" if (low_pct or high_pct) else "n"
        parts.append((name, None if low is None else int(low), None if high is None else int(high), unit))
    return parts


def _parts_overlap(one: tuple[str, int | None, int | None, str], other: tuple[str, int | None, int | None, str]) -> bool:
    if one[0] != other[0]:
        return False
    sliced = [part for part in (one, other) if part[1] is not None or part[2] is not None]
    if len(sliced) < 2 or one[3] != other[3] or any(v is not None and v < 0 for part in sliced for v in part[1:3]):
        return True  # a whole split, other units or counting from the end: may share samples
    low = max(one[1] or 0, other[1] or 0)
    high = min(float("inf") if one[2] is None else one[2], float("inf") if other[2] is None else other[2])
    return low < high


def _open_encoded(value: Any):  # -> PIL.Image.Image
    if isinstance(value, dict) and value.get("bytes"):
        return open_untrusted(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return open_image(value["path"])  # a path cell could name a FIFO or a device: never opened
    raise ValueError("empty image cell")


def local_dir(path: str, base_dir: Path) -> Path | None:
    """The folder ``source.path`` names, taken from the recipe's folder like every path a recipe
    gives (and as the build's fingerprint takes it), or None for a Hub id. A name that can only be
    a path (``./x``, ``~/x``, ``/x``) is local even when missing: it must not reach the Hub."""
    local = in_recipe_dir(path, base_dir)
    if local.exists() or path.startswith((".", "~", "/")):
        return local.absolute()
    return None


def huggingface_preflight(config: HuggingFaceConfig, ctx: SourceContext, where: str) -> list[Check]:
    """A local data set dir is opened and counted; a Hub one is not fetched for a dry run."""
    if local_dir(config.path, ctx.base_dir) is not None:
        return open_preflight(config, ctx, where)
    names = declared_classes(config)
    detail = f"{config.kind} {config.path}: samples and classes known at run time (not opened offline)"
    return [Check(where, detail, classes=len(names) if names else None, class_names=names)]


def _load(config: HuggingFaceConfig, ctx: SourceContext) -> Any:
    """``load_dataset`` of a local folder by its absolute path (``datasets`` would take a relative
    one from the current directory) or of a Hub id; its failures as one line."""
    import datasets

    local = local_dir(config.path, ctx.base_dir)
    what = f"huggingface source '{config.path}'"
    if local is not None and not local.exists():
        raise SourceError(f"{what}: no folder {local}; check source.path (a relative path is taken from the recipe's folder)")
    if local is None and Path(config.path).exists():  # datasets would load it instead of the Hub id
        raise SourceError(
            f"{what}: ./{config.path} is in the current directory, not in the recipe's folder {ctx.base_dir}; "
            "give source.path relative to the recipe (or run elsewhere to load the Hub data set)"
        )
    try:
        return datasets.load_dataset(str(local or config.path), config.name, split=config.split, revision=config.revision)
    except (FileNotFoundError, ValueError, ConnectionError, OSError, datasets.exceptions.DatasetsError) as error:
        raise SourceError(f"{what} split '{config.split}': {first_line(error)}") from None
    except RuntimeError as error:
        if "scripts are no longer supported" not in str(error):
            raise
        raise SourceError(
            f"{what} is a script data set, which datasets {datasets.__version__} no longer runs; "
            "set source.revision: refs/convert/parquet (the Hub's Parquet copy) or convert it to Parquet"
        ) from None


@SOURCES.register("huggingface", config=HuggingFaceConfig, description="datasets.load_dataset(path, name, split)",
                  preflight=huggingface_preflight)
class HuggingFaceSource:
    def __init__(self, config: HuggingFaceConfig, ctx: SourceContext) -> None:
        import datasets

        table = _load(config, ctx)
        for column in (config.image_column, config.label_column):
            if column not in table.column_names:
                raise SourceError(
                    f"huggingface source '{config.path}': no column '{column}'; "
                    f"columns: {', '.join(table.column_names)}"
                )
        feature = table.features[config.label_column]
        if not isinstance(feature, datasets.ClassLabel) and not (isinstance(feature, datasets.Value) and feature.dtype in INT_DTYPES):
            held = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
            raise SourceError(
                f"huggingface source '{config.path}': column '{config.label_column}' holds {held} values, not class indices; "
                "set source.label_column to an integer or ClassLabel column"
            )
        found = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else ()
        if not found and config.class_names is None:
            raise SourceError(
                f"huggingface source '{config.path}': column '{config.label_column}' is not a ClassLabel; "
                "set source.class_names"
            )
        self.class_names = check_class_names(config.class_names, found, f"huggingface {config.path}")
        try:
            self._table = table.cast_column(config.image_column, datasets.Image(decode=False))
        except (ValueError, TypeError, NotImplementedError) as error:  # pyarrow's ArrowInvalid is a ValueError
            held = getattr(table.features[config.image_column], "dtype", type(table.features[config.image_column]).__name__)
            raise SourceError(
                f"huggingface source '{config.path}': column '{config.image_column}' holds {held} values, not images "
                f"({first_line(error)}); set source.image_column to an image column"
            ) from None
        self._image_column = config.image_column
        self._label_column = config.label_column
        self._name = config.path

    def __len__(self) -> int:
        return len(self._table)

    def labels(self) -> list[int]:
        """All labels, read from their column alone (no image bytes)."""
        column = self._table.select_columns([self._label_column])[self._label_column]
        return [self._label(label, index) for index, label in enumerate(column)]

    def listing(self, used: int) -> list[list[Any]]:
        """Each row's id and label, read from the label column alone (no image bytes); a
        label past ``used`` is not read (see :func:`builder.sources.base.listing_digest`)."""
        column = self._table.select([*range(min(used, len(self)))]).select_columns([self._label_column])[self._label_column]
        return [[f"{self._name}/{index}", self._label(label, index)] for index, label in enumerate(column)]

    def _label(self, value: Any, index: int) -> int:
        """A missing label (None, or ClassLabel's -1 for "unlabelled") is the data set's gap, not a
        sample to guess: a test split without labels is the usual cause."""
        source_id = f"{self._name}/{index}"
        if value is None or value == -1:
            raise SourceError(
                f"huggingface sample {source_id} has no label ({value}: unlabelled); "
                "pick a labelled split or set source.label_column"
            )
        return check_label(int(value), self.class_names, source_id)

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        stop = min(stop, len(self))
        if start >= stop:
            return
        rows = self._table[start:stop]
        for offset, (image, label) in enumerate(zip(rows[self._image_column], rows[self._label_column], strict=False)):
            index = start + offset
            yield SourceItem(index, f"{self._name}/{index}", self._label(label, index), functools.partial(_open_encoded, image))
