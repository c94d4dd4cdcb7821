// Registers pair_style nequip; called by shim.cpp's lammpsplugin_init.
#include "lammpsplugin.h"
#include "pair_nequip.h"

#include "lammps.h"

using namespace LAMMPS_NS;

static Pair *create_pair(LAMMPS *lmp) { return new PairNequIP(lmp); }

extern "C" void nequip_plugin_init(void *lmp, void *handle, void *regfunc) {
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS *>(lmp)->version;
  plugin.style = "pair";
  plugin.name = "nequip";
  plugin.info = "NequIP potential (nequip_fast deployed .pt2), multi-rank MPI";
  plugin.author = "nequip_fast";
  plugin.creator.v1 = reinterpret_cast<lammpsplugin_factory1 *>(&create_pair);
  plugin.handle = handle;
  (*reinterpret_cast<lammpsplugin_regfunc>(regfunc))(&plugin, lmp);
}
