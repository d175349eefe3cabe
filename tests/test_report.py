"""report.html: each section's figures against values computed by hand from the samples, old
result files, attribute curves of a real attribute build, skipped sections that say why, one-line
errors, escaping, and the page rendered in headless Chromium."""

from __future__ import annotations

import base64
import json
import shutil
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from helpers import COLOR_CLASSES, TINY_MODELS, assert_one_line_error, build, hand_built_benchmark, patch, run_chromium
from PIL import Image

from builder.card import LEADERBOARD_FILE, write_card
from builder.cli import main
from builder.config import ModelSpec
from builder.fileio import write_bytes_atomic, write_json_atomic
from builder.images import encode_image
from builder.leaderboard import results_bytes
from builder.model_zoo import result_payload
from builder.report import write_report
from builder.report.figures import attribute_curves, misclassified, per_class_from_predictions, per_class_from_result, transfer_matrix
from builder.report.inputs import Benchmarks, Joined, read_results
from builder.score import score

# (label, colour of the original, colour of the perturbed image, perturbed, steps). ColorNet
# answers the colour; RolledColorNet (shift 1) the colour + 1 (mod 3).
ROWS = [
    (0, 0, 0, True, 2), (0, 0, 1, True, 3), (0, 2, 2, True, 1), (0, 2, 0, True, 4),
    (1, 1, 1, False, 0), (1, 0, 0, True, 2), (1, 1, 2, True, 5),
    (2, 2, 2, True, 1), (2, 1, 1, True, 3), (2, 2, 0, True, 2), (2, 1, 0, True, 1), (2, 0, 0, False, 0),
]
MODELS = {"color": (f"py:{TINY_MODELS}:color_net", 0), "rolled": (f"py:{TINY_MODELS}:rolled_color_net", 1)}
CONFIGS = ("ref", "other")


def expected(shift: int) -> dict[str, Any]:
    """SA, PA, FMR, per-class FMR and the wrong perturbed samples of the model answering colour + shift."""
    def right(colour: int, label: int) -> bool:
        return (colour + shift) % 3 == label

    sa = sum(right(original, label) for label, original, _, _, _ in ROWS) / len(ROWS)
    pa = sum(right(shown, label) for label, _, shown, _, _ in ROWS) / len(ROWS)
    classes = {}
    for label, name in enumerate(COLOR_CLASSES):
        members = [row for row in ROWS if row[0] == label]
        class_sa = sum(right(row[1], label) for row in members) / len(members)
        classes[name] = 100 * (sum(right(row[2], label) for row in members) / len(members)) / class_sa
    wrong = sorted((not right(original, label), f"{index:08d}") for index, (label, original, shown, perturbed, _) in enumerate(ROWS)
                   if perturbed and not right(shown, label))
    return {"sa": sa, "pa": pa, "fmr": 100 * pa / sa, "per_class": classes, "misses": [key for _, key in wrong],
            "flipped": sum(not later for later, _ in wrong)}


