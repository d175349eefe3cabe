"""Score any classifier on a benchmark: SA, PA, FMR (Zhang et al.), static or dynamic.

Static scoring needs only the benchmark and the model: images are decoded in worker
processes while the model runs. Dynamic scoring regenerates the benchmark against the
evaluated model itself (it becomes theta), the paper's main protocol.
"""

from __future__ import annotations

import itertools
import logging
import sys
import tempfile
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union, cast

import numpy as np
import torch

from builder.benchmark import Benchmark, BenchmarkError, open_benchmark, reading_shard
from builder.config import ModelSpec, SourceConfig, parse_component, recipe_to_dict
from builder.errors import BuilderError, ComponentError, RecipeError, first_line
from builder.metrics import Outcomes, compute_metrics, per_class
from builder.paths import default_cache_dir
from builder.writers.base import ShardWriter

log = logging.getLogger(__name__)

ModelLike = Union[str, ModelSpec]


@dataclass(frozen=True)
class ScoreResult:
    """One model on one benchmark config; every figure has a 95% bootstrap interval."""

    benchmark: str
    benchmark_id: str
    config: str
    reference_model: str
    model: str
    model_spec: dict[str, Any]
    name: str
    white_box: bool
    n: int
    sa: float
    #: the paper's PA, on the whole generated set: fmr == 100 * pa / sa
    pa: float
    #: accuracy on the perturbed samples only
    pa_perturbed: float
    fmr: float
    vr: float
    mean_steps: float
    intervals: dict[str, list[float]] = field(default_factory=dict)
    per_class: Optional[list[dict[str, Any]]] = None
    mode: str = "static"
    #: per sample, in the benchmark's shard and key order: ``keys``, and the model's predicted label
    #: on the benchmark image (``pred_perturbed``: the perturbed image, or x for an unperturbed
    #: sample) and on the original (``pred_original``); what ``report`` needs for the images a
    #: model gets wrong and the attribute curves. None when the benchmark is not kept (dynamic).
    sample_predictions: Optional[dict[str, list[Any]]] = None

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        intervals = payload.pop("intervals")
        payload.update({f"{key}_ci": value for key, value in intervals.items()})
        return payload


def as_model_spec(model: ModelLike, checkpoint: Optional[str] = None) -> ModelSpec:
    """A spec string (``timm:...``, ``py:...``), a YAML file of ModelSpec fields, or a ModelSpec.
    A ``checkpoint`` given here is the weights: a ``train`` block is dropped (``ref:X --checkpoint
    FILE`` trained a new model next to FILE, and scored that instead of FILE)."""
    if isinstance(model, ModelSpec):
        return model if checkpoint is None else model.model_copy(update={"checkpoint": checkpoint, "train": None})
    data: dict[str, Any] = {"model": model}
    if Path(model).suffix in (".yaml", ".yml"):
        from builder.safeyaml import load_yaml_text, read_recipe_text

        if not Path(model).is_file():
            raise RecipeError(f"--model {model}: no such file")
        data = load_yaml_text(read_recipe_text(Path(model)), what=f"--model {model}") or {}
        if not isinstance(data, dict):
            raise RecipeError(f"--model {model}: expected a mapping of model fields (model: timm:<name>, ...); fix the file")
    if checkpoint is not None:
        data = {**data, "checkpoint": checkpoint, "train": None}
    from pydantic import ValidationError

    from builder.config import format_validation_error

    try:
        return ModelSpec.model_validate(data)
    except ValidationError as error:
        raise format_validation_error(error, ModelSpec, ("--model",)) from None


def spec_file(model: ModelLike) -> Optional[Path]:
    """The YAML file a ``--model`` names (a spec of model fields), or None for a spec string."""
    return Path(model) if isinstance(model, (str, Path)) and Path(model).suffix in (".yaml", ".yml") else None


def spec_dir(model: ModelLike) -> Path:
    """Where a model spec's relative paths are taken from: a YAML spec file's own folder (as in a
    model zoo file), else the current directory (a spec typed on the command line)."""
    file = spec_file(model)
    return file.expanduser().resolve().parent if file is not None else Path.cwd()


