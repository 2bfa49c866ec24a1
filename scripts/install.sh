#!/usr/bin/env bash
# Install what netcomp-gym needs on a fresh Debian/Ubuntu machine: Python packages, and real
# Fashion-MNIST from Debian's dataset-fashion-mnist package (offline data for the quickstart and tests).
# The README's quickstart line and CI (.ci/install calls it) use it. Run it inside a virtual environment:
# on Debian/Ubuntu the system Python refuses pip (PEP 668). The CUDA build of torch takes about 6 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq dataset-fashion-mnist \
    || echo "note: dataset-fashion-mnist not installed; Fashion-MNIST will be downloaded by torchvision"
fi

python3 -m pip install -q -r requirements-dev.txt
# The project itself, editable, so the packaging (pyproject.toml's package list) stays true.
python3 -m pip install -q --no-deps -e .
