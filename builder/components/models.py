"""Classifiers from specs: ``timm:<name[.tag]>`` (also ``timm:hf-hub:<org/name>`` and
``timm:local-dir:<folder>``) and ``py:<module or file.py>:<callable>`` (the
other schemes, ``hf:``, ``torchvision:``, ``clip:``, ``robustbench:``, have a module each).

Used for reference models (theta), classifier oracles and, later, scored models. Each comes
with its own preprocessing (timm's pretrained config, overridable in the spec).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from pathlib import Path
from typing import Any, Sequence, cast

from torch import nn

from builder.checkpoints import FINGERPRINT_KWARGS, fetch_location, load_failure_advice, load_state_dict, load_weights, offline_hint
from builder.components.base import MODELS, ComponentContext
from builder.components.labels import label_outputs
from builder.components.preprocess import PooledClassifier, PreprocessedClassifier, Preprocessing
from builder.config import ModelSpec
from builder.errors import BuilderError, ComponentError, first_line
from builder.paths import in_recipe_dir
from builder.preflight import Check, PreflightContext, class_ranges_problem, head_problem, spec_problem
from builder.registry import closest, unknown_name_message

log = logging.getLogger(__name__)


def _class_count(spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> int | None:
    if spec.num_classes is not None:
        return spec.num_classes
    return None if pretrained else len(ctx.class_names)


#: timm's own sources, as ``timm.create_model`` takes them: a Hub repo (``push_to_hf_hub``) and a
#: folder (``save_for_hf``), each a config.json naming a registered architecture, plus weights
TIMM_HUB, TIMM_FOLDER = "hf-hub", "local-dir"


def timm_source(target: str, spec: ModelSpec, base_dir: Path) -> tuple[str | None, str]:
    """(``hf-hub``, ``local-dir`` or None for a registry name, the name to create): a Hub id with
    the spec's ``revision`` as timm's ``@rev``, a folder relative to the recipe's folder."""
    from timm.models import parse_model_name

    try:
        source, model_id = parse_model_name(target)
    except ValueError as error:
        raise ComponentError(f"timm:{target}: {first_line(error)}") from None
    if source == TIMM_FOLDER:
        return source, f"{TIMM_FOLDER}:{in_recipe_dir(model_id, base_dir)}"
    if source == TIMM_HUB:
        if spec.revision and "@" not in model_id:
            model_id = f"{model_id}@{spec.revision}"
        return source, f"{TIMM_HUB}:{model_id}"
    return None, target


def _timm_config(path: Path) -> tuple[int | None, bool]:
    """(class count, whether it names its labels) of a timm config.json (``save_for_hf``)."""
    from builder.manifest import load_json_bounded

    data = load_json_bounded(path, f"timm config {path}", max_bytes=1 << 20)
    data = data if isinstance(data, dict) else {}
    count = data.get("num_classes")
    inner = data.get("pretrained_cfg")
    named = bool(data.get("label_names") or (isinstance(inner, dict) and inner.get("label_names")))
    return (count if isinstance(count, int) and count > 0 else None), named


def _no_label_names(spec: ModelSpec, pretrained: bool) -> str:
    """Why ``label_map`` cannot pick a timm model's outputs: nothing names them."""
    why = "names no labels (no label_names in its pretrained config)" if pretrained else "is not loaded with pretrained weights that name their labels"
    return (f"{spec.model}: label_map picks outputs by label name, but this timm model {why}; drop label_map (its outputs are then "
            "the benchmark's classes in order), or save the model with label_names (timm's save_for_hf model_config)")


def _timm_check(spec: ModelSpec, ctx: PreflightContext, where: str, detail: str, count: int | None, named: bool) -> list[Check]:
    """The check of a timm model whose pretrained class count and label names are known offline:
    a num_classes its head cannot have and a label_map nothing names are refused, as when loaded."""
    own = spec.pretrained and spec.checkpoint is None
    problem = head_problem(spec, count) if own else None
    if problem is None and spec.label_map is not None and not (own and named):
        problem = _no_label_names(spec, own)
    if problem:
        return [Check(where, spec.model, f"{where}: {problem}")]
    if own and named:  # outputs matched to the classes by name when loaded
        count = len(spec.label_map) if spec.label_map else (count if count == ctx.class_count else None)
    return [Check(where, detail, classes=count)]


