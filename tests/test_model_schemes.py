"""The ``hf:``, ``torchvision:`` and ``clip:`` model schemes, on tiny models built and saved here
(never a faked load): as reference models of a tiny build, as ``classifier`` oracles, scored
statically; their preprocessing against their library's own eval transform; label mapping;
offline checks of wrong names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import TINY_MODELS, assert_one_line_error, build
from PIL import Image

from builder.cli import main
from builder.components.base import ComponentContext, prompt_template_of
from builder.components.models import load_classifier
from builder.components.preprocess import PreprocessedClassifier, Preprocessing
from builder.config import ModelSpec
from builder.errors import ComponentError

CLASSES = ("blue", "green", "red")  # the tiny recipe's imagefolder classes, sorted
#: the torchvision weights used offline: a random shufflenet put where torch.hub keeps that file
TV_WEIGHTS = "torchvision:shufflenet_v2_x0_5:IMAGENET1K_V1"
TV_LABELS = {"blue": "tench", "green": "goldfish", "red": "great white shark"}


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """torch.hub's cache, private, holding random weights under the enum's file name."""
    from torchvision.models import get_model, get_model_weights

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch-hub"))
    enum = get_model_weights("shufflenet_v2_x0_5").IMAGENET1K_V1
    target = Path(torch.hub.get_dir()) / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(get_model("shufflenet_v2_x0_5", num_classes=1000).state_dict(), target)
    yield target
    torch.hub.set_dir(previous)


@pytest.fixture
def colours(context: ComponentContext) -> ComponentContext:
    """The shared test context with the tiny recipe's classes."""
    return ComponentContext(**{**context.__dict__, "class_names": CLASSES})


def save_hf_model(folder: Path, labels: tuple[str, ...] = CLASSES, size: int = 32) -> Path:
    """A tiny random ViTForImageClassification and its image processor, saved as the Hub has them."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=size, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}, resample=2, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def save_clip(path: Path) -> Path:
    import open_clip

    from builder.components.oracles import register_builtin_clip_configs

    register_builtin_clip_configs()
    torch.manual_seed(3)
    torch.save(open_clip.create_model("fmr-tiny-clip", pretrained=None).state_dict(), path)
    return path


def save_resnet(path: Path) -> Path:
    from torchvision.models import get_model

    torch.manual_seed(4)
    torch.save(get_model("resnet18", num_classes=3).state_dict(), path)
    return path


@pytest.fixture
def specs(tmp_path: Path, hub_dir: Path) -> dict[str, dict[str, Any]]:
    """One spec per scheme (torchvision twice: a weights enum, and own weights)."""
    return {
        "hf": {"model": f"hf:{save_hf_model(tmp_path / 'vit')}"},
        "torchvision-enum": {"model": TV_WEIGHTS, "label_map": TV_LABELS},
        "torchvision": {"model": "torchvision:resnet18", "checkpoint": str(save_resnet(tmp_path / "resnet.pt"))},
        "clip": {"model": "clip:fmr-tiny-clip", "checkpoint": str(save_clip(tmp_path / "clip.pt")), "template": ["a photo of {}", "an image of {}"]},
    }


def image(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def as_tensor(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1)[None].float() / 255


# ----------------------------------------------------------------------------- builds and scores


def recipe_with(tiny_recipe: Path, reference: dict[str, Any], oracle: dict[str, Any]) -> Path:
    recipe = yaml.safe_load(tiny_recipe.read_text())
    recipe["reference_models"] = [{"name": "ref", **reference}]
    recipe["oracle"] = {"kind": "classifier", "model": oracle}
    recipe["perturbation"]["budget"] = 2
    tiny_recipe.write_text(yaml.safe_dump(recipe))
    return tiny_recipe


@pytest.mark.parametrize(("reference", "oracle"), [("hf", "torchvision-enum"), ("torchvision", "clip"), ("clip", "hf")])
def test_each_scheme_as_reference_and_oracle_then_scored(tiny_recipe: Path, tmp_path: Path, specs: dict[str, dict[str, Any]],
                                                         reference: str, oracle: str) -> None:
    from builder.score import score

    out = tmp_path / "out"
    result = build(recipe_with(tiny_recipe, specs[reference], specs[oracle]), out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    config = next(iter(manifest["configs"].values()))
    assert config["num_samples"] == 12 and config["reference_model"]["model"] == specs[reference]["model"]
    for name in (reference, oracle):
        scored = score(out, ModelSpec.model_validate(specs[name]), bootstrap=20, base_dir=tmp_path)
        assert scored.n == 12 and 0 <= scored.sa <= 1 and 0 <= scored.pa <= 1 and 0 <= scored.pa_perturbed <= 1
        assert scored.white_box == (name == reference)  # the very weights the build attacked


def test_a_scheme_scored_dynamically(tiny_recipe: Path, tmp_path: Path) -> None:
    """``score --dynamic``: the benchmark is regenerated against the hf: model itself."""
    from builder.score import score_dynamic

    spec = ModelSpec(model=f"hf:{save_hf_model(tmp_path / 'vit')}")
    result = score_dynamic(str(tiny_recipe), spec, limit=6, bootstrap=0, progress=False, cache_dir=tmp_path / "cache")
    assert result.mode == "dynamic" and result.white_box and result.n == 6 and result.model == spec.model
    assert result.sample_predictions is None  # its regenerated benchmark was not kept: keys of nothing


# ----------------------------------------------------------------------------- preprocessing


def test_hf_preprocessing_equals_its_image_processor(tmp_path: Path, colours: ComponentContext) -> None:
    """Exact (1e-5) where no resize is needed; with one, PIL's bilinear on uint8 against a
    differentiable antialiased bilinear on floats: within 0.05 per value (std-normalised units),
    0.01 on average."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(save_hf_model(tmp_path / "vit"))
    classifier = load_classifier(ModelSpec(model=f"hf:{tmp_path / 'vit'}"), colours)
    assert classifier.preprocess.config.interpolation == "bilinear" and classifier.preprocess.config.mean == (0.4, 0.5, 0.6)
    for size, worst, mean in ((32, 1e-5, 1e-6), (48, 0.05, 0.01)):
        picture = image(size)
        theirs = processor(images=picture, return_tensors="pt")["pixel_values"]
        ours = classifier.preprocess(as_tensor(picture))
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() < worst and (ours - theirs).abs().mean() < mean


