"""Build static robustness benchmarks for image classifiers (FMR, Zhang et al.).

Heavy libraries (torch, timm, open_clip, datasets) are imported by the modules that
need them, so ``import builder`` and ``build-benchmark --help`` stay fast.
"""

from typing import Any

__version__ = "0.2.3"

__all__ = ["__version__", "score"]


def __getattr__(name: str) -> Any:
    """``builder.score(benchmark, model, ...)`` without importing torch at ``import builder``."""
    if name == "score":
        import importlib

        return importlib.import_module("builder.score")
    raise AttributeError(f"module 'builder' has no attribute {name!r}")
