// The ghost exchange ops of a deployed model (nequip_fast::ghost_exchange and its adjoint, see
// nequip_fast/ops/exchange.py), implemented by whoever runs the model: the pair style provides a
// GhostComm with LAMMPS's forward and reverse communication and activates it around each call.
#ifndef NEQUIP_EXCHANGE_H
#define NEQUIP_EXCHANGE_H

#include <ATen/Tensor.h>

namespace nequip {

class GhostComm {
 public:
  virtual ~GhostComm() = default;
  // (nlocal, width) features of the local atoms -> (nlocal + nghost, width): ghost rows from their owners
  virtual at::Tensor forward(const at::Tensor &local) = 0;
  // (nlocal + nghost, width) gradients -> (nlocal, width): each ghost row summed into its owner
  virtual at::Tensor reverse(const at::Tensor &all) = 0;
};

// Makes `comm` the implementation of the exchange ops on this thread while it lives.
class GhostCommScope {
 public:
  explicit GhostCommScope(GhostComm *comm);
  ~GhostCommScope();
  GhostCommScope(const GhostCommScope &) = delete;
  GhostCommScope &operator=(const GhostCommScope &) = delete;

 private:
  GhostComm *previous_;
};

}  // namespace nequip

#endif
