"""VQGAN generator in the taming-transformers format, built without pytorch_lightning.

Reads the official ``model.yaml`` (``model.params``: ddconfig, n_embed, embed_dim) and
``last.ckpt`` state-dict layout (encoder., decoder., quantize., quant_conv.,
post_quant_conv.; the loss.* discriminator/LPIPS weights are not needed and skipped).
The latent b is the quantized code; with ``requantize`` each perturbed latent snaps back
to the codebook through a straight-through estimator, so gradients still reach it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch import nn

from builder.checkpoints import (
    ResolveContext,
    fetch_location,
    find_location,
    load_state_dict,
    load_weights,
)
from builder.components.base import GENERATORS, ComponentContext, image_size_cap_problem
from builder.config import GeneratorConfig, TrainConfig
from builder.errors import BuilderError, ComponentError, first_line
from builder.fileio import atomic_write
from builder.preflight import Check, PreflightContext, Weights, size_checks
from builder.safeyaml import parse_bounded

log = logging.getLogger(__name__)

REQUIRED_DDCONFIG = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels")
#: the largest generator this tool builds; counted on the meta device before anything is allocated
MAX_PARAMETERS = 2_000_000_000
MAX_LEVELS = 12  # len(ch_mult): a downsampling factor of at most 2**11
MAX_CHANNELS = 65536


class VQGANConfig(GeneratorConfig):
    config: str
    checkpoint: Optional[str] = None
    requantize: bool = False
    mask: Optional[str] = None  # a file from `build-benchmark fit-mask`: perturb only those latent dims
    train: Optional[TrainConfig] = None

    def image_size_problem(self, image_size: int, locations: ResolveContext) -> str | None:
        """Why this VQGAN cannot take ``image_size`` px images (None if it can); reads the config
        file, so a malformed one raises its ComponentError."""
        path = fetch_location(self.config, locations)
        return downsampling_problem(read_taming_config(path), image_size, path)


def downsampling_factor(params: dict[str, Any]) -> int:
    """How much the encoder shrinks each side: 2**(len(ch_mult) - 1)."""
    return int(2 ** (len(params["ddconfig"]["ch_mult"]) - 1))


def downsampling_problem(params: dict[str, Any], image_size: int, path: Path) -> str | None:
    """Why the VQGAN of ``params`` (read from ``path``) cannot take ``image_size`` px images."""
    factor = downsampling_factor(params)
    why = f"image_size {image_size}: the VQGAN of {path} downsamples by {factor} (2**(len(ch_mult)-1)), so the size must be"
    if image_size < factor:
        return f"{why} at least {factor}; use {factor} or a multiple of it"
    if image_size % factor:
        lower, upper = image_size // factor * factor, (image_size // factor + 1) * factor
        return f"{why} a multiple of {factor}; use {lower} or {upper}"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _ConfigCheck:
    """Checks of one taming config file, each failing as one line naming the file and key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, why: str, fix: str = "fix the config (compare taming's model.yaml)") -> ComponentError:
        return ComponentError(f"generator config {self.path}: {why}; {fix}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{key} must be a mapping (got {type(value).__name__} {_shown(value)})")
        return value

    def integer(self, value: Any, key: str, low: int, high: int, multiple: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value % multiple:
            kind = f"a multiple of {multiple} from {low}" if multiple > 1 else f"an integer from {low}"
            raise self.fail(f"{key} must be {kind} to {high} (got {_shown(value)})")
        return value

    def integers(self, value: Any, key: str, low: int, high: int, count: tuple[int, int]) -> list[int]:
        if not isinstance(value, (list, tuple)) or not count[0] <= len(value) <= count[1] or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value
        ):
            raise self.fail(f"{key} must be a list of {count[0]} to {count[1]} integers from {low} to {high} (got {_shown(value)})")
        return list(value)

    def flag(self, value: Any, key: str, required: bool | None = None) -> None:
        if not isinstance(value, bool) or (required is not None and value != required):
            expected = str(required).lower() if required is not None else "true or false"
            raise self.fail(f"{key} must be {expected} (got {_shown(value)})")


