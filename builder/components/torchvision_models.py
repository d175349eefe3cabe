"""``torchvision:<name>[:<weights>]``: ``torchvision.models.get_model`` with a weights enum
(``IMAGENET1K_V1``, ``DEFAULT``, ...) and the preprocessing of that enum's ``transforms()``.

Weights come from torch.hub's cache (``$TORCH_HOME/hub/checkpoints``, the file name of the
enum's URL), downloaded on first use as torchvision does; without a weights name the
architecture starts random (with ``checkpoint``: your own weights).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from builder.components.base import MODELS, ComponentContext
from builder.components.labels import label_outputs
from builder.components.preprocess import PreprocessedClassifier, Preprocessing, crop_fraction, rgb
from builder.config import ModelSpec
from builder.errors import ComponentError
from builder.preflight import Check, PreflightContext, unnamed_outputs_problem
from builder.registry import unknown_name_message

log = logging.getLogger(__name__)


def _parts(target: str) -> tuple[str, Optional[str]]:
    name, _, weights = target.partition(":")
    return name, weights or None


def _weights_enum(spec: ModelSpec, name: str, weights: Optional[str]) -> Any:
    """The weights enum member ``weights`` names for architecture ``name`` (None when none is
    named); whether its weights load is the caller's choice (a checkpoint replaces them, not the
    preprocessing they were trained with)."""
    import torchvision.models
    from torchvision.models import get_model_weights, list_models

    classifiers = list_models(module=torchvision.models)  # not detection, segmentation or video
    if name not in classifiers:
        listing = "torchvision.models.list_models(torchvision.models)"
        raise ComponentError(f"{spec.model}: {unknown_name_message('torchvision classifier', name, classifiers, listing)}")
    if weights is None:
        return None
    members = get_model_weights(name).__members__
    if weights not in members:
        raise ComponentError(f"{spec.model}: {unknown_name_message(f'weights for {name}', weights, list(members))}")
    return members[weights]


def weights_file(enum: Any) -> Path:
    """Where torch.hub keeps the file of a weights enum (its URL's file name)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]


def transforms_preprocessing(transform: Any, owner: str) -> Preprocessing:
    """torchvision's ``ImageClassification`` eval transform, as the differentiable preprocessing."""
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    return Preprocessing(
        input_size=crop,
        interpolation=str(transform.interpolation.value),
        crop_pct=crop_fraction(crop, resize),
        mean=rgb(transform.mean, owner, "mean"),
        std=rgb(transform.std, owner, "std"),
    )


def torchvision_preflight(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    """The architecture and weights name exist; whether the weights file is cached yet."""
    problem = unnamed_outputs_problem(spec)
    if problem:
        return [Check(where, spec.model, f"{where}: {problem}")]
    name, weights = _parts(spec.model.partition(":")[2])
    try:
        enum = _weights_enum(spec, name, weights)
    except ComponentError as error:
        return [Check(where, spec.model, f"{where}: {error}")]
    if enum is None or not spec.pretrained or spec.checkpoint is not None:
        return [Check(where, f"{spec.model} ({'own weights' if spec.checkpoint else 'random initialisation'})")]
    found = weights_file(enum)
    how = "in the torch hub cache" if found.is_file() else "downloaded on the first run"
    categories = enum.meta.get("categories") or []
    # class_ranges index the raw outputs; others are matched by name when loaded
    classes = len(categories) if spec.class_ranges or len(categories) == ctx.class_count else None
    return [Check(where, f"{spec.model} ({len(categories)} labels; {found.name} {how})", classes=classes)]


@MODELS.register("torchvision", description="torchvision.models.get_model(name, weights=enum), preprocessing from the enum's transforms",
                 preflight=torchvision_preflight, names_labels=True)
def build_torchvision(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    from torchvision.models import get_model

    problem = unnamed_outputs_problem(spec)
    if problem:
        raise ComponentError(problem)
    name, weights = _parts(target)
    named = _weights_enum(spec, name, weights)
    enum = named if pretrained else None  # a checkpoint's fine-tune keeps the named weights' preprocessing
    kwargs: dict[str, Any] = dict(spec.kwargs)
    if enum is None:
        kwargs.setdefault("num_classes", spec.num_classes or len(ctx.class_names))
    try:
        net = get_model(name, weights=enum, **kwargs)
    except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
        raise ComponentError(
            f"{spec.model}: weights are not in the torch hub cache ({weights_file(enum)}) and cannot be downloaded "
            f"({type(error).__name__}); run once with network or give 'checkpoint'"
        ) from None
    except (TypeError, ValueError) as error:  # kwargs the architecture does not take
        raise ComponentError(f"{spec.model}: kwargs {sorted(kwargs)} rejected: {type(error).__name__}: {str(error)[:200]}; fix the spec's kwargs") from None
    if enum is None:
        preprocessing = Preprocessing(input_size=ctx.image_size) if named is None else transforms_preprocessing(named.transforms(), spec.model)
        outputs, count = None, int(kwargs["num_classes"])
    else:
        preprocessing = transforms_preprocessing(enum.transforms(), spec.model)
        categories = [str(c) for c in enum.meta["categories"]]
        # class_ranges index the raw outputs, pooled afterwards: their super-classes are no label names
        outputs = None if spec.class_ranges else label_outputs(spec.model, categories, ctx.class_names, spec.label_map)
        count = len(categories)
    return PreprocessedClassifier(net, preprocessing.overridden(spec.preprocess, spec.model), count, spec.model, outputs=outputs)
