"""``clip:<model>/<pretrained>`` (or open_clip's own ``clip:hf-hub:<org/name>`` and
``clip:local-dir:<folder>``): an open_clip model as a zero-shot classifier over the benchmark's
class names, built by the very code the ``clip`` oracle uses (its config, its ``create_clip``,
its text head), so a model scored here is the model that judges there.

The spec's ``template`` (one, or a list averaged per class) fills the prompts; its ``kwargs``
are further fields of the oracle's config (``quick_gelu``, ``prompt_names``). Weights are an
open_clip pretrained tag (open_clip's own cache), or the spec's ``checkpoint``.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from builder.checkpoints import fetch_location
from builder.components.base import MODELS, ComponentContext
from builder.components.oracles import (
    CLIP_FOLDER,
    CLIP_HUB,
    DEFAULT_PRETRAINED,
    DEFAULT_TEMPLATE,
    ClipOracleConfig,
    clip_classifier,
    clip_model_name,
    clip_preflight,
    create_clip,
    prompts,
)
from builder.components.preprocess import PreprocessedClassifier
from builder.config import ModelSpec
from builder.errors import ComponentError
from builder.preflight import Check, PreflightContext

log = logging.getLogger(__name__)

#: ``pretrained: false``: a weights location that is never read (create_clip is told not to load)
_RANDOM = "random-initialisation.pt"


def oracle_config(spec: ModelSpec, checkpoint: str | None = None, recipe_template: str | tuple[str, ...] | None = None) -> ClipOracleConfig:
    """The ``clip`` oracle config that ``spec`` stands for (``checkpoint``: its weights file); its
    template is the spec's, else the recipe's (its oracle's), else the oracle's default."""
    target = spec.model.partition(":")[2]
    if target.startswith((CLIP_HUB, CLIP_FOLDER)):  # open_clip's own Hub repo or folder: its weights come with it
        if not spec.pretrained and checkpoint is None:
            raise ComponentError(f"{spec.model}: a Hub repo or folder brings its weights; pretrained: false has no random form here, "
                                 "give a checkpoint or drop it")
        model, tag = target, ""
        pretrained = checkpoint or DEFAULT_PRETRAINED
        if spec.revision is not None:
            spec = spec.model_copy(update={"kwargs": {"revision": spec.revision, **spec.kwargs}})
    else:
        model, _, tag = target.partition("/")
        pretrained = checkpoint or (tag if spec.pretrained else _RANDOM)
    if not pretrained:
        raise ComponentError(f"{spec.model}: name the pretrained tag (clip:{model}/<tag>) or give 'checkpoint'")
    fields = {"kind": "clip", "model": model, "pretrained": pretrained, "template": spec.template or recipe_template or DEFAULT_TEMPLATE,
              "quick_gelu": True if tag == "openai" else None, **spec.kwargs}  # OpenAI's weights, even fine-tuned, use QuickGELU
    try:
        return ClipOracleConfig.model_validate(fields)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "spec"
        raise ComponentError(f"{spec.model}: {where}: {problem['msg']}; fix the spec's kwargs or template") from None


def clip_model_preflight(spec: ModelSpec, ctx: PreflightContext, where: str) -> list[Check]:
    """The clip oracle's own checks of the same config (the checkpoint is checked as weights)."""
    try:
        target = spec.model.partition(":")[2]
        tag = "" if target.startswith((CLIP_HUB, CLIP_FOLDER)) else target.partition("/")[2]
        config = oracle_config(spec, None if tag else spec.checkpoint)  # a tag is checked even with a checkpoint
    except ComponentError as error:
        return [Check(where, spec.model, f"{where}: {error}")]
    return clip_preflight(config, ctx, where)


@MODELS.register("clip", description="open_clip zero-shot classifier over the class names (the clip oracle's code)",
                 preflight=clip_model_preflight, trainable=False)
def build_clip(target: str, spec: ModelSpec, ctx: ComponentContext, pretrained: bool) -> PreprocessedClassifier:
    import open_clip

    checkpoint = None
    if spec.checkpoint is not None:
        checkpoint = str(ctx.trained_location(fetch_location(spec.checkpoint, ctx.locations), spec))
    config = oracle_config(spec, checkpoint, ctx.prompt_template)
    name = clip_model_name(config.model, ctx.locations.base_dir, config.revision)
    model = create_clip(config, ctx, load_weights_=pretrained or checkpoint is not None, name=name)
    texts = prompts(config, ctx.class_names)
    return clip_classifier(model, open_clip.get_tokenizer(name), texts, ctx.device, spec.model, spec.preprocess)
