"""DenseNet with a hook-safe forward, shared by the bundled demo model and torchxrayvision's DenseNets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class DenseNetLogits(nn.Module):
    """`features` -> ReLU -> global average pool -> `classifier`, returning the selected logits.

    Unlike torchvision's and torchxrayvision's forward, the ReLU after `features` is not in place, so hooks on
    `features.norm5` see the true activations.
    """

    def __init__(self, features: nn.Module, classifier: nn.Linear, outputs: list[int] | None = None) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        index = torch.tensor(outputs if outputs is not None else range(classifier.out_features), dtype=torch.long)
        self.register_buffer("outputs", index, persistent=False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features [B, C] (the classifier's input)."""
        return F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x)).index_select(1, self.outputs)


def build_demo_densenet(num_classes: int, growth_rate: int = 16, block_config: tuple[int, ...] = (3, 6, 12, 8),
                        num_init_features: int = 32) -> DenseNetLogits:
    """A reduced torchvision DenseNet for 1-channel input (the `demo` classifier architecture)."""
    net = torchvision.models.DenseNet(growth_rate=growth_rate, block_config=tuple(block_config),
                                      num_init_features=num_init_features, num_classes=num_classes)
    net.features.conv0 = nn.Conv2d(1, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)
    return DenseNetLogits(net.features, net.classifier)
