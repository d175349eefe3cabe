"""The three component interfaces Algorithm 1 needs, and the registries of their kinds.

All images crossing these interfaces are float tensors (N, 3, H, W) in [0, 1]; each
component applies its own normalisation, differentiably where gradients must flow.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Union, runtime_checkable

from builder import registry
from builder.checkpoints import ResolveContext
from builder.config import SourceConfig
from builder.errors import BuilderError, ComponentError
from builder.fileio import sha256_json
from builder.paths import source_locations
from builder.preflight import Check, PreflightContext, size_checks
from builder.registry import Registry


@runtime_checkable
class Generator(Protocol):
    """g(x, b): an autoencoder whose latent b is perturbed."""

    def encode(self, images: Any) -> Any:
        """Images -> the starting latent b0."""
        ...

    def decode(self, latent: Any) -> Any:
        """Latent -> images, differentiable with respect to the latent."""
        ...


@runtime_checkable
class Oracle(Protocol):
    """h: decides whether an image still shows its label."""

    def judge(self, images: Any, labels: Any) -> tuple[Any, Any]:
        """(accepted bool tensor, probability the oracle gives the label), no gradients."""
        ...


@runtime_checkable
class Classifier(Protocol):
    """theta: maps [0, 1] images to logits, its preprocessing built in."""

    num_classes: int

    def __call__(self, images: Any) -> Any: ...


def component_seed(seed: int, section: str) -> int:
    """The seed a component is built under (it matters only for parts without weights): one per
    recipe section, so adding, removing or reordering generators leaves every other component,
    and so every other config's bytes, as they were; ``verify --oracle`` rebuilds the oracle the
    build judged with. Every generator takes the section ``generator``, alone or among several."""
    return int(sha256_json({"seed": seed, "section": section})[:8], 16)


@contextlib.contextmanager
def seeded(seed: int, section: str) -> Iterator[None]:
    """Build a component under :func:`component_seed`, the global RNG left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(component_seed(seed, section))
        yield


@dataclass(frozen=True)
class ComponentContext:
    """Everything a component factory may need besides its own config."""

    device: str
    cache_dir: Path
    base_dir: Path
    class_names: tuple[str, ...]
    image_size: int
    source: SourceConfig
    seed: int = 0
    #: the recipe's CLIP prompt template (its oracle's), the default of ``clip:`` model specs
    prompt_template: Union[str, tuple[str, ...], None] = None
    #: the source the benchmark evaluates, when training reads another (``train --set source...``);
    #: None: ``source`` itself. Training never reads the evaluated samples
    evaluated_source: Optional[SourceConfig] = None

    @property
    def locations(self) -> ResolveContext:
        return ResolveContext(self.base_dir, self.cache_dir)

    def train_seed(self, component: Any) -> int:
        """The component's ``train.seed``, else one derived from the recipe seed and the component."""
        if component.train is not None and component.train.seed is not None:
            return int(component.train.seed)
        digest = sha256_json({"seed": self.seed, "component": weights_identity(component)})
        return int(digest[:8], 16)

    def trained_location(self, path: Path, component: Any) -> Path:
        """Where a component trained on first use lives: ``path`` plus a hash of everything that
        shapes its weights, so changing the train block, the source or the seed trains anew."""
        if component.train is None:
            return path
        shaping = {
            "component": weights_identity(component),
            "seed": self.train_seed(component),
            "source": self.source.model_dump(mode="json"),
            "image_size": self.image_size,
            "class_names": list(self.class_names),
        }
        # where the source's data is on this machine: two projects of one recipe text, each with
        # its own ./data, shared a trained checkpoint (absent for sources naming no local path,
        # whose hashes stay as they were)
        located = source_locations(self.source, self.base_dir)
        digest = sha256_json({**shaping, "source_locations": located} if located else shaping)
        return path.with_name(f"{path.stem}-{digest[:12]}{path.suffix}")


