"""ResNet-18 for 32 px inputs (3x3 stem, no max-pool) and LeNet-5 for 28 px digits."""

from __future__ import annotations

from torch import nn


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (He et al. 2016, Sec. 4.2): a 3x3 stride-1
    first convolution and no max-pool, so 32 px images keep a 4x4 map before pooling."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def lenet5(num_classes: int = 10) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) on 28 px RGB input (gray digits arrive as three equal channels)."""
    return nn.Sequential(
        nn.Conv2d(3, 6, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