def checkpoint_from(checkpoint: Optional[str], base: Path) -> Optional[str]:
    """A ``--checkpoint`` path made absolute from ``base`` (the current directory for one typed
    on the command line: a YAML spec's folder would otherwise take it); locations (URLs,
    ``hf-hub:``, ``cache:``...) as they are."""
    from builder.checkpoints import scheme_of
    from builder.paths import in_recipe_dir

    if checkpoint is None or scheme_of(checkpoint) is not None:
        return checkpoint
    return str(in_recipe_dir(checkpoint, base.absolute()))


def reference_spec(bench: Benchmark, model: ModelLike, *, trust_remote_code: bool = False) -> ModelLike:
    """``ref:<config>`` is the reference model that config of the benchmark was built against;
    ``ref:<reference model>`` (its name in the recipe) the same model, which in a several-generator
    build every ``<model>-<generator>`` config shares. It is read from the manifest, which is data:
    a spec that would run code is refused unless ``trust_remote_code``."""
    from pydantic import ValidationError

    from builder.trust import require_trusted

    if not (isinstance(model, str) and model.startswith("ref:")):
        return model
    config = bench.config(reference_config(bench, model[4:]))
    recorded = bench.manifest["configs"][config].get("reference_model")
    origin = f"the manifest of {bench.location} (config {config})"
    try:
        spec = ModelSpec.model_validate(recorded)
    except ValidationError as error:
        from builder.manifest import validation_problem

        raise BenchmarkError(f"{origin}: its reference_model is not a model spec ({validation_problem(error)}); rebuild it") from None
    require_trusted([spec], origin, trust_remote_code)
    return spec


def reference_config(bench: Benchmark, name: str) -> str:
    """The config ``name`` names: itself, else the first config built against the reference model
    of that name (unknown names are left to ``bench.config``'s error, which lists the configs)."""
    if name in bench.configs:
        return name
    for config in bench.configs:
        recorded = bench.manifest["configs"][config].get("reference_model")
        if isinstance(recorded, dict) and recorded.get("name") == name:
            return str(config)
    return name


def load_model_for(bench: Benchmark, spec: ModelSpec, device: str, cache_dir: Path, base_dir: Path, *,
                   recorded: Optional[str] = None) -> Any:
    """The classifier of ``spec`` for this benchmark's classes; one with a ``train`` block is
    trained on first use, unless it is ``recorded`` (``ref:...``, the model the benchmark was
    built against): a model trained now would not be that one."""
    from builder.components.base import ComponentContext, prompt_template_of
    from builder.components.models import load_classifier

    recipe = bench.manifest["recipe"]
    context = ComponentContext(
        device=device,
        cache_dir=cache_dir,
        base_dir=base_dir,
        class_names=bench.class_names,
        image_size=int(recipe["image_size"]),
        source=cast(SourceConfig, parse_component("sources", recipe["source"], ("source",))),
        seed=int(recipe.get("seed", 0)),
        prompt_template=prompt_template_of(recipe.get("oracle")),
    )
    from builder.train import ensure_weights

    if recorded is not None:
        _check_recorded_weights(spec, context, recorded)
    ensure_weights([spec], context)  # a scored model with a train block is trained on first use
    return load_classifier(spec, context, classes_of=f"the benchmark {bench.location}")


def _check_recorded_weights(spec: ModelSpec, context: Any, model: str) -> None:
    """The weights of a ``ref:`` model are there: a relative checkpoint in a manifest is relative
    to the folder of the recipe the benchmark was built from, which the manifest cannot know."""
    from builder.checkpoints import scheme_of
    from builder.paths import in_recipe_dir
    from builder.preflight import missing_weights

    missing = next((path for _, path in missing_weights([spec], context)), None)
    if missing is None and spec.checkpoint and scheme_of(spec.checkpoint) is None:
        path = in_recipe_dir(spec.checkpoint, context.base_dir)
        missing = None if path.exists() else path
    if missing is not None:
        raise BenchmarkError(
            f"{model}: its weights {missing} are not there (the manifest records checkpoint {spec.checkpoint!r}, taken from "
            f"{context.base_dir}); pass --source with the recipe the benchmark was built from (paths are taken from its folder), "
            "or --checkpoint with the weights file; score never trains the model a benchmark was built against"
        )


