"""``robustbench:[<threat model>/]<name>``: an ImageNet model of the RobustBench model zoo
(threat model ``Linf`` or ``corruptions``; robustbench 1.1.1 lists no ImageNet ``L2`` models),
loaded by robustbench's own ``load_model``, with the preprocessing robustbench evaluates it with.

Weights live where robustbench keeps them, ``<model_dir>/imagenet/<threat model>/<name>.pt``
(ensembles: ``<name>.pt_m<i>.pt``), downloaded there on first use as robustbench does;
``model_dir`` is the spec's ``kwargs: {model_dir: ...}`` (relative to the recipe's folder), else
``<cache>/robustbench``. The zoo's timm entries and ``Standard_R50`` keep theirs where timm and
torchvision download by URL: torch.hub's cache.

robustbench 1.1.1 pins timm==1.0.9, so it is installed with ``--no-deps`` beside the
``robustbench`` extra (what loading a model imports). Its package ``__init__`` also imports its
AutoAttack evaluation (module ``autoattack``, a git-only dependency) and its dataset loaders
(``pkg_resources``, gone from setuptools 81); loading a model needs neither, so when either is
missing robustbench's modules are imported without running that ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from torch import nn

from builder.checkpoints import ResolveContext
from builder.components.base import MODELS, ComponentContext
from builder.components.labels import label_outputs
from builder.components.preprocess import PreprocessedClassifier, Preprocessing
from builder.components.torchvision_models import crop_fraction
from builder.config import ModelSpec
from builder.errors import ComponentError, first_line
from builder.paths import in_recipe_dir
from builder.preflight import Check, PreflightContext
from builder.registry import unknown_name_message

log = logging.getLogger(__name__)

INSTALL = "pip install 'fmr-builder[robustbench]' && pip install --no-deps robustbench==1.1.1"

#: ``robustbench.data.PREPROCESSINGS`` as (crop side, resize side, interpolation); its transforms
#: end in ToTensor (no normalisation: the models normalise inside). Res224 resizes to a square,
#: the same as resize-then-crop on the builder's square images. Checked against robustbench's own.
PREPROCESSINGS = {
    "Res256Crop224": (224, 256, "bilinear"),
    "BicubicRes256Crop224": (224, 256, "bicubic"),
    "Res224": (224, 224, "bilinear"),
}


def robustbench_utils(owner: str) -> Any:
    """``robustbench.utils`` (``load_model``), its package ``__init__`` skipped when that cannot run."""
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench.utils"]
    found = importlib.util.find_spec("robustbench")
    if found is None:
        raise ComponentError(f"{owner}: needs the robustbench package; {INSTALL}")
    whole = all(importlib.util.find_spec(name) is not None for name in ("autoattack", "pkg_resources"))
    if "robustbench" not in sys.modules and not whole:
        sys.modules["robustbench"] = importlib.util.module_from_spec(found)  # the package, its __init__ not run
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its architectures import timm's deprecated paths
            return importlib.import_module("robustbench.utils")
    except ImportError as error:
        raise ComponentError(f"{owner}: importing robustbench failed ({first_line(error, typed=True)}); {INSTALL}") from None


def imagenet_zoo(owner: str) -> dict[str, dict[str, Any]]:
    """robustbench's ImageNet model zoo: threat model -> {name: entry}."""
    robustbench_utils(owner)
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset

    return {threat.value: models for threat, models in model_dicts[BenchmarkDataset.imagenet].items()}


def lookup(spec: ModelSpec) -> tuple[str, str, dict[str, Any]]:
    """(threat model, name, zoo entry) the spec names; a wrong name gets a 'did you mean'."""
    zoo = imagenet_zoo(spec.model)
    threat, _, name = spec.model.partition(":")[2].rpartition("/")
    if threat and threat not in zoo:
        raise ComponentError(f"{spec.model}: {unknown_name_message('robustbench ImageNet threat model', threat, list(zoo))}")
    for each in [threat] if threat else list(zoo):
        if name in zoo[each]:
            return each, name, zoo[each][name]
    names = sorted({model for each in ([threat] if threat else zoo) for model in zoo[each]})
    listing = "robustbench's model_zoo (ImageNet, Linf and corruptions)"
    raise ComponentError(f"{spec.model}: {unknown_name_message('robustbench ImageNet model', name, names, listing)}")


def model_dir(spec: ModelSpec, locations: ResolveContext) -> Path:
    """robustbench's ``model_dir``: the spec's ``kwargs.model_dir``, else ``<cache>/robustbench``."""
    given = spec.kwargs.get("model_dir")
    if given is None:
        return locations.cache_dir / "robustbench"
    return in_recipe_dir(str(given), locations.base_dir)


def _timm_name(threat: str, name: str) -> str:
    """The timm model robustbench registers for a zoo entry (load_model tries it first)."""
    return f"{name.lower().replace('-', '_')}_imagenet_{threat.lower()}"


