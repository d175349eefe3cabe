"""The unit runner (worker side): components loaded once; one work unit in, its shards out.

A runner owns its source reader and its loaded components, so it can live in-process, in a
spawned process or in a Ray actor alike. For each config it writes the unit's shard files
atomically and then the unit's ``_stats`` file: the stats file is written last, so it marks
the unit complete and is the record a resume and the finalizer read.

The engine never waits on I/O (:mod:`builder.build.pipeline`): the next unit is decoded on a
reader thread while this one is perturbed, and each config's images are encoded and its files
written on a writer thread while the engine goes on, a bounded number behind it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Optional, Sequence

import numpy as np

import builder.build.determinism as determinism
from builder.build.executors.base import current_worker_info
from builder.build.pipeline import READ_AHEAD, BackgroundWriter, ImageEncoder, Prefetcher
from builder.build.plan import RunnerSettings
from builder.build.tally import ConfigTally
from builder.build.units import WorkUnit, sample_key
from builder.checkpoints import weights_fingerprint
from builder.components.base import ComponentContext, prompt_template_of
from builder.config import Recipe
from builder.errors import BuilderError, ComponentError, OutputError, first_line
from builder.fileio import json_bytes
from builder.images import to_nchw
from builder.manifest import STATS_DIR
from builder.registry import load_plugins
from builder.sources.base import SourceContext, check_label, open_source
from builder.sources.decode import SampleRejected, load_rgb
from builder.storage import Storage, open_storage
from builder.writers import WRITERS, OutputSample, ShardSchema
from builder.writers.base import ATTRIBUTES_FIELD, attributes_of

log = logging.getLogger(__name__)

#: called with the number of source samples just finished (perturbed or rejected)
Progress = Callable[[int], None]
#: a work unit and the configs to build it for
Job = tuple[WorkUnit, list[str]]


@dataclass(frozen=True)
class UnitInput:
    """Decoded images of one work unit (rejected samples already set aside)."""

    pixels: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray
    indices: list[int]
    source_ids: list[str]
    rejects: list[dict[str, Any]]


@dataclass(frozen=True)
class Perturbed:
    """One config's engine results for a unit, on the host, waiting to be encoded and written."""

    finals: np.ndarray  # uint8 (N, H, W, 3)
    attributes: list[list[float]]
    columns: dict[str, list[Any]]
    stop_reason: list[str]


@dataclass(frozen=True)
class Components:
    """The loaded generator, oracle and reference models of a recipe, with weight fingerprints."""

    #: by generator name (see ``Recipe.named_generators``)
    generators: dict[str, Any]
    oracle: Any
    #: by reference model config name
    models: dict[str, Any]
    fingerprints: dict[str, str]


def read_unit(source: Any, unit: WorkUnit, image_size: int, class_names: tuple[str, ...]) -> UnitInput:
    pixels, labels, indices, ids, rejects = [], [], [], [], []
    for item in source.items(unit.start, unit.stop):
        check_label(item.label, class_names, item.source_id)
        try:
            pixels.append(load_rgb(item.load, image_size))
        except SampleRejected as rejected:
            log.warning("skipping %s: %s", item.source_id, rejected)
            rejects.append({"index": item.index, "source_id": item.source_id, "reason": str(rejected)})
            continue
        labels.append(item.label)
        indices.append(item.index)
        ids.append(item.source_id)
    empty = np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return UnitInput(np.stack(pixels) if pixels else empty, np.asarray(labels, dtype=np.int64), indices, ids, rejects)


def load_components(recipe: Recipe, context: ComponentContext, compile_decoder: bool = False) -> Components:
    """Generator, oracle and every reference model, each seeded by the recipe and its section (for weightless parts);
    components a ``train`` block makes are trained first if their weights are missing.
    ``compile_decoder`` wraps the generator so its decode runs through ``torch.compile``."""
    from builder.components import GENERATORS
    from builder.components.base import seeded
    from builder.components.models import load_classifier
    from builder.components.oracles import load_oracle
    from builder.sparse import check_generator_mask
    from builder.train import ensure_weights

    ensure_weights(trainable_parts(recipe), context)
    generators = {}
    for name, (where, config) in zip(recipe.named_generators, recipe.generator_sections, strict=True):
        with seeded(recipe.seed, "generator"):  # each seeded on its own: only parts without weights notice
            generators[name] = GENERATORS.get(config.kind)(config, context)
        check_generator_mask(config, generators[name], context, where)  # its shape and provenance, before a build claims its output
    with seeded(recipe.seed, "oracle"):
        oracle = load_oracle(recipe.oracle, context)
    models = {}
    for spec in recipe.reference_models:
        with seeded(recipe.seed, f"reference_models.{spec.config_name}"):
            models[spec.config_name] = load_classifier(spec, context)
    if compile_decoder:
        from builder.engine import CompiledDecoder

        generators = {name: CompiledDecoder(generator) for name, generator in generators.items()}
        log.info("decoder of %s through torch.compile: each compiles on its first batch (about half a minute on a GPU)", ", ".join(generators))
    return Components(generators, oracle, models, {name: weights_fingerprint(model) for name, model in models.items()})


