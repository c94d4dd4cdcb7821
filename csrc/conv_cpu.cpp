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
#include <utility>
#include <vector>

// The 32-byte vector types below never cross a call boundary (everything using them is inlined
// into one clone), so the ABI note about passing them without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

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
  // The pairs of each path by b component (the plan orders them by a): pair ids by_b[k] for
  // k in [b_ptr[p.kptr + kk], b_ptr[p.kptr + kk + 1]) are those reducing into component kk of path p;
  // a_at[k] = p.a_off + pairs[by_b[k]].a * p.mul, where the pair's a component starts in an ir_mul row.
  const int32_t* b_ptr;
  const int32_t* by_b;
  const int32_t* a_at;
  // segment_conv2: the second (sh, w) operands, same shapes as sh and w.
  const T* sh2 = nullptr;
  const T* w2 = nullptr;
};

// The pairs of every path by b component (see Rows), with the offsets of their a components.
struct PairOrder {
  std::vector<int32_t> b_ptr, by_b, a_at;
};

// The pair ids of each path grouped by b component, indexed like the plan's kptr (see Rows).
template <typename T>
void pairs_by_b(const PlanView<T>& plan, int64_t kptr_size, PairOrder& order) {
  order.b_ptr.assign(kptr_size, 0);
  order.by_b.clear();
  order.a_at.clear();
  for (int32_t pi = 0; pi < plan.n_paths; ++pi) {
    const PlanPath& p = plan.paths[pi];
    for (int32_t kk = 0; kk < p.b_dim; ++kk) {
      order.b_ptr[p.kptr + kk] = int32_t(order.by_b.size());
      for (int32_t q = p.pair_begin; q < p.pair_end; ++q)
        if (plan.pairs[q].b == kk) {
          order.by_b.push_back(q);
          order.a_at.push_back(p.a_off + plan.pairs[q].a * p.mul);
        }
    }
    order.b_ptr[p.kptr + p.b_dim] = int32_t(order.by_b.size());
  }
}

#define NEQUIP_FAST_INLINE __attribute__((always_inline)) inline
// Lambdas too: one left out of line would be compiled for the baseline ISA, not the caller's clone.
#define NEQUIP_FAST_INLINE_LAMBDA __attribute__((always_inline))

// Edge layout [P edges, their P reverses, U unpaired], E = 2P + U, with R = E - P weight rows: a
// pair's two edges share one row (the radial network runs once per pair). P = 0: one row per edge.
template <typename T>
NEQUIP_FAST_INLINE const T* weight_row(const Rows<T>& a, int64_t e, const T* w) {
  return w + (e < a.pairs ? e : e - a.pairs) * a.fw;
}
template <typename T>
NEQUIP_FAST_INLINE const T* weight_row(const Rows<T>& a, int64_t e) {
  return weight_row(a, e, a.w);
}

// A tile of channels held in registers: NV vectors of L lanes (GCC vector types; 32-byte vectors
// are one AVX2 register, the baseline clone splits them).
template <typename T, int L>
struct Lanes {
  typedef T type __attribute__((vector_size(sizeof(T) * L)));
  typedef T unaligned __attribute__((vector_size(sizeof(T) * L), aligned(sizeof(T)), may_alias));  // loads, stores
};
template <typename T, int L, int NV>
struct Tile {
  using V = typename Lanes<T, L>::type;
  V v[NV];
  NEQUIP_FAST_INLINE static Tile zero() {
    Tile t;
    for (int i = 0; i < NV; ++i) t.v[i] = V{} ;
    return t;
  }
  using U = typename Lanes<T, L>::unaligned;
  NEQUIP_FAST_INLINE static Tile load(const T* p) {
    Tile t;
    for (int i = 0; i < NV; ++i) t.v[i] = *reinterpret_cast<const U*>(p + i * L);
    return t;
  }
  NEQUIP_FAST_INLINE void store(T* p) const {
    for (int i = 0; i < NV; ++i) *reinterpret_cast<U*>(p + i * L) = v[i];
  }
  NEQUIP_FAST_INLINE void fma(T s, const Tile& x) {  // this += s * x
    for (int i = 0; i < NV; ++i) v[i] += s * x.v[i];
  }
  NEQUIP_FAST_INLINE void fma(const Tile& x, const Tile& y) {  // this += x * y
    for (int i = 0; i < NV; ++i) v[i] += x.v[i] * y.v[i];
  }
  NEQUIP_FAST_INLINE Tile operator*(const Tile& y) const {
    Tile t;
    for (int i = 0; i < NV; ++i) t.v[i] = v[i] * y.v[i];
    return t;
  }
  NEQUIP_FAST_INLINE V vector_sum() const {
    V s = v[0];
    for (int i = 1; i < NV; ++i) s += v[i];
    return s;
  }
  NEQUIP_FAST_INLINE T sum() const { return half_sum<L>(vector_sum()); }  // all channels
  template <int N>
  NEQUIP_FAST_INLINE static T half_sum(const typename Lanes<T, N>::type& s) {
    if constexpr (N == 1) {
      return s[0];
    } else {
      using H = typename Lanes<T, N / 2>::unaligned;
      const T* lanes = reinterpret_cast<const T*>(&s);
      return half_sum<N / 2>(*reinterpret_cast<const H*>(lanes) + *reinterpret_cast<const H*>(lanes + N / 2));
    }
  }
};

