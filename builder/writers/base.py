"""What a shard holds, and the writer interface. One schema feeds Parquet, tars and the card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from builder import registry
from builder.registry import Registry

#: record columns beside the images: name -> datasets Value dtype ("class_label" for labels)
RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("key", "string"),
    ("label", "class_label"),
    ("class_name", "string"),
    ("source_id", "string"),
    ("reference_model", "string"),
    ("perturbed", "bool"),
    ("steps", "int32"),
    ("stop_reason", "string"),
    ("oracle_prob", "float32"),
    ("pred_before", "int32"),
    ("loss_before", "float32"),
    ("pred_after", "int32"),
    ("loss_after", "float32"),
)


@dataclass(frozen=True)
class OutputSample:
    """One finished sample: encoded images plus its record (keys of RECORD_FIELDS)."""

    key: str
    image: bytes
    original: Optional[bytes]
    record: dict[str, Any]


@dataclass(frozen=True)
class ShardSchema:
    class_names: tuple[str, ...]
    image_format: str  # "png" or "webp"
    keep_originals: bool

    def features(self) -> dict[str, Any]:
        """``datasets.Features.to_dict()`` form of the Parquet columns."""
        features: dict[str, Any] = {"image": {"_type": "Image"}}
        if self.keep_originals:
            features["original_image"] = {"_type": "Image"}
        for name, dtype in RECORD_FIELDS:
            if dtype == "class_label":
                features[name] = {"_type": "ClassLabel", "names": list(self.class_names)}
            else:
                features[name] = {"_type": "Value", "dtype": dtype}
        return features

    def features_yaml(self) -> list[dict[str, Any]]:
        """The same features as a dataset card's ``dataset_info.features`` list."""
        rows: list[dict[str, Any]] = [{"name": "image", "dtype": "image"}]
        if self.keep_originals:
            rows.append({"name": "original_image", "dtype": "image"})
        for name, dtype in RECORD_FIELDS:
            if dtype == "class_label":
                names = {str(i): n for i, n in enumerate(self.class_names)}
                rows.append({"name": name, "dtype": {"class_label": {"names": names}}})
            else:
                rows.append({"name": name, "dtype": dtype})
        return rows


#: the record columns ``verify`` compares across a shard's files
AUDIT_COLUMNS = ("key", "label", "class_name", "perturbed")


class ShardWriter:
    """An output format: its writer and, beside it, its reader (what verify, score, the gallery,
    the preview and other readers of a built benchmark use, whatever formats a build chose).
    Subclass it and register the class in ``WRITERS``; ``audit`` has a default."""

    suffix: str = ""

    def write(self, path: Path, samples: Sequence[OutputSample], schema: ShardSchema) -> None:
        """Write all ``samples`` to ``path`` atomically (temp name, fsync, rename)."""
        raise NotImplementedError

    def read_records(self, path: Path, columns: Sequence[str]) -> list[dict[str, Any]]:
        """The record ``columns`` of every sample, in key order (row i is the i-th key)."""
        raise NotImplementedError

    def read_images(self, path: Path, rows: Sequence[int]) -> list[tuple[bytes, Optional[bytes]]]:
        """(image, original or None) encoded bytes of the samples at ``rows``, in that order."""
        raise NotImplementedError

    def audit(self, path: Path, schema: ShardSchema) -> tuple[list[dict[str, Any]], list[str]]:
        """For verify: the AUDIT_COLUMNS of every sample, and the problems of the file's own
        structure (a sample lacking a part, say); raises whatever reading a damaged file raises."""
        return self.read_records(path, AUDIT_COLUMNS), []


WRITERS: Registry[Callable[[], ShardWriter]] = registry.WRITERS
