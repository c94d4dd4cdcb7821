// A deployed nequip_fast model (.pt2 from `nequip-fast deploy`): metadata checks and the call.
// Independent of LAMMPS; every failure is a std::runtime_error whose message says what to do.
#ifndef NEQUIP_MODEL_H
#define NEQUIP_MODEL_H

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace nequip {

struct ModelInfo {
  std::string path, dtype, device, conv_backend, torch_version, nequip_fast_version;
  double r_max = 0.0;
  int num_layers = 0;
  int exchange_width = 0;  // widest feature row the ghost exchange sends (per atom)
  std::vector<std::string> species;  // model order
};

// Reads and checks the metadata without loading the compiled code (safe for any torch version).
ModelInfo read_model_info(const std::string &path);

struct Outputs {
  at::Tensor energy, atomic_energy, forces, virial, atomic_virial;  // CPU float64
};

class Model {
 public:
  // device_index: the GPU for a CUDA model (ignored for CPU models).
  Model(ModelInfo info, int device_index);
  ~Model();
  const ModelInfo &info() const { return info_; }
  c10::Device device() const { return device_; }
  // species (nlocal,), edge_index (2, E) int64 and edge_vec (E, 3) float64, all on the CPU; atoms
  // nlocal..nlocal+nghost-1 are ghosts (their features come from the active GhostComm, exchange.h);
  // every receiver is local. Edges [npairs, 2 npairs) reverse edges [0, npairs) (the radial
  // networks run once per pair), the rest are unpaired. Inputs are moved to the model's device and
  // outputs back once.
  Outputs run(const at::Tensor &species, const at::Tensor &edge_index, const at::Tensor &edge_vec,
              int64_t nghost, int64_t npairs);

 private:
  ModelInfo info_;
  c10::Device device_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace nequip

#endif