def smooth_image(size: int, seed: int = 0) -> Image.Image:
    """Low-resolution noise upsampled: a picture whose resizing by PIL, torchvision and torch
    differs by rounding, not by how each kernel treats pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 12, generator=generator), size=(size, size), mode="bilinear")
    return Image.fromarray((coarse[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def tiny_hf_families() -> dict[str, tuple[Any, Any]]:
    """(tiny classifier, its family's image processor at its default settings) per family whose
    processor has rules of its own: MobileViT reads BGR (and pads its 224 px resize to its 256
    px crop), EfficientNet divides by std twice (include_top), LeViT resizes to 256/224 of its
    size, PoolFormer resizes to size / crop_pct before its crop."""
    from transformers import (
        EfficientNetConfig,
        EfficientNetForImageClassification,
        EfficientNetImageProcessor,
        LevitConfig,
        LevitForImageClassification,
        LevitImageProcessor,
        MobileViTConfig,
        MobileViTForImageClassification,
        MobileViTImageProcessor,
        PoolFormerConfig,
        PoolFormerForImageClassification,
        PoolFormerImageProcessor,
    )

    labels = {"num_labels": 3, "id2label": dict(enumerate(CLASSES)), "label2id": {name: i for i, name in enumerate(CLASSES)}}
    mobilevit = MobileViTConfig(image_size=64, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 8, 8, 8, 16, 32], num_attention_heads=2, **labels)
    levit = LevitConfig(image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 1, 1], depths=[1, 1, 1], key_dim=[8, 8, 8], **labels)
    return {
        "mobilevit": (MobileViTForImageClassification(mobilevit), MobileViTImageProcessor()),
        "efficientnet": (EfficientNetForImageClassification(EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=32, **labels)),
                         EfficientNetImageProcessor()),
        "levit": (LevitForImageClassification(levit), LevitImageProcessor()),
        "poolformer": (PoolFormerForImageClassification(PoolFormerConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], **labels)),
                       PoolFormerImageProcessor()),
    }


def test_hf_preprocessing_follows_each_family_s_own_processor_rules(tmp_path: Path, colours: ComponentContext) -> None:
    """Only size, crop, mean, std and resample were read: MobileViT was fed RGB for BGR,
    EfficientNet's second division by std was dropped, LeViT and PoolFormer were cropped from
    another resize. Each against its processor's own pixel_values on the same picture (PIL or
    torchvision resizing uint8, ours floats): 0.01 on average, 0.05 at most."""
    torch.manual_seed(6)
    for family, (net, processor) in tiny_hf_families().items():
        net.save_pretrained(tmp_path / family)
        processor.save_pretrained(tmp_path / family)
        classifier = load_classifier(ModelSpec(model=f"hf:{tmp_path / family}"), colours)
        picture = smooth_image(300)
        theirs = processor(images=picture, return_tensors="pt")["pixel_values"]
        ours = classifier.preprocess(as_tensor(picture))
        assert ours.shape == theirs.shape, family
        difference = (ours - theirs).abs()
        assert difference.mean() < 0.01 and difference.max() < 0.05, (family, float(difference.mean()), float(difference.max()))
    assert classifier.preprocess.config.bgr is False
    assert load_classifier(ModelSpec(model=f"hf:{tmp_path / 'mobilevit'}"), colours).preprocess.config.bgr is True


def test_hf_processor_steps_not_reproduced_are_refused_unless_overridden() -> None:
    """A processor step the preprocessing cannot express is one line naming the field, not a
    silent other input; the spec's preprocess overrides stand in for it."""
    from transformers import DonutImageProcessor, ViTImageProcessor

    from builder.components.hf_models import hf_preprocessing

    with pytest.raises(ComponentError, match=r"^hf:x: its DonutImageProcessor's do_pad=True is not reproduced here; "
                                             r"give preprocess: \{input_size, crop_pct, interpolation, mean, std\} in the spec"):
        hf_preprocessing(DonutImageProcessor(), "hf:x")
    assert hf_preprocessing(DonutImageProcessor(), "hf:x", frozenset({"input_size", "crop_pct", "interpolation", "mean", "std"}))
    wide = ViTImageProcessor(size={"height": 32, "width": 48})
    with pytest.raises(ComponentError, match=r"^hf:x: its ViTImageProcessor's size=.* is not reproduced here; give preprocess: \{input_size, crop_pct\}"):
        hf_preprocessing(wide, "hf:x")
    assert hf_preprocessing(wide, "hf:x", frozenset({"input_size", "crop_pct"})).input_size == 32


