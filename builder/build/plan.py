"""The planner (driver side): what a build is, what its output dir holds, which units remain.

Planning reads the source's listing and the output dir but writes nothing: the dir is only
claimed (:func:`builder.outdir.claim_output`) once the components have loaded, so a build
that cannot start leaves everything as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from builder import __version__
from builder.build.executors.base import package_difference
from builder.build.units import WorkUnit, plan_units
from builder.checkpoints import ResolveContext, find_location
from builder.components.base import check_image_size
from builder.config import Recipe, recipe_to_dict
from builder.errors import OutputError
from builder.fileio import sha256_file, sha256_tree
from builder.manifest import MANIFEST_FORMAT
from builder.outdir import OutputState, check_foreign_files, check_unlocked, first_look, inspect_output
from builder.paths import source_locations
from builder.preflight import Check, component_weights
from builder.recipes import LoadedRecipe
from builder.registry import loaded_plugins
from builder.sources.base import SourceContext, listing_digest, open_source
from builder.storage import Location, Storage, open_storage


@dataclass(frozen=True)
class BuildOptions:
    #: a local dir, or an fsspec URL (``s3://bucket/prefix``) of an object store
    out_dir: Location
    device: str
    cache_dir: Path
    batch_size: Optional[int] = None
    limit: Optional[int] = None
    overwrite: bool = False
    #: with ``overwrite`` or a resume: also delete files in the dir that the build did not write
    force_clean: bool = False
    progress: bool = True
    #: torch.compile the generator's decoder (the slots keep its batch shape fixed)
    compile: bool = False
    #: ``key=value`` options of the fsspec filesystem of a URL ``out_dir`` (endpoint, profile...)
    storage_options: tuple[tuple[str, str], ...] = ()
    #: torch's deterministic algorithms in every worker (:mod:`builder.build.determinism`)
    deterministic: bool = False

    def storage(self) -> Storage:
        return open_storage(self.out_dir, self.storage_options)


@dataclass(frozen=True)
class Execution:
    """Where the unit runners run: ``local`` (this process, or ``workers`` spawned processes;
    default one per visible GPU) or ``ray`` (actors on a Ray cluster)."""

    executor: str = "local"
    workers: Optional[int] = None
    ray_address: Optional[str] = None
    gpus_per_worker: Optional[float] = None
    cpus_per_worker: Optional[float] = None

    def local_workers(self, device: str) -> int:
        if self.workers is not None:
            return self.workers
        if device == "cuda":
            import torch

            return max(1, torch.cuda.device_count())
        return 1


@dataclass(frozen=True)
class RunnerSettings:
    """Everything a unit runner needs to rebuild its state anywhere (picklable, no tensors)."""

    recipe: Recipe
    base_dir: Path
    cache_dir: Path
    out_dir: Location
    device: str
    batch_size: int
    class_names: tuple[str, ...]
    #: plugin modules the driver imported (--plugin, entry points): workers import them too
    plugins: tuple[str, ...] = ()
    compile: bool = False
    storage_options: tuple[tuple[str, str], ...] = ()
    deterministic: bool = False


@dataclass(frozen=True)
class BuildPlan:
    """A planned build: its identity, the output dir's state, and the (unit, config) pairs to do."""

    loaded: LoadedRecipe
    options: BuildOptions
    settings: RunnerSettings
    units: tuple[WorkUnit, ...]
    total: int
    identity: dict[str, Any]
    state: OutputState
    pending: tuple[tuple[WorkUnit, str], ...]
    #: the output's files with their size and version, listed before planning decided
    listing: dict[str, Optional[list[Any]]]

    @property
    def storage(self) -> Storage:
        return self.state.storage

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe

    @property
    def config_names(self) -> list[str]:
        return [config.name for config in self.recipe.build_configs]

    def pending_units(self) -> dict[WorkUnit, list[str]]:
        """Each unit with work left, and its configs still to build, in order."""
        grouped: dict[WorkUnit, list[str]] = {}
        for unit, name in self.pending:
            grouped.setdefault(unit, []).append(name)
        return grouped

    def check_unchanged(self) -> None:
        """Under the output lock, before anything is deleted: the dir still holds what planning
        found. Planning ran before the lock was taken (the components load in between), so
        another build may have written there since; its files must not be deleted on a stale plan.
        The listing is compared (a resume hashed every finished shard twice, on a store downloading
        it twice); a store that lists no versions is inspected again."""
        if None not in self.listing.values():
            if self.state.storage.versions() != self.listing:
                raise OutputError(f"--out {self.state.storage.location} changed while this build was starting (another build wrote "
                                  "to it?); nothing was deleted: run the command again")
            return
        now = inspect_output(self.state.storage, self.identity, overwrite=self.options.overwrite, force_clean=self.options.force_clean)
        if (now.mode, now.completed, now.remove, now.kept_foreign) != (self.state.mode, self.state.completed, self.state.remove, self.state.kept_foreign):
            raise OutputError(f"--out {self.state.storage.location} changed while this build was starting (another build wrote to it?); "
                              "nothing was deleted: run the command again")

    def check_resumable(self, fingerprints: dict[str, str], built_with: dict[str, Any]) -> None:
        """A resumed build must use the weights, kind of device, torch and other packages its
        finished units were made with (checked before any unit is built: otherwise the new units
        would be written and the build refused only when finalizing, with no way to finish the dir).
        Its ``--deterministic`` mode is checked earlier, at planning (:func:`mode_problem`)."""
        for (name, stem), stats in self.state.completed.items():
            if stats.get("reference_weights_sha256") != fingerprints.get(name):
                raise OutputError(
                    f"reference model '{name}' has other weights than when {stem} was built "
                    f"(its checkpoint changed); pass --overwrite to rebuild everything"
                )
            before = stats.get("built_with")
            if isinstance(before, dict) and (str(before.get("device")), str(before.get("torch"))) != (built_with["device"], built_with["torch"]):
                raise OutputError(
                    f"{name}/{stem} was built with torch {before.get('torch')} on {before.get('device')}, this run has torch "
                    f"{built_with['torch']} on {built_with['device']}; their bytes would differ: resume on that kind of device "
                    "and torch (on a CPU, with the same thread count: the same --workers and OMP_NUM_THREADS), or pass --overwrite "
                    "to rebuild everything"
                )
            packages = before.get("packages") if isinstance(before, dict) else None  # units of 0.2.1 and before: none
            difference = package_difference(packages, built_with["packages"]) if isinstance(packages, dict) else ""
            if difference:
                raise OutputError(
                    f"{name}/{stem} was built with other packages than this run has ({difference}); their bytes would "
                    "differ: resume with the versions that built it, or pass --overwrite to rebuild everything"
                )


