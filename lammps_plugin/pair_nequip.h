// pair_style nequip: a deployed nequip_fast model (.pt2) in LAMMPS, on one or many MPI ranks.
//
//   plugin load  /path/to/nequipplugin.so
//   pair_style   nequip
//   pair_coeff   * * model.pt2 Cu O      (model species for LAMMPS types 1, 2, ...)
//
// Ghosts that image one of the rank's own atoms fold onto it (on one rank: all of them), so the
// model sees the periodic graph. The other ghosts within r_max of a local atom enter the model as
// ghost rows whose features are exchanged after every layer: forward communication of features
// and reverse communication of their gradients (GhostComm), so the ghost cutoff is r_max + skin
// whatever the number of layers. Only local atoms own energy; forces and per-atom virials on
// ghosts are reverse-communicated (newton on). Needs units metal and a full neighbour list.
#ifndef LMP_PAIR_NEQUIP_H
#define LMP_PAIR_NEQUIP_H

#include "pair.h"

#include "exchange.h"

#include <ATen/Tensor.h>

#include <array>
#include <memory>
#include <unordered_map>
#include <vector>

namespace nequip {
class Model;
}

namespace LAMMPS_NS {

struct EdgeKeyHash {
  size_t operator()(const std::array<int64_t, 5> &k) const {
    size_t h = 0;
    for (int64_t v : k) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

class PairNequIP : public Pair {
 public:
  explicit PairNequIP(class LAMMPS *);
  ~PairNequIP() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 private:
  std::unique_ptr<nequip::Model> model;
  std::vector<int> species_of_type;  // LAMMPS type -> model species index
  // per step, kept to avoid reallocation: model row of each LAMMPS atom (-1: not in the model),
  // the LAMMPS atom of each ghost row (rows nlocal, nlocal + 1, ...), and the edges
  std::vector<int> row_of;
  std::vector<int64_t> ghost_atoms, receivers, senders;
  std::vector<double> vectors;
  std::unordered_map<tagint, int> local_of_tag;
  // edge pairing: the periodic image of each edge's sender relative to its model row, the edges
  // with a local sender by (receiver, sender row, image), and the order [pairs, reverses, unpaired]
  std::vector<std::array<int, 3>> images;
  std::unordered_map<std::array<int64_t, 5>, int64_t, EdgeKeyHash> edge_of_key;
  std::vector<int64_t> order;
  int64_t npairs = 0;
  bool graph_logged = false;
  bool keeps_freed_memory = false;  // glibc malloc set by the constructor (nequip_fast/allocator.py)
  // the ghost exchange, run with LAMMPS's communication of (nlocal + nghost, width) rows in LAMMPS atom order
  class Exchange : public nequip::GhostComm {
   public:
    explicit Exchange(PairNequIP &pair) : pair(pair) {}
    at::Tensor forward(const at::Tensor &local) override;
    at::Tensor reverse(const at::Tensor &grad) override;

   private:
    at::Tensor rows(int width);  // (nlocal + nghost, width) over `buffer`, set up for pack/unpack
    PairNequIP &pair;
    std::vector<double> buffer;
  } exchange{*this};
  double *comm_rows = nullptr;  // the rows in flight
  int comm_width = 0;

  void allocate();
  int node_local_rank();
  void build_graph();
  void pair_edges();
};

}  // namespace LAMMPS_NS

#endif
