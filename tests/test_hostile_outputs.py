"""The output dir owns only what a build wrote; no name leads out of it; bad outputs are one line.

Each test is a careless or hostile use of ``run --out``: the user's files must survive it
byte for byte, and every refusal is one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error, shard_hashes

from builder.cli import main
from builder.errors import OutputError
from builder.fileio import inside


def run(recipe: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", str(out), "--device", "cpu", "--no-progress", *extra])


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """The issue's example: a project dir holding a ``manifest.json`` that is not ours, and code."""
    project = tmp_path / "P"
    (project / "src").mkdir(parents=True)
    (project / "manifest.json").write_text("{}")
    (project / "src" / "main.js").write_text("console.log('precious')")
    return project


def test_overwrite_refuses_a_dir_whose_manifest_is_not_ours(tiny_recipe: Path, user_project: Path) -> None:
    before = snapshot(user_project)
    assert_one_line_error(run(tiny_recipe, user_project, "--overwrite"), "refusing to overwrite", "holds no build of this tool")
    assert snapshot(user_project) == before


def test_write_into_a_foreign_dir_does_not_suggest_overwrite(tiny_recipe: Path, user_project: Path) -> None:
    result = run(tiny_recipe, user_project)
    assert_one_line_error(result, "refusing to write into")
    assert "--overwrite" not in result.output


def test_rerunning_a_finished_build_keeps_the_users_files(tiny_build: Path, tiny_recipe: Path) -> None:
    (tiny_build / "results.json").write_text('{"mine": 1}')
    (tiny_build / "notes").mkdir()
    (tiny_build / "notes" / "todo.md").write_text("look at class 3")
    hashes = shard_hashes(tiny_build)
    result = run(tiny_recipe, tiny_build)
    assert result.exit_code == 0, result.output
    assert (tiny_build / "results.json").read_text() == '{"mine": 1}'
    assert (tiny_build / "notes" / "todo.md").read_text() == "look at class 3"
    assert shard_hashes(tiny_build) == hashes


def test_overwrite_of_a_build_with_user_files_is_refused_naming_them(tiny_build: Path, tiny_recipe: Path) -> None:
    (tiny_build / "results.json").write_text("{}")
    (tiny_build / "notes").mkdir()
    (tiny_build / "notes" / "todo.md").write_text("x")
    before = snapshot(tiny_build)
    assert_one_line_error(run(tiny_recipe, tiny_build, "--overwrite", "--limit", "4"), "did not write", "results.json", "notes/todo.md", "--force-clean")
    assert snapshot(tiny_build) == before


def test_overwrite_with_force_clean_deletes_them_too(tiny_build: Path, tiny_recipe: Path) -> None:
    (tiny_build / "results.json").write_text("{}")
    (tiny_build / "notes").mkdir()
    (tiny_build / "notes" / "todo.md").write_text("x")
    result = run(tiny_recipe, tiny_build, "--overwrite", "--force-clean", "--limit", "4")
    assert result.exit_code == 0, result.output
    assert not (tiny_build / "results.json").exists() and not (tiny_build / "notes").exists()
    assert json.loads((tiny_build / "manifest.json").read_text())["source_samples"] == 4


def test_overwrite_of_a_plain_build_replaces_only_its_files(tiny_build: Path, tiny_recipe: Path) -> None:
    result = run(tiny_recipe, tiny_build, "--overwrite", "--limit", "4")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    listed = {f for c in manifest["configs"].values() for s in c["shards"] for f in (e["path"] for e in s["files"].values())}
    on_disk = {p for p in snapshot(tiny_build) if p.startswith("cnn/")}
    assert on_disk == listed  # the 3-shard build's extra shards are gone, nothing else was added


def test_a_user_file_inside_a_config_dir_blocks_resume(tiny_build: Path, tiny_recipe: Path) -> None:
    (tiny_build / "cnn" / "extra.parquet").write_bytes(b"mine")
    assert_one_line_error(run(tiny_recipe, tiny_build), "refusing to resume", "cnn/extra.parquet", "--force-clean")
    assert (tiny_build / "cnn" / "extra.parquet").read_bytes() == b"mine"


def test_a_hostile_build_json_cannot_claim_user_files(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "_stats").mkdir(parents=True)
    (out / "_stats" / "build.json").write_text(json.dumps({"format": "fmr-benchmark/1", "configs": ["src", "../x"]}))
    (out / "src").mkdir()
    (out / "src" / "main.js").write_text("precious")
    assert_one_line_error(run(tiny_recipe, out, "--overwrite"), "did not write", "src/main.js")
    assert (out / "src" / "main.js").read_text() == "precious"


def test_a_symlink_in_the_dir_is_removed_not_its_target(tiny_build: Path, tiny_recipe: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tiny_build / "cnn" / ".test-00000-of-00003.tar.tmp-h-1-ab").symlink_to(target)  # a crash leftover name
    result = run(tiny_recipe, tiny_build, "--overwrite")
    assert result.exit_code == 0, result.output
    assert target.read_text() == "keep me"


