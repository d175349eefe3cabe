"""Sources and decoding, on real data built in tmp_path (plus scikit-learn's bundled digits).

No network: the Hugging Face data set is a local parquet directory, the WebDataset shards are
local tar files, and every image is made here with PIL / numpy.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import BLUE, GREEN, RED, make_source, png_bytes, solid, write_shard
from PIL import Image

from builder.build import read_unit
from builder.build.units import WorkUnit
from builder.errors import RecipeError, SourceError
from builder.sources import decode
from builder.sources.base import check_label
from builder.sources.decode import SampleRejected, load_rgb
from builder.sources.webdataset_source import shard_labels

YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)


# ----------------------------------------------------------------------------- helpers


def from_bytes(data: bytes):
    return lambda: Image.open(io.BytesIO(data))


def assert_solid(array: np.ndarray, color, size: int) -> None:
    assert array.dtype == np.uint8
    assert array.shape == (size, size, 3)
    expected = np.broadcast_to(np.asarray(color, dtype=np.uint8), (size, size, 3))
    np.testing.assert_array_equal(array, expected)


def snapshot(directory: Path) -> set[str]:
    """Every path below ``directory`` (relative), to detect stray writes."""
    return {os.path.relpath(os.path.join(root, name), directory) for root, dirs, files in os.walk(directory) for name in dirs + files}


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming ``width x height`` RGB pixels, with no real data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- 1. sklearn-digits


def test_digits_test_split_matches_sklearn(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    source = make_source({"kind": "sklearn-digits", "split": "test"}, tmp_path)
    assert len(source) == 450
    assert source.class_names == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    data = load_digits()
    items = list(source.items(0, 10_000))
    assert [item.index for item in items] == list(range(450))
    np.testing.assert_array_equal([item.label for item in items], data.target[::4])
    assert [item.source_id for item in items[:3]] == ["digits/0", "digits/4", "digits/8"]
    assert items[-1].source_id == "digits/1796"

    # the image is sklearn's 8x8 digit scaled 0..16 -> 0..255, grey -> RGB, upsampled to 16
    raw = items[1].load()
    assert raw.mode == "L" and raw.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(raw), np.round(data.images[4] * 255 / 16).astype(np.uint8))
    array = load_rgb(items[1].load, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array[..., 0], array[..., 1])
    np.testing.assert_array_equal(array[..., 0], array[..., 2])
    assert array.max() > 200 and array.min() == 0


def test_digits_train_and_all_splits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    train = make_source({"kind": "sklearn-digits", "split": "train"}, tmp_path)
    assert len(train) == 1347
    target = load_digits().target
    mask = np.arange(len(target)) % 4 != 0
    np.testing.assert_array_equal([item.label for item in train.items(0, 1347)], target[mask])
    assert len(make_source({"kind": "sklearn-digits", "split": "all"}, tmp_path)) == 1797
    # open_source(split=...) overrides the config's split
    assert len(make_source({"kind": "sklearn-digits", "split": "test"}, tmp_path, split="train")) == 1347


def test_digits_items_window_is_clamped(tmp_path: Path) -> None:
    source = make_source({"kind": "sklearn-digits"}, tmp_path)
    assert [item.index for item in source.items(447, 1000)] == [447, 448, 449]
    assert list(source.items(450, 460)) == []
    assert [item.source_id for item in source.items(2, 4)] == ["digits/8", "digits/12"]


def test_digits_matching_class_names_accepted(tmp_path: Path) -> None:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    source = make_source({"kind": "sklearn-digits", "class_names": names}, tmp_path)
    assert source.class_names == tuple(names)


@pytest.mark.parametrize(
    ("names", "index"),
    [
        (["zero", "uno", "two", "three", "four", "five", "six", "seven", "eight", "nine"], 1),
        (["zero", "one", "two"], 3),  # a prefix: differs where the shorter list ends
        (["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], 0),
    ],
)
def test_digits_disagreeing_class_names(tmp_path: Path, names: list[str], index: int) -> None:
    with pytest.raises(SourceError, match=rf"at index {index} \({len(names)} declared vs 10 found\)"):
        make_source({"kind": "sklearn-digits", "class_names": names}, tmp_path)


def test_read_unit_on_digits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    source = make_source({"kind": "sklearn-digits"}, tmp_path)
    unit = read_unit(source, WorkUnit(1, 5, 10, 3), 16, source.class_names)
    assert unit.pixels.shape == (5, 16, 16, 3) and unit.pixels.dtype == np.uint8
    np.testing.assert_array_equal(unit.labels, load_digits().target[20:40:4])
    assert unit.labels.dtype == np.int64
    assert unit.indices == [5, 6, 7, 8, 9]
    assert unit.source_ids == ["digits/20", "digits/24", "digits/28", "digits/32", "digits/36"]
    assert unit.rejects == []
    np.testing.assert_array_equal(unit.pixels[0], load_rgb(next(source.items(5, 6)).load, 16))


def test_read_unit_label_outside_given_classes(tmp_path: Path) -> None:
    source = make_source({"kind": "sklearn-digits"}, tmp_path)
    # digits/0 is a 0, digits/4 is a 4: with three classes the second one is out of range
    with pytest.raises(SourceError, match=r"sample digits/4: label 4 is outside the 3 classes"):
        read_unit(source, WorkUnit(0, 0, 2, 1), 16, ("zero", "one", "two"))


# ----------------------------------------------------------------------------- 2. imagefolder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "sub").mkdir(parents=True)
    solid(RED, (10, 6)).save(root / "cat" / "a.png")
    solid(GREEN, (5, 9)).save(root / "cat" / "b.PNG")  # upper-case suffix still counts
    (root / "cat" / "notes.txt").write_text("not an image")
    solid(BLUE).save(root / "dog" / "c.png")
    solid(YELLOW).save(root / "dog" / "sub" / "d.png")  # nested files belong to the class
    (root / "dog" / "broken.png").write_bytes(b"this is not a png at all" * 10)
    (root / "readme.md").write_text("a file at the root is not a class")
    (root / ".hidden").mkdir()
    solid(RED).save(root / ".hidden" / "x.png")
    return root


def test_imagefolder_lists_classes_labels_and_ids(folder: Path, tmp_path: Path) -> None:
    source = make_source({"kind": "imagefolder", "path": str(folder)}, tmp_path)
    assert source.class_names == ("cat", "dog")
    assert len(source) == 5
    items = list(source.items(0, 100))
    assert [item.index for item in items] == [0, 1, 2, 3, 4]
    assert [item.source_id for item in items] == ["cat/a.png", "cat/b.PNG", "dog/broken.png", "dog/c.png", "dog/sub/d.png"]
    assert [item.label for item in items] == [0, 0, 1, 1, 1]
    colors = {"cat/a.png": RED, "cat/b.PNG": GREEN, "dog/c.png": BLUE, "dog/sub/d.png": YELLOW}
    for item in items:
        if item.source_id in colors:
            assert_solid(load_rgb(item.load, 8), colors[item.source_id], 8)


def test_imagefolder_relative_path_and_window(folder: Path, tmp_path: Path) -> None:
    source = make_source({"kind": "imagefolder", "path": "images"}, tmp_path)  # relative to base_dir
    assert [item.source_id for item in source.items(3, 10)] == ["dog/c.png", "dog/sub/d.png"]
    assert [item.index for item in source.items(3, 10)] == [3, 4]


def test_imagefolder_broken_file_is_listed_but_rejected(folder: Path, tmp_path: Path) -> None:
    source = make_source({"kind": "imagefolder", "path": str(folder)}, tmp_path)
    broken = next(item for item in source.items(0, 100) if item.source_id == "dog/broken.png")
    with pytest.raises(SampleRejected, match=r"not a readable image \(UnidentifiedImageError\)"):
        load_rgb(broken.load, 8)

    unit = read_unit(source, WorkUnit(0, 0, 5, 1), 8, source.class_names)
    assert unit.indices == [0, 1, 3, 4]
    assert unit.source_ids == ["cat/a.png", "cat/b.PNG", "dog/c.png", "dog/sub/d.png"]
    np.testing.assert_array_equal(unit.labels, [0, 0, 1, 1])
    assert unit.pixels.shape == (4, 8, 8, 3)
    assert_solid(unit.pixels[2], BLUE, 8)
    assert len(unit.rejects) == 1
    assert unit.rejects[0]["index"] == 2 and unit.rejects[0]["source_id"] == "dog/broken.png"
    assert "not a readable image" in unit.rejects[0]["reason"]


def test_imagefolder_extensions_filter(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"class folder 'dog' .* has no image file \(\.txt\)"):  # dog has no .txt
        make_source({"kind": "imagefolder", "path": str(folder), "extensions": [".txt"]}, tmp_path)
    source = make_source({"kind": "imagefolder", "path": str(folder), "extensions": [".txt"], "class_names": ["cat", "dog"]}, tmp_path)
    assert [item.source_id for item in source.items(0, 10)] == ["cat/notes.txt"]


def test_imagefolder_class_names_must_agree(folder: Path, tmp_path: Path) -> None:
    assert make_source({"kind": "imagefolder", "path": str(folder), "class_names": ["cat", "dog"]}, tmp_path).class_names == ("cat", "dog")
    with pytest.raises(SourceError, match="at index 0"):
        make_source({"kind": "imagefolder", "path": str(folder), "class_names": ["dog", "cat"]}, tmp_path)


def test_imagefolder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nowhere is not a directory"):
        make_source({"kind": "imagefolder", "path": str(tmp_path / "nowhere")}, tmp_path)


def test_imagefolder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    solid(RED).save(tmp_path / "flat" / "a.png")
    with pytest.raises(SourceError, match="no class sub-folders"):
        make_source({"kind": "imagefolder", "path": str(tmp_path / "flat")}, tmp_path)


def test_imagefolder_with_only_empty_classes_is_empty(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(SourceError, match="class folder 'cat' .* has no image file"):
        make_source({"kind": "imagefolder", "path": str(tmp_path / "empty")}, tmp_path)
    with pytest.raises(SourceError, match="source imagefolder is empty"):  # a declared class may be empty
        make_source({"kind": "imagefolder", "path": str(tmp_path / "empty"), "class_names": ["cat"]}, tmp_path)


# ----------------------------------------------------------------------------- 3. huggingface


@pytest.fixture
def hf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    images = [solid(RED, (6, 4)), solid(GREEN, (4, 6)), solid(BLUE, (5, 5)), solid(128, (5, 5), mode="L")]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["ant", "bee", "cow"])})
    table = datasets.Dataset.from_dict({"image": images, "label": [2, 0, 1, 2]}, features=features)
    root = tmp_path / "hf"
    (root / "data").mkdir(parents=True)
    # "<split>-NNNNN-of-NNNNN.parquet" is how load_dataset(dir) recognises the split
    table.to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_huggingface_local_parquet(hf_dir: Path, tmp_path: Path) -> None:
    source = make_source({"kind": "huggingface", "path": str(hf_dir), "split": "test"}, tmp_path)
    assert source.class_names == ("ant", "bee", "cow")
    assert len(source) == 4
    items = list(source.items(0, 100))
    assert [item.index for item in items] == [0, 1, 2, 3]
    assert [item.label for item in items] == [2, 0, 1, 2]
    assert [item.source_id for item in items] == [f"{hf_dir}/{i}" for i in range(4)]
    for item, color in zip(items, [RED, GREEN, BLUE, (128, 128, 128)], strict=False):
        assert_solid(load_rgb(item.load, 4), color, 4)
    assert [item.index for item in source.items(1, 3)] == [1, 2]
    assert list(source.items(4, 9)) == []


def test_a_folder_with_a_metadata_csv_is_a_huggingface_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's way to bring a list of (image file, label) rows: datasets' ImageFolder builder
    reads metadata.csv beside the images; integer labels name source.class_names."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    root = tmp_path / "my_test_set"
    root.mkdir()
    rows = [("a.png", RED, 0), ("b.png", BLUE, 2), ("c.png", GREEN, 1)]
    for name, color, _ in rows:
        solid(color, (5, 5)).save(root / name)
    (root / "metadata.csv").write_text("file_name,label\n" + "".join(f"{name},{label}\n" for name, _, label in rows))
    source = make_source({"kind": "huggingface", "path": str(root), "split": "train", "class_names": ["red", "green", "blue"]}, tmp_path)
    items = list(source.items(0, 9))
    assert [item.label for item in items] == [0, 2, 1] and source.class_names == ("red", "green", "blue")
    for item, (_, color, _) in zip(items, rows, strict=True):
        assert_solid(load_rgb(item.load, 4), color, 4)


def test_huggingface_wrong_image_column(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no column 'picture'; columns: image, label"):
        make_source({"kind": "huggingface", "path": str(hf_dir), "image_column": "picture"}, tmp_path)


def test_huggingface_wrong_label_column(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no column 'target'; columns: image, label"):
        make_source({"kind": "huggingface", "path": str(hf_dir), "label_column": "target"}, tmp_path)


def test_huggingface_unknown_split(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"split 'train'.*Unknown split"):
        make_source({"kind": "huggingface", "path": str(hf_dir), "split": "train"}, tmp_path)


def test_huggingface_class_names_must_agree(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"at index 1 \(3 declared vs 3 found\)"):
        make_source({"kind": "huggingface", "path": str(hf_dir), "class_names": ["ant", "bat", "cow"]}, tmp_path)


def test_huggingface_plain_int_labels_need_class_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    table = datasets.Dataset.from_dict({"image": [solid(RED), solid(BLUE)], "label": [1, 0]}, features=features)
    (tmp_path / "plain" / "data").mkdir(parents=True)
    table.to_parquet(str(tmp_path / "plain" / "data" / "test-00000-of-00001.parquet"))
    with pytest.raises(SourceError, match="is not a ClassLabel; set source.class_names"):
        make_source({"kind": "huggingface", "path": str(tmp_path / "plain")}, tmp_path)
    source = make_source({"kind": "huggingface", "path": str(tmp_path / "plain"), "class_names": ["p", "q"]}, tmp_path)
    assert source.class_names == ("p", "q")
    assert [item.label for item in source.items(0, 2)] == [1, 0]
    assert_solid(load_rgb(next(source.items(0, 1)).load, 3), RED, 3)


# ----------------------------------------------------------------------------- 4. webdataset


def wds(tmp_path: Path, urls, **extra):
    return make_source({"kind": "webdataset", "urls": urls, "class_names": ["a", "b"], **extra}, tmp_path)


def test_webdataset_single_shard(tmp_path: Path) -> None:
    shard = tmp_path / "shard.tar"
    write_shard(shard, [("s2", RED, 1), ("s0", GREEN, 0), ("s1", BLUE, 1)])
    source = wds(tmp_path, str(shard))
    assert source.class_names == ("a", "b")
    assert len(source) == 3
    items = list(source.items(0, 10))
    assert [item.source_id for item in items] == ["shard.tar/s2", "shard.tar/s0", "shard.tar/s1"]  # tar order
    assert [item.label for item in items] == [1, 0, 1]
    for item, color in zip(items, [RED, GREEN, BLUE], strict=False):
        assert_solid(load_rgb(item.load, 4), color, 4)
    assert [item.source_id for item in source.items(1, 2)] == ["shard.tar/s0"]
    # a relative url is relative to base_dir
    assert len(wds(tmp_path, "shard.tar")) == 3


def test_webdataset_compressed_shard_is_read_once_front_to_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sample of a .tar.gz used to reopen the shard and inflate it from its start up to its
    member: a unit's read was quadratic in the shard's size. Read as a build reads it, the gzip
    stream is opened once for indexing and once for the unit, and inflates each byte once."""
    import gzip

    shard = tmp_path / "many.tar.gz"
    plain = tmp_path / "many.tar"
    colors = [RED, GREEN, BLUE]
    write_shard(plain, [(f"k{i:03d}", colors[i % 3], i % 2) for i in range(60)])
    shard.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    source = wds(tmp_path, str(shard))
    inflated, openings = [0], [0]
    real_read, real_init = gzip.GzipFile.read, gzip.GzipFile.__init__

    def counting_read(self, size=-1):  # type: ignore[no-untyped-def]
        data = real_read(self, size)
        inflated[0] += len(data)
        return data

    def counting_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        openings[0] += 1
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    monkeypatch.setattr(gzip.GzipFile, "__init__", counting_init)
    unit = read_unit(source, WorkUnit(0, 0, len(source), 1), 4, ("a", "b"))
    assert len(unit.labels) == 60 and unit.rejects == []
    for position, color in enumerate(unit.pixels):
        assert tuple(color[0, 0]) == colors[position % 3]
    total = len(gzip.decompress(shard.read_bytes()))
    assert openings[0] == 1
    assert inflated[0] <= total
    # out of order and after the iteration ended: each read opens the shard for itself
    last, first = next(source.items(59, 60)), next(source.items(0, 1))
    assert_solid(load_rgb(last.load, 4), colors[59 % 3], 4)
    assert_solid(load_rgb(first.load, 4), RED, 4)


