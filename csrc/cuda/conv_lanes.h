// The per-lane work of the CUDA convolution kernels, free of CUDA and torch so that the same code
// runs on the host (csrc/cuda/host_emulation.cpp replays every warp and lane sequentially, checked
// against the e3nn reference by tests/test_cuda_compile.py without a GPU) and on the device
// (conv_kernels.cu launches the warps).
//
// Both kernels read a Plan (conv_plan.h) instead of the raw descriptor table: paths grouped by the
// operand block they reduce into ("b"), and each path's CG terms grouped by b component, so that a
// lane keeps one output block of one channel u in registers.
#pragma once

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
// Largest irrep dimension a b block may have (l <= 7); each has its own accumulator template.
constexpr int kMaxDim = 15;
// Row stride of the per-warp g_sh scratch: 33 so that the final per-column sums hit distinct banks.
constexpr int kScratchStride = kWarpSize + 1;

// Column layout of the int32 sections of a Plan (see conv_plan.h).
enum GroupColumn { G_B_OFF, G_B_DIM, G_MUL, G_PATH_BEGIN, G_PATH_END, GROUP_COLUMNS };
enum PathColumn { P_A_OFF, P_A_DIM, P_W_OFF, P_KPTR, PATH_COLUMNS };
enum TermColumn { T_A, T_SH, TERM_COLUMNS };
enum TaskColumn { K_GROUP, K_U0, TASK_COLUMNS };

// Device (or host) pointers into one plan; plain data, passed to kernels by value.
template <typename T>
struct PlanView {
  const int32_t* groups;  // (n_groups, GROUP_COLUMNS)
  const int32_t* paths;   // (n_paths, PATH_COLUMNS), ordered by group
  const int32_t* kptr;    // per path b_dim + 1 term offsets, from paths[p][P_KPTR]
  const int32_t* terms;   // (n_terms, TERM_COLUMNS): a component, absolute sh column
  const int32_t* tasks;   // (n_tasks, TASK_COLUMNS): one warp's (group, first channel)
  const T* values;        // (n_terms,) CG values with e3nn's path normalisation
  int32_t n_groups;
  int32_t n_tasks;
};

// One lane of segment_conv: out[row, b_off + u * BD + kk] for kk < BD, summed over the row's edges
// in CSR order (deterministic) and stored once. x/col are the gathered operand ("a") and its rows.
template <typename T, int BD>
NF_HD void segment_lane(const PlanView<T>& plan, int32_t group, int32_t u, int64_t row, const T* x, int64_t fa,
                        const T* sh, int64_t fs, const T* w, int64_t fw, const int64_t* ptr, const int64_t* perm,
                        const int64_t* col, T* out, int64_t fb) {
  const int32_t* gr = plan.groups + group * GROUP_COLUMNS;
  T acc[BD];
  for (int kk = 0; kk < BD; ++kk) acc[kk] = T(0);
  for (int64_t k = ptr[row]; k < ptr[row + 1]; ++k) {
    const int64_t e = perm[k];
    const T* xs = x + col[e] * fa;
    const T* ye = sh + e * fs;
    const T* we = w + e * fw;
    for (int32_t p = gr[G_PATH_BEGIN]; p < gr[G_PATH_END]; ++p) {
      const int32_t* pa = plan.paths + p * PATH_COLUMNS;
      const T* xp = xs + pa[P_A_OFF] + static_cast<int64_t>(u) * pa[P_A_DIM];
      const T wu = we[pa[P_W_OFF] + u];
      const int32_t* kp = plan.kptr + pa[P_KPTR];
#pragma unroll
      for (int kk = 0; kk < BD; ++kk) {
        T s = T(0);
        for (int32_t t = kp[kk]; t < kp[kk + 1]; ++t)
          s += plan.values[t] * ye[plan.terms[t * TERM_COLUMNS + T_SH]] * xp[plan.terms[t * TERM_COLUMNS + T_A]];
        acc[kk] += wu * s;
      }
    }
  }
  T* o = out + row * fb + gr[G_B_OFF] + static_cast<int64_t>(u) * BD;
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
                          int64_t fs, const T* w, int64_t fw, const int64_t* ptr, const int64_t* perm,
                          const int64_t* col, T* out, int64_t fb) {
  const int64_t row = warp / plan.n_tasks;
  const int32_t* task = plan.tasks + (warp % plan.n_tasks) * TASK_COLUMNS;
  const int32_t group = task[K_GROUP];
  const int32_t u = task[K_U0] + lane;
  const int32_t* gr = plan.groups + group * GROUP_COLUMNS;
  if (u < gr[G_MUL])
    segment_dispatch<T>(gr[G_B_DIM], plan, group, u, row, x, fa, sh, fs, w, fw, ptr, perm, col, out, fb);
}

// One lane of edge_grads for edge e (receiver r, sender s), channels u = lane, lane + 32, ...
// Adds its g_w entries (its own addresses: paths sharing a weight slice share u, hence the lane) and
// its share of g_sh to scratch[col * kScratchStride + lane]; the caller sums scratch over lanes.
template <typename T>
NF_HD void edge_lane(const PlanView<T>& plan, int lane, const T* xs, const T* gr, const T* ye, const T* we,
                     T* gwe, T* scratch) {
  for (int32_t g = 0; g < plan.n_groups; ++g) {
    const int32_t* gp = plan.groups + g * GROUP_COLUMNS;
    const int32_t b_off = gp[G_B_OFF], b_dim = gp[G_B_DIM], mul = gp[G_MUL];
    for (int32_t p = gp[G_PATH_BEGIN]; p < gp[G_PATH_END]; ++p) {
      const int32_t* pa = plan.paths + p * PATH_COLUMNS;
      const int32_t* kp = plan.kptr + pa[P_KPTR];
      for (int32_t u = lane; u < mul; u += kWarpSize) {
        const T* xp = xs + pa[P_A_OFF] + static_cast<int64_t>(u) * pa[P_A_DIM];
        const T* gb = gr + b_off + static_cast<int64_t>(u) * b_dim;
        const T wu = we[pa[P_W_OFF] + u];
        T gw = T(0);
        for (int32_t kk = 0; kk < b_dim; ++kk) {
          const T gk = gb[kk];
          for (int32_t t = kp[kk]; t < kp[kk + 1]; ++t) {
            const int32_t j = plan.terms[t * TERM_COLUMNS + T_SH];
            const T xg = plan.values[t] * xp[plan.terms[t * TERM_COLUMNS + T_A]] * gk;
            gw += xg * ye[j];
            scratch[j * kScratchStride + lane] += xg * wu;
          }
        }
        gwe[pa[P_W_OFF] + u] += gw;
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
