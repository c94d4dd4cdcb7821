// pair_style nequip: a deployed nequip_fast model (.pt2) in LAMMPS, on one or many MPI ranks.
//
//   plugin load  /path/to/nequipplugin.so
//   pair_style   nequip
//   pair_coeff   * * model.pt2 Cu O      (model species for LAMMPS types 1, 2, ...)
//
// One rank: ghosts fold onto the local atoms they image, so the model sees the periodic graph.
// Several ranks: the ghost cutoff is num_layers * r_max + skin, so each local atom sees its whole
// receptive field; only local atoms own energy, and forces on ghosts are reverse-communicated
// (newton on). Needs units metal and a full neighbour list that includes ghosts.
#ifndef LMP_PAIR_NEQUIP_H
#define LMP_PAIR_NEQUIP_H

#include "pair.h"

#include <memory>
#include <unordered_map>
#include <vector>

namespace nequip {
class Model;
}

namespace LAMMPS_NS {

class PairNequIP : public Pair {
 public:
  explicit PairNequIP(class LAMMPS *);
  ~PairNequIP() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 private:
  std::unique_ptr<nequip::Model> model;
  std::vector<int> species_of_type;  // LAMMPS type -> model species index
  // per step, kept to avoid reallocation: atoms that enter the model (locals first) and edges
  std::vector<int> atoms, compact, hops;
  std::vector<int64_t> receivers, senders;
  std::vector<double> vectors;
  std::unordered_map<tagint, int> local_of_tag;
  bool single_rank = true, graph_logged = false;

  void allocate();
  int node_local_rank();
  void build_graph();
};

}  // namespace LAMMPS_NS

#endif
