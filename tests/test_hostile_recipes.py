"""Hostile recipes and --set values: each ends in one line 'error: ...', exit 2, nothing written.

Several of these used to hang or exhaust memory (YAML "billion laughs"), overflow the stack
(self-referencing aliases, 20,000-deep nesting), or end in a traceback (non-UTF-8 bytes,
out-of-range seeds); the property tests feed arbitrary text, bytes, YAML trees and
mutations of a valid recipe to ``load_recipe`` and accept only a recipe or a one-line
:class:`BuilderError`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.cli import main
from builder.config import MAX_CLASSES, parse_recipe
from builder.errors import BuilderError, RecipeError
from builder.recipes import LoadedRecipe, load_recipe

PROPERTY = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

LETTERS = "abcdefghi"
#: nine levels of nine aliases each: 9**9 values once expanded
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{LETTERS[i + 1]}: &{LETTERS[i + 1]} [{', '.join(['*' + LETTERS[i]] * 9)}]\n" for i in range(8)
)
#: merge keys double a mapping per level: 2**40 keys once flattened
MERGE_BOMB = "m0: &m0 {k: 1}\n" + "".join(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}\n" for i in range(1, 41))


def run_cli(recipe: Path, tmp_path: Path, *args: str) -> tuple[Any, Path]:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", str(out), "--no-progress", *args], catch_exceptions=False)
    return result, out


def assert_one_line_error(result: Any, out: Path, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


HOSTILE_FILES = {
    "billion-laughs": (BILLION_LAUGHS, "expands to more than 100000 values"),
    "merge-key-bomb": (MERGE_BOMB, "expands to more than 100000 values"),
    "101-aliases": ("a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n", "more than 100 aliases"),
    "self-alias-list": ("a: &a [*a]\n", "alias *a refers to a node that contains it"),
    "self-alias-map": ("a: &a {b: {c: *a}}\n", "alias *a refers to a node that contains it"),
    "deep-list": ("[" * 20_000 + "]" * 20_000, "nested deeper than 64 levels"),
    "deep-map": ("{a: " * 20_000 + "1" + "}" * 20_000, "nested deeper than 64 levels"),
    "deep-block": ("".join("  " * i + "a:\n" for i in range(100)), "line 64: nested deeper than 64 levels"),
    "latin-1": ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"),
    "binary-junk": (b"\xff\xfe\xfd\x80name: x\n", "not UTF-8"),
    "utf-16-bom": ("name: x\n".encode("utf-16"), "UTF-16 text, not UTF-8; save it as UTF-8"),
    "two-mib": ("description: " + "x" * (2 << 20) + "\n", "larger than 1 MiB"),
    "empty": ("", "expected a mapping at the top level (got an empty file)"),
    "top-level-list": ("- name: x\n- name: y\n", "expected a mapping at the top level (got list"),
    "top-level-scalar": ("just words\n", "expected a mapping at the top level (got str 'just words')"),
    "duplicate-key": ("name: a\nseed: 1\nname: b\n", "line 3: key 'name' appears twice in one mapping; keep one of them"),
    "tab-indent": ("name: x\nsource:\n\tkind: imagefolder\n", "line 3: not valid YAML"),
    "python-object-tag": ("name: !!python/object/apply:os.system [echo hi]\n", "could not determine a constructor"),
    "impossible-date": ("name: x\nseed: 2024-13-45\n", "a value cannot be read (month must be in 1..12)"),
    "5000-digit-int": ("seed: " + "9" * 5000 + "\n", "a value cannot be read"),
    "nul-byte": ("name: a\x00b\n", "unacceptable character #x0000"),
    "two-documents": ("name: a\n---\nname: b\n", "expected a single document"),
    "octal-seed": ("name: x\nseed: 0100\n", "line 2: '0100' reads as the octal number 64 in YAML 1.1; write the number without a leading zero"),
}


@pytest.mark.timeout(20)  # before the bounds, several of these hung or ran out of memory
@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_recipe_file(case: str, tmp_path: Path) -> None:
    content, fragment = HOSTILE_FILES[case]
    recipe = write(tmp_path / "hostile.yaml", content)
    result, out = run_cli(recipe, tmp_path)
    line = assert_one_line_error(result, out, fragment)
    if "line " not in fragment and "top level" not in fragment:
        assert "hostile.yaml" in line  # file-level errors name the file


SPLIT_RULE = "must be letters, digits and '_', in parts joined by '.' (a split name datasets.load_dataset accepts)"

HOSTILE_SETS = {
    "seed-beyond-64-bits": (("--seed", "99999999999999999999999"), "recipe error at seed: Input should be less than 9223372036854775808 (got 99999999999999999999999)"),
    "seed-set-beyond-64-bits": (("--set", "seed=99999999999999999999999"), "recipe error at seed: Input should be less than"),
    "negative-seed": (("--seed", "-1"), "recipe error at seed: Input should be greater than or equal to 0 (got -1)"),
    "seed-list": (("--set", "seed=[1,2]"), "recipe error at seed: Input should be a valid integer"),
    "huge-image-size": (("--set", "image_size=100000"), "recipe error at image_size: Input should be less than or equal to 4096 (got 100000)"),
    "zero-image-size": (("--set", "image_size=0"), "recipe error at image_size: Input should be greater than 0 (got 0)"),
    "huge-batch": (("--set", "batch_size=100000"), "recipe error at batch_size: Input should be less than or equal to 65536"),
    "huge-shards": (("--set", "output.samples_per_shard=2000000"), "recipe error at output.samples_per_shard"),
    "huge-budget": (("--set", "perturbation.budget=100001"), "recipe error at perturbation.budget"),
    "infinite-step": (("--set", "perturbation.step_size=.inf"), "recipe error at perturbation.step_size: Input should be a finite number"),
    "split-escapes": (("--set", "output.split=../../escape"),
                      f"recipe error at output.split: {SPLIT_RULE} (got '../../escape'); e.g. test or test_v2"),
    "split-absolute": (("--set", "output.split=/abs/path"), f"output.split: {SPLIT_RULE} (got '/abs/path'); e.g. test or test_v2"),
    "split-dotdot": (("--set", "output.split=.."), "(got '..'); e.g. test"),
    "split-with-a-dash": (("--set", "output.split=my-split"), "(got 'my-split'); e.g. test or test_v2"),  # datasets refuses it in a card
    "hub-location-with-a-bad-repo-id": (("--set", "generator.checkpoint=hf-hub:org/bad name!/x.ckpt"),
                                        "hf-hub:org/bad name!/x.ckpt: 'org/bad name!' is not a valid Hub repo id"),
    "repeated-class-name": (("--set", "source.class_names=[red, green, red]"),
                            "recipe error at source.class_names: class name [2] 'red' repeats class name [0]; give each class its own name"),
    "huge-class-range": (("--set", "source.class_ranges={a: [[0, 999999]], b: [[5, 6]]}"), "'b' overlaps 'a' in [5, 6]"),
    "class-range-of-billions": (("--set", "reference_models.0.class_ranges={red: [[0, 1000000000000]], green: [[5, 6]], blue: [[7, 7]]}"),
                                "recipe error at reference_models[0].class_ranges: 'red': range [0, 1000000000000] reaches past 999999"),
    "super-class-on-two-lines": (("--set", 'source.class_ranges={"a\\nb": [[0, 1]], c: [[2, 2]]}'),
                                 "class name [0] must be 1 to 256 characters on one line"),
    "split-empty": (("--set", "output.split="), "(got ''); e.g. test"),
    # the Hub refuses such a card at publish, after the shards; the license is part of the manifest id
    "license-not-a-hub-id": (("--set", "license=CC BY 4.0"), "recipe error at license: not a license id the Hugging Face Hub takes"
                             " in a dataset card (it would refuse the card when publishing); did you mean 'cc-by-4.0'?"),
    "license-free-text": (("--set", "license=Proprietary, ask us"), "give a Hub id such as cc-by-4.0, or 'other' and name the license"),
    "empty-config-name": (("--set", "reference_models.0.name=null", "--set", "reference_models.0.model=py:..."),
                          "gives no usable config name (got ''); set reference_models[0].name"),
    "long-name": (("--set", "reference_models.0.name=" + "a" * 65), "recipe error at reference_models[0].name"),
    "newline-class-name": (("--set", 'source.class_names=["red", "gr\\neen", "blue"]'), "class name [1] must be 1 to 256 characters on one line"),
    "blank-class-name": (("--set", 'source.class_names=["red", " ", "blue"]'), "class name [1] must be 1 to 256 characters"),
    "empty-key": (("--set", "=3"), "--set '=3': empty key"),
    "empty-dotted-key": (("--set", "a..b=1"), "--set 'a..b=1': empty key in 'a..b'"),
    "no-equals": (("--set", "seed"), "expected dotted.key=value"),
    "newline-in-key": (("--set", "se\ned=1"), "recipe error at se\\ned: unknown key"),
    "laughs-as-value": (("--set", "description={" + BILLION_LAUGHS.strip().replace("\n", ", ") + "}"), "expands to more than 100000 values"),
    "deep-value": (("--set", "description=" + "[" * 5000 + "]" * 5000), "nested deeper than 64 levels"),
    "self-alias-value": (("--set", "description=&a [*a]"), "refers to a node that contains it"),
    "unknown-tag-value": (("--set", "seed=!!python/name:os.system"), "remove the tag"),
    "invalid-yaml-value": (("--set", "seed=x: y: z"), "not valid YAML"),
    "superscript-index": (("--set", "reference_models.\u00b2.name=x"), "'reference_models.\u00b2' needs an index below 1"),
    "too-many-keys": (("--set", ".".join(["a"] * 100) + "=1"), "more than 64 keys"),
    # YAML reads yes/on/true as True and pydantic True as 1: each built with a budget of 1
    "budget-yes": (("--set", "perturbation.budget=yes"), "recipe error at perturbation.budget: expected a number, got a truth value"),
    "step-size-true": (("--set", "perturbation.step_size=true"), "recipe error at perturbation.step_size: expected a number"),
    "seed-set-off": (("--set", "seed=off"), "recipe error at seed: expected a number, got a truth value"),
    "mean-with-a-truth-value": (("--set", "reference_models.0.preprocess.mean=[0.5, yes, 0.5]"),
                                "recipe error at reference_models[0].preprocess.mean: expected a number"),
    "class-range-with-a-truth-value": (("--set", "source.class_ranges={a: [[0, true]], b: [[2, 2]]}"),
                                       "recipe error at source.class_ranges: expected a number"),
    # YAML 1.1 octal and base 60: 010 was 8, 1:30 was 90
    "seed-octal": (("--set", "seed=010"), "--set 'seed=010': '010' reads as the octal number 8 in YAML 1.1; write the number"),
    "budget-base-60": (("--set", "perturbation.budget=1:30"), "'1:30' reads as the base 60 number 90 in YAML 1.1"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", sorted(HOSTILE_SETS))
def test_hostile_override(case: str, tiny_recipe: Path, tmp_path: Path) -> None:
    args, fragment = HOSTILE_SETS[case]
    result, out = run_cli(tiny_recipe, tmp_path, *args)
    assert_one_line_error(result, out, fragment)


def test_recipe_name_too_long_for_the_file_system(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["-q", "run", "x" * 5000, "--dry-run"], catch_exceptions=False)
    assert_one_line_error(result, tmp_path / "out", "cannot be opened")


def test_too_many_class_names_and_valid_bounds(tiny_recipe: Path) -> None:
    data = yaml.safe_load(tiny_recipe.read_text())
    data["source"]["class_names"] = [f"c{i}" for i in range(MAX_CLASSES + 1)]
    with pytest.raises(RecipeError, match=r"source.class_names: at most 100000 class names \(got 100001\)"):
        parse_recipe(data)
    data["source"]["class_names"] = ["red", "green", "blue"]
    data.update(seed=2**63 - 1, image_size=4096, batch_size=65536)
    recipe = parse_recipe(data)
    assert (recipe.seed, recipe.image_size, recipe.batch_size) == (2**63 - 1, 4096, 65536)


def test_valid_aliases_merges_and_splits_still_load(tiny_recipe: Path, tmp_path: Path) -> None:
    """The bounds leave ordinary anchors, merge keys and split names alone; aliases are unshared."""
    data = yaml.safe_load(tiny_recipe.read_text())
    data["reference_models"][0]["train"] = "ANCHOR"
    data["oracle"]["model"]["train"] = "ALIAS"
    data["generator"]["train"] = "MERGE"
    data["output"]["split"] = "test_v1.2_b"
    data = {"reference_models": data.pop("reference_models"), **data}  # the anchor comes first
    text = yaml.safe_dump(data, sort_keys=False).replace("ANCHOR", "&t {epochs: 1, lr: 0.1}").replace("ALIAS", "*t")
    path = write(tmp_path / "aliased.yaml", text.replace("MERGE", "{<<: *t, epochs: 2}"))
    recipe = load_recipe(str(path), ("reference_models.0.train.epochs=5",)).recipe
    assert recipe.output.split == "test_v1.2_b"
    assert recipe.reference_models[0].train is not None and recipe.reference_models[0].train.epochs == 5
    assert recipe.oracle.model.train.epochs == 1  # type: ignore[attr-defined]  # the alias is a copy
    assert (recipe.generator.train.epochs, recipe.generator.train.lr) == (2, 0.1)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- properties


def check_outcome(path: Path, overrides: tuple[str, ...] = ()) -> None:
    """``load_recipe`` returns a recipe or raises a one-line BuilderError, nothing else."""
    try:
        loaded = load_recipe(str(path), overrides)
    except BuilderError as error:
        message = str(error)
        assert message.strip() and len(message.splitlines()) == 1, repr(message)
    else:
        assert isinstance(loaded, LoadedRecipe)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "recipe.yaml"


@PROPERTY
@given(st.one_of(st.text(), st.binary()))
def test_any_text_or_bytes(scratch: Path, content: str | bytes) -> None:
    check_outcome(write(scratch, content))


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["imagefolder", "vqgan", "classifier", "timm:x", "py:...", "../x", "2024-13-45", "{}"]),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.none()), children, max_size=5),
    ),
    max_leaves=30,
)


@PROPERTY
@given(TREES)
def test_any_yaml_tree(scratch: Path, tree: Any) -> None:
    check_outcome(write(scratch, yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)))


def key_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a recipe mapping."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    paths = []
    for key, value in children:
        paths.append(prefix + (key,))
        paths.extend(key_paths(value, prefix + (key,)))
    return paths


@PROPERTY
@given(data=st.data())
def test_mutated_tiny_recipe(tiny_recipe: Path, scratch: Path, data: st.DataObject) -> None:
    recipe = yaml.safe_load(tiny_recipe.read_text())
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(key_paths(recipe)), label="path")
        parent = recipe
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(data.draw(TREES, label="value"))
    check_outcome(write(scratch, yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)))


@PROPERTY
@given(st.text(max_size=40), st.text(max_size=40))
def test_any_override(tiny_recipe: Path, key: str, value: str) -> None:
    check_outcome(tiny_recipe, (f"{key}={value}",))


def test_numbers_that_read_alike_in_every_yaml_still_load(tiny_recipe: Path) -> None:
    """Only forms YAML 1.1 reads otherwise than they look are refused: 007 is 7 either way, a
    quoted '010' is text, and true/false stay truth values where one is due."""
    loaded = load_recipe(str(tiny_recipe), ("seed=007", "perturbation.budget=1_0", "description='010'", "output.keep_originals=no"))
    assert loaded.recipe.seed == 7 and loaded.recipe.perturbation.budget == 10
    assert loaded.recipe.description == "010" and loaded.recipe.output.keep_originals is False
