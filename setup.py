"""Package build. The Triton kernels in kernels/ install as ``nequip_fast.kernels``."""
from setuptools import find_packages, setup

setup(
    name="nequip_fast",
    version="0.1.0",
    description="NequIP interatomic potentials with fused equivariant-convolution kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["nequip_fast", "nequip_fast.*"]) + ["nequip_fast.kernels"],
    package_dir={"nequip_fast.kernels": "kernels"},
    install_requires=["torch>=2.3", "e3nn>=0.5", "ase>=3.23", "numpy", "vesin>=0.3", "pyyaml"],
    extras_require={"test": ["pytest"], "triton": ["triton"]},
    entry_points={"console_scripts": ["nequip-fast=nequip_fast.cli:main"]},
)
