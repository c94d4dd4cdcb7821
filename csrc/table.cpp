#include "conv.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

namespace nequip_fast {

namespace {
void add_block(std::vector<Block>& blocks, Block block) {
  for (const Block& b : blocks)
    if (b.off == block.off) {
      TORCH_CHECK(b.dim == block.dim && b.mul == block.mul, "conv table: inconsistent blocks at column ", b.off);
      return;
    }
  blocks.push_back(block);
}
}  // namespace

PathTable parse_table(const at::Tensor& table_in, bool transpose) {
  TORCH_CHECK(table_in.dim() == 2 && table_in.size(1) == TABLE_COLUMNS && table_in.scalar_type() == at::kLong,
              "conv table must be an int64 tensor of shape (nnz, ", int(TABLE_COLUMNS), "), got ",
              table_in.sizes(), " ", table_in.scalar_type());
  const at::Tensor table = table_in.cpu().contiguous();
  const int64_t* row = table.data_ptr<int64_t>();
  const int64_t rows = table.size(0);
  PathTable t;
  int64_t begin = 0;
  while (begin < rows) {
    // A path is a run of rows with the same first W_OFF + 1 columns.
    int64_t end = begin + 1;
    while (end < rows && std::equal(row + begin * TABLE_COLUMNS, row + begin * TABLE_COLUMNS + W_OFF + 1,
                                    row + end * TABLE_COLUMNS))
      ++end;
    const int64_t* h = row + begin * TABLE_COLUMNS;
    auto col = [&](int c) { return h[c]; };
    PathView p{};
    p.a_off = col(transpose ? OUT_OFF : IN_OFF);
    p.a_dim = col(transpose ? OUT_DIM : IN_DIM);
    p.b_off = col(transpose ? IN_OFF : OUT_OFF);
    p.b_dim = col(transpose ? IN_DIM : OUT_DIM);
    p.sh_off = col(SH_OFF);
    p.mul = col(MUL);
    p.w_off = col(W_OFF);
    std::map<std::pair<int64_t, int64_t>, std::vector<Term>> grouped;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t* z = row + r * TABLE_COLUMNS;
      const int64_t i = z[CG_I], j = z[CG_J], k = z[CG_K];
      TORCH_CHECK(i >= 0 && j >= 0 && k >= 0 && i < col(IN_DIM) && j < col(SH_DIM) && k < col(OUT_DIM),
                  "conv table: CG index out of range");
      double value;
      std::memcpy(&value, z + CG_VALUE, sizeof value);
      grouped[transpose ? std::make_pair(k, i) : std::make_pair(i, k)].push_back(Term{p.sh_off + j, value});
    }
    p.pair_begin = static_cast<int64_t>(t.pairs.size());
    for (auto& [ab, terms] : grouped) {
      int64_t tb = static_cast<int64_t>(t.terms.size());
      t.terms.insert(t.terms.end(), terms.begin(), terms.end());
      t.pairs.push_back(Pair{ab.first, ab.second, tb, static_cast<int64_t>(t.terms.size())});
    }
    p.pair_end = static_cast<int64_t>(t.pairs.size());
    t.paths.push_back(p);
    add_block(t.a_blocks, Block{p.a_off, p.a_dim, p.mul});
    add_block(t.b_blocks, Block{p.b_off, p.b_dim, p.mul});
    t.a_extent = std::max(t.a_extent, p.a_off + p.a_dim * p.mul);
    t.b_extent = std::max(t.b_extent, p.b_off + p.b_dim * p.mul);
    t.max_a_block = std::max(t.max_a_block, p.a_dim * p.mul);
    begin = end;
  }
  return t;
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

}  // namespace nequip_fast
