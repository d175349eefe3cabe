"""A continuous-latent generator: a ``diffusers`` ``AutoencoderKL`` (the autoencoder of Stable
Diffusion and its successors).

The latent b is the posterior mean, scaled as the model's config says:
``(mean - shift_factor) * scaling_factor``, so one step of ``perturbation.step_size`` means the
same on every VAE of a family. Decoding undoes the scaling and maps the output to [0, 1].
Pretrained weights come from a Hub id (``model``, with ``subfolder`` and ``revision``) or a
local ``save_pretrained`` dir; for domains without weights, ``architecture`` plus ``checkpoint``
(and a ``train`` block) make a small one, trained by ``build-benchmark train generator``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import Field, model_validator

from builder.checkpoints import ResolveContext, fetch_location, load_state_dict, load_weights, offline_hint
from builder.components.base import GENERATORS, ComponentContext, image_size_cap_problem
from builder.config import Frozen, GeneratorConfig, TrainConfig
from builder.errors import BuilderError, CheckpointError, ComponentError, first_line
from builder.preflight import Check, PreflightContext, Weights, size_checks

log = logging.getLogger(__name__)

#: a Hub repo id: ``org/name``
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_LEVELS = 8
MAX_CHANNELS = 4096
CONFIG_FILE = "config.json"
#: location prefixes a ``model`` dir may use (never a download: a Hub id says that)
LOCAL_SCHEMES = ("cache:", "builtin:")


class VAEArchitecture(Frozen):
    """The ``AutoencoderKL`` constructor arguments of a VAE trained here (diffusers' names)."""

    block_out_channels: tuple[int, ...] = Field((32, 64), min_length=1, max_length=MAX_LEVELS)
    layers_per_block: int = Field(1, ge=1, le=8)
    latent_channels: int = Field(4, ge=1, le=256)
    norm_num_groups: int = Field(8, ge=1, le=MAX_CHANNELS)
    mid_block_add_attention: bool = True
    scaling_factor: float = Field(1.0, gt=0, le=1000, allow_inf_nan=False)

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> "VAEArchitecture":
        for channels in self.block_out_channels:
            if not 1 <= channels <= MAX_CHANNELS or channels % self.norm_num_groups:
                raise ValueError(f"block_out_channels {list(self.block_out_channels)}: each must be a multiple of "
                                 f"norm_num_groups ({self.norm_num_groups}) from 1 to {MAX_CHANNELS}")
        return self

    def kwargs(self) -> dict[str, Any]:
        levels = len(self.block_out_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * levels,
            "up_block_types": ("UpDecoderBlock2D",) * levels,
            **self.model_dump(),
        }


class VAETrainConfig(TrainConfig):
    """Training of a VAE from scratch: reconstruction (L1 + L2) plus ``kl_weight`` times the KL term."""

    kl_weight: float = Field(1e-4, ge=0, le=1, allow_inf_nan=False)


class VAEConfig(GeneratorConfig):
    #: a Hub id (``org/name``) or a local ``save_pretrained`` dir (relative to the recipe)
    model: Optional[str] = None
    subfolder: Optional[str] = None
    revision: Optional[str] = None
    #: or: a VAE built here, its weights in ``checkpoint`` (made by ``train`` when missing)
    architecture: Optional[VAEArchitecture] = None
    checkpoint: Optional[str] = None
    train: Optional[VAETrainConfig] = None
    mask: Optional[str] = None  # a file from `build-benchmark fit-mask`: perturb only those latent dims

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> "VAEConfig":
        if (self.model is None) == (self.architecture is None):
            raise ValueError("give either model (a Hub id or a diffusers dir) or architecture (a VAE built here), not both or neither")
        if self.model is not None and (self.checkpoint is not None or self.train is not None):
            raise ValueError("checkpoint and train go with architecture; a pretrained model brings its own weights")
        if self.architecture is not None and (self.subfolder is not None or self.revision is not None):
            raise ValueError("subfolder and revision go with model (a Hub id or a diffusers dir)")
        return self

    def image_size_problem(self, image_size: int, locations: ResolveContext) -> str | None:
        """Why this VAE cannot take ``image_size`` px images; may fetch its config.json."""
        return downsampling_problem(block_out_channels(self, locations), image_size, self.model or "architecture")


def downsampling_problem(channels: tuple[int, ...], image_size: int, what: str) -> str | None:
    """The encoder halves each side once per level after the first."""
    factor = 2 ** (len(channels) - 1)
    if image_size % factor == 0:
        return None
    lower, upper = max(factor, image_size // factor * factor), (image_size // factor + 1) * factor
    return (f"image_size {image_size}: the VAE of {what} downsamples by {factor} (2**(len(block_out_channels)-1)), "
            f"so the size must be a multiple of {factor}; use {lower} or {upper}")


def _local_dir(config: VAEConfig, locations: ResolveContext) -> Optional[Path]:
    """The diffusers dir ``model`` names on disk (with ``subfolder``), None for a Hub id."""
    model = config.model or ""
    path = fetch_location(model, locations) if model.startswith(LOCAL_SCHEMES) else Path(model).expanduser()
    path = path if path.is_absolute() else locations.base_dir / path
    if path.is_dir():
        return path / config.subfolder if config.subfolder else path
    if HUB_ID.match(model):
        return None
    raise ComponentError(f"generator model {model!r}: no such directory, and not a Hub id (org/name); fix generator.model")


def _hub_config(config: VAEConfig, download: bool) -> Optional[Path]:
    """config.json of a Hub VAE: from the HF cache, or downloaded when ``download``."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, filename = config.model or "", f"{config.subfolder}/{CONFIG_FILE}" if config.subfolder else CONFIG_FILE
    cached = try_to_load_from_cache(repo, filename, revision=config.revision)
    if isinstance(cached, str) or not download:
        return Path(cached) if isinstance(cached, str) else None
    try:
        return Path(hf_hub_download(repo, filename, revision=config.revision))
    except Exception as error:  # noqa: BLE001 - huggingface_hub raises many kinds for "cannot fetch"
        raise CheckpointError(f"generator model {repo}: cannot fetch {filename} ({type(error).__name__}); "
                              f"download it where there is network, or give a local diffusers dir{offline_hint()}") from None


def read_vae_config(path: Path) -> dict[str, Any]:
    """A diffusers AutoencoderKL config.json, the fields this tool relies on checked."""
    from builder.manifest import load_json_bounded

    if not path.is_file():
        raise ComponentError(f"generator config not found: {path}; give a dir written by AutoencoderKL.save_pretrained")
    try:
        data = load_json_bounded(path, f"generator config {path}", max_bytes=1 << 20)
    except BuilderError as error:
        raise ComponentError(str(error).replace("rebuild it", "fix the file")) from None
    channels = data.get("block_out_channels") if isinstance(data, dict) else None
    if not (isinstance(channels, list) and 1 <= len(channels) <= MAX_LEVELS and all(isinstance(c, int) for c in channels)):
        raise ComponentError(f"generator config {path}: block_out_channels must be a list of 1 to {MAX_LEVELS} integers; "
                             "give an AutoencoderKL config.json")
    if data.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ComponentError(f"generator config {path}: it describes a {data.get('_class_name')!r}, not an AutoencoderKL; "
                             "point generator.model (and subfolder) at the VAE")
    return data


def block_out_channels(config: VAEConfig, locations: ResolveContext, download: bool = True) -> tuple[int, ...]:
    """The VAE's levels, from its architecture or its config.json."""
    return vae_layout(config, locations, download)[0]


def vae_layout(config: VAEConfig, locations: ResolveContext, download: bool = True) -> tuple[tuple[int, ...], int]:
    """The VAE's levels and its latent's channels, from its architecture or its config.json
    (diffusers' default of 4 latent channels where the file names none)."""
    if config.architecture is not None:
        return config.architecture.block_out_channels, config.architecture.latent_channels
    local = _local_dir(config, locations)
    path = local / CONFIG_FILE if local is not None else _hub_config(config, download)
    if path is None:
        raise ComponentError(f"generator model {config.model}: its config.json is not in the HF cache")
    data = read_vae_config(path)
    latent = data.get("latent_channels", 4)
    if not (isinstance(latent, int) and not isinstance(latent, bool) and 1 <= latent <= 256):
        raise ComponentError(f"generator config {path}: latent_channels {latent!r} must be an integer from 1 to 256; "
                             "give an AutoencoderKL config.json")
    return tuple(data["block_out_channels"]), latent


class VAEGenerator:
    """g(x, b) on [0, 1] images; b0 is the scaled posterior mean of x."""

    def __init__(self, model: Any, mask: Optional[torch.Tensor] = None) -> None:
        self.model = model
        self.mask = mask
        self.scale = float(model.config.scaling_factor or 1.0)
        self.shift = float(getattr(model.config, "shift_factor", None) or 0.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.model.encode(images * 2 - 1).latent_dist.mean
        return (mean - self.shift) * self.scale

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        decoded = self.model.decode(latent / self.scale + self.shift).sample
        return ((decoded + 1) / 2).clamp(0, 1)


#: the largest VAE this tool builds from an architecture; counted on the meta device first
MAX_PARAMETERS = 2_000_000_000


def build_autoencoder(architecture: VAEArchitecture) -> Any:
    """An untrained AutoencoderKL of ``architecture``, its size checked before allocating it."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        probe: Any = AutoencoderKL(**architecture.kwargs())
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS:
        raise ComponentError(f"generator architecture describes a VAE with {count:.3g} parameters, more than the "
                             f"{MAX_PARAMETERS:.0e} this tool builds; use fewer or narrower block_out_channels")
    return AutoencoderKL(**architecture.kwargs())


def _pretrained(config: VAEConfig, ctx: ComponentContext) -> Any:
    """A pretrained AutoencoderKL from a local dir or the Hub (safetensors only: no pickles run)."""
    from diffusers import AutoencoderKL

    local = _local_dir(config, ctx.locations)
    where = str(local) if local is not None else config.model
    block_out_channels(config, ctx.locations)  # its config.json checked before diffusers reads it
    try:
        if local is not None:
            return AutoencoderKL.from_pretrained(local, use_safetensors=True)
        return AutoencoderKL.from_pretrained(config.model, subfolder=config.subfolder, revision=config.revision, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as error:
        raise CheckpointError(f"generator model {where}: cannot load it as an AutoencoderKL ({first_line(error, 160)}); "
                              "give a dir written by save_pretrained (with safetensors weights) or a Hub id") from None


def _built(config: VAEConfig, ctx: ComponentContext) -> Any:
    """A VAE of the recipe's architecture with the weights of its checkpoint."""
    if config.architecture is None:
        raise ComponentError("generator: give architecture or model")
    model = build_autoencoder(config.architecture)
    if config.checkpoint is None:
        log.warning("generator has no checkpoint: random weights (only useful for timing)")
        return model
    path = ctx.trained_location(fetch_location(config.checkpoint, ctx.locations), config)
    load_weights(model, load_state_dict(path, cache_dir=ctx.cache_dir, what="generator checkpoint"), path=path, what="generator")
    return model


def vae_preflight(config: VAEConfig, ctx: PreflightContext, where: str) -> list[Check]:
    """Where the VAE comes from and the image sizes its downsampling takes; nothing downloaded."""
    item = f"{where} model"
    try:
        if config.architecture is not None:
            checks = [Check(f"{where} architecture", f"block_out_channels {list(config.architecture.block_out_channels)}, "
                                                     f"latent_channels {config.architecture.latent_channels}")]
        elif _local_dir(config, ctx) is not None:
            checks = [Check(item, f"{config.model}: local diffusers dir")]
        elif _hub_config(config, download=False) is not None:
            checks = [Check(item, f"{config.model}: config in the HF cache (weights downloaded on the first run unless cached)")]
        else:
            checks = [Check(item, f"{config.model}: downloaded from the Hub on the first run")]
            return checks + size_checks(config, ctx.image_size, image_size_cap_problem, "the downsampling factor is checked once fetched")
        channels, latent_channels = vae_layout(config, ctx, download=False)
    except BuilderError as error:
        return [Check(item, config.model or "architecture", f"{item}: {error}")]

    def problem(size: int) -> str | None:
        return image_size_cap_problem(size) or downsampling_problem(channels, size, config.model or "architecture")

    from builder.sparse import mask_shape_checks

    factor = 2 ** (len(channels) - 1)
    checks += size_checks(config, ctx.image_size, problem, f"a multiple of f{factor}")
    return mask_shape_checks(config, ctx, where, checks, lambda size: (latent_channels, size // factor, size // factor))


def vae_weights(config: VAEConfig, where: str) -> list[Weights]:
    """A VAE built here reads its checkpoint; a pretrained one is checked by the preflight, and
    its folder, when it is a local one, is fingerprinted."""
    if config.architecture is None:
        return [Weights(f"{where} folder", config.model, config, kind="folder")] if config.model else []
    return [Weights(f"{where} weights", config.checkpoint, config, config.train is not None and config.checkpoint is not None)]


def train_vae(config: VAEConfig, ctx: ComponentContext, out: Path) -> None:
    """Train the recipe's VAE architecture: L1 + L2 reconstruction of a posterior sample plus
    ``kl_weight`` times the KL divergence to N(0, I); writes a safetensors state dict."""
    from torch.nn import functional as F

    from builder.checkpoints import save_state_dict
    from builder.train import fit, load_training_data, seeded

    if config.architecture is None:
        raise ComponentError("generator: a pretrained VAE (model) is not trained here; give architecture and checkpoint")
    train = config.train or VAETrainConfig()
    size = train.image_size or ctx.image_size
    problem = image_size_cap_problem(size) or downsampling_problem(config.architecture.block_out_channels, size, "architecture")
    if problem:  # checked before reading a single training image
        raise ComponentError(f"{'generator train.' if train.image_size else ''}{problem}")
    seed, architecture = ctx.train_seed(config), config.architecture
    model = seeded(seed, lambda: build_autoencoder(architecture)).to(ctx.device).train()

    def loss_fn(batch: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        x = batch * 2 - 1
        posterior = model.encode(x).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        return (x - reconstruction).abs().mean() + F.mse_loss(reconstruction, x) + train.kl_weight * kl

    fit(model.parameters(), loss_fn, load_training_data(ctx, train), train, seed, ctx.device, "generator")
    save_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)


@GENERATORS.register("vae", config=VAEConfig, description="diffusers AutoencoderKL (Hub id or local dir, or an architecture trained here)",
                     preflight=vae_preflight, weights=vae_weights, trainer=train_vae)
def load_vae(config: VAEConfig, ctx: ComponentContext) -> VAEGenerator:
    problem = image_size_cap_problem(ctx.image_size) or config.image_size_problem(ctx.image_size, ctx.locations)
    if problem:
        raise ComponentError(problem)
    model = _built(config, ctx) if config.architecture is not None else _pretrained(config, ctx)
    mask = None
    if config.mask is not None:
        from builder.sparse import load_mask

        channels = int(model.config.latent_channels)
        mask = load_mask(fetch_location(config.mask, ctx.locations), expected_channels=channels).to(ctx.device)
    return VAEGenerator(model.eval().requires_grad_(False).to(ctx.device), mask)