def plan_build(loaded: LoadedRecipe, options: BuildOptions) -> BuildPlan:
    """Plan the build of ``loaded`` into ``options.out_dir``; reads, never writes."""
    recipe = loaded.recipe
    for generator in recipe.named_generators.values():
        check_image_size(generator, recipe.image_size, loaded.base_dir, options.cache_dir)
    source = open_source(recipe.source, SourceContext(loaded.base_dir, options.cache_dir))
    total = len(source) if options.limit is None else min(len(source), options.limit)
    units = tuple(plan_units(total, recipe.output.samples_per_shard))
    source_print = source_fingerprint(source, recipe.source, loaded.base_dir, total)
    identity = {
        **settings_identity(recipe, options),
        "source_samples": total,
        "source": source_print,
        "weights": weights_fingerprint(recipe, ResolveContext(loaded.base_dir, options.cache_dir)),
    }
    storage = options.storage()
    _check_out_not_in_source(storage.local_dir, source_print["locations"])
    check_unlocked(storage)
    listing = storage.versions()  # before deciding: a file written after it shows as a change under the lock
    state = inspect_output(storage, identity, overwrite=options.overwrite, force_clean=options.force_clean)
    for (name, stem), stats in sorted(state.completed.items()):  # also when nothing is left to build
        problem = mode_problem(f"{name}/{stem}", stats.get("built_with"), options.deterministic)
        if problem:
            raise OutputError(problem)
    names = [config.name for config in recipe.build_configs]
    split = recipe.output.split
    pending = tuple((unit, name) for unit in units for name in names if (name, unit.shard_stem(split)) not in state.completed)
    settings = RunnerSettings(recipe, loaded.base_dir, options.cache_dir, options.out_dir, options.device,
                              options.batch_size or recipe.batch_size, tuple(source.class_names), loaded_plugins(), options.compile,
                              options.storage_options, options.deterministic)
    return BuildPlan(loaded, options, settings, units, total, identity, state, pending, listing)


def settings_identity(recipe: Recipe, options: BuildOptions) -> dict[str, Any]:
    """The part of a build's identity its settings make, known without opening the source."""
    return {
        "format": MANIFEST_FORMAT,
        "tool_version": __version__,
        "recipe": recipe_to_dict(recipe),
        "limit": options.limit,
        # in float32 a sample's bytes depend on the batch its kernels ran in: a resume must batch alike
        "batch_size": options.batch_size or recipe.batch_size,
        "configs": [config.name for config in recipe.build_configs],
    }


def mode_problem(what: str, built_with: Any, deterministic: bool) -> Optional[str]:
    """Why ``what``, made with ``built_with`` (a unit's or a manifest's), cannot be part of a
    build whose ``--deterministic`` is ``deterministic``: one build is made in one mode (units
    record the mode only when on), or None."""
    was = bool(built_with.get("deterministic")) if isinstance(built_with, dict) else False
    if was == deterministic:
        return None
    return (f"{what} was built {'with' if was else 'without'} --deterministic, this run {'has' if deterministic else 'lacks'} it; "
            f"one build is made in one mode: run {'with' if was else 'without'} --deterministic, or pass --overwrite to rebuild everything")


