"""``build-benchmark publish``: put a verified benchmark dir into a Hub dataset repo, atomically and resumably.

What goes up is what a consumer needs (the manifest's shards, ``manifest.json``, the card,
``preview.png``, ``gallery.html``, ``rejects.jsonl``, ``leaderboard.json``), never ``_stats/``
(build state) nor dot or temp files. We first ask the Hub which paths it already holds with which
content (sha256 of LFS files, git blob id of regular ones): equal files are not sent again.
Then every changed LFS file is uploaded, in batches of bounded size, with
``HfApi.preupload_lfs_files``: an interruption costs at most one batch, and a re-run does not
send again what the Hub's storage already holds (the LFS batch API skips those objects). The
repo itself changes only in the last step, ONE commit that adds every changed file (shards,
manifest, extras, card; small files inline) and deletes what an earlier build left that this
one lacks (shards directly in any top-level dir named like a config, and the tool's own top-level
files such as an old ``leaderboard.json``); a user's other files stay. So a reader sees build A
or build B, never shards of one under the other's manifest or card. (``upload_folder`` of
huggingface_hub 2.4.0 resumes only through hf_xet, and it would not delete stale files.)

``--private`` creates a new repo private; an existing repo keeps its visibility, so publishing
with ``--private`` into a public one is refused before any upload. The card is re-rendered for
the repo and written into the dir, except where the dir is not the build's own (a Hugging Face
cache snapshot, a linked card, a read-only dir): it is then sent from memory and the dir is left
as it is. A card linking ``preview.png`` or ``gallery.html`` that the dir lacks is refused.

The token comes from huggingface_hub (``HF_TOKEN`` or the login cache). It is handed to the
library only: never logged, echoed, nor written anywhere (error texts are scrubbed of it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

from builder import __version__
from builder.benchmark import read_manifest
from builder.errors import BuilderError
from builder.fileio import sha256_file
from builder.manifest import CONFIG_NAME
from builder.outdir import FINAL_FILES, STATS_DIR, is_shard_name

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
CARD = "README.md"
MANIFEST = "manifest.json"
DEFAULT_BRANCH = "main"
#: bounds of one LFS upload batch: an interruption costs at most one batch's worth of work
BATCH_MAX_FILES = 50
BATCH_MAX_BYTES = 1 << 30
#: huggingface_hub's shared HTTP client has no timeout at all; ours fail fast when offline
CONNECT_TIMEOUT = 10.0
IO_TIMEOUT = 300.0
#: the Hub stores larger files with LFS whatever their name
LFS_MIN_BYTES = 10_000_000
#: the LFS patterns of the .gitattributes the Hub writes into a new dataset repo
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.lz4",
    "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar",
    "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    "*.pcm", "*.sam", "*.raw", "*.aac", "*.flac", "*.mp3", "*.ogg", "*.wav",
    "*.bmp", "*.gif", "*.png", "*.tiff", "*.jpg", "*.jpeg", "*.webp", "*.mp4", "*.webm",
)


class PublishError(BuilderError):
    """The benchmark could not be published; the message says what to do."""


class TokenMissingError(PublishError):
    """No Hub token in HF_TOKEN nor in the login cache."""


class RepoIdError(PublishError):
    """``--repo-id`` is not of the form ORG/NAME the Hub accepts."""


class HubPermissionError(PublishError):
    """The Hub refused the token (401) or its rights on the repo (403)."""


class HubUnreachableError(PublishError):
    """No connection to the Hub endpoint (offline, DNS, proxy, timeout)."""


class UploadInterruptedError(PublishError):
    """The upload stopped part-way; re-running the same command resumes it."""


class VerifyFailedError(PublishError):
    """``verify`` found problems: a broken dir is never published."""


@dataclass(frozen=True)
class PlannedFile:
    path: str  # path in the repo (POSIX), relative to the benchmark dir
    size: int
    lfs: bool  # as the Hub would store it in a new dataset repo; its preupload answer decides


@dataclass(frozen=True)
class UploadPlan:
    root: Path
    name: str
    manifest_id: str
    files: tuple[PlannedFile, ...]  # in plan order: shards, then metadata, the card last (all in one commit)
    card_header: str  # the card's YAML header, between its '---' lines
    left_out: tuple[str, ...]  # files in the dir that are not published (besides _stats/ and dot files)
    #: files sent from memory rather than from ``root`` (the card rendered for the repo, when the
    #: dir must not be written: a dry run, a Hugging Face cache snapshot)
    rendered: Mapping[str, bytes] = field(default_factory=dict, hash=False)
    untouched: str = ""  # why ``root`` is not written (empty: it is the build's own dir)

    def content(self, path: str) -> Union[str, bytes]:
        """What to upload for ``path``: its rendered bytes, or the file's path in ``root``."""
        return self.rendered[path] if path in self.rendered else str(self.root / path)

    def read(self, path: str) -> bytes:
        """The bytes that go up for ``path``."""
        return self.rendered[path] if path in self.rendered else (self.root / path).read_bytes()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def lfs_bytes(self) -> int:
        return sum(f.size for f in self.files if f.lfs)


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    revision: str
    url: str
    sent: tuple[str, ...]  # paths committed by this run
    unchanged: tuple[str, ...]  # already on the Hub with the same content
    deleted: tuple[str, ...]  # files of an earlier build this one lacks, removed in the same commit
    commits: int  # 1, or 0 when the repo already held this build
    sent_bytes: int


