"""Writes mlp.pt: a TorchScript MLP, 64 -> 256 -> 10, with fixed random weights.

    python examples/mlp/make_mlp.py OUTPUT_FOLDER
"""

import sys
from pathlib import Path

import torch


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )

    def forward(self, x):
        return self.layers(x)


def main(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "mlp.pt"
    torch.jit.script(MLP().eval()).save(str(path))
    return path


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