def test_garbage_build_json_is_not_a_build(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "_stats").mkdir(parents=True)
    (out / "_stats" / "build.json").write_text("[[[[")
    assert_one_line_error(run(tiny_recipe, out, "--overwrite"), "holds no build of this tool")
    assert (out / "_stats" / "build.json").read_text() == "[[[["


@pytest.mark.parametrize("split", ["../../escape", "/tmp/fmr-abs-split", "..", "a/b", ""])
def test_split_cannot_lead_out_of_the_output(tiny_recipe: Path, tmp_path: Path, split: str) -> None:
    out = tmp_path / "deep" / "out"
    result = run(tiny_recipe, out, "--set", f"output.split={split}")
    assert_one_line_error(result, "output.split")
    assert not out.exists() and not (tmp_path / "escape").exists() and not Path("/tmp/fmr-abs-split").exists()


def test_the_writer_refuses_a_path_outside_the_output_as_a_second_guard(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "cfg").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="outside"):
        inside(root, "cfg", "test-00000-of-00001.tar")
    with pytest.raises(OutputError, match="outside"):
        inside(root, "..", "x")
    assert inside(root, "ok", "test.tar") == root / "ok" / "test.tar"


def test_resume_refuses_the_same_recipe_over_another_source(tiny_recipe: Path, tmp_path: Path) -> None:
    """The same recipe text in another dir reads other images: not a resume."""
    out = tmp_path / "out"
    assert run(tiny_recipe, out).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tiny_recipe, elsewhere / "tiny.yaml")
    for name in ("vqgan.yaml", "vqgan.ckpt", "theta.pt", "oracle.pt"):
        shutil.copy(tmp_path / name, elsewhere / name)
    shutil.copytree(tmp_path / "images", elsewhere / "images")
    shutil.rmtree(elsewhere / "images" / "blue")  # another listing: two classes only
    (elsewhere / "images" / "purple").mkdir()
    shutil.copy(tmp_path / "images" / "red" / "0.png", elsewhere / "images" / "purple" / "0.png")
    before = snapshot(out)
    assert_one_line_error(run(elsewhere / "tiny.yaml", out), "different settings", "source.")
    assert snapshot(out) == before


def test_the_same_images_in_another_place_are_another_source(tiny_recipe: Path, tmp_path: Path) -> None:
    """Same recipe text, same file names, same classes: only the resolved location differs."""
    out = tmp_path / "out"
    assert run(tiny_recipe, out, "--limit", "4").exit_code == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(tmp_path / "images", moved / "images")
    for name in ("tiny.yaml", "vqgan.yaml", "vqgan.ckpt", "theta.pt", "oracle.pt"):
        shutil.copy(tmp_path / name, moved / name)
    assert_one_line_error(run(moved / "tiny.yaml", out, "--limit", "4"), "different settings", "source.locations")


def test_a_component_that_fails_to_load_leaves_nothing(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "theta.pt").rename(tmp_path / "theta.bak")
    assert_one_line_error(run(tiny_recipe, out), "theta.pt")
    assert not out.exists()
    (tmp_path / "theta.bak").rename(tmp_path / "theta.pt")
    result = run(tiny_recipe, out)  # the corrected re-run needs no --overwrite
    assert result.exit_code == 0, result.output


