#include "pair_nequip.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include "device.h"
#include "lammps_compat.h"
#include "model.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <torch/cuda.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdexcept>
#include <string>
#include <utility>

using namespace LAMMPS_NS;

// Every step allocates the same large temporaries; glibc would mmap them afresh and give freed heap
// tops back, so each step faulted and zeroed every page again (~20% of a step's CPU time,
// benchmarks/RESULTS.md). Keep freed memory instead, as nequip_fast/allocator.py does in Python.
static bool keep_freed_memory() {
#if defined(__GLIBC__)
  const char *setting = std::getenv("NEQUIP_FAST_KEEP_FREED_MEMORY");
  if (setting != nullptr && std::strcmp(setting, "0") == 0) return false;
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
#else
  return false;
#endif
}

PairNequIP::PairNequIP(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;  // the model returns the virial (and per-atom virials)
  centroidstressflag = CENTROID_NOTAVAIL;
  keeps_freed_memory = keep_freed_memory();
}

PairNequIP::~PairNequIP() {
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairNequIP::allocate() {
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

void PairNequIP::settings(int narg, char **) {
  if (narg != 0)
    error->all(FLERR, "pair_style nequip takes no arguments; give the model in pair_coeff * * model.pt2 <species>");
}

int PairNequIP::node_local_rank() {
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int rank;
  MPI_Comm_rank(node, &rank);
  MPI_Comm_free(&node);
  return rank;
}

void PairNequIP::coeff(int narg, char **arg) {
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for nequip must be: pair_coeff * * model.pt2 <one model species per atom type>");
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff * * {} needs one model species per atom type: {} type(s), got {} name(s)", arg[2],
               ntypes, narg - 3);
  try {
    nequip::ModelInfo info = nequip::read_model_info(arg[2]);
    const int gpu = info.device == "cpu"
                        ? -1
                        : nequip::choose_device(node_local_rank(), static_cast<int>(torch::cuda::device_count()));
    model = std::make_unique<nequip::Model>(std::move(info), gpu);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style nequip: {}", e.what());
  }
  const auto &species = model->info().species;
  species_of_type.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    if (strcmp(arg[2 + t], "NULL") == 0)
      error->all(FLERR, "pair_coeff: NULL for atom type {}: pair_style nequip needs a model species for every atom "
                 "type (the model's energy of an atom depends on all its neighbours)", t);
    for (size_t s = 0; s < species.size(); s++)
      if (species[s] == arg[2 + t]) species_of_type[t] = static_cast<int>(s);
    if (species_of_type[t] < 0)
      error->all(FLERR, "pair_coeff: species '{}' (atom type {}) is not in model {}, whose species are: {}",
                 arg[2 + t], t, arg[2], utils::join_words(species, " "));
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
  // LAMMPS sizes its communication buffers from these (per atom): the widest exchanged feature
  comm_forward = comm_reverse = model->info().exchange_width;
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style nequip: {} (species {}, r_max {}, {} layers, {}, {} conv, {}, nequip_fast {}); "
                   "freed memory {}\n",
                   arg[2], utils::join_words(species, " "), model->info().r_max,
                   model->info().num_layers, model->info().dtype, model->info().conv_backend,
                   model->device().str(), model->info().nequip_fast_version,
                   keeps_freed_memory ? "kept (NEQUIP_FAST_KEEP_FREED_MEMORY=0 returns it)" : "returned");
}

void PairNequIP::init_style() {
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style nequip requires 'units metal' (eV, Angstrom), not 'units {}'", update->unit_style);
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style nequip requires 'newton on': forces on ghost atoms are reverse-communicated");
  // Local atoms' neighbours only: messages from ghosts reach local atoms, and the ghosts' own
  // features come from their owners by exchange, so the default ghost cutoff (r_max + skin) suffices.
  nequip::request_full_neighbor_list(this, instance_me, neighbor, false);
}

double PairNequIP::init_one(int, int) { return model->info().r_max; }