def weight_files(threat: str, name: str, entry: dict[str, Any], folder: Path) -> Optional[list[Path]]:
    """The files ``load_model`` reads under ``folder`` (None: torch.hub's cache keeps them)."""
    import timm

    gdrive = entry["gdrive_id"]
    if timm.is_model(_timm_name(threat, name)) or not gdrive:
        return None
    path = folder / "imagenet" / threat / f"{name}.pt"
    return [Path(f"{path}_m{i}.pt") for i in range(len(gdrive))] if isinstance(gdrive, list) else [path]


def spec_problem(spec: ModelSpec, threat: str, name: str, entry: dict[str, Any]) -> Optional[str]:
    """Why this spec cannot be built (None: it can), judged before anything is loaded."""
    others = sorted(set(spec.kwargs) - {"model_dir"})
    if others:
        return f"{spec.model}: unknown kwargs {others}; robustbench models take only model_dir"
    if spec.checkpoint is not None or not spec.pretrained:
        return f"{spec.model}: loads robustbench's own weights only; drop 'checkpoint' and 'pretrained: false' (a checkpoint goes to <model_dir>/imagenet/{threat}/{name}.pt)"
    import timm

    key = entry.get("preprocessing")
    if not timm.is_model(_timm_name(threat, name)) and key not in PREPROCESSINGS:
        return f"{spec.model}: its robustbench preprocessing {key!r} is not supported (only {', '.join(PREPROCESSINGS)}); use another model"
    return None


def robustbench_preprocessing(threat: str, name: str, entry: dict[str, Any], net: nn.Module) -> Preprocessing:
    """What ``robustbench.data.get_preprocessing`` gives the model, as the differentiable preprocessing."""
    import timm

    if timm.is_model(_timm_name(threat, name)):  # robustbench reads the timm config (of the model inside its normaliser)
        inner: Any = net.model if isinstance(net, nn.Sequential) else net
        config = inner.default_cfg
        return Preprocessing(input_size=int(config["input_size"][1]), interpolation=str(config["interpolation"]), crop_pct=float(config["crop_pct"]))
    crop, resize, mode = PREPROCESSINGS[entry["preprocessing"]]
    return Preprocessing(input_size=crop, interpolation=mode, crop_pct=crop_fraction(crop, resize))


def imagenet_labels() -> list[str]:
    """ImageNet-1k's labels in output order (torchvision's list, shipped with it)."""
    from torchvision.models import ResNet50_Weights

    return [str(label) for label in ResNet50_Weights.IMAGENET1K_V1.meta["categories"]]


def _load(spec: ModelSpec, threat: str, name: str, folder: Path, files: Optional[list[Path]]) -> nn.Module:
    """robustbench's ``load_model``; a failure is one line (missing weights: the offline error)."""
    utils = robustbench_utils(spec.model)
    missing = [path for path in files or [] if not path.is_file()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net: nn.Module = utils.load_model(name, model_dir=str(folder), dataset="imagenet", threat_model=threat)
    except Exception as error:  # gdown's or the hubs' download, torch.load, load_state_dict
        if files is None or missing:
            where = missing[0] if missing else "torch.hub's cache"
            raise ComponentError(
                f"{spec.model}: weights are not in {where} and cannot be downloaded ({first_line(error, typed=True)}); "
                "run once with network or put robustbench's checkpoint there"
            ) from None
        raise ComponentError(f"{spec.model}: robustbench's load_model failed on {files[0]}: {first_line(error, typed=True)}; replace that checkpoint") from None
    return net


def robustbench_preflight(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    """The name is in robustbench's ImageNet zoo; whether its weights are there yet."""
    try:
        threat, name, entry = lookup(spec)
        problem = spec_problem(spec, threat, name, entry)
        if problem:
            raise ComponentError(problem)
        files = weight_files(threat, name, entry, model_dir(spec, ctx))
    except ComponentError as error:
        return [Check(where, spec.model, f"{where}: {error}")]
    if files is None:
        how = "weights from torch.hub's cache, downloaded on the first run if missing"
    else:
        missing = [path for path in files if not path.is_file()]
        how = f"not in {missing[0].parent}, downloaded on the first run" if missing else f"{files[0].name} in {files[0].parent}"
    classes = len(spec.label_map) if spec.label_map else (1000 if ctx.class_count == 1000 else None)  # others are matched by name
    return [Check(where, f"{spec.model} ({threat}, 1000 ImageNet labels; {how})", classes=classes)]


@MODELS.register("robustbench", description="robustbench.utils.load_model(name, dataset='imagenet'), preprocessing from robustbench.data",
                 preflight=robustbench_preflight, names_labels=True)
def build_robustbench(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    threat, name, entry = lookup(spec)
    problem = spec_problem(spec, threat, name, entry)
    if problem:
        raise ComponentError(problem)
    folder = model_dir(spec, ctx.locations)
    net = _load(spec, threat, name, folder, weight_files(threat, name, entry, folder))
    preprocessing = robustbench_preprocessing(threat, name, entry, net).overridden(spec.preprocess, spec.model)
    outputs = None if spec.class_ranges else label_outputs(spec.model, imagenet_labels(), ctx.class_names, spec.label_map)
    return PreprocessedClassifier(net, preprocessing, 1000, spec.model, outputs=outputs)
