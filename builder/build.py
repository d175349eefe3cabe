"""Source -> engine -> writers, one work unit at a time; then manifest, card and preview.

Each (config, unit) shard is written atomically and recorded in ``_stats/`` before the next
starts, so a build stopped at any point leaves only complete shards behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from builder import __version__
from builder.components.base import ComponentContext, check_image_size
from builder.config import Recipe, recipe_to_dict
from builder.checkpoints import weights_fingerprint
from builder.engine import STOP_NON_FINITE
from builder.errors import OutputError
from builder.fileio import inside, sha256_file, sha256_json, write_bytes_atomic, write_json_atomic
from builder.images import encode_image
from builder.manifest import MANIFEST, MANIFEST_FORMAT, PREVIEW, REJECTS, STATS_DIR
from builder.outdir import claim_output, inspect_output
from builder.plan import WorkUnit, plan_units
from builder.recipes import LoadedRecipe
from builder.sources.base import SourceContext, check_label, open_source
from builder.sources.decode import SampleRejected, load_rgb
from builder.writers import WRITERS, OutputSample, ShardSchema

log = logging.getLogger(__name__)

PREVIEW_SAMPLES = 8


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    device: str
    cache_dir: Path
    batch_size: Optional[int] = None
    limit: Optional[int] = None
    overwrite: bool = False
    #: with ``overwrite`` or a resume: also delete files in the dir that the build did not write
    force_clean: bool = False
    progress: bool = True


@dataclass
class ConfigTally:
    """Running counts of one config (reference model) over the units written so far."""

    samples: int = 0
    perturbed: int = 0
    steps: int = 0
    correct_before: int = 0
    correct_after_perturbed: int = 0
    correct_after: int = 0

    non_finite: int = 0
    COUNTS = ("samples", "perturbed", "steps", "correct_before", "correct_after_perturbed", "correct_after", "non_finite")

    @staticmethod
    def counts_of(records: list[dict[str, Any]]) -> dict[str, int]:
        """What one work unit adds to the tally (stored in its stats file, for resume)."""
        return {
            "samples": len(records),
            "perturbed": sum(r["perturbed"] for r in records),
            "steps": sum(r["steps"] for r in records if r["perturbed"]),
            "correct_before": sum(r["pred_before"] == r["label"] for r in records),
            "correct_after_perturbed": sum(r["perturbed"] and r["pred_after"] == r["label"] for r in records),
            "correct_after": sum(r["pred_after"] == r["label"] for r in records),
            "non_finite": sum(r["stop_reason"] == STOP_NON_FINITE for r in records),
        }

    def add(self, counts: dict[str, int]) -> None:
        for key in self.COUNTS:
            setattr(self, key, getattr(self, key) + int(counts.get(key, 0)))

    def summary(self) -> dict[str, Any]:
        share = self.perturbed / self.samples if self.samples else 0.0
        sa = self.correct_before / self.samples if self.samples else 0.0
        pa_all = self.correct_after / self.samples if self.samples else 0.0
        return {
            "num_samples": self.samples,
            "num_perturbed": self.perturbed,
            "perturbed_share": round(share, 6),
            "mean_steps": round(self.steps / self.perturbed, 4) if self.perturbed else 0.0,
            "sa": round(sa, 6),
            "pa": round(self.correct_after_perturbed / self.perturbed, 6) if self.perturbed else 0.0,
            "pa_all": round(pa_all, 6),
            "fmr": round(100 * pa_all / sa, 4) if sa else 0.0,
            "num_non_finite": self.non_finite,
        }


@dataclass(frozen=True)
class UnitInput:
    """Decoded images of one work unit (rejected samples already set aside)."""

    pixels: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray
    indices: list[int]
    source_ids: list[str]
    rejects: list[dict[str, Any]]


@dataclass(frozen=True)
class BuildSummary:
    out_dir: Path
    source_samples: int
    rejects: int
    configs: dict[str, dict[str, Any]]
    seconds: float
    manifest_id: str


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


@contextlib.contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """A full disk or an unwritable dir: one line; the finished units stay for a resume."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(f"cannot write {path}: {reason}; finished work units are kept, fix this and resume with the same command") from None


def sample_key(index: int) -> str:
    """Stable, dot-free key from the source index."""
    return f"{index:08d}"


