"""The three component interfaces Algorithm 1 needs, and the registries of their kinds.

All images crossing these interfaces are float tensors (N, 3, H, W) in [0, 1]; each
component applies its own normalisation, differentiably where gradients must flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

from builder.checkpoints import ResolveContext
from builder.config import SourceConfig
from builder.fileio import sha256_json
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

    @property
    def locations(self) -> ResolveContext:
        return ResolveContext(self.base_dir, self.cache_dir)

    def train_seed(self, component: Any) -> int:
        """The component's ``train.seed``, else one derived from the recipe seed and the component."""
        if component.train is not None and component.train.seed is not None:
            return int(component.train.seed)
        digest = sha256_json({"seed": self.seed, "component": component.model_dump(mode="json")})
        return int(digest[:8], 16)

    def trained_location(self, path: Path, component: Any) -> Path:
        """Where a component trained on first use lives: ``path`` plus a hash of everything that
        shapes its weights, so changing the train block, the source or the seed trains anew."""
        if component.train is None:
            return path
        digest = sha256_json({
            "component": component.model_dump(mode="json"),
            "seed": self.train_seed(component),
            "source": self.source.model_dump(mode="json"),
            "image_size": self.image_size,
            "class_names": list(self.class_names),
        })
        return path.with_name(f"{path.stem}-{digest[:12]}{path.suffix}")


GeneratorFactory = Callable[[Any, ComponentContext], Generator]
OracleFactory = Callable[[Any, ComponentContext], Oracle]
ModelLoader = Callable[[str, Any, ComponentContext], Any]

GENERATORS: Registry[GeneratorFactory] = Registry("generator kind")
ORACLES: Registry[OracleFactory] = Registry("oracle kind")
MODELS: Registry[ModelLoader] = Registry("model scheme")