def _timm_sourced_preflight(spec: ModelSpec, ctx: PreflightContext, name: str, where: str) -> list[Check]:
    """A timm Hub repo or folder: its config.json found offline (the class count and label names read from it)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from timm.models._hub import hf_split

    source, _, model_id = name.partition(":")
    if source == TIMM_FOLDER:
        config = Path(model_id) / "config.json"
        if not config.is_file():
            return [Check(where, spec.model, f"{where}: {config.parent} has no config.json: not a folder timm's save_for_hf wrote; fix the path")]
        return _timm_check(spec, ctx, where, f"{spec.model}: local timm folder", *_timm_config(config))
    repo, revision = hf_split(model_id)
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return [Check(where, spec.model, f"{where}: '{repo}' is not a Hub repo id (owner/name); fix the name")]
    cached = try_to_load_from_cache(repo, "config.json", revision=revision)
    if isinstance(cached, str):
        detail = f"{spec.model}: config in the HF cache (weights downloaded on the first run unless cached)"
        return _timm_check(spec, ctx, where, detail, *_timm_config(Path(cached)))
    return [Check(where, f"{spec.model}: downloaded from the Hub on the first run")]


def timm_preflight(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    """The architecture and pretrained tag exist in timm (its class count from the tag's config);
    for a Hub repo or folder, its config.json."""
    import timm
    from timm.models import get_pretrained_cfg

    target = spec.model.partition(":")[2]
    try:
        source, name = timm_source(target, spec, ctx.base_dir)
        if source is not None:
            return _timm_sourced_preflight(spec, ctx, name, where)
    except BuilderError as error:
        return [Check(where, spec.model, f"{where}: {error}")]
    architecture = target.split(".")[0]
    if not timm.is_model(architecture):
        return [Check(where, spec.model, f"{where}: {unknown_name_message('timm model', architecture, timm.list_models(), 'timm.list_models()')}")]
    count, named = None, False
    if spec.pretrained and spec.checkpoint is None:
        tags = timm.list_pretrained(f"{architecture}.*")
        if "." not in target:
            return [Check(where, spec.model, f"{where}: name the full pretrained tag (preprocessing follows it): one of {', '.join(tags[:6])}")]
        if target not in tags:
            hint = closest(target, tags)
            suggestion = f"did you mean '{hint}'? " if hint else ""
            return [Check(where, spec.model, f"{where}: timm has no pretrained '{target}'; {suggestion}{len(tags)} tags: timm.list_pretrained('{architecture}.*')")]
        pretrained_cfg = get_pretrained_cfg(target)
        if pretrained_cfg is not None:
            count, named = pretrained_cfg.num_classes, bool(pretrained_cfg.label_names)
    detail = f"{spec.model} ({'pretrained' if spec.pretrained and not spec.checkpoint else 'own weights'})"
    return _timm_check(spec, ctx, where, detail, count, named)


@MODELS.register("timm", description="timm.create_model(name), preprocessing from its pretrained config", preflight=timm_preflight,
                 names_labels=True)
def build_timm(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    from timm.data import resolve_model_data_config

    net = _create_timm(target, spec, ctx, pretrained)
    pretrained_cfg = dict(getattr(net, "pretrained_cfg", None) or {}) if pretrained else {}
    problem = head_problem(spec, pretrained_cfg.get("num_classes"))
    if problem:
        raise ComponentError(problem)
    data = resolve_model_data_config(net, use_test_size=True)  # what timm's validate.py and its published accuracies use
    preprocessing = Preprocessing(
        input_size=int(data["input_size"][-1]),
        interpolation=str(data.get("interpolation", "bicubic")),
        crop_pct=float(data.get("crop_pct", 1.0)),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
    ).overridden(spec.preprocess, spec.model)
    count = int(cast(Any, net).num_classes)
    outputs = _timm_outputs(spec, ctx, pretrained_cfg, count, pretrained)
    return PreprocessedClassifier(net, preprocessing, count, spec.model, outputs=outputs)


def _create_timm(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> nn.Module:
    """``timm.create_model`` of the spec; every failure it has is one line."""
    import timm

    source, name = timm_source(target, spec, ctx.base_dir)
    architecture = target.split(".")[0]
    if source is None and not timm.is_model(architecture):
        raise ComponentError(unknown_name_message("timm model", architecture, timm.list_models(), "timm.list_models()"))
    kwargs: dict[str, Any] = dict(spec.kwargs)
    count = _class_count(spec, ctx, pretrained)
    if count is not None:
        kwargs["num_classes"] = count
    try:
        return cast(nn.Module, timm.create_model(name, pretrained=pretrained, **kwargs))
    except TypeError as error:  # kwargs the architecture does not take
        raise ComponentError(f"timm:{target}: kwargs ({_arguments(kwargs)}) rejected: {first_line(error, typed=True)}; fix the spec's kwargs") from error
    except RuntimeError as error:  # unknown pretrained tag
        raise ComponentError(f"timm:{target}: {first_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - sorted out below
        raise _timm_load_failure(target, source, error) from None


def _timm_label_lists(spec: ModelSpec, pretrained_cfg: dict[str, Any], count: int) -> list[list[str]]:
    """The names of the outputs in a timm pretrained config: its ``label_names`` (a list, or a
    dict by index), then those names' ``label_descriptions`` when it has them (ImageNet's
    synsets "n01440764" are described "tench, Tinca tinca"); [] when it names none."""
    names = pretrained_cfg.get("label_names")
    if not names:
        return []
    if isinstance(names, dict):
        names = [names.get(index, names.get(str(index), "")) for index in range(count)]
    labels = [str(name) for name in names]
    if len(labels) != count:
        raise ComponentError(f"{spec.model}: its pretrained config names {len(labels)} labels (label_names) for its {count} outputs; "
                             "fix label_names in its config.json")
    descriptions = pretrained_cfg.get("label_descriptions")
    if isinstance(descriptions, dict) and descriptions:
        return [labels, [str(descriptions.get(label, label)) for label in labels]]
    return [labels]


def _timm_outputs(spec: ModelSpec, ctx: ComponentContext, pretrained_cfg: dict[str, Any], count: int, pretrained: bool) -> list[int] | None:
    """The outputs of a timm model whose pretrained config names its labels, matched to the
    benchmark's classes as the other schemes' are (it was read in output order whatever the
    names said); a model that names none keeps its outputs in order."""
    candidates = _timm_label_lists(spec, pretrained_cfg, count)
    if not candidates:
        if spec.label_map is not None:
            raise ComponentError(_no_label_names(spec, pretrained))
        return None
    if spec.class_ranges:  # the ranges index the raw outputs
        return None
    failures = []
    for labels in candidates:
        try:
            return label_outputs(spec.model, labels, ctx.class_names, spec.label_map)
        except ComponentError as error:
            failures.append(error)
    raise failures[0]


def _timm_load_failure(target: str, source: str | None, error: Exception) -> Exception:
    """One line for what ``timm.create_model`` raised: a registry model's weights missing offline,
    or any failure to read a Hub repo or folder (huggingface_hub's errors, a config timm cannot
    use); anything else as it was."""
    if source is not None:
        advice = load_failure_advice(error, "timm", from_hub=source == TIMM_HUB)
        return ComponentError(f"timm:{target}: cannot load it ({first_line(error, typed=True)}); {advice}")
    if isinstance(error, OSError):  # not in the HF cache and no network
        return ComponentError(f"timm:{target}: pretrained weights are not in the HF cache and the Hub cannot be reached "
                              f"({type(error).__name__}); run once with network or give 'checkpoint'{offline_hint()}")
    return error


def _import_callable(target: str, base_dir: Path) -> Any:
    """The callable ``py:<module or file.py>:<attribute>`` names. Importing runs the user's module,
    so whatever it raises (even ``SystemExit``) becomes one ComponentError line, the cause kept."""
    module_name, _, attribute = target.rpartition(":")
    if not module_name or not attribute:
        raise ComponentError(f"py:{target}: expected py:<module or file.py>:<callable>; fix the model spec")
    if module_name.endswith(".py"):
        module = _import_file(target, module_name, base_dir)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not (module_name + ".").startswith(error.name + "."):
                raise ComponentError(f"py:{target}: importing {module_name} failed: {first_line(error, typed=True)}; fix the module") from error
            raise ComponentError(
                f"py:{target}: cannot import '{module_name}' ({error}); install it, fix the name, "
                "or give a file: py:path/to/file.py:<callable>"
            ) from None
        except (Exception, SystemExit) as error:  # the user's module failed while importing
            raise ComponentError(f"py:{target}: importing {module_name} failed: {first_line(error, typed=True)}; fix the module") from error
    if not hasattr(module, attribute):
        raise ComponentError(f"py:{target}: '{module_name}' has no attribute '{attribute}'; fix the name after the last ':'")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise ComponentError(
            f"py:{target}: '{attribute}' is {type(factory).__name__}, not a callable; "
            "name a function or class that returns a torch.nn.Module"
        )
    return factory


def _import_file(target: str, module_name: str, base_dir: Path) -> Any:
    path = in_recipe_dir(module_name, base_dir)
    if path.is_dir():
        raise ComponentError(f"py:{target}: {path} is a directory, not a Python file; name the .py file")
    if not path.is_file():
        raise ComponentError(f"py:{target}: no such file {path}; fix the path (relative paths start at the recipe's folder)")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or module_spec.loader is None:
        raise ComponentError(f"py:{target}: Python cannot load {path} as a module; name a .py file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # the user's module failed while importing
        raise ComponentError(f"py:{target}: importing {path} failed: {first_line(error, typed=True)}; fix the module") from error
    return module


def _arguments(kwargs: dict[str, Any]) -> str:
    """``k=v, ...`` for a message: each value's repr cut to one short line."""
    shown = []
    for key, value in kwargs.items():
        text = repr(value)
        shown.append(f"{key}={text if len(text) <= 40 else text[:37] + '...'}")
    return ", ".join(shown)


