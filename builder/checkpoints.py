"""Locate and safely load weights.

Locations use open_clip-style prefixes: ``hf-hub:org/repo/path/in/repo[@revision]`` (the
Hugging Face cache), ``https://...`` (downloaded once into the cache), ``builtin:`` (files
shipped with this package), ``cache:`` (this tool's cache dir) or a plain path (relative to
the recipe). Torch files always load with ``weights_only=True``; the only pickled globals
allowed are the inert Lightning callback keys of official taming-transformers checkpoints,
mapped onto a stub class, so pytorch_lightning is never imported or executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from builder.errors import BuilderError, CheckpointError, first_line
from builder.fileio import atomic_write, remove_orphaned_temp_files, sha256_file
from builder.paths import in_recipe_dir
from builder.registry import Registry

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "components" / "configs"


@dataclass(frozen=True)
class ResolveContext:
    """What relative locations are relative to."""

    base_dir: Path
    cache_dir: Path


Resolver = Callable[[str, ResolveContext], Path]


@dataclass(frozen=True)
class Found:
    """Where a location's file is, or would come from, found offline (nothing fetched)."""

    path: Optional[Path]  # the local file or where it would be; None until a download
    how: str  # for a dry run: "local file", "in the cache", "downloaded on the first run", ...
    fetchable: bool = False  # not here yet, but the first run downloads it
    local: bool = False  # a file of the user's (a path, builtin:, cache:), not a download's copy

    @property
    def ready(self) -> bool:
        return self.path is not None and self.path.is_file()

    @property
    def missing(self) -> bool:
        """Neither here nor obtainable: a local path that does not exist."""
        return not self.ready and not self.fetchable


Finder = Callable[[str, ResolveContext], Found]


@dataclass(frozen=True)
class LocationScheme:
    """One location prefix: ``fetch`` returns a local path (downloading if need be), ``find``
    says offline what is there and what a fetch would do."""

    fetch: Resolver
    find: Finder


LOCATIONS: Registry[LocationScheme] = Registry("location scheme")
_SCHEME = re.compile(r"^([a-z][a-z0-9+-]*):(?!\\)")


def _found_locally(path: Path) -> Found:
    return Found(path, "local file" if path.is_file() else "missing", local=True)


def _local_scheme(name: str, description: str, place: Resolver) -> None:
    """A scheme whose files are local paths: fetching is placing, finding is looking."""
    LOCATIONS.register(name, description=description)(LocationScheme(place, lambda rest, ctx: _found_locally(place(rest, ctx))))


_local_scheme("builtin", "a file shipped inside this package", lambda rest, ctx: BUILTIN_DIR / rest)
_local_scheme("cache", "a path inside this tool's cache dir", lambda rest, ctx: ctx.cache_dir / rest)


def offline_hint() -> str:
    """The end of a 'not in the HF cache and not downloaded' line: offline, huggingface_hub
    retries every file for about 20 s before it gives up, unless told there is no network."""
    from huggingface_hub import constants

    return "" if constants.HF_HUB_OFFLINE else "; with no network, set HF_HUB_OFFLINE=1 so that this fails at once instead of after retries"