def scored_files(root: Path, bench: Path, models: dict[str, tuple[str, int]] = MODELS, configs: tuple[str, ...] = CONFIGS) -> Path:
    """``root/results/<name>.json`` per model (as 'score --models --out' writes), ColorNet with per-class figures."""
    for name, (model, _) in models.items():
        spec = ModelSpec.model_validate({"model": model, "name": name})
        results = [score(bench, spec, config=config, bootstrap=50, with_per_class=name == "color", cache_dir=root / "cache") for config in configs]
        write_bytes_atomic(root / "results" / f"{name}.json", results_bytes(result_payload(results)))
    return root / "results"


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built benchmark (two configs) scored with both models: ``results/`` beside ``bench/``."""
    root = tmp_path_factory.mktemp("report")
    scored_files(root, hand_built_benchmark(root / "bench", ROWS, configs=CONFIGS))
    return root


class Page(HTMLParser):
    """A report page: its sections (id -> class), notes per section, inline SVG ids, the wrong-image cards."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.notes: dict[str, list[str]] = {}
        self.svgs: list[Optional[str]] = []
        self.misses: list[dict[str, Any]] = []
        self.table: list[list[str]] = []
        self._section: Optional[str] = None
        self._strip = ""
        self._text: Optional[list[str]] = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self._section = str(values["id"])
            self.sections[self._section], self.notes[self._section] = str(values.get("class")), []
        elif tag == "svg":
            self.svgs.append(values.get("id"))
        elif tag == "div" and values.get("class") == "strip":
            self._strip = str(values["data-result"])
        elif tag == "figure" and values.get("class") == "miss":
            self.misses.append({**values, "result": self._strip, "images": {}})
        elif tag == "img" and self.misses:
            self.misses[-1]["images"][values["alt"]] = values["src"]
        elif tag == "p" and "note" in (values.get("class") or "") and self._section:
            self.notes[self._section].append("")
            self._text = self.notes[self._section]
        elif tag == "tr" and values.get("class") == "result":
            self.table.append([])
        elif tag == "td" and self.table:
            self.table[-1].append("")
            self._text = self.table[-1]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "td"):
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text[-1] += data

    def note(self, section: str) -> str:
        return " ".join(self.notes[section])


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decode_uri(uri: str) -> bytes:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head
    return base64.b64decode(payload, validate=True)


# ----------------------------------------------------------------------------- the figures


def test_score_keeps_per_sample_predictions_and_the_card_drops_them(scored: Path, tmp_path: Path) -> None:
    row = json.loads((scored / "results" / "rolled.json").read_text())["results"][0]
    assert row["sample_predictions"] == {
        "keys": [f"{index:08d}" for index in range(len(ROWS))],
        "pred_perturbed": [(shown + 1) % 3 for _, _, shown, _, _ in ROWS],
        "pred_original": [(original + 1) % 3 for _, original, _, _, _ in ROWS],
    }
    text = (scored / "results" / "rolled.json").read_text()
    listed = ",".join(str((original + 1) % 3) for _, original, _, _, _ in ROWS)
    assert f'"pred_original":[{listed}]' in text  # one line per list: 50,000 samples take about 1 MB
    payload = {"results": [{"name": "sample_predictions-0", "sample_predictions": {"keys": ["a"], "pred_original": [1], "pred_perturbed": [2]}}]}
    assert json.loads(results_bytes(payload)) == payload
    bench = shutil.copytree(scored / "bench", tmp_path / "bench")
    write_card(bench, [scored / "results" / "rolled.json"])
    stored = json.loads((bench / LEADERBOARD_FILE).read_text())
    assert len(stored) == 2 and all("sample_predictions" not in row for row in stored)


def test_the_figures_of_each_section(scored: Path) -> None:
    results = read_results([scored / "results"])  # a directory: all its results
    assert [result.label for result in results] == ["color on ref", "color on other", "rolled on ref", "rolled on other"]
    again = read_results([scored / "results", scored / "results" / "color.json"])  # a file given twice is one result each
    assert [result.label for result in again] == ["rolled on ref", "rolled on other", "color on ref", "color on other"]
    matrix = transfer_matrix([result.row for result in results])
    assert matrix.rows == ["ref", "other"] and matrix.columns == ["color", "rolled"]
    np.testing.assert_allclose(matrix.fmr, [[expected(0)["fmr"], expected(1)["fmr"]]] * 2)
    assert matrix.white_box.tolist() == [[True, False], [True, False]]  # the configs were built against ColorNet
    for result in results:
        shift = MODELS[result.row["name"]][1]
        assert (result.row["sa"], result.row["pa"]) == pytest.approx((expected(shift)["sa"], expected(shift)["pa"]))
        assert result.row["fmr_ci"][0] <= result.row["fmr"] <= result.row["fmr_ci"][1]
    finder = Benchmarks()
    for result in results:
        joined = finder.resolve(result)
        assert isinstance(joined, Joined), joined
        want = expected(MODELS[result.row["name"]][1])
        own = per_class_from_result(result.row)
        if result.row["name"] == "color":
            assert own is not None and dict(own) == pytest.approx(want["per_class"])
        else:
            assert own is None  # scored without --per-class: the report computes it from the predictions
        assert dict(per_class_from_predictions(joined)) == pytest.approx(want["per_class"])
        misses = misclassified(joined, 4)
        assert [joined.samples.keys[index] for index in misses.shown] == want["misses"][:4]
        assert (misses.total, misses.flipped) == (len(want["misses"]), want["flipped"])
        assert attribute_curves(joined) == {}  # no attributes in this build


