// CPU kernels of the fused convolution: one pass over CSR rows, no per-edge outputs, no atomics.
//
// Inside a kernel the node operands are transposed per irrep block from e3nn's [u][i] ("mul_ir")
// to [i][u] ("ir_mul") so that every inner loop runs over the channels u with unit stride, like
// the weights w[e, w_off + u]. Rows are independent, so results do not depend on the thread count.
// Per edge, the CG tensor contracted with the edge's sh is a dense a_dim x b_dim block per path; the
// kernels hold one output group's components (or edge_grads' g components) in registers for a tile
// of channels and stream the edges' x and w rows past them.
#include "conv.h"
#include "isa.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <vector>

// The vector types below never cross a call boundary (everything using them is inlined into one
// per-ISA version), so the ABI note about passing them without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace nequip_fast {
namespace {

constexpr int64_t kRowGrain = 8;

inline int64_t block_off(const PlanBlock& b) { return b.off; }
inline int64_t block_dim(const PlanBlock& b) { return b.dim; }
inline int64_t block_off(const PlanGroup& g) { return g.b_off; }
inline int64_t block_dim(const PlanGroup& g) { return g.b_dim; }

// What a range of rows needs, as raw pointers: the per-ISA versions below must not call into libtorch.
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
  int64_t rows;  // of the CSR
  const int64_t* perm;
  const int64_t* col;
  // Each path's contracted CG coefficients as a dense a_dim x b_dim block (DenseOrder): pair (a, kk)
  // of path p has the dense index c_off[p] + a * b_dim + kk, of a diagonal path c_off[p] + kk.
  const int32_t* c_off;
  const int32_t* pair_at;  // per pair q: its dense index
  const uint8_t* diagonal;  // per path: its pairs are (i, i) for each i, the block only its diagonal
  int64_t n_dense;
  // segment_conv2: the second (sh, w) operands, same shapes as sh and w.
  const T* sh2 = nullptr;
  const T* w2 = nullptr;
};

// Each path's pairs as a dense a_dim x b_dim block of coefficients, zero where a pair has no terms,
// so that a kernel holds a path's b components in registers, indexed at compile time. The zeros
// cost multiply-adds (cross products, say), which measured cheaper than a branch per pair. A
// diagonal path (pairs (i, i) only: every path through the l = 0 harmonic, a quarter of the dense
// block's multiply-adds at l_max 1 and a seventh at l_max 2) keeps its diagonal alone, and the
// kernels take one multiply-add per component for it.
struct DenseOrder {
  std::vector<int32_t> c_off, pair_at;
  std::vector<uint8_t> diagonal;
  int64_t n_dense = 0;
};

template <typename T>
bool is_diagonal(const PlanView<T>& plan, const PlanPath& p) {
  if (p.a_dim != p.b_dim || p.pair_end - p.pair_begin != p.a_dim) return false;
  for (int32_t q = p.pair_begin; q < p.pair_end; ++q)
    if (plan.pairs[q].a != plan.pairs[q].b) return false;
  return true;  // the pairs of a path are distinct
}

template <typename T>
void dense_order(const PlanView<T>& plan, DenseOrder& order) {
  order.c_off.resize(plan.n_paths), order.pair_at.resize(plan.n_pairs), order.diagonal.resize(plan.n_paths);
  order.n_dense = 0;
  for (int32_t pi = 0; pi < plan.n_paths; ++pi) {
    const PlanPath& p = plan.paths[pi];
    const bool diagonal = is_diagonal(plan, p);
    order.c_off[pi] = int32_t(order.n_dense), order.diagonal[pi] = diagonal;
    for (int32_t q = p.pair_begin; q < p.pair_end; ++q)
      order.pair_at[q] = int32_t(order.n_dense + (diagonal ? 0 : plan.pairs[q].a * p.b_dim) + plan.pairs[q].b);
    order.n_dense += diagonal ? p.a_dim : int64_t(p.a_dim) * p.b_dim;
  }
}

#define NEQUIP_FAST_INLINE __attribute__((always_inline)) inline
// Lambdas too: one left out of line would be compiled for the baseline ISA, not the caller's version.
#define NEQUIP_FAST_INLINE_LAMBDA __attribute__((always_inline))

// One irrep block of a row, [u][i] -> [i][u]: stores with unit stride, loads with stride DIM, which
// the compiler turns into vector permutes when DIM is fixed (0: read from dim).
template <int64_t DIM, typename T>
NEQUIP_FAST_INLINE void block_to_ir_mul(const T* s, T* d, int64_t mul, int64_t dim) {
  const int64_t D = DIM > 0 ? DIM : dim;
  for (int64_t i = 0; i < D; ++i)
    for (int64_t u = 0; u < mul; ++u) d[i * mul + u] = s[u * D + i];
}

// Rows [begin, end) of [n][off + u * dim + i] -> [n][off + i * mul + u] for each block (PlanBlock
// or PlanGroup), f features per row.
template <typename T, typename Block>
NEQUIP_FAST_INLINE void to_ir_mul_impl(const T* s, T* d, int64_t f, int64_t begin, int64_t end, const Block* blocks,
                                       int64_t num_blocks) {
  for (int64_t r = begin; r < end; ++r)
    for (int64_t bi = 0; bi < num_blocks; ++bi) {
      const int64_t off = r * f + block_off(blocks[bi]), dim = block_dim(blocks[bi]), mul = blocks[bi].mul;
      switch (dim) {
        case 1: std::copy(s + off, s + off + mul, d + off); break;
        case 3: block_to_ir_mul<3>(s + off, d + off, mul, dim); break;
        case 5: block_to_ir_mul<5>(s + off, d + off, mul, dim); break;
        case 7: block_to_ir_mul<7>(s + off, d + off, mul, dim); break;
        default: block_to_ir_mul<0>(s + off, d + off, mul, dim);
      }
    }
}

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