class ShardImages(torch.utils.data.IterableDataset):
    """Decodes (image, original) pairs of the shards assigned to this worker, through the
    reader of the format the shards are read from."""

    def __init__(self, reader: ShardWriter, files: list[Path], counts: list[int], with_originals: bool) -> None:
        super().__init__()
        self.reader, self.files, self.counts, self.with_originals = reader, files, counts, with_originals

    def __iter__(self) -> Iterator[tuple[int, int, Any, Any]]:
        from builder.images import decode_image, to_chw

        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        for shard, path in enumerate(self.files):
            if shard % workers != worker:
                continue
            with reading_shard(path, "cannot read its images"):
                pairs = self.reader.read_images(path, range(self.counts[shard]))
                for row, (encoded, encoded_original) in enumerate(pairs):
                    image = to_chw(decode_image(encoded))
                    original = to_chw(decode_image(encoded_original)) if self.with_originals and encoded_original is not None else image
                    yield shard, row, image, original


def _check_counts(bench: Benchmark, config: str, counts: list[int]) -> None:
    """Each shard holds the records its manifest entry counts (a damaged or edited benchmark
    would pair predictions with the wrong labels, or fail deep in a reader)."""
    listed = [int(shard["num_samples"]) for shard in bench.manifest["configs"][config]["shards"]]
    for index, (found, expected) in enumerate(zip(counts, listed, strict=True)):
        if found != expected:
            raise BenchmarkError(f"{bench.location}: config '{config}' shard {index} holds {found} records, but its manifest says {expected}; "
                                 "the benchmark is damaged: run 'build-benchmark verify' on it, then download or build it again")


def predict(classifier: Any, bench: Benchmark, config: str, *, device: str, batch_size: int, workers: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per shard: predictions on the perturbed images and on the originals (left at -1 when the
    benchmark has no originals: the model then sees each image once)."""
    reader, files = bench.shards(config)
    with_originals = bench.has_originals()
    counts = [int(s["num_samples"]) for s in bench.manifest["configs"][config]["shards"]]
    loader = torch.utils.data.DataLoader(
        ShardImages(reader, files, counts, with_originals), batch_size=batch_size, num_workers=workers,
        prefetch_factor=4 if workers else None, persistent_workers=False
    )
    on_images = [np.full(c, -1, dtype=np.int64) for c in counts]
    on_originals = [np.full(c, -1, dtype=np.int64) for c in counts]
    try:
        with torch.no_grad():
            for shards, rows, images, originals in loader:
                batch = torch.cat([images, originals]) if with_originals else images
                predictions = predicted_labels(classifier, batch.to(device).float() / 255)
                for position, (shard, row) in enumerate(zip(shards.tolist(), rows.tolist(), strict=False)):
                    on_images[shard][row] = predictions[position]
                    if with_originals:
                        on_originals[shard][row] = predictions[len(images) + position]
    except BenchmarkError as error:  # from a decoding worker, torch wraps it in the worker's traceback: its last line is ours
        raise BenchmarkError(_raised_message(str(error), BenchmarkError)) from None
    return on_images, on_originals


def predicted_labels(classifier: Any, images: torch.Tensor) -> np.ndarray:
    """The classifier's labels for [0, 1] images. A model that fails on them (another input size,
    channels, a bug in a py: model) is a one-line error naming it and the images' shape, so a
    zoo lists it and scores the others."""
    try:
        logits = classifier(images)
    except BuilderError:
        raise
    except Exception as error:  # the model's own code: any error is its
        raise ComponentError(f"{getattr(classifier, 'spec', 'the model')}: failed on {len(images)} images of shape "
                             f"{tuple(images.shape[1:])}: {first_line(error, typed=True)}; check the model's input size and spec") from error
    return logits.argmax(-1).cpu().numpy()


def _raised_message(text: str, kind: type) -> str:
    """The message of a ``kind`` error raised in a DataLoader worker (torch re-raises it with the
    worker's traceback as its text, ending in ``module.Kind: message``); a plain message as it is."""
    last = text.strip().splitlines()[-1] if text.strip() else ""
    prefix = f"{kind.__module__}.{kind.__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else first_line(Exception(text))


def _originals_from_source(bench: Benchmark, config: str, source_recipe: Optional[str], classifier: Any, device: str, batch_size: int,
                           cache_dir: Path) -> np.ndarray:
    """SA needs the originals; a benchmark built without them gets them from the recipe's source."""
    from builder.images import to_nchw
    from builder.recipes import load_recipe
    from builder.sources.base import SourceContext, open_source

    if source_recipe is None:
        raise BenchmarkError(f"{bench.location} was built without original images; pass --source RECIPE (its recipe) so SA can be measured")
    loaded = load_recipe(source_recipe)
    _check_same_source(source_recipe, recipe_to_dict(loaded.recipe)["source"], bench.manifest["recipe"].get("source"))
    source = open_source(loaded.recipe.source, SourceContext(loaded.base_dir, cache_dir))  # where the build cached its shards
    columns = list(bench.read_columns(config, ["key", "source_id"]))
    indices = [int(k) for part in columns for k in part["key"]]
    ids = [source_id for part in columns for source_id in part["source_id"]]
    pixels = source_images(source, indices, int(bench.manifest["recipe"]["image_size"]), ids)
    predictions = []
    while chunk := list(itertools.islice(pixels, batch_size)):
        batch = to_nchw(np.stack(chunk)).to(device).float() / 255
        with torch.no_grad():
            predictions.append(predicted_labels(classifier, batch))
    return np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)