constexpr int lanes_of(size_t item) { return int(32 / item); }

// __builtin_shufflevector: clang, GCC >= 12; older compilers take the scalar lane sums below.
#ifndef NEQUIP_FAST_SHUFFLE
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define NEQUIP_FAST_SHUFFLE 1
#endif
#endif
#endif
#ifndef NEQUIP_FAST_SHUFFLE
#define NEQUIP_FAST_SHUFFLE 0
#endif

// sums[i] = the sum of the lanes of v[i], for L vectors at once: pairwise sums within 16-byte
// halves (the pattern of x86's haddps/haddpd) and one sum across them; no horizontal sum per vector.
template <typename T, int L>
NEQUIP_FAST_INLINE void lane_sums(const T* v, T* sums) {  // v: L vectors of L lanes
#if NEQUIP_FAST_SHUFFLE
  using V = typename Lanes<T, L>::type;
  using U = typename Lanes<T, L>::unaligned;
  auto at = [&](int i) { return *reinterpret_cast<const U*>(v + i * L); };
  if constexpr (L == 8) {
    auto hadd = [](V a, V b) {
      return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
             __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
    };
    const V lo = hadd(hadd(at(0), at(1)), hadd(at(2), at(3))), hi = hadd(hadd(at(4), at(5)), hadd(at(6), at(7)));
    const V s = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11) +
                __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15);
    *reinterpret_cast<U*>(sums) = s;
    return;
  } else if constexpr (L == 4) {
    auto hadd = [](V a, V b) {
      return __builtin_shufflevector(a, b, 0, 4, 2, 6) + __builtin_shufflevector(a, b, 1, 5, 3, 7);
    };
    const V lo = hadd(at(0), at(1)), hi = hadd(at(2), at(3));
    *reinterpret_cast<U*>(sums) =
        __builtin_shufflevector(lo, hi, 0, 1, 4, 5) + __builtin_shufflevector(lo, hi, 2, 3, 6, 7);
    return;
  }
#endif
  for (int i = 0; i < L; ++i) {
    sums[i] = 0;
    for (int l = 0; l < L; ++l) sums[i] += v[i * L + l];
  }
}

// Per edge block scratch: the edges' sh transposed, their contracted CG coefficients, the pair dots
// of edge_grads; [column or pair (by-b order)][edge] so that the term loops run over the edges with unit stride.
template <typename T>
struct BlockScratch {
  std::vector<const T*> x, w, w2;
  std::vector<T> sht, c, c2, dots, acc;  // c2, w2: segment_conv2's second operands
  std::vector<T> dv;  // edge_grads: per pair, <x[a], w g[b]> by lane (vector types lose their alignment in templates)
  void fit(int64_t n, int64_t fs, int64_t np) {
    if (int64_t(x.size()) < n)
      x.resize(n), w.resize(n), w2.resize(n), sht.resize(n * fs), c.resize(n * np), c2.resize(n * np),
          dots.resize(n * np);
    constexpr int kLanes = lanes_of(sizeof(T));
    dv.resize((np + kLanes - 1) / kLanes * kLanes * kLanes);  // padding pairs stay zero
  }
};

