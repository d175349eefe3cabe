"""run --deterministic: torch's deterministic algorithms in every worker, restored after; an op
without a deterministic implementation fails before any unit, as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import TINY_MODELS, assert_one_line_error, build

from builder.build import determinism
from builder.cli import main


def model(name: str) -> str:
    return f"reference_models.0.model=py:{TINY_MODELS}:{name}"


def test_a_deterministic_build_runs_its_models_in_deterministic_mode_and_gives_torch_back(tiny_recipe: Path, tmp_path: Path) -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    result = build(tiny_recipe, tmp_path / "det", "--deterministic", "--set", model("deterministic_only"))
    assert result.exit_code == 0, result.output
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic  # this process's torch as it was
    manifest = json.loads((tmp_path / "det" / "manifest.json").read_text())
    assert manifest["built_with"]["deterministic"] is True
    # the probe is real: without --deterministic the same model refuses to run
    without = build(tiny_recipe, tmp_path / "plain", "--set", model("deterministic_only"))
    assert without.exit_code != 0 and "deterministic algorithms are off" in without.output


def test_an_op_without_a_deterministic_implementation_fails_before_any_unit(tiny_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "det"
    result = build(tiny_recipe, out, "--deterministic", "--set", model("nondeterministic_op"))
    assert_one_line_error(result, "config cnn: put_ has no deterministic implementation on cpu (--deterministic)", "run without --deterministic")
    assert not out.exists() or not any(out.rglob("*.tar"))
    assert not torch.are_deterministic_algorithms_enabled()
    plain = build(tiny_recipe, tmp_path / "plain", "--set", model("nondeterministic_op"))
    assert plain.exit_code == 0, plain.output
    assert "deterministic" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())["built_with"]


def test_enable_returns_the_switches_that_apply_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = determinism.current()
    try:
        previous = determinism.enable()
        assert previous == before
        assert determinism.current() == determinism.TorchDeterminism(True, False, True, False)
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == determinism.CUBLAS_WORKSPACE
    finally:
        determinism.apply(before)
    assert determinism.current() == before


def test_nondeterministic_op_names_torchs_op_and_nothing_else() -> None:
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError) as caught:
            torch.zeros(2).put_(torch.tensor([0]), torch.ones(1), accumulate=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert determinism.nondeterministic_op(caught.value) == "put_"
    assert determinism.nondeterministic_op(RuntimeError("CUDA out of memory")) is None
    assert determinism.nondeterministic_op(ValueError("x does not have a deterministic implementation")) is None


def trained_on_first_use(recipe_path: Path, name: str) -> Path:
    """The tiny recipe over the digits (a source with a train split), its oracle of random
    weights and its reference model ``name`` trained on first use (one epoch)."""
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["source"] = {"kind": "sklearn-digits", "split": "test"}
    recipe["oracle"]["model"].pop("checkpoint")
    recipe["reference_models"][0].update(model=f"py:{TINY_MODELS}:{name}", checkpoint=f"cache:determinism/{name}.safetensors",
                                         train={"epochs": 1, "batch_size": 64})
    path = recipe_path.with_name(f"trained-{name}.yaml")
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_weights_trained_on_first_use_are_trained_in_the_builds_mode(tiny_recipe: Path, tmp_path: Path) -> None:
    """Trained in the driver before the workers start, the weights were made outside deterministic
    mode (a Ray actor, training inside its runner, made them inside it)."""
    result = build(trained_on_first_use(tiny_recipe, "deterministic_only"), tmp_path / "det", "--deterministic", "--limit", "8")
    assert result.exit_code == 0, result.output
    assert not torch.are_deterministic_algorithms_enabled()
    failing = build(trained_on_first_use(tiny_recipe, "nondeterministic_op"), tmp_path / "put", "--deterministic", "--limit", "8")
    assert_one_line_error(failing, "training the missing weights: put_ has no deterministic implementation on cpu (--deterministic)",
                          "run without --deterministic")
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("first,then", [(("--deterministic",), ()), ((), ("--deterministic",))])
def test_a_resume_in_the_other_mode_is_refused(tiny_recipe: Path, tmp_path: Path, first: tuple[str, ...], then: tuple[str, ...]) -> None:
    out = tmp_path / "built"
    assert build(tiny_recipe, out, *first).exit_code == 0
    for stats in sorted((out / "_stats" / "cnn").glob("*.json"))[1:]:
        stats.unlink()
    mode = "with" if first else "without"
    dry = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--out", str(out), "--dry-run", *then])
    assert dry.exit_code == 2 and f"was built {mode} --deterministic" in dry.output, dry.output  # the dry run says what the run will
    result = build(tiny_recipe, out, *then)
    assert_one_line_error(result, f"was built {mode} --deterministic", f"run {mode} --deterministic, or pass --overwrite")
    assert build(tiny_recipe, out, *first).exit_code == 0
    # finished, nothing left to build: a rerun in the other mode is refused too, not passed over
    assert_one_line_error(build(tiny_recipe, out, *then), f"was built {mode} --deterministic")
    assert build(tiny_recipe, out, *then, "--overwrite").exit_code == 0


def test_score_dynamic_regenerates_in_deterministic_mode(tiny_recipe: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load(tiny_recipe.read_text())["reference_models"][0]
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({**spec, "model": f"py:{TINY_MODELS}:deterministic_only",
                                     "checkpoint": str(tiny_recipe.parent / spec["checkpoint"])}))
    args = ["-q", "score", "--dynamic", "--recipe", str(tiny_recipe), "--model", str(model), "--limit", "4", "--device", "cpu",
            "--bootstrap", "0", "--trust-remote-code"]
    scored = CliRunner().invoke(main, [*args, "--deterministic", "--save", str(tmp_path / "dynamic")])
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "dynamic" / "manifest.json").read_text())["built_with"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()
    assert CliRunner().invoke(main, args).exit_code != 0  # the probe refuses to run outside the mode
    refused = CliRunner().invoke(main, ["-q", "score", "--benchmark", str(tmp_path / "dynamic"), "--model", str(model), "--deterministic"])
    assert_one_line_error(refused, "--deterministic goes with --dynamic")