// A tile of channels held in registers: NV vectors of L lanes (GCC vector types: 64-byte ones are
// one AVX-512 register, 32-byte ones one AVX2 register, 16-byte ones one SSE register).
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

// The lanes of v as one 32-byte vector (lanes_of(sizeof(T)) lanes): 64-byte vectors sum their
// halves, narrower ones fill the low lanes.
template <typename T, int L>
NEQUIP_FAST_INLINE typename Lanes<T, lanes_of(sizeof(T))>::type fold32(const typename Lanes<T, L>::type& v) {
  constexpr int K = lanes_of(sizeof(T));
  using VK = typename Lanes<T, K>::type;
  if constexpr (L == K) {
    return v;
  } else if constexpr (L == 2 * K) {
    using U = typename Lanes<T, K>::unaligned;
    const T* lanes = reinterpret_cast<const T*>(&v);
    return VK(*reinterpret_cast<const U*>(lanes)) + VK(*reinterpret_cast<const U*>(lanes + K));
  } else {
    static_assert(L < K, "tiles are single channels or 16-, 32- or 64-byte vectors");
    VK r{};
    for (int l = 0; l < L; ++l) r[l] = v[l];
    return r;
  }
}

// Where each output group's slice of an edge's rows begins, for prefetch_rows_part: line bounds
// bounds[k * (groups + 1) + group], k = 0, 1, 2 for the x, w and sh rows.
struct PrefetchParts {
  std::vector<int32_t> bounds;
  int64_t parts = 0;
  template <typename T>
  void fit(const Rows<T>& a) {
    if (parts == a.plan.n_groups) return;
    parts = a.plan.n_groups;
    bounds.resize(3 * (parts + 1));
    const int64_t counts[3] = {a.fa, a.fw, a.fs};
    for (int k = 0; k < 3; ++k) {
      const int64_t lines = (counts[k] * int64_t(sizeof(T)) + 63) / 64;
      for (int64_t part = 0; part <= parts; ++part) bounds[k * (parts + 1) + part] = int32_t(lines * part / parts);
    }
  }
};

// Per edge block scratch: the edges' sh transposed, their contracted CG coefficients and
// edge_grads' pair dots, [column or dense index][edge] so that the term loops run over the edges
// with unit stride.
template <typename T>
struct BlockScratch {
  std::vector<const T*> x, w, w2;
  std::vector<T> sht, c, dots, acc;  // w2: segment_conv2's second weights
  std::vector<T> dv;  // edge_grads: per dense index, <x[a], w g[kk]> in 32 bytes of lanes
  PrefetchParts parts;
  void fit(int64_t n, int64_t fs, int64_t nc) {
    if (int64_t(x.size()) < n)
      x.resize(n), w.resize(n), w2.resize(n), sht.resize(n * fs), c.resize(n * nc), dots.resize(n * nc);
    constexpr int kLanes = lanes_of(sizeof(T));
    dv.resize((nc + kLanes - 1) / kLanes * kLanes * kLanes);  // padding stays zero
  }
};

// c[m * n + j] for each dense index m (DenseOrder) = sum over the terms of m's pair of value *
// sh[es[j], col]: the CG tensor contracted with the sh of each of the n edges es, vectorised over the
// edges; zero where a pair has no terms.
template <typename T>
NEQUIP_FAST_INLINE void contract_sh(const Rows<T>& a, const T* sh, const int64_t* es, int64_t n, BlockScratch<T>& s,
                                    T* c) {
  T* sht = s.sht.data();
  for (int64_t j = 0; j < n; ++j)
    for (int64_t f = 0; f < a.fs; ++f) sht[f * n + j] = sh[es[j] * a.fs + f];
  for (int64_t m = 0; m < a.n_dense * n; ++m) c[m] = 0;  // where no pair reaches
  // Per pair, its terms summed in a register of K edges and stored once (a load, add and store per
  // term and edge before: 15% of the l_max 2 forward).
  for (int64_t q = 0; q < a.plan.n_pairs; ++q) {
    T* cq = c + a.pair_at[q] * n;
    const int32_t begin = a.plan.pairs[q].term_begin, end = a.plan.pairs[q].term_end;
    int64_t j = 0;
    auto edges = [&]<int K>() NEQUIP_FAST_INLINE_LAMBDA {  // edges [j, j + K) in one vector
      using U = typename Lanes<T, K>::unaligned;
      typename Lanes<T, K>::type acc{};
      for (int32_t i = begin; i < end; ++i)
        acc += a.plan.values[i] * *reinterpret_cast<const U*>(sht + a.plan.terms[i].sh * n + j);
      *reinterpret_cast<U*>(cq + j) = acc;
      j += K;
    };
    constexpr int kLanes = lanes_of(sizeof(T));  // blocks: 8 edges, 4 in the transposed convs, 32 in edge_grads
    while (j + 4 * kLanes <= n) edges.template operator()<4 * kLanes>();
    if (j + 2 * kLanes <= n) edges.template operator()<2 * kLanes>();
    if (j + kLanes <= n) edges.template operator()<kLanes>();
    if (j + kLanes / 2 <= n) edges.template operator()<kLanes / 2>();
    for (; j < n; ++j) {
      T acc = 0;
      for (int32_t i = begin; i < end; ++i) acc += a.plan.values[i] * sht[a.plan.terms[i].sh * n + j];
      cq[j] = acc;
    }
  }
}

