"""Sources: where test images and labels come from. Each kind registers in ``SOURCES``."""

from builder.sources.base import SOURCES, Source, SourceItem, open_source

# importing the modules registers their kinds
from builder.sources import digits, huggingface, imagefolder, webdataset_source  # noqa: E402,F401

__all__ = ["SOURCES", "Source", "SourceItem", "open_source"]
