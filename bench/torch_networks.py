"""PyTorch's side of `bench.networks`: ResNet-18 as torchvision defines it (the same
layers and 11,689,512 parameters at 1000 classes; written out here because torchvision's
wheel on the registry does not load beside the CPU build of torch) and a MobileNet v1
(which torchvision lacks) shaped as `krefinery.core.mobilenet.build_mobilenet`, with the
same soft-target SGD loop as `bench.torch_resnet.train_rate`. Only used when torch is
installed."""

from __future__ import annotations

import torch
from torch import nn

from bench import torch_resnet
from krefinery.core.mobilenet import SEPARABLE, STEM_FILTERS


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        layers, cin = [conv_bn_relu(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
        for stage, cout in enumerate((64, 128, 256, 512)):
            for index in range(2):
                layers.append(BasicBlock(cin, cout, 2 if stage and not index else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class MobileNetV1(nn.Module):
    def __init__(self, classes: int, multiplier: float = 1.0):
        super().__init__()
        cin = int(STEM_FILTERS * multiplier)
        layers = [conv_bn_relu(3, cin, 3, 2)]
        for filters, stride in SEPARABLE:
            cout = int(filters * multiplier)
            layers += [conv_bn_relu(cin, cin, 3, stride, groups=cin), conv_bn_relu(cin, cout, 1, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def network(arch: str, classes: int) -> nn.Module:
    if arch == "resnet18":
        return ResNet18(classes)
    if arch.startswith("mobilenet"):
        multiplier = float(arch.split("_")[1]) if "_" in arch else 1.0
        return MobileNetV1(classes, multiplier)
    raise ValueError(f"no PyTorch twin of {arch}")


class Raw(nn.Module):
    """Raw uint8 NHWC pixels to [-1, 1] NCHW, as our models take them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images_uint8):
        return self.model(images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0)


def train_rate(arch: str, images, targets, batch: int, steps: int, precision: str, threads: int | None = None) -> float:
    """Images/s of soft-target SGD steps on `arch` (float32, or bfloat16 autocast)."""
    model = Raw(network(arch, targets.shape[1]))
    return torch_resnet.train_rate(images, targets, batch, steps, precision, warmup=1, threads=threads, model=model)
