// The operands of the fused convolution ops, checked in one place for every device
// (conv_cpu.cpp and cuda/conv_cuda.cu), and the plan view the kernels read (plan.h).
#pragma once

#include "plan.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

namespace nequip_fast {

// Checks x, sh, weight (E - P rows: edges [P, 2P) reverse edges [0, P) and share their rows, see
// weight_row), the plan (ints, values, layout) of orientation `transpose`, the ConvGraph (edge_index, ptr,
// perm) and, for edge_grads, g: dtypes, shapes against the plan's widths, one device for all.
void check_operands(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight, const at::Tensor& ints,
                    const at::Tensor& values, c10::IntArrayRef layout, bool transpose, const at::Tensor& edge_index,
                    const at::Tensor& ptr, const at::Tensor& perm, const at::Tensor* g = nullptr);

// The plan orientation the kernels read (after check_operands).
template <typename T>
PlanView<T> plan_view(const at::Tensor& ints, const at::Tensor& values, c10::IntArrayRef layout, bool transpose) {
  return make_view<T>(layout.data(), transpose, ints.data_ptr<int32_t>(), values.data_ptr<T>());
}

}  // namespace nequip_fast
