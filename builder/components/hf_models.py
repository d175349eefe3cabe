"""``hf:<repo id or local dir>``: a Transformers image classifier (``AutoModelForImageClassification``)
with the preprocessing of its own ``AutoImageProcessor``.

Weights come from the Hugging Face cache (``HF_HOME``), downloaded on first use like any
``from_pretrained``; ``revision`` pins a branch, tag or commit. The spec's ``kwargs`` go to
``from_pretrained``: ``trust_remote_code: true`` runs the repository's own code, and any kwarg
but a few inert loading options may too (``weights_only: false`` unpickles the weights), so such
a spec counts as code (``builder.trust``).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

from builder.checkpoints import REREAD, offline_hint
from builder.components.base import MODELS, ComponentContext
from builder.components.labels import label_outputs
from builder.components.preprocess import PreprocessedClassifier, Preprocessing, crop_fraction, rgb
from builder.config import ModelSpec
from builder.errors import ComponentError, first_line
from builder.paths import in_recipe_dir
from builder.preflight import Check, PreflightContext, Weights, head_problem, unnamed_outputs_problem
from builder.registry import closest, unknown_name_message

log = logging.getLogger(__name__)

#: PIL resampling codes (what image processors store) -> the modes the preprocessing takes
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def require_transformers(owner: str) -> None:
    """Transformers is an extra: its absence is one line saying how to install it."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        raise ComponentError(f"{owner}: needs the transformers package; pip install 'fmr-builder[hf]'")


#: ``from_pretrained`` kwargs that only say how to read the weights, with any value
_INERT_KWARGS = frozenset({"dtype", "torch_dtype", "ignore_mismatched_sizes", "subfolder", "use_safetensors", "low_cpu_mem_usage"})
#: kwargs inert only with these values: other attention implementations may fetch a Hub kernel,
#: ``weights_only: false`` unpickles the weights, ``trust_remote_code`` imports the repository's code
_INERT_VALUES: dict[str, tuple[Any, ...]] = {"attn_implementation": ("eager", "sdpa"), "weights_only": (True,), "trust_remote_code": (False,)}
#: the weights files Transformers reads from a model directory, in its order of preference
_WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hf_runs_code(spec: ModelSpec) -> bool:
    """Whether loading may run code: ``trust_remote_code``, or any ``from_pretrained`` kwarg
    outside a short list of inert loading options (``weights_only: false`` unpickles the
    weights, ``use_kernels`` or a Hub ``attn_implementation`` fetches and runs kernels)."""
    return any(key not in _INERT_KWARGS and not (key in _INERT_VALUES and value in _INERT_VALUES[key])
               for key, value in spec.kwargs.items())


def _remote_code(spec: ModelSpec) -> bool:
    """Whether Transformers is to import the repository's own code (``trust_remote_code``)."""
    return bool(spec.kwargs.get("trust_remote_code"))


def _local_dir(target: str, base_dir: Path) -> Optional[Path]:
    """The directory ``target`` names, when it is one (relative to the recipe's folder)."""
    path = in_recipe_dir(target, base_dir)
    return path if path.is_dir() else None


#: the image processors' ``do_*`` steps reproduced here (``do_convert_rgb``: images are RGB
#: already; ``do_reduce_labels``: segmentation labels); any other one switched on is refused
_DONE_STEPS = frozenset({"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb", "do_reduce_labels",
                         "do_flip_channel_order"})
#: what a ``preprocess:`` override must set to stand in for a processor's sizes, or for all of it
_SIZES, _EVERYTHING = frozenset({"input_size", "crop_pct"}), frozenset({"input_size", "crop_pct", "interpolation", "mean", "std"})


def _unreproduced(processor: Any, owner: str, given: frozenset[str], field: str, value: Any, needs: frozenset[str]) -> None:
    """Refuse, in one line, a processor setting the preprocessing cannot reproduce, unless the
    spec's ``preprocess`` sets what stands in for it (guessing would score another input)."""
    if needs <= given:
        return
    wanted = ", ".join(name for name in ("input_size", "crop_pct", "interpolation", "mean", "std") if name in needs)
    raise ComponentError(f"{owner}: its {type(processor).__name__}'s {field}={value!r} is not reproduced here; "
                         f"give preprocess: {{{wanted}}} in the spec to preprocess its images yourself")


def _lineage(processor: Any) -> set[str]:
    """The processor's class names without their backend suffix (``LevitImageProcessorPil``)."""
    return {cls.__name__.removesuffix("Pil").removesuffix("Fast") for cls in type(processor).__mro__}


