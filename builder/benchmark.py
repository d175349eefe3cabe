"""Reading a built benchmark back: a local dir or a Hub dataset repo, through its manifest."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from builder.errors import BuilderError, first_line
from builder.manifest import MANIFEST, load_json_bounded, parse_manifest
from builder.registry import WRITERS, unknown_name_message
from builder.writers.base import ShardWriter

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SCORE_FILES = ("manifest.json", "README.md")  # what scoring reads of a Hub benchmark, besides the shards of one format
#: output formats read back in this order of preference (Parquet reads only the columns asked for)
READ_ORDER = ("parquet", "webdataset")


class BenchmarkError(BuilderError):
    """A benchmark cannot be found or read."""


@dataclass(frozen=True)
class Benchmark:
    location: str
    root: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def recorded_location(self) -> str:
        """How a result file names this benchmark: a local dir as an absolute path (``report``,
        run from another folder, finds it), a Hub id or a URL as given."""
        local = self.root == Path(self.location).expanduser()
        return str(self.root.resolve()) if local else self.location

    @property
    def configs(self) -> list[str]:
        return list(self.manifest["configs"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    def config(self, name: Optional[str]) -> str:
        if name is None:
            return self.configs[0]
        if name not in self.manifest["configs"]:
            raise BenchmarkError(unknown_name_message(f"config of {self.location}", name, self.configs))
        return name

    def shards(self, config: str) -> tuple[ShardWriter, list[Path]]:
        """The reader of a format every shard of ``config`` has, and those shard files."""
        reader, files = shard_reader(self.root, self.manifest["configs"][config], self.location)
        if reader is None:
            raise BenchmarkError(f"{self.location}: config '{config}' has no shards in a format this tool reads ({', '.join(WRITERS.names())})")
        return reader, files

    def has_originals(self) -> bool:
        return bool(self.manifest["recipe"]["output"].get("keep_originals", True))

    def read_columns(self, config: str, columns: list[str]) -> Iterator[dict[str, list[Any]]]:
        """One dict of column lists per shard, in shard and key order, through the format's reader."""
        reader, files = self.shards(config)
        for path in files:
            with reading_shard(path):
                rows = reader.read_records(path, columns)
            yield {name: [row[name] for row in rows] for name in columns}


@contextlib.contextmanager
def reading_shard(path: Path, failure: str = "cannot be read") -> Iterator[None]:
    """A shard that a reader cannot read (cut short, overwritten, not the format its name says)
    or whose images do not decode, as one line naming it (``failure`` says which); its bytes were
    never checked by the reader's caller (verify does)."""
    try:
        yield
    except BuilderError:
        raise
    except Exception as error:  # noqa: BLE001 - pyarrow's, tarfile's, PIL's and json's own errors
        raise BenchmarkError(f"{path.name}: {failure} ({first_line(error, typed=True)}); the benchmark is damaged: "
                             "run 'build-benchmark verify' on it, then download or build it again") from None


def readable_format(shard_formats: Sequence[Iterable[str]]) -> Optional[str]:
    """The output format to read shards back from, given the formats each shard was written in:
    the first of READ_ORDER, else of the registered formats, that every shard has (None: none)."""
    if not shard_formats:
        return None
    have = [set(formats) for formats in shard_formats]
    candidates = [*READ_ORDER, *sorted(set(WRITERS.names()) - set(READ_ORDER))]
    return next((fmt for fmt in candidates if fmt in WRITERS and all(fmt in formats for formats in have)), None)


def shard_reader(root: Path, config: dict[str, Any], location: str) -> tuple[Optional[ShardWriter], list[Path]]:
    """The reader of :func:`readable_format` and the config's shard files in it ((None, []) when
    no format is readable); a listed file that is missing is an error."""
    fmt = readable_format([shard["files"] for shard in config["shards"]])
    if fmt is None:
        return None, []
    paths = [root / shard["files"][fmt]["path"] for shard in config["shards"]]
    missing = next((path for path in paths if not path.is_file()), None)
    if missing is not None:
        raise BenchmarkError(f"{location}: shard {missing} is listed in manifest.json but missing; rebuild or resume the build")
    reader: ShardWriter = WRITERS.get(fmt)()
    return reader, paths


