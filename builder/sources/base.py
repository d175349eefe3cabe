"""The source interface: a sized, index-addressable sequence of labelled images."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from builder import registry
from builder.checkpoints import ResolveContext
from builder.config import SourceConfig
from builder.errors import BuilderError, SourceError
from builder.preflight import Check
from builder.registry import Registry


@dataclass(frozen=True)
class SourceItem:
    """One sample; ``load`` reads the image lazily and may raise on a corrupt file."""

    index: int
    source_id: str
    label: int
    load: Callable[[], Any]


@runtime_checkable
class Source(Protocol):
    class_names: tuple[str, ...]

    def __len__(self) -> int: ...

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        """Samples ``start <= index < stop`` in index order."""
        ...


def listing_digest(source: Source, used: int) -> str:
    """sha256 over what the first ``used`` samples are, in order: their source ids and labels,
    and what a source knows cheaply of their content (a file's size). A resume compares it: a
    file renamed or relabelled in the middle of a folder kept the count and the first and last
    ids, shifted every later sample by one, and the build dropped one and kept a stale one.
    Sources may offer ``listing(used)`` to list them without touching image bytes."""
    from builder.fileio import sha256_json

    listed = getattr(source, "listing", None)
    rows = listed(used) if callable(listed) else [[item.source_id, item.label] for item in source.items(0, used)]
    return sha256_json(rows)


#: sources resolve relative paths and URLs exactly like every other location
SourceContext = ResolveContext


SourceFactory = Callable[[Any, SourceContext], Source]
SOURCES: Registry[SourceFactory] = registry.SOURCES


def open_source(config: SourceConfig, ctx: SourceContext, *, split: str | None = None) -> Source:
    """Build the source of ``config``; ``split`` overrides its split (e.g. ``train``)."""
    if split is not None and "split" in type(config).model_fields:
        config = config.model_copy(update={"split": split})
    source = SOURCES.get(config.kind)(config, ctx)
    if config.class_ranges:
        source = SuperclassSource(source, config.class_ranges, config.kind)
    if len(source) == 0:
        raise SourceError(f"source {config.kind} is empty; check its path and split")
    return source


def open_preflight(config: SourceConfig, ctx: SourceContext, where: str) -> list[Check]:
    """A dry run's check of a source readable offline: open it and count its samples and classes."""
    try:
        source = open_source(config, ctx)
    except BuilderError as error:
        declared = declared_classes(config)
        return [Check(where, config.kind, f"{where}: {error}", classes=len(declared) if declared else None, class_names=declared)]
    names = tuple(source.class_names)
    return [Check(where, f"{config.kind}: {len(source)} samples, {len(names)} classes", classes=len(names), class_names=names, samples=len(source))]


def declared_classes(config: SourceConfig) -> tuple[str, ...] | None:
    """The class names a recipe declares for its source (super-class names first), if any."""
    return tuple(config.class_ranges or ()) or (tuple(config.class_names) if config.class_names else None)


def check_class_names(declared: tuple[str, ...] | None, found: tuple[str, ...], what: str) -> tuple[str, ...]:
    """The recipe's class names must agree with the data set's own, when both exist."""
    if declared is None:
        return found
    if found and tuple(declared) != tuple(found):
        diff = next((i for i, (a, b) in enumerate(zip(declared, found, strict=False)) if a != b), min(len(declared), len(found)))
        raise SourceError(
            f"{what}: source.class_names disagree with the data set's at index {diff} "
            f"({len(declared)} declared vs {len(found)} found); fix source.class_names or remove it"
        )
    return tuple(declared)


def check_label(label: int, class_names: tuple[str, ...], source_id: str) -> int:
    if not 0 <= label < len(class_names):
        raise SourceError(
            f"sample {source_id}: label {shown_label(label)} is outside the {len(class_names)} classes; "
            "fix the label column or source.class_names"
        )
    return label


def shown_label(label: int) -> str:
    """A label short enough for a one-line message (a hostile one may have thousands of digits)."""
    if -(10**30) < label < 10**30:
        return str(label)
    return f"{'-' if label < 0 else ''}10^{int(abs(label).bit_length() * 0.30103)} or so"


def printable_id(name: str) -> str:
    """``name`` fit for a sample id or a message: bytes that are not UTF-8 (a file system's
    surrogate escapes) and line breaks or other control characters become backslash escapes,
    so ids stay one line and every writer can encode them; ordinary names are unchanged."""
    if name.isprintable():
        return name
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in _BREAKING else c for c in text)


_BREAKING = ("Cc", "Zl", "Zp")  # controls (newline, NUL, ESC...) and the Unicode line/paragraph separators


class SuperclassSource:
    """The samples of ``inner`` whose label lies in a super-class range, relabelled and renumbered
    0..n-1 (their source ids keep the original position). Sources may offer ``labels()`` to
    avoid touching image bytes while the kept samples are found."""

    def __init__(self, inner: Source, ranges: Mapping[str, Sequence[tuple[int, int]]], what: str) -> None:
        largest = max(last for spans in ranges.values() for _, last in spans)
        if largest >= len(inner.class_names):
            raise SourceError(
                f"{what} source: class_ranges reach index {largest} but it has {len(inner.class_names)} classes; fix source.class_ranges"
            )
        owner = {i: group for group, spans in enumerate(ranges.values()) for first, last in spans for i in range(first, last + 1)}
        labels = inner.labels() if hasattr(inner, "labels") else [item.label for item in inner.items(0, len(inner))]
        for position, label in enumerate(labels):  # an out-of-range label would otherwise just be dropped
            check_label(label, inner.class_names, f"{what} #{position}")
        self._kept = [position for position, label in enumerate(labels) if label in owner]
        self._owner = owner
        self._inner = inner
        self.class_names = tuple(ranges)

    def __len__(self) -> int:
        return len(self._kept)

    def listing(self, used: int) -> list[list[Any]]:
        """The inner listing of the first ``used`` kept samples, relabelled (see :func:`listing_digest`)."""
        kept = self._kept[:used]
        if not kept:
            return []
        inner = self._inner.listing(kept[-1] + 1) if callable(getattr(self._inner, "listing", None)) else None  # type: ignore[attr-defined]
        if inner is None:
            return [[item.source_id, item.label] for item in self.items(0, used)]
        return [[*inner[position][:1], self._owner[inner[position][1]], *inner[position][2:]] for position in kept]

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        """One pass over the inner samples from the first kept to the last, skipping the others
        (their images are never loaded): a read per run of kept samples would inflate a
        compressed shard from its start once per run."""
        kept = self._kept[start : min(stop, len(self))]
        if not kept:
            return
        wanted = set(kept)
        index = start
        for item in self._inner.items(kept[0], kept[-1] + 1):
            if item.index in wanted:
                yield SourceItem(index, item.source_id, self._owner[item.label], item.load)
                index += 1