// The model's atoms: the local atoms (rows 0..nlocal-1, as in LAMMPS), then one row per ghost
// that sends to a local atom within r_max, unless it images a local atom of this rank (found by
// tag; without tags nothing folds), whose row it then shares. Folding keeps one rank exchange-free.
void PairNequIP::build_graph() {
  const int nlocal = atom->nlocal, nall = atom->nlocal + atom->nghost;
  const double cutsq_model = model->info().r_max * model->info().r_max;
  double **x = atom->x;
  row_of.assign(nall, -1);
  for (int i = 0; i < nlocal; i++) row_of[i] = i;
  if (atom->tag_enable) {
    local_of_tag.clear();
    for (int i = 0; i < nlocal; i++) local_of_tag[atom->tag[i]] = i;
    for (int j = nlocal; j < nall; j++) {
      auto it = local_of_tag.find(atom->tag[j]);
      if (it != local_of_tag.end()) row_of[j] = it->second;
    }
  }
  ghost_atoms.clear();
  receivers.clear();
  senders.clear();
  vectors.clear();
  images.clear();
  const double *h_inv = domain->h_inv;
  for (int ii = 0; ii < list->inum; ii++) {
    const int i = list->ilist[ii];
    const int *neighbors = list->firstneigh[i];
    for (int n = 0; n < list->numneigh[i]; n++) {
      const int j = neighbors[n] & NEIGHMASK;
      const double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
      if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= cutsq_model) continue;
      if (row_of[j] < 0) {
        row_of[j] = nlocal + static_cast<int>(ghost_atoms.size());
        ghost_atoms.push_back(j);
      }
      receivers.push_back(i);
      senders.push_back(row_of[j]);
      vectors.insert(vectors.end(), d, d + 3);
      // The lattice vector from the sender's model row to j, in cells: an exact integer up to
      // rounding, so edges are matched by (atoms, image), never by comparing floating vectors.
      std::array<int, 3> image{0, 0, 0};
      if (row_of[j] < nlocal && j >= nlocal) {
        const double *xs = x[row_of[j]];
        const double e[3] = {x[j][0] - xs[0], x[j][1] - xs[1], x[j][2] - xs[2]};
        image = {static_cast<int>(std::lround(h_inv[0] * e[0] + h_inv[5] * e[1] + h_inv[4] * e[2])),
                 static_cast<int>(std::lround(h_inv[1] * e[1] + h_inv[3] * e[2])),
                 static_cast<int>(std::lround(h_inv[2] * e[2]))};
      }
      images.push_back(image);
    }
  }
  pair_edges();
  if (!graph_logged && comm->me == 0) {
    graph_logged = true;
    utils::logmesg(lmp, "pair_style nequip: rank 0 model graph: {} atoms ({} local), {} edges, {} pairs\n",
                   nlocal + ghost_atoms.size(), nlocal, receivers.size(), npairs);
  }
}

// Orders the edges [P edges, their P reverses, unpaired] (the model's pair layout): edge (i, s,
// image n) with a local sender row s is paired with (s, i, -n), which the full neighbour list of s
// holds unless its length rounds to the other side of r_max; edges from ghost rows stay unpaired.
void PairNequIP::pair_edges() {
  const int nlocal = atom->nlocal;
  const int64_t nedges = static_cast<int64_t>(receivers.size());
  auto key = [&](int64_t r, int64_t s, const std::array<int, 3> &n, int sign) {
    return std::array<int64_t, 5>{r, s, sign * n[0], sign * n[1], sign * n[2]};
  };
  edge_of_key.clear();
  for (int64_t e = 0; e < nedges; e++)
    if (senders[e] < nlocal) edge_of_key[key(receivers[e], senders[e], images[e], 1)] = e;
  order.clear();
  std::vector<int64_t> reverses, unpaired;
  for (int64_t e = 0; e < nedges; e++) {
    int64_t reverse = -1;
    if (senders[e] < nlocal) {
      auto it = edge_of_key.find(key(senders[e], receivers[e], images[e], -1));
      if (it != edge_of_key.end()) reverse = it->second;
    }
    if (reverse < 0) {
      unpaired.push_back(e);
    } else if (e < reverse) {  // the pair's first edge; the other one comes as its reverse
      order.push_back(e);
      reverses.push_back(reverse);
    }
  }
  npairs = static_cast<int64_t>(order.size());
  order.insert(order.end(), reverses.begin(), reverses.end());
  order.insert(order.end(), unpaired.begin(), unpaired.end());
  auto permute = [&](auto &v, int width) {
    std::remove_reference_t<decltype(v)> out(v.size());
    for (size_t k = 0; k < order.size(); k++)
      for (int c = 0; c < width; c++) out[k * width + c] = v[order[k] * width + c];
    v.swap(out);
  };
  permute(receivers, 1);
  permute(senders, 1);
  permute(vectors, 3);
}