def _check_same_source(recipe: str, given: dict[str, Any], recorded: Optional[dict[str, Any]]) -> None:
    """``--source``'s recipe must read the source the benchmark was built from: another one would
    give SA (and FMR) of other images, without a word."""
    if recorded is None or given == recorded:
        return
    key = next(key for key in sorted({*given, *recorded}) if given.get(key) != recorded.get(key))
    raise BenchmarkError(f"--source {recipe}: its source.{key} is {given.get(key)!r}, but the benchmark was built with "
                         f"{recorded.get(key)!r}; give the recipe this benchmark was built from")


def source_images(source: Any, indices: list[int], size: int, source_ids: Optional[list[str]] = None) -> Iterator[np.ndarray]:
    """The source's images at ``indices``, in that order, each checked to be the sample of
    ``source_ids`` (when given). A benchmark's keys increase, so they are read in one pass over
    the source (a compressed tar shard is inflated once, not once per key); indices in another
    order are read one by one."""
    from builder.sources.decode import load_rgb

    expected = dict(zip(indices, source_ids, strict=True)) if source_ids is not None else {}

    def image_of(item: Any) -> np.ndarray:
        if item.index in expected and item.source_id != expected[item.index]:
            raise BenchmarkError(f"--source: its sample {item.index} is {item.source_id}, but the benchmark's is "
                                 f"{expected[item.index]}; give the recipe this benchmark was built from, with the same data")
        return load_rgb(item.load, size)

    if indices != sorted(indices):
        for index in indices:
            item = next(source.items(index, index + 1), None)
            if item is None:
                raise BenchmarkError(_missing_from_source(index, len(source)))
            yield image_of(item)
        return
    wanted = iter(indices)
    target = next(wanted, None)
    for item in source.items(indices[0], indices[-1] + 1) if indices else ():
        if target is not None and target < item.index:
            break
        if item.index == target:
            yield image_of(item)
            target = next(wanted, None)
    if target is not None:
        raise BenchmarkError(_missing_from_source(target, len(source)))


def _missing_from_source(index: int, count: int) -> str:
    return f"--source: its source has no sample {index} (it has {count}); give the recipe this benchmark was built from"


