// CPU kernels of the fused convolution: one pass over CSR rows, no per-edge outputs, no atomics.
//
// Inside a kernel the node operands are transposed per irrep block from e3nn's [u][i] ("mul_ir")
// to [i][u] ("ir_mul") so that every inner loop runs over the channels u with unit stride, like
// the weights w[e, w_off + u]. Rows are independent, so results do not depend on the thread count.
#include "conv.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace nequip_fast {
namespace {

constexpr int64_t kRowGrain = 8;

inline int64_t block_off(const PlanBlock& b) { return b.off; }
inline int64_t block_dim(const PlanBlock& b) { return b.dim; }
inline int64_t block_off(const PlanGroup& g) { return g.b_off; }
inline int64_t block_dim(const PlanGroup& g) { return g.b_dim; }

// [n][off + u * dim + i] -> [n][off + i * mul + u] for each block (PlanBlock or PlanGroup).
template <typename T, typename Block>
at::Tensor to_ir_mul(const at::Tensor& src, const Block* blocks, int64_t num_blocks) {
  const int64_t n = src.size(0), f = src.size(1);
  at::Tensor dst = at::empty_like(src);
  const T* s = src.data_ptr<T>();
  T* d = dst.data_ptr<T>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t bi = 0; bi < num_blocks; ++bi) {
        const int64_t off = block_off(blocks[bi]), dim = block_dim(blocks[bi]), mul = blocks[bi].mul;
        for (int64_t u = 0; u < mul; ++u)
          for (int64_t i = 0; i < dim; ++i) d[r * f + off + i * mul + u] = s[r * f + off + u * dim + i];
      }
  });
  return dst;
}

// What a range of rows needs, as raw pointers: the per-ISA clones below must not call into libtorch.
template <typename T>
struct Rows {
  PlanView<T> plan;
  const T* x;  // gathered operand, [node][ir_mul]
  int64_t fa;
  const T* g;  // edge_grads: reduced operand, [node][ir_mul]
  int64_t fb;
  const T* sh;
  int64_t fs;
  const T* w;
  int64_t fw;
  int64_t pairs;  // P = E - rows of w: edges [0, P) and [P, 2P) are reversed pairs (see weight_row)
  const int64_t* ptr;
  const int64_t* perm;
  const int64_t* col;
};

#define NEQUIP_FAST_INLINE __attribute__((always_inline)) inline

// Edge layout [P edges, their P reverses, U unpaired], E = 2P + U, with R = E - P weight rows: a
// pair's two edges share one row (the radial network runs once per pair). P = 0: one row per edge.
template <typename T>
NEQUIP_FAST_INLINE const T* weight_row(const Rows<T>& a, int64_t e) {
  return a.w + (e < a.pairs ? e : e - a.pairs) * a.fw;
}

// c[q] = sum over the terms of pair q of value * sh[j]: the CG tensor contracted with this edge's sh.
template <typename T>
NEQUIP_FAST_INLINE void contract_sh(const Rows<T>& a, const T* y, T* c) {
  for (int64_t q = 0; q < a.plan.n_pairs; ++q) {
    T sum = 0;
    for (int64_t m = a.plan.pairs[q].term_begin; m < a.plan.pairs[q].term_end; ++m)
      sum += a.plan.values[m] * y[a.plan.terms[m].sh];
    c[q] = sum;
  }
}

// acc (ir_mul, one row) = sum over the row's edges of T(x[col], sh, w). MUL > 0 fixes the channel
// count at compile time (fully unrolled channel loops); 0 reads it from the path.
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void segment_row(const Rows<T>& a, int64_t r, T* acc, int64_t acc_size, T* c, T* xw) {
  for (int64_t f = 0; f < acc_size; ++f) acc[f] = 0;
  for (int64_t k = a.ptr[r]; k < a.ptr[r + 1]; ++k) {
    const int64_t e = a.perm[k];
    const T* xa = a.x + a.col[e] * a.fa;
    const T* we = weight_row(a, e);
    contract_sh(a, a.sh + e * a.fs, c);
    for (int64_t pi = 0; pi < a.plan.n_paths; ++pi) {
      const PlanPath& p = a.plan.paths[pi];
      const int64_t mul = MUL > 0 ? MUL : p.mul;
      const T* wp = we + p.w_off;
      for (int64_t i = 0; i < p.a_dim; ++i) {
        const T* xp = xa + p.a_off + i * mul;
#pragma omp simd
        for (int64_t u = 0; u < mul; ++u) xw[i * mul + u] = xp[u] * wp[u];
      }
      for (int64_t q = p.pair_begin; q < p.pair_end; ++q) {
        const T cq = c[q];
        const T* xq = xw + a.plan.pairs[q].a * mul;
        T* aq = acc + p.b_off + a.plan.pairs[q].b * mul;
#pragma omp simd
        for (int64_t u = 0; u < mul; ++u) aq[u] += cq * xq[u];
      }
    }
  }
}

