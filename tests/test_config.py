"""Recipe validation: every error is one line with the full key path and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.config import parse_recipe
from builder.errors import RecipeError
from builder.recipes import apply_override, bundled_recipes, load_recipe


def demo_data() -> dict:
    return yaml.safe_load(bundled_recipes()["digits-demo"].read_text())


def error_of(data: dict) -> str:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(data)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_bundled_recipe_validates() -> None:
    for name in bundled_recipes():
        recipe = load_recipe(name).recipe
        assert recipe.name == name
        assert recipe.perturbation.step_size > 0


def test_paper_defaults() -> None:
    data = demo_data()
    del data["perturbation"]
    recipe = parse_recipe(data)
    assert (recipe.perturbation.step_size, recipe.perturbation.budget) == (0.001, 50)


def test_misspelled_key_names_the_path_and_the_closest_name() -> None:
    data = demo_data()
    data["oracle"]["tempalte"] = data["oracle"].pop("template")
    assert error_of(data).startswith("recipe error at oracle.tempalte: unknown key; did you mean 'template'?")
    data = demo_data()
    data["reference_models"][1]["chekpoint"] = "x"
    assert "reference_models[1].chekpoint: unknown key; did you mean 'checkpoint'?" in error_of(data)
    data = demo_data()
    data["perturbation"]["step"] = 0.1
    assert "perturbation.step: unknown key; did you mean 'step_size'?" in error_of(data)
    data = demo_data()
    data["outptu"] = {}
    assert "at outptu: unknown key; did you mean 'output'?" in error_of(data)


def test_wrong_type_and_missing_field() -> None:
    data = demo_data()
    data["perturbation"]["budget"] = "fifty"
    assert "perturbation.budget: Input should be a valid integer" in error_of(data)
    data = demo_data()
    del data["generator"]["config"]
    assert error_of(data) == "recipe error at generator.config: required key is missing"
    data = demo_data()
    del data["reference_models"]
    assert error_of(data) == "recipe error at reference_models: required key is missing"
    data = demo_data()
    data["perturbation"]["step_size"] = -1
    assert "perturbation.step_size: Input should be greater than 0" in error_of(data)


def test_values_the_real_run_refuses_are_refused_at_the_edge() -> None:
    """A recipe name of several lines or control characters split the dry run's summary (and went
    into the card's heading); a zero std or a NaN mean passed the dry run and was refused only once
    the model loaded."""
    for name in ("", "digits\x1b[31mdemo", "two\nlines", "x" * 101):
        data = demo_data()
        data["name"] = name
        assert error_of(data).startswith("recipe error at name: ")
    for key, value, fragment in (("std", [0, 1, 1], "std[0]: Input should be greater than 0"),
                                 ("mean", [float("nan"), 0, 0], "mean[0]: Input should be a finite number")):
        data = demo_data()
        data["reference_models"][0]["preprocess"] = {key: value}
        assert f"reference_models[0].preprocess.{fragment}" in error_of(data)


def test_unknown_kind_lists_the_choices() -> None:
    data = demo_data()
    data["source"]["kind"] = "imagefoldr"
    message = error_of(data)
    assert "source.kind: unknown source kind 'imagefoldr'; did you mean 'imagefolder'?" in message
    assert "huggingface" in message and "webdataset" in message


def test_output_formats_and_names_are_checked() -> None:
    data = demo_data()
    data["output"]["formats"] = ["parquet", "tfrecord"]
    assert "output.formats: unknown output format 'tfrecord'" in error_of(data)
    data = demo_data()
    data["reference_models"][1]["name"] = "convnext"
    assert "config names must be unique, 'convnext' repeats" in error_of(data)
    data = demo_data()
    data["reference_models"][0]["model"] = "convnext_tiny"
    assert "reference_models[0].model" in error_of(data) and "timm:<name>" in error_of(data)
    data = demo_data()
    data["oracle"]["template"] = "an image of"
    assert "oracle.template" in error_of(data)


def test_a_set_value_cut_by_a_yaml_comment_is_refused() -> None:
    """``--set 'description=Build #2'`` set 'Build' without a word (YAML reads ' #' as a comment)."""
    with pytest.raises(RecipeError, match=r"YAML reads ' #' as the start of a comment, so the value would be 'Build'; "
                                          r"quote it: description='Build #2'"):
        load_recipe("digits-demo", ("description=Build #2",))
    assert load_recipe("digits-demo", ("description='Build #2'",)).recipe.description == "Build #2"
    assert load_recipe("digits-demo", ("description=Build#2",)).recipe.description == "Build#2"


def test_set_overrides(tmp_path: Path) -> None:
    loaded = load_recipe("digits-demo", ("perturbation.budget=7", "reference_models.0.name=cnx", "output.keep_originals=false"))
    recipe = loaded.recipe
    assert recipe.perturbation.budget == 7
    assert recipe.reference_models[0].config_name == "cnx"
    assert recipe.output.keep_originals is False
    data: dict = {"a": [{"b": 1}]}
    with pytest.raises(RecipeError, match="needs an index below 1"):
        apply_override(data, "a.3.b=2")
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        apply_override(data, "novalue")
    with pytest.raises(RecipeError, match="not valid YAML"):
        apply_override(data, "a.0.b=x: y: z")
    with pytest.raises(RecipeError, match="perturbation.bugdet: unknown key; did you mean 'budget'"):
        load_recipe("digits-demo", ("perturbation.bugdet=3",))


def test_recipe_file_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.yaml"))
    # a folder named like a bundled recipe (the output of 'run digits-demo --out digits-demo') does not hide it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits-demo").mkdir()
    assert load_recipe("digits-demo").recipe.name == "digits-demo"
    (tmp_path / "outputs").mkdir()
    with pytest.raises(RecipeError, match=r"^recipe outputs: is a directory, not a recipe file; give a .yaml path or a bundled recipe's name$"):
        load_recipe("outputs")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match="unknown recipe 'digits-dem'; did you mean 'digits-demo'"):
        load_recipe("digits-dem")
