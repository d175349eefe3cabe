"""``build-benchmark verify``: is a built benchmark dir whole, and does it say what it holds?

Meant to run before a benchmark is published or after it was copied: every shard file
against the manifest's bytes and sha256, every record's key and label against the counts,
the class list and the other shards, the dataset card's ``configs`` against the files, and
the manifest's id against its content. With ``oracle=True`` the recipe's oracle re-judges
every perturbed image, which must all still get their label (the engine judged exactly the
uint8 pixels that were written). Problems are collected, not raised, so one run lists all
of them; only a missing or unreadable manifest stops early.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from builder.benchmark import readable_format
from builder.errors import BuilderError, first_line
from builder.fileio import sha256_file, sha256_json
from builder.manifest import (
    CARD,
    MANIFEST,
    MANIFEST_FORMAT,
    REJECTS,
    STATS_DIR,
    Manifest,
    ManifestConfig,
    ManifestError,
    ManifestFile,
    ManifestShard,
    generator_of,
    load_json_bounded,
    parse_json_bounded,
    parse_manifest,
)
from builder.safeyaml import parse_bounded
from builder.writers.base import ShardSchema, attributes_of

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1 << 20  # a sample's .json member; the build writes a few hundred bytes
MAX_REJECTS_BYTES = 1 << 30  # rejects.jsonl: a few hundred bytes per rejected sample
SHOWN_KEYS = 5  # keys listed in one failure line before "(+N more)"


class VerifyError(BuilderError):
    """DIR cannot be verified at all: missing, a file, not a benchmark dir, or no oracle."""


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    failures: tuple[str, ...]
    checked: dict[str, int]
    oracle_rates: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "ok": self.ok, "failures": list(self.failures), "checked": dict(self.checked),
                "oracle_rates": dict(self.oracle_rates)}


@dataclass(frozen=True)
class Record:
    """The columns of one sample that verify compares (values as read, not yet trusted)."""

    key: Any
    label: Any
    class_name: Any
    perturbed: Any


def _reason(error: BaseException) -> str:
    """The first line of an exception's message (its type when there is none)."""
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def few(keys: list[str]) -> str:
    """First keys of a list, for one-line messages."""
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


# ----------------------------------------------------------------------------- entry point


def verify_benchmark(
    root: Path | str,
    *,
    revision: Optional[str] = None,
    oracle: bool = False,
    device: str = "cpu",
    cache_dir: Optional[Path] = None,
    batch_size: Optional[int] = None,
    recipe: Optional[str] = None,
    trust_remote_code: bool = False,
    storage_options: Sequence[tuple[str, str]] = (),
) -> VerifyReport:
    """Check the benchmark dir ``root``, or the Hub dataset ``org/name`` at ``revision`` (what a
    consumer gets: it is downloaded to the HF cache first, so the sha256s checked are of the
    Hub's bytes); ``recipe`` (a file or bundled name) only sets the base dir of the oracle's
    relative paths for ``oracle=True``. An fsspec URL (``s3://bucket/prefix``) is mirrored to
    ``cache_dir`` first, so the sha256s checked are of the store's bytes."""
    root = locate_benchmark(root, revision, cache_dir, storage_options)
    require_benchmark_dir(root)
    raw, manifest, fatal = read_manifest(root)
    if manifest is None:
        return VerifyReport(root, (fatal,), {})
    judge = load_manifest_oracle(manifest, device=device, cache_dir=cache_dir, recipe=recipe, trust_remote_code=trust_remote_code) if oracle else None
    checker = Checker(root, raw, manifest)
    checker.run()
    rates: dict[str, float] = {}
    if judge is not None:
        size = batch_size or int(raw["recipe"].get("batch_size", 32))
        rates = checker.check_oracle(judge, device=device, batch_size=size)
    return VerifyReport(root, tuple(checker.failures), dict(checker.checked), rates)


def locate_benchmark(target: Path | str, revision: Optional[str] = None, cache_dir: Optional[Path] = None,
                     storage_options: Sequence[tuple[str, str]] = ()) -> Path:
    """A path that exists, or one that is not a Hub id, as is; a URL's local mirror; else the
    Hub snapshot of ``target``."""
    from builder.benchmark import hub_dataset_url, is_hub_id, pinned_revision
    from builder.paths import default_cache_dir
    from builder.storage import check_options_fit, is_url, local_copy

    hub = hub_dataset_url(str(target))
    check_options_fit(str(target), storage_options, on_the_hub=hub is not None)
    if hub is not None:
        return download_benchmark(hub[0], pinned_revision(str(target), hub[1], revision))
    if is_url(target):
        if revision is not None:
            raise VerifyError(f"verify {target}: --revision applies to a Hub dataset id (org/name), not a URL; drop it")
        return local_copy(target, cache_dir or default_cache_dir(), storage_options)
    path = Path(target)
    if path.exists() or not is_hub_id(str(target)):
        if revision is not None:
            raise VerifyError(f"verify {target}: --revision applies to a Hub dataset id (org/name), not a local dir; drop it")
        return path
    return download_benchmark(str(target), revision)


