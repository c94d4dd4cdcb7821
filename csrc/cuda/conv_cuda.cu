// at::Tensor wrappers of the CUDA convolution kernels: the shared operand checks (../conv.h), the
// plan view (device pointers into the plan tensors, offsets from the host-side layout: no copy, no
// synchronisation, nothing cached) and launches on the current stream.
//
// Only c10/cuda headers are used, not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE
// headers that a bare CUDA toolkit may not have.
#include "conv_cuda.h"

#include "../conv.h"

#include "conv_kernels.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace nequip_fast {
namespace {

template <typename T>
PlanView<T> cuda_plan(const at::Tensor& plan, const at::Tensor& values, c10::IntArrayRef layout, bool transpose) {
  const PlanView<T> view = plan_view<T>(plan, values, layout, transpose);
  TORCH_CHECK(view.max_dim <= cuda::kMaxDim, "nequip_fast conv (cuda): the kernels support irreps up to dimension ",
              cuda::kMaxDim, " (l <= 7), the plan has ", view.max_dim);
  return view;
}

}  // namespace

at::Tensor segment_conv_cuda(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight, const at::Tensor& plan,
                             const at::Tensor& values, c10::IntArrayRef layout, const at::Tensor& edge_index,
                             const at::Tensor& ptr, const at::Tensor& perm, bool transpose) {
  TORCH_CHECK(x.is_cuda(), "nequip_fast conv (cuda): x must be a CUDA tensor, got ", x.device());
  check_operands(x, sh, weight, plan, values, layout, transpose, edge_index, ptr, perm);
  const c10::cuda::CUDAGuard guard(x.device());
  const int d = transpose ? 1 : 0;
  const at::Tensor xc = x.contiguous(), shc = sh.contiguous(), wc = weight.contiguous();
  const at::Tensor ei = edge_index.contiguous(), p = ptr.contiguous(), pm = perm.contiguous();
  const int64_t rows = x.size(0);
  at::Tensor out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::segment_conv_cuda", [&] {
    const PlanView<scalar_t> view = cuda_plan<scalar_t>(plan, values, layout, transpose);
    out = at::zeros({rows, view.b_features}, x.options());
    C10_CUDA_CHECK(cuda::launch_segment_conv<scalar_t>(
        view, xc.data_ptr<scalar_t>(), xc.size(1), shc.data_ptr<scalar_t>(), shc.size(1), wc.data_ptr<scalar_t>(),
        wc.size(1), sh.size(0) - wc.size(0), p[d].data_ptr<int64_t>(), pm[d].data_ptr<int64_t>(), ei[1 - d].data_ptr<int64_t>(),
        rows, out.data_ptr<scalar_t>(), view.b_features, stream));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> edge_grads_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& sh,
                                                   const at::Tensor& weight, const at::Tensor& plan,
                                                   const at::Tensor& values, c10::IntArrayRef layout,
                                                   const at::Tensor& edge_index, const at::Tensor& ptr,
                                                   const at::Tensor& perm) {
  TORCH_CHECK(x.is_cuda(), "nequip_fast conv (cuda): x must be a CUDA tensor, got ", x.device());
  check_operands(x, sh, weight, plan, values, layout, false, edge_index, ptr, perm, &g);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), gc = g.contiguous(), shc = sh.contiguous(), wc = weight.contiguous();
  const at::Tensor ei = edge_index.contiguous();
  const int64_t num_edges = sh.size(0);
  at::Tensor g_sh = at::zeros_like(sh, at::MemoryFormat::Contiguous);
  // Per edge; the weight rows of pairs (weight_row) get the sum of their two edges below.
  at::Tensor g_w = at::zeros({num_edges, weight.size(1)}, weight.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::edge_grads_cuda", [&] {
    TORCH_CHECK(sh.size(1) <= cuda::max_edge_grads_sh_columns<scalar_t>(), "nequip_fast conv (cuda): sh has ",
                sh.size(1), " columns, edge_grads supports at most ", cuda::max_edge_grads_sh_columns<scalar_t>());
    C10_CUDA_CHECK(cuda::launch_edge_grads<scalar_t>(
        cuda_plan<scalar_t>(plan, values, layout, false), xc.data_ptr<scalar_t>(), xc.size(1),
        gc.data_ptr<scalar_t>(), gc.size(1), shc.data_ptr<scalar_t>(), shc.size(1), wc.data_ptr<scalar_t>(),
        wc.size(1), num_edges - wc.size(0), ei[0].data_ptr<int64_t>(), ei[1].data_ptr<int64_t>(), num_edges,
        g_sh.data_ptr<scalar_t>(), g_w.data_ptr<scalar_t>(), stream));
  });
  const int64_t pairs = num_edges - weight.size(0);
  if (pairs > 0) {  // row k < P: edges k and k + P; row k >= P: edge k + P (weight_row)
    at::Tensor rows = g_w.narrow(0, pairs, weight.size(0)).clone();
    rows.narrow(0, 0, pairs).add_(g_w.narrow(0, 0, pairs));
    g_w = rows;
  }
  return {g_sh, g_w};
}

}  // namespace nequip_fast

// The CUDA kernels of the ops declared in csrc/ops.cpp; fake functions and autograd come from
// Python (nequip_fast/ops/fused.py) and are shared with the CPU backend.
TORCH_LIBRARY_IMPL(nequip_fast, CUDA, m) {
  m.impl("segment_conv", &nequip_fast::segment_conv_cuda);
  m.impl("edge_grads", &nequip_fast::edge_grads_cuda);
}
