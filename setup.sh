#!/usr/bin/env bash
# Set up fedgan on a fresh machine: a virtual environment with the pinned dependencies, and Fashion-MNIST from
# the Debian package dataset-fashion-mnist (system-wide when allowed, else unpacked into ~/.cache/fedgan/debian).
# Idempotent: a second run only checks. Offline apart from the package registries.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      python=$candidate; break
    fi
  done
fi
[ -n "$python" ] || { echo "setup.sh: Python 3.11 not found; set PYTHON=/path/to/python3.11" >&2; exit 2; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
if [ ! -x .venv/bin/fedgan ] || ! .venv/bin/python -c 'import flwr, torch, torchvision, torchmetrics, pytest, hypothesis' 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
fi

# ---- Fashion-MNIST (the default dataset) ----
fashion=/usr/share/datasets/fashion-mnist
local_root="${FEDGAN_CACHE:-$HOME/.cache/fedgan}/debian"
if [ ! -f "$fashion/train-images-idx3-ubyte.gz" ] && [ ! -f "$local_root$fashion/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true
  fi
  if [ ! -f "$fashion/train-images-idx3-ubyte.gz" ]; then  # no root: unpack the package without installing it
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1 && mkdir -p "$local_root" \
      && dpkg -x dataset-fashion-mnist_*.deb "$local_root") || true
    rm -rf "$tmp"
  fi
  if [ ! -f "$fashion/train-images-idx3-ubyte.gz" ] && [ ! -f "$local_root$fashion/train-images-idx3-ubyte.gz" ]; then
    echo "setup.sh: warning: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist failed);" \
         "scenarios on synthetic data still run" >&2
  fi
fi
echo "setup.sh: ready (.venv, $(.venv/bin/python -c 'import torch, flwr; print("torch", torch.__version__, "flwr", flwr.__version__)'))"
