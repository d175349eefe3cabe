"""Shard writers: one contract for every registered writer, plus read-back through the real readers.

* contract (every entry of ``WRITERS``): the file appears under its final name, no temp file
  is left, the same samples give the same bytes, a failing write leaves nothing behind;
* Parquet: ``datasets.load_dataset`` on a directory with a card header from
  ``builder.card.card_header`` types the columns (ClassLabel, Image) and returns the exact
  pixels and records, also when streaming;
* WebDataset: ``webdataset.WebDataset`` and ``load_dataset("webdataset")`` read the tars.

Everything is local (offline, private ``datasets`` cache under ``tmp_path``).
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from builder import fileio
from builder.card import card_header, render_card
from builder.fileio import sha256_file
from builder.images import decode_image, encode_image
from builder.writers import WRITERS, OutputSample, ShardSchema
from builder.writers.base import RECORD_FIELDS

CLASS_NAMES = ("zero", "one", "two")
NUM_SAMPLES = 7
IMAGE_SIZE = 16
SPLIT = "test"
CONFIG = "cfg"
FLOAT_FIELDS = [name for name, dtype in RECORD_FIELDS if dtype == "float32"]
EXACT_FIELDS = [name for name, _ in RECORD_FIELDS if name not in FLOAT_FIELDS]


# --------------------------------------------------------------------------- helpers


def make_samples(
    image_format: str = "png", *, n: int = NUM_SAMPLES, seed: int = 0, with_originals: bool = True
) -> tuple[list[OutputSample], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``n`` samples in shuffled key order, and key -> (final pixels, original pixels)."""
    rng = np.random.default_rng(seed)
    indices = sorted(int(i) for i in rng.choice(1000, size=n, replace=False))
    samples, pixels = [], {}
    for position, index in enumerate(indices):
        key = f"{index:08d}"
        final = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        original = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        label = position % len(CLASS_NAMES)
        record = {
            "key": key,
            "label": label,
            "class_name": CLASS_NAMES[label],
            "source_id": f"digits/{index}",
            "reference_model": CONFIG,
            "perturbed": position % 2 == 0,
            "steps": position * 3,
            "stop_reason": "budget" if position % 2 == 0 else "oracle_rejected",
            "oracle_prob": round(float(rng.random()), 6),
            "pred_before": label,
            "loss_before": round(float(rng.random() * 3), 6),
            "pred_after": (label + 1) % len(CLASS_NAMES),
            "loss_after": round(float(rng.random() * 5), 6),
        }
        assert set(record) == {name for name, _ in RECORD_FIELDS}
        original_bytes = encode_image(original, image_format) if with_originals else None
        samples.append(OutputSample(key, encode_image(final, image_format), original_bytes, record))
        pixels[key] = (final, original)
    random.Random(seed).shuffle(samples)
    assert [s.key for s in samples] != sorted(s.key for s in samples), "samples must be given out of order"
    return samples, pixels


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def pil_pixels(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def assert_record_equal(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for name in EXACT_FIELDS:
        assert actual[name] == expected[name], name
        assert type(actual[name]) is type(expected[name]), name
    for name in FLOAT_FIELDS:
        assert actual[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-7), name


def make_manifest(shard_paths: list[Path], root: Path, num_samples: int) -> dict[str, Any]:
    """A minimal manifest with the layout of ``Builder._manifest``: each Parquet shard, and the
    tar beside it when there is one."""

    def entry(path: Path) -> dict[str, Any]:
        return {"path": path.relative_to(root).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}

    shards = [
        {"unit": i, "files": {"parquet": entry(p), **({"webdataset": entry(p.with_suffix(".tar"))} if p.with_suffix(".tar").is_file() else {})}}
        for i, p in enumerate(shard_paths)
    ]
    return {
        "format": 1,
        "tool": {"name": "fmr-builder", "version": "0.0.0-test"},
        "recipe": {
            "name": "tiny-digits",
            "license": "cc-by-4.0",
            "description": "A tiny test benchmark.",
            "generator": {"kind": "identity"},
            "oracle": {"kind": "constant"},
            "perturbation": {"step_size": 0.1, "budget": 5, "direction": "loss"},
            "image_size": IMAGE_SIZE,
            "source": {"kind": "sklearn-digits"},
            "source_citation": "",
        },
        "seed": 0,
        "device": "cpu",
        "split": SPLIT,
        "class_names": list(CLASS_NAMES),
        "num_rejects": 0,
        "id": "0" * 64,
        "configs": {
            CONFIG: {
                "reference_model": {"model": "tiny-cnn"},
                "num_samples": num_samples,
                "num_perturbed": 4,
                "perturbed_share": 4 / num_samples,
                "mean_steps": 9.0,
                "sa": 0.8,
                "pa": 0.4,
                "pa_all": 0.5,
                "fmr": 62.5,
                "shards": shards,
            }
        },
    }


@pytest.fixture
def hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network, and a private ``datasets`` cache; returns the cache dir to pass on.
    huggingface_hub reads HF_HUB_OFFLINE once, when imported: imported first here, with the
    variable set, it would stay offline for every later test of the process."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf-cache"
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(cache),
    }.items():
        monkeypatch.setenv(name, value)
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache, raising=False)
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", tmp_path / "hf-modules", raising=False)
    return cache