# ----------------------------------------------------------------------------- the plan (offline)


def is_lfs(path: str, size: int) -> bool:
    """Would the Hub store ``path`` with LFS in a new dataset repo (default .gitattributes, size)?"""
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_MIN_BYTES or any(
        fnmatch.fnmatchcase(path if "/" in pattern else name, pattern) for pattern in LFS_PATTERNS
    )


def plan_upload(root: Path) -> UploadPlan:
    """What ``publish`` would upload from ``root``, in order; reads local files only."""
    root = Path(root)
    manifest = read_manifest(root)
    shards = sorted(entry["path"] for config in manifest["configs"].values()
                    for shard in config["shards"] for entry in shard["files"].values())
    extras = [name for name in FINAL_FILES if name not in (CARD, MANIFEST) and (root / name).is_file()]
    order = [*shards, MANIFEST, *extras, CARD]
    missing = [path for path in order if not (root / path).is_file()]
    if missing:
        raise PublishError(f"{root}: {missing[0]} is missing ({len(missing)} file(s) in all); "
                           f"run `build-benchmark verify {root}`")
    for path in order:
        _check_inside(root, path)
    card = (root / CARD).read_text(encoding="utf-8")
    check_card_links(root, card, order)
    sizes = {path: (root / path).stat().st_size for path in order}
    files = tuple(PlannedFile(path, sizes[path], is_lfs(path, sizes[path])) for path in order)
    return UploadPlan(root, str(manifest.get("recipe", {}).get("name", root.name)), str(manifest.get("id", "")),
                      files, card_yaml_header(card), tuple(sorted(_left_out(root, set(order)))))


#: a Markdown link or image whose target is one file name: ``[text](name)``, ``![alt](name)``
_LINK = re.compile(r"\]\(([^()\s/#?:]+)\)")


def check_card_links(root: Path, card: str, planned: Sequence[str]) -> None:
    """The card links the tool's extras (the preview image, the gallery): one the dir lacks would
    be a broken link on the Hub. A download by ``verify`` or ``score`` fetches only what they read."""
    missing = sorted({name for name in _LINK.findall(card) if name in FINAL_FILES and name not in planned})
    if missing:
        raise PublishError(f"{root}: the card links {' and '.join(missing)}, which the dir lacks, so the published card "
                           "would show broken links; publish from the build's own dir, or fetch them into this one "
                           f"(for a Hub download: `hf download ORG/NAME {' '.join(missing)} --repo-type dataset`)")


def _check_inside(root: Path, path: str) -> None:
    """``root/path`` is the benchmark's own file: a link to a file elsewhere (a key, a config)
    would upload that file's bytes under the benchmark's name. A Hugging Face cache snapshot's
    links into its repo's ``blobs/`` are the download's own files."""
    base, resolved = root.resolve(), (root / path).resolve()
    if base in resolved.parents:
        return
    if base.parent.name == "snapshots" and base.parent.parent / "blobs" in resolved.parents:
        return
    raise PublishError(f"{root}: {path} links to {resolved}, outside the benchmark; publish uploads only the benchmark's own "
                       "files: replace the link with the file it stands for, or remove it")


def _left_out(root: Path, planned: set[str]) -> Iterator[str]:
    """Files nobody asked to publish: named in the plan so that nothing is left out silently."""
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        parts = relative.split("/")
        if path.is_file() and parts[0] != STATS_DIR and not any(p.startswith(".") for p in parts) and relative not in planned:
            yield relative


