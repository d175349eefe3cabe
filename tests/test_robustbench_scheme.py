"""The ``robustbench:`` model scheme on a real zoo entry (Salman2020Do_R18: a torchvision
ResNet-18 inside robustbench's normaliser) whose random weights are saved where robustbench's
``load_model`` looks (never a faked load): as the reference model and classifier oracle of a
tiny build, scored statically; its preprocessing against robustbench's own eval transforms;
offline errors and dry-run checks. robustbench is an optional extra installed with --no-deps
(see the README); CI installs it and sets FMR_REQUIRE_ROBUSTBENCH=1, so there it never skips."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import build
from PIL import Image

from builder.cli import main
from builder.components.base import ComponentContext
from builder.components.models import load_classifier
from builder.components.robustbench_models import robustbench_utils
from builder.config import ModelSpec
from builder.errors import ComponentError

CLASSES = ("blue", "green", "red")  # the tiny recipe's imagefolder classes, sorted
LABELS = {"blue": "tench", "green": "goldfish", "red": "great white shark"}  # ImageNet outputs 0, 1, 2
NAME = "Salman2020Do_R18"
INSTALL = "pip install 'fmr-builder[robustbench]' && pip install --no-deps robustbench==1.1.1"


@pytest.fixture
def needs_robustbench() -> None:
    if importlib.util.find_spec("robustbench") is None:
        if os.environ.get("FMR_REQUIRE_ROBUSTBENCH") == "1":
            pytest.fail(f"FMR_REQUIRE_ROBUSTBENCH=1 but robustbench is not installed; {INSTALL}")
        pytest.skip(f"robustbench is not installed (optional extra): {INSTALL}")


def save_zoo_weights(model_dir: Path, seed: int) -> Path:
    """A random ResNet-18 saved as robustbench's checkpoint of Salman2020Do_R18 ({'state_dict': ...})."""
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    path = model_dir / "imagenet" / "Linf" / f"{NAME}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": resnet18().state_dict()}, path)
    return model_dir


