"""Oracles h: CLIP zero-shot (open_clip), any classifier, or an all-must-agree ensemble."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Union

import torch
from pydantic import SerializeAsAny, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator
from torch import nn
from torch.nn import functional as F

from builder.checkpoints import BUILTIN_DIR, fetch_location, load_failure_advice, load_state_dict, load_weights, offline_hint
from builder.components.base import ORACLES, ComponentContext, Oracle
from builder.components.models import load_classifier
from builder.components.preprocess import Preprocess, PreprocessedClassifier, Preprocessing
from builder.config import ModelSpec, OracleConfig, PreprocessConfig, TrainConfig, check_templates, without_unset
from builder.errors import ComponentError, first_line
from builder.paths import in_recipe_dir
from builder.preflight import Check, PreflightContext, Weights, check_model, model_weights, preflight, weights
from builder.registry import unknown_name_message

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "an image of {}"
DEFAULT_PRETRAINED = "openai"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: a ``pretrained`` value that names a weights file rather than an open_clip tag
_LOCATION = re.compile(r"^[a-z][a-z0-9+-]+:|[/\\]|\.(pt|pth|bin|safetensors|ckpt)$")
#: open_clip's own sources, as ``open_clip.create_model`` takes them: a Hub repo
#: (``push_to_hf_hub``) or a folder (``save_for_hf``), each an open_clip_config.json with weights
CLIP_HUB, CLIP_FOLDER = "hf-hub:", "local-dir:"
CLIP_CONFIG_FILE = "open_clip_config.json"


class ClipOracleConfig(OracleConfig):
    model: str = "ViT-B-32"
    pretrained: str = DEFAULT_PRETRAINED
    #: with ``model: hf-hub:org/name``: the branch, tag or commit to read (open_clip reads main)
    revision: Optional[str] = None
    quick_gelu: Optional[bool] = None
    #: the prompt template, or a list of them whose embeddings are averaged per class (CLIP_benchmark)
    template: Union[str, tuple[str, ...]] = DEFAULT_TEMPLATE
    prompt_names: Optional[Union[str, tuple[str, ...]]] = None  # a list, or a named list such as open_clip:imagenet
    train: Optional[TrainConfig] = None

    @field_validator("prompt_names")
    @classmethod
    def _known_list(cls, value: Optional[Union[str, tuple[str, ...]]]) -> Optional[Union[str, tuple[str, ...]]]:
        if isinstance(value, str) and value not in PROMPT_LISTS:
            raise ValueError(unknown_name_message("prompt name list", value, list(PROMPT_LISTS)))
        return value

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: Union[str, tuple[str, ...]]) -> Union[str, tuple[str, ...]]:
        """Each template makes a prompt per class: exactly one ``{}`` and no other fields."""
        return check_templates(value)

    @model_validator(mode="after")
    def _revision_of_a_hub_model(self) -> "ClipOracleConfig":
        if self.revision is not None and not self.model.startswith(CLIP_HUB):
            raise ValueError(f"revision goes with a Hub model (hf-hub:org/name), not {self.model!r}; drop it")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_revision(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An unset ``revision`` is not written: recipes (and their hashes) stay as they were."""
        return without_unset(handler(self), ("revision",))


class ClassifierOracleConfig(OracleConfig):
    model: ModelSpec


class EnsembleOracleConfig(OracleConfig):
    nested_components: ClassVar[dict[str, str]] = {"members": "oracles"}
    members: tuple[SerializeAsAny[OracleConfig], ...]

    @field_validator("members")
    @classmethod
    def _two_or_more(cls, value: tuple[OracleConfig, ...]) -> tuple[OracleConfig, ...]:
        if len(value) < 2:
            raise ValueError("an ensemble needs at least two members")
        return value


def register_builtin_clip_configs() -> None:
    """Make the small model configs shipped with this package known to open_clip (idempotent)."""
    import open_clip

    shipped = {p.stem for p in (BUILTIN_DIR / "clip").glob("*.json")}
    if shipped - set(open_clip.list_models()):
        open_clip.add_model_config(BUILTIN_DIR / "clip")


#: what a pinned Hub model's snapshot holds: config, tokenizer files and weights (safetensors,
#: else the pickle open_clip reads with weights_only)
_SNAPSHOT_FILES = ["*.json", "*.txt", "*.model", "open_clip_model.safetensors"]
_PICKLED_WEIGHTS = "open_clip_pytorch_model.bin"