def card_yaml_header(text: str) -> str:
    """The YAML between the card's leading '---' lines (empty if it has none)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return ""
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "\n".join(lines[1:index]) + "\n"
    return ""


def commit_batches(files: Sequence[PlannedFile], max_files: int, max_bytes: int) -> list[list[PlannedFile]]:
    """Consecutive groups of at most ``max_files`` files and ``max_bytes`` (a larger file goes alone)."""
    batches: list[list[PlannedFile]] = []
    current: list[PlannedFile] = []
    for planned in files:
        if current and (len(current) >= max_files or sum(f.size for f in current) + planned.size > max_bytes):
            batches.append(current)
            current = []
        current.append(planned)
    return batches + ([current] if current else [])


def format_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def format_plan(plan: UploadPlan, repo_id: str, revision: Optional[str] = None, private: Optional[bool] = None) -> str:
    """The dry run's report: every file with its size and storage, the steps, the visibility a new
    repo gets (``private``: the --private flag; None: not told), the card's header."""
    width = max(len(f.path) for f in plan.files)
    lines = [f"publish plan: {plan.root} -> dataset {repo_id} (branch {revision or DEFAULT_BRANCH}), "
             f"benchmark {plan.name}, manifest id {plan.manifest_id[:12]}"]
    for planned in plan.files:
        note = "  (rendered, sent from memory)" if plan.untouched and planned.path in plan.rendered else ""
        lines.append(f"  {planned.path:<{width}}  {format_size(planned.size):>9}  {'LFS' if planned.lfs else 'regular'}{note}")
    batches = len(commit_batches([f for f in plan.files if f.lfs], BATCH_MAX_FILES, BATCH_MAX_BYTES))
    lines.append(f"total: {len(plan.files)} files, {format_size(plan.total_bytes)} ({format_size(plan.lfs_bytes)} in LFS); "
                 f"steps: at most {batches} LFS upload batch(es), then one commit that adds every changed file and removes "
                 "the shards and tool files of an earlier build that this one lacks (the repo changes only then, at once); "
                 "files already on the Hub with the same content are skipped")
    lines.append(visibility_line(private))
    if plan.untouched:
        lines.append(f"{plan.root} is {plan.untouched}: the card rendered for {repo_id} is sent from memory, the dir is left as it is")
    lines.append(f"not uploaded: {STATS_DIR}/ (build state), dot and temp files"
                 + (f", {', '.join(plan.left_out)}" if plan.left_out else ""))
    lines.append("card YAML header:")
    lines.append("---\n" + plan.card_header + "---")
    lines.append("dry run: nothing was sent (no network)")
    return "\n".join(lines)


def visibility_line(private: Optional[bool]) -> str:
    """What visibility the repo ends up with: ``create_repo`` keeps an existing repo's."""
    if private is None:
        return ("visibility: a new repo is created public, or private with --private; an existing repo keeps its own, "
                "and --private refuses to publish into a public one")
    if private:
        return "visibility: a new repo is created private; an existing public repo is refused before any upload (--private)"
    return "visibility: a new repo is created public (add --private for a private one); an existing repo keeps its own"


# ----------------------------------------------------------------------------- checks before any upload


def check_repo_id(repo_id: str) -> None:
    """ORG/NAME as the Hub wants it (huggingface_hub's rules, and a namespace is required)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise RepoIdError(f"--repo-id '{repo_id}' is not a valid Hub repo id: {error}") from None
    if repo_id.count("/") != 1:
        raise RepoIdError(f"--repo-id '{repo_id}' needs a namespace: give ORG/NAME (your user or organization name, a slash, the dataset name)")


def hub_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, then the `hf auth login` cache)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise TokenMissingError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


def prepare_upload(root: Path, repo_id: str, results: Sequence[Path] = (), revision: Optional[str] = None,
                   *, dry_run: bool = False) -> UploadPlan:
    """Re-render the card for ``repo_id`` (adding ``results``), verify the dir, plan; offline.
    The card is written into ``root`` so the dir matches what the Hub gets, except by a dry run
    or where ``root`` is not the build's own dir (a Hugging Face cache snapshot is the cache's
    view of another repo's commit): those plan with the rendered bytes and change nothing."""
    from builder.card import card_files, card_write_problem, write_card_files
    from builder.verify import verify_benchmark

    root = Path(root)
    check_repo_id(repo_id)
    read_manifest(root)
    rendered = card_files(root, list(results), repo_id=repo_id, revision=revision or DEFAULT_BRANCH)  # results checked here
    untouched = card_write_problem(root, rendered) or ""
    if untouched:
        log.info("%s is %s: the card for %s is sent from memory, the dir is left as it is", root, untouched, repo_id)
    elif not dry_run:
        write_card_files(root, rendered)
    report = verify_benchmark(root)
    if not report.ok:
        raise VerifyFailedError(f"{root} fails verify ({len(report.failures)} problem(s), first: {report.failures[0]}); "
                                f"run `build-benchmark verify {root}` and fix or rebuild before publishing")
    if dry_run or untouched:
        return dataclasses.replace(planned_with(plan_upload(root), rendered), untouched=untouched)
    return plan_upload(root)


