// a^T b for row-major float32 a (K, m) and b (K, n): the weight gradients of the radial MLP's
// products, x^T g over the edge pairs (K ~ 1e4-1e5, m and n a few to a few hundred).
//
// torch's CPU mm hands the transposed operand to MKL's sgemm, which ran these at 20-150 GFLOP/s on
// a Zen 5 EPYC (2 threads; (64 x 21504) @ (21504 x 8) at 20), and oneDNN reorders the transposed
// operand first, slower still (benchmarks/RESULTS.md, issue 14). Here the sum over k runs as
// rank-1 updates of register tiles: a tile of MR rows x NV vectors of the output stays in registers
// while a block of k rows (contiguous in both operands) streams past it. Rows are cut into
// chunks whose size depends on k alone, and their partial products are summed in chunk order, so
// the result does not depend on the thread count.
#include "isa.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#pragma GCC diagnostic ignored "-Wpsabi"  // the vector types never cross a call boundary

namespace nequip_fast {
namespace {

#define NEQUIP_FAST_MM_INLINE __attribute__((always_inline)) inline

// Rows per partial product: at least kChunkRows, more where that would make over kMaxChunks partial
// products (their m x n sums; 64 of 864 x 64 are 14 MB). A function of k alone, so the sums do not
// depend on the thread count.
constexpr int64_t kChunkRows = 1024, kMaxChunks = 64;
constexpr int64_t kBlockRows = 128;  // rows per pass of the tiles: 1.3-1.6x faster than blocks sized to L1
constexpr int64_t kMinRows = 6;  // rows of a's tile (MR) in every version

template <int L>
struct Vec {
  typedef float type __attribute__((vector_size(4 * L)));
  typedef float unaligned __attribute__((vector_size(4 * L), aligned(4), may_alias));
};

// c[i0 + r][v0 * L ...] (+)= sum over k in [k0, k1) of a[k][i0 + r] b[k][(v0 + v) * L ...] for r < MR,
// v < NV. The last tile of fewer than MR rows (m - i0 < MR) computes the window of the last MR rows
// and stores only its own.
template <int L, int MR, int NV>
NEQUIP_FAST_MM_INLINE void tile(const float* a, const float* b, int64_t k0, int64_t k1, int64_t m, int64_t n,
                                int64_t i0, int64_t v0, bool first, float* c) {
  using V = typename Vec<L>::type;
  using U = typename Vec<L>::unaligned;
  const int64_t rows = std::min<int64_t>(MR, m - i0);
  const int64_t base = std::min<int64_t>(i0, m - MR);  // a full window of MR columns of a (m >= MR)
  const int64_t shift = i0 - base;  // output row i0 + r is column base + shift + r of the window
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = first || r < shift || r - shift >= rows ? V{}
                                                          : *reinterpret_cast<const U*>(c + (base + r) * n + (v0 + v) * L);
  const float* ak = a + k0 * m + base;
  const float* bk = b + k0 * n + v0 * L;
  for (int64_t k = k0; k < k1; ++k, ak += m, bk += n) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = *reinterpret_cast<const U*>(bk + v * L);
    for (int r = 0; r < MR; ++r) {
      const float s = ak[r];
      for (int v = 0; v < NV; ++v) acc[r][v] += s * bv[v];
    }
  }
  for (int r = shift; r < shift + rows; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<U*>(c + (base + r) * n + (v0 + v) * L) = acc[r][v];
}

// c = sum over k in [k0, k1) of a[k]^T b[k], for n a multiple of L.
template <int L, int MR, int NV>
NEQUIP_FAST_MM_INLINE void rows_impl(const float* a, const float* b, int64_t k0, int64_t k1, int64_t m, int64_t n,
                                     float* c) {
  const int64_t block = kBlockRows;
  const int64_t vectors = n / L;
  for (int64_t kb = k0; kb < k1; kb += block) {
    const int64_t ke = std::min(k1, kb + block);
    const bool first = kb == k0;
    for (int64_t i0 = 0; i0 < m; i0 += MR) {
      int64_t v0 = 0;
      for (; v0 + NV <= vectors; v0 += NV) tile<L, MR, NV>(a, b, kb, ke, m, n, i0, v0, first, c);
      switch (vectors - v0) {  // the last vectors of a row, fewer than NV
        case 1: tile<L, MR, 1>(a, b, kb, ke, m, n, i0, v0, first, c); break;
        case 2: if constexpr (NV > 2) tile<L, MR, 2>(a, b, kb, ke, m, n, i0, v0, first, c); break;
        case 3: if constexpr (NV > 3) tile<L, MR, 3>(a, b, kb, ke, m, n, i0, v0, first, c); break;
        default: break;
      }
    }
  }
}

// Registers: AVX-512 has 32 vectors (24 accumulators of 6 x 4), AVX2 and SSE 16 (12 of 6 x 2).
void rows_baseline(const float* a, const float* b, int64_t k0, int64_t k1, int64_t m, int64_t n, float* c) {
  rows_impl<4, 6, 2>(a, b, k0, k1, m, n, c);
}
#if NEQUIP_FAST_ISA_LEVELS
__attribute__((target("arch=x86-64-v3"))) void rows_x86_64_v3(const float* a, const float* b, int64_t k0,
                                                              int64_t k1, int64_t m, int64_t n, float* c) {
  rows_impl<8, 6, 2>(a, b, k0, k1, m, n, c);
}
__attribute__((target("arch=x86-64-v4"))) void rows_x86_64_v4(const float* a, const float* b, int64_t k0,
                                                              int64_t k1, int64_t m, int64_t n, float* c) {
  rows_impl<16, 6, 4>(a, b, k0, k1, m, n, c);
}
#endif

using RowsFn = void (*)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*);

// This CPU's version and its vector width in floats.
std::pair<RowsFn, int64_t> rows_function() {
#if NEQUIP_FAST_ISA_LEVELS
  if (isa_level() >= 4) return {rows_x86_64_v4, 16};
  if (isa_level() >= 3) return {rows_x86_64_v3, 8};
#endif
  return {rows_baseline, 4};
}

// a^T b: chunks of rows in parallel into partial products, then their sum in chunk order.
at::Tensor matmul_tn_cpu(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(0) == b.size(0), "nequip_fast matmul_tn: a (K, m) and b (K, n) "
              "expected, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "nequip_fast matmul_tn: a is ", a.scalar_type(), ", b is ",
              b.scalar_type());
  const auto [rows_fn, lanes] = rows_function();
  const int64_t K = a.size(0), m = a.size(1), n = b.size(1);
  // columns in whole vectors, rows at least a tile's (kMinRows): a^T b, or (b^T a)^T, the wider side as
  // columns where both fit (1.15-1.3x: (864|256|160 x 21504) @ (21504 x 64)); else torch's product
  const auto fits = [&](int64_t rows, int64_t cols) { return cols % lanes == 0 && rows >= kMinRows; };
  if (a.scalar_type() != at::kFloat || K == 0 || !(fits(m, n) || fits(n, m))) return at::mm(a.t(), b);
  if (!fits(m, n) || (m > n && fits(n, m))) return matmul_tn_cpu(b, a).t().contiguous();
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t chunk_rows =
      std::max(kChunkRows, ((K + kMaxChunks - 1) / kMaxChunks + kBlockRows - 1) / kBlockRows * kBlockRows);
  const int64_t chunks = (K + chunk_rows - 1) / chunk_rows;
  at::Tensor partial = at::empty({chunks, m, n}, a.options());
  const float* pa = ac.data_ptr<float>();
  const float* pb = bc.data_ptr<float>();
  float* pp = partial.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      rows_fn(pa, pb, c * chunk_rows, std::min(K, (c + 1) * chunk_rows), m, n, pp + c * m * n);
  });
  if (chunks == 1) return partial[0];
  at::Tensor out = at::empty({m, n}, a.options());
  float* po = out.data_ptr<float>();
  at::parallel_for(0, m * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float s = pp[i];
      for (int64_t c = 1; c < chunks; ++c) s += pp[c * m * n + i];
      po[i] = s;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nequip_fast, CPU, m) {
  m.impl("matmul_tn", &matmul_tn_cpu);
}

}  // namespace nequip_fast
