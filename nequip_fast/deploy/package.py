"""Writing and reading a deployed model: one AOTInductor ``.pt2`` with its metadata inside.

The metadata travels in AOTInductor's own metadata (``aot_inductor.metadata``), which C++ reads
without loading the compiled code (``AOTIModelPackageLoader::load_metadata_from_package``), so a
file from another torch version is refused with a message before anything is loaded.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

import nequip_fast

from ..model import Potential, build_model
from .export import export_program

FORMAT = "nequip_fast.deployed.v2"  # v2: ghost-exchange input (multi-rank LAMMPS)
# Everything the LAMMPS plugin and the Python loader read; a missing one is an error naming it.
REQUIRED = ("format", "nequip_fast_version", "torch_version", "r_max", "species", "num_layers", "dtype", "device",
            "conv_backend", "exchange_width")
# Backends whose ops live in nequip_fast._C: a process running the file must load that library first.
NATIVE_BACKENDS = ("cpu", "cuda")


class DeployError(ValueError):
    """A deployed file that cannot be used here; the message says why and what to do."""


def torch_release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: the compiled code depends on the release, not on the build variant."""
    return version.split("+")[0]


def metadata_of(model: Potential, device: torch.device) -> dict[str, str]:
    cfg = model.config
    return {
        "format": FORMAT,
        "nequip_fast_version": nequip_fast.__version__,
        "torch_version": torch.__version__,
        "r_max": repr(float(cfg.r_max)),
        "species": " ".join(cfg.species),
        "num_layers": str(cfg.num_layers),
        "dtype": cfg.dtype,
        "device": device.type,
        "conv_backend": cfg.conv_backend,
        "exchange_width": str(model.energy_model.exchange_width),
        "model_config": json.dumps(cfg.to_dict()),
    }


def with_backend(model: Potential, backend: str) -> Potential:
    """The same weights behind another convolution backend (state dicts are backend-independent)."""
    if backend == model.config.conv_backend:
        return model
    config = model.config.to_dict() | {"conv_backend": backend}
    clone = build_model(config)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def deploy(model: Potential, path: str | Path, device: str = "cpu", backend: str | None = None) -> Path:
    """Export ``model`` (energy, forces, virial) to an AOTInductor package at ``path``.

    ``backend`` replaces the model's conv backend in the file ("auto" is resolved here, for
    ``device``, because the compiled file cannot choose later).
    """
    device = torch.device(device)
    model = with_backend(model, backend or model.config.conv_backend)
    if model.config.conv_backend == "auto":
        from ..ops.conv import _auto_backend

        model = with_backend(model, _auto_backend(device))
    if model.config.conv_backend == "triton":
        raise DeployError("the 'triton' conv backend runs Python custom ops, which a compiled file cannot call "
                          "outside Python; deploy with --backend cuda (C++ kernels) or reference")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = export_program(model, device)
    # Compile next to the target and rename: an interrupted deploy never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".pt2")
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(
            program, package_path=tmp, inductor_configs={"aot_inductor.metadata": metadata_of(model, device)})
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