// Calls f.template operator()<L, NV>(u0) for the tiles covering `mul` channels with vectors of
// LANES lanes: tiles of at most MAX_NV vectors when MUL > 0 (MUL fixed at compile time, fully
// unrolled), else one-vector tiles when mul is a multiple of a vector's lanes and single channels
// otherwise.
template <typename T, int64_t MUL, int MAX_NV, int LANES, typename F>
NEQUIP_FAST_INLINE void for_tiles(int64_t mul, F&& f) {
  if constexpr (MUL > 0) {
    static_assert(MUL % LANES == 0, "a fixed channel count is a whole number of vectors");
    constexpr int kVectors = int(MUL / LANES), kNV = kVectors < MAX_NV ? kVectors : MAX_NV;
    static_assert(kVectors % kNV == 0, "tiles cover the channels");
    for (int64_t u0 = 0; u0 < MUL; u0 += kNV * LANES) f.template operator()<LANES, kNV>(u0);
  } else if (mul % LANES == 0) {
    for (int64_t u0 = 0; u0 < mul; u0 += LANES) f.template operator()<LANES, 1>(u0);
  } else {
    for (int64_t u0 = 0; u0 < mul; ++u0) f.template operator()<1, 1>(u0);
  }
}

// Vectors per channel tile when `live` tiles are held at once: what fits the vector registers of
// an ISA with VB-byte vectors (16 with AVX2, 32 with AVX-512), a power of two.
template <int VB>
constexpr int tile_vectors(int live) {
  constexpr int kRegisters = VB == 64 ? 32 : 16;
  return kRegisters / live >= 4 ? 4 : kRegisters / live >= 2 ? 2 : 1;
}

// Calls f.template operator()<KB>(k0) for chunks [k0, k0 + KB) covering `dim` components: one
// chunk, its size fixed at compile time, for l <= 3 (dim 1, 3, 5, 7); single components beyond.
template <typename F>
NEQUIP_FAST_INLINE void for_components(int64_t dim, F&& f) {
  switch (dim) {
    case 1: f.template operator()<1>(int64_t(0)); break;
    case 3: f.template operator()<3>(int64_t(0)); break;
    case 5: f.template operator()<5>(int64_t(0)); break;
    case 7: f.template operator()<7>(int64_t(0)); break;
    default:
      for (int64_t k0 = 0; k0 < dim; ++k0) f.template operator()<1>(k0);
  }
}

// Edges per block of a row: their x and w rows stay in L1 while every output tile passes over them.
// Half as many where the gathered rows are wider than the output (the transposed conv: 3264 features
// against 576 at l_max 2).
constexpr int64_t kEdgeBlock = 8;

// Asks for `count` items from p ahead of their use: the w rows (3.8 kB per edge at l_max 2) stream
// from memory, and without this the kernels wait on them. LOCALITY 3: into L1, where the next
// block fits beside the one in use (each l_max 1 kernel 1.06-1.25x faster than into L2); 2: into L2.
template <int LOCALITY, typename T>
NEQUIP_FAST_INLINE void prefetch(const T* p, int64_t count) {
  for (int64_t f = 0; f < count; f += 64 / sizeof(T)) __builtin_prefetch(p + f, 0, LOCALITY);
}

// Most bytes of an edge block's rows that go to L1 by prefetch, all at once (the block in use holds
// as many): every l_max 1 kernel (18-22 kB at 32 channels) but none at l_max 2 (49-82 kB: there
// into L2, a slice per output group, prefetch_rows_part).
constexpr int64_t kL1PrefetchBytes = 24 << 10;

// The gathered x rows, the w rows (and w2's) and the sh rows (and sh2's) of the n edges es: in row
// order the edges' own rows are scattered too (a missed sh row cost 12% of the l_max 1 forward).
template <int LOCALITY, bool TWO, typename T>
NEQUIP_FAST_INLINE void prefetch_rows(const Rows<T>& a, const int64_t* es, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    prefetch<LOCALITY>(a.x + a.col[es[j]] * a.fa, a.fa);
    prefetch<LOCALITY>(weight_row(a, es[j]), a.fw);
    prefetch<LOCALITY>(a.sh + es[j] * a.fs, a.fs);
    if constexpr (TWO)
      prefetch<LOCALITY>(weight_row(a, es[j], a.w2), a.fw), prefetch<LOCALITY>(a.sh2 + es[j] * a.fs, a.fs);
  }
}

