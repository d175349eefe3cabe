"""Hostile source data: each case ends either as a sample in rejects.jsonl or as one line
``error: ...`` (exit 2) -- never a traceback, a hang, or a sample dropped without a word.

tests/test_sources.py covers hostile images (bombs, truncated files) and tar path traversal;
this file covers broken containers (tar, gzip, folders, Parquet) and hostile labels.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from helpers import BLUE, GREEN, RED, TINY_MODELS, assert_one_line_error, make_source, png_bytes, solid, write_shard

from builder.build import read_unit
from builder.build.units import WorkUnit
from builder.cli import main
from builder.errors import SourceError
from builder.sources.base import SourceItem, SuperclassSource
from builder.sources.decode import SampleRejected, load_rgb

CLASSES = ["blue", "green", "red"]  # the tiny recipe's model has three classes
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- helpers


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def samples(count: int, label: bytes = b"1") -> list[tuple[str, bytes]]:
    """``count`` samples of two members each: s<i>.png and s<i>.cls."""
    image = png_bytes(solid(RED))
    return [member for i in range(count) for member in ((f"s{i}.png", image), (f"s{i}.cls", label))]


def header_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [member.offset for member in tar.getmembers()]


def wds(tmp_path: Path, urls: Any, **extra: Any):
    return make_source({"kind": "webdataset", "urls": urls, "class_names": CLASSES, **extra}, tmp_path)


def one_label(tmp_path: Path, payload: bytes, label_key: str = "cls") -> Any:
    """The source of a one-sample shard whose label member holds ``payload``."""
    shard = tmp_path / "one.tar"
    shard.write_bytes(tar_bytes([("k.png", png_bytes(solid(RED))), (f"k.{label_key}", payload)]))
    return wds(tmp_path, str(shard), label_key=label_key)


def recipe_with(tiny_recipe: Path, source: dict[str, Any]) -> Path:
    data = yaml.safe_load(tiny_recipe.read_text())
    data["source"] = source
    path = tiny_recipe.with_name("hostile.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def build(recipe: Path, out: Path) -> Any:
    return CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", str(out), "--device", "cpu", "--no-progress"], catch_exceptions=False)


def assert_refused(result: Any, out: Path, *fragments: str, untouched: bool = True) -> str:
    """One ``error:`` line holding every fragment, and no output dir (``untouched``) or at
    least no shard and no temp file in it."""
    line = assert_one_line_error(result, *fragments)
    if untouched:
        assert not out.exists(), "an error found when the source is opened must stop the build before it writes anything"
    elif out.exists():
        assert not [p for p in out.rglob("*") if p.suffix in (".parquet", ".tar") or p.name.startswith(".")]
    return line


def assert_built(result: Any, out: Path) -> list[dict[str, Any]]:
    """Exit 0 and no temp file left; returns the rejects."""
    assert result.exit_code == 0, result.output
    assert not [p for p in out.rglob(".*") if p.is_file()]
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text and text.strip() == text, text
    return text


# ----------------------------------------------------------------------------- 1. cut and corrupt tar shards


def test_tar_cut_inside_a_member_header_is_reported_not_dropped(tiny_recipe: Path, tmp_path: Path) -> None:
    """tarfile stops quietly at a short header: the third member (s1.png) and all after it
    used to vanish. Now the cut is one line naming the shard, the byte and the fix."""
    data = tar_bytes(samples(3))
    cut = header_offsets(data)[2] + 7
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    recipe = recipe_with(tiny_recipe, {"kind": "webdataset", "urls": "cut.tar", "class_names": CLASSES})
    out = tmp_path / "out"
    assert_refused(build(recipe, out), out, "cut.tar", f"truncated at byte {cut}", "re-download")


def test_tar_cut_inside_member_data(tmp_path: Path) -> None:
    data = tar_bytes(samples(3))
    cut = header_offsets(data)[4] + 512 + 10  # inside s2.png's data
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / "cut.tar"))
    assert f"cut.tar is truncated at byte {cut}; re-download it" in one_line(error)


def test_tar_with_a_garbage_header_in_the_middle(tmp_path: Path) -> None:
    data = bytearray(tar_bytes(samples(3)))
    third = header_offsets(bytes(data))[2]
    data[third : third + 512] = b"\xab" * 512  # a full block that is no header
    (tmp_path / "garbled.tar").write_bytes(bytes(data))
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / "garbled.tar"))
    assert f"garbled.tar has an unreadable tar header at byte {third}" in one_line(error)


def test_two_tars_joined_are_not_half_read(tmp_path: Path) -> None:
    """`cat a.tar b.tar` reads as a.tar alone everywhere; its second half must not vanish."""
    first = tar_bytes(samples(1))
    (tmp_path / "joined.tar").write_bytes(first + tar_bytes([("t.png", png_bytes(solid(BLUE))), ("t.cls", b"0")]))
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / "joined.tar"))
    assert f"data after its end-of-archive marker, at byte {len(first)}" in one_line(error)


def test_extra_zero_padding_after_a_tar_is_fine(tmp_path: Path) -> None:
    """Control: the zero blocks (and record padding) that end a tar are no truncation."""
    (tmp_path / "padded.tar").write_bytes(tar_bytes(samples(2)) + b"\0" * 70_000)
    source = wds(tmp_path, str(tmp_path / "padded.tar"))
    assert [item.source_id for item in source.items(0, 9)] == ["padded.tar/s0", "padded.tar/s1"]
    write_shard(tmp_path / "written.tar", [("a", RED, 0), ("b", GREEN, 1)])  # webdataset's own writer
    assert len(wds(tmp_path, str(tmp_path / "written.tar"))) == 2


def test_truncated_tar_gz_is_one_line_not_aborted(tiny_recipe: Path, tmp_path: Path) -> None:
    """A cut gzip raised EOFError, which click turns into a bare 'Aborted!'."""
    data = gzip.compress(tar_bytes(samples(4)))
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    recipe = recipe_with(tiny_recipe, {"kind": "webdataset", "urls": "cut.tar.gz", "class_names": CLASSES})
    out = tmp_path / "out"
    assert_refused(build(recipe, out), out, "cut.tar.gz", "truncated", "re-download")


def test_tar_gz_cut_in_its_end_padding(tmp_path: Path) -> None:
    """The cut lies after the last header tarfile reads: only reading to the end finds it."""
    data = gzip.compress(tar_bytes(samples(1)) + b"\0" * 200_000)
    (tmp_path / "cut.tar.gz").write_bytes(data[:-12])
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / "cut.tar.gz"))
    assert "cut.tar.gz is truncated" in one_line(error)


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz"])
def test_corrupt_or_truncated_compressed_shards(tmp_path: Path, suffix: str) -> None:
    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[suffix]
    data = compress(tar_bytes(samples(20)))
    (tmp_path / f"cut.tar.{suffix}").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / f"cut.tar.{suffix}"))
    assert f"cut.tar.{suffix}" in one_line(error) and "re-download" in str(error.value)

    flipped = bytearray(data)
    for i in range(len(flipped) // 3, len(flipped) // 3 + 64):  # garbage in the compressed body
        flipped[i] ^= 0x5A
    (tmp_path / f"bad.tar.{suffix}").write_bytes(bytes(flipped))
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / f"bad.tar.{suffix}"))
    assert f"bad.tar.{suffix}" in one_line(error)


def test_shard_broken_after_indexing_is_one_line_when_read(tmp_path: Path) -> None:
    """The shard was whole when indexed and is cut before its images are read (a second
    download over the first): reading a member later fails as a source error, not as an
    EOFError or a tarfile.ReadError from inside the decoder."""
    shard = tmp_path / "late.tar.gz"
    data = gzip.compress(tar_bytes(samples(6)))
    shard.write_bytes(data)
    source = wds(tmp_path, str(shard))
    shard.write_bytes(data[: len(data) // 3])
    last = next(source.items(5, 6))
    with pytest.raises(SourceError) as error:
        load_rgb(last.load, 4)
    assert "late.tar.gz can no longer be read at member s5.png" in one_line(error)

    plain = tmp_path / "late.tar"
    whole = tar_bytes(samples(3))
    plain.write_bytes(whole)
    source = wds(tmp_path, str(plain))
    plain.write_bytes(whole[: header_offsets(whole)[4] + 512 + 10])  # inside s2.png's data
    with pytest.raises(SourceError, match=r"late.tar can no longer be read at member s2.png \(unexpected end of data\)"):
        load_rgb(next(source.items(2, 3)).load, 4)


# ----------------------------------------------------------------------------- 2. hostile label members


@pytest.mark.parametrize("payload", [b"true", b"false", b'{"label": true}', b"1.0", b"NaN", b"[1]", b'"1"', b"null"])
def test_label_that_is_not_an_integer(tmp_path: Path, payload: bytes) -> None:
    """JSON true is a Python int (bool): it used to become class 1."""
    source = one_label(tmp_path, payload)
    with pytest.raises(SourceError) as error:
        list(source.items(0, 1))
    assert "webdataset sample one.tar/k: label" in one_line(error) and "is not an integer" in str(error.value)


def test_label_of_5000_digits(tmp_path: Path) -> None:
    """Python's int-digit limit raised a ValueError traceback from json.loads."""
    source = one_label(tmp_path, b"7" * 5000)
    with pytest.raises(SourceError) as error:
        list(source.items(0, 1))
    assert "one.tar/k" in one_line(error) and "5000 bytes, not a class index" in str(error.value)
    source = one_label(tmp_path, b"7" * 4000)  # short enough to read: a number far outside the classes
    with pytest.raises(SourceError) as error:
        list(source.items(0, 1))
    assert "is outside the 3 classes" in one_line(error) and len(str(error.value)) < 300


