// Host-side translation of the descriptor table into the Plan the CUDA kernels read.
//
// Input: the table of nequip_fast/ops/fused.py:descriptor_table, int64 (nnz, 12), one row per CG
// nonzero: [in_off, in_dim, sh_off, sh_dim, out_off, out_dim, mul, w_off, i, j, k, value bits
// (float64)]; a path is a run of rows with equal first 8 columns (the same rule as csrc/table.cpp).
//
// Output, for one orientation (forward: a = input, b = output; transpose: a = output, b = input):
//   groups (G, 5) int32  [b_off, b_dim, mul, path_begin, path_end]  distinct b blocks, in order of
//                        first appearance; all paths reducing into the block are [path_begin, path_end)
//   paths  (P, 4) int32  [a_off, a_dim, w_off, kptr_at]              ordered by group, then table order
//   kptr   int32         per path b_dim + 1 offsets into terms: the terms of b component kk of path p
//                        are [kptr[kptr_at + kk], kptr[kptr_at + kk + 1])
//   terms  (Z, 2) int32  [a component, sh column = sh_off + j]       values (Z,) float64 beside them
//   tasks  (n, 2) int32  [group, u0] for u0 = 0, 32, ... < mul       one warp each in segment_conv
// concatenated into one int32 vector (section offsets *_at), so the device copy is one tensor.
// Free of torch and CUDA so it can be tested on the host.
#pragma once

#include "conv_lanes.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace nequip_fast {
namespace cuda {

constexpr int kTableColumns = 12;

struct Plan {
  std::vector<int32_t> ints;
  std::vector<double> values;
  int64_t groups_at = 0, paths_at = 0, kptr_at = 0, terms_at = 0, tasks_at = 0;
  int32_t n_groups = 0, n_tasks = 0;
  // Columns the paths reach in each operand; the host wrapper checks the tensors against them.
  int64_t a_extent = 0, b_extent = 0, sh_extent = 0, w_extent = 0;

  template <typename T>
  PlanView<T> view(const int32_t* ints_ptr, const T* values_ptr) const {
    return PlanView<T>{ints_ptr + groups_at, ints_ptr + paths_at, ints_ptr + kptr_at, ints_ptr + terms_at,
                       ints_ptr + tasks_at, values_ptr, n_groups, n_tasks};
  }
};

// Fills `plan` from `nnz` table rows; returns an error message, empty on success.
inline std::string build_plan(const int64_t* table, int64_t nnz, bool transpose, Plan& plan) {
  enum { IN_OFF, IN_DIM, SH_OFF, SH_DIM, OUT_OFF, OUT_DIM, MUL, W_OFF, CG_I, CG_J, CG_K, CG_VALUE };
  struct Term { int32_t kk, a, sh; double value; };
  struct RawPath { int64_t a_off, a_dim, b_off, b_dim, mul, w_off; std::vector<Term> terms; };
  std::vector<RawPath> raw;
  for (int64_t begin = 0, end = 0; begin < nnz; begin = end) {
    const int64_t* h = table + begin * kTableColumns;
    for (end = begin + 1; end < nnz && std::equal(h, h + W_OFF + 1, table + end * kTableColumns); ++end) {
    }
    for (int c = 0; c <= W_OFF; ++c)
      if (h[c] < 0 || h[c] > std::numeric_limits<int32_t>::max() / 2)
        return "conv table: column " + std::to_string(c) + " out of range: " + std::to_string(h[c]);
    if (h[IN_DIM] < 1 || h[SH_DIM] < 1 || h[OUT_DIM] < 1 || h[MUL] < 1)
      return "conv table: path dimensions and multiplicity must be positive";
    RawPath p{h[transpose ? OUT_OFF : IN_OFF], h[transpose ? OUT_DIM : IN_DIM], h[transpose ? IN_OFF : OUT_OFF],
              h[transpose ? IN_DIM : OUT_DIM],  h[MUL], h[W_OFF], {}};
    if (p.b_dim > kMaxDim || p.b_dim % 2 == 0)
      return "conv table: the CUDA kernels support irrep dimensions 1, 3, ..., " + std::to_string(kMaxDim) +
             " (l <= 7), got " + std::to_string(p.b_dim);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t* z = table + r * kTableColumns;
      if (z[CG_I] < 0 || z[CG_J] < 0 || z[CG_K] < 0 || z[CG_I] >= h[IN_DIM] || z[CG_J] >= h[SH_DIM] ||
          z[CG_K] >= h[OUT_DIM])
        return "conv table: CG index out of range";
      double value;
      std::memcpy(&value, z + CG_VALUE, sizeof value);
      const int64_t a = transpose ? z[CG_K] : z[CG_I], kk = transpose ? z[CG_I] : z[CG_K];
      p.terms.push_back(Term{int32_t(kk), int32_t(a), int32_t(h[SH_OFF] + z[CG_J]), value});
    }
    // Stable: within a b component, terms keep table order.
    std::stable_sort(p.terms.begin(), p.terms.end(), [](const Term& l, const Term& r) { return l.kk < r.kk; });
    plan.a_extent = std::max(plan.a_extent, p.a_off + p.a_dim * p.mul);
    plan.b_extent = std::max(plan.b_extent, p.b_off + p.b_dim * p.mul);
    plan.sh_extent = std::max(plan.sh_extent, h[SH_OFF] + h[SH_DIM]);
    plan.w_extent = std::max(plan.w_extent, p.w_off + p.mul);
    raw.push_back(std::move(p));
  }
  if (plan.a_extent > std::numeric_limits<int32_t>::max() / 2 || plan.b_extent > std::numeric_limits<int32_t>::max() / 2)
    return "conv table: feature extents exceed int32";

