// CPU kernels of the fused convolution: one pass over CSR rows, no per-edge outputs, no atomics.
//
// Inside a kernel the node operands are transposed per irrep block from e3nn's [u][i] ("mul_ir")
// to [i][u] ("ir_mul") so that every inner loop runs over the channels u with unit stride, like
// the weights w[e, w_off + u]. Rows are independent, so results do not depend on the thread count.
#include "conv.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace nequip_fast {
namespace {

constexpr int64_t kRowGrain = 8;

// [n][off + u * dim + i] -> [n][off + i * mul + u] for each block.
template <typename T>
at::Tensor to_ir_mul(const at::Tensor& src, const std::vector<Block>& blocks) {
  const int64_t n = src.size(0), f = src.size(1);
  at::Tensor dst = at::empty_like(src);
  const T* s = src.data_ptr<T>();
  T* d = dst.data_ptr<T>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (const Block& b : blocks)
        for (int64_t u = 0; u < b.mul; ++u)
          for (int64_t i = 0; i < b.dim; ++i) d[r * f + b.off + i * b.mul + u] = s[r * f + b.off + u * b.dim + i];
  });
  return dst;
}

// c[q] = sum over the terms of pair q of value * sh[j]: the CG tensor contracted with this edge's sh.
template <typename T>
inline void contract_sh(const PathTable& t, const T* y, T* c) {
  const int64_t np = static_cast<int64_t>(t.pairs.size());
  for (int64_t q = 0; q < np; ++q) {
    const Pair& pr = t.pairs[q];
    T sum = 0;
    for (int64_t m = pr.term_begin; m < pr.term_end; ++m) sum += static_cast<T>(t.terms[m].value) * y[t.terms[m].j];
    c[q] = sum;
  }
}

template <typename T>
void segment_conv_kernel(const PathTable& t, const at::Tensor& xt, const at::Tensor& sh, const at::Tensor& w,
                         const int64_t* ptr, const int64_t* perm, const int64_t* col, at::Tensor& out) {
  const int64_t rows = out.size(0), fb = out.size(1), fa = xt.size(1), fs = sh.size(1), fw = w.size(1);
  const T* x = xt.data_ptr<T>();
  const T* y = sh.data_ptr<T>();
  const T* wt = w.data_ptr<T>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(fb), c(t.pairs.size()), xw(t.max_a_block);
    for (int64_t r = begin; r < end; ++r) {
      if (ptr[r] == ptr[r + 1]) continue;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t k = ptr[r]; k < ptr[r + 1]; ++k) {
        const int64_t e = perm[k];
        const T* xa = x + col[e] * fa;
        const T* we = wt + e * fw;
        contract_sh(t, y + e * fs, c.data());
        for (const PathView& p : t.paths) {
          const int64_t mul = p.mul;
          const T* wp = we + p.w_off;
          T* tmp = xw.data();
          for (int64_t a = 0; a < p.a_dim; ++a) {
            const T* xp = xa + p.a_off + a * mul;
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) tmp[a * mul + u] = xp[u] * wp[u];
          }
          for (int64_t q = p.pair_begin; q < p.pair_end; ++q) {
            const T cq = c[q];
            const T* ta = tmp + t.pairs[q].a * mul;
            T* ab = acc.data() + p.b_off + t.pairs[q].b * mul;
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) ab[u] += cq * ta[u];
          }
        }
      }
      T* orow = o + r * fb;
      for (const Block& b : t.b_blocks)
        for (int64_t u = 0; u < b.mul; ++u)
          for (int64_t i = 0; i < b.dim; ++i) orow[b.off + u * b.dim + i] = acc[b.off + i * b.mul + u];
    }
  });
}

template <typename T>
void edge_grads_kernel(const PathTable& t, const at::Tensor& xt, const at::Tensor& gt, const at::Tensor& sh,
                       const at::Tensor& w, const int64_t* ptr, const int64_t* perm, const int64_t* sender,
                       at::Tensor& g_sh, at::Tensor& g_w) {
  const int64_t rows = gt.size(0), fa = xt.size(1), fb = gt.size(1), fs = sh.size(1),
                fw = w.size(1);
  const T* x = xt.data_ptr<T>();
  const T* g = gt.data_ptr<T>();
  const T* y = sh.data_ptr<T>();
  const T* wt = w.data_ptr<T>();
  T* gy = g_sh.data_ptr<T>();
  T* gw = g_w.data_ptr<T>();
  at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> c(t.pairs.size());
    for (int64_t r = begin; r < end; ++r) {
      const T* gr = g + r * fb;
      for (int64_t k = ptr[r]; k < ptr[r + 1]; ++k) {
        const int64_t e = perm[k];
        const T* xa = x + sender[e] * fa;
        const T* we = wt + e * fw;
        T* gye = gy + e * fs;
        T* gwe = gw + e * fw;
        contract_sh(t, y + e * fs, c.data());
        for (const PathView& p : t.paths) {
          const int64_t mul = p.mul;
          const T* wp = we + p.w_off;
          T* gwp = gwe + p.w_off;
          for (int64_t q = p.pair_begin; q < p.pair_end; ++q) {
            const Pair& pr = t.pairs[q];
            const T cq = c[q];
            const T* xp = xa + p.a_off + pr.a * mul;
            const T* gp = gr + p.b_off + pr.b * mul;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t u = 0; u < mul; ++u) {
              const T xg = xp[u] * gp[u];
              gwp[u] += cq * xg;
              dot += wp[u] * xg;
            }
            for (int64_t m = pr.term_begin; m < pr.term_end; ++m)
              gye[t.terms[m].j] += static_cast<T>(t.terms[m].value) * dot;
          }
        }
      }
    }
  });
}

