"""A built benchmark as its users read it: ``datasets`` (Parquet, streaming or not, and the
webdataset builder) and the ``webdataset`` library, each checked against the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import check_rows, expected_records
from PIL import Image


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_load_dataset_parquet_configs(tiny_build: Path, streaming: bool) -> None:
    from datasets import load_dataset

    manifest = json.loads((tiny_build / "manifest.json").read_text())
    for config in manifest["configs"]:
        dataset = load_dataset(str(tiny_build), name=config, split=manifest["split"], streaming=streaming)
        rows = list(dataset)
        check_rows(rows, expected_records(tiny_build, config), manifest["class_names"])
        assert dataset.features["label"].names == manifest["class_names"]
        assert isinstance(rows[0]["original_image"], Image.Image)


def test_load_dataset_webdataset_builder(tiny_build: Path) -> None:
    from datasets import load_dataset

    manifest = json.loads((tiny_build / "manifest.json").read_text())
    config = next(iter(manifest["configs"]))
    files = sorted(str(tiny_build / s["files"]["webdataset"]["path"]) for s in manifest["configs"][config]["shards"])
    dataset = load_dataset("webdataset", data_files={"test": files}, split="test")
    expected = expected_records(tiny_build, config)
    assert len(dataset) == len(expected)
    for row in dataset:
        record = expected[row["__key__"]]
        assert row["json"] == record and int(row["cls"]) == record["label"]
        assert isinstance(row["png"], Image.Image) and isinstance(row["original.png"], Image.Image)


def test_webdataset_library_with_the_card_url_pattern(tiny_build: Path) -> None:
    """The brace pattern printed in the card opens every shard, in order."""
    import re

    import webdataset as wds

    card = (tiny_build / "README.md").read_text()
    pattern = re.search(r'wds\.WebDataset\("([^"]+)"', card).group(1)  # type: ignore[union-attr]
    dataset = wds.WebDataset(str(tiny_build / pattern), shardshuffle=False).decode("pil")
    rows = list(dataset)
    config = pattern.split("/")[0]
    expected = expected_records(tiny_build, config)
    assert [row["__key__"] for row in rows] == sorted(expected)
    for row in rows:
        assert row["json"] == expected[row["__key__"]]
        assert row["png"].size == (16, 16) and row["original.png"].size == (16, 16)


@pytest.mark.parametrize("formats", [["webdataset"], ["parquet"]])
def test_the_card_shows_only_the_ways_to_load_what_was_written(tiny_recipe: Path, tmp_path: Path, formats: list[str]) -> None:
    """A tar-only build's configs point at its tars (without them the Hub merged every config into
    one split), and load by name through datasets' webdataset builder; a Parquet-only build has
    no tars to point webdataset at (both cards said both)."""
    import re

    import webdataset as wds
    import yaml
    from click.testing import CliRunner

    from builder.cli import main

    out = tmp_path / "out"
    built = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress", "--set", f"output.formats=[{formats[0]}]"])
    assert built.exit_code == 0, built.output
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    if formats == ["webdataset"]:
        assert header["configs"] == [{"config_name": "cnn", "data_files": [{"split": "test", "path": "cnn/test-*.tar"}], "default": True}]
        assert "dataset_info" not in header and 'name="cnn"' in card
        from datasets import load_dataset

        from builder.verify import verify_benchmark

        assert verify_benchmark(out).ok  # the card's configs are its tars
        loaded = load_dataset(str(out), name="cnn", split="test")
        assert len(loaded) == 12 and len(set(loaded["__key__"])) == 12 and "png" in loaded.column_names
        pattern = re.search(r'wds\.WebDataset\("([^"]+)"', card).group(1)  # type: ignore[union-attr]
        assert len(list(wds.WebDataset(str(out / pattern), shardshuffle=False))) == 12
    else:
        assert [config["config_name"] for config in header["configs"]] == ["cnn"]
        assert ".tar" not in card and "wds.WebDataset" not in card


def test_the_cards_table_shows_the_manifests_figures(tiny_build: Path) -> None:
    """The white-box table reads SA, PA, FMR and PA (perturbed only) from the manifest as written:
    the checked manifest's unset ``pa_all`` (a field of pre-rename manifests) was taken for an old
    row, so every card showed PA 0.0 and the real PA under "perturbed only"."""
    import re

    from builder.benchmark import read_manifest
    from builder.card import render_card, schema_of

    path = tiny_build / "manifest.json"
    raw = json.loads(path.read_text())
    figures = {"sa": 0.75, "pa": 0.5, "fmr": 66.666667, "pa_perturbed": 0.25}
    raw["configs"]["cnn"].update(figures)
    path.write_text(json.dumps(raw))  # read_manifest does not check the id: render_card shows what it is given
    manifest = read_manifest(tiny_build)
    row = next(line for line in render_card(manifest, schema_of(manifest)).splitlines() if line.startswith("| `cnn` |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[-4:] == ["75.0", "50.0", "66.7", "25.0"], row
    assert re.search(r"\| PA \| FMR \| PA \(perturbed only\) \|", render_card(manifest, schema_of(manifest)))


def test_undefined_figures_read_as_undefined_not_zero(tiny_build: Path) -> None:
    """FMR with no correct original, and the mean steps and PA of the perturbed samples when none
    was perturbed, are undefined: the card and the build's summary showed 0.0 ("every sample
    wrong"), while score writes null for them."""
    from types import SimpleNamespace

    from builder.benchmark import read_manifest
    from builder.card import render_card, schema_of
    from builder.cli import format_summary

    path = tiny_build / "manifest.json"
    raw = json.loads(path.read_text())
    raw["configs"]["cnn"].update({"sa": 0.0, "pa": 0.25, "fmr": 0.0, "num_perturbed": 0, "perturbed_share": 0.0, "pa_perturbed": 0.0, "mean_steps": 0.0})
    path.write_text(json.dumps(raw))
    manifest = read_manifest(tiny_build)
    row = next(line for line in render_card(manifest, schema_of(manifest)).splitlines() if line.startswith("| `cnn` |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[-6:] == ["0.0%", "–", "0.0", "25.0", "–", "–"], row
    summary = SimpleNamespace(out_dir=tiny_build, seconds=1.0, source_samples=12, rejects=0, configs={"cnn": manifest["configs"]["cnn"]},
                              manifest_id=manifest["id"])
    line = next(text for text in format_summary("tiny", summary).splitlines() if text.startswith("cnn "))
    assert line.split() == ["cnn", "12", "0.0%", "–", "0.0%", "25.0%", "–", "–"]