def test_webdataset_glob_over_two_shards(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "shard-1.tar", [("k0", BLUE, 1)])
    write_shard(tmp_path / "shards" / "shard-0.tar", [("k0", RED, 0), ("k1", GREEN, 1)])
    source = wds(tmp_path, str(tmp_path / "shards" / "shard-*.tar"))
    items = list(source.items(0, 10))
    assert [item.source_id for item in items] == ["shard-0.tar/k0", "shard-0.tar/k1", "shard-1.tar/k0"]
    assert [item.label for item in items] == [0, 1, 1]
    for item, color in zip(items, [RED, GREEN, BLUE], strict=False):
        assert_solid(load_rgb(item.load, 4), color, 4)


def test_webdataset_brace_pattern_and_tuple(tmp_path: Path) -> None:
    write_shard(tmp_path / "shard-0.tar", [("k0", RED, 0)])
    write_shard(tmp_path / "shard-1.tar", [("k0", BLUE, 1), ("k1", YELLOW, 0)])
    write_shard(tmp_path / "shard-2.tar", [("k0", GREEN, 0)])  # outside the pattern
    source = wds(tmp_path, str(tmp_path / "shard-{0..1}.tar"))
    assert [item.source_id for item in source.items(0, 10)] == ["shard-0.tar/k0", "shard-1.tar/k0", "shard-1.tar/k1"]
    assert [item.label for item in source.items(0, 10)] == [0, 1, 0]
    assert_solid(load_rgb(next(source.items(2, 3)).load, 4), YELLOW, 4)
    # a list of urls keeps the given order
    listed = wds(tmp_path, ["shard-2.tar", "shard-0.tar"])
    assert [item.source_id for item in listed.items(0, 10)] == ["shard-2.tar/k0", "shard-0.tar/k0"]