def load_failure_advice(error: BaseException, distribution: str, *, from_hub: bool) -> str:
    """What to do about a model's files that did not become a model: fetching them failed (not
    found, not cached, no network, a malformed repo id), or they were read and the installed
    ``distribution`` cannot build a model from them (a config it does not know)."""
    from importlib.metadata import version

    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    if isinstance(error, (OSError, EntryNotFoundError, HFValidationError)):
        return f"fix the repo id, revision or folder, or run once with network so it is cached{offline_hint() if from_hub else ''}"
    return (f"its files were read but {distribution} {version(distribution)} cannot build a model from them; "
            f"fix its config, or upgrade {distribution} if the model is newer")


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repo, as a location names it."""

    repo_type: str  # "model", "dataset" or "space"
    repo_id: str
    path: str
    revision: Optional[str]


def parse_hf_hub(rest: str) -> HubFile:
    """``org/repo/path/in/repo[@revision]`` (``hf-hub:`` taken off): a file of a model repo."""
    spec, _, revision = rest.partition("@")
    parts = spec.split("/")
    if len(parts) < 3:
        raise CheckpointError(f"hf-hub:{rest}: expected hf-hub:org/repo/path/to/file[@revision]")
    return HubFile("model", "/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def parse_hf_url(rest: str) -> HubFile:
    """``//datasets/org/repo[@revision]/path`` (``hf:`` taken off): huggingface_hub's fsspec form,
    which webdataset and datasets users write; no type prefix is a model repo, and a revision
    with slashes is %-encoded there (``@refs%2Fpr%2F1``)."""
    from urllib.parse import unquote

    parts = rest[2:].split("/") if rest.startswith("//") else []
    repo_type = "model"
    if parts and parts[0] in ("datasets", "spaces"):
        repo_type, parts = parts[0][:-1], parts[1:]
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(f"hf:{rest}: expected hf://datasets/org/repo[@revision]/path/in/repo (or hf://org/repo/... for a model repo)")
    name, _, revision = parts[1].partition("@")
    return HubFile(repo_type, f"{parts[0]}/{name}", "/".join(parts[2:]), unquote(revision) or None)


def _check_repo_id(spec: str, file: HubFile) -> None:
    """A repo id huggingface_hub accepts (it raises a ValueError deep in a download otherwise)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(file.repo_id)
    except HFValidationError as error:
        raise CheckpointError(f"{spec}: '{file.repo_id}' is not a valid Hub repo id ({first_line(error, 160)}); check the location") from None


def _fetch_hub_file(spec: str, file: HubFile) -> Path:
    """The file through the HF cache (with the user's token); each way of failing is one line."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    _check_repo_id(spec, file)
    try:
        return Path(hf_hub_download(file.repo_id, file.path, repo_type=file.repo_type, revision=file.revision))
    except RepositoryNotFoundError:
        raise CheckpointError(f"{spec}: no {file.repo_type} repo {file.repo_id} on the Hub, or it is gated or private "
                              "(log in: HF_TOKEN); check the location") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{spec}: {file.repo_id} has no revision '{file.revision}'; check the location") from None
    except EntryNotFoundError as error:
        if not isinstance(error, LocalEntryNotFoundError):  # the local kind: not cached, and no Hub to ask
            raise CheckpointError(f"{spec}: {file.repo_id} has no file {file.path}; check the location") from None
        raise _unreachable(spec, error) from None
    except (HfHubHTTPError, OSError) as error:
        raise _unreachable(spec, error) from None


def _unreachable(spec: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{spec}: not in the HF cache and the Hub cannot be reached ({type(error).__name__}); "
        f"download it where there is network or give a local path{offline_hint()}"
    )


def _find_hub_file(spec: str, file: HubFile) -> Found:
    from huggingface_hub import try_to_load_from_cache

    _check_repo_id(spec, file)
    cached = try_to_load_from_cache(file.repo_id, file.path, revision=file.revision, repo_type=file.repo_type)
    if isinstance(cached, str):
        return Found(Path(cached), "in the HF cache")
    return Found(None, "downloaded from the Hub on the first run (through the HF cache, with your HF token)", fetchable=True)


def _hub_scheme(name: str, parse: Callable[[str], HubFile], description: str) -> None:
    LOCATIONS.register(name, description=description)(LocationScheme(
        lambda rest, ctx: _fetch_hub_file(f"{name}:{rest}", parse(rest)), lambda rest, ctx: _find_hub_file(f"{name}:{rest}", parse(rest))))


_hub_scheme("hf-hub", parse_hf_hub, "org/repo/path/in/repo[@revision]: a file of a Hub model repo, through the HF cache")
_hub_scheme("hf", parse_hf_url, "hf://datasets/org/repo[@revision]/path: a file of a Hub dataset (or model) repo, through the HF cache")


def _download_name(url: str) -> str:
    """A file name for a URL: its path's last part, or a ``?p=/dir/file`` query's (heibox/seafile links)."""
    from urllib.parse import parse_qs, urlparse

    parsed = urlparse(url)
    query_path = parse_qs(parsed.query).get("p", [""])[0]
    return Path(query_path).name or Path(parsed.path).name or "download"


#: where downloads live inside the cache dir
DOWNLOADS = "downloads"


def cached_download(url: str, cache_dir: Path) -> Path:
    """Where a URL's download lives in the cache (it may not be there yet)."""
    from hashlib import sha256

    return cache_dir / DOWNLOADS / sha256(url.encode()).hexdigest()[:16] / _download_name(url)