def signature_problem(target: str, factory: Any, kwargs: dict[str, Any]) -> str | None:
    """Why ``factory(**kwargs)`` cannot be called, judged from its signature without calling it."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C types have none: find out when called
        return None
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        attribute = target.rpartition(":")[2]
        return (
            f"py:{target}: {attribute}{signature} cannot be called with ({_arguments(kwargs)}): "
            f"TypeError: {error}; it must accept num_classes and the spec's kwargs"
        )
    return None


def call_factory(target: str, factory: Any, kwargs: dict[str, Any]) -> nn.Module:
    """``factory(**kwargs)``, the user's code: any failure (even ``SystemExit``) is one line."""
    problem = signature_problem(target, factory, kwargs)
    if problem:
        raise ComponentError(problem)
    call = f"{target.rpartition(':')[2]}({_arguments(kwargs)})"
    try:
        net = factory(**kwargs)
    except (Exception, SystemExit) as error:
        raise ComponentError(f"py:{target}: {call} raised {first_line(error, typed=True)}; fix the factory") from error
    if not isinstance(net, nn.Module):
        raise ComponentError(
            f"py:{target}: {call} returned {type(net).__name__}, not a torch.nn.Module; return the network"
        )
    return net


class _ClassCount:
    """Stands for num_classes in a dry run's signature message, before the count is known."""

    def __repr__(self) -> str:
        return "<classes>"