// Slice `part` of `parts` of those rows (PrefetchParts): at l_max 2 the next block's rows asked for
// before each output group, not all at once, which had queued ~400 prefetches behind each other
// and left the forward and the transposed convs waiting on them (1.04-1.15x faster spread).
template <int LOCALITY, bool TWO, typename T>
NEQUIP_FAST_INLINE void prefetch_rows_part(const Rows<T>& a, const int64_t* es, int64_t n, const int32_t* bounds,
                                           int64_t part, int64_t parts) {
  const int32_t* xb = bounds + part;
  const int32_t* wb = xb + parts + 1;
  const int32_t* sb = wb + parts + 1;
  auto slice = [&](const T* p, const int32_t* b) NEQUIP_FAST_INLINE_LAMBDA {
    for (int32_t l = b[0]; l < b[1]; ++l) __builtin_prefetch(p + l * (64 / sizeof(T)), 0, LOCALITY);
  };
  for (int64_t j = 0; j < n; ++j) {
    slice(a.x + a.col[es[j]] * a.fa, xb);
    slice(weight_row(a, es[j]), wb);
    slice(a.sh + es[j] * a.fs, sb);
    if constexpr (TWO) slice(weight_row(a, es[j], a.w2), wb), slice(a.sh2 + es[j] * a.fs, sb);
  }
}

// One block of a row's edges as the group kernels read it.
template <typename T>
struct EdgeBlock {
  const T* const* x;  // per edge its gathered row
  const T* const* w;
  const T* c;  // [dense index][edge], contract_sh
  int64_t n;
  bool first, last;  // the accumulators start at zero, the results go out
  const int64_t* next = nullptr;  // the edges whose rows to prefetch, a slice per group
  int64_t n_next = 0;
  const int32_t* bounds = nullptr;  // PrefetchParts
};

// Output components [k0, k0 + KB) of group b over one edge block: per channel tile (VB-byte
// vectors), KB accumulators in registers; per path and edge, for each a component wx = w * x[a],
// then acc[kk] += c[a][kk] * wx.
template <int VB, int64_t MUL, int KB, typename T>
NEQUIP_FAST_INLINE void segment_group(const Rows<T>& a, const PlanGroup& b, int64_t k0, const EdgeBlock<T>& blk,
                                      T* accs, T* orow) {
  const int64_t mul = MUL > 0 ? MUL : b.mul, n = blk.n;
  constexpr int kLive = KB + 2;  // accumulators, w and w * x
  for_tiles<T, MUL, tile_vectors<VB>(kLive), int(VB / sizeof(T))>(mul, [&]<int L, int NV>(int64_t u0)
                                                                        NEQUIP_FAST_INLINE_LAMBDA {
    using TileT = Tile<T, L, NV>;
    TileT acc[KB];
#pragma GCC unroll 32
    for (int kk = 0; kk < KB; ++kk)
      acc[kk] = blk.first ? TileT::zero() : TileT::load(accs + b.b_off + (k0 + kk) * mul + u0);
    for (int64_t pi = b.path_begin; pi < b.path_end; ++pi) {
      const PlanPath& p = a.plan.paths[pi];
      if (a.diagonal[pi]) {  // acc[kk] += c[k0 + kk] * w * x[k0 + kk]
        const int64_t c_at = (a.c_off[pi] + k0) * n;
        for (int64_t j = 0; j < n; ++j) {
          const TileT w = TileT::load(blk.w[j] + p.w_off + u0);
          const T* xj = blk.x[j] + p.a_off + k0 * mul + u0;
#pragma GCC unroll 32
          for (int kk = 0; kk < KB; ++kk) acc[kk].fma(blk.c[c_at + kk * n + j], w * TileT::load(xj + kk * mul));
        }
        continue;
      }
      const int64_t c_at = (a.c_off[pi] + k0) * n, a_dim = p.a_dim, c_step = p.b_dim * n;
      for (int64_t j = 0; j < n; ++j) {
        const TileT w = TileT::load(blk.w[j] + p.w_off + u0);
        const T* xj = blk.x[j] + p.a_off + u0;
        for (int64_t ai = 0; ai < a_dim; ++ai) {
          const TileT wx = w * TileT::load(xj + ai * mul);
          const T* ca = blk.c + c_at + ai * c_step + j;
#pragma GCC unroll 32
          for (int kk = 0; kk < KB; ++kk) acc[kk].fma(ca[kk * n], wx);
        }
      }
    }
#pragma GCC unroll 32
    for (int kk = 0; kk < KB; ++kk) {
      if (!blk.last) {
        acc[kk].store(accs + b.b_off + (k0 + kk) * mul + u0);
      } else {
        T* o = orow + b.b_off + u0 * b.b_dim + k0 + kk;
        for (int i = 0; i < NV; ++i)
          for (int l = 0; l < L; ++l) o[(i * L + l) * b.b_dim] = acc[kk].v[i][l];
      }
    }
  });
}

// Every output group over one edge block.
template <int VB, int64_t MUL, bool TWO, typename T>
NEQUIP_FAST_INLINE void segment_groups(const Rows<T>& a, const EdgeBlock<T>& blk, T* accs, T* orow) {
  for (int64_t gi = 0; gi < a.plan.n_groups; ++gi) {
    if (blk.n_next > 0) prefetch_rows_part<2, TWO>(a, blk.next, blk.n_next, blk.bounds, gi, a.plan.n_groups);
    const PlanGroup& b = a.plan.groups[gi];
    for_components(b.b_dim, [&]<int KB>(int64_t k0) NEQUIP_FAST_INLINE_LAMBDA {
      segment_group<VB, MUL, KB>(a, b, k0, blk, accs, orow);
    });
  }
}

