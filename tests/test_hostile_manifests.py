"""A benchmark dir is often downloaded or unpacked by hand: every command that reads its
manifest or a result file meets a broken or hostile one with one line, never a traceback,
and never follows a path out of the dir. Property-based: arbitrary manifests and result
files give a valid result or a one-line error, nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.benchmark import read_manifest
from builder.cli import main
from builder.errors import BuilderError

TINY_MODELS = Path(__file__).parent / "tiny_models.py"


def edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        manifest = json.loads((root / "manifest.json").read_text())
        change(manifest)
        (root / "manifest.json").write_text(json.dumps(manifest))

    return apply


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / "manifest.json").write_bytes(data)


def first_file(manifest: dict[str, Any], fmt: str = "parquet") -> dict[str, Any]:
    return manifest["configs"]["cnn"]["shards"][0]["files"][fmt]


def rename_config(manifest: dict[str, Any], name: str) -> None:
    manifest["configs"][name] = manifest["configs"].pop("cnn")


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing configs": (edit(lambda m: m.pop("configs")), "configs"),
    "configs is a list": (edit(lambda m: m.update(configs=[])), "configs"),
    "shard path with ..": (edit(lambda m: first_file(m).update(path="../../../etc/passwd")), "outside the benchmark dir"),
    "absolute shard path": (edit(lambda m: first_file(m).update(path="/etc/passwd")), "outside the benchmark dir"),
    "backslash shard path": (edit(lambda m: first_file(m).update(path="cnn\\..\\..\\x.parquet")), "outside the benchmark dir"),
    "parquet entry naming a tar": (edit(lambda m: first_file(m).update(path=first_file(m, "webdataset")["path"])), "does not end with .parquet"),
    "shard of another config dir": (edit(lambda m: first_file(m).update(path="other/test-00000-of-00003.parquet")), "config dir"),
    "config name that climbs": (edit(lambda m: rename_config(m, "../evil")), "safe path component"),
    "count as a string": (edit(lambda m: m["configs"]["cnn"].update(num_samples="11")), "num_samples"),
    "missing class_names": (edit(lambda m: m.pop("class_names")), "class_names"),
    "a million-deep JSON": (raw(b"[" * 1_000_000 + b"]" * 1_000_000), "nested deeper"),
    "5000-digit integer": (raw(b'{"format": "fmr-benchmark/1", "source_samples": ' + b"7" * 5000 + b"}"), "not valid JSON"),
    "not UTF-8": (raw(b"\xff\xfe{\x00}\x00"), "UTF-8"),
    "a JSON list": (raw(b"[1, 2, 3]"), "not a benchmark manifest"),
    "empty file": (raw(b""), "not valid JSON"),
    "another format": (edit(lambda m: m.update(format="something/2")), "not a benchmark manifest"),
}


def commands(root: Path) -> dict[str, list[str]]:
    return {
        "score": ["score", "--benchmark", str(root), "--model", f"py:{TINY_MODELS}:tiny_cnn", "--workers", "0", "--bootstrap", "0"],
        "publish --dry-run": ["publish", str(root), "--repo-id", "org/x", "--dry-run"],
        "gallery": ["gallery", str(root)],
        "card": ["card", str(root)],
    }


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifests_are_one_line_for_every_reader(built: Path, case: str) -> None:
    breaks, fragment = BROKEN[case]
    breaks(built)
    before = (built / "manifest.json").read_bytes()
    for name, args in commands(built).items():
        result = CliRunner().invoke(main, ["-q", *args])
        assert_one_line_error(result, fragment) if name != "publish --dry-run" else assert_one_line_error(result)
        assert (built / "manifest.json").read_bytes() == before, name
    verified = CliRunner().invoke(main, ["-q", "verify", str(built)])
    assert verified.exit_code == 1 and "Traceback" not in verified.output, verified.output
    assert "manifest.json" in verified.output


def test_publish_never_reads_a_file_outside_the_dir(built: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.parquet"
    secret.write_bytes(b"secret")
    edit(lambda m: first_file(m).update(path=f"cnn/../../{secret.name}"))(built)
    result = CliRunner().invoke(main, ["-q", "publish", str(built), "--repo-id", "org/x", "--dry-run"])
    assert_one_line_error(result, "outside the benchmark dir")
    assert "secret" not in result.output.replace(secret.name, "")


def test_a_missing_reference_model_is_one_line_for_ref(built: Path) -> None:
    edit(lambda m: m["configs"]["cnn"].pop("reference_model"))(built)
    result = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", "ref:cnn", "--workers", "0"])
    assert_one_line_error(result, "reference_model")


def rewrite_tar(path: Path, change: Callable[[str, bytes], list[tuple[str, bytes]]]) -> None:
    """``path`` written again, each member replaced by what ``change(name, data)`` gives."""
    import io
    import tarfile

    with tarfile.open(path) as tar:
        members = [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w") as tar:
        for name, data in (pair for old in members for pair in change(*old)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_damaged_shards_are_one_line_for_score_or_read_right(built: Path) -> None:
    """score pairs each shard's predictions with its records: a manifest whose counts disagree
    with the shards, or an image that does not decode, is one line (they were an ArrowIndexError,
    a numpy broadcast error or a PIL traceback); a stray member in a tar is no sample."""
    args = ["-q", "score", "--benchmark", str(built), "--model", f"py:{TINY_MODELS}:color_net", "--bootstrap", "0"]  # weightless: reproducible
    good = CliRunner().invoke(main, [*args, "--workers", "0"])
    assert good.exit_code == 0, good.output
    manifest = json.loads((built / "manifest.json").read_text())
    for delta in (1, -1):
        edit(lambda m, delta=delta: m["configs"]["cnn"]["shards"][0].update(num_samples=m["configs"]["cnn"]["shards"][0]["num_samples"] + delta))(built)
        count = manifest["configs"]["cnn"]["shards"][0]["num_samples"]
        assert_one_line_error(CliRunner().invoke(main, [*args, "--workers", "0"]),
                              f"config 'cnn' shard 0 holds {count} records, but its manifest says {count + delta}", "verify")
        (built / "manifest.json").write_text(json.dumps(manifest))
    # read from the tars only: a stray member changes nothing; an image that is not one is one line
    edit(lambda m: [shard["files"].pop("parquet") for shard in m["configs"]["cnn"]["shards"]])(built)
    tar = built / manifest["configs"]["cnn"]["shards"][0]["files"]["webdataset"]["path"]
    rewrite_tar(tar, lambda name, data: [(name, data)] + ([("0000.txt", b"stray")] if name.endswith(".json") else []))
    assert CliRunner().invoke(main, [*args, "--workers", "0"]).output == good.output
    rewrite_tar(tar, lambda name, data: [(name, b"not a png" if name.endswith(".png") and "original" not in name else data)])
    for workers in ("0", "1"):
        assert_one_line_error(CliRunner().invoke(main, [*args, "--workers", workers]), f"{tar.name}: cannot read its images", "damaged")


def test_a_shard_that_cannot_be_read_is_one_line_for_score_and_gallery(built: Path, tmp_path: Path) -> None:
    """A Parquet shard cut or overwritten after the build (a bad copy, a partial download):
    score and gallery raised pyarrow's traceback; verify names it too."""
    manifest = json.loads((built / "manifest.json").read_text())
    shard = built / manifest["configs"]["cnn"]["shards"][1]["files"]["parquet"]["path"]
    shard.write_bytes(shard.read_bytes()[:-40])
    fragment = f"{shard.name}: cannot be read (ArrowInvalid: "
    scored = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", f"py:{TINY_MODELS}:color_net", "--workers", "0",
                                       "--bootstrap", "0"])
    assert_one_line_error(scored, fragment, "run 'build-benchmark verify' on it")
    assert_one_line_error(CliRunner().invoke(main, ["-q", "gallery", str(built)]), fragment)
    verified = CliRunner().invoke(main, ["-q", "verify", str(built)])
    assert verified.exit_code == 1 and shard.name in verified.output