  std::vector<int64_t> group_of(raw.size()), group_head;  // group_head: first path of each group
  for (size_t p = 0; p < raw.size(); ++p) {
    size_t g = 0;
    while (g < group_head.size() && raw[group_head[g]].b_off != raw[p].b_off) ++g;
    if (g == group_head.size()) {
      group_head.push_back(int64_t(p));
    } else if (raw[group_head[g]].b_dim != raw[p].b_dim || raw[group_head[g]].mul != raw[p].mul) {
      return "conv table: paths reduce into column " + std::to_string(raw[p].b_off) + " with different shapes";
    }
    group_of[p] = int64_t(g);
  }

  std::vector<int32_t> groups, paths, kptr, terms, tasks;
  for (size_t g = 0; g < group_head.size(); ++g) {
    const RawPath& head = raw[group_head[g]];
    groups.insert(groups.end(), {int32_t(head.b_off), int32_t(head.b_dim), int32_t(head.mul),
                                 int32_t(paths.size() / PATH_COLUMNS), 0});
    for (size_t p = 0; p < raw.size(); ++p) {
      if (group_of[p] != int64_t(g)) continue;
      const RawPath& rp = raw[p];
      paths.insert(paths.end(), {int32_t(rp.a_off), int32_t(rp.a_dim), int32_t(rp.w_off), int32_t(kptr.size())});
      size_t t = 0;
      for (int32_t kk = 0; kk <= rp.b_dim; ++kk) {
        while (t < rp.terms.size() && rp.terms[t].kk < kk) ++t;
        kptr.push_back(int32_t(terms.size() / TERM_COLUMNS + t));
      }
      for (const Term& term : rp.terms) {
        terms.insert(terms.end(), {term.a, term.sh});
        plan.values.push_back(term.value);
      }
    }
    groups.back() = int32_t(paths.size() / PATH_COLUMNS);
    for (int64_t u0 = 0; u0 < head.mul; u0 += kWarpSize) tasks.insert(tasks.end(), {int32_t(g), int32_t(u0)});
  }
  plan.n_groups = int32_t(group_head.size());
  plan.n_tasks = int32_t(tasks.size() / TASK_COLUMNS);
  plan.groups_at = 0;
  plan.paths_at = int64_t(groups.size());
  plan.kptr_at = plan.paths_at + int64_t(paths.size());
  plan.terms_at = plan.kptr_at + int64_t(kptr.size());
  plan.tasks_at = plan.terms_at + int64_t(terms.size());
  for (const auto* section : {&groups, &paths, &kptr, &terms, &tasks})
    plan.ints.insert(plan.ints.end(), section->begin(), section->end());
  return "";
}

}  // namespace cuda
}  // namespace nequip_fast