// g_sh[e] (written) and g_w (accumulated into gwe) of <g[r], T(x[sender], sh[e], w[e])> for one edge e.
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_edge(const Rows<T>& a, int64_t e, int64_t r, T* c, T* g_sh, T* gwe) {
  const T* gr = a.g + r * a.fb;
  const T* xa = a.x + a.col[e] * a.fa;
  const T* we = weight_row(a, e);
  T* gye = g_sh + e * a.fs;
  for (int64_t f = 0; f < a.fs; ++f) gye[f] = 0;
  contract_sh(a, a.sh + e * a.fs, c);
  for (int64_t pi = 0; pi < a.plan.n_paths; ++pi) {
    const PlanPath& p = a.plan.paths[pi];
    const int64_t mul = MUL > 0 ? MUL : p.mul;
    const T* wp = we + p.w_off;
    T* gwp = gwe + p.w_off;
    for (int64_t q = p.pair_begin; q < p.pair_end; ++q) {
      const PlanPair& pr = a.plan.pairs[q];
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
      for (int64_t m = pr.term_begin; m < pr.term_end; ++m) gye[a.plan.terms[m].sh] += a.plan.values[m] * dot;
    }
  }
}

// Unpaired: for each edge of row r (the CSR by receiver keeps g[r] in cache), its own g_w row.
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_row(const Rows<T>& a, int64_t r, T* c, T* g_sh, T* g_w) {
  for (int64_t k = a.ptr[r]; k < a.ptr[r + 1]; ++k) {
    const int64_t e = a.perm[k];
    T* gwe = g_w + e * a.fw;
    // Each edge belongs to exactly one row, so zeroing here (cache-hot) replaces a zero-filled allocation.
    for (int64_t f = 0; f < a.fw; ++f) gwe[f] = 0;
    edge_grads_edge<MUL>(a, e, r, c, g_sh, gwe);
  }
}

// With pairs (weight_row): one task per weight row k, which owns edge k + P and, if k < P, edge k
// too, and sums their g_w (no two tasks write one row).
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_pair(const Rows<T>& a, int64_t k, const int64_t* receiver, T* c, T* g_sh,
                                        T* g_w) {
  T* gwe = g_w + k * a.fw;
  for (int64_t f = 0; f < a.fw; ++f) gwe[f] = 0;
  if (k < a.pairs) edge_grads_edge<MUL>(a, k, receiver[k], c, g_sh, gwe);
  edge_grads_edge<MUL>(a, k + a.pairs, receiver[k + a.pairs], c, g_sh, gwe);
}

// One clone per ISA level, picked at load time (ifunc): AVX2+FMA where the CPU has it, baseline
// x86-64 otherwise, so the wheel stays portable without -march.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NEQUIP_FAST_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NEQUIP_FAST_CLONES
#endif