def download_benchmark(repo_id: str, revision: Optional[str] = None) -> Path:
    """The manifest at ``revision``, then, at that same commit, the card, the rejects, every file
    the manifest lists and the rest of its config dirs (files there it does not list are failures)."""
    from builder.benchmark import BenchmarkError, _download

    label = f"verify {repo_id} (not a local dir, so a Hub dataset id)"
    try:
        first = _download(repo_id, revision, [MANIFEST], label)
        if not (first / MANIFEST).is_file():
            raise VerifyError(f"verify {repo_id}: the dataset repo has no {MANIFEST} at revision {revision or 'main'}; "
                              f"it is not a benchmark published by 'build-benchmark publish'")
        _, manifest, _ = read_manifest(first)
        patterns = [MANIFEST, CARD, REJECTS]
        for name, config in (manifest.configs if manifest is not None else {}).items():
            patterns.append(f"{name}/*")
            patterns.extend(entry.path for shard in config.shards for entry in shard.files.values())
        root = _download(repo_id, first.name, list(dict.fromkeys(patterns)), label)  # the commit, not a moving branch
    except BenchmarkError as error:
        raise VerifyError(str(error)) from None
    log.info("verify: %s at revision %s is commit %s, downloaded to %s", repo_id, revision or "main", root.name, root)
    return root


def require_benchmark_dir(root: Path) -> None:
    """Bad DIR is a usage error, not a verify failure: nothing to compare against."""
    if not root.exists():
        raise VerifyError(f"verify {root}: no such directory; give a dir written by 'build-benchmark run'")
    if not root.is_dir():
        raise VerifyError(f"verify {root}: is a file; give the benchmark directory")
    markers = [root / MANIFEST, root / CARD, root / STATS_DIR]
    from builder.registry import WRITERS

    suffixes = {entry.factory.suffix for entry in WRITERS}
    if not any(p.exists() for p in markers) and not any(path.suffix in suffixes for path in root.glob("*/*")):
        raise VerifyError(f"verify {root}: not a benchmark dir (no {MANIFEST}, {CARD} or shards); give a dir written by 'build-benchmark run'")


def read_manifest(root: Path) -> tuple[dict[str, Any], Optional[Manifest], str]:
    """(raw JSON, parsed manifest or None, the fatal failure when None)."""
    path = root / MANIFEST
    if not path.is_file():
        return {}, None, f"{MANIFEST}: missing; rebuild with 'build-benchmark run' (its last step writes it)"
    try:
        raw = load_json_bounded(path, MANIFEST)
    except ManifestError as error:
        return {}, None, str(error)
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        return {}, None, f"{MANIFEST}: format is {found!r}, expected {MANIFEST_FORMAT!r}; rebuild with this version"
    if raw.get("complete") is False:
        progress = raw.get("progress") or {}
        return {}, None, (
            f"{MANIFEST}: the build was interrupted ({progress.get('units_done', '?')} of "
            f"{progress.get('units_total', '?')} work units done); resume it with the same 'build-benchmark run' command"
        )
    try:
        return raw, parse_manifest(raw, MANIFEST), ""
    except ManifestError as error:
        return {}, None, str(error)


# ----------------------------------------------------------------------------- shard readers


