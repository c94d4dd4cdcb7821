// Launchers of the CUDA convolution kernels: raw pointers and a stream, no torch, so that
// conv_kernels.cu compiles against the CUDA toolkit alone. conv_cuda.cu wraps them for at::Tensor.
// All arrays are row-major and contiguous; f* are row lengths; indices and CSR offsets are int64.
#pragma once

#include "conv_lanes.h"

#include <cuda_runtime.h>

#include <cstdint>

namespace nequip_fast {
namespace cuda {

// out (rows, fb), pre-zeroed: out[r] = sum_{k in [ptr[r], ptr[r+1])} T(x[col[e]], sh[e], w[weight_row(e)]),
// e = perm[k] (pairs: E - rows of w, see weight_row)
// with T in the plan's orientation. One warp per (row, task); rows without edges store zeros.
template <typename T>
cudaError_t launch_segment_conv(const PlanView<T>& plan, const T* x, int64_t fa, const T* sh, int64_t fs,
                                const T* w, int64_t fw, int64_t pairs, const int64_t* ptr, const int64_t* perm,
                                const int64_t* col, int64_t rows, T* out, int64_t fb, cudaStream_t stream);

// g_sh (E, fs) (every entry written) and g_w (E, fw) (pre-zeroed, accumulated): the gradients of
// <g[receiver[e]], T(x[sender[e]], sh[e], w[weight_row(e)])> per edge, with a forward-orientation
// plan. One warp per edge; fs <= max_edge_grads_sh_columns<T>().
template <typename T>
cudaError_t launch_edge_grads(const PlanView<T>& plan, const T* x, int64_t fa, const T* g, int64_t fb, const T* sh,
                              int64_t fs, const T* w, int64_t fw, int64_t pairs, const int64_t* receiver,
                              const int64_t* sender, int64_t num_edges, T* g_sh, T* g_w, cudaStream_t stream);

// The per-warp g_sh scratch lives in shared memory; one warp's must fit the default 48 KiB.
template <typename T>
constexpr int64_t max_edge_grads_sh_columns() {
  return (48 * 1024) / (kScratchStride * int64_t(sizeof(T)));
}

}  // namespace cuda
}  // namespace nequip_fast
