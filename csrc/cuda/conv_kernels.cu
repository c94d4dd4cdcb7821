// CUDA kernels of the fused convolution: the lanes of conv_lanes.h mapped onto warps.
//
// segment_conv: one warp per (row, task); a task is one b block ("group") and 32 of its channels,
// lane = channel, the block's components in registers, one store per output. No atomics: each
// output element has exactly one writer and sums its edges in CSR order, so results are
// deterministic. edge_grads: one warp per edge; g_w per lane, g_sh summed over lanes through a
// per-warp shared-memory scratch in a fixed order.
#include "conv_kernels.cuh"

#include <algorithm>

namespace nequip_fast {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int64_t kMaxBlocks = 2147483647;

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarpSize)
    segment_conv_kernel(PlanView<T> plan, const T* __restrict__ x, int64_t fa, const T* __restrict__ sh, int64_t fs,
                        const T* __restrict__ w, int64_t fw, int64_t pairs, const int64_t* __restrict__ ptr,
                        const int64_t* __restrict__ perm, const int64_t* __restrict__ col, int64_t rows,
                        T* __restrict__ out, int64_t fb) {
  const int64_t warp = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (warp < rows * plan.n_tasks)
    segment_thread(plan, warp, int(threadIdx.x % kWarpSize), x, fa, sh, fs, w, fw, pairs, ptr, perm, col, out, fb);
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarpSize)
    edge_grads_kernel(PlanView<T> plan, const T* __restrict__ x, int64_t fa, const T* __restrict__ g, int64_t fb,
                      const T* __restrict__ sh, int64_t fs, const T* __restrict__ w, int64_t fw, int64_t pairs,
                      const int64_t* __restrict__ receiver, const int64_t* __restrict__ sender, int64_t num_edges,
                      T* __restrict__ g_sh, T* __restrict__ g_w) {
  // unsigned char, not T: one extern shared array serves every instantiation.
  extern __shared__ __align__(16) unsigned char shared[];
  const int warp = int(threadIdx.x / kWarpSize), lane = int(threadIdx.x % kWarpSize);
  const int64_t e = int64_t(blockIdx.x) * (blockDim.x / kWarpSize) + warp;
  if (e >= num_edges) return;  // uniform over the warp, so the __syncwarp()s below see all lanes
  T* scratch = reinterpret_cast<T*>(shared) + int64_t(warp) * fs * kScratchStride;
  for (int64_t i = lane; i < fs * kScratchStride; i += kWarpSize) scratch[i] = T(0);
  __syncwarp();
  edge_lane(plan, lane, x + sender[e] * fa, g + receiver[e] * fb, sh + e * fs, w + weight_row(e, pairs) * fw,
            g_w + e * fw, scratch);
  __syncwarp();
  for (int64_t c = lane; c < fs; c += kWarpSize) g_sh[e * fs + c] = scratch_column_sum(scratch, c);
}

}  // namespace

template <typename T>
cudaError_t launch_segment_conv(const PlanView<T>& plan, const T* x, int64_t fa, const T* sh, int64_t fs,
                                const T* w, int64_t fw, int64_t pairs, const int64_t* ptr, const int64_t* perm,
                                const int64_t* col, int64_t rows, T* out, int64_t fb, cudaStream_t stream) {
  const int64_t blocks = (rows * plan.n_tasks + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks == 0) return cudaSuccess;
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  segment_conv_kernel<T><<<unsigned(blocks), kWarpsPerBlock * kWarpSize, 0, stream>>>(
      plan, x, fa, sh, fs, w, fw, pairs, ptr, perm, col, rows, out, fb);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_edge_grads(const PlanView<T>& plan, const T* x, int64_t fa, const T* g, int64_t fb, const T* sh,
                              int64_t fs, const T* w, int64_t fw, int64_t pairs, const int64_t* receiver,
                              const int64_t* sender, int64_t num_edges, T* g_sh, T* g_w, cudaStream_t stream) {
  if (num_edges == 0 || fs == 0) return cudaSuccess;  // fs == 0: no paths, g_w stays zero
  if (fs > max_edge_grads_sh_columns<T>()) return cudaErrorInvalidValue;
  const int64_t warp_bytes = fs * kScratchStride * int64_t(sizeof(T));
  const int64_t warps = std::min<int64_t>(kWarpsPerBlock, (48 * 1024) / warp_bytes);
  const int64_t blocks = (num_edges + warps - 1) / warps;
  if (blocks > kMaxBlocks) return cudaErrorInvalidConfiguration;
  edge_grads_kernel<T><<<unsigned(blocks), unsigned(warps * kWarpSize), size_t(warps * warp_bytes), stream>>>(
      plan, x, fa, g, fb, sh, fs, w, fw, pairs, receiver, sender, num_edges, g_sh, g_w);
  return cudaGetLastError();
}

#define NF_INSTANTIATE(T)                                                                                          \
  template cudaError_t launch_segment_conv<T>(const PlanView<T>&, const T*, int64_t, const T*, int64_t, const T*,   \
                                              int64_t, int64_t, const int64_t*, const int64_t*, const int64_t*,     \
                                              int64_t, T*, int64_t, cudaStream_t);                                 \
  template cudaError_t launch_edge_grads<T>(const PlanView<T>&, const T*, int64_t, const T*, int64_t, const T*,     \
                                            int64_t, const T*, int64_t, int64_t, const int64_t*, const int64_t*,    \
                                            int64_t, T*, T*, cudaStream_t);
NF_INSTANTIATE(float)
NF_INSTANTIATE(double)
#undef NF_INSTANTIATE

}  // namespace cuda
}  // namespace nequip_fast