def clip_model_name(model: str, base_dir: Path, revision: Optional[str] = None) -> str:
    """``model`` as open_clip creates it: a folder relative to the recipe's folder made absolute;
    a Hub model at a ``revision`` as the folder of that commit's snapshot in the HF cache (open_clip
    itself reads only main)."""
    if model.startswith(CLIP_FOLDER):
        return CLIP_FOLDER + str(in_recipe_dir(model[len(CLIP_FOLDER):], base_dir))
    if model.startswith(CLIP_HUB) and revision is not None:
        return CLIP_FOLDER + str(_pinned_snapshot(model[len(CLIP_HUB):], revision))
    return model


def _pinned_snapshot(repo: str, revision: str) -> Path:
    """The files open_clip reads from ``repo`` at ``revision``, fetched into the HF cache once."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=_SNAPSHOT_FILES))
        if not (folder / "open_clip_model.safetensors").is_file():
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=[*_SNAPSHOT_FILES, _PICKLED_WEIGHTS]))
    except Exception as error:  # noqa: BLE001 - huggingface_hub raises many kinds for "cannot fetch"
        raise ComponentError(f"open_clip hf-hub:{repo}@{revision}: cannot fetch it ({type(error).__name__}); "
                             f"fix the repo id or revision, or run once with network so it is cached{offline_hint()}") from None
    return folder


def _own_weights_problem(config: ClipOracleConfig) -> Optional[str]:
    """A Hub repo or folder brings its weights: a ``pretrained`` tag beside it (other than the
    default) would be ignored; a weights location replaces them."""
    if config.pretrained != DEFAULT_PRETRAINED and not _LOCATION.search(config.pretrained):
        return (f"open_clip {config.model} brings its own weights, so pretrained '{config.pretrained}' would be ignored; "
                "drop pretrained (or give a weights location)")
    return None


def _create_sourced_clip(config: ClipOracleConfig, name: str, load_weights_: bool, ctx: ComponentContext) -> Any:
    """An open_clip model from a Hub repo or folder (its config decides QuickGELU unless the recipe does)."""
    import open_clip

    problem = _own_weights_problem(config)
    if problem:
        raise ComponentError(problem)
    try:
        model = open_clip.create_model(name, force_quick_gelu=bool(config.quick_gelu))
    except Exception as error:  # noqa: BLE001 - huggingface_hub's errors, a config open_clip cannot use
        advice = load_failure_advice(error, "open_clip_torch", from_hub=name.startswith(CLIP_HUB))
        raise ComponentError(f"open_clip {config.model}: cannot load it ({first_line(error, typed=True)}); {advice}") from None
    if load_weights_ and _LOCATION.search(config.pretrained):
        _load_clip_weights(model, config, ctx)
    return model


def create_clip(config: ClipOracleConfig, ctx: ComponentContext, *, load_weights_: bool = True, name: Optional[str] = None) -> Any:
    """The open_clip model of ``config``: a known pretrained tag, or weights from a location; or
    a Hub repo or folder of open_clip's own (``hf-hub:org/name``, ``local-dir:<folder>``).
    ``name``: its :func:`clip_model_name`, when the caller resolved it already (for the tokenizer)."""
    import open_clip

    name = name or clip_model_name(config.model, ctx.locations.base_dir, config.revision)
    if name.startswith((CLIP_HUB, CLIP_FOLDER)):
        return _create_sourced_clip(config, name, load_weights_, ctx)
    register_builtin_clip_configs()
    if config.model not in open_clip.list_models():
        raise ComponentError(unknown_name_message("open_clip model", config.model, open_clip.list_models(), "open_clip.list_models()"))
    is_location = bool(_LOCATION.search(config.pretrained))
    tags = open_clip.list_pretrained_tags_by_model(config.model)
    if not is_location and config.pretrained not in tags:
        raise ComponentError(
            f"open_clip: no pretrained '{config.pretrained}' for {config.model}; "
            f"tags: {', '.join(tags) or 'none (give a checkpoint path)'}"
        )
    # OpenAI weights were trained with QuickGELU; a plain ViT-B-32 config would silently differ.
    quick_gelu = config.quick_gelu if config.quick_gelu is not None else config.pretrained == "openai"
    if not load_weights_ or is_location:
        with _without_root_warning("No pretrained weights loaded"):  # we load them ourselves next
            model = open_clip.create_model(config.model, pretrained=None, force_quick_gelu=quick_gelu)
        if load_weights_:
            _load_clip_weights(model, config, ctx)
        return model
    try:
        return open_clip.create_model(config.model, pretrained=config.pretrained, force_quick_gelu=quick_gelu)
    except (RuntimeError, OSError) as error:
        raise ComponentError(
            f"open_clip {config.model}/{config.pretrained}: weights not in the cache and cannot be "
            f"downloaded ({type(error).__name__}); run once with network or give a checkpoint path{offline_hint()}"
        ) from None


@contextlib.contextmanager
def _without_root_warning(text: str) -> Iterator[None]:
    """Drop one expected warning that open_clip logs on the root logger."""

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _load_clip_weights(model: Any, config: ClipOracleConfig, ctx: ComponentContext) -> None:
    path = ctx.trained_location(fetch_location(config.pretrained, ctx.locations), config)
    state = load_state_dict(path, cache_dir=ctx.cache_dir, what="oracle checkpoint")
    load_weights(model, state, path=path, what=f"open_clip {config.model}")


def clip_preprocessing(model: Any) -> Preprocessing:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    return Preprocessing(
        input_size=int(size if isinstance(size, int) else size[-1]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=1.0,
        mean=tuple(cfg.get("mean", OPENAI_MEAN)),
        std=tuple(cfg.get("std", OPENAI_STD)),
    )


def _open_clip_imagenet() -> tuple[str, ...]:
    import open_clip

    return tuple(open_clip.IMAGENET_CLASSNAMES)


#: named class-name lists for prompts (dataset label names are often not what CLIP was taught)
PROMPT_LISTS = {"open_clip:imagenet": _open_clip_imagenet}


def prompt_names(config: ClipOracleConfig, class_names: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(config.prompt_names, str):
        return PROMPT_LISTS[config.prompt_names]()
    return tuple(config.prompt_names or class_names)


def templates_of(template: Union[str, tuple[str, ...]]) -> tuple[str, ...]:
    return (template,) if isinstance(template, str) else tuple(template)


def prompts(config: ClipOracleConfig, class_names: tuple[str, ...]) -> list[list[str]]:
    """Per class, its prompts: each template filled with the class's prompt name."""
    names = prompt_names(config, class_names)
    if len(names) != len(class_names):
        raise ComponentError(
            f"oracle.prompt_names has {len(names)} names but the source has {len(class_names)} classes"
        )
    return [[template.format(name) for template in templates_of(config.template)] for name in names]