@pytest.mark.parametrize(
    ("label_key", "payload"),
    [("cls", b"[" * 100_000 + b"]" * 100_000), ("json", b"[" * 2000 + b"]" * 2000), ("json", b'{"label":' * 400 + b"1" + b"}" * 400)],
    ids=["100k-deep", "2k-deep-under-the-size-bound", "nested-label-dicts"],
)
def test_deeply_nested_json_label(tmp_path: Path, label_key: str, payload: bytes) -> None:
    """A RecursionError traceback before; the short one (4000 bytes) still goes to the parser."""
    source = one_label(tmp_path, payload, label_key)
    with pytest.raises(SourceError) as error:
        list(source.items(0, 1))
    assert "one.tar/k" in one_line(error)


def test_huge_label_member_is_not_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b" " * 3_000_000 + b"1"
    source = one_label(tmp_path, payload)
    with pytest.raises(SourceError) as error:
        list(source.items(0, 1))
    assert "label member k.cls is 3000001 bytes, not a class index (at most 4096)" in one_line(error)


@pytest.mark.parametrize(("label", "position"), [(b"-1", 2), (b"1000000000000000000", 2), (b'{"label": -3}', 2), (b"-1", 1)])
def test_negative_or_huge_label_stops_the_build(tiny_recipe: Path, tmp_path: Path, label: bytes, position: int) -> None:
    """The last sample is read when the source is fingerprinted, before the output dir is
    claimed; one in the middle stops the build in its first unit, before any shard is written."""
    members = samples(3, b"0")
    members[2 * position + 1] = (f"s{position}.cls", label)
    (tmp_path / "labels.tar").write_bytes(tar_bytes(members))
    recipe = recipe_with(tiny_recipe, {"kind": "webdataset", "urls": "labels.tar", "class_names": CLASSES})
    out = tmp_path / "out"
    assert_refused(build(recipe, out), out, f"labels.tar/s{position}", "is outside the 3 classes", untouched=position == 2)


