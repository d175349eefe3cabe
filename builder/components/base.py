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

    @property
    def locations(self) -> ResolveContext:
        return ResolveContext(self.base_dir, self.cache_dir)


GeneratorFactory = Callable[[Any, ComponentContext], Generator]
OracleFactory = Callable[[Any, ComponentContext], Oracle]
ModelLoader = Callable[[str, Any, ComponentContext], Any]

GENERATORS: Registry[GeneratorFactory] = Registry("generator kind")
ORACLES: Registry[OracleFactory] = Registry("oracle kind")
MODELS: Registry[ModelLoader] = Registry("model scheme")
