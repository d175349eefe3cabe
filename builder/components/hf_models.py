"""``hf:<repo id or local dir>``: a Transformers image classifier (``AutoModelForImageClassification``)
with the preprocessing of its own ``AutoImageProcessor``.

Weights come from the Hugging Face cache (``HF_HOME``), downloaded on first use like any
``from_pretrained``; ``revision`` pins a branch, tag or commit. The spec's ``kwargs`` go to
``from_pretrained``: ``trust_remote_code: true`` runs the repository's own code, so such a spec
counts as code (``builder.trust``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from builder.checkpoints import offline_hint
from builder.components.base import MODELS, ComponentContext
from builder.components.labels import label_outputs
from builder.components.preprocess import PreprocessedClassifier, Preprocessing, rgb
from builder.config import ModelSpec
from builder.errors import ComponentError, first_line
from builder.paths import in_recipe_dir
from builder.preflight import Check, PreflightContext
from builder.registry import closest, unknown_name_message

log = logging.getLogger(__name__)

#: PIL resampling codes (what image processors store) -> the modes the preprocessing takes
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def require_transformers(owner: str) -> None:
    """Transformers is an extra: its absence is one line saying how to install it."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise ComponentError(f"{owner}: needs the transformers package; pip install 'fmr-builder[hf]'")


def hf_runs_code(spec: ModelSpec) -> bool:
    """Only ``trust_remote_code`` makes Transformers import code from the repository."""
    return bool(spec.kwargs.get("trust_remote_code"))


def _local_dir(target: str, base_dir: Path) -> Optional[Path]:
    """The directory ``target`` names, when it is one (relative to the recipe's folder)."""
    path = in_recipe_dir(target, base_dir)
    return path if path.is_dir() else None


def _side(size: Any, owner: str) -> tuple[int, int]:
    """(crop side, resize side) of an image processor's ``size`` (a dict or SizeDict)."""
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("shortest_edge"):
        shortest = int(get("shortest_edge") or 0)
        return shortest, shortest
    height, width = get("height"), get("width")
    if not height or height != width:
        raise ComponentError(f"{owner}: the image processor's size {dict(size) if isinstance(size, dict) else size} is not square; set preprocess.input_size")
    return int(height), int(height)


def hf_preprocessing(processor: Any, owner: str) -> Preprocessing:
    """The image processor's resize, centre crop and normalisation on [0, 1] images."""
    crop, resize = _side(processor.size, owner)
    crop_pct = 1.0
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None:
        crop = _side(processor.crop_size, owner)[0]
        crop_pct = crop / resize
    elif getattr(processor, "crop_pct", None) and crop < 384:  # ConvNeXt: crops below 384 px
        crop_pct = float(processor.crop_pct)
    code = int(getattr(processor, "resample", 3))
    if code not in _RESAMPLE:
        log.warning("%s: resampling %d has no differentiable twin; using bicubic", owner, code)
    normalise = getattr(processor, "do_normalize", True)
    return Preprocessing(
        input_size=crop,
        interpolation=_RESAMPLE.get(code, "bicubic"),
        crop_pct=crop_pct,
        mean=rgb(processor.image_mean, owner, "mean") if normalise else (0.0, 0.0, 0.0),
        std=rgb(processor.image_std, owner, "std") if normalise else (1.0, 1.0, 1.0),
    )