def test_the_page_shows_every_section_with_the_right_images(scored: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["-q", "report", str(scored / "results"), "--out", str(out), "--per-model", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [f"wrote {out} ({out.stat().st_size} bytes): 4 result(s), 4 of 5 sections; skipped: attributes (the page says why)"]
    page = parse(out)
    assert page.sections == {"fmr": "part shown", "transfer": "part shown", "per-class": "part shown", "attributes": "part skipped", "errors": "part shown"}
    assert page.svgs == ["chart-fmr", "chart-transfer", "chart-per-class-0"]
    assert "records no attribute values" in page.note("attributes")
    assert "rolled on ref, rolled on other: computed from its per-sample predictions" in page.note("per-class")  # one line per reason
    assert sorted(float(row[8].split(" [")[0]) for row in page.table) == sorted([round(expected(0)["fmr"], 1)] * 2 + [round(expected(1)["fmr"], 1)] * 2)
    for label in ("color on ref", "rolled on other"):
        shift = MODELS[label.split()[0]][1]
        cards = [card for card in page.misses if card["result"] == label]
        assert [card["data-key"] for card in cards] == expected(shift)["misses"][:4]
        for card in cards:
            truth, original, shown, _, _ = ROWS[int(card["data-key"])]
            assert (int(card["data-label"]), int(card["data-pred"])) == (truth, (shown + shift) % 3)
            assert decode_uri(card["images"]["perturbed"]) == encode_image(patch(shown), "png")
            assert decode_uri(card["images"]["original"]) == encode_image(patch(original), "png")
    text = out.read_text(encoding="utf-8")
    for fetch in ('src="http', "href=\"http", "<link", "@import", "<script", "url(http", "<?xml", "<!DOCTYPE svg"):
        assert fetch not in text, fetch
    again = tmp_path / "again.html"
    write_report([scored / "results"], again, per_model=4)
    assert again.read_bytes() == out.read_bytes()  # no timestamps, stable SVG ids


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_a_single_format_benchmark_gives_the_images(tmp_path: Path, fmt: str) -> None:
    """The report reads a benchmark through the reader of the format it has."""
    bench = hand_built_benchmark(tmp_path / "bench", ROWS, fmt=fmt, configs=("ref",))
    results = scored_files(tmp_path, bench, {"color": MODELS["color"]}, ("ref",))
    page = parse(write_report([results], tmp_path / "report.html").path)
    assert page.sections["errors"] == "part shown"
    assert [card["data-key"] for card in page.misses] == expected(0)["misses"]
    for card in page.misses:
        assert decode_uri(card["images"]["perturbed"]) == encode_image(patch(ROWS[int(card["data-key"])][2]), "png")


# ----------------------------------------------------------------------------- old and missing inputs


def old_format(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as files before the rename wrote it: ``pa`` perturbed-only, ``pa_all`` the numerator."""
    old = {key: value for key, value in row.items() if key not in ("sample_predictions", "pa_perturbed", "pa_perturbed_ci")}
    old.update(pa=row["pa_perturbed"], pa_ci=row["pa_perturbed_ci"], pa_all=row["pa"], pa_all_ci=row["pa_ci"])
    if row.get("per_class"):
        old["per_class"] = [{**{k: v for k, v in item.items() if k != "pa_perturbed"}, "pa": item["pa_perturbed"], "pa_all": item["pa"]}
                            for item in row["per_class"]]
    return old


def test_two_classes_of_one_name_keep_their_own_per_class_figures() -> None:
    """ImageNet names two classes "crane": the per-class chart keyed its bars by name, so one
    class vanished and the other drew its value."""
    row = {"per_class": [{"class_name": "crane", "label": 0, "n": 2, "sa": 1.0, "pa": 1.0, "fmr": 100.0},
                         {"class_name": "crane", "label": 1, "n": 2, "sa": 1.0, "pa": 0.5, "fmr": 50.0},
                         {"class_name": "blue", "label": 2, "n": 2, "sa": 1.0, "pa": 0.5, "fmr": 50.0}]}
    assert per_class_from_result(row) == [("crane #1", 100.0), ("crane #2", 50.0), ("blue", 50.0)]


@pytest.mark.parametrize("label", [7, -1])
def test_a_sample_labelled_outside_the_classes_is_a_note_not_a_crash_or_a_wrong_caption(scored: Path, tmp_path: Path, label: int) -> None:
    """A damaged shard (report never checks hashes): label 7 crashed the page (IndexError), label
    -1 captioned a red sample 'blue' (names[-1])."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bench = shutil.copytree(scored / "bench", tmp_path / "bench")
    shard = next(iter(sorted((bench / "ref").glob("*.parquet"))))
    table = pq.read_table(shard)
    labels = table.column("label").to_pylist()
    labels[1] = label
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, type=table.schema.field("label").type)), shard)
    page = parse(write_report([scored / "results" / "color.json"], tmp_path / "r.html", benchmarks=[str(bench)]).path)
    assert page.sections["errors"] == "part shown"  # the other config still shows
    assert "config 'ref' of" in page.note("errors") and "has samples labelled outside its 3 classes; run 'build-benchmark verify'" in page.note("errors")


