"""Classifiers from specs: ``timm:<name[.tag]>`` and ``py:<module or file.py>:<callable>``.

Used for reference models (theta), classifier oracles and, later, scored models. Each comes
with its own preprocessing (timm's pretrained config, overridable in the spec).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from builder.checkpoints import load_state_dict, load_weights, resolve_location
from builder.components.base import MODELS, ComponentContext
from builder.components.preprocess import PooledClassifier, PreprocessedClassifier, Preprocessing
from builder.config import ModelSpec
from builder.errors import ComponentError
from builder.registry import unknown_name_message

log = logging.getLogger(__name__)


def _class_count(spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> int | None:
    if spec.num_classes is not None:
        return spec.num_classes
    return None if pretrained else len(ctx.class_names)


@MODELS.register("timm", description="timm.create_model(name), preprocessing from its pretrained config")
def build_timm(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    import timm
    from timm.data import resolve_model_data_config

    architecture = target.split(".")[0]
    if not timm.is_model(architecture):
        raise ComponentError(unknown_name_message("timm model", architecture, timm.list_models()))
    kwargs: dict[str, Any] = dict(spec.kwargs)
    count = _class_count(spec, ctx, pretrained)
    if count is not None:
        kwargs["num_classes"] = count
    try:
        net = timm.create_model(target, pretrained=pretrained, **kwargs)
    except RuntimeError as error:  # unknown pretrained tag
        raise ComponentError(f"timm:{target}: {str(error).splitlines()[0]}") from None
    except OSError as error:  # not in the HF cache and no network
        raise ComponentError(
            f"timm:{target}: pretrained weights are not in the HF cache and the Hub cannot be reached "
            f"({type(error).__name__}); run once with network or give 'checkpoint'"
        ) from None
    data = resolve_model_data_config(net)
    preprocessing = Preprocessing(
        input_size=int(data["input_size"][-1]),
        interpolation=str(data.get("interpolation", "bicubic")),
        crop_pct=float(data.get("crop_pct", 1.0)),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
    ).overridden(spec.preprocess)
    return PreprocessedClassifier(net, preprocessing, int(net.num_classes), spec.model)


def _import_callable(target: str, base_dir: Path) -> Any:
    module_name, _, attribute = target.rpartition(":")
    if not module_name or not attribute:
        raise ComponentError(f"py:{target}: expected py:<module or file.py>:<callable>")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name) if Path(module_name).is_absolute() else base_dir / module_name
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None or not path.is_file():
                raise ComponentError(f"py:{target}: no file {path}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise ComponentError(f"py:{target}: cannot import '{module_name}' ({error})") from None
    if not hasattr(module, attribute):
        raise ComponentError(f"py:{target}: '{module_name}' has no attribute '{attribute}'")
    return getattr(module, attribute)


@MODELS.register("py", description="your own callable(num_classes=..., **kwargs) -> nn.Module")
def build_python(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    factory = _import_callable(target, ctx.base_dir)
    count = spec.num_classes or len(ctx.class_names)
    net = factory(num_classes=count, **spec.kwargs)
    preprocessing = Preprocessing(input_size=ctx.image_size).overridden(spec.preprocess)
    return PreprocessedClassifier(net, preprocessing, count, spec.model)


def build_classifier(spec: ModelSpec, ctx: ComponentContext, *, pretrained: bool) -> PreprocessedClassifier:
    """The network of ``spec`` with its preprocessing; pretrained weights only if asked."""
    scheme, _, target = spec.model.partition(":")
    if spec.class_ranges and spec.num_classes is None and not pretrained:
        last = max(last for ranges in spec.class_ranges.values() for _, last in ranges)
        spec = spec.model_copy(update={"num_classes": last + 1})  # the outputs the ranges index
    return MODELS.get(scheme)(target, spec, ctx, pretrained)


def pooled(classifier: PreprocessedClassifier, spec: ModelSpec) -> Any:
    """The classifier over ``spec.class_ranges``' super-classes, when it has some."""
    if not spec.class_ranges:
        return classifier
    groups = [[i for first, last in ranges for i in range(first, last + 1)] for ranges in spec.class_ranges.values()]
    largest = max(max(group) for group in groups)
    if largest >= classifier.num_classes:
        raise ComponentError(
            f"{spec.model}: class_ranges reach index {largest} but the model has {classifier.num_classes} outputs; fix the ranges"
        )
    return PooledClassifier(classifier, groups)


def load_classifier(spec: ModelSpec, ctx: ComponentContext, *, classes_of: str = "the source") -> PreprocessedClassifier:
    """Build, load weights (training them first if the spec says how), check classes, eval mode.
    ``classes_of`` names where ``ctx.class_names`` come from, for the mismatch message."""
    classifier = build_classifier(spec, ctx, pretrained=spec.pretrained and spec.checkpoint is None)
    if spec.checkpoint:
        path = ctx.trained_location(resolve_location(spec.checkpoint, ctx.locations), spec)
        if not path.is_file() and spec.train is not None:
            from builder.train import train_classifier

            log.info("%s: no checkpoint at %s yet, training it", spec.model, path)
            train_classifier(spec, ctx, path)
        state = load_state_dict(path, cache_dir=ctx.cache_dir, what=f"{spec.model} checkpoint")
        load_weights(classifier.net, state, path=path, what=spec.model)
    classifier = pooled(classifier, spec)
    if classifier.num_classes != len(ctx.class_names):
        raise ComponentError(
            f"{spec.model}: the model has {classifier.num_classes} classes but {classes_of} has "
            f"{len(ctx.class_names)}; set num_classes or use a model trained on these classes"
        )
    return classifier.eval().requires_grad_(False).to(ctx.device)