def test_a_failed_load_into_an_existing_build_changes_nothing(tiny_build: Path, tiny_recipe: Path, tmp_path: Path) -> None:
    before = snapshot(tiny_build)
    (tmp_path / "theta.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(run(tiny_recipe, tiny_build, "--overwrite", "--limit", "4"))
    assert snapshot(tiny_build) == before


def test_out_is_a_file(tiny_recipe: Path, tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert_one_line_error(run(tiny_recipe, target), "is a file")
    assert target.read_text() == "x"


def test_out_below_a_file_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    assert_one_line_error(run(tiny_recipe, tmp_path / "file.txt" / "out"), "file.txt")


def test_out_on_a_read_only_filesystem_is_one_line(tiny_recipe: Path) -> None:
    assert_one_line_error(run(tiny_recipe, Path("/proc/fmr-builder-out")), "/proc/fmr-builder-out")


def test_seed_beyond_64_bits_is_one_line(tiny_recipe: Path, tmp_path: Path) -> None:
    assert_one_line_error(run(tiny_recipe, tmp_path / "out", "--seed", "9" * 30), "seed")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", [["--limit", "0"], ["--batch-size", "-1"], ["--limit", "abc"], ["--device", "tpu:9"], ["--nonsense"]])
def test_bad_flags_are_one_line(tiny_recipe: Path, tmp_path: Path, flag: list[str]) -> None:
    assert_one_line_error(run(tiny_recipe, tmp_path / "out", *flag), "--help" if flag[0] != "--device" else "--device")
    assert not (tmp_path / "out").exists()


def test_verbose_shows_the_traceback_behind_the_line(tiny_recipe: Path, tmp_path: Path) -> None:
    (tmp_path / "theta.pt").unlink()
    result = CliRunner().invoke(main, ["-v", "run", str(tiny_recipe), "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2
    assert "Traceback" in result.output and result.output.strip().splitlines()[-1].startswith("error: ")


def test_a_read_only_output_dir_is_one_line(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing, empty dir the build may not write to (tests run as root, where chmod does
    not stop writes, so the refusal the OS would give is injected at the first write)."""
    import builder.outdir

    def refuse(path: Path, payload: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    out = tmp_path / "read-only"
    out.mkdir()
    monkeypatch.setattr(builder.outdir, "write_json_atomic", refuse)
    assert_one_line_error(run(tiny_recipe, out), "cannot prepare --out", "Permission denied")
    assert list(out.iterdir()) == []


def test_shard_names_of_a_build_with_100000_units_or_more_are_its_own() -> None:
    """Unit numbers grow past five digits at 100,000 units: those shards are the build's own,
    or a resume and --overwrite would take them for the user's files."""
    import builder.writers  # noqa: F401 - registers the formats
    from builder.build.units import plan_units
    from builder.outdir import is_owned

    units = list(plan_units(100_001, 1))
    for unit in (units[0], units[-1]):
        stem = unit.shard_stem("test")
        assert is_owned(f"cnn/{stem}.parquet", {"cnn"}) and is_owned(f"cnn/{stem}.tar", {"cnn"}), stem
    assert units[-1].shard_stem("test") == "test-100000-of-100001"
    assert not is_owned("cnn/test-1234-of-100001.parquet", {"cnn"}) and not is_owned("cnn/notes-00000-of-00001.txt", {"cnn"})


def test_a_dir_that_changes_between_planning_and_the_lock_is_left_alone(tiny_build: Path, tiny_recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning decides what to delete before the output lock is taken (the components load in
    between): a file another build wrote there meanwhile must not be deleted on that stale plan."""
    import builder.build as build_module

    planned = build_module.plan_build

    def then_another_build_writes(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        plan = planned(*args, **kwargs)
        (tiny_build / "cnn" / "test-00007-of-00008.parquet").write_bytes(b"another build's shard")
        return plan

    monkeypatch.setattr(build_module, "plan_build", then_another_build_writes)
    before = snapshot(tiny_build)
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(tiny_build), "--overwrite", "--no-progress"])
    assert_one_line_error(result, f"--out {tiny_build} changed while this build was starting", "nothing was deleted: run the command again")
    after = snapshot(tiny_build)
    assert after.pop("cnn/test-00007-of-00008.parquet") and after == before


def test_a_resume_reads_each_finished_shard_once(tiny_build: Path, tiny_recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning checks every finished unit's files against their sha256, and the check under the
    lock did it all again (on a store, every shard downloaded twice); it now compares listings."""
    from collections import Counter

    from builder.storage import LocalStorage

    (tiny_build / "_stats" / "cnn" / "test-00002-of-00003.json").unlink()
    checked: Counter[str] = Counter()
    matches = LocalStorage.matches

    def counted(self, relative, size, sha256):  # noqa: ANN001, ANN202
        checked[relative] += 1
        return matches(self, relative, size, sha256)

    monkeypatch.setattr(LocalStorage, "matches", counted)
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(tiny_build), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert checked and set(checked.values()) == {1}, checked


def test_a_batch_that_does_not_fit_fails_before_overwrite_deletes_anything(tiny_build: Path, tiny_recipe: Path) -> None:
    """--overwrite deleted the old build before the first batch ran; a batch that did not fit then
    left a dir holding only _stats/build.json. One full-batch step now runs while the workers load."""
    before = snapshot(tiny_build)
    model = f"reference_models.0.model=py:{Path(__file__).parent / 'tiny_models.py'}:small_batches_only"
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(tiny_build), "--overwrite", "--no-progress",
                                       "--device", "cpu", "--set", model, "--batch-size", "4"])
    assert_one_line_error(result, "config cnn: a step of a batch of 4 images of 16 px failed on cpu (OutOfMemoryError: CUDA out of memory",
                          "lower --batch-size")
    assert snapshot(tiny_build) == before
    fits = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(tiny_build), "--overwrite", "--no-progress",
                                     "--device", "cpu", "--set", model, "--batch-size", "2"])
    assert fits.exit_code == 0, fits.output


def test_an_out_dir_inside_the_source_data_is_refused(tiny_recipe: Path) -> None:
    """--out inside an imagefolder wrote the build into the data: its preview.png became a sample
    of the next build (13 source samples instead of 12)."""
    images = tiny_recipe.parent / "images"
    before = snapshot(images)
    for out in (images / "red" / "bench", images):
        result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(out), "--no-progress"])
        assert_one_line_error(result, f"--out {out} lies inside the source's data (source.path images)", "give an --out outside it")
    assert snapshot(images) == before
