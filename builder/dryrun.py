"""``run --dry-run``: check every name in a recipe offline and print the plan, before any GPU hour.

Each component is checked by its registered kind (:mod:`builder.preflight`): this module only
gathers the checks, compares the class counts they learned and prints the plan. Nothing is
downloaded: Hub and URL files are only found in the caches; what is not there yet is reported
as fetched on the first run, not as an error.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from builder.checkpoints import ResolveContext, find_location
from builder.config import Recipe, SourceConfig
from builder.preflight import Check, PreflightContext, check_model, class_count, component_weights, preflight, weights_check
from builder.recipes import LoadedRecipe
from builder.registry import GENERATORS, ORACLES, SOURCES

__all__ = ["Check", "DryRunReport", "dry_run"]


@dataclass(frozen=True)
class DryRunReport:
    checks: list[Check]
    plan: list[str]

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.problem]


def dry_run(loaded: LoadedRecipe, cache_dir: Path, limit: Optional[int] = None) -> DryRunReport:
    recipe = loaded.recipe
    base = PreflightContext(loaded.base_dir, cache_dir, image_size=recipe.image_size)
    source_checks = preflight(SOURCES, recipe.source.kind, recipe.source, base, "source")
    class_names = next((c.class_names for c in source_checks if c.class_names is not None), None)
    samples = next((c.samples for c in source_checks if c.samples is not None), None)
    source_classes = class_count(source_checks)
    ctx = PreflightContext(loaded.base_dir, cache_dir, recipe.image_size, source_classes, _trained_finder(loaded, cache_dir, class_names),
                           class_names)
    checks = [Check("recipe", f"{loaded.origin}: valid"), *source_checks]
    counts: dict[str, Optional[int]] = {"source": source_classes}
    for spec in recipe.reference_models:
        where = f"reference model {spec.config_name}"
        model_checks = check_model(spec, ctx, where)
        checks += model_checks + _weights_checks(spec, ctx, where, model_checks, recipe.source)
        counts[where] = class_count(model_checks)
    for where, generator in recipe.generator_sections:
        generator_checks = preflight(GENERATORS, generator.kind, generator, ctx, where)
        checks += generator_checks + _weights_checks(generator, ctx, where, generator_checks, recipe.source)
    oracle_checks = preflight(ORACLES, recipe.oracle.kind, recipe.oracle, ctx, "oracle")
    checks += oracle_checks + _weights_checks(recipe.oracle, ctx, "oracle", oracle_checks, recipe.source)
    counts["oracle prompts"] = class_count(oracle_checks)
    checks.append(_class_counts(counts))
    return DryRunReport(checks, _plan(recipe, samples, limit))


def _weights_checks(config: Any, ctx: PreflightContext, where: str, checks: list[Check], source: SourceConfig) -> list[Check]:
    """Where each weights file the component reads comes from (not asked when its own checks
    failed); a train block that would learn the evaluated samples is a problem, cached or not
    (the cached weights were trained on them too)."""
    if any(check.problem for check in checks):
        return []
    found_checks = []
    for found in component_weights(config, where):
        if found.kind == "folder":  # the kind's own checks say where its folder or Hub model is
            continue
        check = weights_check(found, ctx)
        leak = source.training_split_problem(found.component.train.split) if found.trained else None
        found_checks.append(dataclasses.replace(check, problem=f"{found.what}: {leak}") if leak and not check.problem else check)
    return found_checks


def _class_counts(counts: dict[str, Optional[int]]) -> Check:
    known = {k: v for k, v in counts.items() if v is not None}
    listing = ", ".join(f"{k} {v}" for k, v in known.items())
    if len(set(known.values())) > 1:
        return Check("class count", listing, f"class counts disagree: {listing}; fix num_classes, prompt_names or the source")
    if known:
        return Check("class count", f"{next(iter(known.values()))} classes everywhere it is known")
    return Check("class count", "not known offline")


def _trained_finder(loaded: LoadedRecipe, cache_dir: Path, class_names: Optional[tuple[str, ...]]) -> Optional[Callable[[str, Any], Optional[Path]]]:
    """How to find a trained component's hashed checkpoint, when the source's classes are known."""
    if class_names is None:
        return None
    from builder.components.base import ComponentContext

    recipe = loaded.recipe
    context = ComponentContext("cpu", cache_dir, loaded.base_dir, class_names, recipe.image_size, recipe.source, recipe.seed)
    locations = ResolveContext(loaded.base_dir, cache_dir)

    def find(location: str, component: Any) -> Optional[Path]:
        path = find_location(location, locations).path
        return context.trained_location(path, component) if path is not None else None

    return find


def _steps(recipe: Recipe) -> str:
    """The step size, and each generator's own where one sets it."""
    own = [f"{name} {config.step_size}" for name, config in recipe.named_generators.items() if config.step_size is not None]
    return f"{recipe.perturbation.step_size}" + (f"; {', '.join(own)}" if own else "")


def _plan(recipe: Recipe, samples: Optional[int], limit: Optional[int]) -> list[str]:
    configs = len(recipe.build_configs)
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
        f"at most {n * configs * budget} gradient steps and {n * configs * (budget + 1)} decodes (budget {budget}, step {_steps(recipe)})",
    ]
