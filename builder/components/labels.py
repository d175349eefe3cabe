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


def _lookup(labels: Sequence[str]) -> dict[str, int]:
    """Each label, and each comma-separated synonym in it ("tench, Tinca tinca"), to its index."""
    table: dict[str, int] = {}
    for index, label in enumerate(labels):
        for name in (label, *label.split(",")):
            table.setdefault(normalised(name), index)
    return table


def _mapped(owner: str, labels: Sequence[str], class_names: Sequence[str], label_map: Mapping[str, Union[str, int]]) -> list[int]:
    unknown = [name for name in label_map if name not in class_names]
    if unknown:
        raise ComponentError(f"{owner}: label_map names '{unknown[0]}', not a class of the benchmark; classes: {', '.join(class_names)}")
    missing = [name for name in class_names if name not in label_map]
    if missing:
        raise ComponentError(f"{owner}: label_map has no entry for the class '{missing[0]}'; map every benchmark class to a model label")
    table = _lookup(labels)
    indices = []
    for name in class_names:
        target = label_map[name]
        index = target if isinstance(target, int) else table.get(normalised(target))
        if index is None or not 0 <= index < len(labels):
            hint = closest(str(target), list(labels)) if isinstance(target, str) else None
            found = f"did you mean '{hint}'? " if hint else ""
            raise ComponentError(f"{owner}: label_map[{name!r}] = {target!r} is not one of the model's {len(labels)} labels; {found}fix label_map")
        indices.append(index)
    return indices


def label_outputs(owner: str, labels: Sequence[str], class_names: Sequence[str], label_map: Optional[Mapping[str, Union[str, int]]] = None) -> Optional[list[int]]:
    """The model output for each benchmark class, in the benchmark's order; None when the
    outputs already are the classes in order (or unnamed, as many as the classes)."""
    if label_map is not None:
        indices = _mapped(owner, labels, class_names, label_map)
    elif len(labels) == len(class_names) and all(_GENERIC.match(label) for label in labels):
        return None
    else:
        table = _lookup(labels)
        indices = []
        for name in class_names:
            if normalised(name) not in table:
                hint = closest(name, list(labels))
                found = f" (closest: '{hint}')" if hint else ""
                raise ComponentError(
                    f"{owner}: the model's {len(labels)} labels do not include the benchmark class '{name}'{found}; "
                    "give label_map {class: model label} in the spec or use a model trained on these classes"
                )
            indices.append(table[normalised(name)])
    if indices == list(range(len(labels))):
        return None
    log.info("%s: %d benchmark classes mapped onto the model's %d labels", owner, len(indices), len(labels))
    return indices