class Builder:
    """Holds the loaded components for one build; :meth:`run` does the work."""

    def __init__(self, loaded: LoadedRecipe, options: BuildOptions) -> None:
        self.loaded = loaded
        self.recipe: Recipe = loaded.recipe
        self.options = options
        self.batch_size = options.batch_size or self.recipe.batch_size
        check_image_size(self.recipe.generator, self.recipe.image_size, loaded.base_dir, options.cache_dir)
        self.source = open_source(self.recipe.source, SourceContext(loaded.base_dir, options.cache_dir))
        self.class_names = tuple(self.source.class_names)
        total = len(self.source) if options.limit is None else min(len(self.source), options.limit)
        self.units = plan_units(total, self.recipe.output.samples_per_shard)
        self.total = total
        self.schema = ShardSchema(self.class_names, self.recipe.output.image_encoding, self.recipe.output.keep_originals)
        self.writers = {name: WRITERS.get(name)() for name in self.recipe.output.formats}
        self.context = ComponentContext(
            device=options.device,
            cache_dir=options.cache_dir,
            base_dir=loaded.base_dir,
            class_names=self.class_names,
            image_size=self.recipe.image_size,
            source=self.recipe.source,
            seed=self.recipe.seed,
        )

    def load_components(self) -> None:
        import torch

        from builder.components import GENERATORS
        from builder.components.models import load_classifier
        from builder.components.oracles import load_oracle

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.seed)  # only matters for components without weights
            self.generator = GENERATORS.get(self.recipe.generator.kind)(self.recipe.generator, self.context)
            self.oracle = load_oracle(self.recipe.oracle, self.context)
            self.models = {spec.config_name: load_classifier(spec, self.context) for spec in self.recipe.reference_models}
        self.fingerprints = {name: weights_fingerprint(model) for name, model in self.models.items()}

    def identity(self) -> dict[str, Any]:
        """What this build is: a resumed run must match it exactly, the source's resolved
        location and listing included (the same recipe text elsewhere reads other images)."""
        return {
            "format": MANIFEST_FORMAT,
            "tool_version": __version__,
            "recipe": recipe_to_dict(self.recipe),
            "limit": self.options.limit,
            "source_samples": self.total,
            "configs": [spec.config_name for spec in self.recipe.reference_models],
            "source": source_fingerprint(self.source, self.recipe.source, self.loaded.base_dir),
        }

    def run(self) -> BuildSummary:
        started = time.monotonic()
        identity = self.identity()
        state = inspect_output(self.options.out_dir, identity, overwrite=self.options.overwrite, force_clean=self.options.force_clean)
        completed = state.completed
        names = [spec.config_name for spec in self.recipe.reference_models]
        pending = [(unit, name) for unit in self.units for name in names if (name, unit.shard_stem(self.recipe.output.split)) not in completed]
        if pending:  # before the dir is touched: a component that fails to load changes nothing
            self.load_components()
            self._check_same_weights(completed)
        claim_output(state, identity)
        tallies = {name: ConfigTally() for name in names}
        rejects: dict[int, list[dict[str, Any]]] = {}
        with self._progress() as bar:
            for (name, _), stats in sorted(completed.items()):
                tallies[name].add(stats["tally"])
                rejects[stats["unit"]] = stats["rejects"]
                bar.update(stats["num_samples"] + len(stats["rejects"]))
            try:
                self._run_pending(pending, tallies, rejects, bar)
            except KeyboardInterrupt:
                self._write_partial_manifest()
                raise
        manifest = self._finish(tallies, [r for unit in sorted(rejects) for r in rejects[unit]])
        return BuildSummary(
            self.options.out_dir,
            self.total,
            manifest["num_rejects"],
            {name: tally.summary() for name, tally in tallies.items()},
            time.monotonic() - started,
            manifest["id"],
        )

    def _run_pending(
        self, pending: list[tuple[WorkUnit, str]], tallies: dict[str, ConfigTally], rejects: dict[int, list[dict[str, Any]]], bar: Any
    ) -> None:
        for unit in dict.fromkeys(unit for unit, _ in pending):
            inputs = read_unit(self.source, unit, self.recipe.image_size, self.class_names)
            rejects[unit.index] = inputs.rejects
            for name in (n for u, n in pending if u == unit):
                records = self._run_unit(unit, name, self.models[name], inputs, tallies[name], bar)
                tallies[name].add(ConfigTally.counts_of(records))

    def _write_partial_manifest(self) -> None:
        """On an interrupt: a manifest of exactly the finished units, marked incomplete, so the dir
        says what it holds (``verify``, ``score`` and ``publish`` refuse it until it is resumed)."""
        out = self.options.out_dir
        tallies = {spec.config_name: ConfigTally() for spec in self.recipe.reference_models}
        rejects: dict[int, list[dict[str, Any]]] = {}
        for path in sorted((out / STATS_DIR).glob("*/*.json")):
            stats = json.loads(path.read_text())
            tallies[stats["config"]].add(stats["tally"])
            rejects[stats["unit"]] = stats["rejects"]
        manifest = self._manifest(tallies, [r for unit in sorted(rejects) for r in rejects[unit]])
        done = sum(len(config["shards"]) for config in manifest["configs"].values())
        manifest["complete"] = False
        manifest["progress"] = {"units_done": done, "units_total": len(self.units) * len(tallies)}
        with contextlib.suppress(OSError):  # best effort: the stats files are what resume relies on
            write_json_atomic(out / MANIFEST, manifest)
            for stale in ("README.md", "gallery.html", "preview.png"):
                (out / stale).unlink(missing_ok=True)

    def _check_same_weights(self, completed: dict[tuple[str, str], dict[str, Any]]) -> None:
        """A resumed build must use the weights its finished units were made with."""
        for (name, stem), stats in completed.items():
            if stats.get("reference_weights_sha256") != self.fingerprints[name]:
                raise OutputError(
                    f"reference model '{name}' has other weights than when {stem} was built "
                    f"(its checkpoint changed); pass --overwrite to rebuild everything"
                )

    def _progress(self) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=self.total * len(self.recipe.reference_models),
            unit="img",
            disable=not self.options.progress or None,
            dynamic_ncols=True,
        )

    def _run_unit(
        self, unit: WorkUnit, name: str, model: Any, inputs: UnitInput, tally: ConfigTally, bar: Any
    ) -> list[dict[str, Any]]:
        samples: list[OutputSample] = []
        for start in range(0, len(inputs.labels), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            samples.extend(self._perturb_chunk(name, model, inputs, chunk, tally))
            bar.update(len(inputs.labels[chunk]))
            done = tally.samples + len(samples)
            perturbed = tally.perturbed + sum(s.record["perturbed"] for s in samples)
            steps = tally.steps + sum(s.record["steps"] for s in samples if s.record["perturbed"])
            bar.set_postfix(config=name, perturbed=f"{perturbed / max(done, 1):.0%}", mean_steps=f"{steps / max(perturbed, 1):.1f}")
        bar.update(len(inputs.rejects))
        self._write_unit(unit, name, samples, inputs.rejects)
        return [s.record for s in samples]

    def _perturb_chunk(
        self, name: str, model: Any, inputs: UnitInput, chunk: slice, tally: ConfigTally
    ) -> Iterator[OutputSample]:
        import torch

        from builder.engine import perturb_batch

        device = self.options.device
        images = torch.from_numpy(inputs.pixels[chunk]).permute(0, 3, 1, 2).contiguous().to(device)
        labels = torch.from_numpy(inputs.labels[chunk]).to(device)
        mask = getattr(self.generator, "mask", None)
        result = perturb_batch(self.generator, self.oracle, model, images, labels, self.recipe.perturbation, mask=mask)
        finals = result.images.permute(0, 2, 3, 1).cpu().numpy()
        fmt = self.schema.image_format
        for row, original in enumerate(inputs.pixels[chunk]):
            position = chunk.start + row
            record = {
                "key": sample_key(inputs.indices[position]),
                "label": int(labels[row]),
                "class_name": self.class_names[int(labels[row])],
                "source_id": inputs.source_ids[position],
                "reference_model": name,
                "perturbed": bool(result.perturbed[row]),
                "steps": int(result.steps[row]),
                "stop_reason": result.stop_reason[row],
                "oracle_prob": round(float(result.oracle_prob[row]), 6),
                "pred_before": int(result.pred_before[row]),
                "loss_before": round(float(result.loss_before[row]), 6),
                "pred_after": int(result.pred_after[row]),
                "loss_after": round(float(result.loss_after[row]), 6),
            }
            original_bytes = encode_image(original, fmt) if self.schema.keep_originals else None
            yield OutputSample(record["key"], encode_image(finals[row], fmt), original_bytes, record)

    def _write_unit(self, unit: WorkUnit, name: str, samples: list[OutputSample], rejects: list[dict[str, Any]]) -> None:
        out = self.options.out_dir
        stem = unit.shard_stem(self.recipe.output.split)
        files = {}
        for fmt, writer in self.writers.items():
            path = inside(out, name, f"{stem}{writer.suffix}")
            with _output_errors(path):
                writer.write(path, samples, self.schema)
            files[fmt] = {"path": path.relative_to(out).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}
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
            "files": files,
            "rejects": rejects,
        }
        stats_path = inside(out, STATS_DIR, name, f"{stem}.json")
        with _output_errors(stats_path):
            write_json_atomic(stats_path, stats)

    def _finish(self, tallies: dict[str, ConfigTally], rejects: list[dict[str, Any]]) -> dict[str, Any]:
        from builder.card import write_card
        from builder.gallery import write_gallery
        from builder.preview import render_preview

        out = self.options.out_dir
        manifest = self._manifest(tallies, rejects)
        with _output_errors(out):
            write_bytes_atomic(out / REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
            render_preview(out / PREVIEW, {name: self._preview_rows(name) for name in tallies}, self.class_names)
            write_gallery(out, manifest)
            write_json_atomic(out / MANIFEST, manifest)
            write_card(out)
        return manifest

    def _preview_rows(self, name: str) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
        """The first samples of a config, read back from what was written."""
        import tarfile

        from builder.images import decode_image

        shard = self.options.out_dir / name / f"{self.units[0].shard_stem(self.recipe.output.split)}.tar"
        if not shard.is_file():
            return []
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                handle = tar.extractfile(member)
                if handle is not None and len(members) <= PREVIEW_SAMPLES:
                    members.setdefault(key, {})[extension] = handle.read()
        rows = []
        fmt = self.schema.image_format
        for key in sorted(members)[:PREVIEW_SAMPLES]:
            parts = members[key]
            if fmt in parts and "json" in parts:
                image = decode_image(parts[fmt])
                original = decode_image(parts[f"original.{fmt}"]) if f"original.{fmt}" in parts else image
                rows.append((original, image, json.loads(parts["json"])))
        return rows

    def _manifest(self, tallies: dict[str, ConfigTally], rejects: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.options.out_dir
        configs = {}
        for spec in self.recipe.reference_models:
            name = spec.config_name
            shards = [json.loads(p.read_text()) for p in sorted((out / STATS_DIR / name).glob("*.json"))]
            configs[name] = {
                "reference_model": spec.model_dump(mode="json"),
                "reference_weights_sha256": shards[0]["reference_weights_sha256"] if shards else None,
                **tallies[name].summary(),
                "shards": [{k: s[k] for k in ("unit", "start", "stop", "num_samples", "num_perturbed", "files")} for s in shards],
            }
        recipe = recipe_to_dict(self.recipe)
        body = {
            "format": MANIFEST_FORMAT,
            "tool": {"name": "fmr-builder", "version": __version__},
            "recipe": recipe,
            "recipe_sha256": sha256_json(recipe),
            "seed": self.recipe.seed,
            "device": self.options.device,
            "versions": package_versions(),
            "split": self.recipe.output.split,
            "class_names": list(self.class_names),
            "source_samples": self.total,
            "limit": self.options.limit,
            "num_rejects": len(rejects),
            "configs": configs,
        }
        body["id"] = sha256_json({"recipe": body["recipe_sha256"], "configs": configs})
        body["complete"] = True
        return body


def source_fingerprint(source: Any, config: Any, base_dir: Path) -> dict[str, Any]:
    """Where the source's files are and what it lists: its path-like settings resolved against
    the recipe's dir, its class names, its length and its first and last sample ids."""
    locations = {}
    for key, value in config.model_dump(mode="json").items():
        for text in [value] if isinstance(value, str) else (value if isinstance(value, list) else []):
            if isinstance(text, str) and key != "kind" and text and (base_dir / text).exists():
                locations[f"{key}:{text}"] = str((base_dir / text).resolve())
    count = len(source)
    ends = [next(iter(source.items(i, i + 1))).source_id for i in sorted({0, count - 1}) if count]
    return {"locations": locations, "class_names": list(source.class_names), "count": count, "ends": ends}


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("torch", "timm", "open_clip_torch", "taming-transformers-rom1504", "datasets", "webdataset", "numpy", "pillow", "pyarrow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_benchmark(loaded: LoadedRecipe, options: BuildOptions) -> BuildSummary:
    """Build the benchmark of ``loaded`` into ``options.out_dir``."""
    return Builder(loaded, options).run()