def test_a_bad_sample_past_the_limit_does_not_stop_the_build(tiny_recipe: Path, tmp_path: Path) -> None:
    """--limit 2 never reads the third sample, so its bad label does not stop the build (the
    source's fingerprint used to read the source's last sample whatever the limit)."""
    members = samples(3, b"0")
    members[5] = ("s2.cls", b"-1")
    (tmp_path / "labels.tar").write_bytes(tar_bytes(members))
    recipe = recipe_with(tiny_recipe, {"kind": "webdataset", "urls": "labels.tar", "class_names": CLASSES})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", str(out), "--device", "cpu", "--no-progress", "--limit", "2"])
    assert_built(result, out)
    assert json.loads((out / "manifest.json").read_text())["configs"]["cnn"]["num_samples"] == 2
    assert_refused(build(recipe, tmp_path / "all"), tmp_path / "all", "labels.tar/s2", "is outside the 3 classes")


def test_out_of_range_label_is_not_dropped_by_class_ranges(tmp_path: Path) -> None:
    """With super-classes, a label outside every range is dropped on purpose; one outside the
    classes must not be dropped with them (it used to vanish without a word)."""
    (tmp_path / "labels.tar").write_bytes(tar_bytes([*samples(2, b"0"), ("bad.png", png_bytes(solid(RED))), ("bad.cls", b"9")]))
    with pytest.raises(SourceError, match="labels.tar/bad: label 9 is outside the 3 classes"):
        wds(tmp_path, str(tmp_path / "labels.tar"), class_ranges={"low": [[0, 1]]})

    class Listed:
        class_names = ("a", "b")

        def __len__(self) -> int:
            return 2

        def labels(self) -> list[int]:
            return [0, 5]

        def items(self, start: int, stop: int) -> Iterator[SourceItem]:
            return iter(())

    with pytest.raises(SourceError, match="label 5 is outside the 2 classes"):
        SuperclassSource(Listed(), {"low": [(0, 0)]}, "listed")


