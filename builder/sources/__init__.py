"""Sources: where test images and labels come from. Each kind registers in ``SOURCES``."""

# importing the modules registers their kinds
from builder.sources import digits, huggingface, imagefolder, webdataset_source  # noqa: F401
from builder.sources.base import SOURCES, Source, SourceItem, open_source

__all__ = ["SOURCES", "Source", "SourceItem", "open_source"]
