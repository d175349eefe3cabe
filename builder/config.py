"""Typed, frozen recipe configuration, validated once at the edge.

Fixed sections are pydantic models; pluggable sections (``source``, ``generator``,
``oracle``) are validated by the config class their ``kind`` registered, so a new kind
brings its own schema. Every error is one line naming the full key path and, for a
misspelled key, the closest valid name.
"""

from __future__ import annotations

import itertools
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from builder.errors import RecipeError
from builder.registry import Registry, closest, unknown_name_message
from builder.safeyaml import one_line

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
#: a name that becomes a directory or file name: one path component, never '..'
MAX_NAME = 64
MAX_SEED = 2**63  # exclusive: torch and numpy take 64-bit seeds
MAX_IMAGE_SIZE = 4096
MAX_BATCH = 65536
MAX_CLASSES = 100_000
#: class indices a class range may reach (a model's outputs, a source's classes)
MAX_OUTPUTS = 1_000_000
MAX_CLASS_NAME = 256
#: a split name ``datasets`` accepts (its own rule is ``^\w+(\.\w+)*$``), ASCII only
SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def without_unset(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A serialized config without those of ``keys`` that are None: fields added later are not
    written when unset, so older recipes (and their hashes, a benchmark's identity) stay as they were."""
    return {key: value for key, value in data.items() if not (key in keys and value is None)}


def invalid(message: str, fix: str) -> PydanticCustomError:
    """A validation error whose ``fix`` is shown after the offending value."""
    return PydanticCustomError("recipe_value", message, {"fix": fix})


class Frozen(BaseModel):
    """Immutable, closed schema: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: fields holding nested pluggable sections: field name -> registry of their kinds
    nested_components: ClassVar[dict[str, str]] = {}

    @field_validator("*", mode="before")
    @classmethod
    def _no_truth_value_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true/false as 1/0 where a number is due, and YAML reads yes, no, on
        and off as true/false: ``budget: yes`` built with a budget of 1, without a word."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and bool_for_number(field.annotation, value):
            raise invalid("expected a number, got a truth value (YAML reads true, false, yes, no, on and off as one)",
                          "write the number")
        return value


def bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a bool where ``annotation`` wants an int or float (in a tuple,
    list or dict value too)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return bool_for_number(args[0], value)
    if origin is typing.Union or origin is types.UnionType:
        options = [arg for arg in args if arg is not type(None)]
        return not any(arg is bool or arg is Any for arg in options) and any(bool_for_number(arg, value) for arg in options)
    if isinstance(value, bool):
        return annotation is int or annotation is float
    if isinstance(value, (list, tuple)) and origin in (tuple, list) and args:
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return any(bool_for_number(args[0], item) for item in value)
        return any(bool_for_number(arg, item) for arg, item in zip(args, value, strict=False))
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        return any(bool_for_number(args[1], item) for item in value.values())
    return False


#: super-class name -> inclusive (first, last) ranges of the underlying class indices
ClassRanges = dict[str, tuple[tuple[int, int], ...]]


def check_class_ranges(value: ClassRanges | None) -> ClassRanges | None:
    """Ranges are ordered pairs, non-empty, and no index belongs to two super-classes; the
    super-class names are class names (checked as ``class_names`` are). Overlaps are found by
    sorting the ranges, not by listing their indices (a range may span billions)."""
    if value is None:
        return None
    if not value:
        raise ValueError("needs at least one super-class")
    class_name_problem(list(value))
    spans: list[tuple[int, int, str]] = []
    for name, ranges in value.items():
        if not ranges:
            raise ValueError(f"'{name}' has no ranges")
        for first, last in ranges:
            if not 0 <= first <= last:
                raise ValueError(f"'{name}': range [{first}, {last}] must have 0 <= first <= last")
            if last >= MAX_OUTPUTS:  # pooling lists the indices: a range of billions exhausted memory
                raise ValueError(f"'{name}': range [{first}, {last}] reaches past {MAX_OUTPUTS - 1}, more outputs than a classifier has")
            spans.append((first, last, name))
    spans.sort()
    for (_, end, before), (first, last, name) in itertools.pairwise(spans):
        if first <= end:
            raise ValueError(f"'{name}' overlaps '{before}' in [{first}, {last}]")
    return value


def class_name_problem(names: list[str]) -> None:
    """Class names end up in prompts, cards (a ClassLabel, whose names must differ) and one-line
    messages: each 1 to MAX_CLASS_NAME characters on one line, no two alike."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not name.strip() or len(name) > MAX_CLASS_NAME or name.splitlines() != [name]:
            shown = one_line(repr(name), 60)
            raise invalid(f"class name [{index}] must be 1 to {MAX_CLASS_NAME} characters on one line (got {shown})", "fix that name")
        if name in seen:
            raise invalid(f"class name [{index}] {one_line(repr(name), 60)} repeats class name [{seen[name]}]", "give each class its own name")
        seen[name] = index


class TrainConfig(Frozen):
    """How to train a component from scratch when its checkpoint does not exist yet."""

    split: str = "train"
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    #: default: derived from the recipe's seed and the component
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    #: resolution training images are kept at (default: the recipe's image_size); a classifier
    #: for 32 px CIFAR need not train on 256 px upsamplings
    image_size: int | None = Field(None, gt=0, le=MAX_IMAGE_SIZE)
    augment: bool = False


def check_template(value: str) -> str:
    """``template.format(name)`` makes each CLIP prompt: exactly one ``{}`` and no other fields."""
    import string

    if "{}" not in value:
        raise ValueError(f"'{value}' needs a '{{}}' where the class name goes")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(value) if field is not None]
    except ValueError as error:  # a lone '{' or '}'
        raise ValueError(f"'{value}' must have exactly one '{{}}' and no other braces ({error}); write a literal brace as '{{{{' or '}}}}'") from None
    if fields != [""]:
        raise ValueError(f"'{value}' must have exactly one '{{}}' and no other braces; write a literal brace as '{{{{' or '}}}}'")
    return value


def check_templates(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """One template, or a non-empty list whose prompt embeddings are averaged per class."""
    if isinstance(value, str):
        return check_template(value)
    if not value:
        raise ValueError("a template list needs at least one template")
    return tuple(check_template(template) for template in value)


FiniteFloat = typing.Annotated[float, Field(allow_inf_nan=False)]
PositiveFinite = typing.Annotated[float, Field(gt=0, allow_inf_nan=False)]


class PreprocessConfig(Frozen):
    """Overrides of a model's own preprocessing (normally read from its pretrained config)."""

    input_size: int | None = Field(None, gt=0, le=MAX_IMAGE_SIZE)
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_pct: float | None = Field(None, gt=0, le=1)
    mean: tuple[FiniteFloat, FiniteFloat, FiniteFloat] | None = None
    #: positive: normalising divides by it (refused when the model loaded, after the dry run passed)
    std: tuple[PositiveFinite, PositiveFinite, PositiveFinite] | None = None


class ModelSpec(Frozen):
    """A classifier: ``timm:<name[.tag]>`` or ``py:<module>:<callable>``, optional checkpoint."""

    model: str
    name: str | None = None
    pretrained: bool = True
    checkpoint: str | None = None
    num_classes: int | None = Field(None, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig | None = None
    #: pool the model's outputs into these super-classes (logsumexp of the member logits)
    class_ranges: ClassRanges | None = None
    #: ``hf:``: the Hub revision (branch, tag or commit) to load
    revision: str | None = None
    #: each benchmark class name -> the model's label (name or output index) that stands for it
    label_map: dict[str, str | int] | None = None
    #: ``clip:``: the prompt template, or a list averaged per class (default: the CLIP oracle's)
    template: str | tuple[str, ...] | None = None

    @field_validator("class_ranges")
    @classmethod
    def _disjoint_ranges(cls, value: ClassRanges | None) -> ClassRanges | None:
        return check_class_ranges(value)

    @field_validator("template")
    @classmethod
    def _templates(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        return None if value is None else check_templates(value)

    @model_serializer(mode="wrap")
    def _without_unset_scheme_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Scheme-only fields left unset are not written, so the specs (and the hashes of them)
        of models that never use them stay as they were before these fields existed."""
        data: dict[str, Any] = handler(self)
        for key in ("revision", "label_map", "template"):
            if data.get(key, "") is None:
                del data[key]
        return data

    @model_validator(mode="after")
    def _one_class_mapping(self) -> "ModelSpec":
        if self.label_map is not None and self.class_ranges is not None:
            raise ValueError("give label_map or class_ranges, not both: each says which outputs stand for each class")
        return self

    @field_validator("model")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError(f"'{value}' needs a scheme: timm:, hf:, torchvision:, clip:, robustbench: or py: (e.g. 'timm:<name>')")
        return value

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        if value is not None and not (SLUG.match(value) and len(value) <= MAX_NAME):
            raise ValueError(f"'{value}' must be lowercase letters, digits, '-' or '_' (at most {MAX_NAME})")
        return value

    @property
    def config_name(self) -> str:
        """Output config name: the explicit name, else a slug of the model name."""
        if self.name:
            return self.name
        tail = self.model.split(":", 1)[1]
        return re.sub(r"[^a-z0-9_-]+", "-", tail.lower()).strip("-")


class SourceConfig(Frozen):
    kind: str
    class_names: tuple[str, ...] | None = None
    #: keep only samples whose label falls in a range, relabelled to its super-class
    class_ranges: ClassRanges | None = None

    @field_validator("class_names", mode="before")
    @classmethod
    def _not_too_many(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) > MAX_CLASSES:
            raise invalid(f"at most {MAX_CLASSES} class names (got {len(value)})", "list fewer or remove class_names")
        return value

    @field_validator("class_names")
    @classmethod
    def _one_line_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        class_name_problem(list(value or ()))
        return value

    @field_validator("class_ranges")
    @classmethod
    def _disjoint_ranges(cls, value: ClassRanges | None) -> ClassRanges | None:
        return check_class_ranges(value)

    def training_split_problem(self, train_split: str, trained_on: Optional[SourceConfig] = None,
                               base_dir: Optional[Path] = None) -> Optional[str]:
        """Why a component trained on ``train_split`` of ``trained_on`` (default: this source, the
        one the benchmark evaluates) would learn the very samples the benchmark evaluates; None
        when it would not. Other data (another path, say) is taken as other samples, paths
        compared where they lead from ``base_dir`` (``./data`` and its absolute spelling are one
        folder); of this source, one without splits has only the evaluated samples, and a split
        sharing samples with the evaluated one has some. A kind whose splits nest overrides
        :meth:`splits_overlap`."""
        if trained_on is not None and _where_from(trained_on, base_dir) != _where_from(self, base_dir):
            return None
        split = getattr(self, "split", None)
        if not isinstance(split, str):
            return (f"source kind '{self.kind}' has no split, so a train block would train on the very samples the benchmark "
                    "evaluates; train the component on other data (build-benchmark train ... --set source.path=TRAIN_DATA) "
                    "and give its checkpoint")
        if self.splits_overlap(train_split, split):
            return (f"train.split '{train_split}' shares samples with the split the benchmark evaluates (source.split '{split}'), "
                    "so the component would learn its own test set; train on another split")
        return None

    def splits_overlap(self, first: str, second: str) -> bool:
        """Whether two splits share samples (by default: when they are one split)."""
        return first == second


def _where_from(source: SourceConfig, base_dir: Optional[Path]) -> dict[str, Any]:
    """A source's settings but its split, a path-like one as where it leads from ``base_dir``."""
    from builder.paths import source_locations

    settings = source.model_dump(mode="json", exclude={"split"})
    if base_dir is None:
        return settings
    located = source_locations(source, base_dir)

    def where(key: str, value: Any) -> Any:
        if isinstance(value, list):
            return [where(key, item) for item in value]
        return located.get(f"{key}:{value}", value) if isinstance(value, str) else value

    return {key: where(key, value) for key, value in settings.items()}


class GeneratorConfig(Frozen):
    kind: str
    #: this generator's step, instead of ``perturbation.step_size``: latents differ in scale (a
    #: VQGAN's codes, a VAE's posterior, pixels), so generators compared in one build need their own
    step_size: Optional[float] = Field(None, gt=0, allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _without_unset_step(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An unset ``step_size`` is not written: recipes (and their hashes) stay as they were."""
        return without_unset(handler(self), ("step_size",))


class OracleConfig(Frozen):
    kind: str


class PerturbationConfig(Frozen):
    """Algorithm 1's knobs; defaults are the paper's (step 0.001, budget 50)."""

    step_size: float = Field(0.001, gt=0, allow_inf_nan=False)
    budget: int = Field(50, ge=0, le=100_000)
    direction: Literal["sign", "gradient", "l2"] = "sign"
    #: bf16 runs decoder, oracle and reference model in bfloat16 autocast (latent, loss and step
    #: stay float32); it changes which steps the oracle accepts for a few samples, so it is part
    #: of what a benchmark is (its manifest id), off by default
    precision: Literal["fp32", "bf16"] = "fp32"


class OutputConfig(Frozen):
    formats: tuple[str, ...] = ("webdataset", "parquet")
    samples_per_shard: int = Field(1000, gt=0, le=1_000_000)
    image_encoding: Literal["png", "webp"] = "png"
    keep_originals: bool = True
    split: str = "test"

    @field_validator("split")
    @classmethod
    def _one_component(cls, value: str) -> str:
        """Shard files are named after the split, and the card's data_files too: a name the
        datasets library accepts as a split (letters, digits and '_', in parts joined by '.'),
        which is also one safe path component."""
        if not SPLIT_NAME.fullmatch(value):
            raise invalid("must be letters, digits and '_', in parts joined by '.' (a split name datasets.load_dataset accepts)",
                          "e.g. test or test_v2")
        return value

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from builder.registry import WRITERS

        if not value:
            raise ValueError("at least one output format is needed")
        for name in value:
            if name not in WRITERS:
                raise ValueError(unknown_name_message(WRITERS.family, name, WRITERS.names()))
        return value


@dataclass(frozen=True)
class BuildConfig:
    """One config of the output: a reference model perturbed through one generator."""

    #: the output config's name (its directory, its Hub config)
    name: str
    model: ModelSpec
    #: the generator's key in the recipe's ``generators`` (its kind for a one-generator recipe)
    generator_name: str
    generator: GeneratorConfig
    #: the recipe's perturbation, with the generator's own ``step_size`` where it has one
    perturbation: PerturbationConfig


class Recipe(Frozen):
    #: one printable line: it heads the card, the summaries and the Hub commit message
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    description: str = ""
    source: SerializeAsAny[SourceConfig]
    reference_models: tuple[ModelSpec, ...]
    #: the generator of every config; or, instead, ``generators``: several, by name, each
    #: (reference model x generator) pair one config named ``<model>-<generator>``
    generator: Optional[SerializeAsAny[GeneratorConfig]] = None
    generators: Optional[dict[str, SerializeAsAny[GeneratorConfig]]] = None
    oracle: SerializeAsAny[OracleConfig]
    perturbation: PerturbationConfig = PerturbationConfig()
    image_size: int = Field(256, gt=0, le=MAX_IMAGE_SIZE)
    seed: int = Field(0, ge=0, lt=MAX_SEED)
    batch_size: int = Field(32, gt=0, le=MAX_BATCH)
    output: OutputConfig = OutputConfig()
    license: str = "unknown"
    source_citation: str = ""

    @field_validator("license")
    @classmethod
    def _hub_license(cls, value: str) -> str:
        from builder.licenses import license_problem

        problem = license_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("reference_models")
    @classmethod
    def _unique_names(cls, value: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        if not value:
            raise ValueError("at least one reference model is needed")
        names = [spec.config_name for spec in value]
        for index, (spec, name) in enumerate(zip(value, names, strict=False)):
            if not (SLUG.match(name) and len(name) <= MAX_NAME):  # it names the config's directory
                raise invalid(
                    f"[{index}]: model {one_line(repr(spec.model), 100)} gives no usable config name "
                    f"(got {one_line(repr(name), 100)})",
                    f"set reference_models[{index}].name to at most {MAX_NAME} lowercase letters, digits, '-' or '_'",
                )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"config names must be unique, '{dupes[0]}' repeats; set 'name'")
        return value

    @field_validator("generators")
    @classmethod
    def _generator_names(cls, value: Optional[dict[str, GeneratorConfig]]) -> Optional[dict[str, GeneratorConfig]]:
        if value is None:
            return None
        if not value:
            raise invalid("needs at least one generator", "list them by name, e.g. generators: {vqgan: {kind: vqgan, ...}}")
        for name in value:
            if not (SLUG.match(name) and len(name) <= MAX_NAME):
                raise invalid(f"generator name {one_line(repr(name), 60)} must be lowercase letters, digits, '-' or '_'",
                              "rename it, e.g. 'vqgan'")
        return value

    @model_validator(mode="after")
    def _one_generator_section(self) -> "Recipe":
        if (self.generator is None) == (self.generators is None):
            raise ValueError("give 'generator' (one) or 'generators' (several, by name), exactly one of them")
        names = [config.name for config in self.build_configs]
        too_long = next((name for name in names if len(name) > MAX_NAME), None)
        if too_long:
            raise ValueError(f"config name '{too_long}' is longer than {MAX_NAME} characters; shorten the model or generator names")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"config names must be unique, '{dupes[0]}' repeats; rename a reference model or a generator")
        return self

    @model_serializer(mode="wrap")
    def _one_generator_key(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the generator section given is written, so a one-generator recipe (and the
        hash of it, a benchmark's identity) is written as it was before ``generators`` existed."""
        return without_unset(handler(self), ("generator", "generators"))

    @property
    def named_generators(self) -> dict[str, GeneratorConfig]:
        """Each generator by name: the ``generators`` mapping, or the one generator by its kind."""
        if self.generators is not None:
            return dict(self.generators)
        if self.generator is None:  # excluded by validation
            raise RecipeError("recipe error at generator: required key is missing")
        return {self.generator.kind: self.generator}

    @property
    def generator_sections(self) -> list[tuple[str, GeneratorConfig]]:
        """Each generator with the key path it sits at: ``generator``, or ``generators.<name>``."""
        if self.generators is None:
            return [("generator", config) for config in self.named_generators.values()]
        return [(f"generators.{name}", config) for name, config in self.generators.items()]

    @property
    def build_configs(self) -> tuple[BuildConfig, ...]:
        """The output's configs: every reference model with every generator, model-major;
        named after the model alone when the recipe has one generator."""
        several = self.generators is not None
        return tuple(
            BuildConfig(f"{spec.config_name}-{key}" if several else spec.config_name, spec, key, generator, self.perturbation_for(generator))
            for spec in self.reference_models for key, generator in self.named_generators.items()
        )

    def perturbation_for(self, generator: GeneratorConfig) -> PerturbationConfig:
        """Algorithm 1's knobs for ``generator``: its own step size, if it sets one."""
        if generator.step_size is None:
            return self.perturbation
        return self.perturbation.model_copy(update={"step_size": generator.step_size})

    def build_config(self, name: str) -> BuildConfig:
        """The config called ``name``, or a one-line error listing them."""
        configs = {config.name: config for config in self.build_configs}
        if name not in configs:
            raise RecipeError(unknown_name_message("config", name, list(configs)))
        return configs[name]

    def generator_named(self, name: Optional[str]) -> tuple[str, GeneratorConfig]:
        """One generator by name (default: the first), or a one-line error listing them."""
        generators = self.named_generators
        key = name or next(iter(generators))
        if key not in generators:
            raise RecipeError(unknown_name_message("generator", key, list(generators)))
        return key, generators[key]


# ----------------------------------------------------------------------------- parsing

PLUGGABLE_SECTIONS = {"source": "sources", "generator": "generators", "oracle": "oracles"}
#: sections that map names to pluggable sections
PLUGGABLE_MAPPINGS = {"generators": "generators"}


def _registry(family: str) -> Registry[Any]:
    from builder.registry import GENERATORS, ORACLES, SOURCES

    return {"sources": SOURCES, "generators": GENERATORS, "oracles": ORACLES}[family]


def _path_text(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<recipe>"


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class a location inside ``model`` refers to (for key hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(
    error: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...]
) -> RecipeError:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    where = _path_text(prefix + loc)
    if first["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        hint = closest(str(loc[-1]), allowed)
        did_you_mean = f"did you mean '{hint}'? " if hint else ""
        return RecipeError(one_line(
            f"recipe error at {where}: unknown key; {did_you_mean}allowed: {', '.join(allowed)}"
        ))
    if first["type"] == "missing":
        return RecipeError(one_line(f"recipe error at {where}: required key is missing"))
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list, tuple)) else f" (got {one_line(repr(got), 100)})"
    message = str(first["msg"]).removeprefix("Value error, ")
    fix = (first.get("ctx") or {}).get("fix")
    return RecipeError(one_line(f"recipe error at {where}: {message}{shown}" + (f"; {fix}" if fix else "")))


def parse_component(family: str, data: Any, path: tuple[Any, ...]) -> BaseModel:
    """Validate one pluggable section with the config class of its ``kind``."""
    if not isinstance(data, dict):
        raise RecipeError(f"recipe error at {_path_text(path)}: expected a mapping with 'kind'")
    registry = _registry(family)
    kind = data.get("kind")
    if kind is None:
        raise RecipeError(
            f"recipe error at {_path_text(path + ('kind',))}: required key is missing; "
            f"choices: {', '.join(registry.names())}"
        )
    if not isinstance(kind, str) or kind not in registry:
        hint = closest(str(kind), registry.names())
        did_you_mean = f"did you mean '{hint}'? " if hint else ""
        raise RecipeError(one_line(
            f"recipe error at {_path_text(path + ('kind',))}: unknown {registry.family} "
            f"'{one_line(str(kind), 100)}'; {did_you_mean}choices: {', '.join(registry.names())}"
        ))
    config_cls: type[Frozen] = registry.entry(kind).config
    values = dict(data)
    for field_name, nested_family in config_cls.nested_components.items():
        if field_name in values and isinstance(values[field_name], list):
            values[field_name] = [
                parse_component(nested_family, item, path + (field_name, i))
                for i, item in enumerate(values[field_name])
            ]
    try:
        return config_cls.model_validate(values)
    except ValidationError as error:
        raise format_validation_error(error, config_cls, path) from None


def parse_recipe(data: Any) -> Recipe:
    """Validate a recipe mapping (already loaded from YAML, overrides applied)."""
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"{type(data).__name__} {one_line(repr(data), 60)}"
        raise RecipeError(
            f"recipe error at <recipe>: expected a mapping at the top level (got {got}); "
            "start from a bundled recipe (build-benchmark recipes lists them)"
        )
    values = dict(data)
    for section, family in PLUGGABLE_SECTIONS.items():
        if section in values:
            values[section] = parse_component(family, values[section], (section,))
    for section, family in PLUGGABLE_MAPPINGS.items():
        if isinstance(values.get(section), dict):
            values[section] = {name: parse_component(family, item, (section, name)) for name, item in values[section].items()}
    try:
        return Recipe.model_validate(values)
    except ValidationError as error:
        raise format_validation_error(error, Recipe, ()) from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """JSON-ready form of a recipe, the kinds' own fields included."""
    return recipe.model_dump(mode="json")