def test_member_names_with_line_breaks_or_bad_utf8_get_printable_ids(tmp_path: Path) -> None:
    shard = tmp_path / "names.tar"
    with tarfile.open(shard, "w", encoding="utf-8", errors="surrogateescape") as tar:
        for name, payload in [
            ("line\nbreak.png", png_bytes(solid(RED))),
            ("line\nbreak.cls", b"0"),
            (os.fsdecode(b"caf\xe9.png"), png_bytes(solid(BLUE))),
            (os.fsdecode(b"caf\xe9.cls"), b"1"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    source = wds(tmp_path, str(shard))
    items = list(source.items(0, 9))
    assert [item.source_id for item in items] == ["names.tar/line\\nbreak", "names.tar/caf\\xe9"]
    for item in items:
        item.source_id.encode("utf-8")  # every writer can store it
    assert load_rgb(items[1].load, 4).shape == (4, 4, 3)


# ----------------------------------------------------------------------------- 3. hostile source.urls


@pytest.mark.timeout(30)  # braceexpand built all 10^8 names before yielding one (minutes, GBs)
def test_runaway_brace_pattern(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / "shard-{0..99999999}.tar"))
    assert "expands to more than 100000 shards" in one_line(error)
    with pytest.raises(SourceError, match="more than 100000 shards"):
        wds(tmp_path, ["a-{0..60000}.tar", "b-{0..60000}.tar"])  # the bound is over all patterns
    with pytest.raises(SourceError, match="nests braces 5000 deep"):
        wds(tmp_path, "{" * 5000 + "a,b" + "}" * 5000)
    assert time.monotonic() - started < 10


def test_unbalanced_brace_pattern(tmp_path: Path) -> None:
    """braceexpand's UnbalancedBracesError (a ValueError) was a traceback."""
    with pytest.raises(SourceError) as error:
        wds(tmp_path, str(tmp_path / "shard-{0..1.tar"))
    assert "unbalanced or malformed braces" in one_line(error)


# ----------------------------------------------------------------------------- 4. hostile image folders


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    """Three classes of good images plus, inside them, things that are not image files."""
    root = tmp_path / "hostile"
    for name, color in zip(CLASSES, [BLUE, GREEN, RED], strict=False):
        (root / name).mkdir(parents=True)
        for i in range(3):
            solid(color, (12, 12)).save(root / name / f"{i}.png")
    (root / "blue" / "folder.png").mkdir()  # a directory named like an image: walked, not read
    solid(BLUE, (12, 12)).save(root / "blue" / "folder.png" / "inner.png")
    os.mkfifo(root / "green" / "fifo.png")  # opening it would block forever
    (root / "green" / "dangling.png").symlink_to(root / "green" / "gone.png")
    (root / "red" / "loop.png").symlink_to(root / "red" / "loop.png")
    solid(RED, (12, 12)).save(root / "red" / "new\nline.png")
    solid(RED, (12, 12)).save(os.fsencode(root / "red") + b"/caf\xe9.png")
    return root


@pytest.mark.timeout(120)  # a FIFO that is opened blocks forever
def test_hostile_image_folder_builds_with_every_oddity_in_rejects(hostile_folder: Path, tiny_recipe: Path, tmp_path: Path) -> None:
    recipe = recipe_with(tiny_recipe, {"kind": "imagefolder", "path": str(hostile_folder)})
    out = tmp_path / "out"
    rejects = assert_built(build(recipe, out), out)
    reasons = {reject["source_id"]: reject["reason"] for reject in rejects}
    assert set(reasons) == {"green/fifo.png", "green/dangling.png", "red/loop.png"}
    assert "not a regular file but a FIFO" in reasons["green/fifo.png"]
    assert "broken symbolic link" in reasons["green/dangling.png"]
    assert "broken symbolic link" in reasons["red/loop.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source_samples"] == 15 and manifest["configs"]["cnn"]["num_samples"] == 12
    import pyarrow.parquet as pq

    ids = [row for path in sorted((out / "cnn").glob("*.parquet")) for row in pq.read_table(path, columns=["source_id"]).column("source_id").to_pylist()]
    assert {"blue/folder.png/inner.png", "red/new\\nline.png", "red/caf\\xe9.png"} <= set(ids)


@pytest.mark.parametrize("formats", [["webdataset", "parquet"], ["parquet"], ["webdataset"]])
def test_work_units_whose_every_sample_is_rejected_build_verify_and_score(tiny_recipe: Path, tmp_path: Path, formats: list[str]) -> None:
    """One sample per unit, the first and a middle one corrupt: their units have empty shards,
    which finalizing (the preview reads the first unit), verify and score all read."""
    data = yaml.safe_load(tiny_recipe.read_text())
    data["output"] = {"samples_per_shard": 1, "formats": formats}
    tiny_recipe.write_text(yaml.safe_dump(data))
    (tiny_recipe.parent / "images" / "blue" / "0.png").write_bytes(b"not a png")  # unit 0; green/5.png (unit 8) is cut short
    out = tmp_path / "out"
    rejects = assert_built(build(tiny_recipe, out), out)
    assert [reject["index"] for reject in rejects] == [0, 8]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["configs"]["cnn"]["num_samples"] == 11
    verified = CliRunner().invoke(main, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(out), "--model", f"py:{TINY_MODELS}:tiny_cnn",
                                       "--checkpoint", str(tiny_recipe.parent / "theta.pt"), "--workers", "0", "--bootstrap", "0",
                                       "--source", str(tiny_recipe), "--json", str(tmp_path / "score.json")])
    assert scored.exit_code == 0, scored.output
    [result] = json.loads((tmp_path / "score.json").read_text())["results"]
    assert result["n"] == 11