// out row r (e3nn's mul_ir layout) = sum over the row's edges of T(x[col], sh, w), block by block of
// its edges; MUL > 0 fixes the channel count at compile time, 0 reads it from the plan. TWO: plus
// T(x[col], sh2, w2) (segment_conv2), a second pass over each block while its x rows are in cache.
template <int VB, int64_t MUL, bool TWO, typename T>
NEQUIP_FAST_INLINE void segment_row(const Rows<T>& a, int64_t r, BlockScratch<T>& s, T* orow) {
  const int64_t begin = a.ptr[r], n = a.ptr[r + 1] - begin;
  s.fit(n, a.fs, a.n_dense);
  s.parts.fit(a);
  if (int64_t(s.acc.size()) < a.plan.b_features) s.acc.resize(a.plan.b_features);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t e = a.perm[begin + j];
    s.x[j] = a.x + a.col[e] * a.fa;
    s.w[j] = weight_row(a, e);
    if constexpr (TWO) s.w2[j] = weight_row(a, e, a.w2);
  }
  const int64_t block = a.plan.a_features > a.plan.b_features ? kEdgeBlock / 2 : kEdgeBlock;
  for (int64_t j0 = 0; j0 < n; j0 += block) {
    const int64_t nb = std::min(n - j0, block);
    const int64_t* next = nullptr;  // the next block of this row, or the first of the next row
    int64_t n_next = 0;
    if (j0 + nb < n)
      next = a.perm + begin + j0 + nb, n_next = std::min(n - j0 - nb, block);
    else if (r + 1 < a.rows)
      next = a.perm + a.ptr[r + 1], n_next = std::min(a.ptr[r + 2] - a.ptr[r + 1], block);
    if (n_next * (a.fa + (TWO ? 2 : 1) * (a.fw + a.fs)) * int64_t(sizeof(T)) <= kL1PrefetchBytes)
      prefetch_rows<3, TWO>(a, next, n_next), n_next = 0;  // into L1 at once
    const bool first = j0 == 0, last = j0 + nb == n;
    contract_sh(a, a.sh, a.perm + begin + j0, nb, s, s.c.data());
    segment_groups<VB, MUL, TWO>(
        a, EdgeBlock<T>{s.x.data() + j0, s.w.data() + j0, s.c.data(), nb, first, last && !TWO, next, n_next,
                        s.parts.bounds.data()},
        s.acc.data(), orow);
    if constexpr (TWO) {
      contract_sh(a, a.sh2, a.perm + begin + j0, nb, s, s.c.data());
      segment_groups<VB, MUL, TWO>(a, EdgeBlock<T>{s.x.data() + j0, s.w2.data() + j0, s.c.data(), nb, false, last},
                                   s.acc.data(), orow);
    }
  }
}

// Dense index m's pair dot, a channel tile's vector v of products, into dv (32 bytes of lanes per
// index, summed by edge_grads_edge): set by the first tile, added to by the others.
template <typename T, int L>
NEQUIP_FAST_INLINE void add_dot(T* dv, int64_t m, const typename Lanes<T, L>::type& v, bool first_tile) {
  constexpr int kLanes = lanes_of(sizeof(T));
  auto& dq = *reinterpret_cast<typename Lanes<T, kLanes>::unaligned*>(dv + m * kLanes);
  const auto d = fold32<T, L>(v);
  if (first_tile)
    dq = d;
  else
    dq += d;
}

// Path p's share of <g[r], T(x[sender], sh[e], w[e])> differentiated, for its components
// [k0, k0 + KB) and edge e: g_w (stored into gwe, or added to it) and the pair dots <x[a], w g[kk]>
// (into dv, 32 bytes of lanes per dense index m0..). Per channel tile, g[kk] and w g[kk] stay in
// registers; per a component, t = sum over kk of c[a][kk] g[kk] and g_w += x[a] t.
template <int VB, int64_t MUL, int KB, typename T>
NEQUIP_FAST_INLINE void edge_grads_path(const PlanPath& p, int64_t c_off, int64_t k0, const T* c, int64_t n,
                                        const T* xa, const T* gr, const T* we, T* gwe, T* dv, bool store) {
  // In locals: the dots' vector stores may alias anything, so fields of p would be reloaded per pair.
  const int64_t mul = MUL > 0 ? MUL : p.mul, a_dim = p.a_dim, b_dim = p.b_dim, a_off = p.a_off, b_off = p.b_off,
                w_off = p.w_off;
  constexpr int kLive = 2 * KB + 4;  // g, w g, and w, g_w, x[a], t
  for_tiles<T, MUL, tile_vectors<VB>(kLive), int(VB / sizeof(T))>(mul, [&]<int L, int NV>(int64_t u0)
                                                                        NEQUIP_FAST_INLINE_LAMBDA {
    using TileT = Tile<T, L, NV>;
    const TileT w = TileT::load(we + w_off + u0);
    TileT g[KB], wg[KB];
#pragma GCC unroll 32
    for (int kk = 0; kk < KB; ++kk) g[kk] = TileT::load(gr + b_off + (k0 + kk) * mul + u0), wg[kk] = w * g[kk];
    TileT gw = store ? TileT::zero() : TileT::load(gwe + w_off + u0);
    for (int64_t ai = 0; ai < a_dim; ++ai) {
      const TileT xq = TileT::load(xa + a_off + ai * mul + u0);
      const int64_t m0 = c_off + ai * b_dim + k0;
      const T* ca = c + m0 * n;
      TileT t = TileT::zero();
#pragma GCC unroll 32
      for (int kk = 0; kk < KB; ++kk) {
        t.fma(ca[kk * n], g[kk]);
        add_dot<T, L>(dv, m0 + kk, (xq * wg[kk]).vector_sum(), u0 == 0);
      }
      gw.fma(xq, t);
    }
    gw.store(gwe + w_off + u0);
  });
}

