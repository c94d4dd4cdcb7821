"""``nequip-fast info``: versions and available convolution backends, for bug reports."""
import platform


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print versions and available kernel backends")
    parser.set_defaults(func=run)


def run(args) -> int:
    import e3nn
    import torch

    import nequip_fast
    from nequip_fast.ops.fused import load_backend

    print(f"nequip_fast {nequip_fast.__version__}")
    print(f"python      {platform.python_version()} ({platform.machine()})")
    print(f"torch       {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
    print(f"e3nn        {e3nn.__version__}")
    print(f"threads     {torch.get_num_threads()}")
    print("conv backends: reference (e3nn) always; fused:")
    for name in ("cpu", "cuda", "triton"):
        try:
            load_backend(name)
            print(f"  {name:8s}available")
        except RuntimeError as e:
            print(f"  {name:8s}{e}")
    return 0
