"""Data never names code to run: which specs would run code, and the check that refuses them.

A recipe the user runs is theirs and trusted. A model spec read from a manifest, a result
file or anything downloaded is data: if building it would import or call code (``py:``, or
any model scheme registered with ``runs_code``, such as ``hf:`` with ``trust_remote_code``
or any ``from_pretrained`` kwarg outside its inert loading options), it is refused unless the user
passes ``--trust-remote-code``, as ``datasets`` and ``transformers`` do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from pydantic import BaseModel

from builder.config import ModelSpec
from builder.errors import BuilderError
from builder.paths import in_recipe_dir

TRUST_FLAG = "--trust-remote-code"


class UntrustedCodeError(BuilderError):
    """A spec from data would run code and the user did not say to trust it."""


def runs_code(spec: ModelSpec) -> bool:
    """Whether building ``spec`` imports or calls code its text names (unknown schemes: yes).
    The tool's own architectures (``py:builder.zoo:<name>``) are part of the tool, not data."""
    from builder import zoo
    from builder.registry import MODELS

    scheme, _, target = spec.model.partition(":")
    if scheme == "py" and target.rpartition(":")[0] == zoo.__name__ and target.rpartition(":")[2] in zoo.__all__:
        return False
    if scheme not in MODELS:
        return True
    marked = MODELS.entry(scheme).runs_code
    return bool(marked(spec) if callable(marked) else marked)


def model_specs(config: Any) -> Iterator[ModelSpec]:
    """Every model spec inside a (possibly nested) component config."""
    if isinstance(config, ModelSpec):
        yield config
    elif isinstance(config, BaseModel):
        for name in type(config).model_fields:
            yield from model_specs(getattr(config, name))
    elif isinstance(config, (list, tuple)):
        for item in config:
            yield from model_specs(item)
    elif isinstance(config, dict):  # a mapping of sections (a recipe's generators)
        for item in config.values():
            yield from model_specs(item)


def require_trusted(specs: Iterable[ModelSpec], origin: str, trust_remote_code: bool) -> None:
    """Refuse the first spec from ``origin`` (data, not the user) that would run code."""
    if trust_remote_code:
        return
    for spec in specs:
        if runs_code(spec):
            raise UntrustedCodeError(
                f"{origin} names model '{spec.model[:120]}', which would import and run code; "
                f"nothing was run: pass {TRUST_FLAG} only if you trust where it came from"
            )


def downloaded_roots(cache_dir: Optional[Path] = None) -> list[Path]:
    """Where downloaded files live: the Hugging Face cache, and this tool's cache of downloads
    (https, s3://, ...) and of mirrored benchmarks (``score --benchmark s3://...``)."""
    from huggingface_hub import constants

    from builder.checkpoints import DOWNLOADS
    from builder.paths import default_cache_dir
    from builder.storage import MIRRORS

    cache = (cache_dir or default_cache_dir()).expanduser().resolve()
    return [Path(constants.HF_HUB_CACHE).expanduser().resolve(), cache / DOWNLOADS, cache / MIRRORS]


def code_file(spec: ModelSpec, base_dir: Path) -> Optional[Path]:
    """The file a ``py:<file.py>:<callable>`` spec would execute, resolved (None for modules)."""
    if spec.model.partition(":")[0] != "py":
        return None
    module = spec.model.partition(":")[2].rpartition(":")[0]
    if not module.endswith(".py"):
        return None
    return in_recipe_dir(module, base_dir).resolve()


def downloaded_root_of(path: Path, untrusted_roots: Iterable[Path]) -> Optional[Path]:
    """The download root ``path`` lies in (see :func:`downloaded_roots`), or None for a file of the user's."""
    resolved = Path(path).expanduser().resolve()
    for root in untrusted_roots:
        root = Path(root).resolve()
        if resolved == root or root in resolved.parents:
            return root
    return None


def require_trusted_file(spec: ModelSpec, base_dir: Path, untrusted_roots: Iterable[Path], trust_remote_code: bool) -> None:
    """A ``py:`` file inside a download (a Hub snapshot, a benchmark dir) is data, not the user's code."""
    path = code_file(spec, base_dir)
    if trust_remote_code or path is None:
        return
    root = downloaded_root_of(path, untrusted_roots)
    if root is not None:
        raise UntrustedCodeError(
            f"--model {spec.model[:120]}: {path} lies inside downloaded data ({root}); nothing was run: "
            f"copy the file somewhere you control after reading it, or pass {TRUST_FLAG}"
        )


def require_trusted_spec_file(specs: Iterable[ModelSpec], spec_file: Path, untrusted_roots: Iterable[Path], trust_remote_code: bool,
                              what: str) -> None:
    """Specs read from a YAML file (a model zoo, ``--model FILE.yaml``, a recipe given to
    verify) inside downloaded data are data like a manifest: one that would run code (``py:``,
    ``hf:`` with ``trust_remote_code``) needs the flag. The user's own files are theirs."""
    root = downloaded_root_of(spec_file, untrusted_roots)
    if root is not None:
        require_trusted(specs, f"{what} {spec_file} (inside downloaded data, {root})", trust_remote_code)