def test_torchvision_preprocessing_equals_the_weights_transforms(hub_dir: Path, colours: ComponentContext) -> None:
    """torchvision's eval transform on a float tensor is the same resize, crop and normalisation: 1e-5."""
    from torchvision.models import get_model_weights

    classifier = load_classifier(ModelSpec(model=TV_WEIGHTS, label_map=TV_LABELS), colours)
    transform = get_model_weights("shufflenet_v2_x0_5").IMAGENET1K_V1.transforms()
    for size in (224, 300):
        picture = as_tensor(image(size))
        theirs = transform(picture)
        assert torch.allclose(classifier.preprocess(picture), theirs, atol=1e-5)


def test_a_torchvision_checkpoint_keeps_its_named_weights_preprocessing(tmp_path: Path, colours: ComponentContext) -> None:
    """A fine-tuned checkpoint of ``torchvision:<name>:<weights>`` replaces the weights, not the
    preprocessing they were trained with: it was scored on unnormalised, uncropped input."""
    from torchvision.models import get_model, get_model_weights

    from builder.components.torchvision_models import transforms_preprocessing

    torch.manual_seed(5)
    torch.save(get_model("shufflenet_v2_x0_5", num_classes=3).state_dict(), tmp_path / "tuned.pt")
    classifier = load_classifier(ModelSpec(model=TV_WEIGHTS, checkpoint=str(tmp_path / "tuned.pt")), colours)
    expected = transforms_preprocessing(get_model_weights("shufflenet_v2_x0_5").IMAGENET1K_V1.transforms(), TV_WEIGHTS)
    assert classifier.preprocess.config == expected and expected.mean != (0.0, 0.0, 0.0)
    bare = load_classifier(ModelSpec(model="torchvision:shufflenet_v2_x0_5", checkpoint=str(tmp_path / "tuned.pt")), colours)
    assert bare.preprocess.config.mean == (0.0, 0.0, 0.0)  # no weights named: nothing to take it from