def open_benchmark(location: str | Path, revision: Optional[str] = None, *, cache_dir: Optional[Path] = None,
                   storage_options: Sequence[tuple[str, str]] = ()) -> Benchmark:
    """A benchmark dir, ``org/name`` on the Hub at ``revision`` (manifest and Parquet shards,
    via the HF cache), or an fsspec URL such as ``s3://bucket/prefix`` (mirrored to ``cache_dir``,
    only what changed since the last mirror)."""
    from builder.storage import check_options_fit, is_url, local_copy, local_path

    text = local_path(str(location))
    hub = hub_dataset_url(text)
    check_options_fit(text, storage_options, on_the_hub=hub is not None)
    if hub is not None:
        return _download_benchmark(hub[0], pinned_revision(text, hub[1], revision))
    if is_url(text):
        from builder.paths import default_cache_dir

        root = local_copy(text, cache_dir or default_cache_dir(), storage_options)
        return Benchmark(text, root, read_manifest(root, text))
    path = Path(text).expanduser()
    if path.is_dir():
        return Benchmark(text, path, read_manifest(path, text))
    if path.exists():
        raise BenchmarkError(f"--benchmark {text} is a file; give the benchmark directory")
    if is_hub_id(text):
        return _download_benchmark(text, revision)
    raise BenchmarkError(f"--benchmark {text}: no such directory, and not a Hub dataset id (org/name)")


def _download_benchmark(repo_id: str, revision: Optional[str]) -> Benchmark:
    """The manifest and card, then, at that same commit, the shards of the format each config
    is read from (not every format: a tar copy of Parquet shards is not fetched to score)."""
    first = _download(repo_id, revision)
    manifest = read_manifest(first, repo_id)
    wanted = list(SCORE_FILES)
    listed: list[dict[str, Any]] = []
    for config in manifest["configs"].values():
        fmt = readable_format([shard["files"] for shard in config["shards"]])
        listed += [shard["files"][fmt] for shard in config["shards"]] if fmt else []
    root = _download(repo_id, first.name, [*wanted, *(entry["path"] for entry in listed)])  # the commit, not a moving branch
    for entry in listed:
        _check_downloaded(root, entry, repo_id)
    return Benchmark(repo_id, root, manifest)


def _check_downloaded(root: Path, entry: dict[str, Any], repo_id: str) -> None:
    """A shard downloaded from the Hub is the file its manifest lists: a repo can hold another
    build's shard under the same name (an interrupted publish), and it was scored under this
    manifest's id. The HF cache names an LFS file's blob by its sha256: compared without reading
    it; any other file is hashed."""
    from builder.fileio import sha256_file

    path = root / entry["path"]
    blob = path.resolve()
    size = blob.stat().st_size
    digest = blob.name if blob.parent.name == "blobs" and len(blob.name) == 64 and size == entry["bytes"] else sha256_file(blob)
    if size != entry["bytes"] or digest != entry["sha256"]:
        raise BenchmarkError(f"--benchmark {repo_id}: {entry['path']} on the Hub is not the file its manifest.json lists "
                             f"({size} bytes, sha256 {digest[:12]}, listed {entry['bytes']} bytes, {entry['sha256'][:12]}): "
                             "the repo mixes two builds (an interrupted publish?); publish the benchmark again, or pass "
                             "--revision of a commit that holds one build")


#: how huggingface_hub's fsspec URLs name a dataset repo
HUB_DATASET_URL = "hf://datasets/"


