#!/usr/bin/env bash
# Installs TorchServe 0.12.0 into benchmarks/.torchserve-venv, for side-by-side runs against
# pyserve. TorchServe's frontend needs Java 17; its worker needs pyyaml and numpy, which it
# does not declare. torch 2.13.0 is the CPU build pyserve is tested with.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.torchserve-venv"
if ! java -version 2>&1 | grep -q 'version "17'; then
  echo "TorchServe 0.12.0 needs Java 17 on PATH" >&2
  exit 1
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet torch==2.13.0 torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml numpy
echo "TorchServe installed: $venv/bin/torchserve"