@pytest.mark.timeout(30)
def test_image_replaced_by_a_fifo_after_listing_does_not_block(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    solid(RED).save(root / "cat" / "a.png")
    solid(BLUE).save(root / "cat" / "b.png")
    source = make_source({"kind": "imagefolder", "path": str(root)}, tmp_path)
    (root / "cat" / "b.png").unlink()
    os.mkfifo(root / "cat" / "b.png")
    unit = read_unit(source, WorkUnit(0, 0, 2, 1), 4, source.class_names)
    assert unit.source_ids == ["cat/a.png"]
    assert unit.rejects == [{"index": 1, "source_id": "cat/b.png", "reason": "not a regular file but a FIFO; only image files are read"}]


@pytest.mark.parametrize(("name", "what"), [(b"caf\xe9", "is not valid UTF-8"), (b"two\nlines", "has a line break or control character")])
def test_class_folder_name_that_cannot_be_a_class_name(tmp_path: Path, name: bytes, what: str) -> None:
    root = tmp_path / "images"
    for folder in (b"good", name):
        os.makedirs(os.fsencode(root) + b"/" + folder)
        solid(RED).save(os.fsencode(root) + b"/" + folder + b"/a.png")
    with pytest.raises(SourceError) as error:
        make_source({"kind": "imagefolder", "path": str(root)}, tmp_path)
    assert what in one_line(error) and "rename it" in str(error.value)


def test_broken_link_where_a_class_folder_may_be(tmp_path: Path) -> None:
    """Skipping it would give every later class the label of the one before."""
    root = tmp_path / "images"
    for name in ("a", "c"):
        (root / name).mkdir(parents=True)
        solid(RED).save(root / name / "x.png")
    (root / "b").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SourceError) as error:
        make_source({"kind": "imagefolder", "path": str(root)}, tmp_path)
    assert "images/b is a broken symbolic link" in one_line(error)


def test_unreadable_image_file_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 does not stop root, so the permission error is also made by hand."""
    from PIL import Image

    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    solid(RED).save(root / "cat" / "a.png")
    source = make_source({"kind": "imagefolder", "path": str(root)}, tmp_path)

    def denied(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", denied)
        with pytest.raises(SampleRejected, match=r"cannot read the file \(Permission denied\)"):
            load_rgb(next(source.items(0, 1)).load, 4)
    if not IS_ROOT:
        (root / "cat" / "a.png").chmod(0)
        try:
            with pytest.raises(SampleRejected, match=r"cannot read the file \(Permission denied\)"):
                load_rgb(next(source.items(0, 1)).load, 4)
        finally:
            (root / "cat" / "a.png").chmod(0o644)


def test_unreadable_folder_inside_a_class_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Path.rglob skipped it, and all its images, without a word. (As root, where chmod 000
    does not stop a listing, the permission error is made by hand.)"""
    root = tmp_path / "images"
    locked = root / "cat" / "locked"
    locked.mkdir(parents=True)
    solid(RED).save(root / "cat" / "a.png")
    solid(RED).save(locked / "b.png")
    if IS_ROOT:
        real_scandir = os.scandir

        def scandir(path: Any = ".") -> Any:
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        with pytest.raises(SourceError) as error:
            make_source({"kind": "imagefolder", "path": str(root)}, tmp_path)
        assert f"cannot list {locked}: Permission denied; fix its permissions" in one_line(error)
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- 5. hostile Hugging Face data sets


def hf_parquet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, columns: dict[str, list[Any]], features: Any = None) -> Path:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    table = datasets.Dataset.from_dict(columns, features=features)
    root = tmp_path / "hf"
    (root / "data").mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def hf(root: Path, tmp_path: Path, **extra: Any) -> Any:
    return make_source({"kind": "huggingface", "path": str(root), **extra}, tmp_path)


def test_hf_without_a_label_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    root = hf_parquet(tmp_path, monkeypatch, {"image": [solid(RED)]}, datasets.Features({"image": datasets.Image()}))
    with pytest.raises(SourceError) as error:
        hf(root, tmp_path, class_names=["a", "b"])
    assert "no column 'label'; columns: image" in one_line(error)


@pytest.mark.parametrize(("values", "dtype"), [(["cat", "dog"], "string"), (["1", "0"], "string"), ([1.5, 0.0], "float64"), ([True, False], "bool")])
def test_hf_label_column_that_holds_no_class_indices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: list[Any], dtype: str) -> None:
    """int() made 'cat' a ValueError traceback and 1.5 silently class 1."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value(dtype)})
    root = hf_parquet(tmp_path, monkeypatch, {"image": [solid(RED), solid(BLUE)], "label": values}, features)
    with pytest.raises(SourceError) as error:
        hf(root, tmp_path, class_names=["a", "b"])
    assert f"column 'label' holds {dtype} values, not class indices" in one_line(error)


@pytest.mark.parametrize("labeled", ["classlabel", "int64"])
def test_hf_missing_label_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, labeled: str) -> None:
    """None made int() raise a TypeError traceback; -1 is ClassLabel's 'no label'."""
    import datasets

    label = datasets.ClassLabel(names=["a", "b"]) if labeled == "classlabel" else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    root = hf_parquet(tmp_path, monkeypatch, {"image": [solid(RED)] * 3, "label": [0, None, -1]}, features)
    source = hf(root, tmp_path, class_names=["a", "b"])
    assert next(source.items(0, 1)).label == 0
    for index, shown in [(1, "None"), (2, "-1")]:
        with pytest.raises(SourceError) as error:
            list(source.items(index, index + 1))
        assert f"huggingface sample {root}/{index} has no label ({shown}: unlabelled)" in one_line(error)
    with pytest.raises(SourceError, match="/1 has no label"):
        hf(root, tmp_path, class_names=["a", "b"], class_ranges={"x": [[0, 1]]})  # via labels()


