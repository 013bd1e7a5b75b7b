"""Tiny real torch models the tests save and archive."""

import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x):
        return self.layers(x)


class TinyCNN(torch.nn.Module):
    """224x224 RGB in, 10 class scores out."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, kernel_size=7, stride=4), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))