class ClipZeroShotHead(nn.Module):
    """CLIP as a classifier of preprocessed images: the scaled cosine similarity to each class's
    text embedding, computed once (with several templates, the normalised mean of their
    normalised embeddings, as CLIP_benchmark does). Differentiable in the images."""

    text_features: torch.Tensor  # buffers, declared for the type checker
    scale: torch.Tensor

    def __init__(self, model: Any, tokenizer: Any, texts: list[list[str]], device: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False).to(device)
        with torch.no_grad():
            if all(len(group) == 1 for group in texts):  # one template: one batch
                features = F.normalize(self.model.encode_text(tokenizer([g[0] for g in texts]).to(device)), dim=-1)
            else:
                features = torch.stack([
                    F.normalize(F.normalize(self.model.encode_text(tokenizer(group).to(device)), dim=-1).mean(dim=0), dim=-1)
                    for group in texts
                ])
        self.register_buffer("text_features", features, persistent=False)
        self.register_buffer("scale", self.model.logit_scale.exp().detach(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of every class. The image tower may run in bf16 autocast, but the similarity to
        the text features is taken in at least fp32: CLIP logits sit near 20 to 35, where bf16
        values are 0.125 apart, so a bf16 head flips argmaxes and ties them toward class 0."""
        features = self.model.encode_image(images)
        wide = torch.promote_types(features.dtype, torch.float32)
        with torch.autocast(images.device.type, enabled=False):
            normalized = F.normalize(features.to(wide), dim=-1)
            return self.scale.to(wide) * normalized @ self.text_features.to(wide).T


def clip_classifier(model: Any, tokenizer: Any, texts: list[list[str]], device: str, spec: str,
                    overrides: Optional[PreprocessConfig] = None) -> PreprocessedClassifier:
    """The zero-shot classifier over ``texts`` (prompts per class), its preprocessing open_clip's
    (with a model spec's ``overrides``)."""
    head = ClipZeroShotHead(model, tokenizer, texts, device)
    preprocessing = clip_preprocessing(model).overridden(overrides or PreprocessConfig(), spec)
    return PreprocessedClassifier(head, preprocessing, len(texts), spec, weights_loaded=True).to(device)


class ClipZeroShotOracle:
    """Accept when CLIP's zero-shot argmax over the prompts of each class is the label."""

    def __init__(self, model: Any, tokenizer: Any, texts: list[Any], device: str) -> None:
        groups = [[text] if isinstance(text, str) else list(text) for text in texts]
        self.classifier = clip_classifier(model, tokenizer, groups, device, "clip")

    @property
    def text_features(self) -> torch.Tensor:
        head: ClipZeroShotHead = self.classifier.net  # type: ignore[assignment]
        return head.text_features

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier(images).softmax(dim=-1)

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _judge(self.probabilities(images), labels)


def _judge(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    accepted = probabilities.argmax(dim=-1) == labels
    return accepted, probabilities.gather(1, labels[:, None]).squeeze(1)


def clip_preflight(config: ClipOracleConfig, ctx: PreflightContext, where: str) -> list[Check]:
    """The open_clip model and pretrained tag exist (or the tag is a weights location); the
    first check carries the prompt count."""
    import open_clip

    name = clip_model_name(config.model, ctx.base_dir)  # no revision: a dry run fetches nothing
    if name.startswith((CLIP_HUB, CLIP_FOLDER)):
        return _sourced_clip_preflight(config, name, ctx, where)
    register_builtin_clip_configs()
    if config.model not in open_clip.list_models():
        return [Check(where, config.model, f"{where}: {unknown_name_message('open_clip model', config.model, open_clip.list_models(), 'open_clip.list_models()')}")]
    tags = open_clip.list_pretrained_tags_by_model(config.model)
    if config.pretrained not in tags and not _LOCATION.search(config.pretrained):
        return [Check(where, config.model, f"{where}: open_clip has no pretrained '{config.pretrained}' for {config.model}; tags: {', '.join(tags) or 'none'}")]
    shown = f"open_clip {config.model}" + ("" if _LOCATION.search(config.pretrained) else f" / {config.pretrained}")
    return [Check(where, shown, classes=_prompt_count(config, ctx))]


def _prompt_count(config: ClipOracleConfig, ctx: PreflightContext) -> Optional[int]:
    names = config.prompt_names
    return len(PROMPT_LISTS[names]()) if isinstance(names, str) else (len(names) if names else ctx.class_count)


def _sourced_clip_preflight(config: ClipOracleConfig, name: str, ctx: PreflightContext, where: str) -> list[Check]:
    """A Hub repo or folder of open_clip's: its open_clip_config.json found offline, or not yet."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = _own_weights_problem(config)
    if problem:
        return [Check(where, config.model, f"{where}: {problem}")]
    if name.startswith(CLIP_FOLDER):
        folder = Path(name[len(CLIP_FOLDER):])
        if not (folder / CLIP_CONFIG_FILE).is_file():
            return [Check(where, config.model, f"{where}: {folder} has no {CLIP_CONFIG_FILE}: not a folder open_clip's save_for_hf wrote; fix the path")]
        return [Check(where, f"open_clip {config.model}: local open_clip folder", classes=_prompt_count(config, ctx))]
    repo = name[len(CLIP_HUB):]
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return [Check(where, config.model, f"{where}: '{repo}' is not a Hub repo id (owner/name); fix the name")]
    cached = isinstance(try_to_load_from_cache(repo, CLIP_CONFIG_FILE, revision=config.revision), str)
    how = "config in the HF cache (weights downloaded on the first run unless cached)" if cached else "downloaded from the Hub on the first run"
    return [Check(where, f"open_clip {config.model}: {how}", classes=_prompt_count(config, ctx))]


def clip_weights(config: ClipOracleConfig, where: str) -> list[Weights]:
    """A ``pretrained`` that names a file (an open_clip tag, Hub repo or folder is open_clip's own);
    a ``local-dir:`` model's folder is fingerprinted."""
    if config.model.startswith(CLIP_FOLDER):
        return [Weights(f"{where} folder", config.model[len(CLIP_FOLDER):], config, kind="folder")]
    if not _LOCATION.search(config.pretrained):
        return []
    return [Weights(f"{where} weights", config.pretrained, config, config.train is not None)]


def train_clip(config: ClipOracleConfig, ctx: ComponentContext, out: Path) -> None:
    """Train an open_clip model on "template.format(class)" captions (CLIP loss over classes; with a
    template list, the first template's)."""
    import open_clip

    from builder.checkpoints import save_state_dict
    from builder.train import fit, load_training_data, seeded

    train = config.train or TrainConfig()
    seed = ctx.train_seed(config)
    name = clip_model_name(config.model, ctx.locations.base_dir, config.revision)
    model = seeded(seed, lambda: create_clip(config, ctx, load_weights_=False, name=name)).to(ctx.device).train()
    preprocess = Preprocess(clip_preprocessing(model)).to(ctx.device)
    captions = [group[0] for group in prompts(config, ctx.class_names)]  # with a template list, the first
    tokens = open_clip.get_tokenizer(name)(captions).to(ctx.device)

    def loss_fn(batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        image = F.normalize(model.encode_image(preprocess(batch)), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        return F.cross_entropy(model.logit_scale.exp() * image @ text.T, labels)

    fit(model.parameters(), loss_fn, load_training_data(ctx, train), train, seed, ctx.device, f"oracle {config.model}")
    save_state_dict({k: v.cpu() for k, v in model.state_dict().items()}, out)


@ORACLES.register("clip", config=ClipOracleConfig, description="CLIP zero-shot through open_clip", preflight=clip_preflight,
                  weights=clip_weights, trainer=train_clip)
def load_clip_oracle(config: ClipOracleConfig, ctx: ComponentContext) -> ClipZeroShotOracle:
    import open_clip

    name = clip_model_name(config.model, ctx.locations.base_dir, config.revision)
    model = create_clip(config, ctx, name=name)
    return ClipZeroShotOracle(model, open_clip.get_tokenizer(name), prompts(config, ctx.class_names), ctx.device)


class ClassifierOracle:
    """Any classifier as h: accept when its argmax is the label."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return _judge(self.classifier(images).softmax(dim=-1), labels)


def classifier_preflight(config: ClassifierOracleConfig, ctx: PreflightContext, where: str) -> list[Check]:
    return check_model(config.model, ctx, where)


def classifier_weights(config: ClassifierOracleConfig, where: str) -> list[Weights]:
    return model_weights(config.model, where)


@ORACLES.register("classifier", config=ClassifierOracleConfig, description="any classifier spec as the oracle",
                  preflight=classifier_preflight, weights=classifier_weights)
def load_classifier_oracle(config: ClassifierOracleConfig, ctx: ComponentContext) -> ClassifierOracle:
    return ClassifierOracle(load_classifier(config.model, ctx))


class EnsembleOracle:
    """Accept only if every member accepts; report the lowest probability of the label."""

    def __init__(self, members: list[Oracle]) -> None:
        self.members = members

    def judge(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        verdicts = [member.judge(images, labels) for member in self.members]
        accepted = torch.stack([v[0] for v in verdicts]).all(dim=0)
        probability = torch.stack([v[1] for v in verdicts]).min(dim=0).values
        return accepted, probability


def ensemble_preflight(config: EnsembleOracleConfig, ctx: PreflightContext, where: str) -> list[Check]:
    return [check for i, member in enumerate(config.members) for check in preflight(ORACLES, member.kind, member, ctx, f"{where}.members[{i}]")]


def ensemble_weights(config: EnsembleOracleConfig, where: str) -> list[Weights]:
    return [found for i, member in enumerate(config.members) for found in weights(ORACLES, member.kind, member, f"{where}.members[{i}]")]


@ORACLES.register("ensemble", config=EnsembleOracleConfig, description="all members must accept",
                  preflight=ensemble_preflight, weights=ensemble_weights)
def load_ensemble_oracle(config: EnsembleOracleConfig, ctx: ComponentContext) -> EnsembleOracle:
    return EnsembleOracle([load_oracle(member, ctx) for member in config.members])


def load_oracle(config: OracleConfig, ctx: ComponentContext) -> Oracle:
    return ORACLES.get(config.kind)(config, ctx)
