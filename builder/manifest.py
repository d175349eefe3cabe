"""The benchmark manifest: its file names and its one typed shape, used to read it from disk.

A manifest is data someone else may have written (a downloaded or hand-edited benchmark), so
reading it checks every field the tools rely on, bounds its size and depth, and refuses any
file path that would lead outside the benchmark dir. Nothing in it is ever run as code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from builder.errors import BuilderError, first_line
from builder.registry import WRITERS

MANIFEST = "manifest.json"
CARD = "README.md"
REJECTS = "rejects.jsonl"
PREVIEW = "preview.png"
GALLERY = "gallery.html"
LEADERBOARD = "leaderboard.json"
STATS_DIR = "_stats"
MANIFEST_FORMAT = "fmr-benchmark/1"
#: files at the top of a benchmark dir that the tool writes (replaced atomically)
FINAL_FILES = (MANIFEST, CARD, PREVIEW, REJECTS, GALLERY, LEADERBOARD)

MAX_MANIFEST_BYTES = 256 << 20
MAX_JSON_DEPTH = 64
#: a config name is also a directory name: one safe path component
CONFIG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ManifestError(BuilderError):
    """A manifest cannot be read, or says something that cannot be true."""


class _Strict(BaseModel):
    """Types are checked strictly (a count written as "5" is an error); extra keys are fine."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class ManifestFile(_Strict):
    path: str
    sha256: str
    bytes: int


class ManifestShard(_Strict):
    num_samples: int
    num_perturbed: int
    files: dict[str, ManifestFile]


class ManifestReference(_Strict):
    """The reference model's spec, as recorded (checked again as a ModelSpec before any use)."""

    model: str = Field(max_length=4096)


class ManifestKind(_Strict):
    kind: str = "unknown"


class ManifestGenerator(ManifestKind):
    """A config's own generator (several-generator builds): its name in the recipe and its config."""

    name: str = Field(max_length=64)


class ManifestConfig(_Strict):
    num_samples: int = Field(ge=0)
    num_perturbed: int = Field(ge=0)
    shards: list[ManifestShard]
    reference_model: ManifestReference
    #: absent in one-generator builds: the recipe's generator made every config
    generator: Optional[ManifestGenerator] = None
    reference_weights_sha256: Optional[str] = None
    perturbed_share: float = 0.0
    mean_steps: float = 0.0
    sa: float = 0.0
    pa: float = 0.0
    pa_perturbed: float = 0.0
    pa_all: Optional[float] = None  # only in manifests written before pa was renamed: see builder.metrics.upgrade_figures
    fmr: float = 0.0
    num_non_finite: int = 0


class ManifestPerturbation(_Strict):
    step_size: float = 0.0
    budget: int = 0
    direction: str = "sign"


class ManifestOutput(_Strict):
    image_encoding: Literal["png", "webp"] = "png"
    keep_originals: bool = True


class ManifestRecipe(_Strict):
    """The recorded recipe: what readers of a benchmark use of it (all of it is kept)."""

    name: str = "benchmark"
    description: str = ""
    license: str = "unknown"
    source_citation: str = ""
    image_size: int = Field(gt=0, le=16384)
    seed: int = 0
    source: dict[str, Any]
    #: one of the two, as the recipe had it (see ``Recipe.generators``)
    generator: Optional[ManifestKind] = None
    generators: Optional[dict[str, ManifestKind]] = None
    oracle: ManifestKind = ManifestKind()
    perturbation: ManifestPerturbation = ManifestPerturbation()
    output: ManifestOutput = ManifestOutput()


    def as_recorded(self) -> dict[str, Any]:
        """The recipe as the manifest holds it (the generator section it did not have left out)."""
        return self.model_dump(mode="json", exclude={key for key in ("generator", "generators") if getattr(self, key) is None})


class ManifestTool(_Strict):
    name: str = "fmr-builder"
    version: str = "unknown"


