"""Build static robustness benchmarks for image classifiers (FMR, Zhang et al.).

Heavy libraries (torch, timm, open_clip, datasets) are imported by the modules that
need them, so ``import builder`` and ``build-benchmark --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
