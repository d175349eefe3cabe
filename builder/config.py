"""Typed, frozen recipe configuration, validated once at the edge.

Fixed sections are pydantic models; pluggable sections (``source``, ``generator``,
``oracle``) are validated by the config class their ``kind`` registered, so a new kind
brings its own schema. Every error is one line naming the full key path and, for a
misspelled key, the closest valid name.
"""

from __future__ import annotations

import re
import typing
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from builder.errors import RecipeError
from builder.registry import Registry, closest, unknown_name_message

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Frozen(BaseModel):
    """Immutable, closed schema: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: fields holding nested pluggable sections: field name -> registry of their kinds
    nested_components: ClassVar[dict[str, str]] = {}


#: super-class name -> inclusive (first, last) ranges of the underlying class indices
ClassRanges = dict[str, tuple[tuple[int, int], ...]]


def check_class_ranges(value: Optional[ClassRanges]) -> Optional[ClassRanges]:
    """Ranges are ordered pairs, non-empty, and no index belongs to two super-classes."""
    if value is None:
        return None
    if not value:
        raise ValueError("needs at least one super-class")
    owner: dict[int, str] = {}
    for name, ranges in value.items():
        if not ranges:
            raise ValueError(f"'{name}' has no ranges")
        for first, last in ranges:
            if not 0 <= first <= last:
                raise ValueError(f"'{name}': range [{first}, {last}] must have 0 <= first <= last")
            clash = next((owner[i] for i in range(first, last + 1) if i in owner), None)
            if clash is not None:
                raise ValueError(f"'{name}' overlaps '{clash}' in [{first}, {last}]")
            owner.update(dict.fromkeys(range(first, last + 1), name))
    return value


class TrainConfig(Frozen):
    """How to train a component from scratch when its checkpoint does not exist yet."""

    split: str = "train"
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    seed: Optional[int] = None  # default: derived from the recipe's seed and the component
    #: resolution training images are kept at (default: the recipe's image_size); a classifier
    #: for 32 px CIFAR need not train on 256 px upsamplings
    image_size: Optional[int] = Field(None, gt=0)
    augment: bool = False


class PreprocessConfig(Frozen):
    """Overrides of a model's own preprocessing (normally read from its pretrained config)."""

    input_size: Optional[int] = Field(None, gt=0)
    interpolation: Optional[Literal["bilinear", "bicubic", "nearest"]] = None
    crop_pct: Optional[float] = Field(None, gt=0, le=1)
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None


class ModelSpec(Frozen):
    """A classifier: ``timm:<name[.tag]>`` or ``py:<module>:<callable>``, optional checkpoint."""

    model: str
    name: Optional[str] = None
    pretrained: bool = True
    checkpoint: Optional[str] = None
    num_classes: Optional[int] = Field(None, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    preprocess: PreprocessConfig = PreprocessConfig()
    train: Optional[TrainConfig] = None
    #: pool the model's outputs into these super-classes (logsumexp of the member logits)
    class_ranges: Optional[ClassRanges] = None

    @field_validator("class_ranges")
    @classmethod
    def _disjoint_ranges(cls, value: Optional[ClassRanges]) -> Optional[ClassRanges]:
        return check_class_ranges(value)

    @field_validator("model")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError(f"'{value}' needs a scheme: 'timm:<name>' or 'py:<module>:<callable>'")
        return value

    @field_validator("name")
    @classmethod
    def _slug(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not SLUG.match(value):
            raise ValueError(f"'{value}' must be lowercase letters, digits, '-' or '_'")
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
    class_names: Optional[tuple[str, ...]] = None
    #: keep only samples whose label falls in a range, relabelled to its super-class
    class_ranges: Optional[ClassRanges] = None

    @field_validator("class_ranges")
    @classmethod
    def _disjoint_ranges(cls, value: Optional[ClassRanges]) -> Optional[ClassRanges]:
        return check_class_ranges(value)


class GeneratorConfig(Frozen):
    kind: str


class OracleConfig(Frozen):
    kind: str


class PerturbationConfig(Frozen):
    """Algorithm 1's knobs; defaults are the paper's (step 0.001, budget 50)."""

    step_size: float = Field(0.001, gt=0)
    budget: int = Field(50, ge=0)
    direction: Literal["sign", "gradient", "l2"] = "sign"


class OutputConfig(Frozen):
    formats: tuple[str, ...] = ("webdataset", "parquet")
    samples_per_shard: int = Field(1000, gt=0)
    image_encoding: Literal["png", "webp"] = "png"
    keep_originals: bool = True
    split: str = "test"

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from builder.writers import WRITERS

        if not value:
            raise ValueError("at least one output format is needed")
        for name in value:
            if name not in WRITERS:
                raise ValueError(unknown_name_message(WRITERS.family, name, WRITERS.names()))
        return value


class Recipe(Frozen):
    name: str
    description: str = ""
    source: SerializeAsAny[SourceConfig]
    reference_models: tuple[ModelSpec, ...]
    generator: SerializeAsAny[GeneratorConfig]
    oracle: SerializeAsAny[OracleConfig]
    perturbation: PerturbationConfig = PerturbationConfig()
    image_size: int = Field(256, gt=0)
    seed: int = 0
    batch_size: int = Field(32, gt=0)
    output: OutputConfig = OutputConfig()
    license: str = "unknown"
    source_citation: str = ""

    @field_validator("reference_models")
    @classmethod
    def _unique_names(cls, value: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        if not value:
            raise ValueError("at least one reference model is needed")
        names = [spec.config_name for spec in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"config names must be unique, '{dupes[0]}' repeats; set 'name'")
        return value


# ----------------------------------------------------------------------------- parsing

PLUGGABLE_SECTIONS = {"source": "sources", "generator": "generators", "oracle": "oracles"}


def _registry(family: str) -> Registry[Any]:
    from builder import components, sources  # registration happens on import

    return {
        "sources": sources.SOURCES,
        "generators": components.GENERATORS,
        "oracles": components.ORACLES,
    }[family]


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
        return RecipeError(
            f"recipe error at {where}: unknown key; {did_you_mean}allowed: {', '.join(allowed)}"
        )
    if first["type"] == "missing":
        return RecipeError(f"recipe error at {where}: required key is missing")
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    message = str(first["msg"]).removeprefix("Value error, ")
    return RecipeError(f"recipe error at {where}: {message}{shown}")


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
    if kind not in registry:
        hint = closest(str(kind), registry.names())
        did_you_mean = f"did you mean '{hint}'? " if hint else ""
        raise RecipeError(
            f"recipe error at {_path_text(path + ('kind',))}: unknown {registry.family} "
            f"'{kind}'; {did_you_mean}choices: {', '.join(registry.names())}"
        )
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
        raise RecipeError("recipe error at <recipe>: expected a mapping at the top level")
    values = dict(data)
    for section, family in PLUGGABLE_SECTIONS.items():
        if section in values:
            values[section] = parse_component(family, values[section], (section,))
    try:
        return Recipe.model_validate(values)
    except ValidationError as error:
        raise format_validation_error(error, Recipe, ()) from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """JSON-ready form of a recipe, the kinds' own fields included."""
    return recipe.model_dump(mode="json")