def test_hf_missing_image_values_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    root = hf_parquet(tmp_path, monkeypatch, {"image": [solid(RED), None, solid(BLUE)], "label": [0, 1, 1]}, features)
    source = hf(root, tmp_path)
    unit = read_unit(source, WorkUnit(0, 0, 3, 1), 4, source.class_names)
    assert unit.indices == [0, 2]
    assert unit.rejects == [{"index": 1, "source_id": f"{root}/1", "reason": "corrupt image (empty image cell)"}]


@pytest.mark.timeout(30)
def test_hf_image_paths_naming_a_fifo_or_a_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A string image column is read as paths: one naming a FIFO would block, /dev/zero never ends."""
    import datasets

    os.mkfifo(tmp_path / "fifo.png")
    solid(RED).save(tmp_path / "ok.png")
    features = datasets.Features({"image": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    paths = [str(tmp_path / "ok.png"), str(tmp_path / "fifo.png"), "/dev/zero"]
    root = hf_parquet(tmp_path, monkeypatch, {"image": paths, "label": [0, 1, 1]}, features)
    source = hf(root, tmp_path)
    unit = read_unit(source, WorkUnit(0, 0, 3, 1), 4, source.class_names)
    assert unit.indices == [0]
    assert [reject["reason"] for reject in unit.rejects] == [
        "not a regular file but a FIFO; only image files are read",
        "not a regular file but a character device; only image files are read",
    ]


def test_hf_image_column_that_holds_no_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Value("int64"), "label": datasets.ClassLabel(names=["a", "b"])})
    root = hf_parquet(tmp_path, monkeypatch, {"image": [3, 4], "label": [0, 1]}, features)
    with pytest.raises(SourceError) as error:
        hf(root, tmp_path)
    assert "column 'image' holds int64 values, not images" in one_line(error)


def test_hf_corrupt_parquet_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "hf" / "data").mkdir(parents=True)
    (tmp_path / "hf" / "data" / "test-00000-of-00001.parquet").write_bytes(b"PAR1" + os.urandom(2000) + b"PAR1")
    with pytest.raises(SourceError) as error:
        hf(tmp_path / "hf", tmp_path, class_names=["a", "b"])
    assert f"huggingface source '{tmp_path / 'hf'}' split 'test'" in one_line(error)


# ----------------------------------------------------------------------------- 6. files that are not raster images

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"


def test_postscript_named_like_an_image_never_runs_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow picks a format by content: a k0.png holding PostScript opened as EPS, and loading
    it ran Ghostscript on the data set's bytes. Every source opens raster formats only."""
    import datasets
    from PIL import EpsImagePlugin

    ran: list[Any] = []

    def ghostscript(*args: Any, **kwargs: Any) -> Any:
        ran.append(args)
        raise OSError("ghostscript ran")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    (tmp_path / "folder" / "a").mkdir(parents=True)
    (tmp_path / "folder" / "a" / "k0.png").write_bytes(EPS)
    (tmp_path / "eps.tar").write_bytes(tar_bytes([("k0.png", EPS), ("k0.cls", b"0")]))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])})
    root = hf_parquet(tmp_path, monkeypatch, {"image": [{"bytes": EPS, "path": None}], "label": [0]}, features)
    sources = [make_source({"kind": "imagefolder", "path": "folder"}, tmp_path), wds(tmp_path, "eps.tar"), hf(root, tmp_path)]
    for source in sources:
        with pytest.raises(SampleRejected, match=r"not a readable image \(UnidentifiedImageError\)"):
            load_rgb(next(source.items(0, 1)).load, 4)
    assert ran == []


# ----------------------------------------------------------------------------- 7. where source settings point


