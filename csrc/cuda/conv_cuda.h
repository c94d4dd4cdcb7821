// CUDA implementations of the ops nequip_fast::segment_conv and nequip_fast::edge_grads (schemas in
// csrc/ops.cpp; same arguments and semantics as the CPU kernels in csrc/conv_cpu.cpp). Register
// them in a CUDA build with
//   TORCH_LIBRARY_IMPL(nequip_fast, CUDA, m) {
//     m.impl("segment_conv", &nequip_fast::segment_conv_cuda);
//     m.impl("edge_grads", &nequip_fast::edge_grads_cuda);
//   }
// Operands: float32 or float64 CUDA tensors on one device; edge_index (2, E), ptr (2, N + 1) and
// perm (2, E) int64 on that device; table as made by descriptor_table() (int64, any device: it is
// read once per table tensor and cached as a device plan, see conv_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace nequip_fast {

at::Tensor segment_conv_cuda(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight,
                             const at::Tensor& table, const at::Tensor& edge_index, const at::Tensor& ptr,
                             const at::Tensor& perm, int64_t out_features, bool transpose);

std::tuple<at::Tensor, at::Tensor> edge_grads_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& sh,
                                                   const at::Tensor& weight, const at::Tensor& table,
                                                   const at::Tensor& edge_index, const at::Tensor& ptr,
                                                   const at::Tensor& perm);

}  // namespace nequip_fast