def test_webdataset_shards_of_one_file_name_in_two_folders_keep_every_sample(tmp_path: Path) -> None:
    """train/00000.tar and val/00000.tar: sample ids carry the folders below the shared one
    (file names alone would make every sample of the second shard a duplicate of the first)."""
    for split, color in (("train", RED), ("val", BLUE)):
        (tmp_path / "data" / split).mkdir(parents=True)
        write_shard(tmp_path / "data" / split / "00000.tar", [("k0", color, 0), ("k1", color, 1)])
    for urls in (str(tmp_path / "data" / "{train,val}" / "00000.tar"), str(tmp_path / "data" / "*" / "00000.tar"),
                 ["data/train/00000.tar", "data/val/00000.tar"]):
        items = list(wds(tmp_path, urls).items(0, 10))
        assert [item.source_id for item in items] == ["train/00000.tar/k0", "train/00000.tar/k1", "val/00000.tar/k0", "val/00000.tar/k1"]
        for item, color in zip(items, [RED, RED, BLUE, BLUE], strict=True):
            assert_solid(load_rgb(item.load, 4), color, 4)  # none rejected as a duplicate
    assert shard_labels(["a/x.tar", "b/c/x.tar"]) == ["a/x.tar", "b/c/x.tar"]
    assert shard_labels(["s3://bucket/a/x.tar", "s3://bucket/b/x.tar", "s3://bucket/b/y.tar"]) == ["a/x.tar", "b/x.tar", "b/y.tar"]


