"""Generators, oracles, classifiers and checkpoint loading, on tiny models saved here."""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F

from builder.checkpoints import load_state_dict
from builder.components.base import ComponentContext
from builder.components.models import load_classifier
from builder.components.oracles import (
    ClassifierOracle,
    ClipOracleConfig,
    EnsembleOracle,
    create_clip,
    load_clip_oracle,
    load_oracle,
)
from builder.components.vqgan import TamingVQGAN, VQGANConfig, load_vqgan
from builder.config import ModelSpec, parse_component
from builder.errors import CheckpointError, ComponentError

from tiny_models import TINY_VQGAN_YAML

TINY_MODELS = Path(__file__).parent / "tiny_models.py"


def tiny_vqgan(tmp_path: Path, seed: int = 0) -> tuple[TamingVQGAN, Path]:
    config = tmp_path / "model.yaml"
    config.write_text(TINY_VQGAN_YAML)
    torch.manual_seed(seed)
    return TamingVQGAN(yaml.safe_load(TINY_VQGAN_YAML)["model"]["params"]).eval(), config


def save_lightning_checkpoint(state: dict, path: Path) -> None:
    """Save the way an official taming .ckpt is laid out: a ModelCheckpoint class as a dict key."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    saved = {name: sys.modules.get(name) for name in names}
    fake = types.ModuleType(names[-1])

    class ModelCheckpoint:  # the class object itself is pickled by reference
        pass

    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake.ModelCheckpoint = ModelCheckpoint
    for name in names:
        sys.modules[name] = fake if name == names[-1] else types.ModuleType(name)
    try:
        torch.save(
            {
                "epoch": 3,
                "global_step": 1234,
                "pytorch-lightning_version": "1.0.8",
                "state_dict": state,
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1), "best_model_path": "x.ckpt"}},
                "optimizer_states": [],
                "lr_schedulers": [],
            },
            path,
        )
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


# ----------------------------------------------------------------------------- generator


def test_vqgan_round_trip_and_latent_shape(tmp_path: Path, context: ComponentContext) -> None:
    model, config = tiny_vqgan(tmp_path)
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    generator = load_vqgan(VQGANConfig(kind="vqgan", config=str(config), checkpoint=str(checkpoint)), context)
    images = torch.rand(2, 3, 16, 16)
    latent = generator.encode(images)
    assert latent.shape == (2, 8, 8, 8)  # f2, embed_dim 8
    # b0 is a codebook entry at every position
    codebook = generator.model.quantize.embedding.weight
    flat = latent.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.cdist(flat, codebook).min(dim=1).values.max() < 1e-3  # float error of z + (z_q - z)
    decoded = generator.decode(latent)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    with torch.no_grad():
        reference, _ = model(images * 2 - 1)
    assert torch.allclose(decoded, ((reference + 1) / 2).clamp(0, 1), atol=1e-5)


def test_straight_through_quantization_passes_gradients(tmp_path: Path) -> None:
    model, _ = tiny_vqgan(tmp_path)
    latent = model.encode_continuous(torch.rand(1, 3, 16, 16) * 2 - 1).detach().requires_grad_(True)
    quantized, _ = model.quantize_ste(latent)
    assert not torch.equal(quantized, latent)  # it really snapped to the codebook
    model.decode_latent(quantized).sum().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    # the straight-through gradient is the decoder's gradient at the quantized point
    probe = quantized.detach().requires_grad_(True)
    model.decode_latent(probe).sum().backward()
    assert torch.allclose(latent.grad, probe.grad)


def test_official_lightning_checkpoint_loads_without_pytorch_lightning(tmp_path: Path, context: ComponentContext) -> None:
    model, config = tiny_vqgan(tmp_path)
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(2, 2)  # present in official files, unused
    checkpoint = tmp_path / "last.ckpt"
    save_lightning_checkpoint(state, checkpoint)
    lightning = {name: sys.modules.pop(name) for name in list(sys.modules) if name.startswith("pytorch_lightning")}
    try:
        generator = load_vqgan(VQGANConfig(kind="vqgan", config=str(config), checkpoint=str(checkpoint)), context)
        assert not any(name.startswith("pytorch_lightning") for name in sys.modules)  # never imported, never run
    finally:
        sys.modules.update(lightning)
    for key, value in model.state_dict().items():
        assert torch.equal(generator.model.state_dict()[key], value)
    cached = list((context.cache_dir / "safetensors").glob("*.safetensors"))
    assert len(cached) == 1  # a safetensors copy for next time
    again = load_state_dict(checkpoint, cache_dir=context.cache_dir)
    assert torch.equal(again["encoder.conv_in.weight"], model.state_dict()["encoder.conv_in.weight"])


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*weights_only"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_shape_mismatch_names_the_tensor(tmp_path: Path, context: ComponentContext) -> None:
    model, config = tiny_vqgan(tmp_path)
    state = dict(model.state_dict())
    state["quantize.embedding.weight"] = torch.zeros(32, 8)
    checkpoint = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, checkpoint)
    with pytest.raises(CheckpointError, match=r"'quantize.embedding.weight' is \(32, 8\) in the file but \(16, 8\)"):
        load_vqgan(VQGANConfig(kind="vqgan", config=str(config), checkpoint=str(checkpoint)), context)


def test_missing_checkpoint_and_bad_config_are_clear(tmp_path: Path, context: ComponentContext) -> None:
    _, config = tiny_vqgan(tmp_path)
    with pytest.raises(CheckpointError, match="not found: .*nope.ckpt"):
        load_vqgan(VQGANConfig(kind="vqgan", config=str(config), checkpoint=str(tmp_path / "nope.ckpt")), context)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {params: {embed_dim: 8, ddconfig: {ch: 32}}}")
    with pytest.raises(ComponentError, match="lacks n_embed"):
        load_vqgan(VQGANConfig(kind="vqgan", config=str(broken)), context)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_state_dict(path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_data_parallel_prefix_is_stripped_in_every_format(tmp_path: Path, suffix: str) -> None:
    """Weights saved from an ``nn.DataParallel`` model name each tensor ``module.<name>``: the
    prefix was stripped from pickles only, so a .safetensors of them did not fit the model."""
    from safetensors.torch import save_file

    from builder.checkpoints import load_weights

    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = {f"module.{key}": value.clone() + 1 for key, value in net.state_dict().items()}
    path = tmp_path / f"parallel{suffix}"
    if suffix == ".safetensors":
        save_file(wrapped, str(path))
    else:
        torch.save(wrapped, path)
    state = load_state_dict(path)
    assert sorted(state) == ["0.bias", "0.weight"]
    load_weights(net, state, path=path, what="py:x")
    assert torch.equal(net.state_dict()["0.weight"], wrapped["module.0.weight"])


# ----------------------------------------------------------------------------- oracles


def test_clip_zero_shot_on_a_tiny_open_clip_model(tmp_path: Path, context: ComponentContext) -> None:
    import open_clip

    config = ClipOracleConfig(kind="clip", model="fmr-tiny-clip", pretrained=str(tmp_path / "clip.pt"), template="a photo of {}")
    torch.manual_seed(0)
    model = create_clip(config, context, load_weights_=False)
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    oracle = load_clip_oracle(config, context)
    tokenizer = open_clip.get_tokenizer("fmr-tiny-clip")
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer(["a photo of zero", "a photo of one", "a photo of two"])), dim=-1)
    assert torch.allclose(oracle.text_features, text, atol=1e-6)  # computed once, from the template
    images = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        resized = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        features = F.normalize(model.encode_image((resized - mean) / std), dim=-1)
        expected = (model.logit_scale.exp() * features @ text.T).softmax(-1)
    labels = torch.tensor([0, 1, 2, 0])
    accepted, probability = oracle.judge(images, labels)
    assert torch.allclose(probability, expected[torch.arange(4), labels], atol=1e-5)
    assert torch.equal(accepted, expected.argmax(-1) == labels)
    # under bf16 autocast the image tower runs in bf16, but the logits are taken in fp32: bf16
    # logits near 30 are 0.125 apart, which flipped and tied argmaxes (ties went to class 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = oracle.classifier(images)
    assert logits.dtype == torch.float32
    head = oracle.classifier.net
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tower = head.model.encode_image((resized - mean) / std)
    wide = head.scale * F.normalize(tower.float(), dim=-1) @ text.T
    assert torch.allclose(logits, wide, atol=1e-5)


def test_openai_weights_force_quick_gelu(monkeypatch: pytest.MonkeyPatch, context: ComponentContext) -> None:
    import open_clip

    seen = {}

    def fake_create_model(name, pretrained=None, force_quick_gelu=False, **kwargs):
        seen.update(name=name, pretrained=pretrained, quick_gelu=force_quick_gelu)
        return "model"

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    create_clip(ClipOracleConfig(kind="clip"), context)
    assert seen == {"name": "ViT-B-32", "pretrained": "openai", "quick_gelu": True}
    create_clip(ClipOracleConfig(kind="clip", pretrained="laion2b_s34b_b79k"), context)
    assert seen["quick_gelu"] is False


def test_clip_names_are_checked_with_the_choices(context: ComponentContext) -> None:
    with pytest.raises(ComponentError, match="no pretrained 'openia' for ViT-B-32; tags: .*openai"):
        create_clip(ClipOracleConfig(kind="clip", pretrained="openia"), context)
    with pytest.raises(ComponentError, match="unknown open_clip model 'ViT-B-23'; did you mean 'ViT-B-32'"):
        create_clip(ClipOracleConfig(kind="clip", model="ViT-B-23"), context)


def test_clip_offline_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, context: ComponentContext) -> None:
    import open_clip

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download file (open_clip_pytorch_model.bin) for timm/vit_base_patch32_clip_224.openai")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ComponentError, match="ViT-B-32/openai: weights not in the cache"):
        create_clip(ClipOracleConfig(kind="clip"), context)


def classifier_spec(tmp_path: Path, context: ComponentContext, seed: int, name: str) -> ModelSpec:
    from tiny_models import tiny_cnn

    torch.manual_seed(seed)
    path = tmp_path / f"{name}.pt"
    torch.save(tiny_cnn(3).state_dict(), path)
    return ModelSpec(model=f"py:{TINY_MODELS}:tiny_cnn", name=name, checkpoint=str(path))


def test_classifier_and_ensemble_oracles(tmp_path: Path, context: ComponentContext) -> None:
    first = classifier_spec(tmp_path, context, 0, "a")
    second = classifier_spec(tmp_path, context, 1, "b")
    config = parse_component(
        "oracles",
        {"kind": "ensemble", "members": [{"kind": "classifier", "model": first.model_dump()}, {"kind": "classifier", "model": second.model_dump()}]},
        ("oracle",),
    )
    ensemble = load_oracle(config, context)
    assert isinstance(ensemble, EnsembleOracle) and all(isinstance(m, ClassifierOracle) for m in ensemble.members)
    images = torch.rand(32, 3, 16, 16)
    a, b = (load_classifier(spec, context) for spec in (first, second))
    with torch.no_grad():
        pa, pb = a(images).softmax(-1), b(images).softmax(-1)
    labels = pa.argmax(-1)
    accepted, probability = ensemble.judge(images, labels)
    assert torch.equal(accepted, labels == pb.argmax(-1))  # member a always agrees, so b decides
    rows = torch.arange(32)
    assert torch.allclose(probability, torch.minimum(pa[rows, labels], pb[rows, labels]))
    single, single_prob = ensemble.members[0].judge(images, labels)
    assert single.all() and torch.allclose(single_prob, pa[rows, labels])


def test_ensemble_needs_two_members(context: ComponentContext) -> None:
    from builder.errors import RecipeError

    with pytest.raises(RecipeError, match="oracle.members: .*at least two"):
        parse_component("oracles", {"kind": "ensemble", "members": [{"kind": "clip"}]}, ("oracle",))


# ----------------------------------------------------------------------------- classifiers


def test_timm_model_preprocessing_comes_from_the_pretrained_tag(context: ComponentContext) -> None:
    from builder.components.models import build_classifier

    classifier = build_classifier(ModelSpec(model="timm:test_convnext.r160_in1k", pretrained=False), context, pretrained=False)
    config = classifier.preprocess.config
    assert (config.input_size, config.crop_pct, config.interpolation) == (160, 0.95, "bicubic")
    overridden = build_classifier(
        ModelSpec(model="timm:test_convnext.r160_in1k", pretrained=False, preprocess={"input_size": 32, "crop_pct": 1.0}),
        context,
        pretrained=False,
    )
    assert overridden.preprocess.config.input_size == 32
    assert overridden(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    # a tag with a separate evaluation size is read at it, as timm's validate.py and its published
    # accuracies read it (it was read at the training size: 224 px crop 0.875 for 288 px crop 0.95)
    tested = build_classifier(ModelSpec(model="timm:convnext_atto.d2_in1k", pretrained=False), context, pretrained=False)
    assert (tested.preprocess.config.input_size, tested.preprocess.config.crop_pct) == (288, 0.95)


def test_timm_errors_name_the_model(tmp_path: Path, context: ComponentContext) -> None:
    with pytest.raises(ComponentError, match="unknown timm model 'convnext_tinny'; did you mean 'convnext_tiny'") as unknown:
        load_classifier(ModelSpec(model="timm:convnext_tinny"), context)
    # over a thousand names: the nearest few and how to list them, not all of them on one line
    assert str(unknown.value).endswith("; all of them: timm.list_models()") and len(str(unknown.value)) < 300
    assert "choices, nearest: convnext_tiny, " in str(unknown.value)
    path = tmp_path / "ten.pt"
    import timm

    torch.save(timm.create_model("test_convnext", num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"'head.fc.weight' is \(10, .*\) in the file but \(3, "):
        load_classifier(ModelSpec(model="timm:test_convnext.r160_in1k", pretrained=False, checkpoint=str(path)), context)


def test_class_count_mismatch_is_a_clear_error(tmp_path: Path, context: ComponentContext) -> None:
    with pytest.raises(ComponentError, match="has 5 classes but the source has 3"):
        load_classifier(ModelSpec(model="timm:test_convnext.r160_in1k", pretrained=False, num_classes=5), context)


def test_python_model_spec_errors(context: ComponentContext) -> None:
    with pytest.raises(ComponentError, match="cannot import 'no_such_module'"):
        load_classifier(ModelSpec(model="py:no_such_module:net"), context)
    with pytest.raises(ComponentError, match="has no attribute 'missing'"):
        load_classifier(ModelSpec(model=f"py:{TINY_MODELS}:missing"), context)


def test_trained_checkpoints_are_addressed_by_what_shaped_them(tmp_path: Path, context: ComponentContext) -> None:
    from dataclasses import replace

    from builder.config import TrainConfig

    base = tmp_path / "cache" / "model.safetensors"
    spec = ModelSpec(model="timm:test_convnext.r160_in1k", train=TrainConfig(epochs=2))
    location = context.trained_location(base, spec)
    assert location.parent == base.parent and location.name.startswith("model-") and location.suffix == ".safetensors"
    assert context.trained_location(base, spec) == location  # stable
    assert context.trained_location(base, ModelSpec(model="timm:test_convnext.r160_in1k")) == base  # nothing to train
    changed = [
        context.trained_location(base, spec.model_copy(update={"train": TrainConfig(epochs=3)})),
        context.trained_location(base, spec.model_copy(update={"train": TrainConfig(epochs=2, augment=True)})),
        replace(context, seed=1).trained_location(base, spec),
        replace(context, image_size=32).trained_location(base, spec),
    ]
    assert len({location, *changed}) == 5
    assert replace(context, base_dir=tmp_path / "elsewhere").trained_location(base, spec) == location  # no local data: the folder is no matter
    # one recipe text, two projects, each with its own ./data: the checkpoints are two (they were one)
    from builder.config import parse_component

    source = parse_component("sources", {"kind": "imagefolder", "path": "./data"}, ("source",))
    located = []
    for project in ("p1", "p2"):
        (tmp_path / project / "data").mkdir(parents=True)
        located.append(replace(context, source=source, base_dir=tmp_path / project).trained_location(base, spec))
    assert len(set(located)) == 2 and location not in located
    # an explicit train seed wins over the recipe seed
    pinned = spec.model_copy(update={"train": TrainConfig(epochs=2, seed=7)})
    assert context.train_seed(pinned) == replace(context, seed=1).train_seed(pinned) == 7
    assert context.train_seed(spec) != replace(context, seed=1).train_seed(spec)


def test_pinned_download_is_checked(tmp_path: Path) -> None:
    """``URL#sha256=`` downloads once and refuses bytes with another hash, keeping nothing; a
    cached copy serves a pin only if it has the pinned hash (else it is downloaded again)."""
    import hashlib
    import http.server
    import threading
    from functools import partial

    from builder.checkpoints import ResolveContext, fetch_location, find_location

    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "weights.bin").write_bytes(b"tensor bytes")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/weights.bin"
        good = hashlib.sha256(b"tensor bytes").hexdigest()
        ctx = ResolveContext(tmp_path, tmp_path / "cache")
        with pytest.raises(CheckpointError, match="downloaded bytes have sha256 .* pins 0000"):
            fetch_location(f"{url}#sha256={'0' * 64}", ctx)
        assert not list((tmp_path / "cache").rglob("weights.bin"))
        path = fetch_location(f"{url}#sha256={good}", ctx)
        assert path.read_bytes() == b"tensor bytes"
        # upstream moves on and the recipe pins the new bytes: the cached copy is not taken for them
        (tmp_path / "served" / "weights.bin").write_bytes(b"newer tensor bytes")
        newer = hashlib.sha256(b"newer tensor bytes").hexdigest()
        found = find_location(f"{url}#sha256={newer}", ctx)
        assert found.path is None and "another sha256 than the pin: downloaded again" in found.how
        assert find_location(f"{url}#sha256={good}", ctx).how == "in the cache, sha256 checked"
        assert fetch_location(f"{url}#sha256={newer}", ctx).read_bytes() == b"newer tensor bytes"
        (tmp_path / "served" / "weights.bin").unlink()  # a pinned copy in the cache needs no server
        assert fetch_location(f"{url}#sha256={newer}", ctx).read_bytes() == b"newer tensor bytes"
        with pytest.raises(CheckpointError, match="download failed"):  # the old pin: not in the cache now, and gone upstream
            fetch_location(f"{url}#sha256={good}", ctx)
        with pytest.raises(CheckpointError, match="#sha256=<64 lowercase hex"):
            fetch_location(f"{url}#md5=abc", ctx)
    finally:
        server.shutdown()


def test_a_download_cut_short_is_not_cached_and_credentials_are_not_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server that announces 1000 bytes and closes after 400: http.client ends the read
    quietly, and the 400 bytes were cached as the file for good (an unpinned URL is never
    fetched again). Credentials in a presigned URL stay out of the log and the message."""
    import http.server
    import threading

    from builder.checkpoints import ResolveContext, fetch_location

    class CutShort(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(403 if "forbidden" in self.path else 200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 400)
            self.wfile.flush()
            self.connection.close()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        ctx = ResolveContext(tmp_path, tmp_path / "cache")
        with pytest.raises(CheckpointError, match=r"the download was cut short \(400 of 1000 bytes; nothing was kept\); run again$"):
            fetch_location(f"{base}/model.ckpt", ctx)
        assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
        presigned = f"{base}/forbidden.ckpt?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef&dl=1"
        with caplog.at_level("INFO", logger="builder.checkpoints"), pytest.raises(CheckpointError, match=r"X-Amz-Signature=\*\*\*&dl=1: download failed") as caught:
            fetch_location(presigned, ctx)
        assert "deadbeef" not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)
        assert "deadbeef" not in caplog.text and "downloading" in caplog.text
    finally:
        server.shutdown()