def test_clip_preprocessing_equals_open_clip_eval_transform(tmp_path: Path, colours: ComponentContext) -> None:
    """open_clip's own eval transform (PIL bicubic on uint8): exact (1e-5) at the model's size;
    resized, within 0.1 per value and 0.02 on average (std-normalised units)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    spec = ModelSpec(model="clip:fmr-tiny-clip", checkpoint=str(save_clip(tmp_path / "clip.pt")))
    classifier = load_classifier(spec, colours)
    transform = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(classifier.net.model)), is_train=False)
    for size, worst, mean in ((32, 1e-5, 1e-6), (48, 0.1, 0.02)):
        picture = image(size)
        difference = classifier.preprocess(as_tensor(picture)) - transform(picture)[None]
        assert difference.abs().max() < worst and difference.abs().mean() < mean


def test_clip_scheme_is_the_clip_oracle(tmp_path: Path, colours: ComponentContext) -> None:
    """Same weights, same template: the scheme's probabilities are the oracle's."""
    from builder.components.oracles import ClipOracleConfig, load_clip_oracle

    weights = str(save_clip(tmp_path / "clip.pt"))
    oracle = load_clip_oracle(ClipOracleConfig(kind="clip", model="fmr-tiny-clip", pretrained=weights, template="a {}"), colours)
    classifier = load_classifier(ModelSpec(model="clip:fmr-tiny-clip", checkpoint=weights, template="a {}"), colours)
    images = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(classifier(images).softmax(-1), oracle.probabilities(images), atol=1e-6)
    # without a template of its own, a clip: spec takes the recipe's (its clip oracle's)
    recipe_oracle = {"kind": "clip", "model": "fmr-tiny-clip", "pretrained": weights, "template": ["a {}", "the {}"]}
    context = ComponentContext(**{**colours.__dict__, "prompt_template": prompt_template_of(recipe_oracle)})
    averaged = load_clip_oracle(ClipOracleConfig.model_validate(recipe_oracle), context)
    inherited = load_classifier(ModelSpec(model="clip:fmr-tiny-clip", checkpoint=weights), context)
    assert torch.allclose(inherited.net.text_features, averaged.text_features, atol=1e-6)
    assert not torch.allclose(inherited.net.text_features, oracle.text_features, atol=1e-3)
    assert prompt_template_of({"kind": "classifier"}) is None and prompt_template_of({"template": "no slot"}) is None


# ----------------------------------------------------------------------------- labels, weights, trust


def test_label_mismatch_is_a_clear_error_and_label_map_fixes_it(tmp_path: Path, colours: ComponentContext, hub_dir: Path) -> None:
    folder = save_hf_model(tmp_path / "pets", labels=("cat", "dog", "bird"))
    with pytest.raises(ComponentError, match=r"labels do not include the benchmark class 'blue'.*give label_map") as caught:
        load_classifier(ModelSpec(model=f"hf:{folder}"), colours)
    assert "\n" not in str(caught.value)
    mapped = load_classifier(ModelSpec(model=f"hf:{folder}", label_map={"blue": "bird", "green": 0, "red": "dog"}), colours)
    assert mapped.outputs.tolist() == [2, 0, 1] and mapped(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    with pytest.raises(ComponentError, match=r"label_map\['red'\] = 'dgo' is not one of the model's 3 labels; did you mean 'dog'"):
        load_classifier(ModelSpec(model=f"hf:{folder}", label_map={"blue": "bird", "green": 0, "red": "dgo"}), colours)
    with pytest.raises(ComponentError, match="labels do not include the benchmark class 'blue'"):
        load_classifier(ModelSpec(model=TV_WEIGHTS), colours)  # ImageNet's labels


def test_labels_that_differ_only_in_case_or_repeat_keep_their_own_outputs() -> None:
    """ImageNet's "Cardigan" (the corgi, 264) and "cardigan" (the sweater, 474): with
    torchvision's own labels as the classes, every class reads its own output (the sweater read
    the corgi's: the first match up to case won); in another order, the exact label first. A
    repeated label (the "crane" of other ImageNet label lists, at 134 and 517) keeps its
    position; a name that matches two labels elsewhere is one line, not a guess."""
    from torchvision.models import ResNet50_Weights

    from builder.components.labels import label_outputs

    labels = [str(name) for name in ResNet50_Weights.IMAGENET1K_V1.meta["categories"]]
    assert (labels[264], labels[474]) == ("Cardigan", "cardigan")
    assert label_outputs("torchvision:resnet50", labels, tuple(labels)) is None
    assert label_outputs("m", labels, ("cardigan", "Cardigan", "tench")) == [474, 264, 0]
    assert label_outputs("m", labels, ("sweater", "corgi"), {"sweater": "cardigan", "corgi": "Cardigan"}) == [474, 264]
    repeated = ["tench", "crane", "goldfish", "crane"]
    assert label_outputs("m", repeated, tuple(repeated)) is None
    with pytest.raises(ComponentError, match=r"^m: the benchmark class 'crane' matches 2 of the model's labels \(\[1\] 'crane', \[3\] 'crane'\); "
                                             r"give label_map \{class: model label index\} to say which$"):
        label_outputs("m", repeated, ("goldfish", "tench", "crane"))
    assert label_outputs("m", repeated, ("goldfish", "tench", "crane"), {"goldfish": "goldfish", "tench": 0, "crane": 3}) == [2, 0, 3]
    synonyms = ["tench, Tinca tinca", "goldfish, Carassius auratus", "Tinca"]
    assert label_outputs("m", synonyms, ("goldfish", "tench", "tinca")) == [1, 0, 2]  # the label itself before a synonym


def test_a_label_map_sending_two_classes_to_one_output_is_refused() -> None:
    """{fish: 0, gold: 0} gave outputs [0, 0]: the gold images could never be right; matching by
    name refused the same thing."""
    from builder.components.labels import label_outputs

    labels = ["tench", "goldfish", "crane", "crane bird"]
    with pytest.raises(ComponentError, match=r"^m: label_map sends the benchmark classes 'fish' and 'gold' both to the model's output "
                                             r"\[0\] 'tench'; map each class to an output of its own$"):
        label_outputs("m", labels, ("fish", "gold"), {"fish": 0, "gold": "tench"})
    with pytest.raises(ComponentError, match=r"^m: the benchmark repeats the class 'crane', so label_map sends both to the model's output "
                                             r"\[3\] 'crane bird'; use a model whose labels are the benchmark's classes in order"):
        label_outputs("m", labels, ("tench", "crane", "goldfish", "crane"), {"tench": 0, "crane": 3, "goldfish": 1})
    assert label_outputs("m", labels, ("fish", "gold"), {"fish": 1, "gold": "tench"}) == [1, 0]


def test_class_ranges_pool_the_raw_outputs_of_pretrained_hf_and_torchvision_models(tmp_path: Path, colours: ComponentContext,
                                                                                   hub_dir: Path) -> None:
    """The super-classes of class_ranges are no label names: hf: and torchvision: matched them
    against the model's labels and refused, advising label_map (which class_ranges excludes)."""
    from builder.preflight import PreflightContext, check_model

    folder = save_hf_model(tmp_path / "shades", labels=("navy", "sky", "lime", "crimson"))
    spec = ModelSpec(model=f"hf:{folder}", class_ranges={"blue": [[0, 1]], "green": [[2, 2]], "red": [[3, 3]]})
    pooled = load_classifier(spec, colours)
    images = torch.rand(2, 3, 16, 16)
    raw = pooled.inner(images)
    assert pooled.num_classes == 3 and pooled.inner.outputs is None
    assert torch.allclose(pooled(images), torch.stack([raw[:, :2].logsumexp(1), raw[:, 2], raw[:, 3]], 1), atol=1e-6)
    ranges = {"blue": [[0, 9]], "green": [[10, 19]], "red": [[20, 29]]}
    imagenet = load_classifier(ModelSpec(model=TV_WEIGHTS, class_ranges=ranges), colours)
    assert imagenet.num_classes == 3 and imagenet.inner.outputs is None and imagenet.inner.num_classes == 1000
    # the dry run counts the raw outputs, so ranges past them are caught before loading
    dry = PreflightContext(tmp_path, tmp_path / "cache", image_size=16, class_count=3, class_names=CLASSES)
    assert [check.detail for check in check_model(spec, dry, "ref")][1:] == ["4 outputs pooled into 3 super-classes"]
    too_far = check_model(ModelSpec(model=TV_WEIGHTS, class_ranges={**ranges, "red": [[20, 1000]]}), dry, "ref")
    assert "class_ranges reach index 1000 but the model has 1000 outputs" in str(too_far[-1].problem)