def front_matter(text: str) -> str:
    """The YAML between a card's leading '---' lines ('' if it has none)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return ""
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), len(lines))
    return "\n".join(lines[1:end])


# ----------------------------------------------------------------------------- the checks


class Checker:
    """Runs the offline checks over one manifest and collects one line per problem."""

    def __init__(self, root: Path, raw: dict[str, Any], manifest: Manifest) -> None:
        self.root, self.raw, self.manifest = root, raw, manifest
        self.failures: list[str] = []
        self.checked: Counter[str] = Counter()
        self.listed: set[str] = set()
        #: shard files whose bytes differ from the manifest's record (already reported)
        self.changed: set[str] = set()
        output = raw["recipe"].get("output", {})
        #: each config's shard schema: its generator decides whether it has an attributes column
        self.schemas = {name: ShardSchema(tuple(manifest.class_names), str(output.get("image_encoding", "png")),
                                          bool(output.get("keep_originals", True)), attributes_of(generator_of(raw, name)))
                        for name in manifest.configs}

    def fail(self, message: str) -> None:
        """Record one problem; library messages folded so each problem stays one line."""
        line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
        log.debug("verify: %s", line)
        self.failures.append(line)

    def run(self) -> None:
        self.check_identity()
        for name, config in self.manifest.configs.items():
            log.info("verifying config %s (%d shards)", name, len(config.shards))
            self.check_config(name, config)
        self.check_unlisted()
        self.check_card()
        self.check_rejects()

    def check_identity(self) -> None:
        """The id is what makes two benchmarks comparable: it must follow from the content."""
        recipe_sha = sha256_json(self.raw["recipe"])
        if recipe_sha != self.manifest.recipe_sha256:
            self.fail(f"{MANIFEST}: recipe_sha256 is {self.manifest.recipe_sha256}, but the recorded recipe hashes to {recipe_sha}; rebuild instead of editing the manifest")
        expected = sha256_json({"recipe": self.manifest.recipe_sha256, "configs": self.raw["configs"]})
        if expected != self.manifest.id:
            self.fail(f"{MANIFEST}: id is {self.manifest.id}, but its recipe and configs hash to {expected}; rebuild instead of editing the manifest")

    def check_config(self, name: str, config: ManifestConfig) -> None:
        self.checked["configs"] += 1
        shard_keys: list[tuple[str, list[str]]] = []
        for index, shard in enumerate(config.shards):
            if not shard.files:
                self.fail(f"{MANIFEST}: config '{name}' shard {index} lists no files (its {shard.num_samples} samples are nowhere); rebuild")
            shard_keys.append(self.check_shard(name, shard))
        self.check_duplicates(name, shard_keys)
        found = sum(len(set(keys)) for _, keys in shard_keys)
        self.checked["records"] += found
        if found != config.num_samples:
            self.fail(f"config '{name}': its shards hold {found} records, but {MANIFEST} counts num_samples {config.num_samples}; rebuild")
        if config.shards and readable_format([shard.files for shard in config.shards]) is None:
            self.fail(f"{MANIFEST}: config '{name}' has no output format that every shard is written in, so it cannot be read; rebuild")
        for what in ("num_samples", "num_perturbed"):
            total = sum(getattr(shard, what) for shard in config.shards)
            if getattr(config, what) != total:
                self.fail(f"{MANIFEST}: config '{name}' has {what} {getattr(config, what)}, but its shards add up to {total}")
        expected = self.manifest.source_samples - self.manifest.num_rejects
        if config.num_samples != expected:
            self.fail(f"{MANIFEST}: config '{name}' has num_samples {config.num_samples}, expected {expected} "
                      f"(source_samples {self.manifest.source_samples} - num_rejects {self.manifest.num_rejects})")

    def check_shard(self, name: str, shard: ManifestShard) -> tuple[str, list[str]]:
        """One shard's files; returns (shard name, keys found in any of its files)."""
        contents: dict[str, dict[str, Record]] = {}
        readable: dict[str, ManifestFile] = {}
        keys: list[str] = []
        for fmt, entry in shard.files.items():
            self.checked["files"] += 1
            records = self.check_file(name, fmt, entry)
            if records is None:
                continue
            self.check_records(entry.path, records, shard)
            contents[entry.path] = {str(r.key): r for r in records}
            readable[fmt] = entry
            keys.extend(str(r.key) for r in records)
        self.compare_formats(contents)
        self.check_contents(name, readable)
        stem = next(iter(shard.files.values())).path.rsplit(".", 1)[0] if shard.files else f"{name}/?"
        self.checked["shards"] += 1
        return stem, sorted(set(keys))

    def check_file(self, name: str, fmt: str, entry: ManifestFile) -> Optional[list[Record]]:
        """Bytes and sha256 as recorded, then its records (None when it cannot be read)."""
        relative = Path(entry.path)
        if relative.is_absolute() or ".." in relative.parts or relative.parts[:1] != (name,):
            self.fail(f"{MANIFEST}: config '{name}' lists {entry.path!r}, which is not inside its dir {name}/")
            return None
        self.listed.add(relative.as_posix())
        path = self.root / relative
        if not path.is_file():
            self.fail(f"{entry.path}: missing, but {MANIFEST} lists it ({fmt}); restore it or rebuild")
            return None
        size = path.stat().st_size
        if size != entry.bytes:
            self.changed.add(entry.path)
            self.fail(f"{entry.path}: {size} bytes, but {MANIFEST} records {entry.bytes}; the file changed since the build")
        digest = sha256_file(path)
        if digest != entry.sha256:
            self.changed.add(entry.path)
            self.fail(f"{entry.path}: sha256 is {digest}, but {MANIFEST} records {entry.sha256}; the file changed since the build")
        return self.read_records(path, entry.path, fmt, self.schemas[name])

    def read_records(self, path: Path, shown: str, fmt: str, schema: ShardSchema) -> Optional[list[Record]]:
        """The file's records through its format's reader, its structural problems reported."""
        from builder.registry import WRITERS

        if fmt not in WRITERS:
            self.fail(f"{MANIFEST}: {shown} has format {fmt!r}, expected one of {', '.join(WRITERS.names())}")
            return None
        try:
            rows, problems = WRITERS.get(fmt)().audit(path, schema)
        except Exception as error:  # noqa: BLE001 - a damaged file can make a format's reader raise anything
            self.fail(f"{shown}: not readable as {fmt} ({_reason(error)}); restore it or rebuild")
            return None
        for problem in problems[:SHOWN_KEYS]:
            self.fail(f"{shown}: {problem}")
        return [Record(row.get("key"), row.get("label"), row.get("class_name"), row.get("perturbed")) for row in rows]

    def check_records(self, shown: str, records: list[Record], shard: ManifestShard) -> None:
        perturbed = sum(r.perturbed is True for r in records)
        if len(records) != shard.num_samples:
            self.fail(f"{shown}: holds {len(records)} samples, but {MANIFEST} says num_samples {shard.num_samples}")
        if perturbed != shard.num_perturbed:
            self.fail(f"{shown}: holds {perturbed} perturbed samples, but {MANIFEST} says num_perturbed {shard.num_perturbed}")
        names = self.manifest.class_names

        def in_range(label: Any) -> bool:
            return isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names)

        outside = [r for r in records if not in_range(r.label)]
        if outside:
            self.fail(f"{shown}: label {outside[0].label!r} of key {outside[0].key} is outside 0..{len(names) - 1} "
                      f"(the {len(names)} class_names); {len(outside)} such sample(s): {few([str(r.key) for r in outside])}")
        misnamed = [r for r in records if in_range(r.label) and r.class_name != names[r.label]]
        if misnamed:
            first = misnamed[0]
            self.fail(f"{shown}: key {first.key} has class_name {first.class_name!r}, expected {names[first.label]!r} "
                      f"(label {first.label}); {len(misnamed)} such sample(s): {few([str(r.key) for r in misnamed])}")
        counts = Counter(str(r.key) for r in records)
        repeated = sorted(k for k, n in counts.items() if n > 1)
        if repeated:
            self.fail(f"{shown}: key(s) {few(repeated)} appear more than once in the file; keys must be unique")

    def compare_formats(self, contents: dict[str, dict[str, Record]]) -> None:
        """The Parquet and tar of a shard are two views of the same samples."""
        (first, base), *others = list(contents.items()) or [("", {})]
        for other, records in others:
            only_first, only_other = sorted(set(base) - set(records)), sorted(set(records) - set(base))
            if only_first or only_other:
                self.fail(f"{other}: its keys differ from {first}: only in {first}: {few(only_first) or 'none'}; "
                          f"only in {other}: {few(only_other) or 'none'}")
            differ = sorted(k for k in set(base) & set(records) if (base[k].label, base[k].perturbed) != (records[k].label, records[k].perturbed))
            if differ:
                key = differ[0]
                self.fail(f"{other}: key {key} has label {records[key].label!r}, perturbed {records[key].perturbed!r}, but {first} "
                          f"has {base[key].label!r}, {base[key].perturbed!r}; {len(differ)} such key(s): {few(differ)}")

    def check_contents(self, name: str, files: dict[str, ManifestFile]) -> None:
        """What the audited records do not show: whose shard a file is (one copied from another
        config keeps its reference_model), and that every format holds the same images (score
        and --oracle read one format, webdataset users the other)."""
        copies: dict[str, ShardCopy] = {}
        for fmt, entry in files.items():
            copy = self.read_copy(name, fmt, entry)
            if copy is not None:
                copies[entry.path] = copy
        listed = list(copies.items())
        for other, copy in listed[1:]:
            first, base = listed[0]
            differ = [key for key in sorted(set(base.digests) & set(copy.digests))
                      if None not in (base.digests[key], copy.digests[key]) and base.digests[key] != copy.digests[key]]
            differ = differing_pixels(base, copy, differ) if differ else []
            if differ:
                self.fail(f"{other}: the image(s) of key {differ[0]} differ from those in {first}; {len(differ)} such key(s): "
                          f"{few(differ)}; the formats must hold the same images: restore the shards or rebuild")

    def read_copy(self, name: str, fmt: str, entry: ManifestFile) -> Optional[ShardCopy]:
        """One file's reference_model column checked, and the sha256 of each sample's images
        (None where its format's audit already named them as no image); None when unreadable
        or changed since the build."""
        from builder.registry import WRITERS

        reader, path = WRITERS.get(fmt)(), self.root / entry.path
        try:
            records = reader.read_records(path, ["key", "reference_model"])
        except Exception:  # noqa: BLE001 - a damaged file can make a format's reader raise anything; reported by the audit
            return None
        expected = self.reference_name(name)
        wrong = [record for record in records if record.get("reference_model") != expected]
        if wrong:
            first = wrong[0]
            self.fail(f"{entry.path}: key {first.get('key')} has reference_model {_shown(first.get('reference_model'))}, but the file is a shard "
                      f"of config '{name}' (reference model '{expected}'); {len(wrong)} such sample(s): {few([str(r.get('key')) for r in wrong])}; "
                      "restore the config's own shards or rebuild")
        if entry.path in self.changed:  # its bytes are already named as changed: no more lines about them
            return None
        try:
            images = reader.read_images(path, range(len(records)))
        except Exception:  # noqa: BLE001 - as above: a sample lacking its image is named by the audit
            return None
        rows = {str(record.get("key")): row for row, record in enumerate(records)}
        digests = {key: image_digest(images[row], self.schemas[name]) for key, row in rows.items()}
        return ShardCopy(reader, path, rows, digests)

    def reference_name(self, name: str) -> str:
        """The reference_model the build records in config ``name``'s samples: the config's name,
        less its generator's in a several-generator build (those configs are '<model>-<generator>')."""
        generator = self.manifest.configs[name].generator
        return name.removesuffix(f"-{generator.name}") if generator is not None else name

    def check_duplicates(self, name: str, shard_keys: list[tuple[str, list[str]]]) -> None:
        """A key names one source sample: two shards of a config holding it means a sample twice."""
        where: dict[str, list[str]] = {}
        for stem, keys in shard_keys:
            for key in dict.fromkeys(keys):
                where.setdefault(key, []).append(stem)
        by_shards: dict[tuple[str, ...], list[str]] = {}
        for key, stems in where.items():
            if len(stems) > 1:
                by_shards.setdefault(tuple(stems), []).append(key)
        for shard_stems, keys in sorted(by_shards.items()):
            self.fail(f"config '{name}': key(s) {few(sorted(keys))} are in shards {' and '.join(shard_stems)}; "
                      "keys must be unique within a config")

    def check_unlisted(self) -> None:
        """Files a publish would upload that the manifest does not account for."""
        for name in self.manifest.configs:
            directory = self.root / name
            if not directory.is_dir():
                continue
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                relative = path.relative_to(self.root).as_posix()
                if relative not in self.listed:
                    self.fail(f"{relative}: in config dir {name}/ but not listed in {MANIFEST}; delete it or rebuild")
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and path.name not in self.manifest.configs and path.name != STATS_DIR and not path.name.startswith("."):
                self.fail(f"{path.name}/: a directory that is not a config of {MANIFEST} ({', '.join(self.manifest.configs)}); delete it or rebuild")

    def check_rejects(self) -> None:
        path = self.root / REJECTS
        if not path.is_file():
            self.fail(f"{REJECTS}: missing; {MANIFEST} records {self.manifest.num_rejects} rejected sample(s)")
            return
        if path.stat().st_size > MAX_REJECTS_BYTES:
            self.fail(f"{REJECTS}: {path.stat().st_size} bytes, more than a build writes ({MAX_REJECTS_BYTES}); restore it or rebuild")
            return
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        broken = [number for number, line in enumerate(lines, 1) if not _is_json_object(line)]
        if broken:
            self.fail(f"{REJECTS}: line(s) {few([str(n) for n in broken])} are not JSON objects in UTF-8; restore it or rebuild")
        count = len(lines)
        if count != self.manifest.num_rejects:
            self.fail(f"{REJECTS}: {count} line(s), but {MANIFEST} records num_rejects {self.manifest.num_rejects}")

    # ------------------------------------------------------------------------- the card

    def check_card(self) -> None:
        """The card's YAML is what the Hub and ``datasets.load_dataset`` read: it must parse, its
        ``configs`` must load exactly the manifest's Parquet shards, and its ``configs`` and
        ``dataset_info`` must say what the build writes (a key more, a class name swapped or a
        count changed gives users other rows, other labels or an error)."""
        from builder.card import has_hub_format

        header = self.card_header()
        if header is None:
            return
        expected = self.expected_header()
        if expected is not None:
            self.check_dataset_info(header.get("dataset_info"), expected.get("dataset_info"))
        entries = header.get("configs")
        if entries is None and not has_hub_format(self.raw):
            return  # no Parquet shards: nothing for load_dataset's configs to point at
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            self.fail(f"{CARD}: YAML 'configs' is {type(entries).__name__}, expected a list of mappings with config_name and data_files")
            return
        named: dict[str, tuple[int, dict[str, Any]]] = {}
        for index, entry in enumerate(entries):
            name = str(entry.get("config_name"))
            if name in named:
                self.fail(f"{CARD}: YAML configs[{index}] repeats config_name '{name}' of configs[{named[name][0]}]; "
                          f"each config is listed once: re-render the card with 'build-benchmark card {self.root}'")
            else:
                named[name] = (index, entry)
        for name in self.manifest.configs:
            if name not in named:
                self.fail(f"{CARD}: YAML 'configs' has no config_name '{name}' (a config of {MANIFEST}); re-render the card by rebuilding")
        written = {str(e["config_name"]): e for e in (expected or {}).get("configs", [])}
        for name, (index, entry) in named.items():
            if name not in self.manifest.configs:
                self.fail(f"{CARD}: YAML config_name '{name}' is not a config of {MANIFEST} ({', '.join(self.manifest.configs)})")
                continue
            if name in written:
                self.compare_header(f"configs[{index}]", _without_data_files(entry), _without_data_files(written[name]))
            self.check_card_config(name, entry.get("data_files"))
            self.checked["card_configs"] += 1

    def expected_header(self) -> Optional[dict[str, Any]]:
        """The header 'build-benchmark card' renders for this manifest (None when it cannot)."""
        from builder.card import card_header, schema_of

        manifest = self.manifest.model_dump(mode="json")  # as the card command reads it
        try:
            return card_header(manifest, schema_of(manifest))
        except (BuilderError, KeyError, TypeError, ValueError) as error:
            self.fail(f"{CARD}: cannot render the header {MANIFEST} implies ({_reason(error)}), so the card's configs are not compared; rebuild")
            return None

    def check_dataset_info(self, found: Any, expected: Any) -> None:
        """``datasets`` types the columns (ClassLabel names) and checks the split sizes by it."""
        if expected is None and found is not None:
            self.fail(f"{CARD}: YAML has dataset_info, but a card without Parquet configs has none (datasets would apply it to the tars); "
                      f"re-render the card with 'build-benchmark card {self.root}'")
        elif expected is not None:
            self.compare_header("dataset_info", _without_num_bytes(found), _without_num_bytes(expected))

    def compare_header(self, path: str, found: Any, expected: Any) -> None:
        """One failure naming the first key path where the card differs from what the build writes."""
        difference = first_difference(found, expected, path)
        if difference is not None:
            self.fail(f"{CARD}: YAML {difference}, unlike the header the build renders from {MANIFEST} (datasets.load_dataset "
                      f"reads it: other rows, labels or an error); re-render the card with 'build-benchmark card {self.root}'")

    def card_header(self) -> Optional[dict[str, Any]]:
        import yaml
        from huggingface_hub import metadata_load

        path = self.root / CARD
        if not path.is_file():
            self.fail(f"{CARD}: missing; it is the dataset card the Hub reads, rebuild to write it")
            return None
        try:
            parse_bounded(front_matter(path.read_text(encoding="utf-8")))  # a downloaded card: bounded first
            header = metadata_load(path)
        except (yaml.YAMLError, ValueError, TypeError, UnicodeDecodeError) as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 2}" if mark is not None else ""
            self.fail(f"{CARD}: the YAML front matter does not parse{where} ({first_line(error)}); fix it or rebuild")
            return None
        if header is None:
            self.fail(f"{CARD}: no YAML front matter (a '---' block at the top); rebuild to re-render the card")
        return header

    def check_card_config(self, name: str, data_files: Any) -> None:
        from datasets.data_files import sanitize_patterns

        from builder.card import HUB_FORMAT, config_extension

        listed = HUB_FORMAT if config_extension(self.raw) == HUB_FORMAT else "webdataset"  # a tar-only card lists its tars
        kind = "Parquet" if listed == HUB_FORMAT else "tar"
        expected = {f.path for s in self.manifest.configs[name].shards for fmt, f in s.files.items()
                    if fmt == listed and (self.root / f.path).is_file()}
        if not data_files:
            self.fail(f"{CARD}: config '{name}' has no data_files; expected e.g. [{{split: {self.manifest.split}, path: '{name}/{self.manifest.split}-*.parquet'}}]")
            return
        try:
            patterns = sanitize_patterns(data_files)
        except ValueError as error:
            self.fail(f"{CARD}: config '{name}' data_files is malformed ({first_line(error)})")
            return
        if set(patterns) != {self.manifest.split}:
            self.fail(f"{CARD}: config '{name}' data_files has split(s) {sorted(patterns)}, expected ['{self.manifest.split}'] (the manifest's split)")
        matched, complete = self.match_patterns(name, [p for values in patterns.values() for p in values])
        for path in sorted(matched - expected):
            self.fail(f"{CARD}: config '{name}' data_files also match {path}, which is not a {kind} shard of '{name}' in {MANIFEST}")
        missing = sorted(expected - matched)
        if missing and complete:
            self.fail(f"{CARD}: config '{name}' data_files miss {len(missing)} {kind} shard(s) of {MANIFEST}: {few(missing)}")

    def match_patterns(self, name: str, patterns: list[Any]) -> tuple[set[str], bool]:
        """Files the globs resolve to, as ``datasets`` resolves them; and whether all matched."""
        from datasets.data_files import resolve_pattern

        matched: set[str] = set()
        complete = True
        root = self.root.resolve()
        for pattern in patterns:
            problem = pattern_problem(pattern)
            if problem is not None:  # refused before anything is listed or fetched
                complete = False
                self.fail(f"{CARD}: config '{name}' data_files path {_shown(pattern)} {problem}; expected a glob relative to the "
                          f"benchmark dir such as '{name}/{self.manifest.split}-*.parquet'")
                continue
            try:
                found = resolve_pattern(str(pattern), str(root))
            except FileNotFoundError:
                complete = False
                self.fail(f"{CARD}: config '{name}' data_files path '{pattern}' matches no file; expected a glob of the "
                          f"config's Parquet shards such as '{name}/{self.manifest.split}-*.parquet'")
                continue
            for path in found:  # not resolve(): the files of a Hub snapshot are symlinks into its blob store
                absolute = Path(os.path.abspath(path))
                if absolute.is_relative_to(root):
                    matched.add(absolute.relative_to(root).as_posix())
                else:
                    self.fail(f"{CARD}: config '{name}' data_files path {_shown(pattern)} matches {_shown(path)}, outside the benchmark dir")
        return matched, complete

    # ------------------------------------------------------------------------- the oracle

    def check_oracle(self, oracle: Any, *, device: str, batch_size: int) -> dict[str, float]:
        """Share of perturbed images the oracle still gives their label, per config (must be 1)."""
        rates: dict[str, float] = {}
        built_on = self.raw.get("device")
        for name, config in self.manifest.configs.items():
            rejected: list[str] = []
            undecodable: list[str] = []
            count = 0
            for keys, labels, pixels in perturbed_batches(self.root, config, batch_size, undecodable, len(self.manifest.class_names)):
                accepted = judge_uint8(oracle, pixels, labels, device)
                rejected += [key for key, ok in zip(keys, accepted, strict=False) if not ok]
                count += len(keys)
            if undecodable:
                self.fail(f"oracle: config '{name}': {len(undecodable)} perturbed image(s) do not decode, not judged: {few(sorted(undecodable))}")
            self.checked["oracle_images"] += count
            rates[name] = (count - len(rejected)) / count if count else 1.0
            log.info("oracle on config %s: %d of %d perturbed images keep their label", name, count - len(rejected), count)
            if rejected:
                hint = f" (built on {built_on}, verified on {device}: try --device {built_on})" if built_on and built_on != device else ""
                self.fail(f"oracle: config '{name}': {len(rejected)} of {count} perturbed images ({rates[name]:.1%} valid, expected 100%) "
                          f"no longer get their label: {few(sorted(rejected))}{hint}")
        return rates


