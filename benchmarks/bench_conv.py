"""Convolution backends side by side: op forward, forward+backward, model energy+forces, peak memory.

    .venv/bin/python benchmarks/bench_conv.py [--repeat 2] [--threads 2] [--device cuda]
    .venv/bin/python benchmarks/bench_conv.py --kernels [--repeat 7]      # per kernel, 1 thread, CPU time
    .venv/bin/python benchmarks/bench_conv.py --model-cpu-time 2          # E+F and training step, 1 thread, CPU time

fcc Cu, 1024 atoms, r_max 5.0 (~42 neighbours), 32 channels, float32; all backends in one process
run, so compare the ratios. Peak memory is the rise over the run of one call of the resident set
(CPU; Linux VmHWM after a reset through /proc/self/clear_refs, with glibc told to return large
blocks at once so that earlier cases do not hide later ones) or of torch's CUDA allocations (GPU:
reference vs triton/cuda). Times are the best of --repeat runs after a warm-up run (the one that
measures memory): the machine is shared, the minimum is the least noisy. The floor columns count what the
fused forward must execute (FLOPs) and move (bytes: weights, sh, indices per edge, plus each node's
input and output rows once), against this machine's measured matmul FLOP rate and copy bandwidth.
"""
import argparse
import os
import platform
import subprocess
import sys
import time

import torch
from ase.build import bulk
from e3nn import o3

from nequip_fast.data import AtomicGraph
from nequip_fast.model import build_model
from nequip_fast.ops import ConvDescriptor, TensorProductConv
from nequip_fast.ops.fused import available_backends

CASES = [(1, True), (2, False), (2, True)]  # (l_max, parity)
DTYPE = torch.float32


def peak_bytes(fn, device: torch.device) -> int:
    """Memory rise while ``fn()`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - before

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def seconds(fn, repeat: int, device: torch.device) -> float:
    def run():
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t
    return min(run() for _ in range(repeat))


def machine_peaks(device: torch.device) -> tuple[float, float]:
    """(FLOP/s of a float32 matmul, bytes/s of a large copy) with the current thread count."""
    a = torch.randn(4096, 4096, dtype=DTYPE, device=device)
    flops = 2 * 4096**3 / seconds(lambda: a @ a, 4, device)
    src = torch.ones(256 * 2**20 // 4, dtype=DTYPE, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / seconds(lambda: dst.copy_(src), 6, device)
    return flops, bandwidth


def floor_per_edge(d: ConvDescriptor, num_nodes: int, num_edges: int) -> tuple[float, float]:
    """(FLOPs, bytes) per edge of the fused forward as the CPU kernel executes it."""
    flops = 0
    for p in d.paths:
        pairs = len({(i, k) for i, _, k, _ in p.cg})
        flops += p.mul * (p.in_dim + 2 * pairs) + 2 * len(p.cg)
    itemsize = torch.finfo(DTYPE).bits // 8
    per_node = (d.irreps_in.dim + d.irreps_out.dim) * itemsize
    return flops, (d.weight_numel + d.irreps_sh.dim) * itemsize + 2 * 8 + per_node * num_nodes / num_edges


def kernel_floors(d: ConvDescriptor, num_nodes: int, num_edges: int, w_rows: int) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) per call of each CPU kernel: the arithmetic of its pairs and terms, and what it
    must read and write once (paired edges: w and g_w have ``w_rows`` rows)."""
    item = torch.finfo(DTYPE).bits // 8
    nodes = (d.irreps_in.dim + d.irreps_out.dim) * item * num_nodes
    index = 2 * 8 * num_edges  # col and perm per edge
    edge_bytes = d.weight_numel * item * w_rows + d.irreps_sh.dim * item * num_edges + index
    pairs = [len({(i, k) for i, _, k, _ in p.cg}) for p in d.paths]
    # per pair t += c x (2 mul); per output component acc += w t (2 mul); per term c += v sh (2)
    conv = sum(p.mul * (2 * q + 2 * p.out_dim) + 2 * len(p.cg) for p, q in zip(d.paths, pairs))
    conv_t = sum(p.mul * (2 * q + 2 * p.in_dim) + 2 * len(p.cg) for p, q in zip(d.paths, pairs))
    # per pair: t (2 mul), dot with w g (2 mul); per output component g_w += g t (2 mul), w g (mul); terms 4
    grads = sum(p.mul * (4 * q + 3 * p.out_dim) + 4 * len(p.cg) for p, q in zip(d.paths, pairs))
    return {"segment_conv": (conv * num_edges, edge_bytes + nodes),
            "segment_conv transposed": (conv_t * num_edges, edge_bytes + nodes),
            "edge_grads": (grads * num_edges, 2 * edge_bytes - index + nodes),
            # the double backward's sum of two transposed convs: two segment_convs, or segment_conv2's one walk
            "2 segment_conv transposed, summed": (2 * conv_t * num_edges, 2 * edge_bytes + 2 * nodes),
            "segment_conv2 transposed": (2 * conv_t * num_edges, 2 * edge_bytes - index + nodes)}


