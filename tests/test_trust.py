"""Manifests and downloads are data: a model spec they name never runs without --trust-remote-code.

A canary module writes a file when it is imported and another when its factory is called;
a refused command must leave both absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import assert_one_line_error

from builder.cli import main

CANARY = '''
from pathlib import Path
Path({imported!r}).write_text("imported")

def net(num_classes=3, **kwargs):
    Path({called!r}).write_text("called")
    import torch
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))
'''


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """``fmr_canary`` on sys.path and ``canary.py`` files; both report import and call."""
    marks = {"imported": tmp_path / "imported.flag", "called": tmp_path / "called.flag"}
    code = CANARY.format(imported=str(marks["imported"]), called=str(marks["called"]))
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "fmr_canary.py").write_text(code)
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.delitem(sys.modules, "fmr_canary", raising=False)
    return {**marks, "code": code}  # type: ignore[dict-item]


def set_reference(bench: Path, spec: dict[str, Any]) -> None:
    manifest = json.loads((bench / "manifest.json").read_text())
    manifest["configs"]["cnn"]["reference_model"] = spec
    (bench / "manifest.json").write_text(json.dumps(manifest))


def score(bench: str, *extra: str):
    return CliRunner().invoke(main, ["-q", "score", "--benchmark", bench, "--model", "ref:cnn", "--workers", "0", "--bootstrap", "0", *extra])


def untouched(canary: dict[str, Any]) -> bool:
    return not canary["imported"].exists() and not canary["called"].exists() and "fmr_canary" not in sys.modules


@pytest.mark.parametrize("spec", ["py:fmr_canary:net", "py:os:system", "py:subprocess:call", "zzz:unknown-scheme"])
def test_a_manifest_spec_that_runs_code_is_refused(tiny_build: Path, canary: dict[str, Any], spec: str) -> None:
    set_reference(tiny_build, {"model": spec, "name": "cnn"})
    assert_one_line_error(score(str(tiny_build)), "manifest of", "trust-remote-code", "nothing was run")
    assert untouched(canary)


def test_an_in_benchmark_file_is_refused_then_runs_when_trusted(tiny_build: Path, canary: dict[str, Any]) -> None:
    (tiny_build / "canary.py").write_text(canary["code"])
    set_reference(tiny_build, {"model": f"py:{tiny_build / 'canary.py'}:net", "name": "cnn", "pretrained": False})
    assert_one_line_error(score(str(tiny_build)), "trust-remote-code")
    assert untouched(canary)
    trusted = score(str(tiny_build), "--trust-remote-code")
    assert canary["imported"].exists() and canary["called"].exists(), trusted.output  # the flag really lets it run


def test_a_timm_reference_needs_no_trust(tiny_build: Path) -> None:
    """Only schemes that run code are gated: a timm spec goes on to load (and fails here
    for its own reason, one line, without mentioning trust)."""
    set_reference(tiny_build, {"model": "timm:no_such_model_xyz", "name": "cnn"})
    result = score(str(tiny_build))
    assert_one_line_error(result, "timm")
    assert "trust" not in result.output


def test_verify_oracle_refuses_a_recorded_oracle_that_runs_code(tiny_build: Path, canary: dict[str, Any]) -> None:
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    manifest["recipe"]["oracle"]["model"]["model"] = "py:fmr_canary:net"
    (tiny_build / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["-q", "verify", str(tiny_build), "--oracle", "--device", "cpu"])
    assert_one_line_error(result, "oracle recorded in manifest.json", "trust-remote-code")
    assert untouched(canary)


def test_verify_oracle_trusts_the_users_own_recipe(tiny_build: Path, tiny_recipe: Path) -> None:
    result = CliRunner().invoke(main, ["-q", "verify", str(tiny_build), "--oracle", "--recipe", str(tiny_recipe), "--device", "cpu"])
    assert result.exit_code == 0, result.output


def test_a_py_file_inside_the_hf_cache_is_refused(tiny_build: Path, canary: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    snapshot = cache / "datasets--org--bench" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "net.py").write_text(canary["code"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    result = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(tiny_build), "--model", f"py:{snapshot / 'net.py'}:net",
                                       "--workers", "0", "--bootstrap", "0"])
    assert_one_line_error(result, "inside downloaded data", "trust-remote-code")
    assert untouched(canary)


@pytest.mark.parametrize("inside", ["downloads/0123456789abcdef", "remote-outputs/bucket-bench-0123456789ab"])
def test_a_py_file_inside_the_tools_own_downloads_is_refused(tiny_build: Path, canary: dict[str, Any], tmp_path: Path, inside: str) -> None:
    """Files fetched over https or from an object store, and mirrors of benchmarks on a URL, are
    downloaded data too: a py: spec naming one is refused without --trust-remote-code."""
    cache = tmp_path / "tool-cache"
    folder = cache / inside
    folder.mkdir(parents=True)
    (folder / "net.py").write_text(canary["code"])
    args = ["-q", "score", "--benchmark", str(tiny_build), "--model", f"py:{folder / 'net.py'}:net", "--workers", "0", "--bootstrap", "0",
            "--cache-dir", str(cache)]
    assert_one_line_error(CliRunner().invoke(main, args), "inside downloaded data", "trust-remote-code")
    assert untouched(canary)


def test_dynamic_scoring_checks_the_py_file_it_would_run(tiny_recipe: Path, canary: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --dynamic the model is the recipe's reference model, so a relative py: file is taken
    from the recipe's folder: a recipe inside downloaded data makes that file downloaded code,
    refused without --trust-remote-code (the check used to look in the working directory)."""
    import shutil

    cache = tmp_path / "tool-cache"
    folder = cache / "downloads" / "0123456789abcdef"
    shutil.copytree(tiny_recipe.parent, folder)
    (folder / "net.py").write_text(canary["code"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text("raise SystemExit('the working directory is not where the file is taken from')")
    args = ["-q", "score", "--dynamic", "--recipe", str(folder / tiny_recipe.name), "--model", "py:net.py:net", "--limit", "2",
            "--bootstrap", "0", "--cache-dir", str(cache)]
    assert_one_line_error(CliRunner().invoke(main, args), f"{folder / 'net.py'} lies inside downloaded data", "trust-remote-code")
    assert untouched(canary)


@pytest.fixture
def hub(reading_hub: Any) -> Any:
    return reading_hub


@pytest.mark.parametrize("spec", ["py:fmr_canary:net", "py:os:system", "in-benchmark"])
def test_a_downloaded_manifest_spec_is_refused(tiny_build: Path, canary: dict[str, Any], hub: Any, spec: str) -> None:
    """The same benchmark served by the local Hub stand-in: downloaded, then refused, nothing run."""
    if spec == "in-benchmark":
        (tiny_build / "cnn" / "canary.py").write_text(canary["code"])
        spec = "py:cnn/canary.py:net"
    set_reference(tiny_build, {"model": spec, "name": "cnn"})
    files = {p.relative_to(tiny_build).as_posix(): p.read_bytes() for p in tiny_build.rglob("*") if p.is_file() and "_stats" not in p.parts}
    hub.add_files("org/bench", files)
    assert_one_line_error(score("org/bench"), "manifest of org/bench", "trust-remote-code")
    assert untouched(canary)
    assert any(path.endswith("/resolve/" + hub.commit_sha("org/bench") + "/manifest.json") or "manifest.json" in path
               for _, path in hub.requests)  # it really was downloaded


def test_the_tools_own_architectures_need_no_trust(tiny_build: Path) -> None:
    """``py:builder.zoo:<name>`` is part of the tool: it goes on to load (and here fails for its
    own reason, the class count, in one line that does not mention trust)."""
    set_reference(tiny_build, {"model": "py:builder.zoo:lenet5", "name": "cnn", "num_classes": 10})
    result = score(str(tiny_build))
    assert_one_line_error(result, "10 classes")
    assert "trust" not in result.output


def _snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    snapshot = cache / "datasets--org--bench" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


@pytest.mark.parametrize("flag", ["--model", "--models", "--dynamic"])
def test_a_spec_file_inside_downloaded_data_is_data(tiny_build: Path, canary: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    flag: str) -> None:
    """A zoo or model YAML shipped in a download named code (here py: of a module on the path;
    hf: with trust_remote_code the same) and it ran: only py: files inside downloads were checked."""
    import yaml

    snapshot = _snapshot(tmp_path, monkeypatch)
    entry = {"name": "canary", "model": "py:fmr_canary:net", "pretrained": False}
    spec_file = snapshot / "zoo.yaml"
    spec_file.write_text(yaml.safe_dump([entry] if flag == "--models" else entry))
    if flag == "--dynamic":  # the live score checked py: files only: the downloaded spec's module was imported and called
        recipe = tiny_build.parent / "tiny.yaml"
        args = ["-q", "score", "--dynamic", "--recipe", str(recipe), "--model", str(spec_file), "--limit", "2", "--bootstrap", "0"]
        flag = "--model"
    else:
        args = ["-q", "score", "--benchmark", str(tiny_build), flag, str(spec_file), "--workers", "0", "--bootstrap", "0"]
        args += ["--out", str(tmp_path / "zoo-out")] if flag == "--models" else []
    assert_one_line_error(CliRunner().invoke(main, args), f"{flag} {spec_file} (inside downloaded data", "trust-remote-code", "nothing was run")
    assert untouched(canary)


def test_verify_oracle_with_a_recipe_inside_downloaded_data_trusts_nothing(tiny_build: Path, tiny_recipe: Path, canary: dict[str, Any],
                                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint asks for the recipe the benchmark was built from, usually shipped beside it: one
    inside downloaded data vouched for the recorded oracle, and its py: file then ran."""
    import shutil

    snapshot = _snapshot(tmp_path, monkeypatch)
    (snapshot / "canary.py").write_text(canary["code"])
    recipe = yaml_with(tiny_recipe, snapshot / "tiny.yaml", oracle={"kind": "classifier", "model": {"model": "py:canary.py:net", "pretrained": False}})
    for name in ("oracle.pt",):
        shutil.copy(tiny_recipe.parent / name, snapshot / name)
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    from builder.recipes import load_recipe

    manifest["recipe"]["oracle"] = load_recipe(str(recipe)).recipe.oracle.model_dump(mode="json")  # exactly the recipe's: it vouched
    (tiny_build / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["-q", "verify", str(tiny_build), "--oracle", "--recipe", str(recipe), "--device", "cpu"])
    assert_one_line_error(result, "trust-remote-code")
    assert untouched(canary)


def yaml_with(base: Path, path: Path, **changes: Any) -> Path:
    import yaml

    recipe = yaml.safe_load(base.read_text())
    recipe.update(changes)
    path.write_text(yaml.safe_dump(recipe))
    return path