void check_graph(const at::Tensor& edge_index, const at::Tensor& ptr, const at::Tensor& perm, int64_t num_edges) {
  TORCH_CHECK(edge_index.scalar_type() == at::kLong && ptr.scalar_type() == at::kLong &&
                  perm.scalar_type() == at::kLong,
              "nequip_fast conv: edge_index, ptr and perm must be int64");
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2 && edge_index.size(1) == num_edges,
              "nequip_fast conv: edge_index must be (2, E) with E = ", num_edges, ", got ", edge_index.sizes());
  TORCH_CHECK(perm.dim() == 2 && perm.size(0) == 2 && perm.size(1) == num_edges, "nequip_fast conv: perm must be (2, E)");
  TORCH_CHECK(ptr.dim() == 2 && ptr.size(0) == 2 && ptr.size(1) >= 1, "nequip_fast conv: ptr must be (2, N + 1)");
}

void check_operands(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const PathTable& t) {
  TORCH_CHECK(x.dim() == 2 && sh.dim() == 2 && w.dim() == 2, "nequip_fast conv: x, sh, weight must be 2-d");
  TORCH_CHECK(x.scalar_type() == sh.scalar_type() && x.scalar_type() == w.scalar_type(),
              "nequip_fast conv: x, sh and weight must share a dtype, got ", x.scalar_type(), ", ",
              sh.scalar_type(), ", ", w.scalar_type());
  TORCH_CHECK(sh.size(0) == w.size(0), "nequip_fast conv: sh and weight need one row per edge");
  TORCH_CHECK(x.size(1) >= t.a_extent, "nequip_fast conv: x has ", x.size(1), " features, the paths need ", t.a_extent);
  for (const PathView& p : t.paths) {
    TORCH_CHECK(p.w_off + p.mul <= w.size(1), "nequip_fast conv: weight has too few columns");
    TORCH_CHECK(p.sh_off < sh.size(1), "nequip_fast conv: sh has too few columns");
  }
}

at::Tensor segment_conv_cpu(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight,
                            const at::Tensor& table, const at::Tensor& edge_index, const at::Tensor& ptr,
                            const at::Tensor& perm, int64_t out_features, bool transpose) {
  const PathTable t = parse_table(table, transpose);
  check_operands(x, sh, weight, t);
  check_graph(edge_index, ptr, perm, sh.size(0));
  TORCH_CHECK(out_features >= t.b_extent, "nequip_fast conv: out_features ", out_features, " < ", t.b_extent);
  TORCH_CHECK(x.size(0) == ptr.size(1) - 1, "nequip_fast conv: x has ", x.size(0), " rows, the graph ",
              ptr.size(1) - 1, " nodes");
  const int d = transpose ? 1 : 0;
  const at::Tensor ei = edge_index.contiguous(), p = ptr.contiguous(), pm = perm.contiguous();
  at::Tensor out = at::zeros({ptr.size(1) - 1, out_features}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::segment_conv", [&] {
    const at::Tensor xt = to_ir_mul<scalar_t>(x.contiguous(), t.a_blocks);
    segment_conv_kernel<scalar_t>(t, xt, sh.contiguous(), weight.contiguous(), p[d].data_ptr<int64_t>(),
                                  pm[d].data_ptr<int64_t>(), ei[1 - d].data_ptr<int64_t>(), out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> edge_grads_cpu(const at::Tensor& x, const at::Tensor& g, const at::Tensor& sh,
                                                  const at::Tensor& weight, const at::Tensor& table,
                                                  const at::Tensor& edge_index, const at::Tensor& ptr,
                                                  const at::Tensor& perm) {
  const PathTable t = parse_table(table, false);
  check_operands(x, sh, weight, t);
  check_graph(edge_index, ptr, perm, sh.size(0));
  TORCH_CHECK(g.dim() == 2 && g.scalar_type() == x.scalar_type() && g.size(1) >= t.b_extent &&
                  g.size(0) == ptr.size(1) - 1 && x.size(0) == g.size(0),
              "nequip_fast conv: g must be (N, out_features) in the dtype of x");
  const at::Tensor ei = edge_index.contiguous(), p = ptr.contiguous(), pm = perm.contiguous();
  at::Tensor g_sh = at::zeros_like(sh, at::MemoryFormat::Contiguous);
  at::Tensor g_w = at::zeros_like(weight, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::edge_grads", [&] {
    const at::Tensor xt = to_ir_mul<scalar_t>(x.contiguous(), t.a_blocks);
    const at::Tensor gt = to_ir_mul<scalar_t>(g.contiguous(), t.b_blocks);
    edge_grads_kernel<scalar_t>(t, xt, gt, sh.contiguous(), weight.contiguous(), p[0].data_ptr<int64_t>(),
                                pm[0].data_ptr<int64_t>(), ei[1].data_ptr<int64_t>(), g_sh, g_w);
  });
  return {g_sh, g_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(nequip_fast, CPU, m) {
  m.impl("segment_conv", &segment_conv_cpu);
  m.impl("edge_grads", &edge_grads_cpu);
}

}  // namespace nequip_fast
