"""``run --dry-run``: check every name in a recipe offline and print the plan, before any GPU hour.

Nothing is downloaded: Hub and URL files are only looked up in the caches; what is not there
yet is reported as fetched on the first run, not as an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from builder.checkpoints import ResolveContext, cached_download, resolve_location, split_pin
from builder.config import ModelSpec, Recipe
from builder.errors import BuilderError
from builder.recipes import LoadedRecipe
from builder.registry import closest, unknown_name_message


@dataclass(frozen=True)
class Check:
    item: str
    detail: str
    problem: Optional[str] = None


@dataclass(frozen=True)
class DryRunReport:
    checks: list[Check]
    plan: list[str]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.problem]


def peek_location(spec: str, ctx: ResolveContext) -> tuple[Optional[Path], str]:
    """(local path if available, how it will be obtained), with no network."""
    if spec.startswith(("http://", "https://")):
        address, pinned = split_pin(spec)
        path = cached_download(address, ctx.cache_dir)
        how = "downloaded on the first run" + (", sha256 checked" if pinned else " (not pinned: append #sha256=<hex> to check it)")
        return (path, "in the cache") if path.is_file() else (None, how)
    if spec.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        repo_path, _, revision = spec[len("hf-hub:") :].partition("@")
        parts = repo_path.split("/")
        found = try_to_load_from_cache("/".join(parts[:2]), "/".join(parts[2:]), revision=revision or None)
        return (Path(found), "in the HF cache") if isinstance(found, str) else (None, "downloaded from the Hub on the first run")
    path = resolve_location(spec, ctx)
    return (path, "local file") if path.is_file() else (None, "missing")


def _weights(location: Optional[str], component: Any, ctx: ResolveContext, what: str) -> Check:
    """Where a component's weights come from; trained ones live under a hashed name (see
    ComponentContext.trained_location), found through ``ctx.trained`` when the classes are known."""
    if location is None:
        return Check(what, "no weights: random initialisation")
    trainable = getattr(component, "train", None) is not None
    if trainable:
        trained = getattr(ctx, "trained", None)
        if trained is not None and trained(location, component).is_file():
            return Check(what, f"{location}: trained earlier, in the cache")
        return Check(what, f"{location}: trained on the first run (unless cached)")
    path, how = peek_location(location, ctx)
    if path is None and how == "missing":
        if trainable:
            return Check(what, f"{location}: trained on the first run")
        return Check(what, location, f"{what}: {location} does not exist; fix the path or add a train block")
    return Check(what, f"{location}: {how}")


def check_model(spec: ModelSpec, ctx: ResolveContext, what: str) -> tuple[list[Check], Optional[int]]:
    """Name, pretrained tag and weights of a classifier; its class count when known."""
    scheme, _, target = spec.model.partition(":")
    checks: list[Check] = []
    classes = spec.num_classes
    if scheme == "timm":
        import timm
        from timm.models import get_pretrained_cfg

        architecture = target.split(".")[0]
        if not timm.is_model(architecture):
            return [Check(what, spec.model, f"{what}: {unknown_name_message('timm model', architecture, timm.list_models())}")], None
        if spec.pretrained and spec.checkpoint is None:
            tags = timm.list_pretrained(f"{architecture}.*")
            if "." not in target:
                return [Check(what, spec.model, f"{what}: name the full pretrained tag (preprocessing follows it): one of {', '.join(tags[:6])}")], None
            if target not in tags:
                hint = closest(target, tags)
                suggestion = f"did you mean '{hint}'? " if hint else ""
                return [Check(what, spec.model, f"{what}: timm has no pretrained '{target}'; {suggestion}{len(tags)} tags: timm.list_pretrained('{architecture}.*')")], None
            pretrained_cfg = get_pretrained_cfg(target)
            classes = classes or (pretrained_cfg.num_classes if pretrained_cfg is not None else None)
        checks.append(Check(what, f"{spec.model} ({'pretrained' if spec.pretrained and not spec.checkpoint else 'own weights'})"))
    elif scheme == "py":
        from builder.components.models import _import_callable, signature_problem

        try:
            factory = _import_callable(target, ctx.base_dir)
        except BuilderError as error:
            return [Check(what, spec.model, f"{what}: {error}")], None
        problem = signature_problem(target, factory, {"num_classes": spec.num_classes or _ClassCount(), **spec.kwargs})
        if problem:
            return [Check(what, spec.model, f"{what}: {problem}")], None
        checks.append(Check(what, spec.model))
    else:
        return [Check(what, spec.model, f"{what}: unknown model scheme '{scheme}'; use timm: or py:")], None
    if spec.checkpoint is not None:
        checks.append(_weights(spec.checkpoint, spec, ctx, f"{what} weights"))
    if spec.class_ranges:
        largest = max(last for ranges in spec.class_ranges.values() for _, last in ranges)
        if classes is not None and largest >= classes:
            checks.append(Check(what, spec.model, f"{what}: class_ranges reach index {largest} but the model has {classes} outputs; fix the ranges"))
        else:
            checks.append(Check(f"{what} classes", f"{classes or '?'} outputs pooled into {len(spec.class_ranges)} super-classes"))
        classes = len(spec.class_ranges)
    return checks, classes


class _ClassCount:
    """Stands for num_classes in a dry run's signature message, before the count is known."""

    def __repr__(self) -> str:
        return "<classes>"