def test_an_output_path_under_a_file_is_one_line_for_report_and_verify(scored: Path, tmp_path: Path) -> None:
    """The file system refusing an output path (here: a file where a folder should be) was a
    FileExistsError traceback from every command writing through atomic_write."""
    (tmp_path / "afile").write_text("x")
    report = CliRunner().invoke(main, ["-q", "report", str(scored / "results" / "color.json"), "--out", str(tmp_path / "afile" / "r.html")])
    assert_one_line_error(report, f"cannot write {tmp_path}/afile/r.html ({tmp_path}/afile is a file, not a folder); give a path")
    verify = CliRunner().invoke(main, ["-q", "verify", str(scored / "bench"), "--json", str(tmp_path / "afile" / "v.json")])
    assert_one_line_error(verify, f"cannot write {tmp_path}/afile/v.json ({tmp_path}/afile is a file, not a folder)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile"]


def test_an_old_result_still_loads(scored: Path, tmp_path: Path) -> None:
    rows = json.loads((scored / "results" / "color.json").read_text())["results"]
    old = tmp_path / "old.json"
    write_json_atomic(old, {"results": [old_format(row) for row in rows]})
    loaded = read_results([old])
    assert [(r.row["pa"], r.row["pa_perturbed"], r.row["fmr"]) for r in loaded] == [(row["pa"], row["pa_perturbed"], row["fmr"]) for row in rows]
    page = parse(write_report([old], tmp_path / "report.html").path)
    assert [page.sections[name] for name in ("fmr", "transfer", "per-class", "attributes", "errors")] == ["part shown"] * 3 + ["part skipped"] * 2
    for section in ("attributes", "errors"):
        assert "scored before results kept per-sample predictions; re-score it" in page.note(section)
    write_json_atomic(old, {"results": [{**old_format(row), "per_class": None} for row in rows]})
    page = parse(write_report([old], tmp_path / "report.html").path)
    assert page.sections["per-class"] == "part skipped" and "no per-class figures (score --per-class)" in page.note("per-class")