def cpu_times(fn, repeat: int) -> list[float]:
    """CPU seconds of this thread (``time.thread_time``) of ``repeat`` calls after a warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return times


def bench_kernels(graph: AtomicGraph, repeat: int, peaks) -> None:
    """CPU time per call of each kernel entry point (1 thread, ``time.thread_time``, best of
    ``repeat`` after a warm-up) and its share of the machine's floors."""
    from nequip_fast.ops.fused import load_backend
    from nequip_fast.ops.plan import lower

    backend = load_backend("cpu")
    for l_max, parity in CASES:
        irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
        irreps = o3.Irreps([(32, (l, p)) for l in range(l_max + 1) for p in ((1, -1) if parity else (1,))])
        d = ConvDescriptor.nequip(irreps, irreps_sh, irreps)
        n, e = graph.pos.shape[0], graph.edge_index.shape[1]
        w_rows = e - graph.edge_pairs  # a pair of edges shares one weight row
        g = torch.Generator().manual_seed(0)
        x, sh, w, out, sh2, w2 = (torch.randn(shape, generator=g, dtype=DTYPE) for shape in
                                  ((n, irreps.dim), (e, irreps_sh.dim), (w_rows, d.weight_numel),
                                   (n, d.irreps_out.dim), (e, irreps_sh.dim), (w_rows, d.weight_numel)))
        plan = lower(d, DTYPE)
        cg = backend.graph(graph.edge_index, n)
        args = (plan.ints, plan.values, list(plan.layout), *cg)
        calls = {"segment_conv": lambda: backend.segment_conv(x, sh, w, *args, False),
                 "segment_conv transposed": lambda: backend.segment_conv(out, sh, w, *args, True),
                 "edge_grads": lambda: backend.edge_grads(x, out, sh, w, *args),
                 "2 segment_conv transposed, summed": lambda: (backend.segment_conv(out, sh, w, *args, True)
                                                               + backend.segment_conv(out, sh2, w2, *args, True)),
                 "segment_conv2 transposed": lambda: backend.segment_conv2(out, sh, w, sh2, w2, *args, True)}
        floors = kernel_floors(d, n, e, w_rows)
        print(f"\nl_max={l_max} parity={'on' if parity else 'off'}: {n} atoms, {e} edges "
              f"({graph.edge_pairs} pairs), 1 thread")
        print("| kernel | CPU ms | GFLOP/s | % matmul rate | GB/s | % copy bandwidth |")
        print("|---|---|---|---|---|---|")
        for name, call in calls.items():
            s = min(cpu_times(call, repeat))
            flops, nbytes = floors[name]
            print(f"| {name} | {s * 1e3:.1f} | {flops / s / 1e9:.1f} | {100 * flops / s / peaks[0]:.1f} | "
                  f"{nbytes / s / 1e9:.1f} | {100 * nbytes / s / peaks[1]:.1f} |")