RESULTS: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"{", "not valid JSON"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    "no results list": (b'{"results": 3}', "no list of results"),
    "fmr as a string": (b'{"results": [{"name": "m", "model": "timm:x", "benchmark": "b", "benchmark_id": "i", "config": "c", "sa": 0.5, "pa_all": 0.4, "fmr": "80"}]}', "fmr"),
    "missing name": (b'{"results": [{"model": "timm:x", "benchmark": "b", "benchmark_id": "i", "config": "c", "sa": 0.5, "pa_all": 0.4, "fmr": 80}]}', "name"),
}


@pytest.mark.parametrize("case", sorted(RESULTS))
def test_broken_result_files_are_one_line(built: Path, tmp_path: Path, case: str) -> None:
    data, fragment = RESULTS[case]
    path = tmp_path / "results.json"
    path.write_bytes(data)
    assert_one_line_error(CliRunner().invoke(main, ["-q", "leaderboard", str(path), "--out", str(tmp_path / "lb")]), fragment)
    assert_one_line_error(CliRunner().invoke(main, ["-q", "card", str(built), "--results", str(path)]), fragment)
    (built / "leaderboard.json").write_bytes(data if case != "no results list" else b"3")
    assert_one_line_error(CliRunner().invoke(main, ["-q", "card", str(built)]))


