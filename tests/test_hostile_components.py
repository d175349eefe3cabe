"""Hostile component inputs: each is one ``error: ...`` line and exit 2, never a traceback.

User-supplied code (``py:`` modules and factories), generator configs, checkpoints, oracle
settings and image sizes the generator cannot take, through the command line where a user
would meet them.
"""

from __future__ import annotations

import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from builder.cli import main
from builder.errors import CheckpointError, ComponentError, first_line

from tiny_models import TINY_VQGAN_YAML, tiny_cnn

# ----------------------------------------------------------------------------- helpers


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["-q", *args])


def build(recipe: Path, *extra: str) -> Any:
    out = recipe.parent / "out"
    return invoke("run", str(recipe), "--out", str(out), "--device", "cpu", "--no-progress", *extra)


def dry_run(recipe: Path, *extra: str) -> Any:
    return invoke("run", str(recipe), "--dry-run", *extra)


def one_line_error(result: Any, *fragments: str) -> str:
    """Exit 2, exactly one non-empty line, ``error: ...``, no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def dry_run_failure(result: Any, *fragments: str) -> str:
    """Exit 2; every line is a check, a plan line or the final error; returns the FAIL lines."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert all(line.startswith(("ok ", "FAIL ", "plan ", "error: ")) for line in lines), result.output
    assert lines[-1].startswith("error: dry run of"), result.output
    fails = "\n".join(line for line in lines if line.startswith("FAIL "))
    for fragment in fragments:
        assert fragment in fails, result.output
    return fails