def python_preflight(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    """The callable imports and takes ``num_classes`` and the spec's kwargs (it is not called)."""
    target = spec.model.partition(":")[2]
    try:
        factory = _import_callable(target, ctx.base_dir)
    except ComponentError as error:
        return [Check(where, spec.model, f"{where}: {error}")]
    problem = signature_problem(target, factory, {"num_classes": spec.num_classes or _ClassCount(), **spec.kwargs})
    return [Check(where, spec.model, f"{where}: {problem}" if problem else None)]


@MODELS.register("py", description="your own callable(num_classes=..., **kwargs) -> nn.Module", runs_code=True, preflight=python_preflight)
def build_python(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    factory = _import_callable(target, ctx.base_dir)
    count = spec.num_classes or len(ctx.class_names)
    net = call_factory(target, factory, {"num_classes": count, **spec.kwargs})
    preprocessing = Preprocessing(input_size=ctx.image_size).overridden(spec.preprocess, spec.model)
    return PreprocessedClassifier(net, preprocessing, count, spec.model)


def build_classifier(spec: ModelSpec, ctx: ComponentContext, *, pretrained: bool) -> PreprocessedClassifier:
    """The network of ``spec`` with its preprocessing; pretrained weights only if asked."""
    problem = spec_problem(spec)
    if problem:
        raise ComponentError(problem)
    scheme, _, target = spec.model.partition(":")
    if spec.class_ranges and spec.num_classes is None and not pretrained:
        last = max(last for ranges in spec.class_ranges.values() for _, last in ranges)
        spec = spec.model_copy(update={"num_classes": last + 1})  # the outputs the ranges index
    return MODELS.get(scheme)(target, spec, ctx, pretrained)


def pooled(classifier: PreprocessedClassifier, spec: ModelSpec, class_names: Sequence[str]) -> Any:
    """The classifier over ``spec.class_ranges``' super-classes, when it has some: output ``i``
    pools the ranges named ``class_names[i]`` (the spec may list them in any order)."""
    if not spec.class_ranges:
        return classifier
    problem = class_ranges_problem(spec, class_names)
    if problem:
        raise ComponentError(problem)
    largest = max(last for ranges in spec.class_ranges.values() for _, last in ranges)  # before listing: a range may span billions
    if largest >= classifier.num_classes:
        raise ComponentError(
            f"{spec.model}: class_ranges reach index {largest} but the model has {classifier.num_classes} outputs; fix the ranges"
        )
    groups = [[i for first, last in spec.class_ranges[name] for i in range(first, last + 1)] for name in class_names]
    return PooledClassifier(classifier, groups)


def load_classifier(spec: ModelSpec, ctx: ComponentContext, *, classes_of: str = "the source") -> PreprocessedClassifier:
    """Build, load weights, check classes, eval mode (weights a ``train`` block makes must exist:
    :func:`builder.train.ensure_weights` trains them first). ``classes_of`` names where
    ``ctx.class_names`` come from, for the mismatch message."""
    pretrained = spec.pretrained and spec.checkpoint is None
    classifier = build_classifier(spec, ctx, pretrained=pretrained)
    if spec.checkpoint and not classifier.weights_loaded:
        path = ctx.trained_location(fetch_location(spec.checkpoint, ctx.locations), spec)
        state = load_state_dict(path, cache_dir=ctx.cache_dir, what=f"{spec.model} checkpoint")
        load_weights(classifier.net, state, path=path, what=spec.model)
    classifier = pooled(classifier, spec, ctx.class_names)
    if classifier.num_classes != len(ctx.class_names):
        fix = ("pick the outputs that stand for them with label_map or class_ranges, or give num_classes with a checkpoint "
               "(or a train block) holding a head for them") if pretrained else "set num_classes or use a model trained on these classes"
        raise ComponentError(f"{spec.model}: the model has {classifier.num_classes} classes but {classes_of} has {len(ctx.class_names)}; {fix}")
    setattr(classifier, FINGERPRINT_KWARGS, dict(spec.kwargs))  # part of what it computes (timm's global_pool), so of its fingerprint
    return classifier.eval().requires_grad_(False).to(ctx.device)
