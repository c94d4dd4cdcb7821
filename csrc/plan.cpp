#include "conv.h"

namespace nequip_fast {

void check_operands(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight, const at::Tensor& ints,
                    const at::Tensor& values, c10::IntArrayRef layout, bool transpose, const at::Tensor& edge_index,
                    const at::Tensor& ptr, const at::Tensor& perm, const at::Tensor* g) {
  const at::Device device = x.device();
  const std::pair<const char*, const at::Tensor*> all[] = {{"sh", &sh},     {"weight", &weight},         {"plan", &ints},
                                                           {"values", &values}, {"edge_index", &edge_index},
                                                           {"ptr", &ptr},   {"perm", &perm},             {"g", g}};
  for (const auto& [name, t] : all)
    TORCH_CHECK(t == nullptr || t->device() == device, "nequip_fast conv: ", name, " is on ", t->device(),
                ", x on ", device);
  TORCH_CHECK(ints.scalar_type() == at::kInt && ints.dim() == 1 && ints.is_contiguous(),
              "nequip_fast conv: the plan must be a contiguous int32 vector (nequip_fast.ops.plan.lower)");
  TORCH_CHECK(values.dim() == 1 && values.is_contiguous(), "nequip_fast conv: plan values must be a contiguous vector");
  const std::string error = check_layout(layout.data(), int64_t(layout.size()), transpose, ints.numel(), values.numel());
  TORCH_CHECK(error.empty(), "nequip_fast conv: ", error);
  const int64_t* h = layout.data() + kLayoutPreamble + (transpose ? HEADER_FIELDS : 0);

  TORCH_CHECK(x.dim() == 2 && sh.dim() == 2 && weight.dim() == 2, "nequip_fast conv: x, sh, weight must be 2-d");
  const int64_t num_edges = sh.size(0);
  TORCH_CHECK(weight.size(0) <= num_edges && 2 * weight.size(0) >= num_edges,
              "nequip_fast conv: weight needs E - P rows for E = ", num_edges, " edges of which the first 2P are ",
              "P reversed pairs (between ", (num_edges + 1) / 2, " and ", num_edges, "), got ", weight.size(0));
  TORCH_CHECK(x.scalar_type() == sh.scalar_type() && x.scalar_type() == weight.scalar_type() &&
                  x.scalar_type() == values.scalar_type(),
              "nequip_fast conv: x, sh, weight and the plan values must share a dtype, got ", x.scalar_type(), ", ",
              sh.scalar_type(), ", ", weight.scalar_type(), ", ", values.scalar_type());
  TORCH_CHECK(x.size(1) == h[H_A_FEATURES], "nequip_fast conv: x has ", x.size(1), " features, the plan ",
              h[H_A_FEATURES]);
  TORCH_CHECK(sh.size(1) == h[H_SH_FEATURES] && weight.size(1) == h[H_W_FEATURES], "nequip_fast conv: sh and weight ",
              "have ", sh.size(1), " and ", weight.size(1), " columns, the plan ", h[H_SH_FEATURES], " and ",
              h[H_W_FEATURES]);
  TORCH_CHECK(edge_index.scalar_type() == at::kLong && ptr.scalar_type() == at::kLong && perm.scalar_type() == at::kLong,
              "nequip_fast conv: edge_index, ptr and perm must be int64");
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2 && edge_index.size(1) == num_edges,
              "nequip_fast conv: edge_index must be (2, E) with E = ", num_edges, ", got ", edge_index.sizes());
  TORCH_CHECK(perm.dim() == 2 && perm.size(0) == 2 && perm.size(1) == num_edges, "nequip_fast conv: perm must be (2, E)");
  TORCH_CHECK(ptr.dim() == 2 && ptr.size(0) == 2 && ptr.size(1) == x.size(0) + 1, "nequip_fast conv: ptr must be ",
              "(2, N + 1) with N = ", x.size(0), " rows of x, got ", ptr.sizes());
  if (g != nullptr)
    TORCH_CHECK(g->dim() == 2 && g->scalar_type() == x.scalar_type() && g->size(0) == x.size(0) &&
                    g->size(1) == h[H_B_FEATURES],
                "nequip_fast conv: g must be (N, ", h[H_B_FEATURES], ") in the dtype of x, got ", g->sizes(), " ",
                g->scalar_type());
}

}  // namespace nequip_fast
