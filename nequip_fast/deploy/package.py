"""Writing and reading a deployed model: one AOTInductor ``.pt2`` with its metadata inside.

The metadata travels in AOTInductor's own metadata (``aot_inductor.metadata``), which C++ reads
without loading the compiled code (``AOTIModelPackageLoader::load_metadata_from_package``), so a
file from another torch version is refused with a message before anything is loaded.

A ``.pt2`` is a program: loading it runs native code from the file, so deployed files must be
trusted like programs. The checks here catch accidents, not attacks: a ``fingerprint`` (FNV-1a
over the metadata) catches an edited metadata before the code is loaded, and a probe (energy and
forces of a small structure drawn from the model's metadata, recorded at deploy time) catches,
after loading, a program that is not the model its metadata describes (species or their order,
r_max, dtype, weights).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

import nequip_fast

from ..data.graph import AtomicGraph
from ..model import Potential, build_model
from ..model.tabulated import tabulate as tabulated
from ..ops import auto_backend, convolutions
from .export import export_program

FORMAT = "nequip_fast.deployed.v3"  # v2: ghost-exchange input (multi-rank LAMMPS); v3: edge-pair count input
# Everything the LAMMPS plugin and the Python loader read; a missing one is an error naming it.
REQUIRED = ("format", "nequip_fast_version", "torch_version", "r_max", "species", "num_layers", "dtype", "device",
            "conv_backend", "exchange_width", "model_config", "probe_energy", "probe_forces", "fingerprint")
# The fields the probe structure is drawn from, and those the fingerprint covers (in this order).
MODEL_FIELDS = ("species", "r_max", "num_layers", "dtype", "model_config")
SIGNED_FIELDS = REQUIRED[:-1]
# The compiled kernels' OpenMP regions ask for the running process's thread count (torch.set_num_threads,
# OMP_NUM_THREADS, LAMMPS's -sf omp/-pk omp) instead of the deploying machine's count, baked in by default:
# a file deployed on 2 threads ran 2 threads in a 1-thread LAMMPS rank, beside the ops' own threads.
INDUCTOR_CONFIGS = {"cpp.dynamic_threads": True}
# Backends whose ops live in nequip_fast's ops library (ops/native.py): a process running the file must load it first.
NATIVE_BACKENDS = ("cpu", "cuda")


class DeployError(ValueError):
    """A deployed file that cannot be used here; the message says why and what to do."""


def torch_release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the compiled code depends on the release, not on the build variant."""
    return version.split("+")[0]


def metadata_of(model: Potential, device: torch.device, backend: str) -> dict[str, str]:
    """Everything ``REQUIRED``: the model's description, its probe values and the fingerprint."""
    cfg = model.config
    table = getattr(model, "radial_table", None)
    meta = {
        "format": FORMAT,
        "nequip_fast_version": nequip_fast.__version__,
        "torch_version": torch.__version__,
        "r_max": repr(float(cfg.r_max)),
        "species": " ".join(cfg.species),
        "num_layers": str(cfg.num_layers),
        "dtype": cfg.dtype,
        "device": device.type,
        "conv_backend": backend,  # the compiled ops the file calls
        "exchange_width": str(model.energy_model.exchange_width),
        "radial_table": table.summary() if table is not None else "none (radial MLP)",
        "model_config": json.dumps(cfg.to_dict()),
    }
    energy, forces = _probe(model, meta)
    meta["probe_energy"] = repr(energy)
    meta["probe_forces"] = " ".join(map(repr, forces))
    meta["fingerprint"] = fingerprint(meta)
    return meta


def fnv1a64(text: str) -> int:
    """64-bit FNV-1a of the UTF-8 bytes: a few lines in any language (the LAMMPS plugin repeats it)."""
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def _canonical(meta: dict[str, str], keys) -> str:
    return "\n".join(f"{key}={meta[key]}" for key in keys)