#define NEQUIP_FAST_ROW_FUNCTIONS(T, MUL, SUFFIX)                                                      \
  NEQUIP_FAST_CLONES void segment_rows##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end, T* acc,   \
                                               int64_t acc_size, T* c, T* xw, T* out) {                 \
    for (int64_t r = begin; r < end; ++r) {                                                            \
      T* orow = out + r * acc_size;                                                                    \
      for (int64_t f = 0; f < acc_size; ++f) orow[f] = 0; /* columns no path reaches stay zero */      \
      if (a.ptr[r] == a.ptr[r + 1]) continue;                                                          \
      segment_row<MUL>(a, r, acc, acc_size, c, xw);                                                    \
      for (int64_t gi = 0; gi < a.plan.n_groups; ++gi) {                                               \
        const PlanGroup& b = a.plan.groups[gi];                                                        \
        for (int64_t u = 0; u < b.mul; ++u)                                                            \
          for (int64_t i = 0; i < b.b_dim; ++i)                                                        \
            orow[b.b_off + u * b.b_dim + i] = acc[b.b_off + i * b.mul + u];                            \
      }                                                                                                \
    }                                                                                                  \
  }                                                                                                    \
  NEQUIP_FAST_CLONES void edge_grads_rows##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end, T* c,  \
                                                  T* g_sh, T* g_w) {                                    \
    for (int64_t r = begin; r < end; ++r) edge_grads_row<MUL>(a, r, c, g_sh, g_w);                     \
  }                                                                                                    \
  NEQUIP_FAST_CLONES void edge_grads_pairs##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end,       \
                                                   const int64_t* receiver, T* c, T* g_sh, T* g_w) {    \
    for (int64_t k = begin; k < end; ++k) edge_grads_pair<MUL>(a, k, receiver, c, g_sh, g_w);          \
  }
// NequIP's default 32 channels get unrolled kernels; any other channel counts the generic ones.
NEQUIP_FAST_ROW_FUNCTIONS(float, 0, )
NEQUIP_FAST_ROW_FUNCTIONS(double, 0, )
NEQUIP_FAST_ROW_FUNCTIONS(float, 32, 32)
NEQUIP_FAST_ROW_FUNCTIONS(double, 32, 32)

template <typename T>
Rows<T> make_rows(const PlanView<T>& plan, const at::Tensor& xt, const at::Tensor& sh, const at::Tensor& w,
                  const int64_t* ptr, const int64_t* perm, const int64_t* col) {
  return Rows<T>{plan, xt.data_ptr<T>(), xt.size(1), nullptr, 0, sh.data_ptr<T>(), sh.size(1), w.data_ptr<T>(),
                 w.size(1), sh.size(0) - w.size(0), ptr, perm, col};
}

template <typename T>
void segment_conv_kernel(const Rows<T>& rows, at::Tensor& out) {
  const int64_t fb = out.size(1);
  T* o = out.data_ptr<T>();
  at::parallel_for(0, out.size(0), kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(fb), c(rows.plan.n_pairs), xw(rows.plan.max_a_block);
    if (rows.plan.uniform_mul == 32)
      segment_rows32(rows, begin, end, acc.data(), fb, c.data(), xw.data(), o);
    else
      segment_rows(rows, begin, end, acc.data(), fb, c.data(), xw.data(), o);
  });
}

template <typename T>
void edge_grads_kernel(const Rows<T>& rows, const int64_t* receiver, int64_t num_rows, at::Tensor& g_sh,
                       at::Tensor& g_w) {
  T* gy = g_sh.data_ptr<T>();
  T* gw = g_w.data_ptr<T>();
  const bool mul32 = rows.plan.uniform_mul == 32;
  if (rows.pairs > 0) {  // one task per weight row
    at::parallel_for(0, g_sh.size(0) - rows.pairs, kRowGrain * 16, [&](int64_t begin, int64_t end) {
      std::vector<T> c(rows.plan.n_pairs);
      if (mul32)
        edge_grads_pairs32(rows, begin, end, receiver, c.data(), gy, gw);
      else
        edge_grads_pairs(rows, begin, end, receiver, c.data(), gy, gw);
    });
    return;
  }
  at::parallel_for(0, num_rows, kRowGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> c(rows.plan.n_pairs);
    if (mul32)
      edge_grads_rows32(rows, begin, end, c.data(), gy, gw);
    else
      edge_grads_rows(rows, begin, end, c.data(), gy, gw);
  });
}