def planned_with(plan: UploadPlan, rendered: dict[str, bytes]) -> UploadPlan:
    """``plan`` as it would be with the ``rendered`` files (path -> bytes) in place of the dir's."""
    sizes = {planned.path: planned.size for planned in plan.files}
    sizes.update({path: len(data) for path, data in rendered.items()})
    order = [planned.path for planned in plan.files if planned.path != CARD]
    order += [path for path in rendered if path != CARD and path not in order]  # a leaderboard.json the dir lacks yet
    order.append(CARD)
    files = tuple(PlannedFile(path, sizes[path], is_lfs(path, sizes[path])) for path in order)
    card = rendered[CARD].decode("utf-8") if CARD in rendered else None
    if card is not None:
        check_card_links(plan.root, card, order)
    header = card_yaml_header(card) if card is not None else plan.card_header
    return dataclasses.replace(plan, files=files, card_header=header, rendered={**plan.rendered, **rendered},
                               left_out=tuple(p for p in plan.left_out if p not in rendered))


# ----------------------------------------------------------------------------- the upload


@dataclass
class _Progress:
    """Where the run is, so an error can say how far it got."""

    endpoint: str
    repo_id: str
    token: str
    step: str = "connecting"
    uploading: bool = False
    done: int = 0
    total: int = 0


