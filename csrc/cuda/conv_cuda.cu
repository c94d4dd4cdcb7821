// at::Tensor wrappers of the CUDA convolution kernels: argument checks (the CPU backend's), the
// descriptor table -> device Plan cache, and launches on the current stream.
//
// Only c10/cuda headers are used, not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE
// headers that a bare CUDA toolkit may not have.
#include "conv_cuda.h"

#include "../conv.h"

#include "conv_kernels.cuh"
#include "conv_plan.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <type_traits>

namespace nequip_fast {
namespace {

using cuda::Plan;

struct DevicePlan {
  Plan plan;
  at::Tensor ints, values_f32, values_f64;

  template <typename T>
  cuda::PlanView<T> view() const {
    const at::Tensor& values = std::is_same_v<T, float> ? values_f32 : values_f64;
    return plan.view<T>(ints.data_ptr<int32_t>(), values.data_ptr<T>());
  }
};

// Plans per table tensor. Reading the table costs a device-to-host copy (a synchronisation), so it
// happens once per table tensor (per layer and device), on its first call: warm up before CUDA
// graph capture. An entry holds its table, so the address cannot be reused by another tensor
// while cached; tables are derived buffers that are never modified in place.
class PlanCache {
 public:
  std::shared_ptr<const DevicePlan> get(const at::Tensor& table, const at::Device& device, bool transpose) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_)
      if (e.table.data_ptr() == table.data_ptr() && e.table.sizes() == table.sizes() &&
          e.table.device() == table.device() && e.device == device && e.transpose == transpose)
        return e.plan;
    if (entries_.size() == kCapacity) entries_.pop_front();
    entries_.push_back(Entry{table, device, transpose, build(table, device, transpose)});
    return entries_.back().plan;
  }

 private:
  static constexpr size_t kCapacity = 256;
  struct Entry {
    at::Tensor table;
    at::Device device;
    bool transpose;
    std::shared_ptr<const DevicePlan> plan;
  };

  static std::shared_ptr<const DevicePlan> build(const at::Tensor& table, const at::Device& device, bool transpose) {
    const at::Tensor host = table.to(at::kCPU).contiguous();
    auto dp = std::make_shared<DevicePlan>();
    const std::string error = cuda::build_plan(host.data_ptr<int64_t>(), host.size(0), transpose, dp->plan);
    TORCH_CHECK(error.empty(), "nequip_fast conv (cuda): ", error);
    const auto cpu = at::TensorOptions().device(at::kCPU);
    at::Tensor ints = at::empty({int64_t(dp->plan.ints.size())}, cpu.dtype(at::kInt));
    at::Tensor values = at::empty({int64_t(dp->plan.values.size())}, cpu.dtype(at::kDouble));
    if (ints.numel() > 0) std::memcpy(ints.data_ptr<int32_t>(), dp->plan.ints.data(), ints.nbytes());
    if (values.numel() > 0) std::memcpy(values.data_ptr<double>(), dp->plan.values.data(), values.nbytes());
    dp->ints = ints.to(device);
    dp->values_f64 = values.to(device);
    dp->values_f32 = values.to(device, at::kFloat);
    return dp;
  }

  std::mutex mutex_;
  std::deque<Entry> entries_;
};

std::shared_ptr<const DevicePlan> device_plan(const at::Tensor& table, const at::Device& device, bool transpose) {
  // Never destroyed: its CUDA tensors must not be freed during interpreter teardown.
  static PlanCache* const cache = new PlanCache();
  TORCH_CHECK(table.dim() == 2 && table.size(1) == cuda::kTableColumns && table.scalar_type() == at::kLong,
              "nequip_fast conv: table must be an int64 tensor of shape (nnz, ", cuda::kTableColumns, "), got ",
              table.sizes(), " ", table.scalar_type());
  return cache->get(table, device, transpose);
}

void check_device(const at::Tensor& t, const at::Device& device, const char* name) {
  TORCH_CHECK(t.device() == device, "nequip_fast conv (cuda): ", name, " is on ", t.device(), ", expected ", device);
}