class Manifest(_Strict):
    format: str
    id: str
    recipe: ManifestRecipe
    recipe_sha256: str
    split: str
    class_names: list[str] = Field(min_length=1)
    source_samples: int = Field(ge=0)
    num_rejects: int = Field(ge=0)
    configs: dict[str, ManifestConfig] = Field(min_length=1)
    tool: ManifestTool = ManifestTool()
    device: str = "unknown"
    seed: int = 0

    @model_validator(mode="after")
    def _paths_stay_inside(self) -> "Manifest":
        for name, config in self.configs.items():
            if not CONFIG_NAME.match(name):
                raise ValueError(f"config name {name[:40]!r} is not one safe path component")
            for shard in config.shards:
                for fmt, entry in shard.files.items():
                    problem = shard_path_problem(entry.path, name, fmt)
                    if problem:
                        raise ValueError(f"configs.{name}: {problem}")
        return self


def generator_of(raw: dict[str, Any], config: str) -> dict[str, Any]:
    """The generator config (as recorded) that made ``config`` of the raw manifest ``raw``:
    the config's own, in a several-generator build, else the recipe's."""
    entry = raw.get("configs", {}).get(config, {})
    own = entry.get("generator") if isinstance(entry, dict) else None
    if isinstance(own, dict):
        return {key: value for key, value in own.items() if key != "name"}
    found = raw.get("recipe", {}).get("generator")
    return found if isinstance(found, dict) else {}


def shard_path_problem(path: str, config: str, fmt: str) -> Optional[str]:
    """Why ``path`` cannot be a shard file of ``config`` in format ``fmt`` (None if it can)."""
    pure = PurePosixPath(path)
    if "\\" in path or "\x00" in path or pure.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        return f"file path {path[:80]!r} leads outside the benchmark dir"
    if len(pure.parts) != 2 or pure.parts[0] != config:
        return f"file path {path[:80]!r} is not a file directly inside the config dir {config}/"
    suffix = WRITERS.get(fmt).suffix if fmt in WRITERS else None  # what the format's shard files end with
    if suffix is not None and pure.suffix != suffix:
        return f"the {fmt} file {path[:80]!r} does not end with {suffix}"
    return None


def json_depth_ok(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Nesting depth of JSON text at most ``limit`` (counted outside strings), before parsing:
    ``json`` recurses once per level and a hostile file can nest a million."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def load_json_bounded(path: Path, what: str, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Any:
    """Parse a JSON file written by someone else: bounded size and depth, one-line errors."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ManifestError(f"{what}: {size} bytes is more than the {max_bytes} a manifest may have; rebuild it")
        data = path.read_bytes()
    except OSError as error:
        raise ManifestError(f"{what}: cannot read it ({error.strerror or error}); check the path and permissions") from None
    return parse_json_bounded(data, what)


def parse_json_bounded(data: bytes, what: str) -> Any:
    """Parse JSON bytes written by someone else (already bounded in size): bounded depth, one-line errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{what}: not UTF-8 text; rebuild it") from None
    if not json_depth_ok(text):
        raise ManifestError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels; rebuild it")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError) as error:  # ValueError: an integer of too many digits
        raise ManifestError(f"{what}: not valid JSON ({first_line(error, 120)}); rebuild it") from None


def validation_problem(error: ValidationError) -> str:
    """The first problem of a failed validation, as ``<key path>: <message>``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "<top level>"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message} ({error.error_count()} problem(s))"


def parse_manifest(raw: Any, what: str) -> Manifest:
    """The typed manifest of ``raw`` (already-parsed JSON); a one-line ManifestError otherwise."""
    if not isinstance(raw, dict) or not str(raw.get("format", "")).startswith("fmr-benchmark/"):
        raise ManifestError(f"{what} is not a benchmark manifest (no 'format: fmr-benchmark/...'); give a dir written by 'build-benchmark run'")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        raise ManifestError(f"{what}: {validation_problem(error)}; rebuild it") from None