def test_a_benchmark_not_here_is_skipped_and_found_with_benchmark(scored: Path, tmp_path: Path) -> None:
    bench = hand_built_benchmark(tmp_path / "bench", ROWS)
    results = scored_files(tmp_path, bench, {"color": MODELS["color"]}, ("ref",))
    moved = bench.rename(tmp_path / "moved")
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["-q", "report", str(results), "--out", str(out)])
    assert result.exit_code == 0 and "skipped: attributes, errors" in result.output, result.output
    page = parse(out)
    assert page.sections["fmr"] == page.sections["transfer"] == page.sections["per-class"] == "part shown"
    assert f"its benchmark {bench} is not available locally; pass --benchmark" in page.note("errors")
    result = CliRunner().invoke(main, ["-q", "report", str(results), "--out", str(out), "--benchmark", str(moved)])
    assert result.exit_code == 0 and parse(out).sections["errors"] == "part shown", result.output
    hand_built_benchmark(bench, ROWS[:-1])  # another build where the result's benchmark was
    assert "is another build of its benchmark" in parse(write_report([results], out).path).note("errors")
    gone = bench.rename(tmp_path / "gone")  # and given with --benchmark where the result's is not: said so, not "pass --benchmark"
    result = CliRunner().invoke(main, ["-q", "report", str(results), "--out", str(out), "--benchmark", str(gone)])
    assert result.exit_code == 0, result.output
    assert f"and --benchmark gave another build ({gone} (" in parse(out).note("errors")


