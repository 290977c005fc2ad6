"""CIFAR model zoo: ResNet-20..110 (option-A shortcuts), MobileNetV2 and DenseNet-40.

Every model is traceable with ``torch.fx.symbolic_trace``: no Python control flow depends on tensor values.
``ZOO`` maps a name to a :class:`ZooEntry`, a model builder that also knows its input size, normalization and
default dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lcp.engine.rules import pad_channels_rule, register_module_rule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal init for convs and linears, as the reference CIFAR ResNet code does."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


# ----------------------------------------------------------------------------------------------- CIFAR ResNet


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels; no parameters.

    The pruning engine treats it as a leaf and may change ``pad_left``/``pad_right``, so forward reads them
    (its rule, registered below: the padded channels are prunable and the pad widths shrink with them).
    """

    def __init__(self, pad_left: int, pad_right: int, stride: int = 2):
        super().__init__()
        self.pad_left = pad_left
        self.pad_right = pad_right
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_left, self.pad_right))

    def extra_repr(self) -> str:
        return f"pad_left={self.pad_left}, pad_right={self.pad_right}, stride={self.stride}"


register_module_rule(ShortcutA, pad_channels_rule)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            pad = planes - in_planes
            self.shortcut = ShortcutA(pad // 2, pad - pad // 2, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): 3 stages of ``n`` basic blocks, widths 16/32/64, depth 6n+2."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


def resnet32(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(5, num_classes)


def resnet44(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(7, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes)


def resnet110(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(18, num_classes)


# ------------------------------------------------------------------------------------------------ MobileNetV2


def mobilenetv2(num_classes: int = 10) -> nn.Module:
    """torchvision MobileNetV2 with a stride-1 stem, for 32x32 inputs (keeps torchvision's state-dict keys)."""
    import torchvision  # lazily, like in factory.py

    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    model.features[0][0].stride = (1, 1)
    return model


# --------------------------------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` channels, concatenated to its input."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (same width), then 2x2 average pooling."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class CifarDenseNet(nn.Module):
    """DenseNet for CIFAR (Huang et al. 2017) without bottleneck or compression: 3 dense blocks."""

    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10, stem_channels: int = 16):
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
        n = (depth - 4) // 3
        channels = stem_channels
        self.conv1 = nn.Conv2d(3, channels, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for b in range(3):
            stages.append(nn.Sequential(*[DenseLayer(channels + i * growth, growth) for i in range(n)]))
            channels += n * growth
            if b < 2:
                stages.append(Transition(channels))
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3 = stages
        self.bn = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.dense3(self.trans2(self.dense2(x)))
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.linear(torch.flatten(x, 1))


def densenet40(num_classes: int = 10) -> CifarDenseNet:
    """DenseNet-40, growth 12: 16-channel stem, 448 features before the classifier."""
    return CifarDenseNet(40, 12, num_classes)


# --------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model builder plus the data it expects; call it like the builder: ``entry(num_classes=10)``."""

    build: Callable[..., nn.Module]
    input_size: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dataset: str = "cifar10"

    def __call__(self, num_classes: int = 10, **kwargs) -> nn.Module:
        return self.build(num_classes=num_classes, **kwargs)


ZOO: dict[str, ZooEntry] = {
    fn.__name__: ZooEntry(fn) for fn in (resnet20, resnet32, resnet44, resnet56, resnet110, mobilenetv2, densenet40)
}