// c[m * n + j] = sum over the terms of pair q = by_b[m] of value * sh[es[j], col]: the CG tensor
// contracted with the sh of each of the n edges es, vectorised over the edges, in the by-b order
// that the kernels walk (m runs through every pair once, path by path, b component by component).
template <typename T>
NEQUIP_FAST_INLINE void contract_sh(const Rows<T>& a, const T* sh, const int64_t* es, int64_t n, BlockScratch<T>& s,
                                    T* c) {
  T* sht = s.sht.data();
  for (int64_t j = 0; j < n; ++j)
    for (int64_t f = 0; f < a.fs; ++f) sht[f * n + j] = sh[es[j] * a.fs + f];
  for (int64_t m = 0; m < a.plan.n_pairs; ++m) {
    const int32_t q = a.by_b[m];
    T* cq = c + m * n;
    for (int64_t j = 0; j < n; ++j) cq[j] = 0;
    for (int64_t i = a.plan.pairs[q].term_begin; i < a.plan.pairs[q].term_end; ++i) {
      const T v = a.plan.values[i];
      const T* y = sht + a.plan.terms[i].sh * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) cq[j] += v * y[j];
    }
  }
}

// Calls f.template operator()<L, NV>(u0) for the tiles covering `mul` channels: one register tile
// of MUL channels when MUL > 0 (fully unrolled), else vector tiles when mul is a multiple of a
// vector's lanes and single channels otherwise.
template <typename T, int64_t MUL, typename F>
NEQUIP_FAST_INLINE void for_tiles(int64_t mul, F&& f) {
  constexpr int kLanes = lanes_of(sizeof(T));
  if constexpr (MUL > 0) {
    static_assert(MUL % kLanes == 0, "a fixed channel count is a whole number of vectors");
    f.template operator()<kLanes, int(MUL / kLanes)>(int64_t(0));
  } else if (mul % kLanes == 0) {
    for (int64_t u0 = 0; u0 < mul; u0 += kLanes) f.template operator()<kLanes, 1>(u0);
  } else {
    for (int64_t u0 = 0; u0 < mul; ++u0) f.template operator()<1, 1>(u0);
  }
}

// Edges per block of a row: their x and w rows stay in L1 while every output tile passes over them.
// Half as many where the gathered rows are wider than the output (the transposed conv: 3264 features
// against 576 at l_max 2; measured 8-10 % faster with 4, while the forward is ~10 % slower with 4).
constexpr int64_t kEdgeBlock = 8;