def test_class_ranges_pool_a_model_into_super_classes(context: ComponentContext) -> None:
    """A 6-output model pooled into 3 super-classes: logsumexp of the members, in order."""
    ranges = {"zero": [[0, 1]], "one": [[2, 2], [5, 5]], "two": [[3, 4]]}
    spec = ModelSpec(model=f"py:{TINY_MODELS}:tiny_cnn", num_classes=6, class_ranges=ranges)
    pooled = load_classifier(spec, context)
    assert pooled.num_classes == 3
    images = torch.rand(4, 3, 16, 16)
    inner = pooled.inner(images)
    expected = torch.stack([inner[:, [0, 1]].logsumexp(1), inner[:, [2, 5]].logsumexp(1), inner[:, [3, 4]].logsumexp(1)], 1)
    assert torch.allclose(pooled(images), expected, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the sum of exponentials is not taken in bf16
        assert pooled(images).dtype == torch.float32
    too_far = ModelSpec(model=f"py:{TINY_MODELS}:tiny_cnn", num_classes=4, class_ranges=ranges)
    with pytest.raises(ComponentError, match="class_ranges reach index 5 but the model has 4 outputs"):
        load_classifier(too_far, context)
    # each class pools the ranges under its own name, in whatever order the spec lists them
    # (output i was the i-th listed: a spec listing 'one' first scored ones as zeros)
    listed_otherwise = ModelSpec(model=spec.model, num_classes=6, class_ranges={name: ranges[name] for name in ("two", "one", "zero")})
    reordered = load_classifier(listed_otherwise, context)
    reordered.inner.load_state_dict(pooled.inner.state_dict())
    assert torch.allclose(reordered(images), expected, atol=1e-5)
    for named, message in (({"zero": [[0, 1]], "one": [[2, 2]], "dog": [[3, 4]]}, "class_ranges names 'dog', which is not a class of the benchmark; "
                             "key the ranges by the benchmark's class names ('zero', 'one', 'two')"),
                           ({"zero": [[0, 1]], "one": [[2, 2]]}, "class_ranges has no ranges for the class 'two'")):
        with pytest.raises(ComponentError, match=re.escape(message)):
            load_classifier(ModelSpec(model=spec.model, num_classes=6, class_ranges=named), context)


def test_a_classifier_with_class_ranges_is_trained_on_its_pooled_super_classes(tmp_path: Path) -> None:
    """A spec with class_ranges is used through its pooled outputs (each super-class the
    logsumexp of its members), so its train block trains those: training on the raw outputs
    taught outputs 0 and 1, and output 1 belongs to 'low', so 'high' digits read as 'low'."""
    import numpy as np

    from builder.components.base import ComponentContext
    from builder.components.models import load_classifier
    from builder.config import ModelSpec, TrainConfig, parse_component
    from builder.sources.base import SourceContext, open_source
    from builder.sources.decode import load_rgb
    from builder.train import train_classifier

    ranges = {"low": [[0, 4]], "high": [[5, 9]]}
    source = parse_component("sources", {"kind": "sklearn-digits", "split": "test", "class_ranges": ranges}, ("source",))
    context = ComponentContext("cpu", tmp_path, tmp_path, ("low", "high"), 16, source, seed=0)
    spec = ModelSpec(model=f"py:{TINY_MODELS}:tiny_cnn", pretrained=False, class_ranges=ranges, checkpoint=str(tmp_path / "w.safetensors"),
                     train=TrainConfig(epochs=15, batch_size=32, lr=0.01, seed=0))
    train_classifier(spec, context, tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").rename(context.trained_location(tmp_path / "w.safetensors", spec))
    classifier = load_classifier(spec, context)
    test = open_source(source, SourceContext(tmp_path, tmp_path))
    items = list(test.items(0, len(test)))
    images = torch.from_numpy(np.stack([load_rgb(item.load, 16) for item in items])).permute(0, 3, 1, 2).float() / 255
    labels = torch.tensor([item.label for item in items])
    with torch.no_grad():
        accuracy = float((classifier(images).argmax(1) == labels).float().mean())
    assert accuracy > 0.8, accuracy  # 0.97 on this machine; 0.49 when the raw outputs were trained


def test_requantize_finds_the_nearest_code_in_full_precision_under_bf16(tmp_path: Path) -> None:
    """Encode picks codes in fp32; decode's requantization ran inside the decoder's bf16 autocast,
    where the distance einsum can pick another code for the very latent encode gave."""
    from builder.components.vqgan import VQGANGenerator

    model, _ = tiny_vqgan(tmp_path)
    generator = VQGANGenerator(model, requantize=True)
    seen: list[tuple[torch.dtype, bool]] = []
    quantize = model.quantize_ste

    def recording(latent: torch.Tensor):  # noqa: ANN202 - taming's return
        seen.append((latent.dtype, torch.is_autocast_enabled("cpu")))
        return quantize(latent)

    model.quantize_ste = recording  # type: ignore[method-assign]
    latent = generator.encode(torch.rand(2, 3, 16, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        generator.decode(latent)
    assert seen == [(torch.float32, False)]  # decode's requantization (encode looks its codes up exactly)


@pytest.mark.parametrize(("source", "train_split", "expected"), [
    ({"kind": "sklearn-digits", "split": "test"}, "test", "train.split 'test' shares samples with the split the benchmark evaluates"),
    ({"kind": "sklearn-digits", "split": "all"}, "train", "train.split 'train' shares samples"),
    ({"kind": "imagefolder", "path": "images"}, "train", "source kind 'imagefolder' has no split"),
])
def test_training_never_reads_the_evaluated_samples(context: ComponentContext, source: dict, train_split: str, expected: str) -> None:
    """A score or build that trains a component (a train block, weights missing) refuses to train
    on what the benchmark evaluates, whoever asks, before any image is read."""
    import dataclasses

    from builder.config import TrainConfig
    from builder.train import load_training_data

    evaluated = dataclasses.replace(context, source=parse_component("sources", source, ("source",)))
    with pytest.raises(ComponentError, match=expected):
        load_training_data(evaluated, TrainConfig(split=train_split))
    images, _ = load_training_data(dataclasses.replace(context, source=parse_component("sources", {"kind": "sklearn-digits"}, ("source",))),
                                   TrainConfig(split="train"))
    assert len(images) > 0  # the test split evaluated, the train split learned: as the demo does


@pytest.mark.parametrize(("evaluated", "trained", "shares"), [
    ("train[:30]", "train", True), ("train[:30]", "train[:31]", True), ("train[:30]", "train[30:]", False),
    ("train[:50%]", "train[50%:]", False), ("train[:50%]", "train[40:]", True), ("test", "train", False),
    ("train+test", "test[:10]", True), ("train[-10:]", "train[:5]", True),
])
def test_huggingface_split_slices_are_compared_by_what_they_read(evaluated: str, trained: str, shares: bool) -> None:
    """``train[:30]`` evaluated and ``train`` learned were two names, so two splits: the
    component trained on the 30 evaluated images. Slices are read; what cannot be told apart is
    taken to overlap."""
    source = parse_component("sources", {"kind": "huggingface", "path": "data", "split": evaluated}, ("source",))
    problem = source.training_split_problem(trained)
    assert (problem is not None) == shares and (not shares or "shares samples" in problem)


def test_a_training_source_is_the_evaluated_one_whatever_its_path_spelling(tmp_path: Path) -> None:
    """``--set source.path=/abs/data`` for the recipe's ``./data`` was taken as other data."""
    (tmp_path / "data").mkdir()
    evaluated = parse_component("sources", {"kind": "huggingface", "path": "./data", "split": "train[:30]"}, ("source",))
    spelled = parse_component("sources", {"kind": "huggingface", "path": str(tmp_path / "data"), "split": "train"}, ("source",))
    assert evaluated.training_split_problem("train", spelled, tmp_path) is not None
    (tmp_path / "other").mkdir()
    other = parse_component("sources", {"kind": "huggingface", "path": str(tmp_path / "other"), "split": "train"}, ("source",))
    assert evaluated.training_split_problem("train", other, tmp_path) is None


def test_only_temp_files_of_dead_processes_of_this_host_are_swept(tmp_path: Path) -> None:
    """A download killed by SIGKILL (or a lost machine) leaves its temp file, and the next one
    writes under a new name: it stayed forever. Swept when the folder is downloaded into again."""
    import os
    import socket
    import subprocess

    from builder.fileio import remove_orphaned_temp_files

    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()[:32]
    names = {"dead": f".theta.pt.tmp-{host}-{gone.pid}-0123abcd", "alive": f".theta.pt.tmp-{host}-{os.getpid()}-0123abcd",
             "elsewhere": f".theta.pt.tmp-another-host-{gone.pid}-0123abcd", "mine": "theta.pt"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert remove_orphaned_temp_files(tmp_path) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(name for key, name in names.items() if key != "dead")