// edge_grads_path for a diagonal path (DenseOrder): per component i = k0 + kk, g_w += x[i] c[i] g[i]
// and the dot <x[i], w g[i]>.
template <int VB, int64_t MUL, int KB, typename T>
NEQUIP_FAST_INLINE void edge_grads_diagonal(const PlanPath& p, int64_t c_off, int64_t k0, const T* c, int64_t n,
                                            const T* xa, const T* gr, const T* we, T* gwe, T* dv, bool store) {
  const int64_t mul = MUL > 0 ? MUL : p.mul, a_off = p.a_off + k0 * mul, b_off = p.b_off + k0 * mul,
                w_off = p.w_off;
  constexpr int kLive = 5;  // w, g_w, x[i], g[i], c g[i]
  for_tiles<T, MUL, tile_vectors<VB>(kLive), int(VB / sizeof(T))>(mul, [&]<int L, int NV>(int64_t u0)
                                                                        NEQUIP_FAST_INLINE_LAMBDA {
    using TileT = Tile<T, L, NV>;
    const TileT w = TileT::load(we + w_off + u0);
    TileT gw = store ? TileT::zero() : TileT::load(gwe + w_off + u0);
#pragma GCC unroll 32
    for (int kk = 0; kk < KB; ++kk) {
      const TileT xq = TileT::load(xa + a_off + kk * mul + u0), gq = TileT::load(gr + b_off + kk * mul + u0);
      const int64_t m = c_off + k0 + kk;
      TileT t = TileT::zero();
      t.fma(c[m * n], gq);
      gw.fma(xq, t);
      add_dot<T, L>(dv, m, (xq * (w * gq)).vector_sum(), u0 == 0);
    }
    gw.store(gwe + w_off + u0);
  });
}

// g_w of edge e (receiver r) into gwe (stored if `first`, else added: the paths' w slices tile the
// row) and the pair dots that give its g_sh, into dots[m * n] for each dense index m.
template <int VB, int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_edge(const Rows<T>& a, int64_t e, int64_t r, const T* c, T* dots, int64_t n,
                                        T* dv, T* gwe, bool first) {
  constexpr int kLanes = lanes_of(sizeof(T));
  const T* gr = a.g + r * a.fb;
  const T* xa = a.x + a.col[e] * a.fa;
  const T* we = weight_row(a, e);
  for (int64_t pi = 0; pi < a.plan.n_paths; ++pi) {
    const PlanPath& p = a.plan.paths[pi];
    const int64_t c_off = a.c_off[pi];
    const bool diagonal = a.diagonal[pi];
    for_components(p.b_dim, [&]<int KB>(int64_t k0) NEQUIP_FAST_INLINE_LAMBDA {
      const bool store = first && k0 == 0;  // later chunks of the components add to the slice
      if (diagonal)
        edge_grads_diagonal<VB, MUL, KB>(p, c_off, k0, c, n, xa, gr, we, gwe, dv, store);
      else
        edge_grads_path<VB, MUL, KB>(p, c_off, k0, c, n, xa, gr, we, gwe, dv, store);
    });
  }
  T sums[kLanes];
  for (int64_t m0 = 0; m0 < a.n_dense; m0 += kLanes) {
    lane_sums<T, kLanes>(dv + m0 * kLanes, sums);
    for (int64_t m = m0; m < std::min<int64_t>(a.n_dense, m0 + kLanes); ++m) dots[m * n] = sums[m - m0];
  }
}

// g_sh and g_w of the n edges es (every edge of a pair in the same block: they share a g_w row);
// meanwhile the next_count items at next_w, the next block's weight rows, are prefetched.
template <int VB, int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_block(const Rows<T>& a, const int64_t* es, int64_t n, const int64_t* receiver,
                                         BlockScratch<T>& s, T* g_sh, T* g_w, const T* next_w, int64_t next_count) {
  s.fit(n, a.fs, a.n_dense);
  contract_sh(a, a.sh, es, n, s, s.c.data());
  T* dots = s.dots.data();
  // The first edge of a g_w row stores it, a pair's reverse (in [P, 2P), after its edge) adds to it:
  // no zero fill (it was 17% of the l_max 1 kernel).
  constexpr int64_t kLine = 64 / sizeof(T);
  const int64_t next_lines = (next_count + kLine - 1) / kLine;
  for (int64_t j = 0; j < n; ++j) {
    // the next block's weight rows (they stream from memory) into L2, a slice before each edge of
    // this one: all at once into L1, the prefetches queued behind each other (1.04-1.1x at l_max 2)
    for (int64_t l = next_lines * j / n; l < next_lines * (j + 1) / n; ++l)
      __builtin_prefetch(next_w + l * kLine, 0, 2);
    edge_grads_edge<VB, MUL>(a, es[j], receiver[es[j]], s.c.data() + j, dots + j, n, s.dv.data(),
                             g_w + (weight_row(a, es[j]) - a.w), es[j] < a.pairs || es[j] >= 2 * a.pairs);
  }
  // g_sh[e, col] = sum over the terms (pair q, col) of value * dots[pair_at[q]], vectorised over the edges.
  T* gsht = s.sht.data();
  for (int64_t f = 0; f < a.fs * n; ++f) gsht[f] = 0;
  for (int64_t q = 0; q < a.plan.n_pairs; ++q)
    for (int64_t i = a.plan.pairs[q].term_begin; i < a.plan.pairs[q].term_end; ++i) {
      const T v = a.plan.values[i];
      const T* dq = dots + a.pair_at[q] * n;
      T* gy = gsht + a.plan.terms[i].sh * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) gy[j] += v * dq[j];
    }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t f = 0; f < a.fs; ++f) g_sh[es[j] * a.fs + f] = gsht[f * n + j];
}

