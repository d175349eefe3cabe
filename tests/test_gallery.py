"""gallery.html: cards match the shards, the page is self-contained and it filters in Chromium."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, chromium, run_chromium
from PIL import Image

from builder import gallery
from builder.benchmark import read_manifest
from builder.cli import main
from builder.gallery import spread, write_gallery


class Cards(HTMLParser):
    """The cards of a gallery page: their data attributes, image sources and whether hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict[str, Any]] = []
        self.hidden_sections: set[str] = set()
        self.count = ""
        self._in_count = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        values = dict(attrs)
        if tag == "section" and "hidden" in values:
            self.hidden_sections.add(str(values.get("data-config")))
        if tag == "figure" and "card" in (values.get("class") or "").split():
            self.cards.append({**values, "images": []})
        elif tag == "img" and self.cards:
            self.cards[-1]["images"].append((values["alt"], values["src"]))
        self._in_count = tag == "output" and values.get("id") == "count"

    def handle_endtag(self, tag: str) -> None:
        self._in_count = False

    def handle_data(self, data: str) -> None:
        if self._in_count:
            self.count += data

    def visible(self) -> list[dict[str, Any]]:
        return [c for c in self.cards if "hidden" not in c and c["data-config"] not in self.hidden_sections]


def parse(page: str) -> Cards:
    parser = Cards()
    parser.feed(page)
    return parser


def records(out: Path) -> dict[str, dict[str, Any]]:
    """Every row of every Parquet shard of the build, by (config, key)."""
    import pyarrow.parquet as pq

    manifest = json.loads((out / "manifest.json").read_text())
    rows = {}
    for name, config in manifest["configs"].items():
        for shard in config["shards"]:
            for row in pq.read_table(out / shard["files"]["parquet"]["path"]).to_pylist():
                rows[f"{name}/{row['key']}"] = row
    return rows


def decode_uri(uri: str) -> bytes:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head
    return base64.b64decode(payload, validate=True)


def test_cards_match_the_shards(tiny_build: Path) -> None:
    page = (tiny_build / "gallery.html").read_text(encoding="utf-8")
    rows = records(tiny_build)
    cards = parse(page).cards
    assert len(cards) == len(rows) == 12
    for card in cards:
        row = rows[f"{card['data-config']}/{card['data-key']}"]
        assert card["data-class"] == row["class_name"] and int(card["data-steps"]) == row["steps"]
        assert [alt for alt, _ in card["images"]] == ["original", "perturbed"]
        stored = (row["original_image"]["bytes"], row["image"]["bytes"])
        for (_, uri), expected in zip(card["images"], stored, strict=False):
            assert decode_uri(uri) == expected
            with Image.open(io.BytesIO(decode_uri(uri))) as image:
                assert image.size == (16, 16)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "@import" not in page
    assert "image-rendering:pixelated" in page
    assert "showing" in page and "min_steps" in page
    manifest = read_manifest(tiny_build)
    again = write_gallery(tiny_build, manifest).read_bytes()
    assert again == page.encode("utf-8") == write_gallery(tiny_build, manifest).read_bytes()  # no timestamps


def test_per_class_keeps_the_ends_of_the_steps(tiny_build: Path) -> None:
    rows = records(tiny_build)
    cards = parse(write_gallery(tiny_build, read_manifest(tiny_build), per_class=2).read_text(encoding="utf-8")).cards
    for name in ("blue", "green", "red"):
        steps = sorted((r["steps"], r["key"]) for r in rows.values() if r["class_name"] == name)
        shown = sorted((int(c["data-steps"]), c["data-key"]) for c in cards if c["data-class"] == name)
        assert shown == [steps[0], steps[-1]]
    assert spread(list(range(10)), 3) == [0, 4, 9] and spread(list(range(10)), 1) == [9] and spread([1, 2], 5) == [1, 2]