def hf_set(root: Path, count: int) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"image": [solid(RED)] * count, "label": [0] * count}, features=features).to_parquet(
        str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_hf_local_path_is_taken_from_the_recipe_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``path: ./my_test_set`` (or ``~/...``) is the recipe's neighbour, as the build's fingerprint
    takes it, not whatever the current directory holds; a dry run counts the same folder."""
    datasets = pytest.importorskip("datasets")
    from builder.config import parse_component
    from builder.sources.base import SourceContext
    from builder.sources.huggingface import huggingface_preflight

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    recipes, work, home = tmp_path / "recipes", tmp_path / "work", tmp_path / "home"
    hf_set(recipes / "my_test_set", 1)
    hf_set(work / "my_test_set", 3)
    hf_set(work / "shadow", 2)
    hf_set(home / "mine", 4)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    assert len(make_source({"kind": "huggingface", "path": "./my_test_set"}, recipes)) == 1
    assert len(make_source({"kind": "huggingface", "path": "my_test_set"}, recipes)) == 1
    assert len(make_source({"kind": "huggingface", "path": "~/mine"}, recipes)) == 4
    config = parse_component("sources", {"kind": "huggingface", "path": "./my_test_set"}, ("source",))
    [check] = huggingface_preflight(config, SourceContext(base_dir=recipes, cache_dir=tmp_path / "cache"), "source")
    assert check.samples == 1
    with pytest.raises(SourceError) as error:
        make_source({"kind": "huggingface", "path": "./missing"}, recipes)
    assert f"no folder {recipes / 'missing'}; check source.path" in one_line(error)
    with pytest.raises(SourceError) as error:  # "shadow" would be a Hub id, but datasets would load ./shadow
        make_source({"kind": "huggingface", "path": "shadow"}, recipes)
    assert "./shadow is in the current directory, not in the recipe's folder" in one_line(error)


def test_hf_script_data_set_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "old_ds").mkdir()
    (tmp_path / "old_ds" / "old_ds.py").write_text("raise SystemExit('script ran')\n")
    with pytest.raises(SourceError) as error:
        make_source({"kind": "huggingface", "path": str(tmp_path / "old_ds")}, tmp_path)
    line = one_line(error)
    assert f"'{tmp_path / 'old_ds'}' is a script data set" in line and "revision: refs/convert/parquet" in line


def test_glob_or_brace_alternative_matching_no_shard_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in one of several patterns used to drop its shards without a word."""
    import builder.storage

    (tmp_path / "val-a").mkdir()
    (tmp_path / "val-a" / "0.tar").write_bytes(tar_bytes(samples(2)))
    for urls in (["val-a/*.tar", "val-B/*.tar"], "val-{a,B}/*.tar"):
        with pytest.raises(SourceError) as error:
            wds(tmp_path, urls)
        assert "no shard at val-B/*.tar (nothing matches); check source.urls" in one_line(error)

    class Empty:
        def glob(self, path: str) -> list[str]:
            return []

    monkeypatch.setattr(builder.storage, "filesystem_of", lambda url, options: (Empty(), url.partition("://")[2]))
    with pytest.raises(SourceError) as error:
        wds(tmp_path, ["val-a/*.tar", "s3://bucket/val-*.tar", "val-c/*.tar"])
    assert "no shard at s3://bucket/val-*.tar, val-c/*.tar (nothing matches)" in one_line(error)


def test_image_keys_are_case_blind_and_a_wrong_one_is_an_error(tmp_path: Path) -> None:
    """A wrong image key made every sample a "corrupt image" reject and the build end empty."""
    (tmp_path / "s.tar").write_bytes(tar_bytes([("k0.PNG", png_bytes(solid(BLUE))), ("k0.cls", b"1"), *samples(1)]))
    source = wds(tmp_path, "s.tar", image_keys=["PNG"], label_key="CLS")
    assert [item.label for item in source.items(0, 2)] == [1, 1]
    assert load_rgb(next(source.items(0, 1)).load, 4)[0, 0].tolist() == list(BLUE)
    with pytest.raises(SourceError) as error:
        wds(tmp_path, "s.tar", image_keys=["jpg", "webp"])
    assert "has a member with source.image_keys (jpg, webp); its members' extensions: cls, png" in one_line(error)


def test_image_folder_skips_hidden_folders_and_refuses_a_class_without_images(tmp_path: Path) -> None:
    """.ipynb_checkpoints copies were samples twice; __MACOSX became class 0 and shifted every label."""
    root = tmp_path / "val"
    for name, color in (("cat", RED), ("dog", BLUE)):
        (root / name / ".ipynb_checkpoints").mkdir(parents=True)
        solid(color).save(root / name / "1.png")
        solid(color).save(root / name / ".ipynb_checkpoints" / "1-checkpoint.png")
    source = make_source({"kind": "imagefolder", "path": "val"}, tmp_path)
    assert [(item.source_id, item.label) for item in source.items(0, 9)] == [("cat/1.png", 0), ("dog/1.png", 1)]
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._1.png").write_bytes(b"\0\5\26\7")
    with pytest.raises(SourceError) as error:
        make_source({"kind": "imagefolder", "path": "val"}, tmp_path)
    assert f"class folder '__MACOSX' in {root} has no image file" in one_line(error)
    with pytest.raises(SourceError, match="class folder '__MACOSX'"):  # not "class_names disagree at index 0"
        make_source({"kind": "imagefolder", "path": "val", "class_names": ["cat", "dog"]}, tmp_path)
    declared = make_source({"kind": "imagefolder", "path": "val", "class_names": ["__MACOSX", "cat", "dog"]}, tmp_path)
    assert [item.label for item in declared.items(0, 9)] == [1, 2]  # declared: an empty class, no shift unseen


# ----------------------------------------------------------------------------- 8. super-classes over compressed shards


def test_class_ranges_over_a_tar_gz_open_it_once_per_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run of kept samples used to read the inner source afresh, inflating a .tar.gz from
    its start once per run: quadratic. One pass now, with the same samples, order and ids."""
    import builder.sources.webdataset_source as webdataset_source

    members = [member for i in range(60) for member in ((f"k{i:02d}.png", png_bytes(solid(RED))), (f"k{i:02d}.cls", str(i % 3).encode()))]
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress(tar_bytes(members)))
    full = wds(tmp_path, "s.tar.gz")
    expected = [(item.source_id, 0 if item.label == 0 else 1) for item in full.items(0, len(full)) if item.label != 1]
    source = wds(tmp_path, "s.tar.gz", class_ranges={"zero": [[0, 0]], "two": [[2, 2]]})
    openings = [0]
    real_open = webdataset_source._open_tar

    def counting(shard: Path) -> tarfile.TarFile:
        openings[0] += 1
        return real_open(shard)

    monkeypatch.setattr(webdataset_source, "_open_tar", counting)
    unit = read_unit(source, WorkUnit(0, 0, len(source), 1), 4, source.class_names)
    assert openings[0] == 1
    assert list(zip(unit.source_ids, unit.labels.tolist(), strict=True)) == expected and unit.indices == list(range(40))
    assert [(item.index, item.source_id) for item in source.items(5, 9)] == [(5 + i, expected[5 + i][0]) for i in range(4)]


#: a 9 x 7 JPEG whose EXIF block a fuzzer damaged: Pillow decodes its pixels, but reading its
#: orientation raises struct.error (common in scraped photo sets)
DAMAGED_EXIF_JPEG = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/4QBgRXhpZgAATU0AKgAAAAgAAwFSAAIAAAAEY2FtAAESAAMAAAABAAYAAIdpAAQAAAABAAAAMgAAAAAAAZADAAIAAAAU"
    "AAAARAAAAAAyMDIwOjAxOjAxIDAwOjAwOjAwAP/bAEMACAYGBwYFCAcHBwkJCAoMFA0MCwsMGRITDxQdGh8eHRocHCAkLicgIiwjHBwoNyksMDE0NDQfJzk9"
    "ODI8LjM0Mv/bAEMBCQkJDAsMGA0NGDIhHCEyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMjIyMv/AABEIAAcACQMBIgAC"
    "EQEDEQH/xAAfAAABBQEBAQEBAQAAAAAAAAAAAQIDBAUGBwgJCgv/xAC1EAACAQMDAgQDBQUEBAAAAX0BAgMABBEFEiExQQYTUWEHInEUMoGRoQgjQrHBFVLR"
    "8CQzYnKCCQoWFxgZGiUmJygpKjQ1Njc4OTpDREVGR0hJSlNUVVZXWFlaY2RlZmdoaWpzdHV2d3h5eoOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3"
    "uLm6wsPExcbHyMnK0tPU1dbX2Nna4eLj5OXm5+jp6vHy8/T19vf4+fr/xAAfAQADAQEBAQEBAQEBAAAAAAAAAQIDBAUGBwgJCgv/xAC1EQACAQIEBAMEBwUE"
    "BAABAncAAQIDEQQFITEGEkFRB2FxEyIygQgUQpGhscEJIzNS8BVictEKFiQ04SXxFxgZGiYnKCkqNTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1"
    "dnd4eXqCg4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2dri4+Tl5ufo6ery8/T19vf4+fr/2gAMAwEAAhEDEQA/"
    "AI6KKK+QPzc//9k="
)


def test_a_photo_with_damaged_exif_is_skipped_not_a_traceback(tiny_recipe: Path, tmp_path: Path) -> None:
    """ImageOps.exif_transpose raised struct.error, which no handler caught: one such photo
    stopped the whole build. Its orientation is unknown, so it is skipped and listed."""
    import base64

    data = base64.b64decode(DAMAGED_EXIF_JPEG)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.load()  # its pixels decode
    with pytest.raises(SampleRejected, match=r"unreadable EXIF orientation \(error: "):
        load_rgb(lambda: Image.open(io.BytesIO(data)), 8)
    (tiny_recipe.parent / "images" / "red" / "photo.jpg").write_bytes(data)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert any(r["source_id"] == "red/photo.jpg" and "unreadable EXIF orientation" in r["reason"] for r in rejects), rejects


def test_a_strip_far_longer_than_wide_is_skipped_before_it_is_resized(tmp_path: Path) -> None:
    """The shorter side is resized to the image size first: an 88-byte 1 x 2000 PNG took 0.6 GB,
    a 1 x 100000 one 26 GB at 256 px. Past 64:1 the sample is skipped; 64:1 still loads."""
    from PIL import Image

    def png(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, "PNG")
        return buffer.getvalue()

    for size in ((1, 2000), (100_000, 2)):
        data = png(*size)
        with pytest.raises(SampleRejected, match=f"{size[0]}x{size[1]} pixels: more than 64 times longer than wide"):
            load_rgb(lambda data=data: Image.open(io.BytesIO(data)), 256)
    assert load_rgb(lambda: Image.open(io.BytesIO(png(2, 128))), 16).shape == (16, 16, 3)