def test_benchmark_classes_named_by_wordnet_synonyms_match_short_labels(colours: ComponentContext, hub_dir: Path) -> None:
    """A benchmark of ImageNet's WordNet names ("tench, Tinca tinca", as the Hub's imagenet-1k
    names them) against torchvision's short labels ("tench"): only the model's labels were split
    into synonyms, so no class matched. Its two "crane"s (torchvision: "crane bird", "crane")
    keep their positions when every other class is at its own; the corgi and the sweater stay
    apart; "crayfish" is the first synonym of 124, not the fifth of 123."""
    from timm.data import ImageNetInfo
    from torchvision.models import ResNet50_Weights

    from builder.components.labels import label_outputs

    info = ImageNetInfo()
    wordnet = tuple(info.index_to_description(index) for index in range(1000))
    short = [str(name) for name in ResNet50_Weights.IMAGENET1K_V1.meta["categories"]]
    assert (wordnet[134], wordnet[517], short[134]) == ("crane", "crane", "crane bird")
    assert label_outputs("torchvision:resnet50", short, wordnet) is None
    picked = (wordnet[264], wordnet[474], wordnet[124], wordnet[0])
    assert label_outputs("m", short, picked) == [264, 474, 124, 0]
    assert label_outputs("m", list(wordnet), ("Cardigan", "cardigan", "crayfish", "tench")) == [264, 474, 124, 0]  # the converse
    with pytest.raises(ComponentError, match=r"^m: the benchmark classes 'tench' and 'Tench, Tinca' both match the model's label \[0\] 'tench'; give label_map"):
        label_outputs("m", short, ("tench", "Tench, Tinca"))
    with pytest.raises(ComponentError, match=r"^m: the benchmark class 'crane' matches 2 of the model's labels"):
        label_outputs("m", ["crane", "tench", "crane"], ("tench", "crane"))
    wordy = ComponentContext(**{**colours.__dict__, "class_names": (wordnet[1], wordnet[0], wordnet[2])})
    classifier = load_classifier(ModelSpec(model=TV_WEIGHTS), wordy)
    assert classifier.outputs.tolist() == [1, 0, 2]


def test_what_a_scheme_cannot_do_is_refused_not_ignored(colours: ComponentContext) -> None:
    """label_map on a scheme whose models do not name their labels was silently ignored (the
    outputs kept their order); a train block on clip: failed deep in loading and training."""
    from builder.config import TrainConfig

    with pytest.raises(ComponentError, match=r"label_map picks outputs by label name, but py: models do not name their labels .*"
                                             r"\(hf:, robustbench:, timm:, torchvision:\)$"):
        load_classifier(ModelSpec(model=f"py:{TINY_MODELS}:color_net", label_map={"red": 2, "green": 1, "blue": 0}), colours)
    # without its pretrained weights (pretrained: false, or a checkpoint) no scheme's outputs carry label names
    with pytest.raises(ComponentError, match=r"^timm:test_convnext: label_map picks outputs by label name, but this timm model is not loaded "
                                             r"with pretrained weights that name their labels; drop label_map"):
        load_classifier(ModelSpec(model="timm:test_convnext", pretrained=False, label_map={"red": 2, "green": 1, "blue": 0}), colours)
    for model in ("hf:org/some-vit", "torchvision:resnet18"):  # label_map was ignored with a checkpoint
        with pytest.raises(ComponentError, match=rf"^{model}: label_map picks outputs .* but with a checkpoint .*; drop label_map$"):
            load_classifier(ModelSpec(model=model, checkpoint="w.safetensors", label_map={"red": 2, "green": 1, "blue": 0}), colours)
    with pytest.raises(ComponentError, match=r"^clip:fmr-tiny-clip: clip: models cannot be trained here; drop the train block"):
        load_classifier(ModelSpec(model="clip:fmr-tiny-clip", checkpoint="w.safetensors", train=TrainConfig()), colours)


def save_timm(folder: Path, **model_config: Any) -> Path:
    """A tiny random timm model as save_for_hf writes it, its labels named by ``model_config``."""
    import timm

    torch.manual_seed(5)
    timm.models.save_for_hf(timm.create_model("test_resnet", num_classes=3), folder, model_config=model_config or None)
    return folder