def fake_benchmark(root: Path, class_names: list[str], configs: list[str], per_class: int, size: int) -> None:
    """A manifest and Parquet shards without originals, with ``size`` px images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    recipe = {"name": "fake", "image_size": size, "source": {"kind": "imagefolder", "path": "."}, "output": {"keep_originals": False}}
    count = per_class * len(class_names)
    manifest: dict[str, Any] = {"format": "fmr-benchmark/1", "id": "x", "recipe": recipe, "recipe_sha256": "x", "split": "test",
                                "class_names": class_names, "source_samples": count, "num_rejects": 0, "configs": {}}
    for name in configs:
        rows = []
        for index in range(per_class * len(class_names)):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
            label = index % len(class_names)
            rows.append({"image": {"bytes": buffer.getvalue(), "path": None}, "key": f"{index:08d}", "label": label,
                         "class_name": class_names[label], "steps": index % 4, "stop_reason": "budget exhausted",
                         "oracle_prob": 0.5, "pred_before": label, "pred_after": 0, "reference_model": name})
        (root / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / name / "test.parquet")
        entry = {"path": f"{name}/test.parquet", "sha256": "x", "bytes": (root / name / "test.parquet").stat().st_size}
        shard = {"num_samples": count, "num_perturbed": 0, "files": {"parquet": entry}}
        manifest["configs"][name] = {"num_samples": count, "num_perturbed": 0, "reference_model": {"model": f"timm:{name}"}, "shards": [shard]}
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_no_originals_large_images_and_the_page_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["cat", '<b>&"dog', "eel"]
    fake_benchmark(tmp_path, names, ["a", "b"], per_class=4, size=200)
    monkeypatch.setattr(gallery, "MAX_CARDS", 12)  # 3 classes x 2 configs -> 2 per class
    page = write_gallery(tmp_path, read_manifest(tmp_path)).read_text(encoding="utf-8")
    cards = parse(page).cards
    assert len(cards) == 12 and {c["data-class"] for c in cards} == set(names)
    assert '<b>&"dog' not in page and "&lt;b&gt;&amp;&quot;dog" in page
    assert "keep_originals: false" in page
    for card in cards:
        assert [alt for alt, _ in card["images"]] == ["perturbed"]
        with Image.open(io.BytesIO(decode_uri(card["images"][0][1]))) as image:
            assert image.format == "WEBP" and max(image.size) == gallery.THUMB
    assert len(page) < 12 * 20_000


def test_chromium_renders_and_filters(tiny_build: Path, tmp_path: Path) -> None:
    chromium()
    url = (tiny_build / "gallery.html").resolve().as_uri()
    shot = tmp_path / "gallery.png"
    run_chromium(tmp_path / "p1", url, f"--screenshot={shot}", "--window-size=1200,900")
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        assert np.asarray(image.convert("L"), dtype=np.float64).std() > 20
    rows = list(records(tiny_build).values())
    dom = parse(run_chromium(tmp_path / "p2", f"{url}#class=red", "--dump-dom", "--virtual-time-budget=2000"))
    red = sum(r["class_name"] == "red" for r in rows)
    assert len(dom.visible()) == red and dom.count == f"showing {red} of {len(rows)}"
    assert {c["data-class"] for c in dom.visible()} == {"red"}
    low = sorted(r["steps"] for r in rows)[len(rows) // 2]
    dom = parse(run_chromium(tmp_path / "p3", f"{url}#config=cnn&min_steps={low}&max_steps={low}", "--dump-dom", "--virtual-time-budget=2000"))
    assert len(dom.visible()) == sum(r["steps"] == low for r in rows) > 0
    dom = parse(run_chromium(tmp_path / "p4", f"{url}#class=purple", "--dump-dom", "--virtual-time-budget=2000"))
    assert dom.count == f"showing {len(rows)} of {len(rows)}"  # an unknown class falls back to all


def test_cli_regenerates_and_rejects_other_dirs(tiny_build: Path, tmp_path: Path) -> None:
    page = tiny_build / "gallery.html"
    before = page.read_bytes()
    page.unlink()
    result = CliRunner().invoke(main, ["-q", "gallery", str(tiny_build)])
    assert result.exit_code == 0, result.output
    assert "gallery.html" in result.output and page.read_bytes() == before
    result = CliRunner().invoke(main, ["-q", "gallery", str(tiny_build), "--per-class", "1"])
    assert result.exit_code == 0 and len(parse(page.read_text(encoding="utf-8")).cards) == 3
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    for target in (other, tmp_path / "missing"):
        result = CliRunner().invoke(main, ["-q", "gallery", str(target)])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert "not" in lines[0] and "build-benchmark run" in lines[0] and "Traceback" not in result.output
    assert not (other / "gallery.html").exists()


@pytest.mark.parametrize("formats", ["[parquet]", "[webdataset]"])
def test_a_single_format_build_has_a_preview_and_a_gallery(tiny_recipe: Path, tmp_path: Path, formats: str) -> None:
    """Each output format carries its own reader, so what a build writes is what renders."""
    from click.testing import CliRunner

    from builder.cli import main
    from builder.preview import TILE

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress", "--set", f"output.formats={formats}"])
    assert result.exit_code == 0, result.output
    cards = parse((out / "gallery.html").read_text(encoding="utf-8")).cards
    assert len(cards) == 12 and all([alt for alt, _ in c["images"]] == ["original", "perturbed"] for c in cards)
    with Image.open(out / "preview.png") as preview:
        assert preview.width == 5 * TILE  # the first shard's 5 samples, read back from that format


def test_an_image_that_does_not_decode_is_said_in_its_place(tmp_path: Path) -> None:
    """A damaged image crashed the whole gallery (UnidentifiedImageError), the page meant for
    auditing images; a PostScript image is never handed to Ghostscript (Pillow opens benchmark
    images as PNG or WebP only)."""
    from PIL import UnidentifiedImageError

    from builder.images import decode_image

    assert gallery._img(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "perturbed") == (
        '<div class="pic"><span>perturbed: this image does not decode; run build-benchmark verify</span></div>')
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n"
    for read in (decode_image, gallery.data_uri):
        with pytest.raises(UnidentifiedImageError):
            read(eps)


@pytest.mark.parametrize("column, value", [("label", None), ("label", 7), ("steps", None), ("oracle_prob", None)])
def test_a_record_the_page_cannot_show_is_one_line_naming_the_shard_and_key(tiny_build: Path, column: str, value: Any) -> None:
    """A null label (a damaged download: the gallery never checks hashes) was a TypeError
    traceback from int(None); it is now one line naming the shard and the sample."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tiny_build / "cnn" / "test-00000-of-00003.parquet"
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[0] = value
    field = table.schema.field(column)
    pq.write_table(table.set_column(table.schema.get_field_index(column), field, pa.array(values, type=field.type)), path)
    key = table.column("key")[0].as_py()
    result = CliRunner().invoke(main, ["-q", "gallery", str(tiny_build)])
    assert_one_line_error(result, f"cnn/test-00000-of-00003.parquet: sample '{key}' has {column} {value!r}", "run 'build-benchmark verify'")
