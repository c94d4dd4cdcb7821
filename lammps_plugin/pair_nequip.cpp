#include "pair_nequip.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include "device.h"
#include "model.h"

#include <ATen/ATen.h>
#include <mpi.h>
#include <torch/cuda.h>

#include <cstring>
#include <string>
#include <utility>

using namespace LAMMPS_NS;

PairNequIP::PairNequIP(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;  // ghosts within (num_layers - 1) r_max of a local atom pass messages inward
  no_virial_fdotr_compute = 1;  // the model returns the virial (and per-atom virials)
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairNequIP::~PairNequIP() {
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairNequIP::allocate() {
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
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
    for (size_t s = 0; s < species.size(); s++)
      if (species[s] == arg[2 + t]) species_of_type[t] = static_cast<int>(s);
    if (species_of_type[t] < 0)
      error->all(FLERR, "pair_coeff: species '{}' (atom type {}) is not in model {}, whose species are: {}",
                 arg[2 + t], t, arg[2], utils::join_words(species, " "));
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style nequip: {} (species {}, r_max {}, {} layers, {}, {} conv, {}, nequip_fast {})\n",
                   arg[2], utils::join_words(species, " "), model->info().r_max,
                   model->info().num_layers, model->info().dtype, model->info().conv_backend,
                   model->device().str(), model->info().nequip_fast_version);
}

void PairNequIP::init_style() {
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style nequip requires 'units metal' (eV, Angstrom), not 'units {}'", update->unit_style);
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style nequip requires 'newton on': forces on ghost atoms are reverse-communicated");
  // One rank owns every atom: ghosts are periodic images of local atoms and fold onto them
  // (the model sees the periodic graph, as in Python). Several ranks: ghosts are atoms of
  // their own, and every local atom's energy depends on atoms up to num_layers * r_max away,
  // which must stay ghosts until the next neighbour-list build, hence the skin.
  single_rank = comm->nprocs == 1;
  ghostneigh = single_rank ? 0 : 1;
  neighbor->add_request(this, single_rank ? NeighConst::REQ_FULL : NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
  if (single_rank) return;
  const double ghost = model->info().num_layers * model->info().r_max + neighbor->skin;
  if (comm->cutghostuser < ghost) {
    comm->cutghostuser = ghost;
    if (comm->me == 0) utils::logmesg(lmp, "pair_style nequip: ghost cutoff set to {:.4g} A\n", ghost);
  }
}

double PairNequIP::init_one(int i, int j) {
  cutghost[i][j] = cutghost[j][i] = model->info().r_max;
  return model->info().r_max;
}

// The atoms whose energy or messages matter, found by breadth-first search from the local
// atoms over edges shorter than r_max: an atom h edges away from every local atom only matters
// for h <= num_layers, and only atoms with h < num_layers send messages to their neighbours'
// receivers that still reach a local energy. Locals come first, so model index < nlocal = owner.
// On a single rank, a ghost is replaced by the local atom it images, found by its tag.
void PairNequIP::build_graph() {
  const int nlocal = atom->nlocal, nall = atom->nlocal + atom->nghost;
  const int layers = model->info().num_layers;
  const double cutsq_model = model->info().r_max * model->info().r_max;
  double **x = atom->x;
  compact.assign(nall, -1);
  hops.resize(nall);
  atoms.clear();
  receivers.clear();
  senders.clear();
  vectors.clear();
  for (int i = 0; i < nlocal; i++) {
    compact[i] = i;
    hops[i] = 0;
    atoms.push_back(i);
  }
  if (single_rank) {
    local_of_tag.clear();
    for (int i = 0; i < nlocal; i++) local_of_tag[atom->tag[i]] = i;
    for (int j = nlocal; j < nall; j++) compact[j] = local_of_tag.at(atom->tag[j]);
  }
  for (size_t k = 0; k < atoms.size(); k++) {
    const int i = atoms[k];
    if (hops[i] == layers) continue;
    const int *neighbors = list->firstneigh[i];
    for (int n = 0; n < list->numneigh[i]; n++) {
      const int j = neighbors[n] & NEIGHMASK;
      const double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
      if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= cutsq_model) continue;
      if (compact[j] < 0) {
        compact[j] = static_cast<int>(atoms.size());
        hops[j] = hops[i] + 1;
        atoms.push_back(j);
      }
      receivers.push_back(static_cast<int64_t>(k));
      senders.push_back(compact[j]);
      vectors.insert(vectors.end(), d, d + 3);
    }
  }
  if (!graph_logged && comm->me == 0) {
    graph_logged = true;
    utils::logmesg(lmp, "pair_style nequip: rank 0 model graph: {} atoms ({} local), {} edges\n", atoms.size(), nlocal,
                   receivers.size());
  }
}

void PairNequIP::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  const int nlocal = atom->nlocal;
  if (nlocal == 0) return;
  build_graph();

  const int64_t natoms = static_cast<int64_t>(atoms.size()), nedges = static_cast<int64_t>(receivers.size());
  at::Tensor species = at::empty({natoms}, at::kLong);
  auto *s = species.data_ptr<int64_t>();
  for (int64_t k = 0; k < natoms; k++) s[k] = species_of_type[atom->type[atoms[k]]];
  at::Tensor edge_index = at::stack({at::from_blob(receivers.data(), {nedges}, at::kLong),
                                     at::from_blob(senders.data(), {nedges}, at::kLong)});
  at::Tensor edge_vec = at::from_blob(vectors.data(), {nedges, 3}, at::kDouble);

  nequip::Outputs out;
  try {
    out = model->run(species, edge_index, edge_vec, nlocal);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style nequip: the model failed: {}", e.what());
  }

  const double *forces = out.forces.data_ptr<double>();
  double **f = atom->f;
  for (int64_t k = 0; k < natoms; k++)
    for (int d = 0; d < 3; d++) f[atoms[k]][d] += forces[3 * k + d];

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
      for (int v = 0; v < 6; v++) vatom[atoms[k]][v] += w[9 * k + 3 * row[v] + col[v]];
  }
}