def fingerprint(meta: dict[str, str]) -> str:
    return f"{fnv1a64(_canonical(meta, SIGNED_FIELDS)):016x}"


def probe_graph(meta: dict[str, str]) -> AtomicGraph:
    """A small cluster (each species, every pair an edge) drawn from the model fields' hash:
    metadata describing another model gives another structure, so the recorded probe values
    only match the program they were computed for.

    Portable recipe: splitmix64 seeded with fnv1a64 of the model fields; ``n = S + 3`` atoms,
    species ``i % S`` for ``i < S``, then ``floor(u * S)``; positions ``0.3 r_max (i % 2,
    i // 2 % 2, i // 4) + 0.1 r_max (u - 0.5)`` per coordinate; edges all ordered pairs ``i != j``
    (receiver-major), edge vector ``pos[j] - pos[i]``.
    """
    state = fnv1a64(_canonical(meta, MODEL_FIELDS))
    mask = 0xFFFFFFFFFFFFFFFF

    def uniform() -> float:
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return ((z ^ (z >> 31)) >> 11) * 2.0 ** -53

    num_species, r_max = len(meta["species"].split()), float(meta["r_max"])
    n = num_species + 3
    species = [i % num_species if i < num_species else int(uniform() * num_species) for i in range(n)]
    pos = [[0.3 * r_max * g + 0.1 * r_max * (uniform() - 0.5) for g in (i % 2, i // 2 % 2, i // 4)] for i in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    return AtomicGraph(pos=torch.tensor(pos, dtype=torch.float64), species=torch.tensor(species),
                       cell=torch.zeros(1, 3, 3, dtype=torch.float64), pbc=torch.zeros(1, 3, dtype=torch.bool),
                       edge_index=torch.tensor(pairs).T.contiguous(),
                       edge_shift=torch.zeros(len(pairs), 3, dtype=torch.float64),
                       batch=torch.zeros(n, dtype=torch.long))


def _probe(model: torch.nn.Module, meta: dict[str, str]) -> tuple[float, list[float]]:
    """Energy and forces of ``model`` (a ``Potential`` or a ``DeployedPotential``) on the probe."""
    graph = probe_graph(meta).to(dtype=getattr(torch, meta["dtype"]))
    out = model(graph, forces=True)
    return float(out.energy.detach().sum()), out.forces.detach().double().cpu().flatten().tolist()


def check_program(deployed: torch.nn.Module, meta: dict[str, str], where: str) -> None:
    """After loading: the program must reproduce the probe values recorded at deploy time."""
    want_energy = float(meta["probe_energy"])
    want_forces = torch.tensor([float(x) for x in meta["probe_forces"].split()], dtype=torch.float64)
    try:
        energy, forces = _probe(deployed, meta)
        got = torch.tensor(forces, dtype=torch.float64)
    except RuntimeError as exc:
        problem = f"it fails on the probe structure ({str(exc).splitlines()[0]})"
    else:
        tol = 1e-8 if meta["dtype"] == "float64" else 1e-4
        f_scale = 1.0 + float(want_forces.abs().max()) if want_forces.numel() else 1.0
        if (got.shape == want_forces.shape and abs(energy - want_energy) <= tol * (1 + abs(want_energy))
                and float((got - want_forces).abs().max()) <= tol * f_scale):
            return
        problem = f"its probe energy is {energy:.10g} eV where the metadata records {want_energy:.10g} eV"
    raise DeployError(f"{where}: the compiled program is not the model its metadata describes: {problem}; the file "
                      "was altered or assembled from different deployments: redeploy the checkpoint with "
                      "`nequip-fast deploy`")


def with_backend(model: Potential, backend: str) -> Potential:
    """The same weights behind another convolution backend, leaving ``model`` as it is."""
    clone = build_model(model.config, backend)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def deploy(model: Potential, path: str | Path, device: str = "cpu", backend: str | None = None,
           tabulate: bool | None = None, tolerance: float | None = None) -> Path:
    """Export ``model`` (energy, forces, virial) to an AOTInductor package at ``path``.

    ``backend``: the conv kernels compiled into the file (default: the model's); "auto" is resolved
    here, for ``device``, because the compiled file cannot choose later. ``tabulate`` replaces the
    radial networks by tables within ``tolerance`` (``model.tabulated``); None: for float32 models,
    whose results it does not visibly change, not for float64 ones.
    """
    device = torch.device(device)
    backend = backend or convolutions(model)[0].backend
    if backend == "auto":
        backend = auto_backend(device)
    model = with_backend(model, backend)
    if tabulate or (tabulate is None and model.dtype == torch.float32):
        model = tabulated(model, tolerance)
    if backend == "triton":
        raise DeployError("the 'triton' conv backend runs Python custom ops, which a compiled file cannot call "
                          "outside Python; deploy with --backend cuda (C++ kernels) or reference")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = metadata_of(model, device, backend)  # before the export moves the model to ``device``
    program = export_program(model, device)
    # Compile next to the target and rename: an interrupted deploy never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".pt2")
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=tmp, inductor_configs=INDUCTOR_CONFIGS | {
            "aot_inductor.metadata": metadata})
        from .deployed import DeployedPotential

        try:
            DeployedPotential(tmp)  # the probe: the compiled program must compute what the model does
        except DeployError as exc:
            raise DeployError(f"export failed: the compiled program disagrees with the model "
                              f"({str(exc).split('metadata describes: ')[-1].split(';')[0]}); deploy with "
                              f"--backend reference, and please report this") from None
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a deployed file, checked: the format, every required key, this torch release."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"deployed model {path} does not exist")
    try:
        meta = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(str(path), "model")
    except Exception as exc:  # a zip that is not an AOTInductor package, or not a zip at all
        raise DeployError(f"{path} is not a deployed nequip_fast model (cannot read it as an AOTInductor "
                          f"package: {str(exc).splitlines()[0]})") from None
    check_metadata(meta, str(path))
    return meta


def check_metadata(meta: dict[str, str], where: str) -> None:
    if meta.get("format", "").startswith("nequip_fast.deployed.") and meta["format"] != FORMAT:
        raise DeployError(f"{where} was deployed by another nequip_fast version (file format {meta['format']!r}, this "
                          f"version reads {FORMAT!r}); redeploy the checkpoint with `nequip-fast deploy`")
    if meta.get("format") != FORMAT:
        raise DeployError(f"{where} is not a deployed nequip_fast model (format {meta.get('format')!r}, "
                          f"expected {FORMAT!r}); deploy it with `nequip-fast deploy`")
    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise DeployError(f"{where}: metadata lacks {', '.join(missing)}; redeploy it with `nequip-fast deploy`")
    if torch_release(meta["torch_version"]) != torch_release(torch.__version__):
        raise DeployError(f"{where} was deployed with torch {meta['torch_version']} but this is torch "
                          f"{torch.__version__}; compiled models are tied to a torch release: redeploy the "
                          f"checkpoint with `nequip-fast deploy` under this torch")
    if meta["fingerprint"] != fingerprint(meta):
        raise DeployError(f"{where}: its metadata was changed after deployment (the fingerprint does not match); "
                          "it may no longer describe the compiled program: redeploy the checkpoint with "
                          "`nequip-fast deploy`")
    try:
        config = json.loads(meta["model_config"])
        consistent = (config["species"] == meta["species"].split() and float(config["r_max"]) == float(meta["r_max"])
                      and config["dtype"] == meta["dtype"] and str(config["num_layers"]) == meta["num_layers"])
    except (ValueError, KeyError, TypeError):
        consistent = False
    if not consistent or meta["dtype"] not in ("float32", "float64"):
        raise DeployError(f"{where}: its metadata contradicts itself (species, r_max, dtype or num_layers differ "
                          "from its model_config); redeploy the checkpoint with `nequip-fast deploy`")