def _is_json_object(line: bytes) -> bool:
    """Whether one line of rejects.jsonl is a JSON object, as the build writes each rejection."""
    try:
        return isinstance(parse_json_bounded(line, REJECTS), dict)
    except ManifestError:
        return False


@dataclass(frozen=True)
class ShardCopy:
    """One format's copy of a shard: its reader, its file, each key's row and image digests."""

    reader: Any
    path: Path
    rows: dict[str, int]
    digests: dict[str, Optional[tuple[str, ...]]]


def image_digest(pair: tuple[bytes, Optional[bytes]], schema: ShardSchema) -> Optional[tuple[str, ...]]:
    """sha256 of a sample's image (and original, when the build keeps them); None when one is
    missing or no image of the schema's encoding by its signature (the format's audit names those)."""
    import hashlib

    from builder.images import SIGNATURE_BYTES, image_problem

    kept = pair if schema.keep_originals else pair[:1]
    if any(not data or image_problem(data[:SIGNATURE_BYTES], schema.image_format) for data in kept):
        return None
    return tuple(hashlib.sha256(data).hexdigest() for data in kept if data is not None)


def differing_pixels(first: ShardCopy, other: ShardCopy, keys: list[str]) -> list[str]:
    """The ``keys`` whose images differ once decoded (the writers store the same encoded bytes
    in every format, but a format may encode its own way); an image that does not decode differs."""
    try:
        mine = first.reader.read_images(first.path, [first.rows[key] for key in keys])
        theirs = other.reader.read_images(other.path, [other.rows[key] for key in keys])
    except Exception:  # noqa: BLE001 - both were read a moment ago: a file that changed since differs
        return keys
    return [key for key, a, b in zip(keys, mine, theirs, strict=True) if not all(map(_same_pixels, a, b))]


