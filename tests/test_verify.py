"""``build-benchmark verify`` on the tiny build: a fresh build passes, each kind of damage is named."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from builder.cli import main
from builder.fileio import sha256_file, sha256_json
from builder.verify import VerifyError, few, verify_benchmark

SHARDS = [f"cnn/test-0000{i}-of-00003" for i in range(3)]


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def rewrite_manifest(root: Path, manifest: dict) -> None:
    """Record the shards' current bytes and sha256 and recompute the id, as a build would."""
    for config in manifest["configs"].values():
        for shard in config["shards"]:
            for entry in shard["files"].values():
                entry["sha256"], entry["bytes"] = sha256_file(root / entry["path"]), (root / entry["path"]).stat().st_size
    manifest["id"] = sha256_json({"recipe": manifest["recipe_sha256"], "configs": manifest["configs"]})
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def edit_parquet(path: Path, column: str, row: int, value: object) -> None:
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = value
    pq.write_table(table.set_column(table.schema.get_field_index(column), table.schema.field(column), [values]), path)


def rename_in_tar(path: Path, old: str, new: str) -> None:
    """Give sample ``old`` the key ``new`` (member names and its json), other bytes unchanged."""
    members = []
    with tarfile.open(path) as tar:
        for member in tar:
            data = tar.extractfile(member).read()
            key, _, extension = member.name.partition(".")
            if key == old:
                member.name = f"{new}.{extension}"
                if extension == "json":
                    data = json.dumps({**json.loads(data), "key": new}, sort_keys=True).encode()
            member.size = len(data)
            members.append((member, data))
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))


def invoke(*args: str):
    return CliRunner().invoke(main, ["-q", "verify", *args], catch_exceptions=False)


def test_fresh_build_passes_with_oracle(tiny_build: Path, tiny_recipe: Path) -> None:
    report = verify_benchmark(tiny_build, oracle=True, recipe=str(tiny_recipe))
    assert report.ok, report.failures
    assert report.checked["configs"] == 1 and report.checked["shards"] == 3
    assert report.checked["files"] == 6 and report.checked["records"] == 12
    perturbed = manifest_of(tiny_build)["configs"]["cnn"]["num_perturbed"]
    assert perturbed > 0 and report.checked["oracle_images"] == perturbed
    assert report.oracle_rates == {"cnn": 1.0}
    assert verify_benchmark(tiny_build).oracle_rates == {}


def test_a_license_recorded_before_licenses_were_checked_still_verifies_with_oracle(tiny_build: Path, tiny_recipe: Path) -> None:
    """The oracle is loaded from the recorded recipe, which must parse with this version: a
    license the Hub does not take (recipes are now refused for it) judges nothing and passes."""
    manifest = manifest_of(tiny_build)
    manifest["recipe"]["license"] = "Research only"
    manifest["recipe_sha256"] = sha256_json(manifest["recipe"])
    rewrite_manifest(tiny_build, manifest)
    report = verify_benchmark(tiny_build, oracle=True, recipe=str(tiny_recipe))
    assert report.ok and report.oracle_rates == {"cnn": 1.0}, report.failures