def output_outlook(loaded: LoadedRecipe, options: BuildOptions) -> Check:
    """What a run would do with ``--out``, told without opening the source (a dry run reads no
    data): write a fresh build, resume or replace the one there, or refuse. The settings a build
    records are compared; the source's and the weights' fingerprints only the run compares."""
    storage = options.storage()
    wanted = settings_identity(loaded.recipe, options)
    try:
        mode, previous, manifest = first_look(storage, wanted, overwrite=options.overwrite, compared=wanted)
        check_foreign_files(storage, mode, wanted, previous, manifest, force_clean=options.force_clean)
        if mode == "resume":  # where the source's data is: known without reading it
            recorded = (previous.get("source") or {}).get("locations")
            here = source_locations(loaded.recipe.source, loaded.base_dir)
            if isinstance(recorded, dict) and recorded != here:
                raise OutputError(f"--out {storage.location} was built with different settings "
                                  f"(source.locations: {recorded} -> {here}); pass --overwrite to rebuild it, or pick a new dir")
            built_with = manifest.get("built_with") if isinstance(manifest, dict) else None
            problem = mode_problem(f"--out {storage.location}", built_with, options.deterministic) if built_with else None
            if problem:  # a build stopped by kill -9 has no manifest: the run checks its units
                raise OutputError(problem)
    except OutputError as error:
        return Check("output", f"--out {storage.location}", str(error))
    return Check("output", f"--out {storage.location}: {OUTLOOKS[mode]}")


#: what a dry run says a run would do with --out, by what :func:`first_look` found
OUTLOOKS = {
    "fresh": "empty or new; a run writes a fresh build",
    "overwrite": "holds a build; --overwrite replaces the tool's own files there",
    "resume": "holds a build of these settings; a run resumes it (if the source and weights are unchanged)",
}


def weights_fingerprint(recipe: Recipe, locations: ResolveContext) -> dict[str, dict[str, str]]:
    """The generator's and oracle's weight files (their registered kinds say which): the location,
    and the sha256 of a local file, so a resume notices a checkpoint replaced in place. Trained
    weights live under a name hashed from what shaped them, downloads under their URL (pinned or
    not) or Hub revision: their location is their identity. Reference models' local checkpoints
    too: they are also compared by the weights they loaded (:meth:`BuildPlan.check_resumable`),
    but only when a unit is left to build, so a checkpoint replaced after the last unit was
    taken for the old one and the build "resumed" under its old id."""
    fingerprint = {}
    models = [(f"reference model {spec.config_name}", spec) for spec in recipe.reference_models]
    for where, config in (*recipe.generator_sections, ("oracle", recipe.oracle), *models):
        for found in component_weights(config, where):
            if found.location is None:
                continue
            if found.kind == "folder":
                folder = find_location(found.location, locations).path
                if folder is not None and folder.is_dir():  # files replaced in place resumed as the old model
                    fingerprint[found.what] = {"location": found.location, "sha256": sha256_tree(folder)}
                continue
            entry = {"location": found.location}
            place = find_location(found.location, locations)
            if not found.trained and place.local and place.ready and place.path is not None:
                entry["sha256"] = sha256_file(place.path)
            fingerprint[found.what] = entry
    return fingerprint


def _check_out_not_in_source(out_dir: Optional[Path], locations: dict[str, str]) -> None:
    """A local --out inside a local source's folder writes into the data: the build's images
    would become samples of the next build of the same recipe (and its resume would refuse)."""
    if out_dir is None:
        return
    out = out_dir.expanduser().resolve()
    for setting, folder in locations.items():
        where = Path(folder)
        if where.is_dir() and (out == where or where in out.parents):
            key, _, value = setting.partition(":")
            raise OutputError(f"--out {out_dir} lies inside the source's data (source.{key} {value}): the build's files would become "
                              "samples of the next build; give an --out outside it")


def source_fingerprint(source: Any, config: Any, base_dir: Path, used: Optional[int] = None) -> dict[str, Any]:
    """Where the source's files are and what it lists: its path-like settings resolved against
    the recipe's dir, its class names, its length, the ids of the first and last sample the
    build uses and a digest of every sample it uses (:func:`listing_digest`) (the first ``used``: a sample past ``--limit`` is never read, so one that cannot
    be read does not stop the build)."""
    locations = source_locations(config, base_dir)
    count = len(source)
    last = count if used is None else min(used, count)
    ends = [next(iter(source.items(i, i + 1))).source_id for i in sorted({0, last - 1}) if last]
    return {"locations": locations, "class_names": list(source.class_names), "count": count, "ends": ends,
            "listing_sha256": listing_digest(source, last)}