@pytest.fixture(scope="module")
def zoo_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two robustbench model_dirs holding different random weights of the same entry."""
    return save_zoo_weights(tmp_path_factory.mktemp("rb-a"), 1), save_zoo_weights(tmp_path_factory.mktemp("rb-b"), 2)


@pytest.fixture
def colours(context: ComponentContext) -> ComponentContext:
    return ComponentContext(**{**context.__dict__, "class_names": CLASSES})


def spec(model_dir: Path, model: str = f"robustbench:{NAME}", **fields: Any) -> ModelSpec:
    return ModelSpec(model=model, kwargs={"model_dir": str(model_dir)}, label_map=LABELS, **fields)


def image(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def as_tensor(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1)[None].float() / 255


def robustbench_data(monkeypatch: pytest.MonkeyPatch) -> Any:
    """robustbench.data (its eval transforms). Its dataset loaders import pkg_resources, gone from
    setuptools 81: where it is missing, a stand-in with the one function they use is put in place
    while it is imported."""
    if importlib.util.find_spec("pkg_resources") is None and "pkg_resources" not in sys.modules:
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = lambda package, name: str(importlib.resources.files(package) / name)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pkg_resources", stand_in)
    robustbench_utils("test")  # the package, its __init__ skipped where autoattack is missing
    import robustbench.data

    return robustbench.data


# ----------------------------------------------------------------------------- builds and scores


def test_robustbench_as_reference_and_oracle_then_scored(needs_robustbench: None, tiny_recipe: Path, tmp_path: Path, zoo_dirs: tuple[Path, Path]) -> None:
    from builder.score import score

    reference, oracle = spec(zoo_dirs[0]), spec(zoo_dirs[1], model=f"robustbench:Linf/{NAME}")
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["reference_models"] = [{"name": "ref", **reference.model_dump(mode="json")}]
    recipe["oracle"] = {"kind": "classifier", "model": oracle.model_dump(mode="json")}
    recipe["perturbation"]["budget"] = 2
    tiny_recipe.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    result = build(tiny_recipe, out)
    assert result.exit_code == 0, result.output
    config = next(iter(json.loads((out / "manifest.json").read_text())["configs"].values()))
    assert config["num_samples"] == 12 and config["reference_model"]["model"] == reference.model
    for scored_spec, white_box in ((reference, True), (oracle, False)):
        scored = score(out, scored_spec, bootstrap=20, base_dir=tmp_path)
        assert scored.n == 12 and 0 <= scored.sa <= 1 and 0 <= scored.pa <= 1
        assert scored.white_box == white_box  # the very weights the build attacked


def test_the_loaded_model_is_robustbench_s_with_the_saved_weights(needs_robustbench: None, zoo_dirs: tuple[Path, Path], colours: ComponentContext) -> None:
    """robustbench wraps the ResNet in its ImageNet normaliser; the label map keeps outputs 0, 1, 2."""
    from torchvision.models import resnet18

    classifier = load_classifier(spec(zoo_dirs[0]), colours)
    assert type(classifier.net).__name__ == "Sequential" and list(classifier.net._modules) == ["normalize", "model"]
    assert classifier.num_classes == 3 and classifier.outputs.tolist() == [0, 1, 2]
    torch.manual_seed(1)
    same = resnet18().eval()
    images = torch.rand(2, 3, 224, 224)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(classifier.net(images), same((images - mean) / std), atol=1e-4)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocessing_equals_robustbench_eval_transform(needs_robustbench: None, zoo_dirs: tuple[Path, Path], colours: ComponentContext,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """robustbench's transforms run on PIL uint8 images (ToTensor last, no normalisation): exact (1e-6)
    where no resize is needed; resized, bilinear within 0.005 per value and 0.002 on average ([0, 1]
    units, about one uint8 step), bicubic within 0.15 and 0.003 (PIL's bicubic clamps each pass)."""
    from builder.components.preprocess import Preprocess, Preprocessing
    from builder.components.robustbench_models import PREPROCESSINGS
    from builder.components.torchvision_models import crop_fraction

    data = robustbench_data(monkeypatch)
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    classifier = load_classifier(spec(zoo_dirs[0]), colours)
    theirs = data.get_preprocessing(BenchmarkDataset.imagenet, ThreatModel.Linf, NAME, None)
    ours = [(classifier.preprocess, theirs, "bilinear")]
    for key, (crop, resize, mode) in PREPROCESSINGS.items():  # every preprocessing the scheme takes
        ours.append((Preprocess(Preprocessing(input_size=crop, interpolation=mode, crop_pct=crop_fraction(crop, resize))), data.PREPROCESSINGS[key], mode))
    for preprocess, transform, mode in ours:
        for size in (16, 224, 256, 300):
            picture = image(size, seed=size)
            difference = (preprocess(as_tensor(picture)) - transform(picture)[None]).abs()
            worst, mean = (1e-6, 1e-7) if size == preprocess.config.input_size / preprocess.config.crop_pct // 1 else {"bilinear": (0.005, 0.002), "bicubic": (0.15, 0.003)}[mode]
            assert difference.max() < worst and difference.mean() < mean, (mode, size)


# ----------------------------------------------------------------------------- errors and dry run


def test_missing_weights_are_one_line_offline_errors(needs_robustbench: None, colours: ComponentContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not in model_dir (by default <cache>/robustbench) and robustbench's download fails."""
    import requests

    def no_network(gdrive_id: str, path: Any) -> None:
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(robustbench_utils("test"), "download_gdrive_new", no_network)
    expected = colours.cache_dir / "robustbench" / "imagenet" / "Linf" / f"{NAME}.pt"
    with pytest.raises(ComponentError, match=r"weights are not in .* and cannot be downloaded \(ConnectionError: no network\); run once with network") as caught:
        load_classifier(ModelSpec(model=f"robustbench:{NAME}", label_map=LABELS), colours)
    assert str(expected) in str(caught.value) and "\n" not in str(caught.value)


def test_wrong_names_and_specs_are_one_line_errors(needs_robustbench: None, colours: ComponentContext, zoo_dirs: tuple[Path, Path]) -> None:
    cases = {
        "robustbench:Salman2020Do_R81": "unknown robustbench ImageNet model 'Salman2020Do_R81'; did you mean 'Salman2020Do_R18'",
        f"robustbench:Linff/{NAME}": "unknown robustbench ImageNet threat model 'Linff'; did you mean 'Linf'",
        "robustbench:Wong2020Fast": "its robustbench preprocessing 'Crop288' is not supported",
        f"robustbench:corruptions/{NAME}": "unknown robustbench ImageNet model",
    }
    for model, message in cases.items():
        with pytest.raises(ComponentError, match=message):
            load_classifier(spec(zoo_dirs[0], model=model), colours)
    with pytest.raises(ComponentError, match=r"loads robustbench's own weights only; drop 'checkpoint'"):
        load_classifier(spec(zoo_dirs[0], checkpoint="theta.pt"), colours)
    with pytest.raises(ComponentError, match=r"unknown kwargs \['depth'\]; robustbench models take only model_dir"):
        load_classifier(ModelSpec(model=f"robustbench:{NAME}", kwargs={"depth": 3}), colours)
    with pytest.raises(ComponentError, match="labels do not include the benchmark class 'blue'"):
        load_classifier(ModelSpec(model=f"robustbench:{NAME}", kwargs={"model_dir": str(zoo_dirs[0])}), colours)


def test_without_robustbench_the_error_says_how_to_install(colours: ComponentContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs whether or not robustbench is installed: where it is, it is hidden."""
    from builder.components import robustbench_models

    for name in [name for name in sys.modules if name == "robustbench" or name.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)
    real = importlib.util.find_spec
    monkeypatch.setattr(robustbench_models.importlib.util, "find_spec", lambda name, *rest: None if name == "robustbench" else real(name, *rest))
    with pytest.raises(ComponentError, match=rf"^robustbench:{NAME}: needs the robustbench package; {INSTALL.replace('[', '.').replace(']', '.')}$"):
        load_classifier(ModelSpec(model=f"robustbench:{NAME}", label_map=LABELS), colours)


def dry_run(recipe: Path, *sets: str) -> Any:
    arguments = [item for value in sets for item in ("--set", value)]
    return CliRunner().invoke(main, ["-q", "run", str(recipe), "--dry-run", *arguments])


def test_dry_run_checks_names_offline(needs_robustbench: None, tiny_recipe: Path, zoo_dirs: tuple[Path, Path]) -> None:
    field = "reference_models.0"
    result = dry_run(tiny_recipe, f"{field}.model=robustbench:Salman2020Do_R81", f"{field}.checkpoint=null")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "did you mean 'Salman2020Do_R18'" in result.output
    passing = [f"{field}.model=robustbench:{NAME}", f"{field}.checkpoint=null", f"{field}.kwargs={{model_dir: {zoo_dirs[0]}}}",
               f"{field}.label_map={{blue: tench, green: goldfish, red: great white shark}}"]
    result = dry_run(tiny_recipe, *passing)
    assert result.exit_code == 0, result.output
    assert f"{NAME}.pt in {zoo_dirs[0] / 'imagenet' / 'Linf'}" in result.output
