"""``build-benchmark``: the command line. It only parses, wires and reports."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import click

from builder import __version__
from builder.errors import BuilderError

log = logging.getLogger("builder")


class FriendlyGroup(click.Group):
    """Turns :class:`BuilderError` (every bad input) into one line, ``error: <what>: <why>; <fix>``,
    and exit code 2; ``-v`` adds the traceback. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BuilderError as error:
            if log.isEnabledFor(logging.DEBUG) or ctx.meta.get("fmr.verbose"):
                traceback.print_exception(error, file=sys.stderr)
            message = " ".join(str(error).split()) or type(error).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(2)
        except click.UsageError as error:  # a bad flag or argument: one line too, pointing at --help
            where = f"; see '{error.ctx.command_path} --help'" if error.ctx else ""
            click.echo(f"error: {' '.join(error.format_message().split()).rstrip('.')}{where}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            resumable = {"run": "finished work units are kept; resume with the same command",
                         "publish": "files already uploaded are kept; run the same command to go on"}
            said = resumable.get(ctx.invoked_subcommand or "")
            click.echo(f"interrupted: {said}" if said else "interrupted", err=True)
            sys.exit(130)


def configure_logging(verbosity: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 1 else logging.INFO)
    if quiet:  # huggingface_hub's upload/download bars are progress output too
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("builder").setLevel(level)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "timm", "root"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def resolve_device(device: Optional[str]) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"'{device}' is not a torch device (try cpu, cuda, cuda:1)", param_hint="--device") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine; use --device cpu", param_hint="--device")
    return device


def resolve_ray_device(device: Optional[str]) -> str:
    """On Ray the driver needs no GPU: ``cuda`` means each actor's GPU (Ray sets
    CUDA_VISIBLE_DEVICES for it), so a numbered device cannot be honoured there."""
    if device is None:
        return "cpu"
    if device.startswith("cuda:"):
        raise click.BadParameter(f"'{device}': with --executor ray give --device cuda (Ray assigns each actor its GPU)", param_hint="--device")
    if device not in ("cpu", "cuda"):
        raise click.BadParameter(f"'{device}' is not cpu or cuda", param_hint="--device")
    return device