void check_inputs(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& edge_index,
                  const at::Tensor& ptr, const at::Tensor& perm, const Plan& plan) {
  check_device(sh, x.device(), "sh");
  check_device(w, x.device(), "weight");
  check_device(edge_index, x.device(), "edge_index");
  check_device(ptr, x.device(), "ptr");
  check_device(perm, x.device(), "perm");
  TORCH_CHECK(x.dim() == 2 && sh.dim() == 2 && w.dim() == 2, "nequip_fast conv: x, sh, weight must be 2-d");
  TORCH_CHECK(x.scalar_type() == sh.scalar_type() && x.scalar_type() == w.scalar_type(),
              "nequip_fast conv: x, sh and weight must share a dtype, got ", x.scalar_type(), ", ",
              sh.scalar_type(), ", ", w.scalar_type());
  TORCH_CHECK(sh.size(0) == w.size(0), "nequip_fast conv: sh and weight need one row per edge");
  TORCH_CHECK(x.size(1) >= plan.a_extent, "nequip_fast conv: x has ", x.size(1), " features, the paths need ",
              plan.a_extent);
  TORCH_CHECK(w.size(1) >= plan.w_extent, "nequip_fast conv: weight has too few columns");
  TORCH_CHECK(sh.size(1) >= plan.sh_extent, "nequip_fast conv: sh has too few columns");
  check_graph(edge_index, ptr, perm, sh.size(0));
  TORCH_CHECK(x.size(0) == ptr.size(1) - 1, "nequip_fast conv: x has ", x.size(0), " rows, the graph ",
              ptr.size(1) - 1, " nodes");
}

}  // namespace

at::Tensor segment_conv_cuda(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& weight,
                             const at::Tensor& table, const at::Tensor& edge_index, const at::Tensor& ptr,
                             const at::Tensor& perm, int64_t out_features, bool transpose) {
  TORCH_CHECK(x.is_cuda(), "nequip_fast conv (cuda): x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dp = device_plan(table, x.device(), transpose);
  check_inputs(x, sh, weight, edge_index, ptr, perm, dp->plan);
  TORCH_CHECK(out_features >= dp->plan.b_extent, "nequip_fast conv: out_features ", out_features, " < ",
              dp->plan.b_extent);
  const int d = transpose ? 1 : 0;
  const at::Tensor xc = x.contiguous(), shc = sh.contiguous(), wc = weight.contiguous();
  const at::Tensor ei = edge_index.contiguous(), p = ptr.contiguous(), pm = perm.contiguous();
  const int64_t rows = ptr.size(1) - 1;
  at::Tensor out = at::zeros({rows, out_features}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::segment_conv_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_segment_conv<scalar_t>(
        dp->view<scalar_t>(), xc.data_ptr<scalar_t>(), xc.size(1), shc.data_ptr<scalar_t>(), shc.size(1),
        wc.data_ptr<scalar_t>(), wc.size(1), p[d].data_ptr<int64_t>(), pm[d].data_ptr<int64_t>(),
        ei[1 - d].data_ptr<int64_t>(), rows, out.data_ptr<scalar_t>(), out_features, stream));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> edge_grads_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& sh,
                                                   const at::Tensor& weight, const at::Tensor& table,
                                                   const at::Tensor& edge_index, const at::Tensor& ptr,
                                                   const at::Tensor& perm) {
  TORCH_CHECK(x.is_cuda(), "nequip_fast conv (cuda): x must be a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dp = device_plan(table, x.device(), false);
  check_inputs(x, sh, weight, edge_index, ptr, perm, dp->plan);
  check_device(g, x.device(), "g");
  TORCH_CHECK(g.dim() == 2 && g.scalar_type() == x.scalar_type() && g.size(1) >= dp->plan.b_extent &&
                  g.size(0) == x.size(0),
              "nequip_fast conv: g must be (N, out_features) in the dtype of x");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::edge_grads_cuda", [&] {
    TORCH_CHECK(sh.size(1) <= cuda::max_edge_grads_sh_columns<scalar_t>(), "nequip_fast conv (cuda): sh has ",
                sh.size(1), " columns, edge_grads supports at most ", cuda::max_edge_grads_sh_columns<scalar_t>());
  });
  const at::Tensor xc = x.contiguous(), gc = g.contiguous(), shc = sh.contiguous(), wc = weight.contiguous();
  const at::Tensor ei = edge_index.contiguous();
  at::Tensor g_sh = at::zeros_like(sh, at::MemoryFormat::Contiguous);
  at::Tensor g_w = at::zeros_like(weight, at::MemoryFormat::Contiguous);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nequip_fast::edge_grads_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_edge_grads<scalar_t>(
        dp->view<scalar_t>(), xc.data_ptr<scalar_t>(), xc.size(1), gc.data_ptr<scalar_t>(), gc.size(1),
        shc.data_ptr<scalar_t>(), shc.size(1), wc.data_ptr<scalar_t>(), wc.size(1), ei[0].data_ptr<int64_t>(),
        ei[1].data_ptr<int64_t>(), sh.size(0), g_sh.data_ptr<scalar_t>(), g_w.data_ptr<scalar_t>(), stream));
  });
  return {g_sh, g_w};
}

}  // namespace nequip_fast

// The CUDA kernels of the ops declared in csrc/ops.cpp; fake functions and autograd come from
// Python (nequip_fast/ops/fused.py) and are shared with the CPU backend.
TORCH_LIBRARY_IMPL(nequip_fast, CUDA, m) {
  m.impl("segment_conv", &nequip_fast::segment_conv_cuda);
  m.impl("edge_grads", &nequip_fast::edge_grads_cuda);
}
