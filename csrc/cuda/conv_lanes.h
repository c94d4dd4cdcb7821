// The per-lane work of the CUDA convolution kernels, free of CUDA and torch so that the same code
// runs on the host (csrc/cuda/host_emulation.cpp replays every warp and lane sequentially, checked
// against the e3nn reference by tests/test_cuda_compile.py without a GPU) and on the device
// (conv_kernels.cu launches the warps).
//
// Both kernels read the ConvPlan (../plan.h, lowered once per layer in nequip_fast/ops/plan.py):
// paths grouped by the operand block they reduce into ("b"), and each path's CG terms grouped by b
// component (kptr), so that a lane keeps one output block of one channel u in registers.
#pragma once

#include "../plan.h"

#include <cstdint>
#include <utility>

#if defined(__CUDACC__)
#define NF_HD __host__ __device__
#else
#define NF_HD
#endif

namespace nequip_fast {
namespace cuda {

constexpr int kWarpSize = 32;
static_assert(kWarpSize == kTaskChannels, "a plan task is one warp");
// Largest irrep dimension a b block may have (l <= 7); each has its own accumulator template.
constexpr int kMaxDim = 15;
// Row stride of the per-warp g_sh scratch: 33 so that the final per-column sums hit distinct banks.
constexpr int kScratchStride = kWarpSize + 1;

// The weight row of edge e: paired edges (edge k + E/2 reverses edge k, pairs = E/2) share one.
NF_HD inline int64_t weight_row(int64_t e, int64_t pairs) { return e < pairs ? e : e - pairs; }

// One lane of segment_conv: out[row, b_off + u * BD + kk] for kk < BD, summed over the row's edges
// in CSR order (deterministic) and stored once. x/col are the gathered operand ("a") and its rows.
template <typename T, int BD>
NF_HD void segment_lane(const PlanView<T>& plan, int32_t group, int32_t u, int64_t row, const T* x, int64_t fa,
                        const T* sh, int64_t fs, const T* w, int64_t fw, int64_t pairs, const int64_t* ptr,
                        const int64_t* perm, const int64_t* col, T* out, int64_t fb) {
  const PlanGroup& gr = plan.groups[group];
  T acc[BD];
  for (int kk = 0; kk < BD; ++kk) acc[kk] = T(0);
  for (int64_t k = ptr[row]; k < ptr[row + 1]; ++k) {
    const int64_t e = perm[k];
    const T* xs = x + col[e] * fa;
    const T* ye = sh + e * fs;
    const T* we = w + weight_row(e, pairs) * fw;
    for (int32_t p = gr.path_begin; p < gr.path_end; ++p) {
      const PlanPath& pa = plan.paths[p];
      const T* xp = xs + pa.a_off + static_cast<int64_t>(u) * pa.a_dim;
      const T wu = we[pa.w_off + u];
      const int32_t* kp = plan.kptr + pa.kptr;
#pragma unroll
      for (int kk = 0; kk < BD; ++kk) {
        T s = T(0);
        for (int32_t t = kp[kk]; t < kp[kk + 1]; ++t)
          s += plan.values[t] * ye[plan.terms[t].sh] * xp[plan.terms[t].a];
        acc[kk] += wu * s;
      }
    }
  }
  T* o = out + row * fb + gr.b_off + static_cast<int64_t>(u) * BD;
  for (int kk = 0; kk < BD; ++kk) o[kk] = acc[kk];
}

// segment_lane with the block dimension b_dim (1, 3, ..., kMaxDim) as a template argument, so that
// the accumulators are registers.
template <typename T, int D = 1, typename... Args>
NF_HD void segment_dispatch(int32_t b_dim, Args&&... args) {
  if constexpr (D <= kMaxDim) {
    if (b_dim == D)
      segment_lane<T, D>(std::forward<Args>(args)...);
    else
      segment_dispatch<T, D + 2>(b_dim, std::forward<Args>(args)...);
  }
}

// Thread `lane` of warp `warp` of segment_conv: warps enumerate (row, task) pairs row-major, so
// consecutive warps share a row and reuse its edges' x, sh and w rows from cache.
template <typename T>
NF_HD void segment_thread(const PlanView<T>& plan, int64_t warp, int lane, const T* x, int64_t fa, const T* sh,
                          int64_t fs, const T* w, int64_t fw, int64_t pairs, const int64_t* ptr,
                          const int64_t* perm, const int64_t* col, T* out, int64_t fb) {
  const int64_t row = warp / plan.n_tasks;
  const PlanTask& task = plan.tasks[warp % plan.n_tasks];
  const int32_t group = task.group;
  const int32_t u = task.u0 + lane;
  const PlanGroup& gr = plan.groups[group];
  if (u < gr.mul)
    segment_dispatch<T>(gr.b_dim, plan, group, u, row, x, fa, sh, fs, w, fw, pairs, ptr, perm, col, out, fb);
}

// One lane of edge_grads for edge e (receiver r, sender s), channels u = lane, lane + 32, ...
// Adds its g_w entries (its own addresses: paths sharing a weight slice share u, hence the lane) and
// its share of g_sh to scratch[col * kScratchStride + lane]; the caller sums scratch over lanes.
template <typename T>
NF_HD void edge_lane(const PlanView<T>& plan, int lane, const T* xs, const T* gr, const T* ye, const T* we,
                     T* gwe, T* scratch) {
  for (int32_t g = 0; g < plan.n_groups; ++g) {
    const PlanGroup& gp = plan.groups[g];
    const int32_t b_off = gp.b_off, b_dim = gp.b_dim, mul = gp.mul;
    for (int32_t p = gp.path_begin; p < gp.path_end; ++p) {
      const PlanPath& pa = plan.paths[p];
      const int32_t* kp = plan.kptr + pa.kptr;
      for (int32_t u = lane; u < mul; u += kWarpSize) {
        const T* xp = xs + pa.a_off + static_cast<int64_t>(u) * pa.a_dim;
        const T* gb = gr + b_off + static_cast<int64_t>(u) * b_dim;
        const T wu = we[pa.w_off + u];
        T gw = T(0);
        for (int32_t kk = 0; kk < b_dim; ++kk) {
          const T gk = gb[kk];
          for (int32_t t = kp[kk]; t < kp[kk + 1]; ++t) {
            const int32_t j = plan.terms[t].sh;
            const T xg = plan.values[t] * xp[plan.terms[t].a] * gk;
            gw += xg * ye[j];
            scratch[j * kScratchStride + lane] += xg * wu;
          }
        }
        gwe[pa.w_off + u] += gw;
      }
    }
  }
}

// g_sh[c] of one edge: its scratch column summed over lanes in lane order.
template <typename T>
NF_HD T scratch_column_sum(const T* scratch, int64_t c) {
  T s = T(0);
  for (int l = 0; l < kWarpSize; ++l) s += scratch[c * kScratchStride + l];
  return s;
}

}  // namespace cuda
}  // namespace nequip_fast
