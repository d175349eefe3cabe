"""What a registered kind answers about itself without building anything: its offline checks
(the lines ``run --dry-run`` prints) and the weight files it will read.

A kind registers ``preflight=`` (config, PreflightContext, where) -> list of :class:`Check`
and ``weights=`` (config, where) -> list of :class:`Weights`; ``run --dry-run``, ``verify``
and training ask these through :func:`preflight` and :func:`weights`, never by kind name.
Nothing here downloads: locations are only found (:func:`builder.checkpoints.find_location`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from builder.checkpoints import ResolveContext, fetch_location, find_location
from builder.config import ModelSpec
from builder.errors import BuilderError
from builder.registry import MODELS, Registry


@dataclass(frozen=True)
class Check:
    """One offline check: what was checked, what was found, and the problem if any. It may
    also carry what it learned for the checks after it (class count, class names, samples)."""

    item: str
    detail: str
    problem: Optional[str] = None
    classes: Optional[int] = None
    class_names: Optional[tuple[str, ...]] = None
    samples: Optional[int] = None


@dataclass(frozen=True)
class PreflightContext(ResolveContext):
    """Locations, plus what the recipe says around the component being checked."""

    image_size: Optional[int] = None
    #: the source's class count, when known offline
    class_count: Optional[int] = None
    #: (location, component) -> the hashed path trained weights live at (None: not known offline)
    trained: Optional[Callable[[str, Any], Optional[Path]]] = None
    #: the source's class names, when known offline
    class_names: Optional[tuple[str, ...]] = None


@dataclass(frozen=True)
class Weights:
    """A weights file a component reads: where from, and the config whose ``train`` block makes it
    on first use (``trained``); ``location`` None means random initialisation."""

    what: str
    location: Optional[str]
    component: Any
    trained: bool = False
    #: "weights", "mask": a generator's fit-mask file (checked and fingerprinted like weights,
    #: never trained into), or "folder": a setting that names a pretrained model's folder when it
    #: is a local one (else a Hub id: pinned by its revision), fingerprinted as its files together
    kind: str = "weights"


#: the signatures a kind registers as ``preflight=`` and ``weights=`` (for plugin authors' hints)
Preflight = Callable[[Any, PreflightContext, str], list[Check]]
WeightsOf = Callable[[Any, str], list[Weights]]


def preflight(registry: Registry[Any], kind: str, config: Any, ctx: PreflightContext, where: str) -> list[Check]:
    """The offline checks of ``config``, a ``kind`` of ``registry`` (an unknown kind is a failed check)."""
    try:
        entry = registry.entry(kind)
    except BuilderError as error:
        return [Check(where, kind, f"{where}: {error}")]
    if entry.preflight is None:
        return [Check(where, f"{kind}: no offline checks registered")]
    checks: list[Check] = entry.preflight(config, ctx, where)
    return checks


def weights(registry: Registry[Any], kind: str, config: Any, where: str) -> list[Weights]:
    """The weight files ``config`` (a ``kind`` of ``registry``) reads; [] when the kind reads none."""
    entry = registry.entry(kind)
    return list(entry.weights(config, where)) if entry.weights is not None else []


def weights_check(weights_file: Weights, ctx: PreflightContext) -> Check:
    """Where a component's weights come from; trained ones live under a hashed name, found through
    ``ctx.trained`` when the source's classes are known offline."""
    what, location = weights_file.what, weights_file.location
    if location is None:
        return Check(what, "no weights: random initialisation")
    if weights_file.trained:
        path = ctx.trained(location, weights_file.component) if ctx.trained is not None else None
        if path is not None and path.is_file():
            return Check(what, f"{location}: trained earlier, in the cache")
        return Check(what, f"{location}: trained on the first run (unless cached)")
    try:
        found = find_location(location, ctx)
    except BuilderError as error:
        return Check(what, location, f"{what}: {error}")
    if found.missing:
        fix = "create it with 'build-benchmark fit-mask'" if weights_file.kind == "mask" else "add a train block"
        looked = f" (looked for {found.path}: a relative path is taken from the recipe's folder)" if found.path and str(found.path) != location else ""
        return Check(what, location, f"{what}: {location} does not exist{looked}; fix the path or {fix}")
    return Check(what, f"{location}: {found.how}")


