// Shared host-side view of the convolution descriptor table (see nequip_fast/ops/fused.py).
//
// The table is an int64 tensor with one row per Clebsch-Gordan nonzero:
//   [in_offset, in_dim, sh_offset, sh_dim, out_offset, out_dim, mul, weight_offset, i, j, k, value]
// where value holds the bits of a float64 (int64 so that Module.to(dtype) never casts it).
// Kernels see every path as "gather operand a per edge, reduce operand b per row"; the forward
// conv has a = input, b = output, the transposed conv (x-gradient) swaps them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace nequip_fast {

enum TableColumn { IN_OFF, IN_DIM, SH_OFF, SH_DIM, OUT_OFF, OUT_DIM, MUL, W_OFF, CG_I, CG_J, CG_K, CG_VALUE, TABLE_COLUMNS };

struct Term {
  int64_t j;      // spherical-harmonic component
  double value;   // CG value with e3nn's path normalisation folded in
};

// One (a, b) component pair of a path: c = sum over its terms of value * sh[j].
struct Pair {
  int64_t a, b, term_begin, term_end;
};

struct PathView {
  int64_t a_off, a_dim, b_off, b_dim, sh_off, mul, w_off, pair_begin, pair_end;
};

// A block of `mul` channels of an irrep of dimension `dim` starting at column `off`.
struct Block {
  int64_t off, dim, mul;
};

struct PathTable {
  std::vector<PathView> paths;
  std::vector<Pair> pairs;
  std::vector<Term> terms;
  std::vector<Block> a_blocks, b_blocks;  // distinct operand blocks, for the layout transposes
  int64_t a_extent = 0, b_extent = 0;     // columns the paths reach in operand a and b
  int64_t max_a_block = 0;                // largest a_dim * mul, for the per-edge scratch
};

PathTable parse_table(const at::Tensor& table, bool transpose);

// The ConvGraph operands (edge_index, ptr, perm) of every op, checked alike on every device.
void check_graph(const at::Tensor& edge_index, const at::Tensor& ptr, const at::Tensor& perm, int64_t num_edges);

}  // namespace nequip_fast
