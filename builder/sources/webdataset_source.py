"""WebDataset tar shards (paths, globs, ``{000..009}`` brace patterns or http(s) URLs).

Members are indexed from the tar headers once and read on demand; nothing is extracted to
disk, so member names such as ``../x`` can never write outside anywhere.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

from pydantic import field_validator

from builder.checkpoints import OBJECT_STORES, STORE_HINT, fetch_location, find_location, offline_hint, parse_hf_url
from builder.config import SourceConfig
from builder.errors import BuilderError, SourceError
from builder.preflight import Check
from builder.sources.base import (
    SOURCES,
    SourceContext,
    SourceItem,
    declared_classes,
    open_preflight,
    printable_id,
    shown_label,
)
from builder.sources.decode import SampleRejected, open_untrusted

#: a label member is a class index (``3``, ``{"label": 3}``): anything longer is not one, and is
#: never parsed (a deeply nested or many-digit JSON text would blow the parser's limits)
LABEL_LIMIT = 4096
#: more shards than this in ``source.urls`` is a runaway brace pattern, not a data set
MAX_SHARDS = 100_000
#: braces nested deeper than this are rejected before counting (each level is scanned again)
MAX_BRACE_DEPTH = 16
#: what a damaged plain, gzip, bzip2 or xz stream raises (``gzip.BadGzipFile`` and bzip2's
#: "Invalid data stream" are OSErrors, a cut compressed stream is an EOFError)
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


class WebDatasetConfig(SourceConfig):
    urls: str | tuple[str, ...]
    image_keys: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
    label_key: str = "cls"

    @field_validator("image_keys")
    @classmethod
    def _lower_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Member extensions are compared lowercased (``K.PNG`` is a png): so are the keys."""
        return tuple(key.lower() for key in value)

    @field_validator("label_key")
    @classmethod
    def _lower_key(cls, value: str) -> str:
        return value.lower()