def _same_pixels(first: Optional[bytes], other: Optional[bytes]) -> bool:
    import numpy as np

    from builder.images import decode_image

    if first is None or other is None:
        return first is other
    try:
        return bool(np.array_equal(decode_image(first), decode_image(other)))
    except (OSError, ValueError, SyntaxError, EOFError):  # what Pillow raises on damaged bytes
        return False


def pattern_problem(pattern: Any) -> Optional[str]:
    """Why a card's data_files pattern may lead outside the benchmark dir (None when it cannot):
    ``datasets`` resolves an absolute path, a URL or an fsspec chain as given, and '..' upwards;
    a card comes with a download, so verify never lists or fetches what it names."""
    text = str(pattern)
    if ":" in text or "\\" in text:
        return "is a URL or names another file system ('://', '::', a scheme or a backslash)"
    if text.startswith(("/", "~")):
        return "is an absolute path"
    if ".." in text.split("/"):
        return "has a '..' component, leading outside the benchmark dir"
    return None


def _without_data_files(entry: dict[str, Any]) -> dict[str, Any]:
    """A card's config entry less its data_files, which are checked by what they match instead."""
    return {key: value for key, value in entry.items() if key != "data_files"}


def _without_num_bytes(infos: Any) -> Any:
    """dataset_info less each split's num_bytes: ``datasets`` checks num_examples only, and the
    Parquet bytes it counts are already checked against the manifest's (sha256 and bytes)."""
    if not isinstance(infos, list):
        return infos
    return [{**info, "splits": [{k: v for k, v in split.items() if k != "num_bytes"} if isinstance(split, dict) else split
                                for split in info["splits"]]}
            if isinstance(info, dict) and isinstance(info.get("splits"), list) else info for info in infos]