// out row r (e3nn's mul_ir layout) = sum over the row's edges of T(x[col], sh, w). Per block of
// the row's edges, each output component's channel tile is accumulated in registers (per path:
// t = sum over its pairs of c * x[a], acc += w * t); MUL > 0 fixes the channel count at compile
// time, 0 reads it from the plan. TWO: plus T(x[col], sh2, w2) (segment_conv2), x read once.
template <int64_t MUL, bool TWO, typename T>
NEQUIP_FAST_INLINE void segment_row(const Rows<T>& a, int64_t r, BlockScratch<T>& s, T* orow) {
  const int64_t begin = a.ptr[r], n = a.ptr[r + 1] - begin;
  s.fit(n, a.fs, a.plan.n_pairs);
  if (int64_t(s.acc.size()) < a.plan.b_features) s.acc.resize(a.plan.b_features);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t e = a.perm[begin + j];
    s.x[j] = a.x + a.col[e] * a.fa;
    s.w[j] = weight_row(a, e);
    if constexpr (TWO) s.w2[j] = weight_row(a, e, a.w2);
  }
  contract_sh(a, a.sh, a.perm + begin, n, s, s.c.data());
  if constexpr (TWO) contract_sh(a, a.sh2, a.perm + begin, n, s, s.c2.data());
  const T* const* xs = s.x.data();
  const T* const* ws = s.w.data();
  const T* const* ws2 = s.w2.data();
  const T* cs = s.c.data();
  const T* cs2 = s.c2.data();
  T* accs = s.acc.data();  // [ir_mul] between edge blocks
  const int64_t block = a.plan.a_features > a.plan.b_features ? kEdgeBlock / 2 : kEdgeBlock;
  for (int64_t j0 = 0; j0 < n; j0 += block) {
    const int64_t j1 = std::min(n, j0 + block);
    for (int64_t gi = 0; gi < a.plan.n_groups; ++gi) {
      const PlanGroup& b = a.plan.groups[gi];
      const int64_t mul = MUL > 0 ? MUL : b.mul;
      for_tiles<T, MUL>(mul, [&]<int L, int NV>(int64_t u0) NEQUIP_FAST_INLINE_LAMBDA {
        using TileT = Tile<T, L, NV>;
        for (int64_t kk = 0; kk < b.b_dim; ++kk) {
          T* acc_at = accs + b.b_off + kk * mul + u0;
          TileT acc = j0 == 0 ? TileT::zero() : TileT::load(acc_at);
          for (int64_t pi = b.path_begin; pi < b.path_end; ++pi) {
            const PlanPath& p = a.plan.paths[pi];
            const int32_t q_begin = a.b_ptr[p.kptr + kk], q_end = a.b_ptr[p.kptr + kk + 1];
            for (int64_t j = j0; j < j1 && q_begin < q_end; ++j) {
              const T* xj = xs[j] + u0;
              TileT t = TileT::zero();
              if constexpr (TWO) {
                TileT t2 = TileT::zero();
                for (int32_t m = q_begin; m < q_end; ++m) {
                  const TileT xq = TileT::load(xj + a.a_at[m]);
                  t.fma(cs[m * n + j], xq);
                  t2.fma(cs2[m * n + j], xq);
                }
                acc.fma(TileT::load(ws2[j] + p.w_off + u0), t2);
              } else {
                for (int32_t m = q_begin; m < q_end; ++m) t.fma(cs[m * n + j], TileT::load(xj + a.a_at[m]));
              }
              acc.fma(TileT::load(ws[j] + p.w_off + u0), t);
            }
          }
          if (j1 < n) {
            acc.store(acc_at);
          } else {
            T* o = orow + b.b_off + u0 * b.b_dim + kk;
            for (int i = 0; i < NV; ++i)
              for (int l = 0; l < L; ++l) o[(i * L + l) * b.b_dim] = acc.v[i][l];
          }
        }
      });
    }
  }
}

// g_w (accumulated into gwe) of <g[r], T(x[sender], sh[e], w[e])> for edge j of a block, and the
// pair dots <x[a], w g[b]> that give its g_sh. Per path and channel tile, w and g_w stay in
// registers; per b component, with g[r]'s tile: t = sum over its pairs of c * x[a], g_w += g * t.
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_edge(const Rows<T>& a, int64_t e, int64_t r, const T* c, T* dots, int64_t n,
                                        T* dv, T* gwe) {
  constexpr int kLanes = lanes_of(sizeof(T));
  using VL = typename Lanes<T, kLanes>::unaligned;
  if (MUL == 0)
    for (int64_t f = 0; f < a.plan.n_pairs * kLanes; ++f) dv[f] = 0;
  const T* gr = a.g + r * a.fb;
  const T* xa = a.x + a.col[e] * a.fa;
  const T* we = weight_row(a, e);
  // In locals: the dots' vector stores may alias anything, so members of `a` would be reloaded per pair.
  const int32_t* const a_at = a.a_at;
  const int32_t* const b_ptr = a.b_ptr;
  for (int64_t pi = 0; pi < a.plan.n_paths; ++pi) {
    const PlanPath& p = a.plan.paths[pi];
    const int64_t mul = MUL > 0 ? MUL : p.mul;
    for_tiles<T, MUL>(mul, [&]<int L, int NV>(int64_t u0) NEQUIP_FAST_INLINE_LAMBDA {
      using TileT = Tile<T, L, NV>;
      const TileT wp = TileT::load(we + p.w_off + u0);
      TileT gw = TileT::load(gwe + p.w_off + u0);
      const T* xu = xa + u0;
      for (int64_t kk = 0; kk < p.b_dim; ++kk) {
        const int32_t q_begin = b_ptr[p.kptr + kk], q_end = b_ptr[p.kptr + kk + 1];
        if (q_begin == q_end) continue;
        const TileT gk = TileT::load(gr + p.b_off + kk * mul + u0);
        const TileT wg = wp * gk;
        TileT t = TileT::zero();
        for (int32_t m = q_begin; m < q_end; ++m) {
          const TileT xq = TileT::load(xu + a_at[m]);
          t.fma(c[m * n], xq);
          VL& dq = *reinterpret_cast<VL*>(dv + m * kLanes);
          if constexpr (L == kLanes && MUL > 0)
            dq = (xq * wg).vector_sum();  // the tile covers all channels
          else if constexpr (L == kLanes)
            dq += (xq * wg).vector_sum();
          else
            dv[m * kLanes] += (xq * wg).sum();
        }
        gw.fma(gk, t);
      }
      gw.store(gwe + p.w_off + u0);
    });
  }
  T sums[kLanes];
  for (int64_t m0 = 0; m0 < a.plan.n_pairs; m0 += kLanes) {
    lane_sums<T, kLanes>(dv + m0 * kLanes, sums);
    for (int64_t m = m0; m < std::min<int64_t>(a.plan.n_pairs, m0 + kLanes); ++m) dots[m * n] = sums[m - m0];
  }
}