def hub_dataset_url(text: str) -> Optional[tuple[str, Optional[str]]]:
    """``hf://datasets/org/name[@revision]``, huggingface_hub's fsspec form of a dataset repo, as
    (repo id, revision): read like ``org/name`` (the manifest first, then only the shards a
    reader needs, at one commit), not mirrored whole. None for anything else."""
    from urllib.parse import unquote

    if not text.startswith(HUB_DATASET_URL):
        return None
    parts = text[len(HUB_DATASET_URL):].strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise BenchmarkError(f"{text}: a benchmark on the Hub is a whole dataset repo: hf://datasets/org/name[@revision]")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", unquote(revision) or None


def pinned_revision(text: str, in_url: Optional[str], given: Optional[str]) -> Optional[str]:
    """The revision of ``hf://datasets/org/name@rev`` or of ``--revision``; both, when they differ, is an error."""
    if in_url is not None and given is not None and in_url != given:
        raise BenchmarkError(f"{text} names revision '{in_url}' and --revision says '{given}'; give one")
    return in_url or given


def is_hub_id(text: str) -> bool:
    """Whether ``text`` reads as a Hub dataset id ``org/name`` (a path such as ``./x`` or ``/x`` does not)."""
    return bool(HUB_ID.match(text)) and not text.startswith((".", "/"))


def read_manifest(root: Path, location: str | None = None) -> dict[str, Any]:
    """The manifest of a finished benchmark dir (``location`` names it in errors), checked
    against :class:`builder.manifest.Manifest`; a one-line error for anything else: no dir, no
    or unreadable manifest, another format, a path leading outside, an interrupted build."""
    location = location or str(root)
    manifest = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise BenchmarkError(f"{location} is not a directory; give a benchmark dir written by 'build-benchmark run'")
    if not manifest.is_file():
        raise BenchmarkError(f"{location} is not a built benchmark: it has no manifest.json; give a directory written by 'build-benchmark run'")
    payload = load_json_bounded(manifest, str(manifest))
    if isinstance(payload, dict) and payload.get("complete") is False:
        raise BenchmarkError(f"{location}: the build was interrupted and is incomplete; resume it with the same 'build-benchmark run' command")
    # the checked form: every field readers use is there (defaults filled in), extra keys kept
    return parse_manifest(payload, str(manifest)).model_dump(mode="json")


def _download(repo_id: str, revision: Optional[str] = None, allow_patterns: Sequence[str] = SCORE_FILES,
              label: Optional[str] = None) -> Path:
    """The snapshot dir of ``repo_id`` at ``revision`` holding the files matching ``allow_patterns``.

    Through the HF cache: a second call (after an interruption, say) fetches only what is
    missing. ``label`` starts the one-line error (default ``--benchmark <repo_id>``).
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=list(allow_patterns)))
    except Exception as error:  # noqa: BLE001 - any hub/network failure becomes one line
        raise BenchmarkError(hub_failure(label or f"--benchmark {repo_id}", repo_id, revision, error)) from None


def hub_failure(label: str, repo_id: str, revision: Optional[str], error: Exception) -> str:
    """One line for a failed download: what went wrong and what to do (never the token)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = type(error).__name__
    if isinstance(error, GatedRepoError):
        return f"{label}: the dataset repo is gated and this token has no access ({name}); accept its conditions on the Hub"
    if isinstance(error, RepositoryNotFoundError):
        return (f"{label}: no dataset repo {repo_id} on the Hub, or it is private and no valid token was given "
                f"({name}); check the id, or set HF_TOKEN (or run 'hf auth login')")
    if isinstance(error, RevisionNotFoundError):
        return f"{label}: the dataset repo has no revision '{revision}' ({name}); give an existing branch, tag or commit"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return f"{label}: the Hub refused the token (HTTP {status}); set HF_TOKEN to a valid token with read access"
    if isinstance(error, HfHubHTTPError) and status:
        return (f"{label}: the Hub answered HTTP {status} while downloading ({name}); run the same command again, "
                f"the files already downloaded stay in the HF cache")
    return (f"{label}: cannot reach the Hub and it is not in the HF cache "
            f"({name}); download it where there is network, or pass a local dir")
