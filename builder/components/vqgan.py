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

from builder.checkpoints import load_state_dict, load_weights, resolve_location
from builder.components.base import GENERATORS, ComponentContext
from builder.config import GeneratorConfig, TrainConfig
from builder.errors import ComponentError

log = logging.getLogger(__name__)

REQUIRED_DDCONFIG = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels")


class VQGANConfig(GeneratorConfig):
    config: str
    checkpoint: Optional[str] = None
    requantize: bool = False
    mask: Optional[str] = None  # a file from `build-benchmark fit-mask`: perturb only those latent dims
    train: Optional[TrainConfig] = None


def read_taming_config(path: Path) -> dict[str, Any]:
    """``model.params`` of a taming config, checked for the fields the modules need."""
    if not path.is_file():
        raise ComponentError(f"generator config not found: {path}; check generator.config")
    try:
        data = yaml.safe_load(path.read_text())
        params = data["model"]["params"]
        ddconfig = params["ddconfig"]
        missing = [k for k in ("n_embed", "embed_dim") if k not in params]
        missing += [f"ddconfig.{k}" for k in REQUIRED_DDCONFIG if k not in ddconfig]
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise ComponentError(f"generator config {path}: not a taming model config (no {error})") from None
    if missing:
        raise ComponentError(f"generator config {path}: model.params lacks {', '.join(missing)}")
    return params


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
        z_q, _ = self.model.quantize_ste(self.model.encode_continuous(images * 2 - 1))
        return z_q

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if self.requantize:
            latent, _ = self.model.quantize_ste(latent)
        return ((self.model.decode_latent(latent) + 1) / 2).clamp(0, 1)


@GENERATORS.register("vqgan", config=VQGANConfig, description="taming-transformers VQGAN (config YAML + .ckpt)")
def load_vqgan(config: VQGANConfig, ctx: ComponentContext) -> VQGANGenerator:
    params = read_taming_config(resolve_location(config.config, ctx.locations))
    model = TamingVQGAN(params)
    if config.checkpoint is None:
        log.warning("generator has no checkpoint: random weights (only useful for timing)")
    else:
        path = ctx.trained_location(resolve_location(config.checkpoint, ctx.locations), config)
        if not path.is_file() and config.train is not None:
            from builder.train import train_generator

            log.info("no VQGAN checkpoint at %s yet, training it", path)
            train_generator(config, ctx, path)
        state = load_state_dict(path, cache_dir=ctx.cache_dir, what="generator checkpoint")
        load_weights(model, state, path=path, what="generator", ignore_prefixes=("loss.",))
    mask = None
    if config.mask is not None:
        from builder.sparse import load_mask

        mask = load_mask(resolve_location(config.mask, ctx.locations), expected_channels=params["embed_dim"]).to(ctx.device)
    return VQGANGenerator(model.eval().requires_grad_(False).to(ctx.device), config.requantize, mask)