def test_flipped_byte_in_a_tar_names_file_and_sha256(tiny_build: Path) -> None:
    path = tiny_build / f"{SHARDS[1]}.tar"
    with tarfile.open(path) as tar:
        image = max(tar.getmembers(), key=lambda m: m.size)
    data = bytearray(path.read_bytes())
    data[image.offset_data + image.size // 2] ^= 0xFF  # inside an image, so the tar still reads
    path.write_bytes(bytes(data))
    report = verify_benchmark(tiny_build)
    assert not report.ok
    assert len(report.failures) == 1, report.failures
    assert report.failures[0].startswith(f"{SHARDS[1]}.tar: sha256 is ")
    assert manifest_of(tiny_build)["configs"]["cnn"]["shards"][1]["files"]["webdataset"]["sha256"] in report.failures[0]


def test_deleted_parquet_shard(tiny_build: Path) -> None:
    (tiny_build / f"{SHARDS[2]}.parquet").unlink()
    report = verify_benchmark(tiny_build)
    assert report.failures == (f"{SHARDS[2]}.parquet: missing, but manifest.json lists it (parquet); restore it or rebuild",)


def test_renamed_data_files_path_in_the_card(tiny_build: Path) -> None:
    card = (tiny_build / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    data = yaml.safe_load(header)
    assert data["configs"][0]["data_files"][0]["path"] == "cnn/test-*.parquet"
    data["configs"][0]["data_files"][0]["path"] = "cnn/train-*.parquet"
    (tiny_build / "README.md").write_text(f"---\n{yaml.safe_dump(data, sort_keys=False)}---\n{body}")
    report = verify_benchmark(tiny_build)
    assert len(report.failures) == 1, report.failures
    assert report.failures[0].startswith("README.md: config 'cnn' data_files path 'cnn/train-*.parquet' matches no file")


def test_card_yaml_that_does_not_parse(tiny_build: Path) -> None:
    card = (tiny_build / "README.md").read_text()
    (tiny_build / "README.md").write_text(card.replace("configs:", "configs: [unclosed", 1))
    report = verify_benchmark(tiny_build)
    assert len(report.failures) == 1 and "README.md: the YAML front matter does not parse" in report.failures[0], report.failures


def test_duplicated_key_names_the_key_and_both_shards(tiny_build: Path) -> None:
    first_key = pq.read_table(tiny_build / f"{SHARDS[0]}.parquet", columns=["key"]).column("key")[0].as_py()
    second = pq.read_table(tiny_build / f"{SHARDS[1]}.parquet", columns=["key"]).column("key")[0].as_py()
    edit_parquet(tiny_build / f"{SHARDS[1]}.parquet", "key", 0, first_key)
    rename_in_tar(tiny_build / f"{SHARDS[1]}.tar", second, first_key)
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    report = verify_benchmark(tiny_build)
    assert report.failures == (
        f"config 'cnn': key(s) {first_key} are in shards {SHARDS[0]} and {SHARDS[1]}; keys must be unique within a config",
    )


def test_label_out_of_range(tiny_build: Path) -> None:
    edit_parquet(tiny_build / f"{SHARDS[0]}.parquet", "label", 2, 7)
    key = pq.read_table(tiny_build / f"{SHARDS[0]}.parquet", columns=["key"]).column("key")[2].as_py()
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    report = verify_benchmark(tiny_build)
    path = f"{SHARDS[0]}.parquet"
    assert f"{path}: label 7 of key {key} is outside 0..2 (the 3 class_names); 1 such sample(s): {key}" in report.failures
    assert f"{SHARDS[0]}.tar: key {key} has label 0, perturbed False, but {path} has 7, False; 1 such key(s): {key}" in report.failures
    assert len(report.failures) == 2, report.failures


def test_manifest_edits_are_caught(tiny_build: Path) -> None:
    manifest = manifest_of(tiny_build)
    manifest["configs"]["cnn"]["shards"][0]["num_samples"] = 6
    (tiny_build / "manifest.json").write_text(json.dumps(manifest))
    (tiny_build / "cnn" / "test-00009-of-00003.parquet").write_bytes(b"x")
    failures = verify_benchmark(tiny_build).failures
    assert f"{SHARDS[0]}.parquet: holds 5 samples, but manifest.json says num_samples 6" in failures
    assert f"{SHARDS[0]}.tar: holds 5 samples, but manifest.json says num_samples 6" in failures
    assert "manifest.json: config 'cnn' has num_samples 12, but its shards add up to 13" in failures
    assert any(f.startswith("manifest.json: id is ") for f in failures)
    assert "cnn/test-00009-of-00003.parquet: in config dir cnn/ but not listed in manifest.json; delete it or rebuild" in failures
    assert "README.md: config 'cnn' data_files also match cnn/test-00009-of-00003.parquet, which is not a Parquet shard of 'cnn' in manifest.json" in failures
    assert len(failures) == 6, failures


def test_oracle_rejection_lists_the_keys(tiny_build: Path, tiny_recipe: Path) -> None:
    """A perturbed image relabelled: the oracle (which accepted it under its true label) now disagrees."""
    tables = {shard: pq.read_table(tiny_build / f"{shard}.parquet", columns=["key", "label", "perturbed"]).to_pylist() for shard in SHARDS}
    path, table, row = next((tiny_build / f"{shard}.parquet", rows, i) for shard, rows in tables.items() for i, r in enumerate(rows) if r["perturbed"])
    edit_parquet(path, "label", row, (table[row]["label"] + 1) % 3)
    report = verify_benchmark(tiny_build, oracle=True, recipe=str(tiny_recipe))
    assert report.oracle_rates["cnn"] < 1.0
    count = manifest_of(tiny_build)["configs"]["cnn"]["num_perturbed"]
    assert f"oracle: config 'cnn': 1 of {count} perturbed images" in "\n".join(report.failures)
    assert any(f.startswith("oracle:") and f.endswith(f"no longer get their label: {table[row]['key']}") for f in report.failures)


def test_missing_manifest_is_the_only_failure(tiny_build: Path) -> None:
    (tiny_build / "manifest.json").unlink()
    report = verify_benchmark(tiny_build)
    assert report.failures == ("manifest.json: missing; rebuild with 'build-benchmark run' (its last step writes it)",)


def test_not_a_benchmark_dir(tmp_path: Path) -> None:
    with pytest.raises(VerifyError, match="no such directory"):
        verify_benchmark(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VerifyError, match="not a benchmark dir"):
        verify_benchmark(tmp_path)


def test_cli_exit_codes_and_output(tiny_build: Path, tmp_path: Path) -> None:
    ok = invoke(str(tiny_build), "--json", str(tmp_path / "report.json"))
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith(f"verify: {tiny_build} is consistent: 1 config(s), 3 shard(s), 6 shard file(s)")
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True

    (tiny_build / f"{SHARDS[2]}.parquet").unlink()
    (tiny_build / "rejects.jsonl").unlink()
    bad = invoke(str(tiny_build))
    assert bad.exit_code == 1
    assert bad.output.splitlines() == [
        f"verify: 2 problem(s) in {tiny_build}",
        f"{SHARDS[2]}.parquet: missing, but manifest.json lists it (parquet); restore it or rebuild",
        "rejects.jsonl: missing; manifest.json records 1 rejected sample(s)",
    ]

    for flag in (("--recipe", "tiny.yaml"), ("--device", "cpu"), ("--batch-size", "8")):  # oracle options without --oracle did nothing
        refused = invoke(str(tiny_build), *flag)
        expected = f"error: {flag[0]} goes with --oracle (the oracle re-run on every perturbed image); add --oracle or drop {flag[0]}"
        assert refused.exit_code == 2 and refused.output.strip() == expected

    missing = invoke(str(tmp_path / "nowhere"))
    assert missing.exit_code == 2
    assert missing.output.strip().splitlines() == [f"error: verify {tmp_path / 'nowhere'}: no such directory; give a dir written by 'build-benchmark run'"]


def test_cli_oracle_without_its_weights_is_one_line(tiny_build: Path, tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no --recipe: relative paths resolve against the current dir
    refused = invoke(str(tiny_build), "--oracle", "--device", "cpu")  # the recorded oracle is py: code
    assert refused.exit_code == 2 and "--trust-remote-code" in refused.output, refused.output
    result = invoke(str(tiny_build), "--oracle", "--device", "cpu", "--trust-remote-code")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --oracle: cannot load the oracle:"), result.output
    assert str(elsewhere / "oracle.pt") in lines[0] and "--recipe" in lines[0]
    ok = invoke(str(tiny_build), "--oracle", "--device", "cpu", "--recipe", str(tiny_recipe), "--batch-size", "2")
    assert ok.exit_code == 0, ok.output
    assert "oracle: config 'cnn': 100.0% of the perturbed images keep their label" in ok.output


def test_oracle_trained_on_first_use_is_never_trained_by_verify(tiny_build: Path, tiny_recipe: Path) -> None:
    manifest = manifest_of(tiny_build)
    manifest["recipe"]["oracle"]["model"]["train"] = {"epochs": 1}
    (tiny_build / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match=r"oracle-[0-9a-f]{12}\.pt do not exist \(a build would train them; verify does not\)"):
        verify_benchmark(tiny_build, oracle=True, recipe=str(tiny_recipe), trust_remote_code=True)
    assert not list(tiny_recipe.parent.glob("oracle-*.pt"))


def _card_yaml(root: Path, change) -> None:
    _, header, body = (root / "README.md").read_text().split("---\n", 2)
    data = yaml.safe_load(header)
    change(data)
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(data, sort_keys=False)}---\n{body}")


def _drop_reject(root: Path) -> None:
    (root / "rejects.jsonl").write_text("")


def _stray_dir(root: Path) -> None:
    (root / "stray").mkdir()


def _no_card(root: Path) -> None:
    (root / "README.md").unlink()


def _no_front_matter(root: Path) -> None:
    (root / "README.md").write_text((root / "README.md").read_text().split("---\n", 2)[2])


def _renamed_config(root: Path) -> None:
    _card_yaml(root, lambda data: data["configs"][0].update(config_name="other"))


def _card_shards_cut(root: Path) -> None:
    _card_yaml(root, lambda data: data["configs"][0]["data_files"][0].update(path="cnn/test-00000-of-00003.parquet"))


@pytest.mark.parametrize("damage, expected", [
    (_drop_reject, ["rejects.jsonl: 0 line(s), but manifest.json records num_rejects 1"]),
    (_stray_dir, ["stray/: a directory that is not a config of manifest.json (cnn); delete it or rebuild"]),
    (_no_card, ["README.md: missing; it is the dataset card the Hub reads, rebuild to write it"]),
    (_no_front_matter, ["README.md: no YAML front matter (a '---' block at the top); rebuild to re-render the card"]),
    (_renamed_config, ["README.md: YAML 'configs' has no config_name 'cnn' (a config of manifest.json); re-render the card by rebuilding",
                       "README.md: YAML config_name 'other' is not a config of manifest.json (cnn)"]),
    (_card_shards_cut, ["README.md: config 'cnn' data_files miss 2 Parquet shard(s) of manifest.json: "]),
], ids=["rejects", "stray-dir", "no-card", "no-front-matter", "renamed-config", "card-misses-shards"])
def test_each_damage_is_named(tiny_build: Path, damage, expected: list[str]) -> None:
    """Damage verify must name, one failure line each (a fresh build passes: above)."""
    damage(tiny_build)
    failures = verify_benchmark(tiny_build).failures
    assert len(failures) == len(expected), failures
    for failure, start in zip(sorted(failures), sorted(expected), strict=True):
        assert failure.startswith(start), (failure, start)


def test_a_flipped_perturbed_flag_is_named(tiny_build: Path) -> None:
    """The Parquet shard says a sample was perturbed (or not) against the tar and the manifest."""
    table = pq.read_table(tiny_build / f"{SHARDS[0]}.parquet", columns=["key", "label", "perturbed"]).to_pylist()
    first, count = table[0], sum(row["perturbed"] for row in table)
    edit_parquet(tiny_build / f"{SHARDS[0]}.parquet", "perturbed", 0, not first["perturbed"])
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    now = count + (-1 if first["perturbed"] else 1)
    key, label, was = first["key"], first["label"], first["perturbed"]
    assert verify_benchmark(tiny_build).failures == (
        f"{SHARDS[0]}.parquet: holds {now} perturbed samples, but manifest.json says num_perturbed {count}",
        f"{SHARDS[0]}.tar: key {key} has label {label}, perturbed {was}, but {SHARDS[0]}.parquet has {label}, {not was}; 1 such key(s): {key}",
    )


def test_a_shard_listing_no_files_or_no_common_format_is_named(tiny_build: Path) -> None:
    """Samples that are nowhere, and shards that no single reader can read, fail verify (both
    passed as 'consistent' while score could not read them)."""
    manifest = manifest_of(tiny_build)
    first = manifest["configs"]["cnn"]["shards"][0]
    for entry in first["files"].values():
        (tiny_build / entry["path"]).unlink()
    first["files"] = {}
    rewrite_manifest(tiny_build, manifest)
    failures = verify_benchmark(tiny_build).failures
    assert "manifest.json: config 'cnn' shard 0 lists no files (its 5 samples are nowhere); rebuild" in failures
    assert "config 'cnn': its shards hold 7 records, but manifest.json counts num_samples 12; rebuild" in failures
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(tiny_build), "--model", "ref:cnn", "--trust-remote-code"])
    assert scored.exit_code == 2