void PairNequIP::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  const int nlocal = atom->nlocal;
  // Every rank runs the model, even without atoms: its exchanges pair with its neighbours'.
  if (nlocal == 0 && comm->nprocs == 1) return;
  build_graph();

  const int64_t nghost = static_cast<int64_t>(ghost_atoms.size());
  const int64_t natoms = nlocal + nghost, nedges = static_cast<int64_t>(receivers.size());
  at::Tensor species = at::empty({nlocal}, at::kLong);  // of the local atoms: ghosts' features come by exchange
  auto *s = species.data_ptr<int64_t>();
  for (int i = 0; i < nlocal; i++) s[i] = species_of_type[atom->type[i]];
  at::Tensor edge_index = at::stack({at::from_blob(receivers.data(), {nedges}, at::kLong),
                                     at::from_blob(senders.data(), {nedges}, at::kLong)});
  at::Tensor edge_vec = at::from_blob(vectors.data(), {nedges, 3}, at::kDouble);

  nequip::Outputs out;
  try {
    nequip::GhostCommScope scope(&exchange);
    out = model->run(species, edge_index, edge_vec, nghost, npairs);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style nequip: the model failed: {}", e.what());
  }
  auto atom_of = [&](int64_t k) { return k < nlocal ? static_cast<int>(k) : static_cast<int>(ghost_atoms[k - nlocal]); };

  const double *forces = out.forces.data_ptr<double>();
  double **f = atom->f;
  for (int64_t k = 0; k < natoms; k++)
    for (int d = 0; d < 3; d++) f[atom_of(k)][d] += forces[3 * k + d];

  if (eflag_global) eng_vdwl += out.energy.item<double>();
  if (eflag_atom) {
    const double *atomic = out.atomic_energy.data_ptr<double>();
    for (int i = 0; i < nlocal; i++) eatom[i] += atomic[i];
  }
  // LAMMPS's Voigt order: xx, yy, zz, xy, xz, yz
  static const int row[6] = {0, 1, 2, 0, 0, 1}, col[6] = {0, 1, 2, 1, 2, 2};
  if (vflag_global) {
    const double *w = out.virial.data_ptr<double>();
    for (int v = 0; v < 6; v++) virial[v] += w[3 * row[v] + col[v]];
  }
  if (vflag_atom) {
    const double *w = out.atomic_virial.data_ptr<double>();
    for (int64_t k = 0; k < natoms; k++)
      for (int v = 0; v < 6; v++) vatom[atom_of(k)][v] += w[9 * k + 3 * row[v] + col[v]];
  }
}

// --- ghost exchange (GhostComm): LAMMPS's forward and reverse communication of feature rows ---

// The rows live in a buffer kept between calls: fresh multi-MB allocations cost page faults every layer.
at::Tensor PairNequIP::Exchange::rows(int width) {
  const int64_t nall = pair.atom->nlocal + pair.atom->nghost;
  if (width > pair.comm_forward)
    throw std::runtime_error("ghost exchange of " + std::to_string(width) + " features exceeds the model's "
                             "declared exchange width " + std::to_string(pair.comm_forward));
  if (buffer.size() < static_cast<size_t>(nall * width)) buffer.resize(nall * width);
  pair.comm_rows = buffer.data();
  pair.comm_width = width;
  return at::from_blob(buffer.data(), {nall, width}, at::kDouble);
}

at::Tensor PairNequIP::Exchange::forward(const at::Tensor &local) {
  if (pair.comm->nprocs == 1 && pair.ghost_atoms.empty()) return local.clone();  // every ghost folded
  at::Tensor all = rows(static_cast<int>(local.size(1)));
  all.narrow(0, 0, local.size(0)).copy_(local);
  nequip::forward_comm(pair.comm, &pair, pair.comm_width);  // on every rank: it pairs with the neighbours'
  at::Tensor ghosts = at::from_blob(pair.ghost_atoms.data(), {static_cast<int64_t>(pair.ghost_atoms.size())}, at::kLong);
  return at::cat({local, all.index_select(0, ghosts).to(local.options())});
}

at::Tensor PairNequIP::Exchange::reverse(const at::Tensor &grad) {
  if (pair.comm->nprocs == 1 && pair.ghost_atoms.empty()) return grad.clone();
  const int64_t nlocal = pair.atom->nlocal, nghost = static_cast<int64_t>(pair.ghost_atoms.size());
  at::Tensor all = rows(static_cast<int>(grad.size(1)));
  all.narrow(0, nlocal, all.size(0) - nlocal).zero_();  // LAMMPS ghosts outside the model send nothing
  all.narrow(0, 0, nlocal).copy_(grad.narrow(0, 0, nlocal));
  at::Tensor ghosts = at::from_blob(pair.ghost_atoms.data(), {nghost}, at::kLong);
  all.index_copy_(0, ghosts, grad.narrow(0, nlocal, nghost).to(at::kCPU, at::kDouble));
  nequip::reverse_comm(pair.comm, &pair, pair.comm_width);
  return all.narrow(0, 0, nlocal).to(grad.options(), false, true);  // a copy: the buffer is reused
}

int PairNequIP::pack_forward_comm(int n, int *list, double *buf, int, int *) {
  const size_t w = comm_width;
  for (int i = 0; i < n; i++) std::memcpy(buf + i * w, comm_rows + list[i] * w, w * sizeof(double));
  return n * comm_width;
}

void PairNequIP::unpack_forward_comm(int n, int first, double *buf) {
  std::memcpy(comm_rows + first * comm_width, buf, static_cast<size_t>(n) * comm_width * sizeof(double));
}

int PairNequIP::pack_reverse_comm(int n, int first, double *buf) {
  std::memcpy(buf, comm_rows + first * comm_width, static_cast<size_t>(n) * comm_width * sizeof(double));
  return n * comm_width;
}

void PairNequIP::unpack_reverse_comm(int n, int *list, double *buf) {
  const size_t w = comm_width;
  for (int i = 0; i < n; i++) {
    double *row = comm_rows + list[i] * w;
    for (size_t c = 0; c < w; c++) row[c] += buf[i * w + c];
  }
}
