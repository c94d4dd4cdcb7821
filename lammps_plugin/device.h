// One GPU per MPI rank, chosen by the rank's index among the ranks of its node.
#ifndef NEQUIP_DEVICE_H
#define NEQUIP_DEVICE_H

#include <stdexcept>
#include <string>

namespace nequip {

// Ranks of a node share its GPUs round-robin, so N ranks on N GPUs get one each.
inline int choose_device(int local_rank, int device_count) {
  if (device_count <= 0)
    throw std::runtime_error("the model was compiled for CUDA but no GPU is visible to this process");
  if (local_rank < 0) throw std::runtime_error("negative node-local rank " + std::to_string(local_rank));
  return local_rank % device_count;
}

}  // namespace nequip

#endif
