"""The same CIFAR ResNet-20 as `krefinery.core.resnet.build_resnet(depth=20)`, in plain PyTorch.

What many users would write instead (the paper's reference code is PyTorch); used only
by the comparison benchmarks, and only when torch is installed.
"""

from __future__ import annotations

import torch
from torch import nn

THREADS = torch.get_num_threads()  # PyTorch's own default: the physical cores.


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, classes: int = 10, channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for index in range(3):
                blocks.append(Block(cin, cout, 2 if stage and not index else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, classes)

    def forward(self, images_uint8):
        x = images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def train_rate(
    images, targets, batch: int, steps: int, precision: str, device: str = "cpu", warmup: int = 2,
    threads: int | None = None, model: nn.Module | None = None,
) -> float:
    """Images/s of a plain soft-target SGD loop (`precision`: float32 or bfloat16 autocast).

    `threads`: PyTorch's intra-op (OpenMP) threads; None keeps its default. `model`: a
    module taking uint8 NHWC images (default: `ResNet20`).
    """
    import time

    torch.set_num_threads(threads or THREADS)
    model = (model or ResNet20()).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.as_tensor(images).to(device)
    targets = torch.as_tensor(targets).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")

    def step(i: int) -> None:
        lo = (i * batch) % (len(images) - batch + 1)
        with autocast:
            logits = model(images[lo : lo + batch])
        loss = nn.functional.cross_entropy(logits.float(), targets[lo : lo + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)