template <int VB, int64_t MUL, bool TWO, typename T>
NEQUIP_FAST_INLINE void segment_rows_impl(const Rows<T>& a, int64_t begin, int64_t end, BlockScratch<T>& s, T* out) {
  for (int64_t r = begin; r < end; ++r) {
    T* orow = out + r * a.plan.b_features;
    for (int64_t f = 0; f < a.plan.b_features; ++f) orow[f] = 0;  // columns no path reaches
    if (a.ptr[r] != a.ptr[r + 1]) segment_row<VB, MUL, TWO>(a, r, s, orow);
  }
}

// With pairs (weight_row): one task per weight row k, which owns edge k + P and, if k < P, edge k
// too, and sums their g_w (no two tasks write one row); kPairBlock weight rows at a time.
constexpr int64_t kPairBlock = 16;

// Rows [begin, end) of the CSR by receiver, each edge its own g_w row (the CSR keeps g[r] in
// cache); with pairs, weight rows [begin, end).
template <int VB, int64_t MUL, typename T>
NEQUIP_FAST_INLINE void edge_grads_impl(const Rows<T>& a, int64_t begin, int64_t end, const int64_t* receiver,
                                        BlockScratch<T>& s, T* g_sh, T* g_w) {
  if (a.pairs == 0) {
    for (int64_t r = begin; r < end; ++r)
      edge_grads_block<VB, MUL>(a, a.perm + a.ptr[r], a.ptr[r + 1] - a.ptr[r], receiver, s, g_sh, g_w, a.w, 0);
    return;
  }
  for (int64_t k0 = begin; k0 < end; k0 += kPairBlock) {
    int64_t es[2 * kPairBlock], n = 0;
    for (int64_t k = k0; k < std::min(end, k0 + kPairBlock); ++k) {
      if (k < a.pairs) es[n++] = k;
      es[n++] = k + a.pairs;
    }
    const int64_t k1 = std::min(end, k0 + kPairBlock);
    edge_grads_block<VB, MUL>(a, es, n, receiver, s, g_sh, g_w, a.w + k1 * a.fw,
                              (std::min(end, k1 + kPairBlock) - k1) * a.fw);
  }
}

// One version of the row functions per ISA level (isa.h), picked once at run time: AVX-512 with
// 64-byte vectors, AVX2+FMA with 32-byte ones, baseline x86-64 (SSE2) with 16-byte ones.
#define NEQUIP_FAST_ROW_FUNCTIONS(SUFFIX, TARGET, VB)                                                            \
  template <typename T, typename Block>                                                                         \
  TARGET void to_ir_mul##SUFFIX(const T* s, T* d, int64_t f, int64_t begin, int64_t end, const Block* blocks,   \
                                int64_t num_blocks) {                                                          \
    to_ir_mul_impl(s, d, f, begin, end, blocks, num_blocks);                                                    \
  }                                                                                                            \
  template <int64_t MUL, bool TWO, typename T>                                                                 \
  TARGET void segment_rows##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end, BlockScratch<T>& s, T* out) { \
    segment_rows_impl<VB, MUL, TWO>(a, begin, end, s, out);                                                     \
  }                                                                                                            \
  template <int64_t MUL, typename T>                                                                           \
  TARGET void edge_grads##SUFFIX(const Rows<T>& a, int64_t begin, int64_t end, const int64_t* receiver,        \
                                 BlockScratch<T>& s, T* g_sh, T* g_w) {                                        \
    edge_grads_impl<VB, MUL>(a, begin, end, receiver, s, g_sh, g_w);                                           \
  }
NEQUIP_FAST_ROW_FUNCTIONS(_baseline, , 16)
#if NEQUIP_FAST_ISA_LEVELS
NEQUIP_FAST_ROW_FUNCTIONS(_x86_64_v3, __attribute__((target("arch=x86-64-v3"))), 32)
NEQUIP_FAST_ROW_FUNCTIONS(_x86_64_v4, __attribute__((target("arch=x86-64-v4"))), 64)
#endif

// The row functions of this CPU's ISA level, with the channel count fixed at 32 (NequIP's default:
// unrolled kernels) or read from the plan.
template <typename T, bool TWO>
void segment_rows(const Rows<T>& a, int64_t begin, int64_t end, BlockScratch<T>& s, T* out) {
  const bool mul32 = a.plan.uniform_mul == 32;
#if NEQUIP_FAST_ISA_LEVELS
  if (isa_level() >= 4)
    return mul32 ? segment_rows_x86_64_v4<32, TWO>(a, begin, end, s, out)
                 : segment_rows_x86_64_v4<0, TWO>(a, begin, end, s, out);
  if (isa_level() >= 3)
    return mul32 ? segment_rows_x86_64_v3<32, TWO>(a, begin, end, s, out)
                 : segment_rows_x86_64_v3<0, TWO>(a, begin, end, s, out);
#endif
  return mul32 ? segment_rows_baseline<32, TWO>(a, begin, end, s, out)
               : segment_rows_baseline<0, TWO>(a, begin, end, s, out);
}

