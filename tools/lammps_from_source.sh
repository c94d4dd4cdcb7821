#!/usr/bin/env bash
# Build LAMMPS from source with CMake the way a cluster user does (shared library, PLUGIN package,
# serial), with pair_style nequip compiled in (`nequip-fast lammps-plugin --patch-lammps`), and
# the plugin built against the same LAMMPS (`nequip-fast lammps-plugin --build`):
#   tools/lammps_from_source.sh [WORK_DIR]        (default build/lammps-source)
# Prints the paths as KEY=VALUE lines at the end (LMP, PLUGIN). The source is Debian's lammps
# package source (29Sep2021 update 2: the older LAMMPS API), fetched with apt-get from a private
# apt state (the system's apt configuration is not touched). About 5 minutes on 2 cores; a
# rerun with the same WORK_DIR is incremental. tests/test_lammps_source.py runs it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=$(mkdir -p "${1:-$ROOT/build/lammps-source}" && cd "${1:-$ROOT/build/lammps-source}" && pwd)
JOBS=$(nproc)

if [ ! -f "$WORK/src/cmake/CMakeLists.txt" ]; then
    apt_dir="$WORK/apt"
    mkdir -p "$apt_dir/lists/partial" "$WORK/download"
    echo "deb-src http://deb.debian.org/debian bookworm main" > "$apt_dir/sources.list"
    apt=(apt-get -q -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
         -o "Dir::State::Lists=$apt_dir/lists" -o APT::Sandbox::User=root)
    "${apt[@]}" update > "$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; exit 1; }
    (cd "$WORK/download" && "${apt[@]}" source --download-only lammps >> "$WORK/apt.log" 2>&1) || { cat "$WORK/apt.log"; exit 1; }
    rm -rf "$WORK/src.tmp" && mkdir "$WORK/src.tmp"
    tar -xJf "$WORK"/download/lammps_*.orig.tar.xz -C "$WORK/src.tmp" --strip-components=1
    mv "$WORK/src.tmp" "$WORK/src"
fi

"$PY" -m nequip_fast lammps-plugin --patch-lammps "$WORK/src"
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
OPS=$("$PY" -c 'from nequip_fast.ops import native; print(native.load())')
cmake -S "$WORK/src/cmake" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DPKG_PLUGIN=ON \
    -DBUILD_MPI=OFF -DBUILD_OMP=ON -DWITH_JPEG=OFF -DWITH_PNG=OFF -DWITH_GZIP=OFF -DWITH_FFMPEG=OFF \
    -DLAMMPS_EXCEPTIONS=ON -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DNEQUIP_FAST_OPS_LIBRARY="$OPS" \
    > "$WORK/cmake.log" 2>&1 || { tail -40 "$WORK/cmake.log"; exit 1; }
cmake --build "$WORK/build" -j "$JOBS" > "$WORK/build.log" 2>&1 || { grep -B2 -A8 "error" "$WORK/build.log" | head -60; exit 1; }

"$PY" -m nequip_fast lammps-plugin --build --lammps-include "$WORK/src/src" --mpi-include "$WORK/src/src/STUBS" \
    --build-dir "$WORK/plugin" > "$WORK/plugin.log" 2>&1 || { cat "$WORK/plugin.log"; exit 1; }
echo "LMP=$WORK/build/lmp"
echo "PLUGIN=$WORK/plugin/nequipplugin.so"