def output_location(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Any:
    """A URL (``s3://bucket/prefix``) as given; anything else (a ``file://`` URL too) as a local dir path."""
    from builder.storage import is_url, local_path

    if value is None or is_url(value):
        return value
    return click.Path(file_okay=False, path_type=Path).convert(local_path(value), param, ctx)


def local_dir_only(value: Optional[Path], flag: str) -> Optional[Path]:
    """A local dir option given a URL made a folder named 's3:' and then a traceback."""
    from builder.storage import is_url

    if value is not None and is_url(str(value).replace(":/", "://", 1) if "://" not in str(value) else str(value)):
        raise click.BadParameter(f"'{value}' is a URL; {flag} takes a local dir (to keep a benchmark on object storage, build it with "
                                 "'build-benchmark run --out URL' and score that)", param_hint=flag)
    return value


def storage_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--storage-option KEY=VALUE`` (repeatable), parsed into ``(key, value)`` pairs."""

    def parse(ctx: click.Context, param: click.Parameter, pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        from builder.storage import parse_storage_options

        return parse_storage_options(pairs)

    return click.option(
        "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", callback=parse,
        help="An option of the fsspec filesystem of a URL location, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable; "
             "credentials and endpoints are otherwise read from fsspec's and the store's usual config).",
    )(command)


def cache_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where trained demo weights and downloads live (default: $FMR_BUILDER_CACHE or ~/.cache/fmr-builder).",
    )(command)


@click.group(cls=FriendlyGroup)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Import MODULE first: it registers its own source, generator, oracle, model or output kinds (repeatable; "
                   "installed packages can use the 'builder.plugins' entry point group instead).")
@click.version_option(__version__, prog_name="build-benchmark")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, plugins: tuple[str, ...]) -> None:
    """Build static robustness benchmarks with a foundation-model oracle (FMR, Zhang et al.)."""
    from builder.registry import load_plugins

    ctx.meta["fmr.verbose"] = verbose > 0
    configure_logging(verbose, quiet)
    # a preempted node or a scheduler's kill: stop like Ctrl-C, so every command cleans up its temp
    # files and a build keeps its finished units
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, _interrupt)
    for module in load_plugins(plugins):
        log.debug("plugin %s loaded", module)


@main.command()
@click.argument("recipe")
@click.option("--out", "out_dir", callback=output_location, metavar="DIR_OR_URL",
              help="Output directory, or an fsspec URL such as s3://bucket/prefix (required unless --dry-run).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N source samples.")
@click.option("--dry-run", is_flag=True, help="Check the recipe and every name offline, print the plan, build nothing.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu; with --executor ray: cpu unless "
              "--device cuda is given, as the driver need not see the cluster's GPUs).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per engine batch (default: the recipe's).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="Override the recipe's perturbation.precision (bf16: decoder, oracle and reference model in bfloat16 autocast; "
                   "part of the recipe, so of the manifest id).")
@click.option("--compile", "compile_decoder", is_flag=True,
              help="torch.compile the generator's decoder (same recipe and manifest id; pays on a GPU for long builds).")
@click.option("--deterministic", is_flag=True,
              help="torch's deterministic algorithms in every worker: on a GPU, a rerun on the same card and software gives the same "
                   "bytes (torch's defaults do not); an op without a deterministic implementation fails before any unit.")
@click.option("--seed", type=int, help="Override the recipe's seed.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. perturbation.budget=10 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the build in --out (only the files a build writes are deleted).")
@click.option("--force-clean", is_flag=True, help="Also delete files in --out that the build did not write (with --overwrite, or when they block a resume).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="Where work units run: local processes or Ray actors.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Unit runners (local default: one per visible GPU, else 1 in this process; ray default: 1).")
@click.option("--ray-address", default=None, metavar="ADDR", help="With --executor ray: the cluster to join (e.g. auto); default: start a local one.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None, help="With --executor ray: GPUs per actor (default: 1 with --device cuda, else 0).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None, help="With --executor ray: CPUs per actor (default: 1).")
@storage_option
@cache_option
def run(recipe: str, out_dir: Optional[Path | str], limit: Optional[int], dry_run: bool, device: Optional[str], batch_size: Optional[int],
        precision: Optional[str], compile_decoder: bool, deterministic: bool, seed: Optional[int], overrides: tuple[str, ...], overwrite: bool, force_clean: bool,
        no_progress: bool, executor: str,
        workers: Optional[int], ray_address: Optional[str], gpus_per_worker: Optional[float], cpus_per_worker: Optional[float],
        storage_options: tuple[tuple[str, str], ...], cache_dir: Optional[Path]) -> None:
    """Build the benchmark of RECIPE (a YAML path or a bundled recipe name) into --out."""
    from builder.build import BuildOptions, Execution, build_benchmark
    from builder.paths import default_cache_dir
    from builder.recipes import load_recipe

    if seed is not None:
        overrides = (*overrides, f"seed={seed}")
    if precision is not None:
        overrides = (*overrides, f"perturbation.precision={precision}")
    loaded = load_recipe(recipe, overrides)
    if out_dir is None:
        if not dry_run:
            raise click.UsageError("Missing option '--out' (needed unless --dry-run).")
        _print_dry_run(loaded, cache_dir or default_cache_dir(), limit, None)
        return
    options = BuildOptions(
        out_dir=out_dir,
        device=resolve_device(device) if executor == "local" else resolve_ray_device(device),
        cache_dir=cache_dir or default_cache_dir(),
        batch_size=batch_size,
        limit=limit,
        overwrite=overwrite,
        force_clean=force_clean,
        progress=not no_progress,
        storage_options=storage_options,
        compile=compile_decoder,
        deterministic=deterministic,
    )
    if dry_run:
        _print_dry_run(loaded, options.cache_dir, limit, options)
        return
    ray_only = {"--ray-address": ray_address, "--gpus-per-worker": gpus_per_worker, "--cpus-per-worker": cpus_per_worker}
    given = [flag for flag, value in ray_only.items() if value is not None]
    if given and executor != "ray":
        raise click.UsageError(f"{given[0]} goes with --executor ray")
    execution = Execution(executor, workers, ray_address, gpus_per_worker, cpus_per_worker)
    summary = build_benchmark(loaded, options, execution)
    click.echo(format_summary(loaded.recipe.name, summary))


def _print_dry_run(loaded: Any, cache_dir: Path, limit: Optional[int], options: Any) -> None:
    """The offline checks, with what the run would do with --out when ``options`` give one."""
    from builder.build.plan import output_outlook
    from builder.dryrun import dry_run

    report = dry_run(loaded, cache_dir, limit)
    if options is not None:
        report.checks.append(output_outlook(loaded, options))
    for check in report.checks:
        click.echo(f"FAIL {check.problem}" if check.problem else f"ok   {check.item}: {check.detail}")
    for line in report.plan:
        click.echo(f"plan {line}")
    if report.problems:
        raise BuilderError(f"dry run of {loaded.recipe.name}: {len(report.problems)} problem(s), first: {report.problems[0].problem}")
    click.echo(f"dry run of {loaded.recipe.name}: {len(report.checks)} checks passed, nothing downloaded")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def format_summary(name: str, summary: Any) -> str:
    from builder.metrics import figure_texts

    width = max([14, *(len(config) + 2 for config in summary.configs)])
    lines = [
        f"built {name} -> {summary.out_dir} in {summary.seconds:.1f} s "
        f"({summary.source_samples} source samples, {summary.rejects} rejected, see rejects.jsonl)",
        f"{'config':<{width}}{'samples':>8}{'perturbed':>11}{'mean steps':>12}{'SA':>8}{'PA':>8}{'FMR':>8}{'PA pert.':>10}",
    ]
    for config, figures in summary.configs.items():
        text = figure_texts(figures)  # "–" where undefined (FMR with SA 0, ...)
        pa_perturbed = text["pa_perturbed"] + ("%" if text["pa_perturbed"] != "–" else "")
        lines.append(
            f"{config:<{width}}{figures['num_samples']:>8}{figures['perturbed_share']:>11.1%}{text['mean_steps']:>12}"
            f"{figures['sa']:>8.1%}{figures['pa']:>8.1%}{text['fmr']:>8}{pa_perturbed:>10}"
        )
    lines.append(
        "reference model: SA on the originals, PA on the generated set (unperturbed samples keep x), "
        "FMR = PA / SA x 100; 'PA pert.' on the perturbed samples only"
    )
    non_finite = sum(figures.get("num_non_finite", 0) for figures in summary.configs.values())
    if non_finite:
        lines.append(f"{non_finite} samples stopped early at a non-finite gradient (stop_reason in the records)")
    lines.append(f"manifest id {summary.manifest_id}")
    return "\n".join(lines)


@main.command("score")
@click.option("--benchmark", "benchmarks", multiple=True, metavar="DIR_HUB_ID_OR_URL",
              help="A built benchmark: a dir, a Hub dataset id or an fsspec URL such as s3://bucket/prefix (repeatable: a transfer matrix).")
@click.option("--revision", default=None, metavar="REV",
              help="With Hub dataset ids: the branch, tag or commit to score (default: main); the result records the manifest id it scored.")
@click.option("--config", "config_name", default=None, help="One config (reference model) of the benchmark; default: all.")
@click.option("--model", "models", multiple=True, metavar="SPEC",
              help="timm:<name>, hf:<repo or dir>, torchvision:<name>[:<weights>], clip:<model>/<tag>, robustbench:<name>, py:<module>:<callable>, "
                   "ref:<config> (the benchmark's own reference model), or a YAML file of model fields (repeatable).")
@click.option("--models", "zoo", type=click.Path(dir_okay=False, path_type=Path), metavar="ZOO.yaml",
              help="A YAML list of model specs with names, scored one after another in this process; needs --out.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --models: DIR/<name>.json per model and DIR/table.md; models with a file are skipped.")
@click.option("--overwrite", is_flag=True, help="With --models: score again the models that have a result file; with --dynamic --save: "
              "replace the benchmark kept there.")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="PATH", help="Weights for the --model in the same position (repeatable).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="Image-decoding worker processes.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=0), help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1), help="Seed of the bootstrap.")
@click.option("--per-class", is_flag=True, help="Also print a per-class table.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write every figure to this JSON file.")
@click.option("--source", "source_recipe", default=None, metavar="RECIPE",
              help="The recipe the benchmark was built from: its source gives the originals of a benchmark built without them, "
              "and its folder the relative paths of a ref: model.")
@click.option("--dynamic", is_flag=True, help="Regenerate the benchmark of --recipe against each model (the paper's protocol); "
              "the model becomes the recipe's reference model, so relative paths in --model and --checkpoint are taken from the recipe's folder.")
@click.option("--recipe", default=None, help="With --dynamic: the recipe to regenerate.")
@click.option("--limit", type=click.IntRange(min=1), help="With --dynamic: only the first N source samples.")
@click.option("--save", type=click.Path(file_okay=False, path_type=Path), callback=lambda ctx, param, value: local_dir_only(value, "--save"),
              help="With --dynamic: keep the generated benchmark in this local dir.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="With --dynamic: override a recipe key.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="With --dynamic: override the recipe's perturbation.precision, as 'run --precision' does.")
@click.option("--compile", "compile_decoder", is_flag=True, help="With --dynamic: torch.compile the generator's decoder, as 'run --compile' does.")
@click.option("--deterministic", is_flag=True, help="With --dynamic: torch's deterministic algorithms, as 'run --deterministic'.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model specs read from a benchmark's manifest (ref:) or a download to import and run code (py:).")
@storage_option
@cache_option
def score_command(benchmarks: tuple[str, ...], revision: Optional[str], config_name: Optional[str], models: tuple[str, ...], zoo: Optional[Path],
                  out_dir: Optional[Path], overwrite: bool, checkpoints: tuple[str, ...], batch_size: int, device: Optional[str],
                  workers: int, bootstrap: int, seed: int, per_class: bool,
                  json_out: Optional[Path], source_recipe: Optional[str], dynamic: bool, recipe: Optional[str],
                  limit: Optional[int], save: Optional[Path], overrides: tuple[str, ...], precision: Optional[str],
                  compile_decoder: bool, deterministic: bool, trust_remote_code: bool, storage_options: tuple[tuple[str, str], ...],
                  cache_dir: Optional[Path]) -> None:
    """Score models on benchmarks: SA, PA, FMR = PA / SA x 100, with 95% bootstrap intervals."""
    from builder.benchmark import open_benchmark
    from builder.paths import default_cache_dir
    from builder.reporting import format_per_class, format_results, format_side_by_side, format_transfer_matrix
    from builder.score import score

    _check_revision(revision, benchmarks)
    given = [flag for flag, value in {"--recipe": recipe, "--limit": limit, "--save": save, "--set": overrides,
                                      "--precision": precision, "--compile": compile_decoder, "--deterministic": deterministic}.items() if value]
    if given and not dynamic:
        raise BuilderError(f"{given[0]} goes with --dynamic (a benchmark regenerated against the model); add --dynamic or drop {given[0]}")
    if precision is not None:
        overrides = (*overrides, f"perturbation.precision={precision}")
    if overwrite and zoo is None and save is None:
        raise BuilderError("--overwrite goes with --models ZOO.yaml --out DIR (it scores again the models that already have results there) "
                           "or --dynamic --save DIR (it replaces the benchmark kept there); drop it")
    if zoo is not None or out_dir is not None:
        if models or dynamic or out_dir is None or zoo is None or not benchmarks:
            raise BuilderError("--models ZOO.yaml goes with --out DIR and --benchmark, without --model or --dynamic; give those")
        ignored = [flag for flag, value in {"--checkpoint": checkpoints, "--json": json_out, "--per-class": per_class}.items() if value]
        if ignored:
            raise BuilderError(f"{ignored[0]} does not go with --models ZOO.yaml (each model's checkpoint is in the zoo file, "
                               "its figures in --out DIR/<name>.json); drop it")
        options = {"batch_size": batch_size, "workers": workers, "bootstrap": bootstrap, "seed": seed, "source_recipe": source_recipe,
                   "trust_remote_code": trust_remote_code}
        _score_zoo(zoo, out_dir, overwrite, benchmarks, revision, config_name, storage_options, resolve_device(device), cache_dir, options)
        return
    if not models:
        raise BuilderError("give --model SPEC (repeatable), or --models ZOO.yaml --out DIR")
    if checkpoints and len(checkpoints) != len(models):
        raise BuilderError(f"got {len(checkpoints)} --checkpoint for {len(models)} --model; give one per model, in order")
    if dynamic and not recipe:
        raise BuilderError("--dynamic needs --recipe (the recipe whose benchmark is regenerated)")
    if not dynamic and not benchmarks:
        raise BuilderError("give --benchmark DIR_OR_HUB_ID, or --dynamic --recipe RECIPE")
    if save is not None and len(models) > 1:
        raise BuilderError("--save keeps one generated benchmark; give a single --model with it")
    paired = list(zip(models, checkpoints or [None] * len(models), strict=False))
    base_dir = None
    if dynamic and recipe and benchmarks:  # one model, both halves: its relative paths from the recipe's folder, as --dynamic takes them
        paired, base_dir = _from_recipe_folder(recipe, overrides, paired)
    device = resolve_device(device)
    cache = cache_dir or default_cache_dir()
    static = []
    for location in benchmarks:
        bench = open_benchmark(location, revision, cache_dir=cache, storage_options=storage_options)
        for config in ([bench.config(config_name)] if config_name else bench.configs):
            for model, checkpoint in paired:
                static.append(score(bench, model, config=config, checkpoint=checkpoint, device=device, batch_size=batch_size,
                                    workers=workers, bootstrap=bootstrap, seed=seed, with_per_class=per_class,
                                    source_recipe=source_recipe, cache_dir=cache, base_dir=base_dir, trust_remote_code=trust_remote_code))
    generators = _dynamic_generators(recipe, overrides) if dynamic and recipe else []
    if save is not None and len(generators) > 1:
        raise BuilderError(f"--save keeps one generated benchmark, but the recipe has {len(generators)} generators; "
                           "drop --save, or build it with 'build-benchmark run' and score that")
    live_options: dict[str, Any] = {"overrides": overrides, "limit": limit, "save": save, "overwrite": overwrite, "device": device,
                                    "bootstrap": bootstrap, "seed": seed, "cache_dir": cache, "progress": True,
                                    "trust_remote_code": trust_remote_code, "compile_decoder": compile_decoder, "deterministic": deterministic,
                                    "score_batch_size": batch_size, "workers": workers, "with_per_class": per_class}
    live, failed = _live_scores(recipe, paired, generators, live_options) if dynamic and recipe else ([], [])
    results = static + live
    click.echo(format_results(results))
    if per_class:
        for result in results:
            click.echo(format_per_class(result))
    if len({(r.benchmark, r.config) for r in static}) > 1 and len(models) > 1:
        click.echo(format_transfer_matrix(static))
    if static and live:
        click.echo(format_side_by_side(static, live))
    if json_out is not None:
        from builder.fileio import write_bytes_atomic
        from builder.leaderboard import results_bytes
        from builder.model_zoo import result_payload

        write_bytes_atomic(json_out, results_bytes(result_payload(results)))
        click.echo(f"wrote {json_out}")
    if failed:
        raise BuilderError(f"{len(failed)} of {len(failed) + len(live)} dynamic scores failed (the others are above): {failed[0]}")


def _live_scores(recipe: str, paired: list[tuple[str, Optional[str]]], generators: list[Optional[str]],
                 options: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Each model's dynamic score: with several, one that fails (its classes, its load) is
    named at the end and the others are still shown and written; a whole run's regenerations
    were thrown away by the last model's error. One alone fails as its own one line."""
    from builder.score import score_dynamic

    runs = [(model, checkpoint, generator) for model, checkpoint in paired for generator in generators]
    results, failed = [], []
    for model, checkpoint, generator in runs:
        try:
            results.append(score_dynamic(recipe, model, checkpoint=checkpoint, generator=generator, **options))
        except BuilderError as error:
            if len(runs) == 1:
                raise
            log.error("--model %s: %s", model, error)
            failed.append(f"--model {model}: {error}")
    return results, failed


def _from_recipe_folder(recipe: str, overrides: tuple[str, ...],
                        paired: list[tuple[str, Optional[str]]]) -> tuple[list[tuple[str, Optional[str]]], Path]:
    """``--dynamic`` beside ``--benchmark``: the static half takes the model's relative paths
    (``--checkpoint``, a ``py:`` file) from the recipe's folder as the dynamic half does; it took
    them from the current directory, so one --checkpoint named two files."""
    from builder.recipes import load_recipe
    from builder.score import checkpoint_from

    base = load_recipe(recipe, overrides).base_dir
    return [(model, checkpoint_from(checkpoint, base)) for model, checkpoint in paired], base


def _dynamic_generators(recipe: str, overrides: tuple[str, ...]) -> list[Optional[str]]:
    """Each generator of a several-generator recipe is regenerated (and scored) on its own."""
    from builder.recipes import load_recipe

    loaded = load_recipe(recipe, overrides).recipe
    return list(loaded.named_generators) if loaded.generators is not None else [None]


def _check_revision(revision: Optional[str], benchmarks: tuple[str, ...]) -> None:
    """``--revision`` names a commit of a Hub dataset: with only local dirs or URLs it would be
    ignored, and a score that seems pinned would not be."""
    from builder.benchmark import HUB_DATASET_URL, is_hub_id

    def on_the_hub(location: str) -> bool:
        return location.startswith(HUB_DATASET_URL) or (is_hub_id(location) and not Path(location).expanduser().exists())

    if revision is not None and not any(on_the_hub(location) for location in benchmarks):
        raise BuilderError(f"--revision {revision} applies to Hub dataset ids (org/name), and no --benchmark is one; drop --revision")


def _score_zoo(zoo: Path, out_dir: Path, overwrite: bool, benchmarks: tuple[str, ...], revision: Optional[str], config_name: Optional[str],
               storage_options: tuple[tuple[str, str], ...], device: str, cache_dir: Optional[Path], options: dict[str, Any]) -> None:
    """Every model of the zoo file on every benchmark config, each loaded in turn; a model that
    fails is listed and the exit status is non-zero."""
    from builder.benchmark import open_benchmark
    from builder.config import ModelSpec
    from builder.model_zoo import load_zoo, outcome_lines, score_zoo
    from builder.paths import default_cache_dir
    from builder.score import score
    from builder.trust import downloaded_roots, require_trusted_spec_file

    specs = load_zoo(zoo)
    cache = cache_dir or default_cache_dir()
    require_trusted_spec_file(specs, zoo, downloaded_roots(cache), bool(options.get("trust_remote_code")), "--models")
    opened = [open_benchmark(location, revision, cache_dir=cache, storage_options=storage_options) for location in benchmarks]

    plan = [(bench, config) for bench in opened for config in ([bench.config(config_name)] if config_name else bench.configs)]

    def score_one(spec: ModelSpec) -> list[Any]:
        click.echo(f"scoring {spec.config_name} ({spec.model})")
        return [score(bench, spec, config=config, device=device, cache_dir=cache, base_dir=zoo.parent.resolve(), **options)
                for bench, config in plan]

    outcome = score_zoo(specs, out_dir, score_one, planned=frozenset((bench.id, config) for bench, config in plan), overwrite=overwrite)
    for line in outcome_lines(outcome, out_dir):
        click.echo(line)
    if outcome.failed:
        raise BuilderError(f"{len(outcome.failed)} of {len(specs)} models failed: {', '.join(outcome.failed)} (see above); fix their specs and run again")


@main.command("leaderboard")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Where leaderboard.md and fmr.png go.")
def leaderboard_command(results: tuple[Path, ...], out_dir: Path) -> None:
    """Sorted markdown table and FMR bar chart from RESULT.json files of 'score --json'."""
    from builder.leaderboard import write_leaderboard

    markdown, chart = write_leaderboard(list(results), out_dir)
    click.echo(f"wrote {markdown} and {chart}")


@main.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The HTML page to write (one self-contained file).")
@click.option("--benchmark", "benchmarks", multiple=True, metavar="DIR_HUB_ID_OR_URL",
              help="A copy of a benchmark the results were scored on, matched by manifest id (repeatable; default: the local dir each result names).")
@click.option("--per-model", default=24, show_default=True, type=click.IntRange(min=1), help="At most N wrongly classified images per model.")
@storage_option
@cache_option
def report_command(results: tuple[Path, ...], out: Path, benchmarks: tuple[str, ...], per_model: int,
                   storage_options: tuple[tuple[str, str], ...], cache_dir: Optional[Path]) -> None:
    """One HTML page from RESULT.json files of 'score --json' (or the --out DIR of 'score --models').

    FMR per model with its interval, the transfer matrix as a heatmap, FMR per class, accuracy
    against attribute values and the images each model gets wrong; a section that cannot be
    drawn says why on the page (e.g. a result scored before per-sample predictions were kept).
    """
    from builder.report import write_report

    summary = write_report(list(results), out, benchmarks=benchmarks, per_model=per_model, cache_dir=cache_dir, storage_options=storage_options)
    click.echo(summary.line())


@main.command("card")
@click.argument("benchmark_dir", metavar="DIR_OR_URL", callback=output_location)
@click.option("--results", multiple=True, type=click.Path(path_type=Path),
              help="RESULT.json of 'score --json' on this benchmark, or the --out DIR of 'score --models'; repeatable, kept in leaderboard.json.")
@click.option("--repo-id", default=None, help="Hub dataset id the snippets should load from (default: a placeholder).")
@storage_option
@cache_option
def card_command(benchmark_dir: Path | str, results: tuple[Path, ...], repo_id: Optional[str],
                 storage_options: tuple[tuple[str, str], ...], cache_dir: Optional[Path]) -> None:
    """Rewrite a built benchmark's card (README.md), adding a leaderboard of score results."""
    from builder.card import LEADERBOARD_FILE, write_card

    def render(root: Path) -> list[str]:
        write_card(root, list(results), repo_id)
        return ["README.md", *([LEADERBOARD_FILE] if results else [])]

    written = _rewrite_in_place(benchmark_dir, storage_options, cache_dir, render)
    click.echo(f"wrote {', '.join(written)}" + (f" with {len(results)} result file(s)" if results else ""))


def _rewrite_in_place(location: Path | str, storage_options: tuple[tuple[str, str], ...], cache_dir: Optional[Path],
                      render: Callable[[Path], list[str]]) -> list[str]:
    """``render`` a built benchmark's files (it returns their relative paths): in the dir itself,
    or, for a URL, in the cache's mirror of the store, each then put back whole (the card and the
    gallery are read from the shards, which stay where they are)."""
    from builder.paths import default_cache_dir
    from builder.storage import is_url, open_storage

    if not is_url(location):
        root = Path(location)
        return [str(root / relative) for relative in render(root)]
    storage = open_storage(location, storage_options)
    mirror = storage.local_copy(cache_dir or default_cache_dir())
    written = render(mirror)
    for relative in written:
        storage.put_file(mirror / relative, relative)
    return [f"{str(location).rstrip('/')}/{relative}" for relative in written]


@main.command("verify")
@click.argument("directory", metavar="DIR_HUB_ID_OR_URL")
@click.option("--revision", default=None, help="With a Hub dataset id (org/name): the branch, tag or commit to check (default: main).")
@click.option("--oracle", "with_oracle", is_flag=True, help="Also re-run the recipe's oracle on every perturbed image (all must keep their label).")
@click.option("--recipe", default=None, metavar="PATH",
              help="With --oracle: the recipe file DIR was built from; its dir is where relative paths resolve (default: the bundled recipe of that name, else the current dir).")
@click.option("--device", default=None, help="With --oracle: torch device (default: cuda if available, else cpu).")
@click.option("--batch-size", type=click.IntRange(min=1), help="With --oracle: images per oracle batch (default: the recipe's).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report to this JSON file.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model specs read from a benchmark's manifest (--oracle) or a download to import and run code (py:).")
@storage_option
@cache_option
def verify_command(directory: str, revision: Optional[str], with_oracle: bool, recipe: Optional[str], device: Optional[str],
                   batch_size: Optional[int], json_out: Optional[Path], trust_remote_code: bool, storage_options: tuple[tuple[str, str], ...],
                   cache_dir: Optional[Path]) -> None:
    """Check a built benchmark DIR against its manifest and card; exit 1 listing every problem.

    A Hub dataset id (org/name) that is not a local dir checks what is on the Hub: the files
    are downloaded to the HF cache (only what is missing there) and checked like a dir. An
    fsspec URL (s3://bucket/prefix) is mirrored to the cache dir (only what changed) and
    checked like a dir.
    """
    from builder.benchmark import hub_dataset_url, is_hub_id, pinned_revision
    from builder.fileio import write_json_atomic
    from builder.storage import is_url, local_path
    from builder.verify import format_report, verify_benchmark

    directory = local_path(directory)
    given = [flag for flag, value in {"--recipe": recipe, "--device": device, "--batch-size": batch_size}.items() if value]
    if given and not with_oracle:
        raise BuilderError(f"{given[0]} goes with --oracle (the oracle re-run on every perturbed image); add --oracle or drop {given[0]}")
    hub = hub_dataset_url(directory)
    from_hub = hub is not None or (not Path(directory).exists() and is_hub_id(directory))
    shown_revision = pinned_revision(directory, hub[1], revision) if hub is not None else revision
    report = verify_benchmark(directory, revision=revision, oracle=with_oracle, device=resolve_device(device) if with_oracle else "cpu",
                              cache_dir=cache_dir, batch_size=batch_size, recipe=recipe, trust_remote_code=trust_remote_code,
                              storage_options=storage_options)
    if json_out is not None:
        write_json_atomic(json_out, report.to_json())
    if from_hub:
        click.echo(f"verify: {directory} (Hub dataset, revision {shown_revision or 'main'}) is commit {report.root.name}, in {report.root}")
    elif is_url(directory):
        click.echo(f"verify: {directory} mirrored to {report.root}")
    click.echo(format_report(report))
    if not report.ok:
        sys.exit(1)


@main.command("fit-mask")
@click.argument("recipe")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Mask file to write (.safetensors).")
@click.option("--lambda", "strength", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="L1 strength (C = 1 / lambda); larger keeps fewer dimensions.")
@click.option("--samples", default=500, show_default=True, type=click.IntRange(min=4), help="Source samples to perturb for the fit.")
@click.option("--config", "config_name", default=None, help="Reference model to perturb against (default: the first).")
@click.option("--generator", "generator_name", default=None, help="Which of the recipe's generators (by name) to fit on; default: the first.")
@click.option("--device", default=None, help="torch device.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per engine batch.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (builds made with the old mask no longer resume or verify).")
@cache_option
def fit_mask_command(recipe: str, out: Path, strength: float, samples: int, config_name: Optional[str], generator_name: Optional[str],
                     device: Optional[str], batch_size: Optional[int], overrides: tuple[str, ...], overwrite: bool,
                     cache_dir: Optional[Path]) -> None:
    """Fit the sparse-VQGAN mask: the latent dimensions that tell perturbed from original latents."""
    if out.exists() and not overwrite:  # checked before the fit, which takes a while
        raise BuilderError(f"--out {out} exists; pass --overwrite to replace it (builds made with the old mask would no longer resume "
                           "or verify), or give another file")
    from builder.fit_mask import fit_mask_from_recipe
    from builder.paths import default_cache_dir
    from builder.recipes import load_recipe
    from builder.sparse import save_mask

    loaded = load_recipe(recipe, overrides)
    fit, provenance = fit_mask_from_recipe(loaded, strength=strength, samples=samples, config_name=config_name,
                                           device=resolve_device(device), cache_dir=cache_dir or default_cache_dir(), batch_size=batch_size,
                                           generator_name=generator_name)
    save_mask(out, fit, provenance)
    where = f"generators.{generator_name or next(iter(loaded.recipe.named_generators))}" if loaded.recipe.generators else "generator"
    kept, total = int(fit.mask.sum()), fit.mask.numel()
    click.echo(
        f"mask: {kept} of {total} latent dimensions kept (sparsity {fit.sparsity:.2%}); held-out accuracy of "
        f"original vs perturbed {fit.accuracy:.1%} on {fit.test_pairs} samples ({fit.train_pairs} to fit)\n"
        f"wrote {out}; use it with --set {where}.mask={out.resolve()}"
    )


@main.command("recipes")
def list_recipes() -> None:
    """List the bundled recipes."""
    from builder.recipes import describe_bundled

    rows = describe_bundled()
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        click.echo(f"{name:<{width}}  {description}")


@main.command("gallery")
@click.argument("directory", metavar="DIR_OR_URL", callback=output_location)
@click.option("--per-class", default=24, show_default=True, type=click.IntRange(min=1), help="At most N samples per class and config.")
@storage_option
@cache_option
def gallery_command(directory: Path | str, per_class: int, storage_options: tuple[tuple[str, str], ...], cache_dir: Optional[Path]) -> None:
    """Regenerate gallery.html of a built benchmark: originals beside perturbed images, for auditing labels."""
    from builder.benchmark import read_manifest
    from builder.gallery import GALLERY_FILE, write_gallery

    def render(root: Path) -> list[str]:
        write_gallery(root, read_manifest(root), per_class=per_class)
        return [GALLERY_FILE]

    (written,) = _rewrite_in_place(directory, storage_options, cache_dir, render)
    click.echo(f"wrote {written}")


@main.command("publish")
@click.argument("directory", metavar="DIR_OR_URL", callback=output_location)
@click.option("--repo-id", required=True, metavar="ORG/NAME", help="Hub dataset repo to create or update.")
@click.option("--private", is_flag=True, help="Create the repo private; an existing private repo stays so, and an existing public one is refused "
              "before anything is uploaded (make it private on the Hub first, or drop --private).")
@click.option("--revision", default=None, metavar="BRANCH", help="Branch to commit to, created from main if missing (default: main).")
@click.option("--message", default=None, help="Commit message (default: the benchmark, its manifest id and the tool version).")
@click.option("--results", multiple=True, type=click.Path(path_type=Path),
              help="RESULT.json of 'score --json', or the --out DIR of 'score --models', to add to the card's leaderboard first (repeatable).")
@click.option("--dry-run", is_flag=True,
              help="Render the card for ORG/NAME (with --results) and verify, then print each file, its size, LFS or not, the total and the card's YAML header; "
              "no network, and nothing in DIR changes.")
@storage_option
@cache_option
def publish_command(directory: Path | str, repo_id: str, private: bool, revision: Optional[str], message: Optional[str],
                    results: tuple[Path, ...], dry_run: bool, storage_options: tuple[tuple[str, str], ...], cache_dir: Optional[Path]) -> None:
    """Verify DIR and upload it to a Hub dataset repo in one commit (large files uploaded first); re-run the same command to resume.

    An fsspec URL (s3://bucket/prefix) is mirrored to the cache dir first (only what changed);
    the card is re-rendered and verified there, and uploaded from there.
    """
    from builder.paths import default_cache_dir
    from builder.publish import format_plan, format_result, prepare_upload, publish
    from builder.storage import local_copy

    directory = local_copy(directory, cache_dir or default_cache_dir(), storage_options)

    if dry_run:
        click.echo(format_plan(prepare_upload(directory, repo_id, results, revision, dry_run=True), repo_id, revision, private=private))
        return
    click.echo(format_result(publish(directory, repo_id, private=private, revision=revision, message=message, results=results)))


@main.group()
def train() -> None:
    """Train a recipe's small components from scratch (for domains without pretrained weights)."""


def _train_context(recipe: str, overrides: tuple[str, ...], device: Optional[str], cache_dir: Optional[Path]) -> tuple[Any, Any]:
    from builder.components.base import ComponentContext
    from builder.paths import default_cache_dir
    from builder.recipes import load_recipe
    from builder.sources.base import SourceContext, open_source

    loaded = load_recipe(recipe, overrides)
    cache = cache_dir or default_cache_dir()
    source = open_source(loaded.recipe.source, SourceContext(loaded.base_dir, cache))
    evaluated = load_recipe(recipe).recipe.source  # what a build of the recipe evaluates: --set source... trains on other data
    context = ComponentContext(resolve_device(device), cache, loaded.base_dir, tuple(source.class_names),
                               loaded.recipe.image_size, loaded.recipe.source, loaded.recipe.seed, evaluated_source=evaluated)
    return loaded.recipe, context


def _train_one(config: Any, what: str, out: Optional[Path], context: Any, overwrite: bool = False) -> Path:
    """Train the component of ``config`` that reads a weights file (as its kind lists them) into
    --out, else where a build will look for its trained weights; returns where it went. Weights
    already there are replaced only with ``overwrite``: builds made with them would no longer
    resume or verify."""
    from builder.checkpoints import fetch_location
    from builder.preflight import component_weights
    from builder.train import train_component

    files = [(found.component, found.location) for found in component_weights(config, what) if found.location is not None and found.kind == "weights"]
    component = files[0][0] if files else config
    if out is None and not files:
        raise BuilderError(f"the recipe's {what} names no weights location to train into; pass --out")
    if out is None and component.train is not None and context.evaluated_source not in (None, context.source):
        # the build looks for weights trained on the recipe's own source: these would never be read
        raise BuilderError(f"--set source... trains the {what} on other data than a build of the recipe reads, so a build would "
                           "not find these weights (and would train its own); pass --out FILE, then give the recipe's "
                           f"{what} checkpoint: FILE and drop its train block")
    target = out or context.trained_location(fetch_location(files[0][1], context.locations), component)
    if target.exists() and not overwrite:
        raise BuilderError(f"{target} exists: the {what}'s weights are there already; pass --overwrite to train new ones in their place "
                           "(builds made with the old ones would no longer resume or verify), or --out another file")
    train_component(component, context, target)
    return target


def _train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")(command)
    command = click.option("--device", default=None, help="torch device.")(command)
    command = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint to write (default: the recipe's location).")(command)
    command = click.option("--overwrite", is_flag=True, help="Replace weights already at the checkpoint location.")(command)
    return cache_option(click.argument("recipe")(command))


@train.command("generator")
@_train_options
@click.option("--generator", "--name", "generator_name", default=None, help="Which of the recipe's generators (by name); default: the first.")
def train_generator_command(recipe: str, out: Optional[Path], overwrite: bool, device: Optional[str], overrides: tuple[str, ...],
                            cache_dir: Optional[Path], generator_name: Optional[str]) -> None:
    """Train RECIPE's generator on its source (a VQGAN: taming format, {"state_dict": ...})."""
    config, context = _train_context(recipe, overrides, device, cache_dir)
    name, generator = config.generator_named(generator_name)
    where = f"generator {name}" if config.generators else "generator"
    click.echo(f"wrote {_train_one(generator, where, out, context, overwrite)}")


@train.command("oracle")
@_train_options
def train_oracle_command(recipe: str, out: Optional[Path], overwrite: bool, device: Optional[str], overrides: tuple[str, ...],
                         cache_dir: Optional[Path]) -> None:
    """Train RECIPE's oracle from scratch (a CLIP oracle on its class prompts)."""
    config, context = _train_context(recipe, overrides, device, cache_dir)
    click.echo(f"wrote {_train_one(config.oracle, 'oracle', out, context, overwrite)}")


@train.command("model")
@_train_options
@click.option("--config", "--name", "config_name", default=None, help="Which reference model (config name); default: the first.")
def train_model_command(recipe: str, out: Optional[Path], overwrite: bool, device: Optional[str], overrides: tuple[str, ...], cache_dir: Optional[Path],
                        config_name: Optional[str]) -> None:
    """Train one of RECIPE's reference models from scratch."""
    from builder.registry import unknown_name_message

    config, context = _train_context(recipe, overrides, device, cache_dir)
    specs = {spec.config_name: spec for spec in config.reference_models}
    name = config_name or next(iter(specs))
    if name not in specs:
        raise BuilderError(unknown_name_message("reference model", name, list(specs)))
    click.echo(f"wrote {_train_one(specs[name], f'reference model {name}', out, context, overwrite)}")


if __name__ == "__main__":  # pragma: no cover
    main()