def publish(root: Path, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
            message: Optional[str] = None, results: Sequence[Path] = (), token: Optional[str] = None,
            endpoint: Optional[str] = None) -> PublishResult:
    """Verify ``root`` and upload it to the dataset repo ``repo_id``; re-run to resume."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    token = token or hub_token()
    plan = prepare_upload(root, repo_id, results, revision)
    progress = _Progress(hub_endpoint(endpoint), repo_id, token)
    branch = revision or DEFAULT_BRANCH
    message = message or f"Publish {plan.name} benchmark {plan.manifest_id[:12]} (fmr-builder {__version__})"
    api = HfApi(endpoint=progress.endpoint, token=token, library_name="fmr-builder", library_version=__version__)
    with hub_timeouts(), _translated(progress, api):
        progress.step = "creating the repo"
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        progress.step = "reading the repo's visibility"
        check_visibility(api, repo_id, private)
        if branch != DEFAULT_BRANCH:
            progress.step = f"creating branch {branch}"
            api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True)
        result = _upload(api, plan, repo_id, branch, message, progress)
    log.info("published %s to %s: %d file(s) sent in %d commit(s), %d unchanged",
             plan.root, result.url, len(result.sent), result.commits, len(result.unchanged))
    return result


def check_visibility(api: Any, repo_id: str, private: bool) -> None:
    """``create_repo(private=True, exist_ok=True)`` keeps an existing repo's visibility: a
    --private publish into a public repo would put the data out in the open."""
    is_private = api.repo_info(repo_id, repo_type=REPO_TYPE).private
    log.info("dataset %s is %s", repo_id, "private" if is_private else "public")
    if private and is_private is not True:
        raise PublishError(f"--private: dataset {repo_id} exists and is public, so its files would be public; nothing was sent. "
                           f"Make it private first (its Settings on the Hub, or `hf repos settings {repo_id} --private "
                           "--repo-type dataset`) and re-run, or drop --private to publish it publicly")


def hub_endpoint(endpoint: Optional[str] = None) -> str:
    """HF_ENDPOINT as set now: huggingface_hub freezes its ENDPOINT constant at import."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _upload(api: Any, plan: UploadPlan, repo_id: str, branch: str, message: str, progress: _Progress) -> PublishResult:
    """The LFS files in bounded batches (resumable: the Hub's storage keeps what arrived), then
    one commit with every change: the repo goes from the earlier build to this one at once."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    progress.step = "listing the repo"
    remote = _remote_files(api, repo_id, branch)
    todo = [f for f in plan.files if not _unchanged(plan, f, remote.get(f.path))]
    stale = stale_files(plan, remote)
    sent = tuple(f.path for f in todo)
    url = _repo_url(progress.endpoint, repo_id, branch)
    if not todo and not stale:
        return PublishResult(repo_id, branch, url, (), tuple(f.path for f in plan.files), (), 0, 0)
    additions = {f.path: CommitOperationAdd(f.path, plan.content(f.path)) for f in todo}
    if CARD in additions:  # what create_commit checks first, before the LFS uploads rather than after them
        progress.step = "checking the card's YAML header"
        _validate_card(api, plan.read(CARD))
    batches = commit_batches([f for f in todo if f.lfs], BATCH_MAX_FILES, BATCH_MAX_BYTES)
    progress.uploading, progress.total = True, len(batches) + 1
    for number, batch in enumerate(batches, start=1):
        progress.step = f"step {number} of {progress.total} (LFS upload batch {number} of {len(batches)})"
        log.info("%s: %d file(s), %s", progress.step, len(batch), format_size(sum(f.size for f in batch)))
        api.preupload_lfs_files(repo_id, [additions[f.path] for f in batch], repo_type=REPO_TYPE, revision=branch)
        progress.done += 1
    progress.step = f"step {progress.total} of {progress.total} (the commit)"
    log.info("%s: %d file(s) added or changed, %d removed", progress.step, len(todo), len(stale))
    api.create_commit(repo_id, [*additions.values(), *(CommitOperationDelete(path) for path in stale)],
                      commit_message=message, repo_type=REPO_TYPE, revision=branch)
    progress.done += 1
    return PublishResult(repo_id, branch, url, sent, tuple(f.path for f in plan.files if f.path not in sent), tuple(stale), 1,
                         sum(f.size for f in todo))


def _validate_card(api: Any, card: bytes) -> None:
    """The Hub's check of the card's YAML (``create_commit`` runs it too, but only once called)."""
    validate = getattr(api, "_validate_yaml", None)  # huggingface_hub's own, private: skipped if it goes
    if validate is not None:
        validate(card.decode("utf-8"), repo_type=REPO_TYPE)


def _remote_files(api: Any, repo_id: str, branch: str) -> dict[str, Any]:
    from huggingface_hub.hf_api import RepoFile

    entries = api.list_repo_tree(repo_id, recursive=True, revision=branch, repo_type=REPO_TYPE)
    return {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}


def _unchanged(plan: UploadPlan, planned: PlannedFile, remote: Any) -> bool:
    """Does the Hub hold this very content? (sha256 of an LFS file, git blob id of a regular one)."""
    from huggingface_hub.utils.sha import git_hash

    if remote is None:
        return False
    size = remote.lfs.size if remote.lfs is not None else remote.size
    if size != planned.size:
        return False
    if remote.lfs is not None:
        path = planned.path
        return remote.lfs.sha256 == (hashlib.sha256(plan.rendered[path]).hexdigest() if path in plan.rendered
                                     else sha256_file(plan.root / path))
    return remote.blob_id == git_hash(plan.read(planned.path))


def stale_files(plan: UploadPlan, remote: Mapping[str, Any]) -> list[str]:
    """Files an earlier build left that this one lacks: shards (the card's globs would load them,
    and a config this build does not have would linger) in any top-level dir a config could be,
    and the tool's own top-level files. Anything else in the repo is a user's and stays."""
    planned = {f.path for f in plan.files}

    def tool_owned(path: str) -> bool:
        parts = path.split("/")
        if len(parts) == 1:
            return path in FINAL_FILES
        return len(parts) == 2 and CONFIG_NAME.match(parts[0]) is not None and is_shard_name(parts[1])

    return sorted(path for path in remote if path not in planned and tool_owned(path))


def _repo_url(endpoint: str, repo_id: str, branch: str) -> str:
    return f"{endpoint}/datasets/{repo_id}" + ("" if branch == DEFAULT_BRANCH else f"/tree/{branch}")


def format_result(result: PublishResult) -> str:
    lines = [f"published to {result.url}: {len(result.sent)} file(s), {format_size(result.sent_bytes)} sent "
             f"in {result.commits} commit(s); {len(result.unchanged)} already there with the same content"]
    if result.deleted:
        lines.append(f"removed {len(result.deleted)} file(s) of an earlier build that this one lacks: {', '.join(result.deleted)}")
    if not result.sent and not result.deleted:
        lines.append("nothing to do: the repo already holds this benchmark")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTTP settings and errors


@contextlib.contextmanager
def hub_timeouts(connect: float = CONNECT_TIMEOUT, io: float = IO_TIMEOUT) -> Iterator[None]:
    """Give huggingface_hub's shared client timeouts while we use it (its default has none,
    so an offline machine could hang); the previous client factory is restored after."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory() -> Any:
        client = previous()
        client.timeout = httpx2.Timeout(io, connect=connect)
        return client

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)


