// CUDA implementations of the ops nequip_fast::segment_conv and nequip_fast::edge_grads (schemas in
// csrc/ops.cpp; same arguments and semantics as the CPU kernels in csrc/conv_cpu.cpp). Register
// them in a CUDA build with
//   TORCH_LIBRARY_IMPL(nequip_fast, CUDA, m) {
//     m.impl("segment_conv", &nequip_fast::segment_conv_cuda);
//     m.impl("edge_grads", &nequip_fast::edge_grads_cuda);
//   }
// Operands: float32 or float64 CUDA tensors on one device (the plan values too); edge_index (2, E),
// ptr (2, N + 1) and perm (2, E) int64 and the plan int32, on that device; layout on the host.
// Checked by check_operands (../conv.h), like the CPU kernels' operands.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <tuple>

namespace nequip_fast {

at::Tensor segment_conv_cuda(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight, const at::Tensor& plan,
                             const at::Tensor& values, c10::IntArrayRef layout, const at::Tensor& edge_index,
                             const at::Tensor& ptr, const at::Tensor& perm, bool transpose);

std::tuple<at::Tensor, at::Tensor> edge_grads_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& sh,
                                                   const at::Tensor& weight, const at::Tensor& plan,
                                                   const at::Tensor& values, c10::IntArrayRef layout,
                                                   const at::Tensor& edge_index, const at::Tensor& ptr,
                                                   const at::Tensor& perm);

}  // namespace nequip_fast
