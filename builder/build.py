"""Source -> engine -> writers, one work unit at a time; then manifest, card and preview.

Each (config, unit) shard is written atomically and recorded in ``_stats/`` before the next
starts, so a build stopped at any point leaves only complete shards behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from builder import __version__
from builder.components.base import ComponentContext
from builder.config import Recipe, recipe_to_dict
from builder.errors import OutputError
from builder.checkpoints import weights_fingerprint
from builder.fileio import sha256_file, sha256_json, write_bytes_atomic, write_json_atomic
from builder.images import encode_image
from builder.plan import WorkUnit, plan_units
from builder.recipes import LoadedRecipe
from builder.sources.base import SourceContext, check_label, open_source
from builder.sources.decode import SampleRejected, load_rgb
from builder.writers import WRITERS, OutputSample, ShardSchema

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "fmr-benchmark/1"
PREVIEW_SAMPLES = 8


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    device: str
    cache_dir: Path
    batch_size: Optional[int] = None
    limit: Optional[int] = None
    overwrite: bool = False
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
    shards: list[dict[str, Any]] = field(default_factory=list)
    preview: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = field(default_factory=list)

    def add(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            self.samples += 1
            self.perturbed += r["perturbed"]
            self.steps += r["steps"] if r["perturbed"] else 0
            self.correct_before += r["pred_before"] == r["label"]
            self.correct_after_perturbed += r["perturbed"] and r["pred_after"] == r["label"]
            self.correct_after += r["pred_after"] == r["label"]

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


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; give a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        ours = (out_dir / "manifest.json").is_file() or (out_dir / "_stats").is_dir()
        if not overwrite:
            raise OutputError(f"--out {out_dir} is not empty; pass --overwrite to replace it or pick a new dir")
        if not ours:
            raise OutputError(f"refusing to overwrite {out_dir}: it does not look like a benchmark dir")
        shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create --out {out_dir}: {error.strerror}") from None


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

    def run(self) -> BuildSummary:
        started = time.monotonic()
        prepare_output(self.options.out_dir, self.options.overwrite)
        self.load_components()
        tallies = {name: ConfigTally() for name in self.models}
        rejects: list[dict[str, Any]] = []
        with self._progress() as bar:
            for unit in self.units:
                inputs = read_unit(self.source, unit, self.recipe.image_size, self.class_names)
                rejects.extend(inputs.rejects)
                for name, model in self.models.items():
                    records = self._run_unit(unit, name, model, inputs, tallies[name], bar)
                    tallies[name].add(records)
        manifest = self._finish(tallies, rejects)
        return BuildSummary(
            self.options.out_dir,
            self.total,
            len(rejects),
            {name: tally.summary() for name, tally in tallies.items()},
            time.monotonic() - started,
            manifest["id"],
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
        result = perturb_batch(self.generator, self.oracle, model, images, labels, self.recipe.perturbation)
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
            if len(tally.preview) < PREVIEW_SAMPLES:
                tally.preview.append((original, finals[row], record))
            original_bytes = encode_image(original, fmt) if self.schema.keep_originals else None
            yield OutputSample(record["key"], encode_image(finals[row], fmt), original_bytes, record)

    def _write_unit(self, unit: WorkUnit, name: str, samples: list[OutputSample], rejects: list[dict[str, Any]]) -> None:
        out = self.options.out_dir
        stem = unit.shard_stem(self.recipe.output.split)
        files = {}
        for fmt, writer in self.writers.items():
            path = out / name / f"{stem}{writer.suffix}"
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
            "files": files,
            "rejects": rejects,
        }
        write_json_atomic(out / "_stats" / name / f"{stem}.json", stats)

    def _finish(self, tallies: dict[str, ConfigTally], rejects: list[dict[str, Any]]) -> dict[str, Any]:
        from builder.card import render_card
        from builder.preview import render_preview

        out = self.options.out_dir
        manifest = self._manifest(tallies, rejects)
        write_bytes_atomic(out / "rejects.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects).encode())
        render_preview(out / "preview.png", {n: t.preview for n, t in tallies.items()}, self.class_names)
        write_json_atomic(out / "manifest.json", manifest)
        write_bytes_atomic(out / "README.md", render_card(manifest, self.schema).encode("utf-8"))
        return manifest

    def _manifest(self, tallies: dict[str, ConfigTally], rejects: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.options.out_dir
        configs = {}
        for spec in self.recipe.reference_models:
            name = spec.config_name
            shards = [json.loads(p.read_text()) for p in sorted((out / "_stats" / name).glob("*.json"))]
            configs[name] = {
                "reference_model": spec.model_dump(mode="json"),
                "reference_weights_sha256": weights_fingerprint(self.models[name]),
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
        return body


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
