#!/usr/bin/env bash
# One entry point for a fresh clone:
#   ./run.sh demo   set up .venv, then train a small model on bundled data, evaluate it, run MD
#   ./run.sh test   set up .venv, then run the whole test suite
# Set NEQUIP_FAST_VENV to use another virtual environment, NEQUIP_FAST_CACHE_DIR for the compiled kernels, TORCH_SPEC to choose the torch to install
# when the environment has none (default torch==2.13.0; install a CUDA build yourself for GPUs).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${NEQUIP_FAST_VENV:-.venv}
PY="$VENV/bin/python"
# The compiled C++ kernels of this clone (a fresh clone compiles them once, about a minute).
export NEQUIP_FAST_CACHE_DIR=${NEQUIP_FAST_CACHE_DIR:-$PWD/build/cache}

setup() {
    [ -x "$PY" ] || python3 -m venv "$VENV"
    # Keep an installed torch; a bare "torch" requirement would pull a multi-GB CUDA build.
    "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
    # A standard install: the build needs no torch, the installed one is kept.
    "$PY" -m pip install -q --disable-pip-version-check -e "$1"
    # Compiles the C++ kernels for this torch now (once; cached, see docs/install.rst) and says
    # which kernel backends work; fails if the CPU kernels do not.
    "$PY" -m nequip_fast info
}

case "${1:-}" in
    demo)
        setup .
        PATH="$VENV/bin:$PATH" bash examples/demo.sh
        ;;
    test)
        setup ".[test]"
        shift
        # Without a GPU the Triton kernels run in Triton's interpreter; it must be chosen before
        # Python starts (importing e3nn already imports triton).
        "$PY" -c "import torch; raise SystemExit(torch.cuda.is_available())" && export TRITON_INTERPRET=1
        "$PY" -m pytest -q -rs tests "$@"
        ;;
    *)
        echo "usage: ./run.sh demo | test [pytest args]" >&2
        exit 2
        ;;
esac