def split_pin(url: str) -> tuple[str, Optional[str]]:
    """``URL#sha256=<hex>`` -> (URL, hex): the fragment pins the bytes (it is never sent)."""
    address, _, fragment = url.partition("#")
    if not fragment:
        return url, None
    key, _, digest = fragment.partition("=")
    if key != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CheckpointError(f"{url}: the fragment must be '#sha256=<64 lowercase hex digits>'")
    return address, digest


#: object stores a location may name (``s3://bucket/key``), read through fsspec with the store's
#: usual config: credentials files, ``AWS_ENDPOINT_URL`` and the like
OBJECT_STORES = ("s3", "gs", "gcs", "az", "abfs")
STORE_HINT = "check the bucket, the key, its credentials and the endpoint (fsspec's config, AWS_ENDPOINT_URL)"
HTTP_HINT = "fetch it by hand and give the path"


def _open_http(address: str) -> Any:
    return urllib.request.urlopen(address, timeout=60)


def _open_object(address: str) -> Any:
    from builder.storage import filesystem_of

    fs, path = filesystem_of(address, {})
    if not fs.isfile(path):
        raise CheckpointError(f"{address}: no such object; {STORE_HINT}")
    return fs.open(path, "rb")


def _download(url: str, ctx: ResolveContext, opener: Callable[[str], Any] = _open_http,
              hint: str = HTTP_HINT) -> Path:
    """``url`` (``#sha256=`` pin checked) downloaded once into the cache, whole or not at all."""
    address, pinned = split_pin(url)
    target = cached_download(address, ctx.cache_dir)
    shown = redacted(address)
    if target.is_file():
        if pinned is None or sha256_file(target) == pinned:
            return target
        log.info("%s: the cached copy is not the pinned one (sha256 %s): downloading it again", shown, pinned)
    else:
        log.info("downloading %s", shown)
    remove_orphaned_temp_files(target.parent)  # a download killed before could not clean up
    try:
        with opener(address) as response, atomic_write(target) as handle:
            digest, received = hashlib.sha256(), 0
            while block := response.read(1 << 20):
                handle.write(block)
                digest.update(block)
                received += len(block)
            expected = _announced_size(response)
            if expected is not None and received != expected:  # http.client ends a cut connection quietly
                raise CheckpointError(f"{shown}: the download was cut short ({received} of {expected} bytes; nothing was kept); run again")
            if pinned is not None and digest.hexdigest() != pinned:
                raise CheckpointError(
                    f"{shown}: downloaded bytes have sha256 {digest.hexdigest()}, the recipe pins {pinned}; "
                    "the file changed upstream or the pin is wrong (nothing was kept)"
                )
    except BuilderError:
        raise
    except Exception as error:  # noqa: BLE001 - urllib's, http.client's and every store's own errors
        raise CheckpointError(f"{shown}: download failed ({_reason(error)}); {hint}") from None
    log.info("downloaded %s (sha256 %s)", target.name, digest.hexdigest())
    return target


def _announced_size(response: Any) -> Optional[int]:
    """The size a response announced: HTTP's Content-Length (urllib does not decompress, so it
    counts the bytes read), or an object-store file's size; None when unknown."""
    headers = getattr(response, "headers", None)
    length = headers.get("Content-Length") if headers is not None else None
    if length is not None and str(length).strip().isdigit():
        return int(length)
    size = getattr(response, "size", None)
    return size if isinstance(size, int) else None


