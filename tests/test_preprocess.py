"""The classifiers' differentiable preprocessing: its resize is F.interpolate's function, computed as
two matrix products (whose backward pass is deterministic on CUDA, unlike the antialiased kernel's)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from builder.components.preprocess import Preprocess, Preprocessing, resize_matrix

SHAPES = [((32, 32), (224, 224)), ((256, 256), (224, 224)), ((256, 300), (224, 262)), ((300, 256), (262, 224)), ((48, 64), (52, 70))]


def reference(images: torch.Tensor, target: tuple[int, int], mode: str) -> torch.Tensor:
    return F.interpolate(images, size=target, mode=mode, align_corners=False, antialias=True)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape,target", SHAPES)
def test_resize_is_interpolate_forward_and_backward_in_float64(mode: str, shape: tuple[int, int], target: tuple[int, int]) -> None:
    preprocess = Preprocess(Preprocessing(input_size=224, interpolation=mode))
    images = torch.rand(2, 3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ours, theirs = preprocess.resize(images, target), reference(images, target, mode)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    weights = torch.rand(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (ours_grad,) = torch.autograd.grad(ours, images, weights)
    (theirs_grad,) = torch.autograd.grad(theirs, images, weights)
    assert torch.allclose(ours_grad, theirs_grad, rtol=0, atol=1e-11)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resize_in_float32_is_at_least_as_near_float64_as_interpolate(mode: str) -> None:
    images = torch.rand(2, 3, 256, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = reference(images, (224, 262), mode)
    preprocess = Preprocess(Preprocessing(input_size=224, interpolation=mode))
    ours = preprocess.resize(images.float(), (224, 262))
    theirs = reference(images.float(), (224, 262), mode)
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() <= (theirs.double() - exact).abs().max()
    assert (ours.double() - exact).abs().max() < 1e-6


def test_nearest_is_interpolate_as_it_is() -> None:
    preprocess = Preprocess(Preprocessing(input_size=8, interpolation="nearest"))
    images = torch.rand(1, 3, 5, 7)
    assert torch.equal(preprocess.resize(images, (8, 11)), F.interpolate(images, size=(8, 11), mode="nearest"))


def test_weights_reach_the_device_once_and_autocast_leaves_the_precision() -> None:
    """The weights are copied to the images' device and dtype once per shape, not per call (a
    host-to-device copy waits for the GPU's queued work); under bf16 autocast the resize stays
    in the images' own precision, as F.interpolate does."""
    preprocess = Preprocess(Preprocessing(input_size=16, interpolation="bicubic", crop_pct=0.875))
    images = torch.rand(2, 3, 24, 24)
    first = preprocess(images)
    cached = dict(preprocess._weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = preprocess(images)
    assert again.dtype == torch.float32 and torch.equal(first, again)
    assert preprocess._weights.keys() == cached.keys() and all(preprocess._weights[k] is cached[k] for k in cached)


def test_resize_matrix_rows_sum_to_one() -> None:
    """Each output pixel is a weighted mean of input pixels (the antialiased kernels normalise)."""
    for size_in, size_out in ((7, 3), (3, 7), (256, 224)):
        matrix = resize_matrix(size_in, size_out, "bicubic")
        assert matrix.shape == (size_out, size_in)
        assert torch.allclose(matrix.sum(dim=1), torch.ones(size_out, dtype=torch.float64), atol=1e-12)


def test_a_first_call_under_inference_mode_leaves_gradients_working() -> None:
    """The weights were cached as inference tensors when the first call ran under
    torch.inference_mode: every later backward pass through any Preprocess then failed."""
    preprocess = Preprocess(Preprocessing(input_size=20, interpolation="bilinear"))
    with torch.inference_mode():
        preprocess(torch.rand(1, 3, 12, 12, dtype=torch.float64))
    for module in (preprocess, Preprocess(Preprocessing(input_size=20, interpolation="bilinear"))):
        images = torch.rand(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
        (gradient,) = torch.autograd.grad(module(images).sum(), images)
        assert torch.isfinite(gradient).all()
