"""Generators, oracles and classifiers, each family behind a small Protocol and a Registry."""

# importing the modules registers their kinds
from builder.components import attributes, models, oracles, pixel, vae, vqgan  # noqa: E402,F401
from builder.components.base import (
    GENERATORS,
    MODELS,
    ORACLES,
    Classifier,
    ComponentContext,
    Generator,
    Oracle,
)

__all__ = [
    "GENERATORS",
    "MODELS",
    "ORACLES",
    "Classifier",
    "ComponentContext",
    "Generator",
    "Oracle",
]