def score(
    benchmark: Union[str, Path, Benchmark],
    model: ModelLike,
    *,
    config: Optional[str] = None,
    checkpoint: Optional[str] = None,
    device: str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    bootstrap: int = 1000,
    seed: int = 0,
    with_per_class: bool = False,
    source_recipe: Optional[str] = None,
    cache_dir: Optional[Path] = None,
    base_dir: Optional[Path] = None,
    trust_remote_code: bool = False,
) -> ScoreResult:
    """Score ``model`` on one config of ``benchmark`` (default: its first config). A model
    spec taken from the benchmark (``ref:``) or a ``py:`` file inside a download runs only
    with ``trust_remote_code``."""
    from builder.trust import downloaded_roots, require_trusted_file, require_trusted_spec_file

    bench = benchmark if isinstance(benchmark, Benchmark) else open_benchmark(benchmark)
    config = bench.config(config)
    spec = as_model_spec(reference_spec(bench, model, trust_remote_code=trust_remote_code), checkpoint_from(checkpoint, Path.cwd()))
    recorded = model if isinstance(model, str) and model.startswith("ref:") and checkpoint is None else None
    if base_dir is None and recorded is not None and source_recipe is not None:  # the recorded spec's paths: the recipe's folder
        base_dir = Path(source_recipe).expanduser().resolve().parent
    base_dir = base_dir or spec_dir(model)
    file = spec_file(model)
    if file is not None:
        require_trusted_spec_file([spec], file, downloaded_roots(cache_dir), trust_remote_code, "--model")
    require_trusted_file(spec, base_dir, downloaded_roots(cache_dir), trust_remote_code)
    classifier = load_model_for(bench, spec, device, cache_dir or default_cache_dir(), base_dir, recorded=recorded)
    records: dict[str, list[Any]] = {"key": [], "label": [], "perturbed": [], "steps": []}
    counts = []
    for part in bench.read_columns(config, list(records)):
        for key in records:
            records[key].extend(part[key])
        counts.append(len(part["key"]))
    _check_counts(bench, config, counts)
    on_images, on_originals = predict(classifier, bench, config, device=device, batch_size=batch_size, workers=workers)
    pred_perturbed = np.concatenate(on_images)
    pred_original = (
        np.concatenate(on_originals) if bench.has_originals()
        else _originals_from_source(bench, config, source_recipe, classifier, device, batch_size, cache_dir or default_cache_dir())
    )
    outcomes = Outcomes(np.asarray(records["label"]), pred_original, pred_perturbed, np.asarray(records["perturbed"]), np.asarray(records["steps"]))
    figures = compute_metrics(outcomes, bootstrap=bootstrap, seed=seed)
    entry = bench.manifest["configs"][config]
    return ScoreResult(
        benchmark=bench.recorded_location,
        benchmark_id=bench.id,
        config=config,
        reference_model=entry["reference_model"]["model"],
        model=spec.model,
        model_spec=spec.model_dump(mode="json"),
        name=spec.config_name,
        white_box=is_white_box(classifier, bench.manifest, entry.get("reference_weights_sha256")),
        n=figures["n"],
        **{key: figures[key] for key in ("sa", "pa", "pa_perturbed", "fmr", "vr", "mean_steps")},
        intervals={key[:-3]: value for key, value in figures.items() if key.endswith("_ci")},
        per_class=per_class(outcomes, bench.class_names) if with_per_class else None,
        sample_predictions={"keys": [str(key) for key in records["key"]], "pred_perturbed": pred_perturbed.tolist(), "pred_original": pred_original.tolist()},
    )


def is_white_box(classifier: Any, manifest: dict[str, Any], recorded: Optional[str]) -> bool:
    """Whether ``classifier`` is the reference model a config was built against: its fingerprint
    is the one recorded. A build of a version before the fingerprint covered the spec's kwargs
    recorded it without them, and one before it covered the preprocessing its persistent weights'
    alone: each compared as such."""
    from builder.checkpoints import FUNCTION_FINGERPRINT_SINCE, KWARGS_FINGERPRINT_SINCE, persistent_weights_fingerprint, weights_fingerprint

    if recorded is None:
        return False
    if weights_fingerprint(classifier) == recorded:
        return True
    version = str((manifest.get("tool") or {}).get("version", "0"))
    parts = tuple(int(part) if part.isdigit() else 0 for part in version.split(".")[:3])
    if parts < KWARGS_FINGERPRINT_SINCE and weights_fingerprint(classifier, {}) == recorded:
        return True
    return parts < FUNCTION_FINGERPRINT_SINCE and persistent_weights_fingerprint(classifier) == recorded


