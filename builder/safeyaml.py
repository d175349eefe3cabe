"""Bounded YAML loading for recipes and ``--set`` values: hostile input ends in one line.

A recipe is a short hand-written file, so anything far beyond that is refused before it
can exhaust memory or the stack: files over 1 MiB, text that is not UTF-8, nesting deeper
than :data:`MAX_DEPTH`, more than :data:`MAX_ALIASES` alias uses, documents that expand
(through aliases and merge keys) to more than :data:`MAX_VALUES` values, aliases that
refer to the node containing them, and a key repeated in one mapping (PyYAML would keep
the last one silently). Every refusal is a :class:`RecipeError` whose message is one line
naming what was read, why it was refused and what to do.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, NodeEvent
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.reader import ReaderError

from builder.errors import RecipeError

MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_VALUES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` with line breaks and control characters escaped, clipped: safe in a one-line error."""
    escaped = _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


class _Refused(yaml.MarkedYAMLError):
    """A bound was hit while composing; carries the fix shown to the user."""

    def __init__(self, problem: str, mark: Any, fix: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting depth, aliases and expanded size while it composes.

    The composer recurses once per nesting level, so depth is checked here, before Python's
    recursion limit; the size of an alias is that of the node it names, so a "billion
    laughs" document is refused after at most :data:`MAX_VALUES` steps.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._values = 0
        self._open: set[str] = set()  # anchors of the nodes being composed
        self._sizes: dict[str, int] = {}  # anchor -> expanded size of its node

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            return self._compose_alias(event, parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark, "flatten the structure")
        anchor = event.anchor if isinstance(event, NodeEvent) else None
        start = self._values
        self._count(1, event)
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if anchor is not None:
            self._open.discard(anchor)
            self._sizes[anchor] = self._values - start
        return node

    def _compose_alias(self, event: AliasEvent, parent: Node | None, index: Any) -> Node:
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            raise _Refused(f"more than {MAX_ALIASES} aliases (*name)", event.start_mark,
                           "write the values out instead of aliasing them")
        if event.anchor in self._open:
            raise _Refused(f"alias *{event.anchor} refers to a node that contains it", event.start_mark,
                           "remove the self-reference")
        node = super().compose_node(parent, index)  # raises for an undefined alias
        self._count(self._sizes.get(event.anchor or "", 1), event)
        return node

    def _count(self, values: int, event: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise _Refused(f"expands to more than {MAX_VALUES} values (aliases included)", event.start_mark,
                           "a recipe is a short file; use fewer or smaller aliased values")

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, ScalarNode) and key.tag != MERGE_TAG:
                if (key.tag, key.value) in seen:
                    raise _Refused(f"key {key.value!r} appears twice in one mapping", key.start_mark, "keep one of them")
                seen.add((key.tag, key.value))
        return node


#: YAML 1.1 number forms that other readers (YAML 1.2, JSON, people) take otherwise: a leading
#: zero makes an octal number (``010`` is 8) and colons a base-60 one (``1:30`` is 90)
_AMBIGUOUS_NUMBER = re.compile(r"[-+]?(0[0-7_]*[0-7][0-7_]*|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)")


class HandWrittenLoader(BoundedLoader):
    """The bounded loader for files a person writes (recipes, ``--set`` values, model lists):
    a number that YAML 1.1 reads otherwise than it looks is refused, not guessed."""

    def construct_yaml_int(self, node: Any) -> Any:
        self._refuse_ambiguous(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> Any:
        self._refuse_ambiguous(node)
        return super().construct_yaml_float(node)

    def _refuse_ambiguous(self, node: Any) -> None:
        text = str(node.value)
        if not _AMBIGUOUS_NUMBER.fullmatch(text):
            return
        kind = "base 60" if ":" in text else "octal"
        read = yaml.SafeLoader.construct_yaml_float(self, node) if "." in text else yaml.SafeLoader.construct_yaml_int(self, node)
        if kind == "base 60" or read != int(text.replace("_", ""), 10):  # 007 is 7 either way
            raise _Refused(f"{text!r} reads as the {kind} number {read!r} in YAML 1.1", node.start_mark,
                           "write the number without a leading zero or colons, or quote it if it is text")


HandWrittenLoader.add_constructor("tag:yaml.org,2002:int", HandWrittenLoader.construct_yaml_int)
HandWrittenLoader.add_constructor("tag:yaml.org,2002:float", HandWrittenLoader.construct_yaml_float)


def read_recipe_text(path: Path) -> str:
    """The recipe file's text, refusing huge files and bytes that are not UTF-8."""
    what = f"recipe {one_line(str(path), 200)}"
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_RECIPE_BYTES + 1)
    except OSError as error:
        raise RecipeError(f"{what}: cannot be read ({error.strerror or type(error).__name__}); check the path and its permissions") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{what}: larger than {MAX_RECIPE_BYTES // (1 << 20)} MiB; a recipe is a short YAML file, check the path")
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise RecipeError(f"{what}: {encoding} text, not UTF-8; save it as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecipeError(f"{what}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); save it as UTF-8") from None


def load_yaml_text(text: str, *, what: str, fix: str = "check the indentation and quoting") -> Any:
    """Parse one YAML document within the bounds above; the result is a tree (no shared nodes).

    ``what`` names the input in errors (``recipe x.yaml``, ``--set 'a=b'``); ``fix`` is the
    advice for plain syntax errors.
    """
    try:
        data = _parse(text, HandWrittenLoader)
    except _Refused as error:
        raise RecipeError(f"{what}{_line(error.problem_mark, text)}: {one_line(str(error.problem), 300)}; {error.fix}") from None
    except ReaderError as error:
        raise RecipeError(f"{what}: unacceptable character #x{error.character:04x} at offset {error.position}; "
                          "remove control characters") from None
    except yaml.YAMLError as error:
        if isinstance(error, ConstructorError) and "constructor for the tag" in str(error.problem):  # !!python/...
            fix = "remove the tag; recipes are plain YAML"
        raise RecipeError(f"{what}{_line(getattr(error, 'problem_mark', None), text)}: not valid YAML "
                          f"({one_line(_problem(error), 200)}); {fix}") from None
    except (ValueError, TypeError, OverflowError) as error:  # e.g. the date 2024-13-45, a 5000-digit int
        raise RecipeError(f"{what}: a value cannot be read ({one_line(str(error), 200)}); quote it to make it a string") from None
    return unshare(data, what=what)


def parse_bounded(text: str) -> Any:
    """Parse YAML written by someone else within the bounds above; raises ``yaml.YAMLError``
    (a bound hit is one too, with ``problem`` and ``problem_mark``) or ValueError/TypeError for
    values that cannot be constructed. Shared nodes are left shared: see :func:`unshare`."""
    return _parse(text, BoundedLoader)


def _parse(text: str, loader_class: type[BoundedLoader]) -> Any:
    loader = loader_class(text)  # the reader checks every character here already
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _line(mark: Any, text: str) -> str:
    return f" line {mark.line + 1}" if mark is not None and "\n" in text.strip() else ""


def _problem(error: yaml.YAMLError) -> str:
    parts = [getattr(error, "context", None), getattr(error, "problem", None)]
    return ": ".join(str(part) for part in parts if part) or type(error).__name__


def unshare(data: Any, *, what: str) -> Any:
    """A copy in which no dict or list is reachable twice, so one ``--set`` changes one place.

    Bounded like the loader (depth, values) and refusing cycles, so it is safe on any data.
    """
    budget = [MAX_VALUES]
    active: set[int] = set()

    def copy(node: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise RecipeError(f"{what}: expands to more than {MAX_VALUES} values (aliases included); "
                              "use fewer or smaller aliased values")
        if depth >= MAX_DEPTH:
            raise RecipeError(f"{what}: nested deeper than {MAX_DEPTH} levels (aliases included); flatten the structure")
        if not isinstance(node, (dict, list, tuple)):
            return node
        if id(node) in active:
            raise RecipeError(f"{what}: a value contains itself (a recursive alias); remove the self-reference")
        active.add(id(node))
        if isinstance(node, dict):
            result: Any = {key: copy(value, depth + 1) for key, value in node.items()}
        else:
            result = type(node)(copy(value, depth + 1) for value in node)
        active.discard(id(node))
        return result

    return copy(data, 0)
