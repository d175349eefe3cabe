"""Source -> engine -> writers, one work unit at a time; then manifest, card and preview.

Three parts, named by their modules: the **planner** (:mod:`builder.build.plan`, driver side)
decides what the build is and which units remain; the **unit runner**
(:mod:`builder.build.runner`, worker side) loads the components once and turns a unit into
its shards and its stats file; the **finalizer** (:mod:`builder.build.finalize`, driver side)
turns the stats files into the manifest, card, gallery and preview. Each (config, unit)
shard is written atomically and recorded in ``_stats/`` before the next starts, so a build
stopped at any point leaves only complete shards behind.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import builder.build.determinism as determinism
from builder.build.executors.base import WorkerPool
from builder.build.finalize import BuildSummary, finalize, write_partial_manifest
from builder.build.plan import BuildOptions, BuildPlan, Execution, plan_build
from builder.build.runner import UnitRunner, read_unit, train_missing_weights
from builder.build.tally import ConfigTally
from builder.errors import BuilderError
from builder.outdir import claim_output, output_lock, remove_temp_files
from builder.recipes import LoadedRecipe

log = logging.getLogger(__name__)

__all__ = ["BuildOptions", "BuildPlan", "BuildSummary", "ConfigTally", "Execution", "UnitRunner", "build_benchmark", "plan_build", "read_unit"]


def build_benchmark(loaded: LoadedRecipe, options: BuildOptions, execution: Optional[Execution] = None) -> BuildSummary:
    """Build the benchmark of ``loaded`` into ``options.out_dir``, on the workers ``execution``
    names (default: this process, or one process per visible GPU)."""
    from builder.build.driver import dispatch

    execution = execution or Execution()
    started = time.monotonic()
    plan = plan_build(loaded, options)
    if plan.pending and execution.executor == "local":
        _train_missing_weights(plan)  # once, in this process, before any worker loads them
    with _progress(plan) as bar:
        pool = make_pool(plan, execution, bar.update) if plan.pending else None
        try:
            reference = pool.probe() if pool else None  # components load now, before the dir is touched
            if reference is not None:
                plan.check_resumable(reference.fingerprints, reference.to_json())
            with output_lock(plan.storage):
                plan.check_unchanged()
                claim_output(plan.state, plan.identity)
                tallies = {name: ConfigTally() for name in plan.config_names}
                for (name, _), stats in sorted(plan.state.completed.items()):
                    tallies[name].add(stats["tally"])
                    bar.update(stats["num_samples"] + len(stats["rejects"]))
                try:
                    if pool is not None and reference is not None:
                        dispatch(plan, pool, reference, bar, tallies)
                except KeyboardInterrupt:
                    if pool is not None:  # its workers stop first: the manifest lists what is there
                        pool.stop()
                        pool = None
                    write_partial_manifest(plan)
                    raise
                finally:
                    if pool is not None:
                        pool.close()
                        pool = None
                remove_temp_files(plan.storage, plan.config_names)
                return finalize(plan, time.monotonic() - started)
        finally:
            if pool is not None:
                pool.close()


def _train_missing_weights(plan: BuildPlan) -> None:
    """Weights trained on first use, in the build's --deterministic mode (as a Ray actor trains
    them, inside its runner): on a GPU they are part of what a rerun must repeat."""
    with determinism.mode(plan.settings.deterministic):
        try:
            train_missing_weights(plan.settings)
        except RuntimeError as error:
            one_line = determinism.one_line_error(error, "training the missing weights", plan.settings.device)
            if one_line is None:
                raise
            raise one_line from error


def make_pool(plan: BuildPlan, execution: Execution, progress: Any) -> WorkerPool:
    """The executor's pool of unit runners for ``plan``."""
    from builder.build.executors.local import InProcessPool, ProcessPool

    if execution.executor == "ray":
        from builder.build.executors.ray import RayPool

        return RayPool(plan.settings, execution)
    if execution.executor != "local":
        raise BuilderError(f"unknown executor '{execution.executor}'; choices: local, ray")
    workers = execution.local_workers(plan.settings.device)
    return InProcessPool(plan.settings, progress) if workers == 1 else ProcessPool(plan.settings, workers)


def _progress(plan: BuildPlan) -> Any:
    from tqdm import tqdm

    return tqdm(total=plan.total * len(plan.config_names), unit="img", disable=not plan.options.progress or None, dynamic_ncols=True)