template <typename T>
void edge_grads_rows(const Rows<T>& a, int64_t begin, int64_t end, const int64_t* receiver, BlockScratch<T>& s,
                     T* g_sh, T* g_w) {
  const bool mul32 = a.plan.uniform_mul == 32;
#if NEQUIP_FAST_ISA_LEVELS
  if (isa_level() >= 4)
    return mul32 ? edge_grads_x86_64_v4<32>(a, begin, end, receiver, s, g_sh, g_w)
                 : edge_grads_x86_64_v4<0>(a, begin, end, receiver, s, g_sh, g_w);
  if (isa_level() >= 3)
    return mul32 ? edge_grads_x86_64_v3<32>(a, begin, end, receiver, s, g_sh, g_w)
                 : edge_grads_x86_64_v3<0>(a, begin, end, receiver, s, g_sh, g_w);
#endif
  return mul32 ? edge_grads_baseline<32>(a, begin, end, receiver, s, g_sh, g_w)
               : edge_grads_baseline<0>(a, begin, end, receiver, s, g_sh, g_w);
}

// [n][off + u * dim + i] -> [n][off + i * mul + u] for each block, with this CPU's ISA level
// (scalar, the transposes had been 9-13% of edge_grads and of the transposed conv at l_max 2).
template <typename T, typename Block>
at::Tensor to_ir_mul(const at::Tensor& src, const Block* blocks, int64_t num_blocks) {
  const int64_t n = src.size(0), f = src.size(1);
  at::Tensor dst = at::empty_like(src);
  const T* s = src.data_ptr<T>();
  T* d = dst.data_ptr<T>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
#if NEQUIP_FAST_ISA_LEVELS
    if (isa_level() >= 4) return to_ir_mul_x86_64_v4(s, d, f, begin, end, blocks, num_blocks);
    if (isa_level() >= 3) return to_ir_mul_x86_64_v3(s, d, f, begin, end, blocks, num_blocks);
#endif
    to_ir_mul_baseline(s, d, f, begin, end, blocks, num_blocks);
  });
  return dst;
}

// The kernels' operands; `order` holds the dense pair indices that the rows point into.
template <typename T>
Rows<T> make_rows(const PlanView<T>& plan, const at::Tensor& xt, const at::Tensor& sh, const at::Tensor& w,
                  const int64_t* ptr, int64_t rows, const int64_t* perm, const int64_t* col, DenseOrder& order) {
  dense_order(plan, order);
  return Rows<T>{plan, xt.data_ptr<T>(), xt.size(1), nullptr, 0, sh.data_ptr<T>(), sh.size(1), w.data_ptr<T>(),
                 w.size(1), sh.size(0) - w.size(0), ptr, rows, perm, col, order.c_off.data(), order.pair_at.data(),
                 order.diagonal.data(), order.n_dense};
}

template <typename T>
void segment_conv_kernel(const Rows<T>& rows, at::Tensor& out) {
  T* o = out.data_ptr<T>();
  at::parallel_for(0, out.size(0), kRowGrain, [&](int64_t begin, int64_t end) {
    BlockScratch<T> scratch;
    if (rows.sh2 != nullptr)
      segment_rows<T, true>(rows, begin, end, scratch, o);
    else
      segment_rows<T, false>(rows, begin, end, scratch, o);
  });
}

template <typename T>
void edge_grads_kernel(const Rows<T>& rows, const int64_t* receiver, int64_t num_rows, at::Tensor& g_sh,
                       at::Tensor& g_w) {
  T* gy = g_sh.data_ptr<T>();
  T* gw = g_w.data_ptr<T>();
  // with pairs, one task per weight row
  const int64_t tasks = rows.pairs > 0 ? g_sh.size(0) - rows.pairs : num_rows;
  at::parallel_for(0, tasks, rows.pairs > 0 ? kRowGrain * 16 : kRowGrain, [&](int64_t begin, int64_t end) {
    BlockScratch<T> scratch;
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
    DenseOrder order;
    Rows<scalar_t> rows = make_rows<scalar_t>(view, xt, shc, wc, p[d].data_ptr<int64_t>(), p.size(1) - 1, pm[d].data_ptr<int64_t>(),
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
    int64_t w_covered = 0;  // the kernel writes g_w path slice by path slice
    for (int32_t pi = 0; pi < view.n_paths; ++pi) w_covered += view.paths[pi].mul;
    TORCH_CHECK(w_covered == view.w_features, "nequip_fast edge_grads: the plan's paths cover ", w_covered,
                " weight columns of ", view.w_features, " (build plans with nequip_fast.ops.plan.lower)");
    const at::Tensor xt = to_ir_mul<scalar_t>(x.contiguous(), view.a_blocks, view.n_a_blocks);
    const at::Tensor gt = to_ir_mul<scalar_t>(g.contiguous(), view.groups, view.n_groups);
    const at::Tensor shc = sh.contiguous(), wc = weight.contiguous();
    DenseOrder order;
    Rows<scalar_t> rows = make_rows<scalar_t>(view, xt, shc, wc, p[0].data_ptr<int64_t>(), p.size(1) - 1, pm[0].data_ptr<int64_t>(),
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