def test_timm_models_that_name_their_labels_are_matched_by_name(tmp_path: Path, colours: ComponentContext) -> None:
    """A timm model saved with label_names (save_for_hf, push_to_hf_hub) was read in output order
    whatever its names said, and label_map was refused; now its outputs are matched as hf:'s
    are (ImageNet-style synsets through their label_descriptions), and a model that names none
    keeps its order."""
    from builder.preflight import PreflightContext, check_model

    named = save_timm(tmp_path / "named", label_names=["red", "blue", "green"])
    classifier = load_classifier(ModelSpec(model=f"timm:local-dir:{named}"), colours)
    assert classifier.outputs.tolist() == [1, 2, 0]
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(classifier(images), classifier.net(classifier.preprocess(images))[:, [1, 2, 0]])
    mapped = load_classifier(ModelSpec(model=f"timm:local-dir:{named}", label_map={"blue": "green", "green": 0, "red": "blue"}), colours)
    assert mapped.outputs.tolist() == [2, 0, 1]
    synsets = save_timm(tmp_path / "synsets", label_names=["n1", "n2", "n3"],
                        label_descriptions={"n1": "green, lime", "n2": "red, crimson", "n3": "blue, navy"})
    assert load_classifier(ModelSpec(model=f"timm:local-dir:{synsets}"), colours).outputs.tolist() == [2, 0, 1]
    unnamed = save_timm(tmp_path / "unnamed")
    assert load_classifier(ModelSpec(model=f"timm:local-dir:{unnamed}"), colours).outputs is None
    with pytest.raises(ComponentError, match=r"but this timm model names no labels \(no label_names in its pretrained config\); drop label_map"):
        load_classifier(ModelSpec(model=f"timm:local-dir:{unnamed}", label_map={"blue": 0, "green": 1, "red": 2}), colours)
    context = PreflightContext(tmp_path, tmp_path / "cache", 16, 3)
    [fine] = check_model(ModelSpec(model=f"timm:local-dir:{named}", label_map={"blue": 1, "green": 2, "red": 0}), context, "ref")
    assert fine.problem is None and fine.classes == 3
    [refused] = check_model(ModelSpec(model=f"timm:local-dir:{unnamed}", label_map={"blue": 1, "green": 2, "red": 0}), context, "ref")
    assert refused.problem is not None and "names no labels" in refused.problem


def test_a_num_classes_the_pretrained_head_does_not_have_is_refused(tmp_path: Path, colours: ComponentContext) -> None:
    """num_classes other than the pretrained head's count gave a fresh random head, silently
    (timm; a Transformers checkpoint without a head only said so in its load report): refused
    in one line, when loaded and in the dry run, unless a checkpoint holds the head; the class
    count mismatch of a pretrained model no longer advises num_classes alone."""
    import timm
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from builder.preflight import PreflightContext, check_model

    torch.save(timm.create_model("test_resnet.r160_in1k").state_dict(), tmp_path / "in1k.pth")
    weights = {"pretrained_cfg_overlay": {"file": str(tmp_path / "in1k.pth")}}
    spec = ModelSpec(model="timm:test_resnet.r160_in1k", num_classes=3, kwargs=weights)
    with pytest.raises(ComponentError, match=r"^timm:test_resnet.r160_in1k: num_classes 3 is not its pretrained head's 1000 classes, so its "
                                             r"head would start random; drop num_classes and pick outputs with label_map or class_ranges, "
                                             r"or give a checkpoint \(or a train block\) with a 3-class head$"):
        load_classifier(spec, colours)
    with pytest.raises(ComponentError, match=r"has 1000 classes but the source has 3; pick the outputs that stand for them with label_map "
                                             r"or class_ranges, or give num_classes with a checkpoint"):
        load_classifier(ModelSpec(model="timm:test_resnet.r160_in1k", kwargs=weights), colours)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "three.pth")
    assert load_classifier(spec.model_copy(update={"checkpoint": str(tmp_path / "three.pth")}), colours).num_classes == 3
    context = PreflightContext(tmp_path, tmp_path / "cache", 16, 3)
    [refused] = check_model(spec, context, "ref")
    assert refused.problem is not None and "num_classes 3 is not its pretrained head's 1000 classes" in refused.problem
    [fine] = check_model(spec.model_copy(update={"checkpoint": "three.pth"}), context, "ref")
    assert fine.problem is None and fine.classes == 3

    folder = save_hf_model(tmp_path / "vit")
    with pytest.raises(ComponentError, match=r"num_classes 5 is not its pretrained head's 3 classes"):
        load_classifier(ModelSpec(model=f"hf:{folder}", num_classes=5), colours)
    [refused] = check_model(ModelSpec(model=f"hf:{folder}", num_classes=5), context, "ref")
    assert refused.problem is not None and "num_classes 5 is not its pretrained head's 3 classes" in refused.problem
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "backbone")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "backbone")
    two = ComponentContext(**{**colours.__dict__, "class_names": ("cat", "dog")})  # as many as its default LABEL_0, LABEL_1
    with pytest.raises(ComponentError, match=r"^hf:.*backbone: its checkpoint holds no classification head that fits \('classifier.bias' and "
                                             r"more would start random\); use a model fine-tuned for image classification"):
        load_classifier(ModelSpec(model=f"hf:{tmp_path / 'backbone'}"), two)


def test_labels_in_another_order_are_matched_by_name(tmp_path: Path, colours: ComponentContext) -> None:
    folder = save_hf_model(tmp_path / "vit", labels=("Red", "blue", "GREEN"))
    classifier = load_classifier(ModelSpec(model=f"hf:{folder}"), colours)
    assert classifier.outputs.tolist() == [1, 2, 0]
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(classifier(images), classifier.net(classifier.preprocess(images)).logits[:, [1, 2, 0]])