def _load_yaml(check: _ConfigCheck) -> Any:
    path = check.path
    if path.is_dir():
        raise ComponentError(f"generator config {path} is a directory, not a YAML file; check generator.config")
    if not path.is_file():
        raise ComponentError(f"generator config not found: {path}; check generator.config")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise check.fail(f"cannot read it ({error.strerror or type(error).__name__})", "check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise check.fail(f"not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start})", "save it as UTF-8 YAML") from None
    try:
        data = parse_bounded(text)  # a config may be downloaded: no alias bombs, no deep nesting
    except (ValueError, TypeError, OverflowError) as error:
        raise check.fail(f"a value cannot be read ({first_line(error, 120)})", "fix the YAML") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise check.fail(f"not valid YAML ({where}{problem})", "fix the YAML syntax") from None
    except RecursionError:
        raise check.fail("not valid YAML (nested too deeply)", "fix the YAML") from None
    if data is None:
        raise check.fail("the file is empty", "give taming's model.yaml (model.params: ddconfig, n_embed, embed_dim)")
    return data


def read_taming_config(path: Path) -> dict[str, Any]:
    """``model.params`` of a taming config, every field the modules use checked (type, range, a
    parameter count within MAX_PARAMETERS), so building it cannot fail or exhaust memory."""
    check = _ConfigCheck(path)
    data = _load_yaml(check)
    if not isinstance(data, dict):
        raise check.fail(f"holds a {type(data).__name__}, not a mapping", "give taming's model.yaml (model.params: ddconfig, n_embed, embed_dim)")
    if "model" not in data:
        raise check.fail("model is missing", "give taming's model.yaml (model.params: ddconfig, n_embed, embed_dim)")
    model = check.mapping(data["model"], "model")
    if "params" not in model:
        raise check.fail("model.params is missing", "give taming's model.yaml (model.params: ddconfig, n_embed, embed_dim)")
    params = check.mapping(model["params"], "model.params")
    if "ddconfig" not in params:
        raise check.fail("model.params.ddconfig is missing", "give taming's model.yaml (model.params: ddconfig, n_embed, embed_dim)")
    ddconfig = check.mapping(params["ddconfig"], "model.params.ddconfig")
    missing = [k for k in ("n_embed", "embed_dim") if k not in params]
    missing += [f"ddconfig.{k}" for k in REQUIRED_DDCONFIG if k not in ddconfig]
    if missing:
        raise check.fail(f"model.params lacks {', '.join(missing)}", "add them (compare taming's model.yaml)")
    key = "model.params.ddconfig."
    ch = check.integer(ddconfig["ch"], key + "ch", 32, 8192, multiple=32)  # taming's GroupNorm(32)
    check.integers(ddconfig["ch_mult"], key + "ch_mult", 1, 64, (1, MAX_LEVELS))
    check.integer(ddconfig["num_res_blocks"], key + "num_res_blocks", 1, 64)
    check.integers(ddconfig["attn_resolutions"], key + "attn_resolutions", 1, 1 << 20, (0, 64))
    check.integer(ddconfig["resolution"], key + "resolution", 1, 1 << 20)
    check.integer(ddconfig["z_channels"], key + "z_channels", 1, MAX_CHANNELS)
    for name in ("in_channels", "out_ch"):
        if ddconfig[name] != 3 or isinstance(ddconfig[name], bool):
            raise check.fail(f"{key}{name} must be 3, for RGB images (got {_shown(ddconfig[name])})")
    if "double_z" not in ddconfig:
        raise check.fail(f"{key}double_z is missing (taming's default, true, is for KL autoencoders)", "add double_z: false")
    check.flag(ddconfig["double_z"], key + "double_z", required=False)
    if "give_pre_end" in ddconfig:
        check.flag(ddconfig["give_pre_end"], key + "give_pre_end", required=False)
    if "resamp_with_conv" in ddconfig:
        check.flag(ddconfig["resamp_with_conv"], key + "resamp_with_conv")
    dropout = ddconfig.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise check.fail(f"{key}dropout must be a number from 0 to below 1 (got {_shown(dropout)})")
    check.integer(params["n_embed"], "model.params.n_embed", 1, 1 << 24)
    check.integer(params["embed_dim"], "model.params.embed_dim", 1, MAX_CHANNELS)
    if "sane_index_shape" in params:
        check.flag(params["sane_index_shape"], "model.params.sane_index_shape")
    remap = params.get("remap")
    if remap is not None and not (isinstance(remap, str) and Path(remap).is_file()):
        raise check.fail(f"model.params.remap {_shown(remap)} is not an existing .npy file (taming reads it from the working directory)",
                         "fix the path or remove remap")
    count = count_parameters(params)
    if count > MAX_PARAMETERS:
        raise check.fail(
            f"it describes a VQGAN with {count:.3g} parameters (ch {ch}, ch_mult {ddconfig['ch_mult']}, embed_dim "
            f"{params['embed_dim']}), more than the {MAX_PARAMETERS:.0e} this tool builds",
            "use a smaller ch, ch_mult, n_embed or embed_dim",
        )
    return params