def test_shards_without_a_format_in_common_are_named(tiny_build: Path) -> None:
    manifest = manifest_of(tiny_build)
    for index, shard in enumerate(manifest["configs"]["cnn"]["shards"]):
        dropped = "webdataset" if index == 0 else "parquet"
        (tiny_build / shard["files"].pop(dropped)["path"]).unlink()
    rewrite_manifest(tiny_build, manifest)
    failures = verify_benchmark(tiny_build).failures
    assert list(failures) == ["manifest.json: config 'cnn' has no output format that every shard is written in, so it cannot be read; rebuild"]


def _replace_tar_member(path: Path, name: str, data: bytes) -> None:
    members = []
    with tarfile.open(path) as tar:
        for member in tar:
            payload = data if member.name == name else tar.extractfile(member).read()
            member.size = len(payload)
            members.append((member, payload))
    with tarfile.open(path, "w") as tar:
        for member, payload in members:
            tar.addfile(member, io.BytesIO(payload))


def test_an_image_that_is_not_an_image_is_named_in_either_format(tiny_build: Path) -> None:
    """verify read only the records: a Parquet image that was no image (or null), or a tar member
    of other bytes, passed as long as the manifest's hashes were re-recorded; datasets then gave
    image=None and the gallery a damaged page. Each image's signature is now checked (not decoded)."""
    path = tiny_build / f"{SHARDS[0]}.parquet"
    keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
    edit_parquet(path, "image", 1, {"bytes": b"not an image", "path": "x.png"})
    edit_parquet(path, "original_image", 2, None)
    _replace_tar_member(tiny_build / f"{SHARDS[1]}.tar", f"{pq.read_table(tiny_build / f'{SHARDS[1]}.parquet', columns=['key']).column('key')[0].as_py()}.png", b"GIF89a....")
    tar_key = pq.read_table(tiny_build / f"{SHARDS[1]}.parquet", columns=["key"]).column("key")[0].as_py()
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    failures = verify_benchmark(tiny_build).failures
    assert f"{SHARDS[0]}.parquet: sample {keys[1]}: its image is not a PNG image" in failures
    assert f"{SHARDS[0]}.parquet: sample {keys[2]}: its original_image is missing (no bytes)" in failures
    assert f"{SHARDS[1]}.tar: sample {tar_key}: its .png is not a PNG image" in failures
    assert len(failures) == 3, failures