// g_sh and g_w of the n edges es (every edge of a pair in the same block: they share a g_w row).
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_block(const Rows<T>& a, const int64_t* es, int64_t n, const int64_t* receiver,
                                         BlockScratch<T>& s, T* g_sh, T* g_w) {
  const int64_t np = a.plan.n_pairs;
  s.fit(n, a.fs, np);
  // Each g_w row belongs to one block, so zeroing here (cache-hot) replaces a zero-filled allocation.
  for (int64_t j = 0; j < n; ++j) {
    T* gwe = g_w + (weight_row(a, es[j]) - a.w);
    for (int64_t f = 0; f < a.fw; ++f) gwe[f] = 0;
  }
  contract_sh(a, a.sh, es, n, s, s.c.data());
  T* dots = s.dots.data();
  for (int64_t j = 0; j < n; ++j)
    edge_grads_edge<MUL>(a, es[j], receiver[es[j]], s.c.data() + j, dots + j, n, s.dv.data(),
                         g_w + (weight_row(a, es[j]) - a.w));
  // g_sh[e, col] = sum over the terms (pair by_b[m], col) of value * dots[m], vectorised over the edges.
  T* gsht = s.sht.data();
  for (int64_t f = 0; f < a.fs * n; ++f) gsht[f] = 0;
  for (int64_t m = 0; m < np; ++m)
    for (int64_t i = a.plan.pairs[a.by_b[m]].term_begin; i < a.plan.pairs[a.by_b[m]].term_end; ++i) {
      const T v = a.plan.values[i];
      const T* dq = dots + m * n;
      T* gy = gsht + a.plan.terms[i].sh * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) gy[j] += v * dq[j];
    }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t f = 0; f < a.fs; ++f) g_sh[es[j] * a.fs + f] = gsht[f * n + j];
}

// Unpaired: the edges of row r (the CSR by receiver keeps g[r] in cache), each its own g_w row.
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_row(const Rows<T>& a, int64_t r, const int64_t* receiver, BlockScratch<T>& s,
                                       T* g_sh, T* g_w) {
  edge_grads_block<MUL>(a, a.perm + a.ptr[r], a.ptr[r + 1] - a.ptr[r], receiver, s, g_sh, g_w);
}

// With pairs (weight_row): one task per weight row k, which owns edge k + P and, if k < P, edge k
// too, and sums their g_w (no two tasks write one row); kPairBlock weight rows at a time.
constexpr int64_t kPairBlock = 16;
template <int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_pair_block(const Rows<T>& a, int64_t k0, int64_t k1, const int64_t* receiver,
                                              BlockScratch<T>& s, T* g_sh, T* g_w) {
  int64_t es[2 * kPairBlock], n = 0;
  for (int64_t k = k0; k < k1; ++k) {
    if (k < a.pairs) es[n++] = k;
    es[n++] = k + a.pairs;
  }
  edge_grads_block<MUL>(a, es, n, receiver, s, g_sh, g_w);
}

template <int64_t MUL, bool TWO, typename T>
NEQUIP_FAST_INLINE void segment_rows_impl(const Rows<T>& a, int64_t begin, int64_t end, BlockScratch<T>& s, T* out) {
  for (int64_t r = begin; r < end; ++r) {
    T* orow = out + r * a.plan.b_features;
    for (int64_t f = 0; f < a.plan.b_features; ++f) orow[f] = 0;  // columns no path reaches
    if (a.ptr[r] != a.ptr[r + 1]) segment_row<MUL, TWO>(a, r, s, orow);
  }
}

