"""``nequip-fast info``: versions, the compiled kernels and which backends work here (and why not)."""
import platform
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="print versions and available kernel backends",
        description="Print versions and which convolution backends work here, with the reason for each one that "
                    "does not. Compiles the C++ kernels for this torch first if they are not cached yet. Exit "
                    "status 1 when the fused CPU kernels are unavailable.")
    parser.set_defaults(func=run)


def run(args) -> int:
    import e3nn
    import torch

    import nequip_fast
    from nequip_fast.ops import native
    from nequip_fast.ops.fused import load_backend

    print(f"nequip_fast {nequip_fast.__version__}")
    print(f"python      {platform.python_version()} ({platform.machine()})")
    print(f"torch       {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
    print(f"e3nn        {e3nn.__version__}")
    print(f"threads     {torch.get_num_threads()}")
    archs, no_cuda = native.cuda_archs()
    print(f"C++ ops     {native.library_path()}"
          f" ({'cached' if native.is_built() else 'not compiled yet: compiling now'}; CUDA kernels: "
          f"{'sm ' + archs if archs else 'no, ' + no_cuda})")
    sys.stdout.flush()
    print("conv backends: reference (e3nn) always; fused:")
    status = 0
    for name in ("cpu", "cuda", "triton"):
        try:
            load_backend(name)
            print(f"  {name:8s}available")
        except RuntimeError as e:
            print(f"  {name:8s}{e}")
            status = 1 if name == "cpu" else status
    return status