def test_oracle_names_an_image_that_does_not_decode_instead_of_crashing(tiny_build: Path, tiny_recipe: Path) -> None:
    path, row, key = next((path, row, record["key"]) for path in (tiny_build / f"{shard}.parquet" for shard in SHARDS)
                          for row, record in enumerate(pq.read_table(path, columns=["key", "perturbed"]).to_pylist()) if record["perturbed"])
    edit_parquet(path, "image", row, {"bytes": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "path": "x.png"})  # a PNG signature, then nothing
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    report = verify_benchmark(tiny_build, oracle=True, recipe=str(tiny_recipe))
    assert f"oracle: config 'cnn': 1 perturbed image(s) do not decode, not judged: {key}" in report.failures, report.failures


@pytest.mark.parametrize(("content", "expected"), [(b"\xff\xfe bad\n", "rejects.jsonl: line(s) 1 are not JSON objects in UTF-8"),
                                                   (b'{"source_id": "a"}\n[1]\n', "rejects.jsonl: line(s) 2 are not JSON objects in UTF-8")])
def test_a_damaged_rejects_file_is_named_not_a_traceback(tiny_build: Path, content: bytes, expected: str) -> None:
    (tiny_build / "rejects.jsonl").write_bytes(content)
    result = invoke(str(tiny_build))
    assert result.exit_code == 1 and expected in result.output, result.output


