"""Which outputs of a pretrained model stand for each of the benchmark's classes.

A model trained elsewhere (a Hub fine-tune, torchvision's ImageNet weights) names its labels;
the benchmark names its classes. They must agree, or the spec's ``label_map`` says how.
"""

from __future__ import annotations

import logging
import re
from typing import Mapping, Optional, Sequence, Union

from builder.errors import ComponentError
from builder.registry import closest

log = logging.getLogger(__name__)

#: the names Transformers gives labels nobody named
_GENERIC = re.compile(r"^LABEL_\d+$")


def normalised(name: str) -> str:
    """Case, underscores, hyphens and runs of spaces do not tell two class names apart."""
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def matching(name: str, labels: Sequence[str]) -> list[int]:
    """The labels ``name`` stands for, by the first rule that finds any: the label itself, then
    the label up to case, underscores and spaces, then a comma-separated synonym in a label
    ("tench, Tinca tinca"). ImageNet has "Cardigan" (the corgi, 264) and "cardigan" (the
    sweater, 474): each is its own label, and only a synonym search could confuse them."""
    exact = [index for index, label in enumerate(labels) if label == name]
    if exact:
        return exact
    wanted = normalised(name)
    alike = [index for index, label in enumerate(labels) if normalised(label) == wanted]
    if alike:
        return alike
    return [index for index, label in enumerate(labels) if any(normalised(part) == wanted for part in label.split(","))]


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
    return indices


def _matched(owner: str, labels: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Each class's output by name: the label at the class's own position when it is the same
    name (so repeated labels, ImageNet's two "crane"s, stay in order), else the one label it matches."""
    indices = []
    for position, name in enumerate(class_names):
        if position < len(labels) and normalised(labels[position]) == normalised(name):
            indices.append(position)
            continue
        found = matching(name, labels)
        if not found:
            hint = closest(name, list(labels))
            shown = f" (closest: '{hint}')" if hint else ""
            raise ComponentError(
                f"{owner}: the model's {len(labels)} labels do not include the benchmark class '{name}'{shown}; "
                "give label_map {class: model label} in the spec or use a model trained on these classes"
            )
        indices.append(_one(owner, name, found, labels, "the benchmark class"))
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