// One clone per ISA level, picked at load time (ifunc): AVX-512 (the whole suite has run on it on a
// Zen 5), AVX2+FMA, baseline x86-64 otherwise, so the wheel stays portable without -march. The
// tiles stay 32 bytes in every clone: 64-byte tiles measured 27% slower to 14% faster by kernel
// on that Zen 5 (benchmarks/RESULTS.md).
// -DNEQUIP_FAST_BASELINE_ONLY builds the baseline alone (tests/test_fused_ops.py checks that build).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NEQUIP_FAST_BASELINE_ONLY)
#define NEQUIP_FAST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NEQUIP_FAST_CLONES
#endif

#define NEQUIP_FAST_ROW_FUNCTIONS(T, MUL, SUFFIX)                                                      \
  NEQUIP_FAST_CLONES void segment_rows##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end,           \
                                               BlockScratch<T>& s, T* out) {                            \
    segment_rows_impl<MUL, false>(a, begin, end, s, out);                                              \
  }                                                                                                    \
  NEQUIP_FAST_CLONES void segment_rows2##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end,          \
                                                BlockScratch<T>& s, T* out) {                           \
    segment_rows_impl<MUL, true>(a, begin, end, s, out);                                               \
  }                                                                                                    \
  NEQUIP_FAST_CLONES void edge_grads_rows##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end,        \
                                                  const int64_t* receiver, BlockScratch<T>& s, T* g_sh, \
                                                  T* g_w) {                                             \
    for (int64_t r = begin; r < end; ++r) edge_grads_row<MUL>(a, r, receiver, s, g_sh, g_w);           \
  }                                                                                                    \
  NEQUIP_FAST_CLONES void edge_grads_pairs##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end,       \
                                                   const int64_t* receiver, BlockScratch<T>& s, T* g_sh, \
                                                   T* g_w) {                                            \
    for (int64_t k = begin; k < end; k += kPairBlock)                                                  \
      edge_grads_pair_block<MUL>(a, k, std::min(end, k + kPairBlock), receiver, s, g_sh, g_w);         \
  }
// NequIP's default 32 channels get unrolled kernels; any other channel counts the generic ones.
NEQUIP_FAST_ROW_FUNCTIONS(float, 0, )
NEQUIP_FAST_ROW_FUNCTIONS(double, 0, )
NEQUIP_FAST_ROW_FUNCTIONS(float, 32, 32)
NEQUIP_FAST_ROW_FUNCTIONS(double, 32, 32)

// The kernels' operands; `order` holds the pairs by b component that the rows point into.
template <typename T>
Rows<T> make_rows(const PlanView<T>& plan, const at::Tensor& xt, const at::Tensor& sh, const at::Tensor& w,
                  const int64_t* ptr, const int64_t* perm, const int64_t* col,
                  PairOrder& order) {
  int64_t kptr_size = 0;
  for (int32_t pi = 0; pi < plan.n_paths; ++pi)
    kptr_size = std::max<int64_t>(kptr_size, plan.paths[pi].kptr + plan.paths[pi].b_dim + 1);
  pairs_by_b(plan, kptr_size, order);
  return Rows<T>{plan, xt.data_ptr<T>(), xt.size(1), nullptr, 0, sh.data_ptr<T>(), sh.size(1), w.data_ptr<T>(),
                 w.size(1), sh.size(0) - w.size(0), ptr, perm, col, order.b_ptr.data(), order.by_b.data(),
                 order.a_at.data()};
}

template <typename T>
void segment_conv_kernel(const Rows<T>& rows, at::Tensor& out) {
  T* o = out.data_ptr<T>();
  const bool mul32 = rows.plan.uniform_mul == 32, two = rows.sh2 != nullptr;
  at::parallel_for(0, out.size(0), kRowGrain, [&](int64_t begin, int64_t end) {
    BlockScratch<T> scratch;
    if (two && mul32)
      segment_rows232(rows, begin, end, scratch, o);
    else if (two)
      segment_rows2(rows, begin, end, scratch, o);
    else if (mul32)
      segment_rows32(rows, begin, end, scratch, o);
    else
      segment_rows(rows, begin, end, scratch, o);
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
      BlockScratch<T> scratch;
      if (mul32)
        edge_grads_pairs32(rows, begin, end, receiver, scratch, gy, gw);
      else
        edge_grads_pairs(rows, begin, end, receiver, scratch, gy, gw);
    });
    return;
  }
  at::parallel_for(0, num_rows, kRowGrain, [&](int64_t begin, int64_t end) {
    BlockScratch<T> scratch;
    if (mul32)
      edge_grads_rows32(rows, begin, end, receiver, scratch, gy, gw);
    else
      edge_grads_rows(rows, begin, end, receiver, scratch, gy, gw);
  });
}

