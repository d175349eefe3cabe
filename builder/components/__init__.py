"""Generators, oracles and classifiers, each family behind a small Protocol and a Registry."""

from builder.components.base import (
    GENERATORS,
    MODELS,
    ORACLES,
    Classifier,
    ComponentContext,
    Generator,
    Oracle,
)

# importing the modules registers their kinds
from builder.components import models, oracles, pixel, vqgan  # noqa: E402,F401

__all__ = [
    "GENERATORS",
    "MODELS",
    "ORACLES",
    "Classifier",
    "ComponentContext",
    "Generator",
    "Oracle",
]