def score_dynamic(
    recipe: str,
    model: ModelLike,
    *,
    checkpoint: Optional[str] = None,
    overrides: tuple[str, ...] = (),
    limit: Optional[int] = None,
    save: Optional[Path] = None,
    overwrite: bool = False,
    device: str = "cpu",
    batch_size: Optional[int] = None,
    bootstrap: int = 1000,
    seed: int = 0,
    cache_dir: Optional[Path] = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    generator: Optional[str] = None,
    compile_decoder: bool = False,
    deterministic: bool = False,
    score_batch_size: int = 64,
    workers: int = 0,
    with_per_class: bool = False,
) -> ScoreResult:
    """Regenerate the recipe's benchmark against ``model`` (it becomes theta), then score it;
    in a several-generator recipe, through ``generator`` (default: the first); ``compile_decoder``
    and ``deterministic`` as ``run --compile`` and ``run --deterministic``. ``batch_size`` is the build's (default: the recipe's); scoring the
    generated benchmark takes ``score_batch_size``, ``workers`` and ``with_per_class`` as
    :func:`score` does. ``overwrite`` replaces a benchmark of other settings kept in ``save``.
    The generated benchmark keeps its originals whatever the recipe says: SA is taken on them."""
    import builder.build.determinism as determinism
    from builder.build import BuildOptions, build_benchmark
    from builder.components.base import seeded
    from builder.recipes import LoadedRecipe, load_recipe
    from builder.trust import downloaded_roots, require_trusted_file, require_trusted_spec_file

    loaded = load_recipe(recipe, overrides)
    original = as_model_spec(model, checkpoint)
    # the build loads the model as the recipe's reference model: its relative paths (checkpoint,
    # py: file, folders) are taken from the recipe's folder, so the trust check looks there too
    require_trusted_file(original, loaded.base_dir, downloaded_roots(cache_dir), trust_remote_code)
    file = spec_file(model)
    if file is not None:  # a --model FILE.yaml inside downloaded data is data, as for a static score
        require_trusted_spec_file([original], file, downloaded_roots(cache_dir), trust_remote_code, "--model")
    spec = original.model_copy(update={"name": "evaluated"})
    output = loaded.recipe.output.model_copy(update={"keep_originals": True})  # without them, nothing to take SA on
    update: dict[str, Any] = {"reference_models": (spec,), "output": output}
    if loaded.recipe.generators is not None:
        name, chosen = loaded.recipe.generator_named(generator)
        update["generators"] = {name: chosen}
    evaluated = LoadedRecipe(loaded.recipe.model_copy(update=update), loaded.origin, loaded.base_dir)
    with tempfile.TemporaryDirectory(prefix="fmr-dynamic-") as scratch:
        out = save or Path(scratch) / "benchmark"
        options = BuildOptions(out_dir=out, device=device, cache_dir=cache_dir or default_cache_dir(), batch_size=batch_size, limit=limit,
                               progress=progress, compile=compile_decoder, overwrite=overwrite and save is not None,
                               deterministic=deterministic)
        build_benchmark(evaluated, options)
        # loaded as the build loaded it (seeded as its reference model): parts its weights file does
        # not fix (a head started fresh) were other than those the benchmark was generated against
        # and in the mode it was generated in (--deterministic)
        with seeded(loaded.recipe.seed, f"reference_models.{spec.config_name}"), determinism.mode(deterministic):
            result = score(out, spec, device=device, batch_size=score_batch_size, workers=workers, bootstrap=bootstrap, seed=seed,
                           with_per_class=with_per_class, cache_dir=options.cache_dir, base_dir=loaded.base_dir,
                           trust_remote_code=True)  # the user's own recipe and model
    location = str(save) if save else f"dynamic:{loaded.recipe.name}"
    identity = {"name": original.config_name, "model_spec": original.model_dump(mode="json"),
                "sample_predictions": result.sample_predictions if save else None}  # keys of a deleted benchmark name nothing
    return ScoreResult(**{**asdict(result), **identity, "benchmark": location, "mode": "dynamic"})


class _CallableModule(types.ModuleType):
    """``builder.score(benchmark, model, ...)`` calls :func:`score`: the module is callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> ScoreResult:
        return score(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ScoreResult", "score", "score_dynamic", "as_model_spec"]