def edit(recipe: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(recipe.read_text())
    change(data)
    recipe.write_text(yaml.safe_dump(data))
    return recipe


def use_module(recipe: Path, source: str, attribute: str = "net", name: str = "hostile.py") -> Path:
    """Point the reference model at ``py:<name>:<attribute>`` (relative to the recipe) holding ``source``."""
    (recipe.parent / name).write_text(source)

    def change(data: dict[str, Any]) -> None:
        data["reference_models"][0]["model"] = f"py:{name}:{attribute}"

    return edit(recipe, change)


def load_error(call: Callable[[], Any], error: type[Exception] = ComponentError) -> str:
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message, message
    return message


# ----------------------------------------------------------------------------- py: modules that fail to import

IMPORT_FAILURES = {
    "syntax-error": ("def net(:\n    pass\n", "SyntaxError"),
    "name-error": ("undefined_name + 1\n", "NameError: name 'undefined_name' is not defined"),
    "runtime-error": ("raise RuntimeError('no GPU here\\nsecond line')\n", "RuntimeError: no GPU here"),
    "missing-dependency": ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named 'no_such_dependency_xyz'"),
    "exit-at-import": ("import sys\nsys.exit(0)\n", "SystemExit"),
}


@pytest.mark.parametrize("case", sorted(IMPORT_FAILURES))
def test_module_that_fails_to_import_is_one_line(case: str, tiny_recipe: Path) -> None:
    source, expected = IMPORT_FAILURES[case]
    recipe = use_module(tiny_recipe, source)
    line = one_line_error(build(recipe), "py:hostile.py:net: importing ", "hostile.py failed: ", expected, "; fix the module")
    assert "second line" not in line


@pytest.mark.parametrize("case", ["syntax-error", "runtime-error", "exit-at-import"])
def test_dry_run_reports_a_module_that_fails_to_import(case: str, tiny_recipe: Path) -> None:
    source, expected = IMPORT_FAILURES[case]
    dry_run_failure(dry_run(use_module(tiny_recipe, source)), "reference model", expected)


def test_module_keeps_the_original_exception_as_cause(tiny_recipe: Path, context: Any) -> None:
    from builder.components.models import load_classifier
    from builder.config import ModelSpec

    (context.base_dir / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ComponentError) as caught:
        load_classifier(ModelSpec(model="py:broken.py:net"), context)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_missing_module_file_is_one_line(tiny_recipe: Path) -> None:
    recipe = edit(tiny_recipe, lambda d: d["reference_models"][0].update(model="py:nowhere.py:net"))
    one_line_error(build(recipe), "py:nowhere.py:net", "nowhere.py", "no such file")


def test_module_file_that_is_a_directory_is_one_line(tiny_recipe: Path) -> None:
    (tiny_recipe.parent / "pkg.py").mkdir()
    recipe = edit(tiny_recipe, lambda d: d["reference_models"][0].update(model="py:pkg.py:net"))
    one_line_error(build(recipe), "py:pkg.py:net", "is a directory")


def test_missing_attribute_and_module_are_one_line(tiny_recipe: Path) -> None:
    one_line_error(build(use_module(tiny_recipe, "x = 1\n", attribute="nope")), "has no attribute 'nope'")
    recipe = edit(tiny_recipe, lambda d: d["reference_models"][0].update(model="py:no_such_module_xyz:net"))
    one_line_error(build(recipe), "py:no_such_module_xyz:net", "no_such_module_xyz")


# ----------------------------------------------------------------------------- factories that misbehave

FACTORY_FAILURES = {
    "no-parameters": ("def net():\n    return None\n", "net", ["cannot be called with (num_classes=3)", "TypeError"]),
    "raises": ("def net(num_classes):\n    raise ValueError('bad width\\nmore')\n", "net", ["net(num_classes=3) raised ValueError: bad width"]),
    "not-a-module": ("def net(num_classes):\n    return [num_classes]\n", "net", ["returned list, not a torch.nn.Module"]),
    "not-callable": ("net = 42\n", "net", ["is int, not a callable"]),
    "system-exit-0": ("def net(num_classes):\n    raise SystemExit(0)\n", "net", ["raised SystemExit: 0"]),
    "sys-exit-3": ("import sys\ndef net(num_classes):\n    sys.exit(3)\n", "net", ["raised SystemExit: 3"]),
    "class-not-module": ("class net:\n    def __init__(self, num_classes):\n        pass\n", "net", ["returned net, not a torch.nn.Module"]),
}


@pytest.mark.parametrize("case", sorted(FACTORY_FAILURES))
def test_misbehaving_factory_is_one_line(case: str, tiny_recipe: Path) -> None:
    source, attribute, fragments = FACTORY_FAILURES[case]
    recipe = use_module(tiny_recipe, source, attribute)
    one_line_error(build(recipe), f"py:hostile.py:{attribute}: ", *fragments)


def test_unknown_factory_kwargs_are_one_line(tiny_recipe: Path) -> None:
    recipe = edit(tiny_recipe, lambda d: d["reference_models"][0].update(kwargs={"depth": 3}))
    one_line_error(build(recipe), "tiny_cnn", "cannot be called with (num_classes=3, depth=3)", "kwargs")
    dry_run_failure(dry_run(recipe), "cannot be called with", "depth")


def test_dry_run_reports_a_factory_that_is_not_callable(tiny_recipe: Path) -> None:
    dry_run_failure(dry_run(use_module(tiny_recipe, "net = 42\n")), "is int, not a callable")


def test_keyboard_interrupt_in_a_factory_is_not_swallowed(context: Any) -> None:
    from builder.components.models import load_classifier
    from builder.config import ModelSpec

    (context.base_dir / "interrupt.py").write_text("def net(num_classes):\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_classifier(ModelSpec(model="py:interrupt.py:net"), context)


# ----------------------------------------------------------------------------- generator configs


def taming(**ddconfig: Any) -> dict[str, Any]:
    data = yaml.safe_load(TINY_VQGAN_YAML)
    data["model"]["params"]["ddconfig"].update(ddconfig)
    return data


def without_ddconfig() -> dict[str, Any]:
    data = yaml.safe_load(TINY_VQGAN_YAML)
    del data["model"]["params"]["ddconfig"]
    return data


def params(**values: Any) -> dict[str, Any]:
    data = yaml.safe_load(TINY_VQGAN_YAML)
    data["model"]["params"].update(values)
    return data


def yaml_text(data: Any) -> bytes:
    return yaml.safe_dump(data).encode()


BAD_CONFIGS: dict[str, tuple[bytes, list[str]]] = {
    "ch-not-a-number": (yaml_text(taming(ch="abc")), ["ddconfig.ch", "'abc'"]),
    "ch-not-a-multiple-of-32": (yaml_text(taming(ch=33)), ["ddconfig.ch", "multiple of 32"]),
    "ch-is-a-bool": (yaml_text(taming(ch=True)), ["ddconfig.ch"]),
    "ch-mult-empty": (yaml_text(taming(ch_mult=[])), ["ddconfig.ch_mult"]),
    "ch-mult-text": (yaml_text(taming(ch_mult="1,2")), ["ddconfig.ch_mult"]),
    "z-channels-negative": (yaml_text(taming(z_channels=-1)), ["ddconfig.z_channels", "-1"]),
    "in-channels-one": (yaml_text(taming(in_channels=1)), ["ddconfig.in_channels", "3"]),
    "double-z": (yaml_text(taming(double_z=True)), ["ddconfig.double_z"]),
    "attn-not-a-list": (yaml_text(taming(attn_resolutions=16)), ["ddconfig.attn_resolutions"]),
    "dropout-above-one": (yaml_text(taming(dropout=2.0)), ["ddconfig.dropout"]),
    "no-ddconfig": (yaml_text(without_ddconfig()), ["ddconfig"]),
    "n-embed-zero": (yaml_text(params(n_embed=0)), ["n_embed", "0"]),
    "embed-dim-huge": (yaml_text(params(embed_dim=99999999999)), ["embed_dim"]),
    "ch-too-large": (yaml_text(taming(ch=32 * 512)), ["ddconfig.ch", "16384"]),
    "too-many-parameters": (yaml_text(taming(ch=4096, ch_mult=[1, 2, 4, 8])), ["parameters", "2e+09"]),
    "not-yaml": (b"model: {params: [unclosed\n  - : :\n", ["not valid YAML"]),
    "not-utf8": (b"model:\n  params: \xff\xfe\x00bad\n", ["not UTF-8"]),
    "a-list": (b"- model\n- params\n", ["list"]),
    "empty": (b"", ["empty"]),
    "params-a-string": (b"model: {params: hello}\n", ["model.params"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_vqgan_config_fails_the_dry_run_with_file_and_key(case: str, tiny_recipe: Path) -> None:
    content, fragments = BAD_CONFIGS[case]
    (tiny_recipe.parent / "vqgan.yaml").write_bytes(content)
    fails = dry_run_failure(dry_run(tiny_recipe), "vqgan.yaml", *fragments)
    assert fails.count("FAIL ") == 1


@pytest.mark.parametrize("case", ["ch-not-a-number", "not-utf8", "a-list", "embed-dim-huge", "no-ddconfig"])
def test_bad_vqgan_config_stops_the_run_in_one_line(case: str, tiny_recipe: Path) -> None:
    content, fragments = BAD_CONFIGS[case]
    (tiny_recipe.parent / "vqgan.yaml").write_bytes(content)
    one_line_error(build(tiny_recipe), "generator config", "vqgan.yaml", *fragments)


def test_vqgan_config_that_is_a_directory(tiny_recipe: Path) -> None:
    (tiny_recipe.parent / "vqgan.yaml").unlink()
    (tiny_recipe.parent / "vqgan.yaml").mkdir()
    one_line_error(build(tiny_recipe), "vqgan.yaml", "is a directory")
    dry_run_failure(dry_run(tiny_recipe), "vqgan.yaml", "is a directory")


def test_parameter_count_is_checked_before_anything_is_allocated() -> None:
    from builder.components.vqgan import count_parameters

    config = params(embed_dim=99999999999)["model"]["params"]
    assert count_parameters(config) > 3 * 10**12  # 13 TB of float32 if built: counted on the meta device
    assert count_parameters(yaml.safe_load(TINY_VQGAN_YAML)["model"]["params"]) < 10**6


# ----------------------------------------------------------------------------- image sizes


@pytest.mark.parametrize("size, fragment", [(1, "at least 2"), (15, "multiple of 2; use 14 or 16")])
def test_image_size_the_vqgan_cannot_take_fails_the_dry_run(size: int, fragment: str, tiny_recipe: Path) -> None:
    dry_run_failure(dry_run(tiny_recipe, "--set", f"image_size={size}"), f"image_size {size}", "vqgan.yaml", fragment)


def test_huge_image_size_is_refused_before_any_work(tiny_recipe: Path) -> None:
    for result in (dry_run(tiny_recipe, "--set", "image_size=100000"), build(tiny_recipe, "--set", "image_size=100000")):
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        error = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and "image_size" in error[0] and "4096" in error[0], result.output


@pytest.mark.parametrize("size", [1, 15])
def test_image_size_the_vqgan_cannot_take_stops_the_run(size: int, tiny_recipe: Path) -> None:
    one_line_error(build(tiny_recipe, "--set", f"image_size={size}"), f"image_size {size}", "vqgan.yaml")


def test_image_size_follows_the_downsampling_factor(tiny_recipe: Path) -> None:
    data = taming(ch_mult=[1, 1, 2, 2])  # f8
    (tiny_recipe.parent / "vqgan.yaml").write_text(yaml.safe_dump(data))
    dry_run_failure(dry_run(tiny_recipe, "--set", "image_size=20"), "image_size 20", "multiple of 8; use 16 or 24")
    assert dry_run(tiny_recipe, "--set", "image_size=24").exit_code == 0
    dry_run_failure(dry_run(tiny_recipe, "--set", "image_size=4"), "image_size 4", "at least 8")


def test_pixel_generator_takes_any_size_up_to_the_cap(tiny_recipe: Path) -> None:
    recipe = edit(tiny_recipe, lambda d: d.update(generator={"kind": "pixel"}))
    result = dry_run(recipe, "--set", "image_size=15")
    assert result.exit_code == 0, result.output
    assert "image size" in result.output
    assert "Traceback" not in dry_run(recipe, "--set", "image_size=100000").output


def test_check_image_size_for_the_build(tmp_path: Path) -> None:
    from builder.components.base import check_image_size
    from builder.components.pixel import PixelConfig
    from builder.components.vqgan import VQGANConfig

    (tmp_path / "vqgan.yaml").write_text(TINY_VQGAN_YAML)
    vqgan = VQGANConfig(kind="vqgan", config="vqgan.yaml")
    check_image_size(vqgan, 16, tmp_path, tmp_path / "cache")
    for size in (1, 15, 100000):
        message = load_error(lambda size=size: check_image_size(vqgan, size, tmp_path, tmp_path / "cache"))
        assert message.startswith(f"image_size {size}: ")
    check_image_size(PixelConfig(kind="pixel"), 15, tmp_path, tmp_path / "cache")
    assert "at most 4096" in load_error(lambda: check_image_size(PixelConfig(kind="pixel"), 100000, tmp_path))
    assert "vqgan.yaml" in load_error(lambda: check_image_size(VQGANConfig(kind="vqgan", config="vqgan.yaml"), 16, tmp_path / "elsewhere"))


# ----------------------------------------------------------------------------- checkpoints


def _truncated_zip(path: Path) -> None:
    torch.save(tiny_cnn(3).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_safetensors_header(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    data = bytearray(path.read_bytes())
    data[8:12] = b"\x00\xff{["  # inside the JSON header
    path.write_bytes(bytes(data))


def _huge_safetensors_header(path: Path) -> None:
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096).replace(b"PK", b"pk"))  # seeded: the same bytes every run


def _list_payload(path: Path) -> None:
    torch.save([torch.zeros(3), torch.ones(3)], path)


def _wrong_dtype(path: Path) -> None:
    torch.save({k: (v * 100).long() for k, v in tiny_cnn(3).state_dict().items()}, path)


def _non_string_keys(path: Path) -> None:
    torch.save({1: torch.zeros(3)}, path)


def _not_a_zip_member(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a torch file")


BAD_CHECKPOINTS: dict[str, tuple[str, Callable[[Path], None], list[str]]] = {
    "empty": ("theta.pt", lambda p: p.write_bytes(b""), ["empty"]),
    "random-bytes": ("theta.pt", _random_bytes, ["cannot read checkpoint", "theta.pt"]),
    "truncated-zip": ("theta.pt", _truncated_zip, ["cannot read checkpoint"]),
    "zip-without-torch-data": ("theta.pt", _not_a_zip_member, ["cannot read checkpoint"]),
    "corrupt-safetensors": ("theta.safetensors", _corrupt_safetensors_header, ["cannot read checkpoint"]),
    "huge-safetensors-header": ("theta.safetensors", _huge_safetensors_header, ["cannot read checkpoint"]),
    "empty-safetensors": ("theta.safetensors", lambda p: p.write_bytes(b""), ["empty"]),
    "list": ("theta.pt", _list_payload, ["holds a list, not a state dict"]),
    "wrong-dtype": ("theta.pt", _wrong_dtype, ["int64", "float32"]),
    "non-string-keys": ("theta.pt", _non_string_keys, ["key"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line_naming_the_file(case: str, tiny_recipe: Path) -> None:
    name, write, fragments = BAD_CHECKPOINTS[case]
    write(tiny_recipe.parent / name)
    recipe = edit(tiny_recipe, lambda d: d["reference_models"][0].update(checkpoint=name))
    one_line_error(build(recipe), str(tiny_recipe.parent / name), *fragments)


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_raises_checkpoint_error(case: str, tmp_path: Path) -> None:
    from builder.checkpoints import load_state_dict, load_weights

    name, write, fragments = BAD_CHECKPOINTS[case]
    path = tmp_path / name
    write(path)

    def load() -> None:
        state = load_state_dict(path, cache_dir=tmp_path / "cache")
        load_weights(tiny_cnn(3), state, path=path, what="theta")

    message = load_error(load, CheckpointError)
    assert str(path) in message and all(f in message for f in fragments), message


def test_half_precision_weights_still_load(tmp_path: Path) -> None:
    from builder.checkpoints import load_state_dict, load_weights

    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in tiny_cnn(3).state_dict().items()}, path)
    load_weights(tiny_cnn(3), load_state_dict(path), path=path, what="theta")


# ----------------------------------------------------------------------------- oracles

CLIP = {"kind": "clip", "model": "fmr-tiny-clip", "pretrained": "clip.safetensors"}


@pytest.mark.parametrize("template, fragment", [
    ("a photo of", "'{}'"),
    ("a photo of {class}", "'{}'"),
    ("{} next to {}", "exactly one"),
    ("a {} with {braces}", "exactly one"),
    ("a {} {", "exactly one"),
])
def test_bad_clip_template_is_one_line(template: str, fragment: str, tiny_recipe: Path) -> None:
    recipe = edit(tiny_recipe, lambda d: d.update(oracle={**CLIP, "template": template}))
    one_line_error(dry_run(recipe), "oracle.template", fragment)
    one_line_error(build(recipe), "oracle.template", fragment)


@pytest.mark.parametrize("members", [[], [{"kind": "clip"}]])
def test_ensemble_without_two_members_is_one_line(members: list[Any], tiny_recipe: Path) -> None:
    recipe = edit(tiny_recipe, lambda d: d.update(oracle={"kind": "ensemble", "members": members}))
    one_line_error(build(recipe), "oracle.members", "at least two members")


def test_oracle_threshold_is_an_unknown_key(tiny_recipe: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["oracle"]["threshold"] = 2

    one_line_error(build(edit(tiny_recipe, change)), "oracle.threshold", "unknown key")


def test_zero_std_preprocessing_is_one_line(tiny_recipe: Path) -> None:
    recipe = edit(tiny_recipe, lambda d: d["reference_models"][0].update(preprocess={"std": [0.5, 0.0, 0.5]}))
    one_line_error(build(recipe), "preprocess.std", "0.0")


def test_smallest_size_the_vqgan_takes_builds(tiny_recipe: Path) -> None:
    result = build(tiny_recipe, "--set", "image_size=2", "--limit", "3")
    assert result.exit_code == 0, result.output


def test_timm_kwargs_the_architecture_rejects_are_one_line(tiny_recipe: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["reference_models"][0] = {"name": "convnext", "model": "timm:test_convnext.r160_in1k", "pretrained": False,
                                       "kwargs": {"bogus_option": 1}}

    one_line_error(build(edit(tiny_recipe, change)), "timm:test_convnext.r160_in1k", "bogus_option", "fix the spec's kwargs")


def test_checkpoint_that_is_a_directory_is_one_line(tiny_recipe: Path) -> None:
    (tiny_recipe.parent / "theta.pt").unlink()
    (tiny_recipe.parent / "theta.pt").mkdir()
    one_line_error(build(tiny_recipe), "theta.pt", "is a directory")


def test_generator_training_size_is_checked_too(tiny_recipe: Path) -> None:
    recipe = edit(tiny_recipe, lambda d: d["generator"].update(train={"image_size": 15, "epochs": 1}))
    dry_run_failure(dry_run(recipe), "generator train.image_size 15", "multiple of 2")


def test_first_line_quotes_any_exception_on_one_line() -> None:
    """What every one-line error quotes of a library's exception: its first line, cut, or its
    type when it has no message (indexing the lines of an empty message used to raise)."""
    assert first_line(ValueError()) == "ValueError" and first_line(KeyError(), typed=True) == "KeyError"
    assert first_line(OSError("no such file\n  at line 2")) == "no such file"
    assert first_line(RuntimeError("  \n")) == "RuntimeError"
    cut = first_line(ValueError("x" * 500), 120)
    assert len(cut) == 120 and cut.endswith("...")
    assert first_line(KeyError("architecture"), typed=True) == "KeyError: 'architecture'"