def size_checks(config: Any, image_size: Optional[int], problem: Callable[[int], Optional[str]], fine: str) -> list[Check]:
    """One check per image size a generator will be asked for: the recipe's, and its
    ``train.image_size`` when it trains at another size."""
    candidates = {"image size": image_size, "generator train.image_size": getattr(getattr(config, "train", None), "image_size", None)}
    checks = []
    for label, size in candidates.items():
        if size is None:
            continue
        found = problem(int(size))
        if found and label.startswith("generator train."):
            found = f"generator train.{found}"
        checks.append(Check(label, f"{size} px: {fine}", found))
    return checks


def spec_problem(spec: ModelSpec) -> Optional[str]:
    """What its scheme cannot do that ``spec`` asks for (one line), or None: ``label_map`` on a
    scheme whose models do not name their labels (it would be ignored), a ``train`` block on one
    nothing here trains."""
    scheme = spec.model.partition(":")[0]
    if scheme == "ref":  # score's own shorthand, read from a benchmark's manifest before any spec is built
        return (f"{spec.model}: ref:<config> names the model a config of a benchmark was built against, and only 'score --model' "
                "with '--benchmark' reads it; here give that model's own spec (the benchmark's manifest.json records it under "
                "configs.<config>.reference_model)")
    if scheme not in MODELS:
        return None  # the unknown scheme is reported where the model is built
    entry = MODELS.entry(scheme)
    if spec.label_map is not None and not entry.names_labels:
        named = ", ".join(f"{e.name}:" for e in MODELS if e.names_labels)
        return (f"{spec.model}: label_map picks outputs by label name, but {scheme}: models do not name their labels "
                f"(their outputs are the benchmark's classes in order); drop label_map, or use a scheme that names labels ({named})")
    if spec.train is not None and not entry.trainable:
        return f"{spec.model}: {scheme}: models cannot be trained here; drop the train block and give weights (checkpoint)"
    return None


def unnamed_outputs_problem(spec: ModelSpec) -> Optional[str]:
    """For a scheme whose labels come with its pretrained weights: ``label_map`` on a spec that
    does not load them (a checkpoint, ``pretrained: false``), whose outputs are then the
    benchmark's classes in order, would be ignored (one line), else None."""
    if spec.label_map is None or (spec.pretrained and spec.checkpoint is None):
        return None
    return (f"{spec.model}: label_map picks outputs by the label names of its pretrained weights, but with "
            f"{'a checkpoint' if spec.checkpoint is not None else 'pretrained: false'} its outputs are the benchmark's classes "
            "in order (label_map would be ignored); drop label_map")


def head_problem(spec: ModelSpec, pretrained_count: Optional[int]) -> Optional[str]:
    """Why ``spec``'s ``num_classes`` cannot be had from its pretrained weights (one line), or
    None: another count than the pretrained head's gets a fresh random head, which only a
    checkpoint or a train block supplies; loading went on silently with the random one."""
    if spec.num_classes is None or pretrained_count is None or spec.num_classes == pretrained_count:
        return None
    if not spec.pretrained or spec.checkpoint is not None or spec.train is not None:
        return None
    return (f"{spec.model}: num_classes {spec.num_classes} is not its pretrained head's {pretrained_count} classes, so its head would "
            "start random; drop num_classes and pick outputs with label_map or class_ranges, or give a checkpoint (or a train block) "
            f"with a {spec.num_classes}-class head")