def test_webdataset_shard_whose_path_holds_a_bracket_is_a_path_not_a_glob(tmp_path: Path) -> None:
    (tmp_path / "data [v2]").mkdir()
    write_shard(tmp_path / "data [v2]" / "shard-0.tar", [("k0", RED, 0)])
    assert [item.source_id for item in wds(tmp_path, "data [v2]/shard-0.tar").items(0, 10)] == ["shard-0.tar/k0"]


def test_webdataset_needs_class_names(tmp_path: Path) -> None:
    write_shard(tmp_path / "shard.tar", [("k0", RED, 0)])
    with pytest.raises(SourceError, match="set source.class_names"):
        make_source({"kind": "webdataset", "urls": str(tmp_path / "shard.tar")}, tmp_path)


def test_webdataset_missing_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "shard-0.tar", [("k0", RED, 0)])
    with pytest.raises(SourceError, match=r"no shard at .*shard-1\.tar"):
        wds(tmp_path, str(tmp_path / "shard-{0..1}.tar"))
    with pytest.raises(SourceError, match=r"no shard at .*nothing-\*\.tar"):
        wds(tmp_path, str(tmp_path / "nothing-*.tar"))


def test_webdataset_not_a_tar(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SourceError, match="cannot read"):
        wds(tmp_path, str(tmp_path / "junk.tar"))