def check_generator(config: Any, ctx: ResolveContext, image_size: int | None = None) -> list[Check]:
    """The generator's config file and weights, and whether it takes ``image_size`` px images
    (and its ``train.image_size``, when it trains at another size); nothing is fetched."""
    from builder.components import base, vqgan

    candidates = {"image size": image_size, "generator train.image_size": getattr(getattr(config, "train", None), "image_size", None)}
    sizes: dict[str, int] = {label: int(size) for label, size in candidates.items() if size is not None}
    if config.kind != "vqgan":
        try:
            problems = {label: base.generator_image_size_problem(config, size, ctx) for label, size in sizes.items()}
        except BuilderError as error:
            return [Check("generator", config.kind, f"generator: {error}")]
        return [Check("generator", f"{config.kind}: nothing to load"), *_size_checks(sizes, problems, "any size")]
    checks = []
    path, how = peek_location(config.config, ctx)
    if path is not None:
        try:
            params = vqgan.read_taming_config(path)
        except BuilderError as error:
            checks.append(Check("generator config", config.config, str(error)))
        else:
            factor = vqgan.downsampling_factor(params)
            checks.append(Check("generator config", f"{config.config}: n_embed {params['n_embed']}, embed_dim {params['embed_dim']}, f{factor}"))
            problems = {
                label: base.image_size_cap_problem(size) or vqgan.downsampling_problem(params, size, path)
                for label, size in sizes.items()
            }
            checks += _size_checks(sizes, problems, f"a multiple of f{factor}")
    elif how == "missing":
        resolved = resolve_location(config.config, ctx)
        shown = "is a directory, not a YAML file" if resolved.is_dir() else "does not exist"
        checks.append(Check("generator config", config.config, f"generator config: {config.config} {shown}; check generator.config"))
    else:
        checks.append(Check("generator config", f"{config.config}: {how}"))
        problems = {label: base.image_size_cap_problem(size) for label, size in sizes.items()}
        checks += _size_checks(sizes, problems, "the downsampling factor is checked once the config is fetched")
    checks.append(_weights(config.checkpoint, config, ctx, "generator weights"))
    return checks


def _size_checks(sizes: dict[str, int], problems: dict[str, str | None], fine: str) -> list[Check]:
    checks = []
    for label, size in sizes.items():
        problem = problems[label]
        if problem and label.startswith("generator train."):
            problem = f"generator train.{problem}"
        checks.append(Check(label, f"{size} px: {fine}", problem))
    return checks


def check_oracle(config: Any, ctx: ResolveContext, class_count: Optional[int], where: str = "oracle") -> tuple[list[Check], Optional[int]]:
    if config.kind == "ensemble":
        checks, counts = [], []
        for i, member in enumerate(config.members):
            member_checks, count = check_oracle(member, ctx, class_count, f"{where}.members[{i}]")
            checks += member_checks
            counts.append(count)
        known = [c for c in counts if c is not None]
        return checks, known[0] if known else None
    if config.kind == "classifier":
        return check_model(config.model, ctx, where)
    import open_clip

    from builder.components.oracles import PROMPT_LISTS, register_builtin_clip_configs

    register_builtin_clip_configs()
    if config.model not in open_clip.list_models():
        return [Check(where, config.model, f"{where}: {unknown_name_message('open_clip model', config.model, open_clip.list_models())}")], None
    checks = []
    tags = open_clip.list_pretrained_tags_by_model(config.model)
    if config.pretrained in tags:
        checks.append(Check(where, f"open_clip {config.model} / {config.pretrained}"))
    elif any(c in config.pretrained for c in "/:\\") or Path(config.pretrained).suffix:
        checks.append(Check(where, f"open_clip {config.model}"))
        checks.append(_weights(config.pretrained, config, ctx, f"{where} weights"))
    else:
        return [Check(where, config.model, f"{where}: open_clip has no pretrained '{config.pretrained}' for {config.model}; tags: {', '.join(tags) or 'none'}")], None
    names = config.prompt_names
    count = len(PROMPT_LISTS[names]()) if isinstance(names, str) else (len(names) if names else class_count)
    return checks, count


