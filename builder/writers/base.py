"""What a shard holds, and the writer interface. One schema feeds Parquet, tars and the card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

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


#: the record column of a generator's named parameters (float32 each), when it has any
ATTRIBUTES_FIELD = "attributes"


@dataclass(frozen=True)
class ShardSchema:
    class_names: tuple[str, ...]
    image_format: str  # "png" or "webp"
    keep_originals: bool
    #: the generator's named parameters, recorded per sample as one struct column (none: no column)
    attributes: tuple[str, ...] = ()

    @property
    def record_fields(self) -> tuple[str, ...]:
        """The record columns beside the images, in order."""
        return tuple(name for name, _ in RECORD_FIELDS) + ((ATTRIBUTES_FIELD,) if self.attributes else ())

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
        if self.attributes:
            features[ATTRIBUTES_FIELD] = {name: {"_type": "Value", "dtype": "float32"} for name in self.attributes}
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
        if self.attributes:
            rows.append({"name": ATTRIBUTES_FIELD, "struct": [{"name": name, "dtype": "float32"} for name in self.attributes]})
        return rows


def attributes_of(generator: Any) -> tuple[str, ...]:
    """The named parameters a build with this recipe ``generator`` section (a mapping, as a
    manifest holds it) records per sample: its config class's ``attribute_names()``; () for a
    kind without any, one not known here, or a section that is not a valid one."""
    from pydantic import ValidationError

    if not isinstance(generator, Mapping):
        return ()
    kind = generator.get("kind")
    if not isinstance(kind, str) or kind not in registry.GENERATORS:
        return ()
    config_class = registry.GENERATORS.entry(kind).config
    if config_class is None or not hasattr(config_class, "attribute_names"):
        return ()
    try:
        names: tuple[str, ...] = config_class.model_validate(dict(generator)).attribute_names()
    except ValidationError:
        return ()
    return names


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
