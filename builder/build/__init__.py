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
from typing import Any

from builder.build.finalize import BuildSummary, finalize, write_partial_manifest
from builder.build.plan import BuildOptions, BuildPlan, plan_build
from builder.build.runner import UnitRunner, read_unit
from builder.build.tally import ConfigTally
from builder.outdir import claim_output
from builder.recipes import LoadedRecipe

log = logging.getLogger(__name__)

__all__ = ["BuildOptions", "BuildPlan", "BuildSummary", "ConfigTally", "UnitRunner", "build_benchmark", "plan_build", "read_unit"]


def build_benchmark(loaded: LoadedRecipe, options: BuildOptions) -> BuildSummary:
    """Build the benchmark of ``loaded`` into ``options.out_dir`` in this process."""
    started = time.monotonic()
    plan = plan_build(loaded, options)
    runner = None
    if plan.pending:  # before the dir is touched: a component that fails to load changes nothing
        runner = UnitRunner(plan.settings)
        plan.check_same_weights(runner.fingerprints)
    claim_output(plan.state, plan.identity)
    with _progress(plan) as bar:
        tallies = {name: ConfigTally() for name in plan.config_names}
        for (name, _), stats in sorted(plan.state.completed.items()):
            tallies[name].add(stats["tally"])
            bar.update(stats["num_samples"] + len(stats["rejects"]))
        try:
            for unit, configs in plan.pending_units().items():
                for stats in runner.run(unit, configs, progress=bar.update):  # type: ignore[union-attr]
                    tallies[stats["config"]].add(stats["tally"])
                    _show(bar, stats["config"], tallies[stats["config"]])
        except KeyboardInterrupt:
            write_partial_manifest(plan)
            raise
    return finalize(plan, time.monotonic() - started)


def _progress(plan: BuildPlan) -> Any:
    from tqdm import tqdm

    return tqdm(total=plan.total * len(plan.config_names), unit="img", disable=not plan.options.progress or None, dynamic_ncols=True)


def _show(bar: Any, config: str, tally: ConfigTally) -> None:
    summary = tally.summary()
    bar.set_postfix(config=config, perturbed=f"{summary['perturbed_share']:.0%}", mean_steps=f"{summary['mean_steps']:.1f}")