#: query parameters that carry credentials (presigned URLs, tokens): never logged or shown
_SECRET_PARAMETER = re.compile(r"(signature|token|credential|secret|password|passwd|auth|key|sig)", re.IGNORECASE)


def redacted(url: str) -> str:
    """``url`` fit for a log line or a message: a user and password, and the values of query
    parameters that carry credentials (``X-Amz-Signature``, ``token``, ...), replaced by '***'."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if "@" not in parts.netloc and not any(_SECRET_PARAMETER.search(key) for key, _ in pairs):
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(key, "***" if _SECRET_PARAMETER.search(key) else value) for key, value in pairs], safe="/*")
    return urlunsplit((parts.scheme, ("***@" if "@" in parts.netloc else "") + netloc, parts.path, query, parts.fragment))


def _find_download(url: str, ctx: ResolveContext) -> Found:
    address, pinned = split_pin(url)
    target = cached_download(address, ctx.cache_dir)
    if target.is_file():
        if pinned is None:
            return Found(target, "in the cache")
        if sha256_file(target) == pinned:
            return Found(target, "in the cache, sha256 checked")
        return Found(None, "in the cache with another sha256 than the pin: downloaded again on the first run, sha256 checked", fetchable=True)
    how = "downloaded on the first run" + (", sha256 checked" if pinned else " (not pinned: append #sha256=<hex> to check it)")
    return Found(None, how, fetchable=True)


def _url_scheme(scheme: str, opener: Callable[[str], Any] = _open_http, hint: str = HTTP_HINT) -> LocationScheme:
    return LocationScheme(
        lambda rest, ctx: _download(f"{scheme}:{rest}", ctx, opener, hint), lambda rest, ctx: _find_download(f"{scheme}:{rest}", ctx)
    )


for _scheme in ("http", "https"):
    LOCATIONS.register(_scheme, description="downloaded once into the cache")(_url_scheme(_scheme))
for _scheme in OBJECT_STORES:
    LOCATIONS.register(_scheme, description="an object store's object (fsspec, the store's usual credentials), downloaded once into the cache")(
        _url_scheme(_scheme, _open_object, STORE_HINT))


def scheme_of(spec: str) -> Optional[str]:
    """The scheme a location names (``https``, ``hf-hub``, ``cache``...), or None for a plain path."""
    match = _SCHEME.match(spec)
    return match.group(1) if match and len(match.group(1)) > 1 else None  # one letter is a Windows drive


def _split(spec: str) -> tuple[Optional[LocationScheme], str]:
    """(the scheme of ``spec``, the rest), or (None, spec) for a plain path."""
    scheme = scheme_of(spec)
    return (LOCATIONS.get(scheme), spec[len(scheme) + 1 :]) if scheme is not None else (None, spec)


def _plain(spec: str, ctx: ResolveContext) -> Path:
    return in_recipe_dir(spec, ctx.base_dir)


def fetch_location(spec: str, ctx: ResolveContext) -> Path:
    """A location string -> local path, downloading what is not cached (a ``cache:`` target
    may not exist yet: trainers write there)."""
    scheme, rest = _split(spec)
    return scheme.fetch(rest, ctx) if scheme is not None else _plain(spec, ctx)


def find_location(spec: str, ctx: ResolveContext) -> Found:
    """What :func:`fetch_location` would give, found offline: nothing is downloaded."""
    scheme, rest = _split(spec)
    return scheme.find(rest, ctx) if scheme is not None else _found_locally(_plain(spec, ctx))


# ----------------------------------------------------------------------------- loading


class LightningCallbackKey:
    """Stands in for Lightning callback classes that official checkpoints use as dict keys."""


ALLOWED_GLOBALS: list[tuple[Any, str]] = [
    (LightningCallbackKey, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (LightningCallbackKey, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
]


REREAD = "re-download it or save it again"


def _reason(error: BaseException) -> str:
    """The first sentence of an exception's first line, short enough for a one-line message."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    text = lines[0].split(". ")[0].rstrip(".:")
    return text if len(text) <= 200 else text[:197] + "..."