def test_missing_weights_are_one_line_offline_errors(tmp_path: Path, colours: ComponentContext, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    torch.hub.set_dir(str(tmp_path / "empty-hub"))
    try:
        monkeypatch.setattr("torch.hub.load_state_dict_from_url", _no_network)
        with pytest.raises(ComponentError, match=r"weights are not in the torch hub cache .*shufflenetv2_x0.5-f707e7126e.pth.*run once with network"):
            load_classifier(ModelSpec(model=TV_WEIGHTS, label_map=TV_LABELS), colours)
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(ComponentError, match=r"^hf:someone/vit-tiny: cannot load it from the HF cache or the Hub .*run once with network"):
        load_classifier(ModelSpec(model="hf:someone/vit-tiny"), colours)


def test_hf_model_transformers_cannot_classify_with_is_not_a_network_error(tmp_path: Path, colours: ComponentContext) -> None:
    import json

    from transformers import GPT2Config

    newer = save_hf_model(tmp_path / "newer")
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "model_type": "vit-from-the-future"}))
    with pytest.raises(ComponentError, match=r"^hf:.*newer: Transformers read it but cannot load it as an image classifier "
                                             r"\(.*vit-from-the-future.*\); .*upgrade transformers \(installed: ") as caught:
        load_classifier(ModelSpec(model=f"hf:{newer}"), colours)
    assert "network" not in str(caught.value) and "\n" not in str(caught.value)
    text_model = save_hf_model(tmp_path / "text")
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(str(text_model))
    with pytest.raises(ComponentError, match=r"cannot load it as an image classifier \(Unrecognized configuration class .*GPT2Config.*\); "
                                             r"name an image-classification model"):
        load_classifier(ModelSpec(model=f"hf:{text_model}"), colours)


def _no_network(url: str, *args: Any, **kwargs: Any) -> Any:
    import urllib.error

    raise urllib.error.URLError("no network")


def test_hf_with_remote_code_counts_as_code() -> None:
    from builder.trust import runs_code

    assert not runs_code(ModelSpec(model="hf:org/model"))
    assert runs_code(ModelSpec(model="hf:org/model", kwargs={"trust_remote_code": True}))
    assert not runs_code(ModelSpec(model="torchvision:resnet18")) and not runs_code(ModelSpec(model="clip:ViT-B-32/openai"))