# ----------------------------------------------------------------------------- the card's header, data_files, oracle labels, whose shard, which images


def _swap_class_names(data: dict) -> None:
    label = next(f for f in data["dataset_info"][0]["features"] if f["name"] == "label")
    label["dtype"]["class_label"]["names"] = {"0": "red", "1": "green", "2": "blue"}  # every label now means another class


def _filters(data: dict) -> None:
    data["configs"][0]["filters"] = [["perturbed", "==", True]]  # load_dataset gives the perturbed rows only
    data["dataset_info"][0]["splits"][0]["num_examples"] = 4


def _repeated_config(data: dict) -> None:
    data["configs"].append({"config_name": "cnn", "data_files": [{"split": "test", "path": "cnn/test-*.parquet"}]})


@pytest.mark.parametrize("change, expected", [
    (_swap_class_names, ["README.md: YAML dataset_info[0].features[3].dtype.class_label.names.0 is 'red', expected 'blue', "
                         "unlike the header the build renders from manifest.json (datasets.load_dataset reads it"]),
    (lambda data: data["dataset_info"][0]["splits"][0].update(num_examples=999),
     ["README.md: YAML dataset_info[0].splits[0].num_examples is 999, expected 12, "]),
    (_filters, ["README.md: YAML configs[0].filters is [['perturbed', '==', True]], a key the build does not write, ",
                "README.md: YAML dataset_info[0].splits[0].num_examples is 4, expected 12, "]),
    (lambda data: data["configs"][0].pop("default"), ["README.md: YAML configs[0].default is missing, expected True, "]),
    (lambda data: data.pop("dataset_info"), ["README.md: YAML dataset_info is None, expected a list of 1, "]),
    (_repeated_config, ["README.md: YAML configs[1] repeats config_name 'cnn' of configs[0]; each config is listed once"]),
], ids=["class-names-swapped", "num-examples", "filters", "no-default", "no-dataset-info", "repeated-config"])
def test_a_card_header_that_changes_what_load_dataset_returns_is_named(tiny_build: Path, change, expected: list[str]) -> None:
    """verify compared only each config's config_name and data_files: swapped ClassLabel names, a
    wrong num_examples (load_dataset raises) or a 'filters' key (4 of 12 rows) passed."""
    _card_yaml(tiny_build, change)
    failures = verify_benchmark(tiny_build).failures
    assert len(failures) == len(expected), failures
    for failure, start in zip(sorted(failures), sorted(expected), strict=True):
        assert failure.startswith(start), (failure, start)