def _square(size: Any, what: str, processor: Any, owner: str, given: frozenset[str]) -> tuple[int, bool]:
    """(side, whether it is a shortest edge) of an image processor's ``size`` or ``crop_size``."""
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("shortest_edge"):
        return int(get("shortest_edge") or 0), True
    height, width = get("height"), get("width")
    if not height or height != width:
        _unreproduced(processor, owner, given, what, dict(size) if isinstance(size, dict) else size, _SIZES)
    return int(height or width or 224), False


def _sides(processor: Any, owner: str, given: frozenset[str]) -> tuple[int, int]:
    """(shorter side resized to, centre crop) of the processor's own resize rule: LeViT resizes
    to 256/224 of its size, PoolFormer to size / crop_pct, ConvNeXt below 384 px to size /
    crop_pct then crops its size (warps at 384 and above); then ``crop_size`` if it centre-crops."""
    if not getattr(processor, "do_resize", True):
        _unreproduced(processor, owner, given, "do_resize", False, _SIZES)
    side, shortest = _square(processor.size, "size", processor, owner, given)
    lineage, crop_pct = _lineage(processor), getattr(processor, "crop_pct", None)
    resize = crop = side
    if "PerceiverImageProcessor" in lineage and getattr(processor, "do_center_crop", False):
        # crops size / crop_size of the shorter side, then resizes that to size: the same view
        return _square(processor.crop_size, "crop_size", processor, owner, given)[0], side
    if "PPLCNetImageProcessor" in lineage and getattr(processor, "resize_short", None):
        if int(getattr(processor, "size_divisor", 1) or 1) != 1:
            _unreproduced(processor, owner, given, "size_divisor", processor.size_divisor, _SIZES)
        resize = crop = int(processor.resize_short)
    elif "ConvNextImageProcessor" in lineage and crop_pct and side < 384:
        resize = int(side / crop_pct)
    elif "PoolFormerImageProcessor" in lineage and crop_pct:
        resize = crop = int(side / crop_pct)
    elif "LevitImageProcessor" in lineage and shortest:
        resize = crop = int(256 / 224 * side)
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) is not None:
        wanted = _square(processor.crop_size, "crop_size", processor, owner, given)[0]
        if wanted > crop and crop != resize:  # would pad around an earlier crop: not one resize and crop
            _unreproduced(processor, owner, given, "crop_size", processor.crop_size, _SIZES)
        crop = wanted
    return resize, crop


def _values(processor: Any, owner: str) -> tuple[tuple[float, float, float], tuple[float, float, float], bool]:
    """(mean, std, BGR) on [0, 1] images of the processor's rescale, normalisation and channel
    order: its rescale_factor (and EfficientNet's rescale_offset, x * factor - 1) on 0..255
    pixels, its mean and std, EfficientNet's include_top (a second division by std); MobileViT
    never normalises and flips to BGR after rescaling, PP-LCNet flips after normalising."""
    lineage = _lineage(processor)
    rescale = bool(getattr(processor, "do_rescale", True))
    scale = 255.0 * float(getattr(processor, "rescale_factor", 1 / 255)) if rescale else 255.0
    shift = -1.0 if rescale and getattr(processor, "rescale_offset", False) else 0.0
    normalise = bool(getattr(processor, "do_normalize", True)) and "MobileViTImageProcessor" not in lineage
    mean = rgb(processor.image_mean, owner, "mean") if normalise else (0.0, 0.0, 0.0)
    std = rgb(processor.image_std, owner, "std") if normalise else (1.0, 1.0, 1.0)
    again = rgb(processor.image_std, owner, "std") if getattr(processor, "include_top", False) else (1.0, 1.0, 1.0)
    std = (std[0] * again[0], std[1] * again[1], std[2] * again[2])
    bgr = bool(getattr(processor, "do_flip_channel_order", False))
    if "PPLCNetImageProcessor" in lineage:  # flipped after normalising: the statistics flip with the channels
        mean, std, bgr = mean[::-1], std[::-1], True
    return (rgb([(m - shift) / scale for m in mean], owner, "mean"), rgb([s / scale for s in std], owner, "std"), bgr)


def _timm_wrapped(processor: Any, owner: str) -> Preprocessing:
    """A timm model on the Hub read by Transformers (``timm_wrapper``): timm's eval data config."""
    data = processor.data_config
    if data.get("crop_mode", "center") != "center":
        _unreproduced(processor, owner, frozenset(), "crop_mode", data["crop_mode"], _SIZES)
    return Preprocessing(input_size=int(data["input_size"][-1]), interpolation=str(data.get("interpolation", "bicubic")),
                         crop_pct=float(data.get("crop_pct", 1.0)), mean=rgb(data["mean"], owner, "mean"), std=rgb(data["std"], owner, "std"))


