"""The C++ (and CUDA) ops library, compiled on first use against the torch that is running.

Why not at install time: a build under pip's build isolation compiles against whatever torch pip
fetches into the build environment (gigabytes, and not the user's torch), and a CUDA build on a
machine without a GPU cannot even pick an architecture. Here ``csrc/`` (shipped inside the package)
is compiled by ``torch.utils.cpp_extension`` (ninja, the system C++ compiler) into a cache
directory keyed by the torch build and the variant (cpu, or CUDA and its architectures):
``$NEQUIP_FAST_CACHE_DIR`` or ``$XDG_CACHE_HOME/nequip_fast`` (``~/.cache/nequip_fast``).
Later processes load the cached library directly (no compiler needed) while a digest of the
sources and flags still matches; changed sources are recompiled. The LAMMPS plugin records the
library's path (``library_path()``) when it is built.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

NAME = "nequip_fast_ops"
CXX_FLAGS = ("-O3", "-fopenmp")  # -fopenmp: at::parallel_for's inline `omp parallel` runs threads at all
LD_FLAGS = ("-fopenmp", "-Wl,--as-needed")  # the ops need neither libpython nor libtorch_python
CUDA_FLAGS = ("-O3",)
CUDA_SOURCES = ("cuda/conv_kernels.cu", "cuda/conv_cuda.cu")
SOURCE_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")
NOT_SOURCES = ("cuda/host_emulation.cpp",)  # a test program with its own main()


def source_dir() -> Path:
    """``csrc/``: inside the installed package (wheel), or beside it in a checkout (editable install)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise RuntimeError(f"the C++ sources of nequip_fast are missing (looked for csrc/ops.cpp in {here} and "
                       f"{here.parent}); reinstall the package")


def cache_root() -> Path:
    env = os.environ.get("NEQUIP_FAST_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nequip_fast"


def cuda_archs() -> tuple[Optional[str], str]:
    """(TORCH_CUDA_ARCH_LIST to build for, or None for a CPU-only library; why not CUDA)."""
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU build"
    if os.environ.get("NEQUIP_FAST_NO_CUDA") == "1":
        return None, "NEQUIP_FAST_NO_CUDA=1"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return None, "no CUDA toolkit (nvcc) found: set CUDA_HOME or put nvcc on PATH"
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs and torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = ";".join(f"{major}.{minor}" for major, minor in capabilities)
    if not archs:
        return None, "no GPU visible (set TORCH_CUDA_ARCH_LIST, e.g. '9.0', to build for GPUs elsewhere)"
    return archs, ""


def variant() -> str:
    """The cache key of the library this process needs: torch build + cpu or CUDA architectures."""
    archs, _ = cuda_archs()
    kind = "cpu" if archs is None else f"cuda{torch.version.cuda}-sm" + "_".join(
        a.replace(".", "") for a in archs.replace(" ", ";").split(";") if a)
    git = (torch.version.git_version or "")[:8]
    return f"torch{torch.__version__}-{git}-{kind}".replace("+", "_")


def _sources(archs: Optional[str]) -> tuple[list[Path], list[Path]]:
    """(every source file, for the digest; the files to compile)."""
    root = source_dir()
    files = sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES
                   and p.relative_to(root).as_posix() not in NOT_SOURCES)
    compiled = [p for p in files if p.suffix == ".cpp" and p.parent == root]
    if archs is not None:
        compiled += [root / s for s in CUDA_SOURCES]
    return files, compiled


def _digest(files: list[Path], archs: Optional[str]) -> str:
    """Sources, flags and target: a cached library is used only while this matches."""
    root = source_dir()
    h = hashlib.sha256(repr((CXX_FLAGS, LD_FLAGS, CUDA_FLAGS, archs, torch.__version__)).encode())
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def library_path() -> Path:
    """Where this process's ops library lives (it may not be built yet)."""
    return cache_root() / variant() / f"{NAME}.so"


def is_built() -> bool:
    """Whether the cached library exists and matches the current sources (no compile needed)."""
    archs, _ = cuda_archs()
    files, _ = _sources(archs)
    stamp = library_path().with_suffix(".sha256")
    return library_path().is_file() and stamp.is_file() and stamp.read_text().strip() == _digest(files, archs)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One builder per cache directory across processes; the lock dies with its process."""
    with open(directory / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load() -> Path:
    """Load the ops (``torch.ops.nequip_fast.*``) into this process, compiling them first if needed.

    Raises RuntimeError naming the cause (no compiler, a compile error with its first lines)."""
    path = library_path()
    if not is_built():
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.parent):
            if not is_built():  # another process may have built it while this one waited
                _build(path)
    torch.ops.load_library(str(path))
    return path


_registered: dict[Callable[[], None], bool] = {}


def registered(register: Callable[[], None]) -> bool:
    """Load the ops (compiling them on first use) and run ``register`` (a module's fake impls and
    autograd for them) once per process; False where the library cannot be built."""
    if register not in _registered:
        try:
            load()
        except RuntimeError:
            _registered[register] = False
        else:
            register()
            _registered[register] = True
    return _registered[register]


def _build(path: Path) -> None:
    from torch.utils import cpp_extension

    archs, _ = cuda_archs()
    files, compiled = _sources(archs)
    what = "CPU" if archs is None else f"CPU and CUDA (sm {archs})"
    print(f"nequip_fast: compiling the {what} kernels for torch {torch.__version__} into {path.parent} "
          "(once per torch version; about a minute)", file=sys.stderr, flush=True)
    (path.parent / "lock").unlink(missing_ok=True)  # torch's own lock, stale if a build was killed
    env_path, env_archs = os.environ.get("PATH", ""), os.environ.get("TORCH_CUDA_ARCH_LIST")
    try:
        import ninja  # the pip package: its binary need not be on PATH (an unactivated venv)

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + env_path
    except ImportError:
        pass
    if archs is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    start = time.perf_counter()
    try:
        # Fresh lists: torch appends to them. is_python_module=False: a plain op library, loaded
        # by torch.ops.load_library here and by dlopen in LAMMPS.
        cpp_extension.load(NAME, [str(s) for s in compiled], extra_cflags=list(CXX_FLAGS),
                           extra_ldflags=list(LD_FLAGS), extra_cuda_cflags=list(CUDA_FLAGS),
                           with_cuda=archs is not None, build_directory=str(path.parent),
                           is_python_module=False, verbose=False)
    except Exception as e:  # a compile error, no compiler, no ninja: all mean "no native ops here"
        log = path.parent / "build.log"
        log.write_text(str(e))
        raise RuntimeError(f"compiling the C++ kernels failed (they need a C++17 compiler): {_summary(str(e))} "
                           f"(full output: {log})") from None
    finally:
        os.environ["PATH"] = env_path
        if env_archs is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = env_archs
    stamp = path.with_suffix(".sha256")
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(_digest(files, archs) + "\n")
    os.replace(tmp, stamp)
    print(f"nequip_fast: compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def _summary(message: str, lines: int = 3) -> str:
    errors = [line.strip() for line in message.splitlines() if "error" in line.lower()]
    return " | ".join((errors or [line.strip() for line in message.splitlines() if line.strip()])[:lines])
