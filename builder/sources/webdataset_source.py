"""WebDataset tar shards (paths, globs, ``{000..009}`` brace patterns or http(s) URLs).

Members are indexed from the tar headers once and read on demand; nothing is extracted to
disk, so member names such as ``../x`` can never write outside anywhere.
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

from builder.checkpoints import resolve_location
from builder.config import SourceConfig
from builder.errors import SourceError
from builder.sources.base import SOURCES, SourceContext, SourceItem
from builder.sources.decode import SampleRejected


class WebDatasetConfig(SourceConfig):
    urls: Union[str, tuple[str, ...]]
    image_keys: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
    label_key: str = "cls"


def _expand(urls: Union[str, tuple[str, ...]], ctx: SourceContext) -> list[Path]:
    import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    paths: list[Path] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(pattern):
            local = resolve_location(url, ctx)
            matches = sorted(glob.glob(str(local))) if any(c in str(local) for c in "*?[") else [str(local)]
            paths.extend(Path(m) for m in matches)
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise SourceError(f"webdataset source: no shard at {missing[0] if missing else patterns[0]}; check source.urls")
    return paths


def _split_key(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _read_member(shard: Path, member: tarfile.TarInfo) -> bytes:
    with tarfile.open(shard, "r:*") as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise ValueError(f"{member.name} is not a regular file")
        return handle.read()


@SOURCES.register("webdataset", config=WebDatasetConfig, description="tar shards: <key>.png|jpg + <key>.cls")
class WebDatasetSource:
    def __init__(self, config: WebDatasetConfig, ctx: SourceContext) -> None:
        if not config.class_names:
            raise SourceError("webdataset source: set source.class_names (tar shards carry no class list)")
        self.class_names = tuple(config.class_names)
        self._samples: list[_Sample] = []
        self._first_of: dict[str, int] = {}
        shards = _expand(config.urls, ctx)
        twice = next((shard for i, shard in enumerate(shards) if shard.resolve() in {s.resolve() for s in shards[:i]}), None)
        if twice is not None:
            raise SourceError(f"webdataset source: shard {twice} is listed twice in source.urls; list each shard once")
        for shard in shards:
            self._index_shard(shard, config)

    def _index_shard(self, shard: Path, config: WebDatasetConfig) -> None:
        groups: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
        latest: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(shard, "r:*") as tar:
                for member in tar:
                    if member.isfile():
                        key, extension = _split_key(member.name)
                        if key not in latest or extension in latest[key]:  # a repeated member starts a new sample
                            latest[key] = {}
                            groups.append((key, latest[key]))
                        latest[key][extension] = member
                labels = [tar.extractfile(m[config.label_key]).read() if config.label_key in m else None for _, m in groups]
        except (tarfile.TarError, OSError) as error:
            raise SourceError(f"webdataset source: cannot read {shard}: {error}") from None
        for (key, members), label in zip(groups, labels):  # tar order: the order the shard was written in
            source_id = f"{shard.name}/{key}"
            image = next((members[e] for e in config.image_keys if e in members), None)
            self._samples.append(_Sample(source_id, shard, image, label, self._first_of.get(source_id)))
            self._first_of.setdefault(source_id, len(self._samples) - 1)

    def __len__(self) -> int:
        return len(self._samples)

    def items(self, start: int, stop: int) -> Iterator[SourceItem]:
        for i in range(start, min(stop, len(self))):
            sample = self._samples[i]
            load = (lambda s=sample: _open(s.shard, s.member)) if sample.duplicate_of is None else (lambda s=sample: _duplicate(s))
            yield SourceItem(i, sample.source_id, _parse_label(sample.label, sample.source_id), load)


@dataclass(frozen=True)
class _Sample:
    source_id: str
    shard: Path
    member: Optional[tarfile.TarInfo]
    label: Optional[bytes]
    duplicate_of: Optional[int]  # index of the first sample with this source id


def _duplicate(sample: _Sample) -> Any:
    raise SampleRejected(f"duplicate source id {sample.source_id} (the same key appears again in its tar; sample {sample.duplicate_of} was kept)")


def _parse_label(raw: bytes | None, source_id: str) -> int:
    if raw is None:
        raise SourceError(f"webdataset sample {source_id} has no label member; check source.label_key")
    text = raw.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise SourceError(f"webdataset sample {source_id}: label {text[:20]!r} is not an integer") from None
    if isinstance(value, dict):
        value = value.get("label")
    if not isinstance(value, int):
        raise SourceError(f"webdataset sample {source_id}: label {text[:20]!r} is not an integer")
    return value


def _open(shard: Path, member: tarfile.TarInfo | None):  # -> PIL.Image.Image
    from PIL import Image

    if member is None:
        raise ValueError("no image member")
    return Image.open(io.BytesIO(_read_member(shard, member)))