// segment_conv, and with (sh2, weight2) segment_conv2: the sum of the convs with (sh, weight) and (sh2, weight2).
at::Tensor segment_conv_impl(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight,
                             const at::Tensor* sh2, const at::Tensor* weight2, const at::Tensor& plan,
                             const at::Tensor& values, c10::IntArrayRef layout, const at::Tensor& edge_index,
                             const at::Tensor& ptr, const at::Tensor& perm, bool transpose) {
  check_operands(x, sh, weight, plan, values, layout, transpose, edge_index, ptr, perm);
  if (sh2 != nullptr)
    TORCH_CHECK(sh2->sizes() == sh.sizes() && weight2->sizes() == weight.sizes() &&
                    sh2->scalar_type() == sh.scalar_type() && weight2->scalar_type() == weight.scalar_type() &&
                    sh2->device() == sh.device() && weight2->device() == weight.device(),
                "nequip_fast segment_conv2: sh2 and weight2 must match sh and weight in shape, dtype and device, got ",
                sh2->sizes(), " and ", weight2->sizes(), " for ", sh.sizes(), " and ", weight.sizes());
  const int d = transpose ? 1 : 0;
  const at::Tensor ei = edge_index.contiguous(), p = ptr.contiguous(), pm = perm.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::segment_conv", [&] {
    const PlanView<scalar_t> view = plan_view<scalar_t>(plan, values, layout, transpose);
    out = at::empty({x.size(0), view.b_features}, x.options());  // every row is written
    const at::Tensor xt = to_ir_mul<scalar_t>(x.contiguous(), view.a_blocks, view.n_a_blocks);
    const at::Tensor shc = sh.contiguous(), wc = weight.contiguous();
    const at::Tensor sh2c = sh2 ? sh2->contiguous() : at::Tensor(), w2c = sh2 ? weight2->contiguous() : at::Tensor();
    PairOrder order;
    Rows<scalar_t> rows = make_rows<scalar_t>(view, xt, shc, wc, p[d].data_ptr<int64_t>(), pm[d].data_ptr<int64_t>(),
                                              ei[1 - d].data_ptr<int64_t>(), order);
    if (sh2 != nullptr) rows.sh2 = sh2c.data_ptr<scalar_t>(), rows.w2 = w2c.data_ptr<scalar_t>();
    segment_conv_kernel<scalar_t>(rows, out);
  });
  return out;
}

at::Tensor segment_conv_cpu(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight, const at::Tensor& plan,
                            const at::Tensor& values, c10::IntArrayRef layout, const at::Tensor& edge_index,
                            const at::Tensor& ptr, const at::Tensor& perm, bool transpose) {
  return segment_conv_impl(x, sh, weight, nullptr, nullptr, plan, values, layout, edge_index, ptr, perm, transpose);
}

at::Tensor segment_conv2_cpu(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight,
                             const at::Tensor& sh2, const at::Tensor& weight2, const at::Tensor& plan,
                             const at::Tensor& values, c10::IntArrayRef layout, const at::Tensor& edge_index,
                             const at::Tensor& ptr, const at::Tensor& perm, bool transpose) {
  return segment_conv_impl(x, sh, weight, &sh2, &weight2, plan, values, layout, edge_index, ptr, perm, transpose);
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
    PairOrder order;
    Rows<scalar_t> rows = make_rows<scalar_t>(view, xt, shc, wc, p[0].data_ptr<int64_t>(), pm[0].data_ptr<int64_t>(),
                                              ei[1].data_ptr<int64_t>(), order);
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
  m.impl("segment_conv2", &segment_conv2_cpu);
  m.impl("edge_grads", &edge_grads_cpu);
}

}  // namespace nequip_fast