#: settings of how a component is used, not of what it is: its trained weights (their seed and file)
#: do not depend on them, so tuning a step or fitting a mask never trains anew
NOT_SHAPING_WEIGHTS = ("step_size", "mask", "requantize")


def weights_identity(component: Any) -> dict[str, Any]:
    """The component's config as its trained weights depend on it: the settings that only say how
    it is used are set to their defaults (so a config that never set them hashes as it always did)."""
    fields = type(component).model_fields
    defaults = {name: fields[name].default for name in NOT_SHAPING_WEIGHTS if name in fields}
    identity: dict[str, Any] = component.model_copy(update=defaults).model_dump(mode="json")
    return identity


def prompt_template_of(oracle: Any) -> Union[str, tuple[str, ...], None]:
    """The prompt template of a recipe's oracle (its config, or the dict a manifest recorded);
    None when it has none, or a recorded one is not a valid template."""
    from builder.config import check_templates

    value = oracle.get("template") if isinstance(oracle, dict) else getattr(oracle, "template", None)
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, (str, tuple)) or not all(isinstance(item, str) for item in ((value,) if isinstance(value, str) else value)):
        return None
    try:
        return check_templates(value)
    except ValueError:
        return None


GeneratorFactory = Callable[[Any, ComponentContext], Generator]
OracleFactory = Callable[[Any, ComponentContext], Oracle]
ModelLoader = Callable[[str, Any, ComponentContext, bool], Any]  # (target, spec, context, pretrained)

GENERATORS: Registry[GeneratorFactory] = registry.GENERATORS
ORACLES: Registry[OracleFactory] = registry.ORACLES
MODELS: Registry[ModelLoader] = registry.MODELS


#: the largest image side any generator is asked for (an image is image_size**2 * 3 values, and
#: the generator's activations many times that)
MAX_IMAGE_SIZE = 4096


def image_size_cap_problem(image_size: int) -> str | None:
    """Why no generator takes ``image_size`` px images (None if within bounds)."""
    if image_size < 1:
        return f"image_size {image_size}: must be at least 1 px; use a positive image_size"
    if image_size > MAX_IMAGE_SIZE:
        return (
            f"image_size {image_size}: must be at most {MAX_IMAGE_SIZE} px (one image alone would be "
            f"{3 * image_size**2:.2g} values, the generator's activations many times that); use a smaller image_size"
        )
    return None


def generator_image_size_problem(generator_config: Any, image_size: int, locations: ResolveContext) -> str | None:
    """Why the generator of ``generator_config`` cannot take ``image_size`` px images (None if it
    can): the common bound, then the kind's own ``image_size_problem(image_size, locations)`` when
    its config class has one. May read (or, for remote locations, fetch) the generator's config
    file, and raises the ComponentError of a malformed one."""
    problem = image_size_cap_problem(image_size)
    if problem is None and hasattr(generator_config, "image_size_problem"):
        problem = generator_config.image_size_problem(image_size, locations)
    return problem


def image_size_preflight(config: Any, ctx: PreflightContext, where: str) -> list[Check]:
    """A dry run's checks for a generator that reads no files: the image sizes it is asked for,
    judged by its config's ``image_size_problem``."""

    def problem(size: int) -> str | None:
        return generator_image_size_problem(config, size, ctx)

    try:
        checks = size_checks(config, ctx.image_size, problem, "accepted")
    except BuilderError as error:
        return [Check(where, config.kind, f"{where}: {error}")]
    return [Check(where, f"{config.kind}: nothing to load"), *checks]


def check_image_size(generator_config: Any, image_size: int, base_dir: Path, cache_dir: Path | None = None) -> None:
    """Raise a one-line ComponentError if the generator cannot take ``image_size`` px images;
    call it before loading anything. Relative locations are against ``base_dir``."""
    if cache_dir is None:
        from builder.paths import default_cache_dir

        cache_dir = default_cache_dir()
    problem = generator_image_size_problem(generator_config, image_size, ResolveContext(base_dir, cache_dir))
    if problem:
        raise ComponentError(problem)