def _unsafe_globals(path: Path, error: BaseException) -> list[str] | None:
    """The pickled globals a checkpoint needs, when ``error`` is torch refusing them; None when
    the file is not a torch checkpoint at all."""
    import torch

    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: read the refusal's own message
        needed = re.findall(r"GLOBAL ([\w.]+)", str(error))
    return list(needed) or None


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a user's file: any way it fails to parse is one line."""
    import torch

    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = _unsafe_globals(path, error)
        if needed is None:
            raise CheckpointError(
                f"cannot read checkpoint {path}: not a torch checkpoint (its pickle is malformed); {REREAD} with torch.save"
            ) from None
        raise CheckpointError(
            f"refusing to load {path}: it needs {', '.join(needed[:3])}, which weights_only=True does not allow; "
            "convert it to .safetensors from a trusted copy"
        ) from None
    except EOFError:
        raise CheckpointError(f"cannot read checkpoint {path}: it ends too early (truncated?); {REREAD}") from None
    except MemoryError:
        raise CheckpointError(f"cannot read checkpoint {path}: it claims more memory than there is (corrupt?); {REREAD}") from None
    except Exception as error:  # noqa: BLE001 - a corrupt file can make torch's parser raise anything
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(error)}; {REREAD}") from None


def _tensor_kind(tensor: Any) -> str:
    if tensor.is_complex():
        return "complex"
    if tensor.is_floating_point():
        return "float"
    return "bool" if str(tensor.dtype) == "torch.bool" else "integer"


def _tensor_dict(payload: Any, path: Path) -> dict[str, Any]:
    import torch

    for key in ("state_dict", "model", "module"):
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    fix = "save model.state_dict() (a dict of named tensors)"
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict; {fix}")
    if not payload:
        raise CheckpointError(f"checkpoint {path} holds an empty dict, no weights; {fix}")
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors; {fix}")
    for key, tensor in tensors.items():
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint {path} has a tensor under the key {key!r}, not a name; {fix}")
        if tensor.layout != torch.strided:
            raise CheckpointError(f"checkpoint {path}: '{key}' is a {tensor.layout} tensor, not a dense one; {fix}")
    return without_data_parallel_prefix(tensors)