# ----------------------------------------------------------------------------- properties

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20)
MANIFEST_KEYS = ("format", "id", "recipe", "recipe_sha256", "split", "class_names", "source_samples", "num_rejects", "configs", "complete")


@st.composite
def manifest_like(draw: st.DrawFn) -> Any:
    """Mostly manifest-shaped JSON with random holes and random values in random places."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    manifest: dict[str, Any] = {"format": "fmr-benchmark/1"}
    for key in draw(st.lists(st.sampled_from(MANIFEST_KEYS), max_size=len(MANIFEST_KEYS), unique=True)):
        manifest[key] = draw(JSON_VALUES)
    if draw(st.booleans()):
        path = draw(st.sampled_from(["cnn/a.parquet", "../x.parquet", "/abs.parquet", "cnn/../../x", "cnn\\x.parquet", "a/b/c.parquet", "cnn/x.tar"]))
        shard = {"num_samples": draw(st.integers(-2, 5)), "num_perturbed": 0, "files": {"parquet": {"path": path, "sha256": "0", "bytes": 1}}}
        manifest["configs"] = {draw(st.sampled_from(["cnn", "../up", "", "Ok", "x" * 80])): {"num_samples": 1, "num_perturbed": 0, "shards": [shard]}}
    return manifest


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=manifest_like())
def test_reading_any_manifest_is_a_result_or_one_line(tmp_path_factory: pytest.TempPathFactory, payload: Any) -> None:
    root = tmp_path_factory.mktemp("m")
    (root / "manifest.json").write_text(json.dumps(payload))
    try:
        manifest = read_manifest(root)
    except BuilderError as error:
        assert "\n" not in str(error) and str(error)
        return
    for config in manifest["configs"].values():  # what was accepted is safe to use as paths
        for shard in config["shards"]:
            for entry in shard["files"].values():
                target = (root / entry["path"]).resolve()
                assert root.resolve() in target.parents


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_reading_any_bytes_as_a_manifest_is_a_result_or_one_line(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    root = tmp_path_factory.mktemp("b")
    (root / "manifest.json").write_bytes(data)
    try:
        read_manifest(root)
    except BuilderError as error:
        assert "\n" not in str(error) and str(error)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=st.one_of(JSON_VALUES, st.fixed_dictionaries({"results": st.lists(JSON_VALUES, max_size=3)})))
def test_reading_any_result_file_is_a_result_or_one_line(tmp_path_factory: pytest.TempPathFactory, payload: Any) -> None:
    from builder.leaderboard import leaderboard_markdown, load_results

    path = tmp_path_factory.mktemp("r") / "results.json"
    path.write_text(json.dumps(payload))
    try:
        rows = load_results([path])
    except BuilderError as error:
        assert "\n" not in str(error) and str(error)
        return
    leaderboard_markdown(rows)  # what was accepted renders


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


@pytest.mark.timeout(60)
def test_a_card_header_bomb_is_a_verify_failure_not_a_hang(built: Path) -> None:
    card = (built / "README.md").read_text()
    (built / "README.md").write_text("---\n" + BOMB + card.split("---", 2)[2])
    result = CliRunner().invoke(main, ["-q", "verify", str(built)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "README.md: the YAML front matter does not parse" in result.output


def test_a_deeply_nested_record_in_a_tar_is_a_verify_failure(built: Path) -> None:
    import io
    import tarfile

    shard = built / "cnn" / "test-00000-of-00003.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name.endswith(".json"):
                data = b"[" * 200_000 + b"]" * 200_000
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    result = CliRunner().invoke(main, ["-q", "verify", str(built)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is not valid JSON" in result.output


@pytest.mark.timeout(60)
def test_a_model_yaml_bomb_is_one_line(built: Path, tmp_path: Path) -> None:
    spec = tmp_path / "model.yaml"
    spec.write_text(BOMB + "model: timm:resnet18\n")
    result = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(built), "--model", str(spec)])
    assert_one_line_error(result, "model.yaml", "aliases")


@pytest.mark.timeout(60)
def test_a_generator_config_bomb_is_one_line(tiny_recipe: Path) -> None:
    (tiny_recipe.parent / "vqgan.yaml").write_text(BOMB)
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "vqgan.yaml" in result.output and "aliases" in result.output
