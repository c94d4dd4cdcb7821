#!/usr/bin/env bash
# Compile-checks the CUDA backend (csrc/cuda/*.cu) for sm_80 and sm_90 on a machine without a GPU:
# object files only, in a temporary directory, with the flags torch's CUDAExtension uses.
#   conv_kernels.cu  the kernels; needs only the CUDA toolkit
#   conv_cuda.cu     the at::Tensor wrappers; needs torch's c10/cuda headers (a CPU-only torch wheel
#                    ships them, but without the generated cuda_cmake_macros.h: then this script
#                    defines C10_CUDA_NO_CMAKE_CONFIGURE_FILE, the switch torch itself provides)
# Fails on any compile error. Exits 0 with a SKIP line only when nvcc is absent; when torch has no
# c10/cuda headers at all, checks the kernels alone and says so.
# Environment: NVCC (default: nvcc on PATH), PYTHON (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ]; then
  echo "SKIP: nvcc not found; the CUDA sources in csrc/cuda were not compile-checked"
  exit 0
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

echo "nvcc: $("$NVCC" --version | tail -1)"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

flags=(-std=c++20 -O3 --expt-relaxed-constexpr -Xcompiler -fPIC
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)

torch_flags=()
compile_wrapper=1
mapfile -t torch_includes < <("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print('\n'.join(include_paths()))")
if [ ! -f "${torch_includes[0]}/c10/cuda/CUDAStream.h" ]; then
  compile_wrapper=0
  echo "NOTE: torch at ${torch_includes[0]} has no c10/cuda headers: conv_cuda.cu (the at::Tensor wrappers) is NOT checked"
else
  for inc in "${torch_includes[@]}"; do torch_flags+=(-I"$inc"); done
  if [ ! -f "${torch_includes[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]; then
    torch_flags+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE)
    echo "NOTE: torch lacks c10/cuda/impl/cuda_cmake_macros.h (CPU-only wheel): defining C10_CUDA_NO_CMAKE_CONFIGURE_FILE"
  fi
fi

# Two translation units, compiled in parallel.
pids=() names=()
"$NVCC" "${flags[@]}" -Icsrc/cuda -c csrc/cuda/conv_kernels.cu -o "$out/conv_kernels.o" &
pids+=($!) names+=(conv_kernels.cu)
if [ "$compile_wrapper" = 1 ]; then
  "$NVCC" "${flags[@]}" "${torch_flags[@]}" -Icsrc/cuda -c csrc/cuda/conv_cuda.cu -o "$out/conv_cuda.o" &
  pids+=($!) names+=(conv_cuda.cu)
fi
status=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    echo "OK: csrc/cuda/${names[$i]} compiled for sm_80 and sm_90"
  else
    echo "FAIL: csrc/cuda/${names[$i]} does not compile"
    status=1
  fi
done
exit $status