def without_data_parallel_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """The names without the ``module.`` that ``nn.DataParallel`` puts before each, whatever the
    file format (a pickle or a ``.safetensors`` saved from the wrapped model)."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_dict(path: Path, *, cache_dir: Path | None = None, what: str = "checkpoint") -> dict[str, Any]:
    """Tensors of a ``.safetensors`` or torch checkpoint; pickles get a safetensors copy cached."""
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a file; name the checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}; check the path or train it first")
    try:
        empty = path.stat().st_size == 0
        digest = sha256_file(path) if cache_dir and path.suffix != ".safetensors" else None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or _reason(error)}; check its permissions") from None
    if empty:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes); {REREAD}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    cached = cache_dir / "safetensors" / f"{digest}.safetensors" if cache_dir else None
    if cached is not None and cached.is_file():
        return _load_safetensors(cached)
    state = _tensor_dict(_torch_load(path), path)
    if cached is not None:
        _save_safetensors(state, cached)
    return state


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - SafetensorError, or whatever a corrupt header makes it raise
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(error)}; {REREAD}") from None
    if not state:
        raise CheckpointError(f"checkpoint {path} holds no tensors; save model.state_dict() (a dict of named tensors)")
    return without_data_parallel_prefix(state)


def _save_safetensors(state: Mapping[str, Any], path: Path) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().clone().contiguous() for k, v in state.items()})
    with atomic_write(path) as handle:
        handle.write(data)


def save_state_dict(state: Mapping[str, Any], path: Path) -> None:
    """Write weights atomically as ``.safetensors`` (or a plain torch file for other suffixes)."""
    if path.suffix == ".safetensors":
        _save_safetensors(state, path)
        return
    import torch

    with atomic_write(path) as handle:
        torch.save(dict(state), handle)


#: the first tool version whose ``reference_weights_sha256`` is :func:`weights_fingerprint`'s
#: (before it, the persistent weights' alone: :func:`persistent_weights_fingerprint`)
FUNCTION_FINGERPRINT_SINCE = (0, 2, 1)
#: the first tool version whose fingerprint covers a spec's ``kwargs`` (before it, none did)
KWARGS_FINGERPRINT_SINCE = (0, 2, 2)


def persistent_weights_fingerprint(module: Any) -> str:
    """sha256 of a module's persistent parameters and buffers only: what builds before
    :data:`FUNCTION_FINGERPRINT_SINCE` recorded, so their white-box label still reads right."""
    return _tensors_digest(dict(module.state_dict()), [])


#: the attribute of a loaded model holding its spec's ``kwargs``, read by :func:`weights_fingerprint`
FINGERPRINT_KWARGS = "fingerprint_kwargs"


def weights_fingerprint(module: Any, kwargs: Optional[Mapping[str, Any]] = None) -> str:
    """sha256 of what a model computes from its input: its parameters and every buffer (names,
    dtypes, shapes, values), non-persistent ones too (the normalisation, the outputs a label map
    keeps, the groups classes are pooled in), the text of each submodule's
    ``fingerprint_text()`` (the preprocessing's size, crop and interpolation), and its spec's
    ``kwargs`` (given, else kept by the module as :data:`FINGERPRINT_KWARGS`): timm's
    ``global_pool: max`` over the same weights is another function. A score calls a model
    white-box on a benchmark when this matches the reference model's: the same weights behind
    other preprocessing, another label map or other kwargs were called white-box. Empty kwargs
    add nothing, so fingerprints recorded before kwargs counted still match."""
    tensors = dict(module.state_dict())
    tensors.update({name: buffer for name, buffer in module.named_buffers() if name not in tensors and buffer is not None})
    texts = [f"{name}:{text()}" for name, sub in module.named_modules() if callable(text := getattr(sub, "fingerprint_text", None))]
    if kwargs is None:
        kwargs = next((kept for sub in module.modules() if (kept := getattr(sub, FINGERPRINT_KWARGS, None)) is not None), None)
    if kwargs:
        texts.append(f"kwargs:{json.dumps(dict(kwargs), sort_keys=True, separators=(',', ':'), default=str)}")
    return _tensors_digest(tensors, texts)


def _tensors_digest(tensors: dict[str, Any], texts: list[str]) -> str:
    import hashlib

    import torch

    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
    for name, tensor in sorted(tensors.items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update((value.float() if value.dtype == torch.bfloat16 else value).numpy().tobytes())
    return digest.hexdigest()


def load_weights(
    module: Any, state: Mapping[str, Any], *, path: Path, what: str, ignore_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``module`` strictly, failing with the first mismatch named."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    for key, tensor in own.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{what} checkpoint {path} does not fit the model: '{key}' is "
                f"{tuple(state[key].shape)} in the file but {tuple(tensor.shape)} in the model; "
                "check the model config and num_classes"
            )
        if key in state and _tensor_kind(state[key]) != _tensor_kind(tensor):  # float16 for float32 is fine
            raise CheckpointError(
                f"{what} checkpoint {path} does not fit the model: '{key}' is "
                f"{str(state[key].dtype).removeprefix('torch.')} in the file but {str(tensor.dtype).removeprefix('torch.')} "
                "in the model; save the model's own state_dict()"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        example = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(
            f"{what} checkpoint {path} does not fit the model: {len(missing)} missing and "
            f"{len(unexpected)} unexpected weights ({example}); check the model config"
        )
    module.load_state_dict(state, strict=True)
