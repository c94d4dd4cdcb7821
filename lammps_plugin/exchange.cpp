// Registers nequip_fast::ghost_exchange / ghost_exchange_adjoint (schemas as in
// nequip_fast/ops/exchange.py) for CPU and CUDA tensors; both call the active GhostComm. The CUDA
// path is staged through the host by the GhostComm (LAMMPS's buffers are host memory).
#include "exchange.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <memory>
#include <stdexcept>

namespace nequip {
namespace {

thread_local GhostComm *active = nullptr;

GhostComm &current() {
  if (!active)
    throw std::runtime_error("nequip_fast::ghost_exchange was called outside a model run that provides ghost "
                             "communication (LAMMPS pair_style nequip)");
  return *active;
}

at::Tensor ghost_exchange(const at::Tensor &x, const at::Tensor &ghosts) {
  at::Tensor out = current().forward(x);
  if (out.size(0) != x.size(0) + ghosts.size(0))
    throw std::runtime_error("ghost exchange: the model's ghost count does not match the pair style's");
  return out;
}

at::Tensor ghost_exchange_adjoint(const at::Tensor &grad, const at::Tensor &ghosts) {
  (void)ghosts;
  return current().reverse(grad);
}

}  // namespace

GhostCommScope::GhostCommScope(GhostComm *comm) : previous_(active) { active = comm; }
GhostCommScope::~GhostCommScope() { active = previous_; }

}  // namespace nequip

namespace {

// The schemas are defined once per process: a LAMMPS with pair_style nequip compiled in may also
// `plugin load` the plugin (LAMMPS then overrides the built-in style), and two definitions of one
// operator abort. The kernels below register in every copy; the last one loaded serves, and it
// belongs to the pair style in use, whose GhostCommScope sets this copy's `active`.
struct DefineOps {
  std::unique_ptr<torch::Library> library;
  DefineOps() {
    if (c10::Dispatcher::singleton().findSchema(c10::OperatorName("nequip_fast::ghost_exchange", "")).has_value())
      return;
    library = std::make_unique<torch::Library>(torch::Library::FRAGMENT, "nequip_fast", std::nullopt, __FILE__,
                                               __LINE__);
    library->def("ghost_exchange(Tensor x, Tensor ghosts) -> Tensor");
    library->def("ghost_exchange_adjoint(Tensor grad, Tensor ghosts) -> Tensor");
  }
} define_ops;

}  // namespace

TORCH_LIBRARY_IMPL(nequip_fast, CPU, m) {
  m.impl("ghost_exchange", &nequip::ghost_exchange);
  m.impl("ghost_exchange_adjoint", &nequip::ghost_exchange_adjoint);
}

TORCH_LIBRARY_IMPL(nequip_fast, CUDA, m) {
  m.impl("ghost_exchange", &nequip::ghost_exchange);
  m.impl("ghost_exchange_adjoint", &nequip::ghost_exchange_adjoint);
}