def trainable_parts(recipe: Recipe) -> list[Any]:
    """The recipe's components in load order: generator, oracle, reference models."""
    return [*recipe.named_generators.values(), recipe.oracle, *recipe.reference_models]


def train_missing_weights(settings: RunnerSettings) -> None:
    """Train, here and once, the components whose weights a ``train`` block makes and that are
    missing, before any worker starts: workers then all load the same file instead of each
    training its own copy at once."""
    from builder.train import ensure_weights

    recipe = settings.recipe
    context = ComponentContext(settings.device, settings.cache_dir, settings.base_dir, settings.class_names,
                               recipe.image_size, recipe.source, recipe.seed)
    ensure_weights(trainable_parts(recipe), context)


@contextlib.contextmanager
def output_errors(path: Path | str) -> Iterator[None]:
    """A full disk or an unwritable dir: one line; the finished units stay for a resume."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(f"cannot write {path}: {reason}; finished work units are kept, fix this and resume with the same command") from None


class UnitRunner:
    """Turns work units into shard files and stats files; loads everything once, at creation."""

    def __init__(self, settings: RunnerSettings) -> None:
        #: torch's switches as they were before --deterministic, restored by close()
        self._determinism_before = determinism.enable() if settings.deterministic else None
        try:
            self._start(settings)
        except RuntimeError as error:  # loading (a Ray actor trains missing weights here): one line for a nondeterministic op
            self._restore_determinism()
            one_line = determinism.one_line_error(error, "loading the components", settings.device) if settings.deterministic else None
            if one_line is None:
                raise
            raise one_line from error
        except BaseException:
            self._restore_determinism()
            raise

    def _start(self, settings: RunnerSettings) -> None:
        load_plugins(settings.plugins)  # in a worker process: the kinds the driver knew
        self.settings = settings
        recipe = settings.recipe
        self.source = open_source(recipe.source, SourceContext(settings.base_dir, settings.cache_dir))
        self.context = ComponentContext(settings.device, settings.cache_dir, settings.base_dir, settings.class_names,
                                        recipe.image_size, recipe.source, recipe.seed, prompt_template_of(recipe.oracle))
        self.configs = {config.name: config for config in recipe.build_configs}
        self.schemas = {config.name: ShardSchema(settings.class_names, recipe.output.image_encoding, recipe.output.keep_originals,
                                                 attributes_of(config.generator.model_dump(mode="json")))
                        for config in recipe.build_configs}
        self.writers = {name: WRITERS.get(name)() for name in recipe.output.formats}
        self.storage = open_storage(settings.out_dir, settings.storage_options)
        self.components = load_components(recipe, self.context, compile_decoder=settings.compile)
        self._rehearse()
        self.info = current_worker_info(self.fingerprints, settings.device)
        self.reader: Prefetcher[WorkUnit, UnitInput] = Prefetcher(self._read)
        self.writer = BackgroundWriter()
        self.encoder = ImageEncoder(recipe.output.image_encoding)

    def _rehearse(self) -> None:
        """One full-batch step of each config before any unit (see :func:`builder.engine.rehearse`):
        a batch that does not fit fails while the workers load, as one line."""
        from builder.engine import rehearse

        recipe, parts = self.settings.recipe, self.components
        count = max(1, min(self.settings.batch_size, recipe.output.samples_per_shard))
        for name, config in self.configs.items():
            generator, model = parts.generators[config.generator_name], parts.models[config.model.config_name]
            try:
                rehearse(generator, parts.oracle, model, count, recipe.image_size, config.perturbation.precision, self.settings.device)
            except BuilderError:
                raise
            except Exception as error:  # the components' own code, or the device: one line, before the output is touched
                one_line = determinism.one_line_error(error, f"config {name}", self.settings.device)
                if one_line is not None:
                    raise one_line from error
                fix = "lower --batch-size" if "out of memory" in str(error).lower() else "check the components and image_size"
                raise ComponentError(f"config {name}: a step of a batch of {count} images of {recipe.image_size} px failed on "
                                     f"{self.settings.device} ({first_line(error, typed=True)}); {fix}") from error
            finally:
                _release_device_memory(self.settings.device)

    @property
    def fingerprints(self) -> dict[str, str]:
        """The weights of each config's reference model, by config name."""
        return {name: self.components.fingerprints[config.model.config_name] for name, config in self.configs.items()}

    def close(self) -> None:
        """Stop the reader, writer and encoder threads (pending writes finish, reads not begun are
        dropped), and give torch back the switches --deterministic changed."""
        try:
            self.reader.close()
            self.writer.close()
            self.encoder.close()
        finally:
            self._restore_determinism()

    def _restore_determinism(self) -> None:
        if self._determinism_before is not None:
            determinism.apply(self._determinism_before)
            self._determinism_before = None

    def run(self, unit: WorkUnit, configs: list[str], progress: Optional[Progress] = None,
            upcoming: Optional[WorkUnit] = None) -> list[dict[str, Any]]:
        """Build ``unit`` for each of ``configs``; returns the stats written, one per config.
        ``upcoming``, the unit this runner is likely to get next, is read in the background."""
        [written] = self.run_many([(unit, configs)], progress, upcoming=(upcoming,) if upcoming else ())
        return written

    def run_many(self, jobs: Iterable[Job], progress: Optional[Progress] = None,
                 upcoming: Sequence[WorkUnit] = ()) -> Generator[list[dict[str, Any]], None, None]:
        """Build each (unit, configs) of ``jobs`` in order, yielding a unit's stats (one per config)
        once they are written. The next job's unit is read while this one is perturbed, and each
        config's shards are encoded and written in the background while the engine goes on; a unit
        is yielded when the next one has been perturbed (or the jobs ran out). ``jobs`` is drawn
        lazily, one ahead; ``upcoming`` is read after the last job, for a later call."""
        pending: collections.deque[list[Future[dict[str, Any]]]] = collections.deque()
        try:
            for unit, configs, inputs in self._inputs(jobs, upcoming):
                originals = self.encoder.start(inputs.pixels) if self.settings.recipe.output.keep_originals else None  # once, for every config
                pending.append([self._perturb_then_write(unit, name, inputs, originals, progress) for name in configs])
                while len(pending) > 1:
                    yield [future.result() for future in pending.popleft()]
            while pending:
                yield [future.result() for future in pending.popleft()]
        except Exception:  # the units already perturbed are written, as a serial build had written them
            self.writer.finish([future for futures in pending for future in futures])
            raise
        finally:  # an interrupt (or a stream closed early): no write begins after it, none is left half done
            self.writer.abandon([future for futures in pending for future in futures])

    def _inputs(self, jobs: Iterable[Job], upcoming: Sequence[WorkUnit]) -> Iterator[tuple[WorkUnit, list[str], UnitInput]]:
        """Each job with its decoded unit, the next ``READ_AHEAD`` jobs' units being read meanwhile."""
        source = iter(jobs)
        ahead: collections.deque[Job] = collections.deque()
        while True:
            ahead.extend(itertools.islice(source, READ_AHEAD + 1 - len(ahead)))
            if not ahead:
                return
            for job in ahead:  # the current one first: the reader takes them in order
                self.reader.start(job[0])
            if len(ahead) == 1:
                for unit in upcoming:
                    self.reader.start(unit)
            unit, configs = ahead.popleft()
            yield unit, configs, self.reader.take(unit)

    def _read(self, unit: WorkUnit) -> UnitInput:
        return read_unit(self.source, unit, self.settings.recipe.image_size, self.settings.class_names)

    def _perturb_then_write(self, unit: WorkUnit, name: str, inputs: UnitInput, originals: Optional[list[Future[bytes]]],
                            progress: Optional[Progress]) -> Future[dict[str, Any]]:
        """Perturb the unit for config ``name`` here; encode (on the encoder's threads) and write
        it on the writer thread. ``originals``: the unit's originals being encoded, or None."""
        perturbed = self._perturb_unit(name, inputs, progress)
        if progress is not None and inputs.rejects:
            progress(len(inputs.rejects))
        return self.writer.submit(lambda: self._write_unit(unit, name, self._samples(name, inputs, perturbed, originals), inputs.rejects))

    def _perturb_unit(self, name: str, inputs: UnitInput, progress: Optional[Progress]) -> Perturbed:
        """Every sample of the unit through the engine, ``batch_size`` slots kept full."""
        import torch

        from builder.engine import perturb_batch

        parts, config = self.components, self.configs[name]
        device = self.settings.device
        images = to_nchw(inputs.pixels)
        labels = torch.from_numpy(inputs.labels).to(device)
        generator, model = parts.generators[config.generator_name], parts.models[config.model.config_name]
        mask = getattr(generator, "mask", None)
        result = perturb_batch(generator, parts.oracle, model, images, labels, config.perturbation,
                               mask=mask, batch_size=self.settings.batch_size, keep_latents=False, on_done=progress)
        columns = {field: getattr(result, field).cpu().tolist() for field in
                   ("perturbed", "steps", "oracle_prob", "pred_before", "loss_before", "pred_after", "loss_after")}
        return Perturbed(
            finals=result.images.permute(0, 2, 3, 1).cpu().numpy(),
            attributes=result.attributes.float().cpu().tolist(),  # float32: the values the Parquet column holds
            columns=columns,
            stop_reason=list(result.stop_reason),
        )

    def _samples(self, name: str, inputs: UnitInput, perturbed: Perturbed, originals: Optional[list[Future[bytes]]]) -> list[OutputSample]:
        """The unit's output samples for config ``name``: records and encoded images."""
        config, schema = self.configs[name], self.schemas[name]
        columns = perturbed.columns
        images = self.encoder.encode(perturbed.finals)
        original_bytes = [future.result() for future in originals] if originals is not None else [None] * len(images)
        samples = []
        for row in range(len(inputs.pixels)):
            record: dict[str, Any] = {
                "key": sample_key(inputs.indices[row]),
                "label": int(inputs.labels[row]),
                "class_name": self.settings.class_names[int(inputs.labels[row])],
                "source_id": inputs.source_ids[row],
                "reference_model": config.model.config_name,
                "perturbed": bool(columns["perturbed"][row]),
                "steps": int(columns["steps"][row]),
                "stop_reason": perturbed.stop_reason[row],
                "oracle_prob": round(float(columns["oracle_prob"][row]), 6),
                "pred_before": int(columns["pred_before"][row]),
                "loss_before": round(float(columns["loss_before"][row]), 6),
                "pred_after": int(columns["pred_after"][row]),
                "loss_after": round(float(columns["loss_after"][row]), 6),
            }
            if schema.attributes:
                record[ATTRIBUTES_FIELD] = dict(zip(schema.attributes, perturbed.attributes[row], strict=True))
            samples.append(OutputSample(record["key"], images[row], original_bytes[row], record))
        return samples

    def _write_unit(self, unit: WorkUnit, name: str, samples: list[OutputSample], rejects: list[dict[str, Any]]) -> dict[str, Any]:
        """The unit's shard of ``name`` in every format, then its stats file (last: it marks completion).
        On an object store each shard is written to a local temp file, hashed and then put whole."""
        stem = unit.shard_stem(self.settings.recipe.output.split)
        files = {}
        for fmt, writer in self.writers.items():
            relative = f"{name}/{stem}{writer.suffix}"
            with output_errors(self.storage.show(relative)):
                digest, size = self.storage.write_file(relative, functools.partial(writer.write, samples=samples, schema=self.schemas[name]))
            files[fmt] = {"path": relative, "sha256": digest, "bytes": size}
        stats = {
            "config": name,
            "unit": unit.index,
            "start": unit.start,
            "stop": unit.stop,
            "num_samples": len(samples),
            "num_perturbed": sum(s.record["perturbed"] for s in samples),
            "keys": [s.key for s in sorted(samples, key=lambda s: s.key)],
            "tally": ConfigTally.counts_of([s.record for s in samples]),
            "reference_weights_sha256": self.fingerprints[name],
            "built_with": {**self.info.to_json(), **({"deterministic": True} if self.settings.deterministic else {})},
            "files": files,
            "rejects": rejects,
        }
        stats_path = f"{STATS_DIR}/{name}/{stem}.json"
        with output_errors(self.storage.show(stats_path)):
            write_stats(self.storage, stats_path, stats)
        return stats


def write_stats(storage: Storage, relative: str, stats: dict[str, Any]) -> None:
    """A unit's stats file, the last thing written for it: its presence marks the unit complete
    (one function, so that fault-injection tests can stop a worker right before it)."""
    storage.put_bytes(relative, json_bytes(stats))


def _release_device_memory(device: str) -> None:
    """The rehearsal's activations back to the device (a CUDA cache keeps them otherwise)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()

