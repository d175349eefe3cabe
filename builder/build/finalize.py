"""The finalizer (driver side): ``_stats/`` -> manifest, rejects, preview, gallery, card.

It reads only the stats files the unit runners wrote, whichever process or machine wrote
them, so the same stats give the same manifest. On an interrupt it writes a manifest of
exactly the finished units, marked incomplete.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builder import __version__
from builder.build.executors.base import installed_versions, package_difference
from builder.build.plan import BuildPlan
from builder.build.runner import output_errors
from builder.build.tally import ConfigTally
from builder.config import recipe_to_dict
from builder.errors import OutputError
from builder.fileio import json_bytes, sha256_json, write_bytes_atomic, write_json_atomic
from builder.manifest import CARD, GALLERY, MANIFEST, MANIFEST_FORMAT, PREVIEW, REJECTS, STATS_DIR
from builder.storage import Location

log = logging.getLogger(__name__)

PREVIEW_SAMPLES = 8


@dataclass(frozen=True)
class BuildSummary:
    out_dir: Location
    source_samples: int
    rejects: int
    configs: dict[str, dict[str, Any]]
    seconds: float
    manifest_id: str


@dataclass(frozen=True)
class UnitRecords:
    """What the finished units of a build say, read back from ``_stats/``."""

    tallies: dict[str, ConfigTally]
    shards: dict[str, list[dict[str, Any]]]
    rejects: list[dict[str, Any]]


def read_unit_stats(plan: BuildPlan) -> UnitRecords:
    storage = plan.storage
    tallies = {name: ConfigTally() for name in plan.config_names}
    shards: dict[str, list[dict[str, Any]]] = {name: [] for name in plan.config_names}
    rejects: dict[int, list[dict[str, Any]]] = {}
    for name in plan.config_names:
        for file in [f for f in storage.files_in(f"{STATS_DIR}/{name}") if f.endswith(".json")]:
            stats = json.loads(storage.read_bytes(f"{STATS_DIR}/{name}/{file}") or b"")
            tallies[name].add(stats["tally"])
            shards[name].append(stats)
            rejects[stats["unit"]] = stats["rejects"]
    return UnitRecords(tallies, shards, [r for unit in sorted(rejects) for r in rejects[unit]])


def manifest_of(plan: BuildPlan, records: UnitRecords) -> dict[str, Any]:
    configs = {}
    several = plan.recipe.generators is not None
    for config in plan.recipe.build_configs:
        name, shards = config.name, records.shards[config.name]
        configs[name] = {
            "reference_model": config.model.model_dump(mode="json"),
            # one-generator builds: the recipe's generator (their manifest is as it always was)
            **({"generator": {"name": config.generator_name, **config.generator.model_dump(mode="json")}} if several else {}),
            "reference_weights_sha256": shards[0]["reference_weights_sha256"] if shards else None,
            **records.tallies[name].summary(),
            "shards": [{k: s[k] for k in ("unit", "start", "stop", "num_samples", "num_perturbed", "files")} for s in shards],
        }
    recipe = recipe_to_dict(plan.recipe)
    body = {
        "format": MANIFEST_FORMAT,
        "tool": {"name": "fmr-builder", "version": __version__},
        "recipe": recipe,
        "recipe_sha256": sha256_json(recipe),
        "seed": plan.recipe.seed,
        "device": plan.options.device,
        "versions": package_versions(),
        # what the units were built on (check_one_kind_of_device: one kind for all), not in the id
        **({"built_with": built_with} if (built_with := units_built_with(records)) else {}),
        "split": plan.recipe.output.split,
        "class_names": list(plan.settings.class_names),
        "source_samples": plan.total,
        "limit": plan.options.limit,
        "num_rejects": len(records.rejects),
        "configs": configs,
    }
    body["id"] = sha256_json({"recipe": body["recipe_sha256"], "configs": configs})
    body["complete"] = True
    return body


def finalize(plan: BuildPlan, seconds: float) -> BuildSummary:
    """Write the manifest and everything rendered from the finished units; the summary.

    On an object store the final files are rendered in a local mirror of the output (preview
    and gallery read the shards) and then put one by one, the manifest last: a reader never
    finds a manifest whose card or gallery is missing or stale.
    """
    storage = plan.storage
    records = read_unit_stats(plan)
    check_one_kind_of_device(records)
    manifest = manifest_of(plan, records)
    local = storage.local_copy(plan.options.cache_dir)  # the dir itself, or a mirror of the store
    write_final_files(local, plan, records, manifest)
    if storage.local_dir is None:
        for name in (REJECTS, PREVIEW, GALLERY, CARD, MANIFEST):
            storage.put_file(local / name, name)
    return BuildSummary(plan.options.out_dir, plan.total, manifest["num_rejects"], {n: t.summary() for n, t in records.tallies.items()},
                        seconds, manifest["id"])


def write_final_files(out: Path, plan: BuildPlan, records: UnitRecords, manifest: dict[str, Any]) -> None:
    """Rejects, preview, gallery, manifest and card, written atomically into the local dir ``out``."""
    from builder.card import write_card
    from builder.gallery import write_gallery
    from builder.preview import render_preview

    with output_errors(out):
        write_bytes_atomic(out / REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records.rejects).encode())
        previews = {name: preview_rows(out, shards) for name, shards in records.shards.items()}
        render_preview(out / PREVIEW, previews, plan.settings.class_names)
        write_gallery(out, manifest)
        write_json_atomic(out / MANIFEST, manifest)
        write_card(out)


def check_one_kind_of_device(records: UnitRecords) -> None:
    """Units built on different kinds of device or torch versions need not give the same bytes:
    a benchmark is never stitched together from them."""
    kinds: dict[tuple[str, str], str] = {}
    for shards in records.shards.values():
        for stats in shards:
            built = stats.get("built_with")
            if isinstance(built, dict):
                kinds.setdefault((str(built.get("device")), str(built.get("torch"))), f"{stats['config']} unit {stats['unit']}")
    if len(kinds) > 1:
        shown = "; ".join(f"{where}: torch {torch} on {device}" for (device, torch), where in sorted(kinds.items()))
        raise OutputError(f"the finished units were built on different kinds of device ({shown}); "
                          "rebuild with --overwrite on one kind, or resume on the kind that built the first units")
    first: dict[str, Any] = {}
    for shards in records.shards.values():
        for stats in shards:
            packages = (stats.get("built_with") or {}).get("packages")
            difference = package_difference(first, packages) if isinstance(packages, dict) else ""
            if difference:
                raise OutputError(f"the finished units were built with other packages ({difference}, at {stats['config']} unit "
                                  f"{stats['unit']}); rebuild with --overwrite, or resume with the versions that built the first units")
            first = {**(packages if isinstance(packages, dict) else {}), **first}


def units_built_with(records: UnitRecords) -> dict[str, Any]:
    """The device kind and torch the finished units recorded (one for all: checked above), with
    the packages any of them recorded (units of 0.2.1 and before recorded none); {} if none did."""
    found: dict[str, Any] = {}
    packages: dict[str, Any] = {}
    for shards in records.shards.values():
        for stats in shards:
            built = stats.get("built_with")
            if isinstance(built, dict):
                found = found or built
                recorded = built.get("packages")
                packages.update(recorded if isinstance(recorded, dict) else {})
    return {**found, "packages": dict(sorted(packages.items()))} if found else {}


def write_partial_manifest(plan: BuildPlan) -> None:
    """On an interrupt: a manifest of exactly the finished units, marked incomplete, so the dir
    says what it holds (``verify``, ``score`` and ``publish`` refuse it until it is resumed)."""
    storage = plan.storage
    manifest = manifest_of(plan, read_unit_stats(plan))
    done = sum(len(config["shards"]) for config in manifest["configs"].values())
    manifest["complete"] = False
    manifest["progress"] = {"units_done": done, "units_total": len(plan.units) * len(plan.config_names)}
    with contextlib.suppress(OSError, OutputError):  # best effort: the stats files are what resume relies on
        storage.put_bytes(MANIFEST, json_bytes(manifest))
        storage.delete([CARD, GALLERY, PREVIEW])


def preview_rows(out: Path, shards: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """The first samples of a config's first shard, read back from what was written through the
    reader of a format that shard has."""
    from builder.benchmark import readable_format
    from builder.images import decode_image
    from builder.writers.base import RECORD_FIELDS, WRITERS

    if not shards:
        return []
    files = min(shards, key=lambda s: s["unit"])["files"]
    fmt = readable_format([files])
    if fmt is None:
        return []
    reader, path = WRITERS.get(fmt)(), out / files[fmt]["path"]
    records = reader.read_records(path, [name for name, _ in RECORD_FIELDS])[:PREVIEW_SAMPLES]
    rows = []
    for record, (image, original) in zip(records, reader.read_images(path, range(len(records))), strict=True):
        perturbed = decode_image(image)
        rows.append((decode_image(original) if original is not None else perturbed, perturbed, record))
    return rows


def package_versions() -> dict[str, str]:
    names = ("torch", "timm", "open_clip_torch", "taming-transformers-rom1504", "datasets", "webdataset", "numpy", "pillow", "pyarrow")
    installed = installed_versions(names)
    return {name: installed.get(name, "not installed") for name in names}
