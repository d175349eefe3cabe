"""Small-image architectures for ``py:`` reference models, where timm has no pretrained weights.

``py:builder.zoo:cifar_resnet18`` and ``py:builder.zoo:lenet5`` are the usual networks of the
CIFAR-10 and MNIST robustness literature; their weights come from a checkpoint (or are trained
on first use by a recipe's ``train`` block).
"""

from builder.zoo.small import cifar_resnet18, lenet5

__all__ = ["cifar_resnet18", "lenet5"]