def test_the_card_header_is_what_the_card_command_renders(tiny_build: Path) -> None:
    """Re-rendering the card (as publish does, for a repo) keeps it passing."""
    assert CliRunner().invoke(main, ["-q", "card", str(tiny_build), "--repo-id", "org/name"]).exit_code == 0
    assert verify_benchmark(tiny_build).ok


@pytest.mark.parametrize("pattern, problem", [
    ("/etc/host*", "is an absolute path"),
    ("http://127.0.0.1:9/leak?who=me", "is a URL or names another file system"),
    ("hf://datasets/org/name/cnn/*.parquet", "is a URL or names another file system"),
    ("zip://*.parquet::cnn/x.zip", "is a URL or names another file system"),
    ("cnn/../../*", "has a '..' component"),
])
def test_card_data_files_outside_the_dir_are_refused_before_any_listing(tiny_build: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          pattern: str, problem: str) -> None:
    """A downloaded card's data_files made verify list /etc or request a URL (resolve_pattern on anything)."""
    import datasets.data_files

    resolved: list[str] = []
    real = datasets.data_files.resolve_pattern

    def recording(pattern: str, base_path: str, *args, **kwargs):
        resolved.append(pattern)
        return real(pattern, base_path, *args, **kwargs)

    monkeypatch.setattr(datasets.data_files, "resolve_pattern", recording)
    _card_yaml(tiny_build, lambda data: data["configs"][0]["data_files"][0].update(path=["cnn/test-*.parquet", pattern]))
    failures = verify_benchmark(tiny_build).failures
    assert resolved == ["cnn/test-*.parquet"]
    assert len(failures) == 1 and failures[0].startswith(f"README.md: config 'cnn' data_files path {pattern!r} {problem}"), failures


