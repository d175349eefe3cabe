"""Tiny classifiers for tests, loadable as ``py:<this file>:<callable>`` specs."""

from __future__ import annotations

import torch
from torch import nn


def tiny_cnn(num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


TINY_VQGAN_YAML = """\
model:
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 16
    ddconfig:
      double_z: false
      z_channels: 8
      resolution: 16
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2]
      num_res_blocks: 1
      attn_resolutions: []
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {disc_start: 0}
"""


class ColorNet(nn.Module):
    """Predicts the brightest colour channel: a classifier whose answers a test can dictate."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(50.0))
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))[:, : self.num_classes] * self.scale


def color_net(num_classes: int) -> nn.Module:
    return ColorNet(num_classes)


class RolledColorNet(ColorNet):
    """ColorNet's answer moved ``shift`` classes on: a second model whose answers a test dictates
    (another scale, so its weights are not ColorNet's)."""

    def __init__(self, num_classes: int, shift: int) -> None:
        super().__init__(num_classes)
        self.scale = nn.Parameter(torch.tensor(49.0))
        self.shift = shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.roll(super().forward(images), self.shift, dims=1)


def rolled_color_net(num_classes: int, shift: int = 1) -> nn.Module:
    return RolledColorNet(num_classes, shift)


def five_outputs(num_classes: int) -> nn.Module:
    """A factory that ignores ``num_classes``: five logits whatever the benchmark's classes."""
    return tiny_cnn(5)


def fixed_size(num_classes: int, size: int = 28) -> nn.Module:
    """Takes ``size`` x ``size`` images only: fails on a benchmark of another size."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, num_classes))


class SmallBatchesOnly(nn.Sequential):
    """tiny_cnn's layers and weights, but a batch above ``limit`` runs out of memory, as a large
    ``--batch-size`` does on a GPU."""

    def __init__(self, num_classes: int, limit: int) -> None:
        super().__init__(*tiny_cnn(num_classes))
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {len(x)}")
        return super().forward(x)


def small_batches_only(num_classes: int, limit: int = 2) -> nn.Module:
    return SmallBatchesOnly(num_classes, limit)


class DeterministicOnly(nn.Sequential):
    """tiny_cnn (its checkpoints fit) that refuses to run unless torch's deterministic algorithms
    are on; with ``put``, one that runs an op without a deterministic implementation (``put_``)."""

    def __init__(self, num_classes: int, put: bool = False) -> None:
        super().__init__(*tiny_cnn(num_classes))
        self.put = put

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.put:  # put_ with accumulate=False has no deterministic implementation, on any device
            torch.zeros(2).put_(torch.tensor([0]), torch.ones(1), accumulate=False)
        elif not torch.are_deterministic_algorithms_enabled():
            raise RuntimeError("deterministic_only: torch's deterministic algorithms are off")
        return super().forward(x)


def deterministic_only(num_classes: int) -> nn.Module:
    return DeterministicOnly(num_classes)


def nondeterministic_op(num_classes: int) -> nn.Module:
    return DeterministicOnly(num_classes, put=True)
