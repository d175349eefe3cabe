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