def hf_preprocessing(processor: Any, owner: str, given: frozenset[str] = frozenset()) -> Preprocessing:
    """The image processor's own resize, centre crop, rescale, normalisation and channel order on
    [0, 1] images; a step it takes that these cannot express is refused in one line unless
    ``given`` (the fields the spec's ``preprocess`` sets) stands in for it."""
    if "TimmWrapperImageProcessor" in _lineage(processor):
        return _timm_wrapped(processor, owner)
    for field, value in sorted(vars(processor).items()):
        if field.startswith("do_") and field not in _DONE_STEPS and value is True:
            _unreproduced(processor, owner, given, field, value, _EVERYTHING)
    resize, crop = _sides(processor, owner, given)
    code = int(getattr(processor, "resample", 3))
    if code not in _RESAMPLE:
        log.warning("%s: resampling %d has no differentiable twin; using bicubic", owner, code)
    mean, std, bgr = _values(processor, owner)
    return Preprocessing(input_size=crop, interpolation=_RESAMPLE.get(code, "bicubic"), crop_pct=crop_fraction(crop, resize),
                         mean=mean, std=std, bgr=bgr)


def _load(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> tuple[Any, Any]:
    """(model, image processor) of ``target``; every failure to find or read them is one line."""
    require_transformers(spec.model)
    from safetensors import SafetensorError

    local = _local_dir(target, ctx.base_dir)
    try:
        return _from_pretrained(str(local or target), spec, ctx, pretrained)
    except (pickle.UnpicklingError, EOFError, RuntimeError, MemoryError, SafetensorError) as error:  # found, but unreadable
        raise _unreadable(target, _weights_file(target, spec, local), local, error) from None
    except OSError as error:  # files missing (not found, not cached, no network), or found but unreadable
        found = _weights_file(target, spec, local)
        if local is not None or (found is not None and _cut_zip(found)):
            raise _unreadable(target, found, local, error) from None
        raise ComponentError(
            f"hf:{target}: cannot load it from the HF cache or the Hub ({first_line(error)}); "
            f"fix the repo id or directory, or run once with network so it is cached{offline_hint()}"
        ) from None
    except ValueError as error:  # files read, but not a model Transformers can classify images with
        raise ComponentError(
            f"hf:{target}: Transformers read it but cannot load it as an image classifier ({first_line(error)}); "
            f"name an image-classification model, or upgrade transformers (installed: {_transformers_version()}) if its model type is newer"
        ) from None


def _from_pretrained(where: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> tuple[Any, Any]:
    """(model, image processor) from ``where`` (a directory or a repo id), as Transformers raises."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    options = {"revision": spec.revision, "trust_remote_code": _remote_code(spec)}
    processor = AutoImageProcessor.from_pretrained(where, **options)
    if pretrained:
        net, loading = AutoModelForImageClassification.from_pretrained(where, output_loading_info=True, **{**spec.kwargs, **options})
        problem = _head_problem(spec, net, loading)
        if problem:
            raise ComponentError(problem)
        return net, processor
    config = AutoConfig.from_pretrained(where, **options)
    count = spec.num_classes or len(ctx.class_names)
    config.num_labels = count
    config.id2label, config.label2id = {i: f"LABEL_{i}" for i in range(count)}, {f"LABEL_{i}": i for i in range(count)}
    return AutoModelForImageClassification.from_config(config, trust_remote_code=options["trust_remote_code"]), processor


def _weights_file(target: str, spec: ModelSpec, local: Optional[Path]) -> Optional[Path]:
    """The weights file Transformers reads: in the local directory, or in the HF cache."""
    folder = str(spec.kwargs.get("subfolder") or "")
    if local is not None:
        return next((local / folder / name for name in _WEIGHTS_FILES if (local / folder / name).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for name in _WEIGHTS_FILES:
        try:
            cached = try_to_load_from_cache(target, f"{folder}/{name}" if folder else name, revision=spec.revision)
        except Exception:  # noqa: BLE001 - not a repo id the cache can hold: nothing to name
            return None
        if isinstance(cached, str):
            return Path(cached)
    return None


def _unreadable(target: str, found: Optional[Path], local: Optional[Path], error: BaseException) -> ComponentError:
    """One line for a model whose files were found but cannot be read (truncated, corrupt, or a
    pickle of more than tensors), naming its weights file ``found`` (else where it was looked for)."""
    place = str(found or local or f"its files in the HF cache ({target})")
    globals_named = re.findall(r"GLOBAL ([\w.]+)", str(error))
    if isinstance(error, pickle.UnpicklingError):
        reason = (f"it pickles {', '.join(globals_named[:3])}, which loading with weights_only refuses" if globals_named
                  else "not a torch checkpoint: its pickle is malformed")
    elif isinstance(error, EOFError) or (found is not None and found.suffix == ".bin" and _cut_zip(found)):
        reason = "it ends too early: truncated"
    else:
        reason = first_line(error)
    return ComponentError(f"hf:{target}: cannot read {place} ({reason}); {REREAD} (save_pretrained writes safetensors)")


def _cut_zip(path: Path) -> bool:
    """Whether ``path`` starts as a zip archive (a torch checkpoint) but has no end: truncated."""
    try:
        with path.open("rb") as handle:
            return handle.read(2) == b"PK" and not zipfile.is_zipfile(path)
    except OSError:
        return False


def _head_problem(spec: ModelSpec, net: Any, loading: dict[str, Any]) -> Optional[str]:
    """Why the pretrained classifier cannot be used as loaded (one line), or None: a num_classes
    other than its labels', or a head the checkpoint lacks (a backbone-only checkpoint, a head
    of another size): Transformers starts those random and only says so in its load report."""
    problem = head_problem(spec, int(net.config.num_labels))
    if problem or spec.train is not None:
        return problem
    body = f"{net.base_model_prefix}."
    found = [entry[0] if isinstance(entry, tuple) else entry for entry in [*loading.get("missing_keys", ()), *loading.get("mismatched_keys", ())]]
    head = sorted(str(key) for key in found if not str(key).startswith(body))
    if not head:
        return None
    return (f"{spec.model}: its checkpoint holds no classification head that fits ('{head[0]}'{' and more' if len(head) > 1 else ''} "
            "would start random); use a model fine-tuned for image classification, or give a checkpoint (or a train block) with the head")


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

    problem = unnamed_outputs_problem(spec)
    if problem:
        return [Check(where, spec.model, f"{where}: {problem}")]
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
    if model_type not in KNOWN and not (_remote_code(spec) and "auto_map" in config):
        return [Check(where, spec.model, f"{where}: {spec.model}: {unknown_name_message('image classifier type', model_type, list(KNOWN))}")]
    own = spec.pretrained and spec.checkpoint is None
    count = len(config.get("id2label") or {}) or None
    problem = head_problem(spec, count) if own else None
    if problem:
        return [Check(where, spec.model, f"{where}: {problem}")]
    classes = None  # labels matched to the classes by name are counted when loaded
    if own:  # class_ranges index (and pool) the raw outputs
        classes = len(spec.label_map) if spec.label_map else (count if spec.class_ranges or count == ctx.class_count else None)
    return [Check(where, f"{spec.model} ({model_type}, {'pretrained, ' + str(count) + ' labels' if own else 'own weights'})", classes=classes)]


def hf_weights(spec: ModelSpec, where: str) -> list[Weights]:
    """A model saved as a local folder is fingerprinted by its files (a build's identity); a Hub
    id is pinned by its ``revision``."""
    return [Weights(f"{where} folder", spec.model.partition(":")[2], spec, kind="folder")]


@MODELS.register("hf", description="transformers AutoModelForImageClassification, preprocessing from its AutoImageProcessor",
                 runs_code=hf_runs_code, preflight=hf_preflight, weights=hf_weights, names_labels=True)
def build_hf(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    problem = unnamed_outputs_problem(spec)
    if problem:
        raise ComponentError(problem)
    net, processor = _load(target, spec, ctx, pretrained)
    given = frozenset(field for field, value in spec.preprocess.model_dump().items() if value is not None)
    preprocessing = hf_preprocessing(processor, spec.model, given).overridden(spec.preprocess, spec.model)
    labels = [str(net.config.id2label[i]) for i in range(net.config.num_labels)]
    # class_ranges index the raw outputs, pooled afterwards: their super-classes are no label names
    named = pretrained and not spec.class_ranges
    outputs = label_outputs(spec.model, labels, ctx.class_names, spec.label_map) if named else None
    return PreprocessedClassifier(net, preprocessing, len(labels), spec.model, logits_field="logits", outputs=outputs)