def _shown(value: Any) -> str:
    """A YAML value for a one-line message, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def first_difference(found: Any, expected: Any, path: str) -> Optional[str]:
    """Where ``found`` (a card's YAML) first differs from ``expected`` (what the build writes),
    as words naming the key path; None when they are the same. Types count: 1 is not True."""
    if isinstance(expected, dict):
        if not isinstance(found, dict):
            return f"{path} is {_shown(found)}, expected a mapping"
        extra = next((key for key in found if key not in expected), None)
        if extra is not None:
            return f"{path}.{extra} is {_shown(found[extra])}, a key the build does not write"
        for key, value in expected.items():
            if key not in found:
                return f"{path}.{key} is missing, expected {_shown(value)}"
            difference = first_difference(found[key], value, f"{path}.{key}")
            if difference is not None:
                return difference
        return None
    if isinstance(expected, list):
        if not isinstance(found, list) or len(found) != len(expected):
            return f"{path} is {_shown(found)}, expected a list of {len(expected)}"
        differences = (first_difference(item, want, f"{path}[{index}]") for index, (item, want) in enumerate(zip(found, expected, strict=True)))
        return next((difference for difference in differences if difference is not None), None)
    if type(found) is not type(expected) or found != expected:
        return f"{path} is {_shown(found)}, expected {_shown(expected)}"
    return None


# ----------------------------------------------------------------------------- oracle helpers


def perturbed_batches(root: Path, config: ManifestConfig, batch_size: int, undecodable: list[str],
                      num_classes: int) -> Iterator[tuple[list[str], list[int], list[Any]]]:
    """(keys, labels, uint8 HWC images) of the perturbed samples, ``batch_size`` at a time; the
    keys of images that do not decode go to ``undecodable`` instead."""
    from builder.images import decode_image

    keys: list[str] = []
    labels: list[int] = []
    pixels: list[Any] = []
    for shard in config.shards:
        for key, label, data in perturbed_images(root, shard, num_classes):
            try:
                decoded = decode_image(data)
            except (OSError, ValueError, SyntaxError, EOFError):  # what Pillow raises on damaged bytes
                undecodable.append(key)
                continue
            keys.append(key)
            labels.append(label)
            pixels.append(decoded)
            if len(keys) == batch_size:
                yield keys, labels, pixels
                keys, labels, pixels = [], [], []
    if keys:
        yield keys, labels, pixels


def perturbed_images(root: Path, shard: ManifestShard, num_classes: int) -> Iterator[tuple[str, int, bytes]]:
    """(key, label, encoded image) of the shard's perturbed samples, through the reader of the
    format it is read from; unreadable files and labels outside the classes were already
    reported (by the offline checks), so they are skipped here."""
    from builder.benchmark import readable_format
    from builder.registry import WRITERS

    fmt = readable_format([shard.files])
    if fmt is None:
        return
    reader = WRITERS.get(fmt)()
    path = root / shard.files[fmt].path
    try:
        records = reader.read_records(path, ["key", "label", "perturbed"])
        rows = [row for row, record in enumerate(records) if record["perturbed"] is True and _is_label(record["label"], num_classes)]
        images = reader.read_images(path, rows)
    except Exception:  # noqa: BLE001 - a damaged file can make a format's reader raise anything; reported by the checks
        return
    for row, (image, _) in zip(rows, images, strict=True):
        yield str(records[row]["key"]), int(records[row]["label"]), image


def _is_label(value: Any, num_classes: int) -> bool:
    """Whether ``value`` is a class index the oracle can be asked about (0..num_classes-1)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < num_classes


def judge_uint8(oracle: Any, pixels: list[Any], labels: list[int], device: str) -> list[bool]:
    """The oracle's verdict on uint8 HWC images, laid out as the engine gives them (NCHW, [0, 1])."""
    import numpy as np
    import torch

    from builder.images import to_nchw

    images = to_nchw(np.stack(pixels)).to(device).float() / 255
    targets = torch.as_tensor(labels, dtype=torch.long, device=device)
    accepted, _ = oracle.judge(images, targets)
    return [bool(ok) for ok in accepted.cpu().tolist()]


def recipe_base_dir(manifest: Manifest, recipe: Optional[str], cache_dir: Optional[Path] = None) -> tuple[Path, bool]:
    """Relative paths of the recorded recipe resolve against the dir of the recipe file it was
    built from: ``--recipe``, else a bundled recipe of the same name, else the current dir.
    Also whether that recipe (the user's own, or bundled) has exactly the recorded oracle."""
    from builder.recipes import bundled_recipes, load_recipe
    from builder.trust import downloaded_root_of, downloaded_roots

    recorded = manifest.recipe.as_recorded()["oracle"]
    if recipe is not None:
        loaded = load_recipe(recipe)
        # a recipe shipped inside downloaded data (beside the benchmark, say) vouches for nothing
        mine = downloaded_root_of(Path(loaded.origin), downloaded_roots(cache_dir)) is None
        same = mine and loaded.recipe.oracle.model_dump(mode="json") == recorded
        if not same:
            log.warning("the oracle of %s differs from the one recorded in the manifest; verifying with the recorded one", loaded.origin)
        return loaded.base_dir, same
    bundled = bundled_recipes().get(manifest.recipe.name)
    if bundled is None:
        return Path.cwd(), False
    loaded = load_recipe(str(bundled))
    return loaded.base_dir, loaded.recipe.oracle.model_dump(mode="json") == recorded


def load_manifest_oracle(manifest: Manifest, *, device: str, cache_dir: Optional[Path], recipe: Optional[str],
                         trust_remote_code: bool = False) -> Any:
    """The oracle recorded in the manifest, from existing weights only (never trained here);
    the manifest is data, so an oracle whose models would run code needs ``trust_remote_code``."""
    from builder.components.base import ComponentContext, prompt_template_of, seeded
    from builder.components.oracles import load_oracle
    from builder.config import parse_recipe
    from builder.engine import judging_in
    from builder.errors import ComponentError, RecipeError
    from builder.paths import default_cache_dir

    base_dir, vouched = recipe_base_dir(manifest, recipe, cache_dir)
    try:
        # the license does not judge anything: one recorded before licenses were checked still verifies
        parsed = parse_recipe({**manifest.recipe.as_recorded(), "license": "other"})
    except RecipeError as error:
        raise VerifyError(f"--oracle: the recipe recorded in {MANIFEST} does not parse with this version ({error})") from None
    from builder.trust import UntrustedCodeError, downloaded_roots, model_specs, require_trusted, require_trusted_file

    # the recorded oracle is data; the same oracle in the user's own (or a bundled) recipe is theirs
    try:
        require_trusted(model_specs(parsed.oracle), f"the oracle recorded in {MANIFEST}", trust_remote_code or vouched)
    except UntrustedCodeError as error:  # the user's own recipe with this very oracle vouches for it
        raise UntrustedCodeError(f"{error}, or --recipe with your own recipe that has this oracle") from None
    for spec in model_specs(parsed.oracle):  # a vouched py: file still may not lie inside downloaded data
        require_trusted_file(spec, base_dir, downloaded_roots(cache_dir), trust_remote_code)
    context = ComponentContext(device, cache_dir or default_cache_dir(), base_dir, tuple(manifest.class_names),
                               parsed.image_size, parsed.source, parsed.seed, prompt_template_of(parsed.oracle))
    hint = f"relative paths resolve against {base_dir}; pass --recipe with the recipe file the benchmark was built from"
    untrained = next(untrained_weights(parsed.oracle, context), None)
    if untrained is not None:
        raise VerifyError(f"--oracle: the oracle's weights {untrained} do not exist (a build would train them; verify does not); {hint}")
    try:
        with seeded(parsed.seed, "oracle"):  # built as the build built it
            # judged as the build judged: in the recorded precision
            return judging_in(parsed.perturbation.precision, load_oracle(parsed.oracle, context))
    except ComponentError as error:
        raise VerifyError(f"--oracle: cannot load the oracle: {error}; {hint}") from None


def untrained_weights(config: Any, context: Any) -> Iterator[Path]:
    """Weights a build trains on first use and that are not there: loading would train them,
    and an oracle trained now is not the one that judged the benchmark."""
    from builder.preflight import missing_weights

    return (path for _, path in missing_weights([config], context))


# ----------------------------------------------------------------------------- report text


def format_report(report: VerifyReport) -> str:
    """One summary line when all is well, else a count then one line per problem."""
    if not report.ok:
        return "\n".join([f"verify: {len(report.failures)} problem(s) in {report.root}", *report.failures])
    checked = report.checked
    lines = [
        f"verify: {report.root} is consistent: {checked.get('configs', 0)} config(s), {checked.get('shards', 0)} shard(s), "
        f"{checked.get('files', 0)} shard file(s) (bytes, sha256), {checked.get('records', 0)} records (keys, labels), "
        f"{checked.get('card_configs', 0)} card config(s) (YAML, data_files), manifest id recomputed"
    ]
    for name, rate in report.oracle_rates.items():
        lines.append(f"oracle: config '{name}': {rate:.1%} of the perturbed images keep their label")
    if report.oracle_rates:
        lines[-1] += f" ({checked.get('oracle_images', 0)} image(s) judged in all)"
    return "\n".join(lines)