def bench_model_cpu_time(l_max: int, repeat: int) -> None:
    """CPU time (``time.thread_time``, 1 thread, best of ``repeat`` after a warm-up) of an E+F call and
    of a force-loss training step of the default model on the "cpu" backend: for A/B runs of two
    builds in alternating processes, where wall-clock spread on a shared machine hides a few percent."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((8, 8, 4))
    atoms.rattle(0.05, seed=1)  # forces not zero by symmetry
    graph = AtomicGraph.from_atoms(atoms, ["Cu"], 5.0, dtype=DTYPE)
    n, e = len(atoms), graph.edge_index.shape[1]
    torch.manual_seed(0)
    model = build_model(dict(species=["Cu"], r_max=5.0, l_max=l_max, parity=True, num_features=32,
                             avg_num_neighbors=e / n, dtype="float32"), "cpu")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        out = model(graph, forces=True, create_graph=True)
        ((out.energy / n).square().mean() + out.forces.square().mean()).backward()
        optimizer.step()

    for name, call in (("E+F", lambda: model(graph, forces=True)), ("train step", train_step)):
        times = cpu_times(call, repeat)
        print(f"l_max {l_max} {name}: {min(times) * 1e3:.0f} ms CPU (median {sorted(times)[repeat // 2] * 1e3:.0f})")


def cu_graph() -> AtomicGraph:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((8, 8, 4))
    return AtomicGraph.from_atoms(atoms, ["Cu"], 5.0, dtype=DTYPE)


def bench_case(l_max, parity, backends, graph, repeat, peaks, device):
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
    irreps = o3.Irreps([(32, (l, p)) for l in range(l_max + 1) for p in ((1, -1) if parity else (1,))])
    d = ConvDescriptor.nequip(irreps, irreps_sh, irreps)
    n, e = graph.pos.shape[0], graph.edge_index.shape[1]
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(shape, generator=g, dtype=DTYPE).to(device).requires_grad_(True)
              for shape in ((n, irreps.dim), (e, irreps_sh.dim), (e, d.weight_numel))]
    config = dict(species=["Cu"], r_max=5.0, l_max=l_max, parity=parity, num_features=32,
                  avg_num_neighbors=e / n, dtype="float32")
    torch.manual_seed(0)
    models = {name: build_model(config, name).to(device) for name in backends}
    for model in models.values():
        model.load_state_dict(models["reference"].state_dict())
    flops, nbytes = floor_per_edge(d, n, e)
    rows, forces = [], {}
    for name in backends:
        conv = TensorProductConv(d, name).to(device, DTYPE)
        fwd = lambda: conv(*inputs, graph.edge_index)  # noqa: E731
        fwd_bwd = lambda: torch.autograd.grad(fwd().sum(), inputs)  # noqa: E731
        model_ef = lambda: forces.__setitem__(name, models[name](graph, forces=True).forces)  # noqa: E731
        mem_op, mem_model = peak_bytes(fwd_bwd, device), peak_bytes(model_ef, device)  # also the warm-up
        fwd()
        t_fwd, t_fb, t_model = (seconds(f, repeat, device) for f in (fwd, fwd_bwd, model_ef))
        achieved = (flops * e / t_fwd / peaks[0], nbytes * e / t_fwd / peaks[1])
        rows.append((name, t_fwd, t_fb, mem_op, t_model, mem_model, achieved))
    ref = rows[0]
    print(f"\nl_max={l_max} parity={'on' if parity else 'off'}: {n} atoms, {e} edges, "
          f"{d.irreps_in.dim} -> {d.irreps_out.dim} features, {d.weight_numel} weights/edge; "
          f"fused forward floor per edge: {flops / 1e3:.1f} kFLOP, {nbytes / 1e3:.2f} kB")
    print(f"| backend | op fwd ms | op fwd+bwd ms | speed-up | op peak MB | mem ratio | model E+F ms | speed-up "
          f"| model peak MB | fwd % peak FLOP/s | fwd % bandwidth | max abs dF vs reference |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, t_fwd, t_fb, mem_op, t_model, mem_model, achieved in rows:
        df = (forces[name] - forces["reference"]).abs().max().item()
        print(f"| {name} | {t_fwd * 1e3:.1f} | {t_fb * 1e3:.1f} | {ref[2] / t_fb:.1f}x | {mem_op / 2**20:.0f} | "
              f"{mem_op / ref[3]:.3f} | {t_model * 1e3:.0f} | {ref[4] / t_model:.1f}x | {mem_model / 2**20:.0f} | "
              f"{100 * achieved[0]:.1f} | {100 * achieved[1]:.1f} | {df:.1e} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--kernels", action="store_true", help="CPU time per kernel entry point, 1 thread")
    parser.add_argument("--model-cpu-time", type=int, metavar="L_MAX",
                        help="CPU time of the model's E+F call and training step at this l_max, 1 thread")
    args = parser.parse_args()
    if args.kernels or args.model_cpu_time is not None:
        from nequip_fast.allocator import keep_freed_memory

        keep_freed_memory()  # as the product's entry points: outputs reuse freed memory, no page faults per call
        torch.set_num_threads(1)
        peaks = machine_peaks(torch.device("cpu"))
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1 thread; load {os.getloadavg()}; "
              f"matmul {peaks[0] / 1e9:.1f} GFLOP/s, copy {peaks[1] / 1e9:.1f} GB/s")
        if args.kernels:
            bench_kernels(cu_graph(), args.repeat, peaks)
        else:
            bench_model_cpu_time(args.model_cpu_time, args.repeat)
        return
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # fixed threshold: freed large blocks leave the RSS
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_device = ("cpu",) if device.type == "cpu" else ("triton", "cuda")
    fused = [b for b in available_backends() if b in on_device]
    if device.type == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        machine = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")),
                       platform.processor())
        machine = f"{platform.machine()} {machine}, {args.threads} threads"
    peaks = machine_peaks(device)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}; torch {torch.__version__}; "
          f"float32; backends: reference, {', '.join(fused)}")
    print(f"measured peaks: matmul {peaks[0] / 1e9:.1f} GFLOP/s, copy {peaks[1] / 1e9:.1f} GB/s")
    graph = cu_graph().to(device)
    for l_max, parity in CASES:
        bench_case(l_max, parity, ["reference", *fused], graph, args.repeat, peaks, device)


if __name__ == "__main__":
    main()