at::Tensor segment_conv_cpu(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight, const at::Tensor& plan,
                            const at::Tensor& values, c10::IntArrayRef layout, const at::Tensor& edge_index,
                            const at::Tensor& ptr, const at::Tensor& perm, bool transpose) {
  check_operands(x, sh, weight, plan, values, layout, transpose, edge_index, ptr, perm);
  const int d = transpose ? 1 : 0;
  const at::Tensor ei = edge_index.contiguous(), p = ptr.contiguous(), pm = perm.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::segment_conv", [&] {
    const PlanView<scalar_t> view = plan_view<scalar_t>(plan, values, layout, transpose);
    out = at::empty({x.size(0), view.b_features}, x.options());  // every row is written
    const at::Tensor xt = to_ir_mul<scalar_t>(x.contiguous(), view.a_blocks, view.n_a_blocks);
    const at::Tensor shc = sh.contiguous(), wc = weight.contiguous();
    segment_conv_kernel<scalar_t>(make_rows<scalar_t>(view, xt, shc, wc, p[d].data_ptr<int64_t>(),
                                                      pm[d].data_ptr<int64_t>(), ei[1 - d].data_ptr<int64_t>()),
                                  out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> edge_grads_cpu(const at::Tensor& x, const at::Tensor& g, const at::Tensor& sh,
                                                  const at::Tensor& weight, const at::Tensor& plan,
                                                  const at::Tensor& values, c10::IntArrayRef layout,
                                                  const at::Tensor& edge_index, const at::Tensor& ptr,
                                                  const at::Tensor& perm) {
  check_operands(x, sh, weight, plan, values, layout, false, edge_index, ptr, perm, &g);
  const at::Tensor ei = edge_index.contiguous(), p = ptr.contiguous(), pm = perm.contiguous();
  at::Tensor g_sh = at::empty_like(sh, at::MemoryFormat::Contiguous);  // every edge is written
  at::Tensor g_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::edge_grads", [&] {
    const PlanView<scalar_t> view = plan_view<scalar_t>(plan, values, layout, false);
    const at::Tensor xt = to_ir_mul<scalar_t>(x.contiguous(), view.a_blocks, view.n_a_blocks);
    const at::Tensor gt = to_ir_mul<scalar_t>(g.contiguous(), view.groups, view.n_groups);
    const at::Tensor shc = sh.contiguous(), wc = weight.contiguous();
    Rows<scalar_t> rows = make_rows<scalar_t>(view, xt, shc, wc, p[0].data_ptr<int64_t>(), pm[0].data_ptr<int64_t>(),
                                              ei[1].data_ptr<int64_t>());
    rows.g = gt.data_ptr<scalar_t>();
    rows.fb = gt.size(1);
    edge_grads_kernel<scalar_t>(rows, ei[0].data_ptr<int64_t>(), gt.size(0), g_sh, g_w);
  });
  return {g_sh, g_w};
}

// Both CSRs by counting sort: O(E + N), serial, stable (edges keep their order within a row).
std::tuple<at::Tensor, at::Tensor> conv_graph_cpu(const at::Tensor& edge_index, int64_t num_nodes) {
  TORCH_CHECK(edge_index.scalar_type() == at::kLong && edge_index.dim() == 2 && edge_index.size(0) == 2,
              "nequip_fast conv_graph: edge_index must be int64 of shape (2, E), got ", edge_index.sizes());
  const at::Tensor ei = edge_index.contiguous();
  const int64_t num_edges = ei.size(1);
  at::Tensor ptr = at::zeros({2, num_nodes + 1}, ei.options());
  at::Tensor perm = at::empty({2, num_edges}, ei.options());
  std::vector<int64_t> next(num_nodes);
  for (int64_t d = 0; d < 2; ++d) {
    const int64_t* key = ei.data_ptr<int64_t>() + d * num_edges;
    int64_t* p = ptr.data_ptr<int64_t>() + d * (num_nodes + 1);
    int64_t* order = perm.data_ptr<int64_t>() + d * num_edges;
    for (int64_t e = 0; e < num_edges; ++e) {
      TORCH_CHECK(key[e] >= 0 && key[e] < num_nodes, "nequip_fast conv_graph: node index ", key[e],
                  " out of range for ", num_nodes, " nodes");
      ++p[key[e] + 1];
    }
    for (int64_t r = 0; r < num_nodes; ++r) p[r + 1] += p[r];
    std::copy(p, p + num_nodes, next.begin());
    for (int64_t e = 0; e < num_edges; ++e) order[next[key[e]]++] = e;
  }
  return {ptr, perm};
}

}  // namespace

TORCH_LIBRARY_IMPL(nequip_fast, CPU, m) {
  m.impl("conv_graph", &conv_graph_cpu);
  m.impl("segment_conv", &segment_conv_cpu);
  m.impl("edge_grads", &edge_grads_cpu);
}

}  // namespace nequip_fast