def class_ranges_problem(spec: ModelSpec, class_names: Sequence[str]) -> Optional[str]:
    """Why ``spec``'s ``class_ranges`` cannot stand for ``class_names`` (one line), or None. Each
    benchmark class is pooled from the ranges under its own name, whatever order the spec lists
    them in: a spec listing cat before dog scored dogs as cats, and names no benchmark has
    were taken by position."""
    if not spec.class_ranges:
        return None
    unknown = [name for name in spec.class_ranges if name not in class_names]
    missing = [name for name in class_names if name not in spec.class_ranges]
    if not unknown and not missing:
        return None
    shown = ", ".join(repr(name) for name in list(class_names)[:8]) + (", ..." if len(class_names) > 8 else "")
    wrong = (f"names {unknown[0]!r}, which is not a class of the benchmark" if unknown
             else f"has no ranges for the class {missing[0]!r}")
    return f"{spec.model}: class_ranges {wrong}; key the ranges by the benchmark's class names ({shown})"


def check_model(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    """A classifier spec: its scheme's checks, then its class ranges against its output count;
    the first check carries the spec's class count when it is known."""
    problem = spec_problem(spec)
    if problem:
        return [Check(where, spec.model, f"{where}: {problem}")]
    scheme = spec.model.partition(":")[0]
    checks = preflight(MODELS, scheme, spec, ctx, where)
    if any(check.problem for check in checks):
        return checks
    classes = spec.num_classes or next((c.classes for c in checks if c.classes is not None), None)
    checks = [replace(check, classes=None) for check in checks]
    if spec.class_ranges:
        largest = max(last for ranges in spec.class_ranges.values() for _, last in ranges)
        if classes is not None and largest >= classes:
            return [*checks, Check(where, spec.model, f"{where}: class_ranges reach index {largest} but the model has {classes} outputs; fix the ranges")]
        named = class_ranges_problem(spec, ctx.class_names) if ctx.class_names is not None else None
        if named:
            return [*checks, Check(where, spec.model, f"{where}: {named}")]
        checks.append(Check(f"{where} classes", f"{classes or '?'} outputs pooled into {len(spec.class_ranges)} super-classes"))
        classes = len(spec.class_ranges)
    return [replace(checks[0], classes=classes), *checks[1:]] if checks else checks


def model_weights(spec: ModelSpec, where: str) -> list[Weights]:
    """The checkpoint a classifier spec loads (trained on first use with a ``train`` block), then
    whatever its scheme reads."""
    own = [Weights(f"{where} weights", spec.checkpoint, spec, spec.train is not None)] if spec.checkpoint else []
    scheme = spec.model.partition(":")[0]
    return own + (weights(MODELS, scheme, spec, where) if scheme in MODELS else [])


def class_count(checks: list[Check]) -> Optional[int]:
    """The first class count the checks learned."""
    return next((check.classes for check in checks if check.classes is not None), None)


def family_of(config: Any) -> Optional[Registry[Any]]:
    """The registry of the pluggable section ``config`` is a kind of (None: not one)."""
    from builder.config import GeneratorConfig, OracleConfig, SourceConfig
    from builder.registry import GENERATORS, ORACLES, SOURCES

    families = ((GeneratorConfig, GENERATORS), (OracleConfig, ORACLES), (SourceConfig, SOURCES))
    return next((family for base, family in families if isinstance(config, base)), None)


def component_weights(config: Any, where: str) -> list[Weights]:
    """The weight files of any recipe component: a classifier spec, or a kind of the family its
    config class belongs to."""
    if isinstance(config, ModelSpec):
        return model_weights(config, where)
    registry = family_of(config)
    found = weights(registry, config.kind, config, where) if registry is not None else []
    mask = getattr(config, "mask", None)  # a generator's latent mask: read like weights, so checked and fingerprinted too
    return [*found, Weights(f"{where} mask", str(mask), config, kind="mask")] if mask else found


def missing_weights(configs: Iterable[Any], ctx: Any) -> Iterator[tuple[Any, Path]]:
    """(component, path) of every weights file of ``configs`` that a ``train`` block makes and
    that is not there yet; ``ctx`` is a :class:`builder.components.base.ComponentContext` (trained
    weights live under a hashed name, see its ``trained_location``)."""
    for config in configs:
        for found in component_weights(config, type(config).__name__):
            if found.trained and found.location is not None:
                path = ctx.trained_location(fetch_location(found.location, ctx.locations), found.component)
                if not path.is_file():
                    yield found.component, path
