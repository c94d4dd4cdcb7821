"""Package build: pure Python, no torch at build time, so pip's default build isolation never
downloads a torch. The C++/CUDA sources in csrc/ ship inside the package as ``nequip_fast/csrc``
and are compiled on first use against the torch that runs them (nequip_fast/ops/native.py); the
Triton kernels in kernels/ install as ``nequip_fast.kernels``; the LAMMPS plugin sources
(lammps_plugin/) as ``nequip_fast/lammps_plugin`` for ``nequip-fast lammps-plugin --build``.
Project metadata lives in pyproject.toml."""
from setuptools import find_packages, setup

SOURCES = ["*.cpp", "*.h", "cuda/*.cu", "cuda/*.cuh", "cuda/*.h"]

setup(
    packages=find_packages(include=["nequip_fast", "nequip_fast.*"])
    + ["nequip_fast.kernels", "nequip_fast.csrc", "nequip_fast.lammps_plugin"],
    package_dir={"nequip_fast.kernels": "kernels", "nequip_fast.csrc": "csrc",
                 "nequip_fast.lammps_plugin": "lammps_plugin"},
    package_data={"nequip_fast.csrc": SOURCES,
                  "nequip_fast.lammps_plugin": ["*.cpp", "*.h", "CMakeLists.txt", "*.cmake", "README.md"]},
)