def _expand(urls: str | tuple[str, ...], ctx: SourceContext) -> list[tuple[str, Path]]:
    """(path for sample ids, local path) of every shard ``source.urls`` names, in order. A glob
    that matches nothing is an error even when others match: a typo must not drop its shards."""
    shards: list[tuple[str, Path]] = []
    unmatched: list[str] = []
    for pattern in _expanded(urls):
        before = len(shards)
        for url in _listed(pattern):
            shards.extend(_local_shards(url, ctx))
            if len(shards) > MAX_SHARDS:
                raise SourceError(f"webdataset source: source.urls match more than {MAX_SHARDS} shards; narrow its globs")
        if len(shards) == before:
            unmatched.append(pattern)
    if unmatched:
        shown = ", ".join(printable_id(pattern) for pattern in unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise SourceError(f"webdataset source: no shard at {shown} (nothing matches); check source.urls")
    missing = [path for _, path in shards if not path.is_file()]
    if not shards or missing:
        shown = urls if isinstance(urls, str) else ", ".join(urls) or "(none)"
        raise SourceError(f"webdataset source: no shard at {missing[0] if missing else shown}; check source.urls")
    return shards


def _local_shards(url: str, ctx: SourceContext) -> list[tuple[str, Path]]:
    """The shard ``url`` names, fetched; or the files a local glob matches, sorted (none for none)."""
    local = fetch_location(url, ctx)
    if any(c in str(local) for c in "*?[") and not local.is_file():  # a glob (a file whose name holds '[' is itself)
        return [(match, Path(match)) for match in sorted(glob.glob(str(local)))]
    return [(_shard_name(url, local), local)]


def _shard_name(listed: str, local: Path) -> str:
    """A shard's path for its sample ids: a local path, or a URL's host and folders (no query,
    no pin); either way ending in the local file's name."""
    if "://" not in listed:
        return str(local)
    from urllib.parse import urlparse

    parsed = urlparse(listed)
    return f"{parsed.netloc}{parsed.path.rpartition('/')[0]}/{local.name}"


def shard_labels(names: list[str]) -> list[str]:
    """What each shard's sample ids begin with: its file name, or, when two shards share a file
    name (``train/00000.tar`` and ``val/00000.tar``), its path below the folder all shards share,
    so that every sample id is unique."""
    parts = [name.rstrip("/").split("/") for name in names]
    if len({part[-1] for part in parts}) == len(parts):
        return [part[-1] for part in parts]
    shared = min(len(os.path.commonprefix(parts)), min(len(part) for part in parts) - 1)
    return ["/".join(part[shared:]) for part in parts]


def _listed(url: str) -> list[str]:
    """An object-store or Hub URL with glob characters (``s3://bucket/shards/*.tar``,
    ``hf://datasets/org/repo/val-*.tar``) as the URLs of what it matches, sorted; any other URL
    or path as it is (local globs are matched after :func:`fetch_location`)."""
    from builder.storage import filesystem_of

    scheme, _, _ = url.partition("://")
    scheme = scheme.lower()
    if not any(c in url for c in "*?[") or scheme not in (*OBJECT_STORES, "hf"):
        return [url]
    try:
        if scheme == "hf":
            matches = _hub_matches(url)
        else:
            fs, path = filesystem_of(url, {})
            matches = [f"{scheme}://{match}" for match in sorted(fs.glob(path))]
    except BuilderError:
        raise
    except Exception as error:  # noqa: BLE001 - every store raises its own types
        hint = offline_hint() if scheme == "hf" else ""
        raise SourceError(f"webdataset source: cannot list {url} ({' '.join(str(error).split())[:200]}); "
                          f"{'check the repo and your HF token' if scheme == 'hf' else STORE_HINT}{hint}") from None
    if len(matches) > MAX_SHARDS:
        raise SourceError(f"webdataset source: {url} matches more than {MAX_SHARDS} objects; narrow the glob")
    return matches


def _hub_matches(url: str) -> list[str]:
    """The files of a Hub repo that an ``hf://`` glob matches (``*`` within one folder, as a path glob)."""
    from huggingface_hub import HfApi

    file = parse_hf_url(url[len("hf:"):])
    names = HfApi().list_repo_files(file.repo_id, repo_type=file.repo_type, revision=file.revision)
    depth = file.path.count("/")
    prefix = url[: len(url) - len(file.path)]
    return [prefix + name for name in sorted(names) if name.count("/") == depth and fnmatch.fnmatchcase(name, file.path)]


def _expanded(urls: str | tuple[str, ...]) -> list[str]:
    """Every name the patterns of ``source.urls`` stand for, counted before any is made."""
    import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    total = 0
    for pattern in patterns:  # counted first: braceexpand builds a whole range before yielding one name
        total += _expansion_count(pattern)
        if total > MAX_SHARDS:
            shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
            raise SourceError(
                f"webdataset source: source.urls {shown!r} expands to more than {MAX_SHARDS} shards; "
                "check its {a..b} ranges"
            )
    return [url for pattern in patterns for url in braceexpand.braceexpand(pattern)]


def webdataset_preflight(config: WebDatasetConfig, ctx: SourceContext, where: str) -> list[Check]:
    """A dry run downloads nothing: when every shard is at hand (paths, or downloads already in a
    cache) the source is opened and counted; otherwise the shards still to fetch are only named."""
    declared = declared_classes(config)
    count = len(declared) if declared else None
    try:
        pending = [url for url in _expanded(config.urls) if find_location(url, ctx).fetchable]
    except BuilderError as error:
        return [Check(where, config.kind, f"{where}: {error}", classes=count, class_names=declared)]
    if not pending:
        return open_preflight(config, ctx, where)
    return [Check(where, f"webdataset: {len(pending)} shard(s) to download on the first run, such as {pending[0]}",
                  classes=count, class_names=declared)]


def _expansion_count(pattern: str) -> int:
    """How many names ``braceexpand(pattern)`` yields, without making them; raises a
    :class:`SourceError` for unbalanced braces, like braceexpand would (as a ValueError)."""
    shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
    depth = deepest = 0
    for char in pattern:
        depth += {"{": 1, "}": -1}.get(char, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_BRACE_DEPTH:  # a hostile nesting would take minutes to count
        raise SourceError(f"webdataset source: source.urls {shown!r} nests braces {deepest} deep (at most {MAX_BRACE_DEPTH}); simplify the pattern")
    try:
        return _count_pattern(pattern)
    except ValueError:
        raise SourceError(f"webdataset source: source.urls {shown!r} has unbalanced or malformed braces; fix the pattern") from None


def _count_pattern(pattern: str) -> int:
    """braceexpand's ``parse_pattern``, counting instead of expanding."""
    count, start, depth, pos = 1, 0, 0, 0
    while pos < len(pattern):
        if pattern[pos] == "\\":
            pos += 2
            continue
        if pattern[pos] == "{":
            if depth == 0:
                start = pos
            depth += 1
        elif pattern[pos] == "}":
            depth -= 1
            if depth == 0:
                count *= _count_expression(pattern[start + 1 : pos])
        pos += 1
    if depth != 0:
        raise ValueError("unbalanced braces")
    return count


def _count_expression(expr: str) -> int:
    """braceexpand's ``parse_expression``: an int range, a letter range, a sequence or a literal."""
    import braceexpand

    patterns = cast(Any, braceexpand)  # its range patterns are not in its public API (no stubs either)
    numbers = patterns.int_range_re.match(expr)
    letters = patterns.char_range_re.match(expr)
    if numbers or letters:
        first, last, step_text = (numbers or letters).groups()
        step = (int(step_text) or 1) if step_text else 1
        if numbers:
            low, high = int(first), int(last)
            return len(range(low, high + 1, step) if low < high else range(low, high - 1, -step))
        low, high = braceexpand.alphabet.index(first), braceexpand.alphabet.index(last)
        return len(braceexpand.alphabet[low : high + 1 : step] if low < high else braceexpand.alphabet[low : (high or -len(braceexpand.alphabet)) - 1 : -step])
    parts, start, depth, pos = [], 0, 0, 0
    while pos < len(expr):
        if expr[pos] == "\\":
            pos += 2
            continue
        if expr[pos] == "{":
            depth += 1
        elif expr[pos] == "}":
            depth -= 1
        elif expr[pos] == "," and depth == 0:
            parts.append(expr[start:pos])
            start = pos + 1
        pos += 1
    if depth != 0 or not parts:  # not a sequence: "{x}" stays literal around its inner pattern
        return _count_pattern(expr)
    return sum(_count_pattern(part) for part in [*parts, expr[start:]])


#: how each compression a shard may have starts, and the tarfile mode that reads it
_MAGIC = ((b"\x1f\x8b", "r:gz"), (b"BZh", "r:bz2"), (b"\xfd7zXZ\x00", "r:xz"))


def _open_tar(shard: Path) -> tarfile.TarFile:
    """The shard opened in the mode its first bytes call for: ``r:*`` would try every
    compression and, on a damaged file, report all of their failures instead of the one."""
    with open(shard, "rb") as handle:
        start = handle.read(6)
    mode = next((mode for magic, mode in _MAGIC if start.startswith(magic)), "r:")
    return tarfile.open(shard, cast(Any, mode))  # one of the read modes above


def _split_key(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _read_member(shard: Path, member: tarfile.TarInfo, tar: tarfile.TarFile | None = None) -> bytes:
    """The member's bytes, through ``tar`` when given (``shard`` opened) or a fresh opening; a
    shard that was whole when indexed but cannot be read now changed on disk (or broke), which
    is a problem of the whole source, not of this one sample."""
    try:
        if tar is None:
            with _open_tar(shard) as fresh:
                return _member_bytes(fresh, member)
        return _member_bytes(tar, member)
    except _STREAM_ERRORS as error:
        raise SourceError(
            f"webdataset source: shard {shard} can no longer be read at member {printable_id(member.name)} "
            f"({_reason(error)}); it changed since it was indexed: re-download it and resume"
        ) from None


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise SampleRejected(f"{printable_id(member.name)} is not a regular file")
    return handle.read()


class _ShardCursor:
    """The shard that a run of samples is read from, kept open and read forward. A compressed
    shard can only be read by inflating it from its start, so opening it afresh for each member
    made reading a shard quadratic in its size (a 100 MB .tar.gz inflated about 50 GB); forward
    seeks within one opening inflate each byte once. Once closed (its ``items`` iteration
    ended), each read opens the shard for itself."""

    def __init__(self) -> None:
        self._shard: Path | None = None
        self._tar: tarfile.TarFile | None = None
        self._offset = -1
        self._closed = False

    def read(self, shard: Path, member: tarfile.TarInfo) -> bytes:
        if self._closed:
            return _read_member(shard, member)
        if self._tar is None or shard != self._shard or member.offset_data <= self._offset:  # a backward seek re-inflates
            self._release()
            try:
                self._tar = _open_tar(shard)
            except _STREAM_ERRORS:
                return _read_member(shard, member)  # which reports why in its one line
            self._shard = shard
        self._offset = member.offset_data
        try:
            return _read_member(shard, member, self._tar)
        except SourceError:
            self._release()
            raise

    def _release(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._tar, self._shard, self._offset = None, None, -1

    def close(self) -> None:
        self._release()
        self._closed = True


@SOURCES.register("webdataset", config=WebDatasetConfig, description="tar shards: <key>.png|jpg + <key>.cls", preflight=webdataset_preflight)
class WebDatasetSource:
    def __init__(self, config: WebDatasetConfig, ctx: SourceContext) -> None:
        if not config.class_names:
            raise SourceError("webdataset source: set source.class_names (tar shards carry no class list)")
        self.class_names = tuple(config.class_names)
        self._samples: list[_Sample] = []
        self._first_of: dict[str, int] = {}
        named = _expand(config.urls, ctx)
        shards = [path for _, path in named]
        twice = next((shard for i, shard in enumerate(shards) if shard.resolve() in {s.resolve() for s in shards[:i]}), None)
        if twice is not None:
            raise SourceError(f"webdataset source: shard {twice} is listed twice in source.urls; list each shard once")
        for shard, prefix in zip(shards, shard_labels([name for name, _ in named]), strict=True):
            self._index_shard(shard, prefix, config)

    def _index_shard(self, shard: Path, prefix: str, config: WebDatasetConfig) -> None:
        """Index ``shard``'s samples; their ids are ``<prefix>/<key>``."""
        groups: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
        labels: dict[int, bytes] = {}  # group position -> the label member's first bytes
        latest: dict[str, int] = {}  # key -> position of its newest group
        try:
            with _open_tar(shard) as tar:
                for member in tar:
                    if member.isfile():
                        key, extension = _split_key(member.name)
                        if key not in latest or extension in groups[latest[key]][1]:  # a repeated member starts a new sample
                            latest[key] = len(groups)
                            groups.append((key, {}))
                        groups[latest[key]][1][extension] = member
                        if extension == config.label_key:  # read now: a later backward seek re-inflates a compressed shard
                            labels[latest[key]] = _extracted(tar, member).read(LABEL_LIMIT + 1)
                _check_end(tar, shard)
        except _STREAM_ERRORS as error:
            raise SourceError(_unreadable(shard, error)) from None
        _check_image_keys(shard, groups, config.image_keys)
        for position, (key, members) in enumerate(groups):  # tar order: the order the shard was written in
            source_id = printable_id(f"{prefix}/{key}")
            image = next((members[e] for e in config.image_keys if e in members), None)
            label, problem = _parse_label(labels.get(position), members.get(config.label_key), source_id, len(self.class_names))
            self._samples.append(_Sample(source_id, shard, image, label, problem, self._first_of.get(source_id)))
            self._first_of.setdefault(source_id, len(self._samples) - 1)

    def __len__(self) -> int:
        return len(self._samples)

    def listing(self, used: int) -> list[list[Any]]:
        """Each sample's id, label and image member size, from the index (no image bytes)."""
        return [[sample.source_id, sample.label, sample.member.size if sample.member is not None else -1] for sample in self._samples[:used]]

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        """Samples in tar order; loading each as it comes reads every shard once, front to back."""
        cursor = _ShardCursor()
        try:
            for i in range(start, min(stop, len(self))):
                sample = self._samples[i]
                if sample.problem is not None:
                    raise SourceError(sample.problem)
                load = partial(_open, cursor, sample.shard, sample.member) if sample.duplicate_of is None else partial(_duplicate, sample)
                yield SourceItem(i, sample.source_id, sample.label, load)
        finally:
            cursor.close()


@dataclass(frozen=True)
class _Sample:
    source_id: str
    shard: Path
    member: tarfile.TarInfo | None
    label: int
    problem: str | None  # why the label is unusable: raised when the sample is reached
    duplicate_of: int | None  # index of the first sample with this source id


def _check_image_keys(shard: Path, groups: list[tuple[str, dict[str, tarfile.TarInfo]]], image_keys: tuple[str, ...]) -> None:
    """A shard none of whose samples has a member named by ``image_keys`` is a wrong setting, not
    a shard of corrupt images: each sample would be rejected and the build end with none."""
    if not groups or any(key in members for _, members in groups for key in image_keys):
        return
    present = sorted({extension for _, members in groups for extension in members})
    shown = ", ".join(printable_id(extension) or "(none)" for extension in present[:12]) + (", ..." if len(present) > 12 else "")
    raise SourceError(
        f"webdataset source: no sample in shard {shard} has a member with source.image_keys ({printable_id(', '.join(image_keys)) or 'none given'}); "
        f"its members' extensions: {shown}; set source.image_keys to the image extension"
    )


def _extracted(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    handle = tar.extractfile(member)
    if handle is None:  # isfile() members always have one
        raise tarfile.ReadError(f"{member.name} has no data")
    return handle


def _check_end(tar: tarfile.TarFile, shard: Path) -> None:
    """``tarfile`` stops quietly at a header cut short or garbled, which loses every later
    sample without a word: after the last member there may only be the zero blocks that end
    a tar. Reading to the end also makes a cut compressed stream raise its EOFError."""
    handle = tar.fileobj
    if handle is None:  # never after tarfile.open; keeps the type checker content
        return
    handle.seek(tar.offset)
    head = handle.read(tarfile.BLOCKSIZE)
    if head.strip(b"\0"):
        if len(head) < tarfile.BLOCKSIZE:
            raise SourceError(f"webdataset source: shard {shard} is truncated at byte {shard.stat().st_size} (inside a member header); re-download it")
        raise SourceError(f"webdataset source: shard {shard} has an unreadable tar header at byte {tar.offset}; re-download or repack it")
    position = tar.offset + len(head)
    while chunk := handle.read(1 << 16):
        rest = chunk.lstrip(b"\0")
        if rest:
            raise SourceError(
                f"webdataset source: shard {shard} has data after its end-of-archive marker, at byte "
                f"{position + len(chunk) - len(rest)} (two tars joined?); repack it as one tar"
            )
        position += len(chunk)


def _unreadable(shard: Path, error: BaseException) -> str:
    """One line for a shard that cannot be indexed: truncated, corrupt or not a tar at all."""
    causes = [error, *([error.__cause__] if error.__cause__ else [])]  # tarfile wraps a cut stream's EOFError
    if any(isinstance(e, EOFError) or "unexpected end of data" in str(e) for e in causes):
        return f"webdataset source: shard {shard} is truncated at byte {shard.stat().st_size}; re-download it"
    reason = "; ".join(dict.fromkeys(_reason(e) for e in causes))
    return f"webdataset source: cannot read {shard}: {reason}; re-download it or check that it is a tar file"


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return text.splitlines()[0].rstrip(":") if text else type(error).__name__


def _duplicate(sample: _Sample) -> Any:
    raise SampleRejected(f"duplicate source id {sample.source_id} (the same key appears again in its tar; sample {sample.duplicate_of} was kept)")


def _parse_label(raw: bytes | None, member: tarfile.TarInfo | None, source_id: str, num_classes: int) -> tuple[int, str | None]:
    """(label, None), or (0, the one-line reason it is unusable)."""
    if raw is None or member is None:
        return 0, f"webdataset sample {source_id} has no label member; check source.label_key"
    if member.size > LABEL_LIMIT:
        return 0, (
            f"webdataset sample {source_id}: label member {printable_id(member.name)} is {member.size} bytes, "
            f"not a class index (at most {LABEL_LIMIT}); fix the label member"
        )
    text = raw.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, over the int-digit limit, or nested too deep
        value = None
    if isinstance(value, dict):
        value = value.get("label")
    if isinstance(value, bool) or not isinstance(value, int):  # true/false are ints to Python, not to us
        return 0, (
            f"webdataset sample {source_id}: label {text[:20]!r} is not an integer; "
            'a label member holds a class index such as 3 or {"label": 3}'
        )
    if not 0 <= value < num_classes:
        return 0, (
            f"sample {source_id}: label {shown_label(value)} is outside the {num_classes} classes; "
            "fix the label column or source.class_names"
        )
    return value, None


def _open(cursor: _ShardCursor, shard: Path, member: tarfile.TarInfo | None):  # -> PIL.Image.Image
    if member is None:
        raise ValueError("no image member")
    return open_untrusted(io.BytesIO(cursor.read(shard, member)))