def count_parameters(params: dict[str, Any]) -> int:
    """Parameters of the VQGAN ``params`` describes, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = TamingVQGAN({**params, "remap": None})  # remap only adds a buffer (and reads a file)
    return sum(p.numel() for p in model.parameters())


class TamingVQGAN(nn.Module):
    """The parts of ``taming.models.vqgan.VQModel`` inference needs, with the same names."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer2

        ddconfig = dict(params["ddconfig"])
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints its z shape
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer2(
            params["n_embed"],
            params["embed_dim"],
            beta=0.25,
            remap=params.get("remap"),
            sane_index_shape=params.get("sane_index_shape", False),
        )
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], params["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(params["embed_dim"], ddconfig["z_channels"], 1)

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def quantize_ste(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(quantized latent with straight-through gradient, codebook + commitment loss)."""
        z_q, loss, _ = self.quantize(h)
        return z_q, loss

    def quantize_exact(self, h: torch.Tensor) -> torch.Tensor:
        """The codebook vectors nearest ``h``, looked up: the straight-through ``z + (z_q - z)`` is
        not ``z_q`` in floating point (entries off by ~1e-8), and carries the encoder's
        batch-dependent rounding into b0, so a sample's start would depend on its batch."""
        _, _, (_, _, indices) = self.quantize(h)
        batch, _, height, width = h.shape
        return self.quantize.get_codebook_entry(indices.reshape(-1), (batch, height, width, self.quantize.e_dim))

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_q, loss = self.quantize_ste(self.encode_continuous(x))
        return self.decode_latent(z_q), loss


class VQGANGenerator:
    """g(x, b) on [0, 1] images; b0 is the quantized encoding of x."""

    def __init__(self, model: TamingVQGAN, requantize: bool, mask: Optional[torch.Tensor] = None) -> None:
        self.model = model
        self.requantize = requantize
        self.mask = mask

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.quantize_exact(self.model.encode_continuous(images * 2 - 1))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if self.requantize:  # the nearest code found as encode found it: in full precision, whatever autocast says
            with torch.autocast(latent.device.type, enabled=False):
                latent, _ = self.model.quantize_ste(latent.to(torch.promote_types(latent.dtype, torch.float32)))
        return ((self.model.decode_latent(latent) + 1) / 2).clamp(0, 1)


def vqgan_preflight(generator: VQGANConfig, ctx: PreflightContext, where: str) -> list[Check]:
    """The taming config file (read when it is local or cached) and the image sizes it takes."""
    item = f"{where} config"
    try:
        found = find_location(generator.config, ctx)
    except BuilderError as error:
        return [Check(item, generator.config, f"{item}: {error}")]
    if found.missing:
        shown = "is a directory, not a YAML file" if found.path is not None and found.path.is_dir() else "does not exist"
        return [Check(item, generator.config, f"{item}: {generator.config} {shown}; check {where}.config")]
    if found.path is None or not found.ready:
        checks = [Check(item, f"{generator.config}: {found.how}")]
        return checks + size_checks(generator, ctx.image_size, image_size_cap_problem, "the downsampling factor is checked once the config is fetched")
    try:
        params = read_taming_config(found.path)
    except BuilderError as error:
        return [Check(item, generator.config, str(error))]
    factor = downsampling_factor(params)
    checks = [Check(item, f"{generator.config}: n_embed {params['n_embed']}, embed_dim {params['embed_dim']}, f{factor}")]
    path = found.path

    def problem(size: int) -> str | None:
        return image_size_cap_problem(size) or downsampling_problem(params, size, path)

    from builder.sparse import mask_shape_checks

    checks += size_checks(generator, ctx.image_size, problem, f"a multiple of f{factor}")
    return mask_shape_checks(generator, ctx, where, checks, lambda size: (int(params["embed_dim"]), size // factor, size // factor))


def vqgan_weights(generator: VQGANConfig, where: str) -> list[Weights]:
    return [Weights(f"{where} weights", generator.checkpoint, generator, generator.train is not None and generator.checkpoint is not None)]


def train_vqgan(generator: VQGANConfig, ctx: ComponentContext, out: Path) -> None:
    """Train a taming-format VQGAN (L1 + L2 reconstruction + codebook loss; no GAN, no LPIPS)."""
    from torch.nn import functional as F

    from builder.train import fit, load_training_data, seeded

    train = generator.train or TrainConfig()
    config_path = fetch_location(generator.config, ctx.locations)
    params = read_taming_config(config_path)
    size = train.image_size or ctx.image_size
    problem = image_size_cap_problem(size) or downsampling_problem(params, size, config_path)
    if problem:  # checked before reading a single training image
        raise ComponentError(f"{'generator train.' if train.image_size else ''}{problem}")
    seed = ctx.train_seed(generator)
    model = seeded(seed, lambda: TamingVQGAN(params)).to(ctx.device).train()

    def loss_fn(batch: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        x = batch * 2 - 1
        reconstruction, codebook_loss = model(x)
        return (x - reconstruction).abs().mean() + F.mse_loss(reconstruction, x) + codebook_loss

    fit(model.parameters(), loss_fn, load_training_data(ctx, train), train, seed, ctx.device, "generator")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    with atomic_write(out) as handle:  # the taming / Lightning layout: {"state_dict": ...}
        torch.save({"state_dict": state, "epoch": train.epochs, "global_step": 0}, handle)


@GENERATORS.register("vqgan", config=VQGANConfig, description="taming-transformers VQGAN (config YAML + .ckpt)",
                     preflight=vqgan_preflight, weights=vqgan_weights, trainer=train_vqgan)
def load_vqgan(generator: VQGANConfig, ctx: ComponentContext) -> VQGANGenerator:
    config_path = fetch_location(generator.config, ctx.locations)
    params = read_taming_config(config_path)
    problem = image_size_cap_problem(ctx.image_size) or downsampling_problem(params, ctx.image_size, config_path)
    if problem:
        raise ComponentError(problem)
    model = TamingVQGAN(params)
    if generator.checkpoint is None:
        log.warning("generator has no checkpoint: random weights (only useful for timing)")
    else:
        path = ctx.trained_location(fetch_location(generator.checkpoint, ctx.locations), generator)
        state = load_state_dict(path, cache_dir=ctx.cache_dir, what="generator checkpoint")
        load_weights(model, state, path=path, what="generator", ignore_prefixes=("loss.",))
    mask = None
    if generator.mask is not None:
        from builder.sparse import load_mask

        mask = load_mask(fetch_location(generator.mask, ctx.locations), expected_channels=params["embed_dim"]).to(ctx.device)
    return VQGANGenerator(model.eval().requires_grad_(False).to(ctx.device), generator.requantize, mask)
