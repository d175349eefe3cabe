"""Which outputs of a pretrained model stand for each of the benchmark's classes.

A model trained elsewhere (a Hub fine-tune, torchvision's ImageNet weights) names its labels;
the benchmark names its classes. They must agree, or the spec's ``label_map`` says how.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Mapping, Optional, Sequence, Union

from builder.errors import ComponentError
from builder.registry import closest

log = logging.getLogger(__name__)

#: the names Transformers gives labels nobody named
_GENERIC = re.compile(r"^LABEL_\d+$")


def normalised(name: str, *, case: bool = False) -> str:
    """Underscores, hyphens, commas and runs of spaces (and unless ``case``, case) do not tell two
    class names apart (torchvision's "maillot tank suit" is WordNet's "maillot, tank suit")."""
    return re.sub(r"[\s_,-]+", " ", name.strip() if case else name.strip().lower()).strip()


#: a name's keys, strictest first: itself, spelled alike with its case, its first WordNet
#: synonym, spelled alike, that synonym spelled alike, and the set of its synonyms spelled alike
_Keys = tuple[str, str, str, str, str, frozenset[str]]


def _keys(name: str) -> _Keys:
    """What a name is compared by; a WordNet-style name ("tench, Tinca tinca") is a list of synonyms."""
    lemmas = [part.strip() for part in name.split(",") if part.strip()] or [name]
    return (name, normalised(name, case=True), lemmas[0], normalised(name), normalised(lemmas[0]),
            frozenset(normalised(lemma) for lemma in lemmas))


def _find(wanted: _Keys, table: Sequence[_Keys]) -> list[int]:
    """The labels (by their keys) found by the first rule that finds any, strictest first."""
    for rule in range(5):
        found = [index for index, keys in enumerate(table) if keys[rule] == wanted[rule]]
        if found:
            return found
    return [index for index, keys in enumerate(table) if keys[5] & wanted[5]]


def matching(name: str, labels: Sequence[str]) -> list[int]:
    """The labels ``name`` stands for, by the first rule that finds any: the label itself, or
    spelled alike (spaces, underscores, hyphens, commas) with the same case; the same first
    synonym of a WordNet list ("tench, Tinca tinca", on either side: the model's label or the
    benchmark's name); the label, then that synonym, up to case; any shared synonym. ImageNet
    has "Cardigan" (the corgi, 264) and "cardigan" (the sweater, 474): case tells them apart
    before any looser rule could confuse them; "crayfish" is the first synonym of 124 and the
    fifth of 123."""
    return _find(_keys(name), [_keys(label) for label in labels])


def _one(owner: str, name: str, found: list[int], labels: Sequence[str], what: str) -> int:
    """The single label of ``found``; several are a one-line error that names them."""
    if len(found) == 1:
        return found[0]
    shown = ", ".join(f"[{index}] {labels[index]!r}" for index in found[:4]) + (" ..." if len(found) > 4 else "")
    raise ComponentError(f"{owner}: {what} '{name}' matches {len(found)} of the model's labels ({shown}); "
                         "give label_map {class: model label index} to say which")


def _mapped(owner: str, labels: Sequence[str], class_names: Sequence[str], label_map: Mapping[str, Union[str, int]]) -> list[int]:
    unknown = [name for name in label_map if name not in class_names]
    if unknown:
        raise ComponentError(f"{owner}: label_map names '{unknown[0]}', not a class of the benchmark; classes: {', '.join(class_names)}")
    missing = [name for name in class_names if name not in label_map]
    if missing:
        raise ComponentError(f"{owner}: label_map has no entry for the class '{missing[0]}'; map every benchmark class to a model label")
    indices = []
    for name in class_names:
        target = label_map[name]
        found = [target] if isinstance(target, int) else matching(target, labels)
        if not found or not 0 <= found[0] < len(labels):
            hint = closest(str(target), list(labels)) if isinstance(target, str) else None
            shown = f"did you mean '{hint}'? " if hint else ""
            raise ComponentError(f"{owner}: label_map[{name!r}] = {target!r} is not one of the model's {len(labels)} labels; {shown}fix label_map")
        indices.append(_one(owner, str(target), found, labels, f"label_map[{name!r}] ="))
    return _distinct(owner, indices, labels, class_names, mapped=True)


def _matched(owner: str, labels: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Each class's output by name: the label at the class's own position when it is one the
    name matches (so repeated labels stay in order), else the one label it matches. A name the
    benchmark repeats (ImageNet's two "crane"s, which torchvision calls "crane bird" and
    "crane") keeps its position when the labels are the classes in order: as many, and every
    other class at its own position."""
    table = [_keys(label) for label in labels]
    found = [_find(_keys(name), table) for name in class_names]
    repeats = Counter(class_names)
    aligned = len(labels) == len(class_names) and all(
        position in found[position] for position, name in enumerate(class_names) if repeats[name] == 1)
    indices = []
    for position, name in enumerate(class_names):
        if position in found[position] or (aligned and repeats[name] > 1):
            indices.append(position)
            continue
        if not found[position]:
            hint = closest(name, list(labels))
            shown = f" (closest: '{hint}')" if hint else ""
            raise ComponentError(
                f"{owner}: the model's {len(labels)} labels do not include the benchmark class '{name}'{shown}; "
                "give label_map {class: model label} in the spec or use a model trained on these classes"
            )
        indices.append(_one(owner, name, found[position], labels, "the benchmark class"))
    return _distinct(owner, indices, labels, class_names)


def _distinct(owner: str, indices: list[int], labels: Sequence[str], class_names: Sequence[str], *, mapped: bool = False) -> list[int]:
    """Two classes never read the same output, matched by name or by ``label_map`` (one of them
    would be scored against another class's logit, and its images could never be right)."""
    first: dict[int, int] = {}
    for position, index in enumerate(indices):
        if index not in first:
            first[index] = position
            continue
        earlier, name, output = class_names[first[index]], class_names[position], f"[{index}] {labels[index]!r}"
        if not mapped:
            raise ComponentError(f"{owner}: the benchmark classes '{earlier}' and '{name}' both match the model's label {output}; "
                                 "give label_map {class: model label index} to say which")
        if earlier == name:  # a name the benchmark repeats: a map keyed by name cannot tell its classes apart
            raise ComponentError(f"{owner}: the benchmark repeats the class '{name}', so label_map sends both to the model's output {output}; "
                                 "use a model whose labels are the benchmark's classes in order, without label_map")
        raise ComponentError(f"{owner}: label_map sends the benchmark classes '{earlier}' and '{name}' both to the model's output {output}; "
                             "map each class to an output of its own")
    return indices


def label_outputs(owner: str, labels: Sequence[str], class_names: Sequence[str], label_map: Optional[Mapping[str, Union[str, int]]] = None) -> Optional[list[int]]:
    """The model output for each benchmark class, in the benchmark's order; None when the
    outputs already are the classes in order (or unnamed, as many as the classes)."""
    if label_map is not None:
        indices = _mapped(owner, labels, class_names, label_map)
    elif len(labels) == len(class_names) and all(_GENERIC.match(label) for label in labels):
        return None
    else:
        indices = _matched(owner, labels, class_names)
    if indices == list(range(len(labels))):
        return None
    log.info("%s: %d benchmark classes mapped onto the model's %d labels", owner, len(indices), len(labels))
    return indices