def test_webdataset_label_problems(tmp_path: Path) -> None:
    shard = tmp_path / "odd.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in [
            ("ok.png", png_bytes(solid(RED))),
            ("ok.cls", b"1"),
            ("json.png", png_bytes(solid(BLUE))),
            ("json.cls", b'{"label": 0}'),
            ("nolabel.png", png_bytes(solid(GREEN))),
            ("noimage.cls", b"0"),
            ("text.png", png_bytes(solid(GREEN))),
            ("text.cls", b"cat"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    source = wds(tmp_path, str(shard))
    assert len(source) == 5
    assert [item.label for item in source.items(0, 2)] == [1, 0]
    with pytest.raises(SourceError, match="sample odd.tar/nolabel has no label member"):
        list(source.items(2, 3))
    noimage = next(source.items(3, 4))
    assert noimage.source_id == "odd.tar/noimage" and noimage.label == 0
    with pytest.raises(SampleRejected, match="no image member"):
        load_rgb(noimage.load, 4)
    with pytest.raises(SourceError, match=r"label 'cat' is not an integer"):
        list(source.items(4, 5))


def test_webdataset_path_traversal_member_stays_in_memory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shard = work / "evil.tar"
    with tarfile.open(shard, "w") as tar:
        for name, payload in [
            ("../evil.png", png_bytes(solid(RED))),
            ("../evil.cls", b"1"),
            ("/abs/evil2.png", png_bytes(solid(BLUE))),
            ("/abs/evil2.cls", b"0"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    before_parent = snapshot(tmp_path.parent)
    before_tmp = snapshot(tmp_path)

    source = wds(work, str(shard))
    items = list(source.items(0, 10))
    assert [item.source_id for item in items] == ["evil.tar/../evil", "evil.tar//abs/evil2"]
    assert [item.label for item in items] == [1, 0]
    assert_solid(load_rgb(items[0].load, 4), RED, 4)
    assert_solid(load_rgb(items[1].load, 4), BLUE, 4)

    assert snapshot(tmp_path.parent) == before_parent
    assert snapshot(tmp_path) == before_tmp
    assert not (tmp_path / "evil.png").exists() and not (work.parent / "evil.png").exists()
    assert not Path("/abs/evil2.png").exists()


# ----------------------------------------------------------------------------- 5. decode


def test_decode_grayscale_l() -> None:
    image = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), mode="L").resize((8, 8), Image.Resampling.NEAREST)
    array = load_rgb(from_bytes(png_bytes(image)), 8)
    assert array.shape == (8, 8, 3) and array.dtype == np.uint8
    expected = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], expected)
    assert_solid(load_rgb(from_bytes(png_bytes(solid(77, mode="L"))), 5), (77, 77, 77), 5)


