// The lowered convolution plan as the kernels read it (made once per layer by
// nequip_fast/ops/plan.py:lower; the section and header layouts here mirror that file).
//
// One int32 tensor holds, per orientation (forward; transposed = the adjoint, for the x-gradient),
// sections of fixed-width rows, read in place through the structs below; a float tensor holds the
// Clebsch-Gordan values. The host-side `layout` (an int[] op argument) gives the sizes and offsets,
// so that no kernel reads the device tensors on the host. Free of torch and CUDA: the CPU kernels,
// the CUDA kernels and the CUDA host emulation all include it.
#pragma once

#include <cstdint>
#include <string>

namespace nequip_fast {

constexpr int64_t kPlanVersion = 1;
constexpr int kTaskChannels = 32;  // channels per task (one GPU warp)

// Kernels see every path as "gather operand a per edge, reduce into operand b per row".
struct PlanGroup { int32_t b_off, b_dim, mul, path_begin, path_end; };  // a distinct b block and its paths
struct PlanBlock { int32_t off, dim, mul; };                            // a distinct a block
struct PlanPath { int32_t a_off, a_dim, b_off, b_dim, mul, w_off, sh_off, pair_begin, pair_end, kptr; };
struct PlanPair { int32_t a, b, term_begin, term_end; };  // the terms of one (a, b) component pair
struct PlanTerm { int32_t a, sh; };                        // a component, absolute sh column
struct PlanTask { int32_t group, u0; };                    // kTaskChannels channels of one group
static_assert(sizeof(PlanGroup) == 5 * 4 && sizeof(PlanBlock) == 3 * 4 && sizeof(PlanPath) == 10 * 4 &&
                  sizeof(PlanPair) == 4 * 4 && sizeof(PlanTerm) == 2 * 4 && sizeof(PlanTask) == 2 * 4,
              "plan rows are packed int32 columns");

// layout = [version, digest, header(forward), header(transposed)], header fields in this order.
enum HeaderField {
  H_GROUPS, H_A_BLOCKS, H_PATHS, H_PAIRS, H_TERMS, H_TASKS,
  H_A_FEATURES, H_B_FEATURES, H_SH_FEATURES, H_W_FEATURES, H_MAX_A_BLOCK, H_UNIFORM_MUL, H_MAX_DIM,
  H_GROUPS_AT, H_A_BLOCKS_AT, H_PATHS_AT, H_PAIRS_AT, H_KPTR_AT, H_TERMS_AT, H_TASKS_AT, H_VALUES_AT,
  HEADER_FIELDS
};
constexpr int kLayoutPreamble = 2;
constexpr int64_t kLayoutSize = kLayoutPreamble + 2 * HEADER_FIELDS;

// One orientation of a plan (host or device pointers): plain data, passed to kernels by value.
template <typename T>
struct PlanView {
  const PlanGroup* groups;
  const PlanBlock* a_blocks;
  const PlanPath* paths;  // ordered by group
  const PlanPair* pairs;
  const int32_t* kptr;  // per path b_dim + 1 offsets into terms, from paths[p].kptr
  const PlanTerm* terms;
  const PlanTask* tasks;
  const T* values;  // per term
  int32_t n_groups, n_a_blocks, n_paths, n_pairs, n_terms, n_tasks;
  int64_t a_features, b_features, sh_features, w_features, max_a_block, uniform_mul, max_dim;
};

// Whether `layout` describes orientation `transpose` of a plan with `ints_size` ints and
// `values_size` values: an error message, empty if it does.
inline std::string check_layout(const int64_t* layout, int64_t layout_size, bool transpose, int64_t ints_size,
                                int64_t values_size) {
  if (layout_size != kLayoutSize || layout[0] != kPlanVersion)
    return "plan layout has version " + std::to_string(layout_size > 0 ? layout[0] : -1) + " and " +
           std::to_string(layout_size) + " entries; these kernels read version " + std::to_string(kPlanVersion) +
           " with " + std::to_string(kLayoutSize) + " (build plans with nequip_fast.ops.plan.lower)";
  const int64_t* h = layout + kLayoutPreamble + (transpose ? HEADER_FIELDS : 0);
  for (int f = 0; f < HEADER_FIELDS; ++f)
    if (h[f] < 0 || h[f] > INT32_MAX) return "plan layout: field " + std::to_string(f) + " out of range";
  const int64_t sections[][2] = {{H_GROUPS_AT, h[H_GROUPS] * 5}, {H_A_BLOCKS_AT, h[H_A_BLOCKS] * 3},
                                 {H_PATHS_AT, h[H_PATHS] * 10},  {H_PAIRS_AT, h[H_PAIRS] * 4},
                                 {H_TERMS_AT, h[H_TERMS] * 2},   {H_TASKS_AT, h[H_TASKS] * 2},
                                 {H_KPTR_AT, 0}};
  for (const auto& section : sections)
    if (h[section[0]] + section[1] > ints_size) return "plan layout: a section lies outside the plan tensor";
  if (h[H_VALUES_AT] + h[H_TERMS] > values_size) return "plan layout: the values lie outside the values tensor";
  return "";
}

// The view of orientation `transpose` of a plan (`ints`, `values`) that check_layout accepted.
template <typename T>
PlanView<T> make_view(const int64_t* layout, bool transpose, const int32_t* ints, const T* values) {
  const int64_t* h = layout + kLayoutPreamble + (transpose ? HEADER_FIELDS : 0);
  PlanView<T> v{};
  v.groups = reinterpret_cast<const PlanGroup*>(ints + h[H_GROUPS_AT]);
  v.a_blocks = reinterpret_cast<const PlanBlock*>(ints + h[H_A_BLOCKS_AT]);
  v.paths = reinterpret_cast<const PlanPath*>(ints + h[H_PATHS_AT]);
  v.pairs = reinterpret_cast<const PlanPair*>(ints + h[H_PAIRS_AT]);
  v.kptr = ints + h[H_KPTR_AT];
  v.terms = reinterpret_cast<const PlanTerm*>(ints + h[H_TERMS_AT]);
  v.tasks = reinterpret_cast<const PlanTask*>(ints + h[H_TASKS_AT]);
  v.values = values + h[H_VALUES_AT];
  v.n_groups = int32_t(h[H_GROUPS]), v.n_a_blocks = int32_t(h[H_A_BLOCKS]), v.n_paths = int32_t(h[H_PATHS]);
  v.n_pairs = int32_t(h[H_PAIRS]), v.n_terms = int32_t(h[H_TERMS]), v.n_tasks = int32_t(h[H_TASKS]);
  v.a_features = h[H_A_FEATURES], v.b_features = h[H_B_FEATURES], v.sh_features = h[H_SH_FEATURES];
  v.w_features = h[H_W_FEATURES], v.max_a_block = h[H_MAX_A_BLOCK], v.uniform_mul = h[H_UNIFORM_MUL];
  v.max_dim = h[H_MAX_DIM];
  return v;
}

}  // namespace nequip_fast