class _Mkdir:
    """Unpickled, it makes ``marker``: what a crafted pytorch_model.bin can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return os.mkdir, (str(self.marker),)


def save_bin_hf_model(folder: Path, *, payload: Optional[Path] = None, cut: bool = False) -> Path:
    """A tiny hf: model with its weights as pytorch_model.bin (a pickle), holding a call that
    makes ``payload`` when unpickled, or cut to half its length. Its config names no dtype, so
    Transformers unpickles the weights with the spec's ``weights_only`` to find it."""
    from transformers import ViTForImageClassification

    net = ViTForImageClassification.from_pretrained(save_hf_model(folder))
    (folder / "model.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({key: value for key, value in config.items() if key not in ("dtype", "torch_dtype")}))
    torch.save({**net.state_dict(), **({"payload": _Mkdir(payload)} if payload else {})}, folder / "pytorch_model.bin")
    if cut:
        data = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    return folder


def test_hf_kwargs_that_may_run_code_count_as_code() -> None:
    """A spec's kwargs go to from_pretrained: weights_only: false unpickles the weights,
    use_kernels and a Hub attn_implementation fetch kernels; only inert loading options don't count."""
    from builder.trust import runs_code

    for kwargs in ({"weights_only": False}, {"use_kernels": True}, {"attn_implementation": "kernels-community/flash-attn"},
                   {"attn_implementation": "flash_attention_2"}, {"trust_remote_code": True}, {"output_attentions": True}):
        assert runs_code(ModelSpec(model="hf:org/model", kwargs=kwargs)), kwargs
    for kwargs in ({"dtype": "float16", "torch_dtype": "auto", "ignore_mismatched_sizes": True, "subfolder": "x", "use_safetensors": True,
                    "low_cpu_mem_usage": True}, {"attn_implementation": "sdpa", "weights_only": True, "trust_remote_code": False},
                   {"attn_implementation": "eager"}):
        assert not runs_code(ModelSpec(model="hf:org/model", kwargs=kwargs)), kwargs


def test_a_weights_only_false_hf_spec_from_data_is_refused_before_its_pickle_runs(built: Path, tmp_path: Path) -> None:
    """A manifest naming an hf: model with kwargs {weights_only: false} had Transformers unpickle
    its pytorch_model.bin (any code) without --trust-remote-code."""
    from builder.trust import UntrustedCodeError, require_trusted

    marker = tmp_path / "payload-ran"
    spec = {"model": f"hf:{save_bin_hf_model(tmp_path / 'evil', payload=marker)}", "name": "cnn", "kwargs": {"weights_only": False}}
    with pytest.raises(UntrustedCodeError, match="would import and run code; nothing was run: pass --trust-remote-code"):
        require_trusted([ModelSpec.model_validate(spec)], "a downloaded zoo file", trust_remote_code=False)
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["configs"]["cnn"]["reference_model"] = spec
    (built / "manifest.json").write_text(json.dumps(manifest))
    args = ["-q", "score", "--benchmark", str(built), "--model", "ref:cnn", "--workers", "0", "--bootstrap", "0"]
    assert_one_line_error(CliRunner().invoke(main, args), "manifest of", "trust-remote-code", "nothing was run")
    assert not marker.exists()
    trusted = CliRunner().invoke(main, [*args, "--trust-remote-code"])
    assert marker.exists(), trusted.output  # the pickle is live: the flag lets it run


def test_hf_weights_that_cannot_be_read_are_one_line_naming_the_file(tmp_path: Path, colours: ComponentContext) -> None:
    """A pickle of more than tensors was a raw UnpicklingError traceback; a truncated one said
    'cannot load it from the HF cache or the Hub ([Errno 22] ...)' for a local directory."""
    marker = tmp_path / "payload-ran"
    evil = save_bin_hf_model(tmp_path / "evil", payload=marker)
    save_bin_hf_model(tmp_path / "cut", cut=True)
    corrupt = save_hf_model(tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\0" * 16)
    cases = {  # by absolute path, and relative to the recipe's folder
        f"hf:{evil}": rf"cannot read {re.escape(str(evil / 'pytorch_model.bin'))} \(it pickles \w+\.mkdir, which loading with weights_only refuses\)",
        "hf:cut": rf"cannot read {re.escape(str(tmp_path / 'cut' / 'pytorch_model.bin'))} \(it ends too early: truncated\)",
        f"hf:{corrupt}": rf"cannot read {re.escape(str(corrupt / 'model.safetensors'))} \(Error while deserializing header",
    }
    for model, reason in cases.items():
        with pytest.raises(ComponentError, match=rf"^{re.escape(model)}: {reason}.*; re-download it or save it again") as caught:
            load_classifier(ModelSpec(model=model), colours)
        assert "\n" not in str(caught.value) and "Hub" not in str(caught.value)
    assert not marker.exists()


def fixed_classifier() -> PreprocessedClassifier:
    """A tiny classifier whose weights are set by formula, not drawn: its fingerprint is a constant."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.arange(parameter.numel(), dtype=torch.float32).view_as(parameter) / parameter.numel())
    return PreprocessedClassifier(net, Preprocessing(input_size=4), 3, "py:fixed")


def test_a_spec_s_kwargs_count_in_the_weights_fingerprint_and_none_leave_it_as_it_was(tmp_path: Path, colours: ComponentContext) -> None:
    """timm's global_pool: max over the same checkpoint computes other logits, yet had the same
    fingerprint, so score called it white-box; without kwargs the fingerprint is what it was."""
    import timm

    from builder.checkpoints import FINGERPRINT_KWARGS, save_state_dict, weights_fingerprint

    before = "72ca18286d6012842375e64a245f7a2aba87871f5d5b466142309a22f4c48e28"  # weights_fingerprint before kwargs counted
    assert weights_fingerprint(fixed_classifier()) == weights_fingerprint(fixed_classifier(), {}) == before
    torch.manual_seed(0)
    save_state_dict(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "w.safetensors")
    plain, maxed = (load_classifier(ModelSpec(model="timm:test_resnet", pretrained=False, checkpoint=str(tmp_path / "w.safetensors"),
                                              kwargs=kwargs), colours) for kwargs in ({}, {"global_pool": "max"}))
    images = torch.rand(2, 3, 16, 16)
    assert not torch.allclose(plain(images), maxed(images))
    assert weights_fingerprint(plain, {}) == weights_fingerprint(plain) == weights_fingerprint(maxed, {})  # the same tensors
    assert weights_fingerprint(maxed, {"global_pool": "max"}) != weights_fingerprint(plain, {})
    assert weights_fingerprint(maxed, {"global_pool": "max"}) != weights_fingerprint(maxed, {"global_pool": "avg"})
    assert weights_fingerprint(maxed, {"global_pool": "max", "drop_rate": 0}) == weights_fingerprint(maxed, {"drop_rate": 0, "global_pool": "max"})
    # load_classifier keeps the spec's kwargs on the model it returns: counted unasked
    assert getattr(maxed, FINGERPRINT_KWARGS) == {"global_pool": "max"}
    assert weights_fingerprint(maxed) == weights_fingerprint(maxed, {"global_pool": "max"}) != weights_fingerprint(plain)


# ----------------------------------------------------------------------------- dry run


def dry_run_failure(recipe: Path, *sets: str) -> str:
    arguments = [item for value in sets for item in ("--set", value)]
    result = CliRunner().invoke(main, ["-q", "run", str(recipe), "--dry-run", *arguments])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return "\n".join(line for line in result.output.splitlines() if line.startswith("FAIL"))


def test_dry_run_names_wrong_names_offline(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    field = "reference_models.0.model"
    assert "did you mean 'resnet18'" in dry_run_failure(tiny_recipe, f"{field}=torchvision:resnet81")
    assert "unknown weights for resnet18 'IMAGENET1K_V3'; did you mean 'IMAGENET1K_V1'" in dry_run_failure(tiny_recipe, f"{field}=torchvision:resnet18:IMAGENET1K_V3")
    assert "did you mean 'ViT-B-32'" in dry_run_failure(tiny_recipe, f"{field}=clip:ViT-B-23/openai")
    assert "open_clip has no pretrained 'openia' for ViT-B-32" in dry_run_failure(tiny_recipe, f"{field}=clip:ViT-B-32/openia")
    assert "is neither a directory nor a Hub repo id" in dry_run_failure(tiny_recipe, f"{field}=hf:not//a repo")
    assert "not in the HF cache and HF_HUB_OFFLINE is set" in dry_run_failure(tiny_recipe, f"{field}=hf:someone/vit-tiny")
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in dry_run_failure(tiny_recipe, f"{field}=hf:{tmp_path / 'empty'}")


def test_dry_run_passes_the_saved_models(tiny_recipe: Path, tmp_path: Path) -> None:
    folder = save_hf_model(tmp_path / "vit")
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_recipe), "--dry-run", "--set", f"reference_models.0.model=hf:{folder}",
                                       "--set", "reference_models.0.checkpoint=null"])
    assert result.exit_code == 0, result.output
    assert "hf:" in result.output and "vit, pretrained, 3 labels" in result.output