@dataclass(frozen=True)
class DryRunContext(ResolveContext):
    """Locations, plus how to find a trained component's hashed checkpoint (None: unknown)."""

    trained: Any = None


def _source(recipe: Recipe, ctx: ResolveContext) -> tuple[Check, Optional[int], Optional[tuple[str, ...]]]:
    """(check, samples, classes): counted when the source is local, else known at run time."""
    from builder.sources.base import open_source

    config = recipe.source
    local = config.kind != "huggingface" or Path(getattr(config, "path", "")).expanduser().exists()
    declared = tuple(config.class_ranges or ()) or (tuple(config.class_names) if config.class_names else None)
    if not local:
        return Check("source", f"{config.kind} {getattr(config, 'path', '')}: samples and classes known at run time (not opened offline)"), None, declared
    try:
        source = open_source(config, ctx)
    except BuilderError as error:
        return Check("source", config.kind, f"source: {error}"), None, declared
    return Check("source", f"{config.kind}: {len(source)} samples, {len(source.class_names)} classes"), len(source), tuple(source.class_names)


def dry_run(loaded: LoadedRecipe, cache_dir: Path, limit: Optional[int] = None) -> DryRunReport:
    recipe = loaded.recipe
    source_check, samples, class_names = _source(recipe, ResolveContext(loaded.base_dir, cache_dir))
    ctx = DryRunContext(loaded.base_dir, cache_dir, _trained_finder(loaded, cache_dir, class_names))
    source_classes = len(class_names) if class_names else None
    checks = [Check("recipe", f"{loaded.origin}: valid")]
    checks.append(source_check)
    counts: dict[str, Optional[int]] = {"source": source_classes}
    for spec in recipe.reference_models:
        model_checks, count = check_model(spec, ctx, f"reference model {spec.config_name}")
        checks += model_checks
        counts[f"reference model {spec.config_name}"] = count
    checks += check_generator(recipe.generator, ctx, recipe.image_size)
    oracle_checks, prompts = check_oracle(recipe.oracle, ctx, source_classes)
    checks += oracle_checks
    counts["oracle prompts"] = prompts
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        listing = ", ".join(f"{k} {v}" for k, v in known.items())
        checks.append(Check("class count", listing, f"class counts disagree: {listing}; fix num_classes, prompt_names or the source"))
    elif known:
        checks.append(Check("class count", f"{next(iter(known.values()))} classes everywhere it is known"))
    return DryRunReport(checks, _plan(recipe, samples, limit))


def _trained_finder(loaded: LoadedRecipe, cache_dir: Path, class_names: Optional[tuple[str, ...]]) -> Any:
    if class_names is None:
        return None
    from builder.components.base import ComponentContext

    recipe = loaded.recipe
    context = ComponentContext("cpu", cache_dir, loaded.base_dir, class_names, recipe.image_size, recipe.source, recipe.seed)
    return lambda location, component: context.trained_location(resolve_location(location, context.locations), component)


def _plan(recipe: Recipe, samples: Optional[int], limit: Optional[int]) -> list[str]:
    configs = len(recipe.reference_models)
    budget = recipe.perturbation.budget
    if samples is None and limit is None:
        return [
            f"{configs} config(s), {len(recipe.output.formats)} format(s), {recipe.output.samples_per_shard} samples per shard",
            f"at most {budget + 1} decodes and {budget} gradient steps per sample and config",
        ]
    n = min(x for x in (samples, limit) if x is not None)
    units = math.ceil(n / recipe.output.samples_per_shard)
    return [
        f"{n} samples -> {units} work units, {units * configs * len(recipe.output.formats)} shards ({configs} config(s) x {', '.join(recipe.output.formats)})",
        f"at most {n * configs * budget} gradient steps and {n * configs * (budget + 1)} decodes (budget {budget}, step {recipe.perturbation.step_size})",
    ]
