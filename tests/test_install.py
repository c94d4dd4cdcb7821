"""Installing the way Python users do: a plain ``pip install`` (build isolation) into a fresh
virtual environment that already has torch, with no package index at all, so pip cannot fetch
another torch; the installed copy then computes energies and forces with the fused CPU kernels.
About 30 s (venv, pip, one Python run; the kernels come from the cache the suite already uses)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
import torch

from nequip_fast.ops import native

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import torch
    import nequip_fast
    from ase.build import bulk
    from nequip_fast.ase import NequIPCalculator
    from nequip_fast.model import build_model
    from nequip_fast.ops import native

    prefix = Path(sys.prefix).resolve()
    assert Path(nequip_fast.__file__).resolve().is_relative_to(prefix), nequip_fast.__file__
    assert native.source_dir().is_relative_to(prefix), native.source_dir()
    # the packaged sources are the checkout's: the library the suite compiled is reused as is
    assert native.is_built(), "the installed csrc/ differs from the checkout's (a file missing from the wheel?)"
    results = []
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        model = build_model({"species": ["Cu"], "r_max": 4.0, "num_layers": 2, "num_features": 8,
                             "dtype": "float64", "conv_backend": backend})
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=1)
        atoms.calc = NequIPCalculator(model)
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
    (e_cpu, f_cpu), (e_ref, f_ref) = results
    assert abs(e_cpu - e_ref) < 1e-10 * max(1.0, abs(e_ref)), (e_cpu, e_ref)
    assert np.abs(f_cpu - f_ref).max() < 1e-10, np.abs(f_cpu - f_ref).max()
    assert np.abs(f_ref).max() > 1e-3  # rattled: the forces are not trivially zero
    print("OK", e_cpu, native.library_path())
""")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_plain_pip_install_uses_the_installed_torch(tmp_path):
    native.load()  # the suite's compiled kernels (compiled here if this test runs first)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the fresh environment sees torch (and the other dependencies) where they are installed
    (site / "installed_torch.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    # build isolation gets setuptools from a local folder and nothing else: no index at all
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
         "setuptools>=64"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_CONFIG_FILE=os.devnull,
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = run([str(python), "-m", "pip", "install", str(ROOT)], env=env, cwd=tmp_path)
    assert "Successfully installed nequip" in install.stdout, install.stdout
    assert not (site / "torch").exists(), "pip installed a torch of its own"
    done = run([str(python), "-c", CHECK], cwd=tmp_path)  # not the checkout: it must import the installed copy
    assert done.stdout.startswith("OK"), done.stdout


@pytest.mark.parametrize("archs, gpu, expected", [
    (None, False, None),            # nvcc, no GPU, nothing asked: CPU only (no architecture to guess)
    ("8.0;9.0", False, "8.0;9.0"),  # a login node building for the GPUs of compute nodes
    (None, True, "9.0"),            # the visible GPU
])
def test_cuda_build_needs_an_architecture(monkeypatch, archs, gpu, expected):
    """With nvcc and no GPU, torch's own detection raised IndexError; here the CUDA kernels are
    built only for an architecture that is asked for or visible."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    monkeypatch.delenv("NEQUIP_FAST_NO_CUDA", raising=False)
    if archs is None:
        monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", archs)
    got, reason = native.cuda_archs()
    assert got == expected
    assert (reason == "") == (expected is not None)
    suffix = "-cpu" if expected is None else "-sm" + expected.replace(".", "").replace(";", "_")
    assert native.variant().endswith(suffix)