def test_hostile_strings_are_escaped_and_bad_inputs_are_one_line(tmp_path: Path) -> None:
    hostile = '<img src=x onerror="alert(1)">$x^$'  # and not mathtext either
    row = {"name": hostile, "model": "<script>alert(2)</script>", "benchmark": "org/<b>", "benchmark_id": "<i>id", "config": "c<u>",
           "sa": 0.5, "pa": 0.25, "fmr": 50.0, "per_class": [{"class_name": "<em>cat", "fmr": 40.0}],
           "sample_predictions": {"keys": ["a"], "pred_perturbed": [0, 1], "pred_original": [0]}}
    write_json_atomic(tmp_path / "r.json", {"results": [row]})
    text = write_report([tmp_path / "r.json"], tmp_path / "report.html").path.read_text(encoding="utf-8")
    for raw in ("<img src=x", "<script>", "<b>", "<i>id", "c<u>", "<em>cat"):
        assert raw not in text, raw
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text and "&lt;em&gt;cat" in text
    assert "sample_predictions.&lt;top level&gt;: keys, pred_perturbed and pred_original differ in length" in text
    for location in ("a\x00b", "x" * 300 + "/y"):  # no file system takes these: not available, not a crash
        good = {**row, "benchmark": location, "sample_predictions": {"keys": ["a"], "pred_perturbed": [0], "pred_original": [0]}}
        write_json_atomic(tmp_path / "r.json", {"results": [good]})
        page = parse(write_report([tmp_path / "r.json"], tmp_path / "report.html").path)
        assert page.sections["errors"] == "part skipped" and "is not available locally" in page.note("errors")
    missing = CliRunner().invoke(main, ["-q", "report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.html")])
    assert_one_line_error(missing, "missing.json", "cannot read it")
    (tmp_path / "other.json").write_text('{"id": 1}')
    other = CliRunner().invoke(main, ["-q", "report", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.html")])
    assert_one_line_error(other, "other.json", "score --json")
    assert not (tmp_path / "x.html").exists()


# ----------------------------------------------------------------------------- an attribute build


EDITS = {"rotate": {"step": 3.0, "range": [-12.0, 12.0]}, "contrast": {"step": 0.1, "range": [0.7, 1.3]}}


def tar_records(out: Path, config: str) -> list[dict[str, Any]]:
    """Every record of a config from its tar shards' JSON members, in key order."""
    manifest = json.loads((out / "manifest.json").read_text())
    records = []
    for shard in manifest["configs"][config]["shards"]:
        with tarfile.open(out / shard["files"]["webdataset"]["path"]) as tar:
            records += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]  # type: ignore[union-attr]
    return sorted(records, key=lambda record: record["key"])


def test_an_attribute_build_gives_attribute_curves(tiny_recipe: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(tiny_recipe.read_text())
    data.update(generator={"kind": "attributes", "attributes": EDITS}, perturbation={"budget": 6}, output={"samples_per_shard": 5, "formats": ["webdataset"]})
    tiny_recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert build(tiny_recipe, out).exit_code == 0
    results = [score(out, "ref:cnn", bootstrap=0, base_dir=tiny_recipe.parent, trust_remote_code=True), score(out, MODELS["color"][0], bootstrap=0)]
    write_bytes_atomic(tmp_path / "r.json", results_bytes(result_payload(results)))
    records = [record for record in tar_records(out, "cnn") if record["perturbed"]]
    # the reference model's prediction on each written image is its pred_after; ColorNet's, what score recorded
    colour = results[1].sample_predictions or {}
    predicted = {"ref": [record["pred_after"] for record in records],
                 "color": [dict(zip(colour["keys"], colour["pred_perturbed"], strict=True))[record["key"]] for record in records]}
    assert records and len({tuple(p) for p in predicted.values()}) == 2
    for result, name in zip(read_results([tmp_path / "r.json"]), ("ref", "color"), strict=True):
        joined = Benchmarks().resolve(result)
        assert isinstance(joined, Joined), joined
        curves = attribute_curves(joined)
        assert set(curves) == {"rotate", "contrast"}
        right = np.array([guess == record["label"] for guess, record in zip(predicted[name], records, strict=True)])
        for attribute, curve in curves.items():
            values = np.array([record["attributes"][attribute] for record in records])
            low, high = values.min(), values.max()
            slots = [min(int((value - low) / (high - low) * 8), 7) for value in values] if high > low else [0] * len(values)
            used = sorted(set(slots))
            assert curve.counts.tolist() == [slots.count(slot) for slot in used]
            assert curve.accuracy.tolist() == pytest.approx([right[np.array(slots) == slot].mean() for slot in used])
            assert curve.centers.tolist() == pytest.approx([low + (slot + 0.5) * (high - low) / 8 for slot in used] if high > low else [low])
    page = parse(write_report([tmp_path / "r.json"], tmp_path / "report.html").path)
    assert page.sections["attributes"] == "part shown" and page.svgs.count("chart-attributes-0") == 1
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert ">rotate</text>" in text and ">contrast</text>" in text  # the panels' titles


# ----------------------------------------------------------------------------- in a browser


def test_chromium_renders_every_section(scored: Path, tmp_path: Path) -> None:
    out = write_report([scored / "results"], tmp_path / "report.html", per_model=4).path
    shot = tmp_path / "report.png"
    run_chromium(tmp_path / "p1", out.resolve().as_uri(), f"--screenshot={shot}", "--window-size=1200,1600")
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        assert np.asarray(image.convert("L"), dtype=np.float64).std() > 20  # not a blank page
    dom = Page()
    dom.feed(run_chromium(tmp_path / "p2", out.resolve().as_uri(), "--dump-dom", "--virtual-time-budget=2000"))
    assert set(dom.sections) == {"fmr", "transfer", "per-class", "attributes", "errors"}
    assert dom.svgs == ["chart-fmr", "chart-transfer", "chart-per-class-0"]
    assert len(dom.misses) == 4 * 4 and all(set(card["images"]) == {"original", "perturbed"} for card in dom.misses)


def test_a_sample_with_a_null_label_is_a_note_naming_its_shard_not_a_crash(scored: Path, tmp_path: Path) -> None:
    """A null label (a damaged download) was a TypeError traceback from the label array."""
    import pyarrow.parquet as pq

    bench = shutil.copytree(scored / "bench", tmp_path / "bench")
    shard = next(iter(sorted((bench / "ref").glob("*.parquet"))))
    table = pq.read_table(shard)
    labels = table.column("label").to_pylist()
    labels[1] = None
    pq.write_table(table.set_column(table.schema.get_field_index("label"), table.schema.field("label"), [labels]), shard)
    key = table.column("key")[1].as_py()
    page = parse(write_report([scored / "results" / "color.json"], tmp_path / "r.html", benchmarks=[str(bench)]).path)
    assert page.sections["errors"] == "part shown"  # the other config still shows
    assert f"ref/{shard.name}: sample '{key}' has label None, not an integer; run 'build-benchmark verify' on it" in page.note("errors")