@pytest.mark.parametrize("label", [7, -1])
def test_oracle_skips_a_label_outside_the_classes_that_the_offline_checks_name(tiny_build: Path, tiny_recipe: Path, label: int) -> None:
    """--oracle ended in a traceback (index out of bounds in the oracle's gather) on such a label."""
    path, row, key = next((path, row, record["key"]) for path in (tiny_build / f"{shard}.parquet" for shard in SHARDS)
                          for row, record in enumerate(pq.read_table(path, columns=["key", "perturbed"]).to_pylist()) if record["perturbed"])
    edit_parquet(path, "label", row, label)
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    report = verify_benchmark(tiny_build, oracle=True, recipe=str(tiny_recipe))
    shown = path.relative_to(tiny_build).as_posix()
    assert f"{shown}: label {label} of key {key} is outside 0..2 (the 3 class_names); 1 such sample(s): {key}" in report.failures
    assert report.checked["oracle_images"] == manifest_of(tiny_build)["configs"]["cnn"]["num_perturbed"] - 1
    assert report.oracle_rates == {"cnn": 1.0}


def test_a_shard_of_another_config_is_named(tiny_build: Path) -> None:
    """A shard copied in from another config (its manifest entry re-hashed) passed: its keys,
    labels and counts can all match; its records name the other reference model."""
    path = tiny_build / f"{SHARDS[1]}.parquet"
    keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
    for row in range(len(keys)):
        edit_parquet(path, "reference_model", row, "cnn2")
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    assert verify_benchmark(tiny_build).failures == (
        f"{SHARDS[1]}.parquet: key {keys[0]} has reference_model 'cnn2', but the file is a shard of config 'cnn' (reference model 'cnn'); "
        f"{len(keys)} such sample(s): {few(keys)}; restore the config's own shards or rebuild",
    )


def _tar_member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read()


def test_a_tar_image_unlike_the_parquet_one_is_named(tiny_build: Path) -> None:
    """The tar's perturbed image replaced by another sample's original (manifest re-hashed)
    passed: formats were compared by label and flag only, and --oracle judges the Parquet copy."""
    rows = pq.read_table(tiny_build / f"{SHARDS[1]}.parquet", columns=["key", "label", "perturbed"]).to_pylist()
    target = next(r for r in rows if r["perturbed"])
    donor = next(r["key"] for r in rows if r["label"] != target["label"])
    tar = tiny_build / f"{SHARDS[1]}.tar"
    _replace_tar_member(tar, f"{target['key']}.png", _tar_member(tar, f"{donor}.original.png"))
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    assert verify_benchmark(tiny_build).failures == (
        f"{SHARDS[1]}.tar: the image(s) of key {target['key']} differ from those in {SHARDS[1]}.parquet; 1 such key(s): {target['key']}; "
        "the formats must hold the same images: restore the shards or rebuild",
    )


def test_the_same_pixels_encoded_otherwise_are_the_same_image(tiny_build: Path) -> None:
    """A format may encode its own way: bytes that differ are compared as decoded pixels."""
    from PIL import Image

    key = pq.read_table(tiny_build / f"{SHARDS[0]}.parquet", columns=["key"]).column("key")[0].as_py()
    tar = tiny_build / f"{SHARDS[0]}.tar"
    original = _tar_member(tar, f"{key}.png")
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(original)) as image:
        image.save(buffer, format="PNG", compress_level=0)
    assert buffer.getvalue() != original
    _replace_tar_member(tar, f"{key}.png", buffer.getvalue())
    rewrite_manifest(tiny_build, manifest_of(tiny_build))
    assert verify_benchmark(tiny_build).ok