def _load(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> tuple[Any, Any]:
    """(model, image processor) of ``target``; every failure to find them is one line."""
    require_transformers(spec.model)
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    where = str(_local_dir(target, ctx.base_dir) or target)
    options = {"revision": spec.revision, "trust_remote_code": hf_runs_code(spec)}
    try:
        processor = AutoImageProcessor.from_pretrained(where, **options)
        if pretrained:
            return AutoModelForImageClassification.from_pretrained(where, **{**spec.kwargs, **options}), processor
        config = AutoConfig.from_pretrained(where, **options)
        count = spec.num_classes or len(ctx.class_names)
        config.num_labels = count
        config.id2label, config.label2id = {i: f"LABEL_{i}" for i in range(count)}, {f"LABEL_{i}": i for i in range(count)}
        return AutoModelForImageClassification.from_config(config, trust_remote_code=options["trust_remote_code"]), processor
    except OSError as error:  # files missing: not found, not cached, no network
        raise ComponentError(
            f"hf:{target}: cannot load it from {where if where != target else 'the HF cache or the Hub'} ({first_line(error)}); "
            f"fix the repo id or directory, or run once with network so it is cached{offline_hint() if where == target else ''}"
        ) from None
    except ValueError as error:  # files read, but not a model Transformers can classify images with
        raise ComponentError(
            f"hf:{target}: Transformers read it but cannot load it as an image classifier ({first_line(error)}); "
            f"name an image-classification model, or upgrade transformers (installed: {_transformers_version()}) if its model type is newer"
        ) from None


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def _cached_config(target: str, spec: ModelSpec, ctx: PreflightContext) -> tuple[Optional[Path], Optional[str]]:
    """(config.json found offline, why ``target`` cannot name a model) for a dry run."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    local = _local_dir(target, ctx.base_dir)
    if local is not None:
        found = local / "config.json"
        return (found, None) if found.is_file() else (None, f"{local} has no config.json: not a Transformers model directory")
    try:
        validate_repo_id(target)
    except HFValidationError:
        return None, f"'{target}' is neither a directory nor a Hub repo id (owner/name); fix the name or the path"
    cached = try_to_load_from_cache(target, "config.json", revision=spec.revision)
    return (Path(cached), None) if isinstance(cached, str) else (None, None)


def _cached_repos() -> list[str]:
    """The model repos in the HF cache, for a 'did you mean' when one is not there."""
    from huggingface_hub import scan_cache_dir

    try:
        return [repo.repo_id for repo in scan_cache_dir().repos if repo.repo_type == "model"]
    except Exception:  # noqa: BLE001 - no cache yet, or one being written: nothing to suggest
        return []


def hf_preflight(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    """The repo id or directory is well formed, and when its config is at hand offline, it is an
    image classifier Transformers knows (its label count is the class count)."""
    from huggingface_hub import constants

    try:
        require_transformers(spec.model)
    except ComponentError as error:
        return [Check(where, spec.model, f"{where}: {error}")]
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as KNOWN

    target = spec.model.partition(":")[2]
    config_file, problem = _cached_config(target, spec, ctx)
    if problem:
        return [Check(where, spec.model, f"{where}: {spec.model}: {problem}")]
    if config_file is None:
        hint = closest(target, _cached_repos())
        also = f" (did you mean '{hint}', which is?)" if hint else ""
        if constants.HF_HUB_OFFLINE:
            return [Check(where, spec.model, f"{where}: {spec.model} is not in the HF cache and HF_HUB_OFFLINE is set{also}; fix the name or run once with network")]
        return [Check(where, f"{spec.model}: not in the HF cache, downloaded on the first run{also}")]
    config = json.loads(config_file.read_text())
    model_type = str(config.get("model_type", ""))
    if model_type not in KNOWN and not (hf_runs_code(spec) and "auto_map" in config):
        return [Check(where, spec.model, f"{where}: {spec.model}: {unknown_name_message('image classifier type', model_type, list(KNOWN))}")]
    own = spec.pretrained and spec.checkpoint is None
    count = len(config.get("id2label") or {}) or None
    classes = None  # labels matched to the classes by name are counted when loaded
    if own:
        classes = len(spec.label_map) if spec.label_map else (count if count == ctx.class_count else None)
    return [Check(where, f"{spec.model} ({model_type}, {'pretrained, ' + str(count) + ' labels' if own else 'own weights'})", classes=classes)]


@MODELS.register("hf", description="transformers AutoModelForImageClassification, preprocessing from its AutoImageProcessor",
                 runs_code=hf_runs_code, preflight=hf_preflight, names_labels=True)
def build_hf(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    net, processor = _load(target, spec, ctx, pretrained)
    preprocessing = hf_preprocessing(processor, spec.model).overridden(spec.preprocess, spec.model)
    labels = [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
    outputs = label_outputs(spec.model, labels, ctx.class_names, spec.label_map) if pretrained else None
    return PreprocessedClassifier(net, preprocessing, len(labels), spec.model, logits_field="logits", outputs=outputs)