def test_decode_rgba_composites_on_white() -> None:
    pixels = np.zeros((4, 8, 4), dtype=np.uint8)
    pixels[:, :4] = (10, 20, 30, 0)  # fully transparent: colour must not leak
    pixels[:, 4:] = (255, 0, 0, 255)  # opaque red
    array = load_rgb(from_bytes(png_bytes(Image.fromarray(pixels, mode="RGBA"))), 4)
    # 8x4 -> short side 4, no resize; centre crop keeps columns 2..5
    np.testing.assert_array_equal(array[:, :2], np.full((4, 2, 3), 255, dtype=np.uint8))
    np.testing.assert_array_equal(array[:, 2:], np.broadcast_to(np.array(RED, dtype=np.uint8), (4, 2, 3)))
    half = load_rgb(from_bytes(png_bytes(solid((0, 0, 0, 128), mode="RGBA"))), 3)
    assert_solid(half, (127, 127, 127), 3)


def test_decode_la_composites_on_white() -> None:
    assert_solid(load_rgb(from_bytes(png_bytes(solid((0, 0), mode="LA"))), 3), WHITE, 3)


def test_decode_palette() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    assert_solid(load_rgb(from_bytes(png_bytes(image)), 4), (0, 128, 255), 4)


def test_decode_palette_with_transparency_is_white() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    data = png_bytes(image, transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert_solid(load_rgb(from_bytes(data), 4), WHITE, 4)


def test_decode_cmyk() -> None:
    image = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no black, full magenta + yellow = red
    data = png_bytes(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_solid(load_rgb(from_bytes(data), 4), RED, 4)


def test_decode_16bit_png_full_range() -> None:
    values = np.array([[0, 65535], [65535, 0]], dtype=np.uint16)
    data = png_bytes(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    array = load_rgb(from_bytes(data), 2)
    assert array.shape == (2, 2, 3) and array.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], [[0, 255], [255, 0]])


def test_decode_16bit_png_keeps_absolute_brightness() -> None:
    data = png_bytes(Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert_solid(load_rgb(from_bytes(data), 2), (128, 128, 128), 2)


def test_decode_exif_rotated_jpeg_is_upright() -> None:
    # upright: 48 wide x 32 tall, top half red, bottom half blue
    upright = np.zeros((32, 48, 3), dtype=np.uint8)
    upright[:16] = RED
    upright[16:] = BLUE
    # orientation 6 = "rotate 90 degrees clockwise to display": store it turned the other way
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = png_bytes(stored, "JPEG", quality=95, exif=exif.tobytes())
    plain = png_bytes(stored, "JPEG", quality=95)

    array = load_rgb(from_bytes(rotated), 16).astype(int)
    assert array.shape == (16, 16, 3)
    # top rows red, bottom rows blue (JPEG: allow a small error away from the edge)
    assert np.abs(array[:6] - np.array(RED)).max() <= 12
    assert np.abs(array[10:] - np.array(BLUE)).max() <= 12

    # control: without the EXIF tag the same pixels come out split left/right, not top/bottom
    control = load_rgb(from_bytes(plain), 16).astype(int)
    assert np.abs(control[:, :6] - control[:, 10:]).max() > 200
    assert np.abs(control[:6] - control[10:]).max() <= 24


def test_decode_one_pixel_image() -> None:
    assert_solid(load_rgb(from_bytes(png_bytes(solid((12, 34, 56), (1, 1)))), 7), (12, 34, 56), 7)


def test_decode_non_square_is_resized_and_centre_cropped() -> None:
    pixels = np.zeros((4, 12, 3), dtype=np.uint8)
    pixels[:, :4] = RED
    pixels[:, 4:8] = GREEN
    pixels[:, 8:] = BLUE
    image = Image.fromarray(pixels).resize((24, 8), Image.Resampling.NEAREST)
    array = load_rgb(from_bytes(png_bytes(image)), 8)  # short side already 8: pure centre crop
    assert_solid(array, GREEN, 8)


def test_decode_truncated_png() -> None:
    data = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)))
    with pytest.raises(SampleRejected, match="corrupt image"):
        load_rgb(from_bytes(data[: len(data) // 2]), 8)


def test_decode_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(SampleRejected, match=r"not a readable image \(UnidentifiedImageError\)"):
        load_rgb(lambda: Image.open(empty), 8)


def test_decode_loader_errors_become_rejections() -> None:
    def missing():
        raise FileNotFoundError("gone")

    with pytest.raises(SampleRejected, match=r"corrupt image \(gone\)"):
        load_rgb(missing, 8)
    with pytest.raises(SampleRejected, match=r"corrupt image \(empty image cell\)"):
        from builder.sources.huggingface import _open_encoded

        load_rgb(lambda: _open_encoded({"bytes": None, "path": None}), 8)


def test_decode_pixel_limit_monkeypatched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "MAX_PIXELS", 100)
    with pytest.raises(SampleRejected, match=r"image of 11x10 pixels exceeds the 100 pixel limit"):
        load_rgb(from_bytes(png_bytes(solid(RED, (11, 10)))), 4)
    assert_solid(load_rgb(from_bytes(png_bytes(solid(RED, (10, 10)))), 4), RED, 4)


@pytest.mark.parametrize("size", [(10_000, 9_000), (20_000, 20_000)])
def test_decode_huge_header_is_rejected_without_decoding(size: tuple[int, int]) -> None:
    width, height = size
    assert width * height > decode.MAX_PIXELS
    with pytest.raises(SampleRejected):
        load_rgb(from_bytes(png_header_only(width, height)), 4)


@pytest.mark.parametrize("size", [(10_000, 9_000), (20_000, 20_000)])
def test_decode_huge_header_reason_names_pixel_limit(size: tuple[int, int]) -> None:
    width, height = size
    with pytest.raises(SampleRejected, match="pixel limit"):
        load_rgb(from_bytes(png_header_only(width, height)), 4)


# ----------------------------------------------------------------------------- 6. check_label


def test_check_label() -> None:
    names = ("a", "b", "c")
    assert check_label(0, names, "x/0") == 0
    assert check_label(2, names, "x/2") == 2
    with pytest.raises(SourceError, match=r"sample shard-0\.tar/k7: label 3 is outside the 3 classes"):
        check_label(3, names, "shard-0.tar/k7")
    with pytest.raises(SourceError, match=r"sample img/neg\.png: label -1 is outside the 3 classes"):
        check_label(-1, names, "img/neg.png")


def test_class_ranges_keep_and_relabel_samples(tmp_path: Path) -> None:
    """Restricted-ImageNet style super-classes over digits: 0-2 'low', 7-9 'high', the rest dropped."""
    ranges = {"low": [[0, 2]], "high": [[7, 9]]}
    full = make_source({"kind": "sklearn-digits"}, tmp_path)
    source = make_source({"kind": "sklearn-digits", "class_ranges": ranges}, tmp_path)
    assert source.class_names == ("low", "high")
    expected = [(item.source_id, 0 if item.label <= 2 else 1) for item in full.items(0, len(full)) if item.label in (0, 1, 2, 7, 8, 9)]
    items = list(source.items(0, len(source)))
    assert len(source) == len(expected) and [(i.source_id, i.label) for i in items] == expected
    assert [i.index for i in items] == list(range(len(items)))
    assert [i.source_id for i in source.items(5, 9)] == [s for s, _ in expected[5:9]]


def test_class_ranges_beyond_the_classes_or_overlapping(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="class_ranges reach index 12 but it has 10 classes"):
        make_source({"kind": "sklearn-digits", "class_ranges": {"a": [[0, 12]]}}, tmp_path)
    with pytest.raises(RecipeError, match="'b' overlaps 'a' in \\[2, 3\\]"):
        make_source({"kind": "sklearn-digits", "class_ranges": {"a": [[0, 2]], "b": [[2, 3]]}}, tmp_path)


def test_webdataset_duplicate_source_ids_are_rejected_not_merged(tmp_path: Path) -> None:
    """A key written twice in a tar is two samples; the second is skipped with its reason, and
    a read_unit over them puts it in the rejects. A shard listed twice is a one-line error."""
    shard = tmp_path / "dup.tar"
    write_shard(shard, [("k0", RED, 0), ("k1", GREEN, 1), ("k0", BLUE, 1)])
    source = wds(tmp_path, str(shard))
    assert [item.source_id for item in source.items(0, 10)] == ["dup.tar/k0", "dup.tar/k1", "dup.tar/k0"]
    assert_solid(load_rgb(next(source.items(0, 1)).load, 4), RED, 4)  # the first copy is untouched
    unit = read_unit(source, WorkUnit(0, 0, 3, 1), 4, source.class_names)
    assert unit.source_ids == ["dup.tar/k0", "dup.tar/k1"]
    assert unit.rejects == [{"index": 2, "source_id": "dup.tar/k0", "reason": unit.rejects[0]["reason"]}]
    assert "duplicate source id dup.tar/k0" in unit.rejects[0]["reason"] and "sample 0 was kept" in unit.rejects[0]["reason"]
    with pytest.raises(SourceError, match="dup.tar is listed twice in source.urls"):
        wds(tmp_path, [str(shard), "dup.tar"])


def test_every_kinds_listing_names_the_samples_items_give(hf_dir: Path, tmp_path: Path) -> None:
    """A source's ``listing`` (what a resume compares, read without image bytes) lists the ids
    and labels its items give, in order, for every kind and through class_ranges."""
    from builder.sources.base import listing_digest

    folder = tmp_path / "folder"
    for name, color in (("red", RED), ("green", GREEN)):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            solid(color, (4, 4)).save(folder / name / f"{i}.png")
    write_shard(tmp_path / "shard.tar", [(f"s{i}", RED, i % 2) for i in range(3)])
    sources = {
        "huggingface": make_source({"kind": "huggingface", "path": str(hf_dir), "split": "test"}, tmp_path),
        "huggingface ranges": make_source({"kind": "huggingface", "path": str(hf_dir), "split": "test",
                                           "class_ranges": {"bugs": [[0, 1]], "cattle": [[2, 2]]}}, tmp_path),
        "imagefolder": make_source({"kind": "imagefolder", "path": str(folder)}, tmp_path),
        "webdataset": make_source({"kind": "webdataset", "urls": str(tmp_path / "shard.tar"), "class_names": ["a", "b"]}, tmp_path),
        "sklearn-digits": make_source({"kind": "sklearn-digits"}, tmp_path),
    }
    for kind, source in sources.items():
        used = min(len(source), 3)
        listed = source.listing(used) if hasattr(source, "listing") else None
        items = [[item.source_id, item.label] for item in source.items(0, used)]
        if listed is not None:
            assert [row[:2] for row in listed] == items, kind
        assert listing_digest(source, used) != listing_digest(source, used - 1), kind
    assert sources["huggingface ranges"].listing(4) == [[f"{hf_dir}/{i}", label] for i, label in enumerate([1, 0, 0, 1])]