@contextlib.contextmanager
def _translated(progress: _Progress, api: Any) -> Iterator[None]:
    """Library and transport errors become one-line PublishErrors (never showing the token)."""
    try:
        yield
    except PublishError:
        raise
    except Exception as error:
        translated = _translate(error, progress, api)
        if translated is None:
            raise
        raise translated from None


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _translate(error: Exception, progress: _Progress, api: Any) -> Optional[PublishError]:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    http = next((e for e in _causes(error) if isinstance(e, HfHubHTTPError) and e.response is not None), None)
    transport = next((e for e in _causes(error) if isinstance(e, (httpx2.TransportError, OfflineModeIsEnabled))), None)
    status = http.response.status_code if http is not None else None
    where = f"dataset {progress.repo_id} at {progress.endpoint}"
    if isinstance(transport, OfflineModeIsEnabled):
        found: PublishError = HubUnreachableError("HF_HUB_OFFLINE is set: huggingface_hub sends nothing; unset it to publish")
    elif status == 401:
        found = HubPermissionError(f"the Hub refused the token for {where} (HTTP 401: invalid or expired token, "
                                   "or the repo is not visible to it); set HF_TOKEN or run `hf auth login`")
    elif status == 403:
        found = HubPermissionError(f"no permission to write to {where}{_as_user(api)} (HTTP 403); "
                                   f"use a token with write access to '{progress.repo_id.split('/')[0]}'")
    elif isinstance(error, ValueError) and "README.md" in str(error):  # huggingface_hub's check of the card, HTTP 400 or not
        landed = f"{progress.done} of {progress.total} step(s) done" if progress.uploading else "nothing was sent"
        found = PublishError(f"the Hub refused the card's YAML header ({' '.join(str(error).split())[:400]}); {landed}, "
                             "the repo is unchanged; re-running will not help: report it with the card's header (publish --dry-run prints it)")
    elif progress.uploading and (transport is not None or (status is not None and _retryable(status))):
        found = UploadInterruptedError(
            f"upload to {where} interrupted at {progress.step} ({_cause(http or transport)}); {progress.done} of "
            f"{progress.total} step(s) done, and the repo changes only at the last one, the commit; re-run the same "
            "command to resume: files already uploaded are not sent again")
    elif transport is not None:
        found = HubUnreachableError(f"cannot reach the Hub at {progress.endpoint} while {progress.step} ({_cause(transport)}): "
                                    "offline? check the network, a proxy, or HF_ENDPOINT")
    elif http is not None:
        found = PublishError(f"the Hub refused {progress.step} for {where} ({_cause(http)})")
    else:
        return None
    return type(found)(_scrub(str(found), progress.token))


def _retryable(status: int) -> bool:
    """Whether an HTTP status says "try again" (the server, a timeout, a rate limit), not "never"."""
    return status >= 500 or status in (408, 425, 429)


def _cause(error: Optional[BaseException]) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        detail = (error.server_message or "").strip().splitlines()
        return f"HTTP {error.response.status_code}" + (f": {detail[0][:200]}" if detail else "")
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _as_user(api: Any) -> str:
    """' as <user>' if the Hub says whose token this is; best effort, never fatal."""
    try:
        name = api.whoami().get("name")
    except Exception as error:  # noqa: BLE001 - only decorates an error message
        log.debug("whoami failed: %s", type(error).__name__)
        return ""
    return f" as user '{name}'" if name else ""


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "<token>") if token else text