WRITER_NAMES = WRITERS.names()


# --------------------------------------------------------------------------- registry / images


def test_registry_lists_both_formats() -> None:
    assert {"parquet", "webdataset"} <= set(WRITER_NAMES)
    assert [entry.name for entry in WRITERS] == WRITER_NAMES
    for entry in WRITERS:
        writer = entry.factory()
        assert writer.suffix.startswith(".")
        assert callable(writer.write)


@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_encode_image_is_lossless_and_deterministic(image_format: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    data = encode_image(pixels, image_format)
    assert data == encode_image(pixels.copy(), image_format)
    np.testing.assert_array_equal(decode_image(data), pixels)


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("keep_originals", [True, False], ids=["originals", "no-originals"])
@pytest.mark.parametrize("image_format", ["png", "webp"])
@pytest.mark.parametrize("writer_name", WRITER_NAMES)
def test_writer_contract(tmp_path: Path, writer_name: str, image_format: str, keep_originals: bool) -> None:
    writer = WRITERS.get(writer_name)()
    schema = ShardSchema(CLASS_NAMES, image_format, keep_originals)
    samples, _ = make_samples(image_format)
    name = f"test-00000-of-00001{writer.suffix}"

    first_dir = tmp_path / "a" / "nested"  # the writer creates missing parents
    path = first_dir / name
    writer.write(path, samples, schema)
    assert path.is_file() and path.stat().st_size > 0
    assert temp_files(first_dir) == []
    assert [p.name for p in first_dir.iterdir()] == [name]
    first = path.read_bytes()

    # same samples, same path: same bytes (and overwriting an existing shard works)
    writer.write(path, samples, schema)
    assert path.read_bytes() == first
    assert temp_files(first_dir) == []

    # same samples in another order, another directory: still the same bytes
    second_dir = tmp_path / "b"
    writer.write(second_dir / name, list(reversed(samples)), schema)
    assert (second_dir / name).read_bytes() == first
    assert temp_files(second_dir) == []

    # the content depends on the samples
    other, _ = make_samples(image_format, seed=1)
    writer.write(tmp_path / "c" / name, other, schema)
    assert (tmp_path / "c" / name).read_bytes() != first


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("writer_name", WRITER_NAMES)
def test_bad_sample_leaves_nothing(tmp_path: Path, writer_name: str) -> None:
    """A sample whose image is not bytes, sorted last so earlier samples are already written."""
    writer = WRITERS.get(writer_name)()
    schema = ShardSchema(CLASS_NAMES, "png", True)
    samples, _ = make_samples()
    last = max(samples, key=lambda s: s.key)
    bad = OutputSample(last.key, 12345, last.original, last.record)  # type: ignore[arg-type]
    samples = [bad if s is last else s for s in samples]
    path = tmp_path / f"test-00000-of-00001{writer.suffix}"
    with pytest.raises((TypeError, ValueError)):  # whatever the format's encoder raises for a non-bytes image
        writer.write(path, samples, schema)
    assert not path.exists()
    assert temp_files(tmp_path) == []


def test_webdataset_writer_closes_its_tar_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import webdataset as wds

    made: list[Any] = []

    class RecordingTarWriter(wds.TarWriter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(wds, "TarWriter", RecordingTarWriter)
    samples, _ = make_samples()
    last = max(samples, key=lambda s: s.key)
    samples = [OutputSample(s.key, 12345, s.original, s.record) if s is last else s for s in samples]  # type: ignore[arg-type]
    try:
        with pytest.raises(ValueError):
            WRITERS.get("webdataset")().write(tmp_path / "x.tar", samples, ShardSchema(CLASS_NAMES, "png", True))
        assert len(made) == 1
        assert made[0].tarstream.closed, "TarWriter left open after a failed write"
    finally:
        for writer in made:  # keep _Stream.__del__ from writing to the closed file later
            stream = writer.tarstream.fileobj
            if not getattr(stream, "closed", True):
                stream.closed = True


@pytest.mark.parametrize("writer_name", WRITER_NAMES)
def test_failure_after_data_is_written_leaves_nothing(
    tmp_path: Path, writer_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything written to the temp file, then the final fsync fails: no file under either name."""
    writer = WRITERS.get(writer_name)()
    schema = ShardSchema(CLASS_NAMES, "png", True)
    samples, _ = make_samples()
    path = tmp_path / f"test-00000-of-00001{writer.suffix}"
    seen: list[int] = []

    def failing_fsync(fd: int) -> None:
        import os

        seen.append(os.fstat(fd).st_size)
        raise Boom("disk full")

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        writer.write(path, samples, schema)
    assert seen and seen[0] > 0, "the writer should have gone through atomic_write with data"
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer_name", WRITER_NAMES)
def test_failed_rewrite_keeps_the_previous_shard(
    tmp_path: Path, writer_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = WRITERS.get(writer_name)()
    schema = ShardSchema(CLASS_NAMES, "png", True)
    samples, _ = make_samples()
    path = tmp_path / f"test-00000-of-00001{writer.suffix}"
    writer.write(path, samples, schema)
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise Boom("disk full")

    monkeypatch.setattr(fileio.os, "fsync", failing_fsync)
    other, _ = make_samples(seed=3)
    with pytest.raises(Boom):
        writer.write(path, other, schema)
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []


# --------------------------------------------------------------------------- Parquet read-back


def write_parquet_dataset(root: Path, image_format: str, keep_originals: bool) -> tuple[dict[str, Any], ShardSchema, list[OutputSample], dict]:
    """Two Parquet shards (plus the tars and stats the builder puts beside them) and a README."""
    writer = WRITERS.get("parquet")()
    tars = WRITERS.get("webdataset")()
    schema = ShardSchema(CLASS_NAMES, image_format, keep_originals)
    samples, pixels = make_samples(image_format)
    ordered_keys = sorted(s.key for s in samples)
    halves = [set(ordered_keys[:4]), set(ordered_keys[4:])]
    paths = []
    for index, keys in enumerate(halves):
        stem = f"{SPLIT}-{index:05d}-of-00002"
        shard = [s for s in samples if s.key in keys]  # still shuffled
        path = root / CONFIG / f"{stem}.parquet"
        writer.write(path, shard, schema)
        tars.write(root / CONFIG / f"{stem}.tar", shard, schema)
        fileio.write_json_atomic(root / "_stats" / CONFIG / f"{stem}.json", {"keys": sorted(keys)})
        paths.append(path)
    manifest = make_manifest(paths, root, len(samples))
    header = yaml.safe_dump(card_header(manifest, schema), sort_keys=False, allow_unicode=True)
    (root / "README.md").write_text(f"---\n{header}---\n\n# test\n", encoding="utf-8")
    return manifest, schema, samples, pixels


def check_rows(rows: list[dict[str, Any]], samples: list[OutputSample], pixels: dict, keep_originals: bool) -> None:
    by_key = {s.key: s for s in samples}
    assert [row["key"] for row in rows] == sorted(by_key)
    for row in rows:
        sample = by_key[row["key"]]
        final, original = pixels[row["key"]]
        np.testing.assert_array_equal(pil_pixels(row["image"]), final)
        if keep_originals:
            np.testing.assert_array_equal(pil_pixels(row["original_image"]), original)
        else:
            assert "original_image" not in row
        assert_record_equal({k: row[k] for k, _ in RECORD_FIELDS}, sample.record)


@pytest.mark.parametrize("keep_originals", [True, False], ids=["originals", "no-originals"])
@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_parquet_load_dataset(tmp_path: Path, hf_offline: Path, image_format: str, keep_originals: bool) -> None:
    import datasets
    import PIL.Image

    root = tmp_path / "ds"
    _, schema, samples, pixels = write_parquet_dataset(root, image_format, keep_originals)

    ds = datasets.load_dataset(str(root), name=CONFIG, split=SPLIT, cache_dir=str(hf_offline))
    assert ds.num_rows == NUM_SAMPLES
    label = ds.features["label"]
    assert isinstance(label, datasets.ClassLabel)
    assert label.names == list(CLASS_NAMES)
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features == datasets.Features.from_dict(schema.features())
    expected_columns = ["image"] + (["original_image"] if keep_originals else []) + [n for n, _ in RECORD_FIELDS]
    assert ds.column_names == expected_columns
    rows = list(ds)
    assert all(isinstance(row["image"], PIL.Image.Image) for row in rows)
    check_rows(rows, samples, pixels, keep_originals)
    assert [label.int2str(row["label"]) for row in rows] == [row["class_name"] for row in rows]

    streamed = datasets.load_dataset(str(root), name=CONFIG, split=SPLIT, streaming=True, cache_dir=str(hf_offline))
    assert isinstance(streamed, datasets.IterableDataset)
    assert isinstance(streamed.features["label"], datasets.ClassLabel)
    assert streamed.features["label"].names == list(CLASS_NAMES)
    check_rows(list(streamed), samples, pixels, keep_originals)


def test_parquet_files_alone_carry_the_features(tmp_path: Path, hf_offline: Path) -> None:
    """Without any card, the schema metadata alone types the columns."""
    import datasets

    writer = WRITERS.get("parquet")()
    schema = ShardSchema(CLASS_NAMES, "png", True)
    samples, pixels = make_samples()
    path = tmp_path / "alone" / "test-00000-of-00001.parquet"
    writer.write(path, samples, schema)
    ds = datasets.load_dataset("parquet", data_files={SPLIT: str(path)}, split=SPLIT, cache_dir=str(hf_offline))
    assert ds.features == datasets.Features.from_dict(schema.features())
    check_rows(list(ds), samples, pixels, True)


@pytest.mark.parametrize("keep_originals", [True, False], ids=["originals", "no-originals"])
def test_parquet_columns(tmp_path: Path, keep_originals: bool) -> None:
    import pyarrow.parquet as pq

    schema = ShardSchema(CLASS_NAMES, "png", keep_originals)
    samples, _ = make_samples(with_originals=True)  # originals given, but only kept on request
    path = tmp_path / "test-00000-of-00001.parquet"
    WRITERS.get("parquet")().write(path, samples, schema)
    table = pq.read_table(path)
    names = table.column_names
    assert ("original_image" in names) is keep_originals
    assert names == list(schema.features())
    assert table.column("key").to_pylist() == sorted(s.key for s in samples)
    paths = [cell["path"] for cell in table.column("image").to_pylist()]
    assert paths == [f"{k}.png" for k in sorted(s.key for s in samples)]
    metadata = json.loads(table.schema.metadata[b"huggingface"])
    assert metadata["info"]["features"] == schema.features()


def test_render_card(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    manifest, schema, _, _ = write_parquet_dataset(root, "png", True)
    text = render_card(manifest, schema)
    assert text.startswith("---\n")
    assert CONFIG in text
    assert "tiny-cnn" in text
    _, header, body = text.split("---\n", 2)
    assert yaml.safe_load(header) == card_header(manifest, schema)
    assert "# tiny-digits" in body
    assert f'load_dataset("<this repo or dir>", name="{CONFIG}", split="{SPLIT}")' in body
    # the webdataset brace pattern names exactly the two tar shards
    assert f'wds.WebDataset("{CONFIG}/{SPLIT}-{{00000..00001}}-of-00002.tar", shardshuffle=False)' in body
    assert sorted(p.name for p in (root / CONFIG).glob("*.tar")) == [
        f"{SPLIT}-00000-of-00002.tar",
        f"{SPLIT}-00001-of-00002.tar",
    ]
    header_dict = card_header(manifest, schema)
    assert header_dict["configs"][0]["config_name"] == CONFIG
    assert header_dict["configs"][0]["default"] is True
    info = header_dict["dataset_info"][0]
    assert info["splits"] == [
        {"name": SPLIT, "num_bytes": sum(p.stat().st_size for p in (root / CONFIG).glob("*.parquet")), "num_examples": NUM_SAMPLES}
    ]


def test_rendered_card_loads(tmp_path: Path, hf_offline: Path) -> None:
    """The README the builder writes (render_card) is itself a valid card for load_dataset."""
    import datasets

    root = tmp_path / "ds"
    manifest, schema, samples, pixels = write_parquet_dataset(root, "webp", True)
    (root / "README.md").write_text(render_card(manifest, schema), encoding="utf-8")
    ds = datasets.load_dataset(str(root), name=CONFIG, split=SPLIT, cache_dir=str(hf_offline))
    assert ds.features["label"].names == list(CLASS_NAMES)
    check_rows(list(ds), samples, pixels, True)


# --------------------------------------------------------------------------- WebDataset read-back


def write_tar(tmp_path: Path, image_format: str, keep_originals: bool) -> tuple[Path, list[OutputSample], dict]:
    schema = ShardSchema(CLASS_NAMES, image_format, keep_originals)
    samples, pixels = make_samples(image_format)
    path = tmp_path / CONFIG / f"{SPLIT}-00000-of-00001.tar"
    WRITERS.get("webdataset")().write(path, samples, schema)
    return path, samples, pixels


@pytest.mark.parametrize("keep_originals", [True, False], ids=["originals", "no-originals"])
@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_webdataset_members(tmp_path: Path, image_format: str, keep_originals: bool) -> None:
    path, samples, _ = write_tar(tmp_path, image_format, keep_originals)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    suffixes = ["cls", "json", f"original.{image_format}", image_format] if keep_originals else ["cls", "json", image_format]
    assert names == [f"{key}.{suffix}" for key in sorted(s.key for s in samples) for suffix in sorted(suffixes)]
    for member in members:
        assert member.isfile()
        assert member.mode == 0o444
        assert member.uname == "fmr" and member.gname == "fmr"
        assert int(member.mtime) == 1_577_836_800


@pytest.mark.parametrize("keep_originals", [True, False], ids=["originals", "no-originals"])
@pytest.mark.parametrize("image_format", ["png", "webp"])
def test_webdataset_read_back(tmp_path: Path, image_format: str, keep_originals: bool) -> None:
    import PIL.Image
    import webdataset as wds

    path, samples, pixels = write_tar(tmp_path, image_format, keep_originals)
    by_key = {s.key: s for s in samples}
    read = list(wds.WebDataset(str(path), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in read] == sorted(by_key)
    expected = {image_format, "cls", "json"} | ({f"original.{image_format}"} if keep_originals else set())
    for item in read:
        key = item["__key__"]
        assert {k for k in item if not k.startswith("__")} == expected
        final, original = pixels[key]
        assert isinstance(item[image_format], PIL.Image.Image)
        np.testing.assert_array_equal(pil_pixels(item[image_format]), final)
        if keep_originals:
            np.testing.assert_array_equal(pil_pixels(item[f"original.{image_format}"]), original)
        assert item["cls"] == by_key[key].record["label"]
        assert item["json"] == by_key[key].record


@pytest.mark.parametrize("keep_originals", [True, False], ids=["originals", "no-originals"])
def test_webdataset_load_dataset(tmp_path: Path, hf_offline: Path, keep_originals: bool) -> None:
    import datasets

    path, samples, pixels = write_tar(tmp_path, "png", keep_originals)
    ds = datasets.load_dataset("webdataset", data_files={SPLIT: str(path)}, split=SPLIT, cache_dir=str(hf_offline))
    assert ds.num_rows == len(samples)
    assert ("original.png" in ds.column_names) is keep_originals
    assert {"png", "cls", "json"} <= set(ds.column_names)
    by_key = {s.key: s for s in samples}
    for row in ds:
        key = row["__key__"]
        np.testing.assert_array_equal(pil_pixels(row["png"]), pixels[key][0])
        assert row["cls"] == by_key[key].record["label"]
        assert_record_equal(row["json"], by_key[key].record)
