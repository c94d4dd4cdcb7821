"""One benchmark run: build every case, check they agree, time them interleaved, report."""
from __future__ import annotations

import datetime
import platform
import statistics
from dataclasses import dataclass, field
from typing import Optional

import torch

import nequip_fast

from . import MEASUREMENTS
from ..interop import upstream
from .cases import DEPLOYED, UPSTREAM, UPSTREAM_CASES, Case, conv_layer
from ..ops import convolutions
from .cost import conv_cost, measure_peaks
from .memory import measure_in_subprocess
from .setup import Setup
from .system import describe
from .timing import Progress, Timing, time_interleaved



@dataclass(frozen=True)
class Options:
    setup: Setup
    cases: tuple[str, ...]
    warmup: int = 2
    repeats: int = 5
    measure: tuple[str, ...] = MEASUREMENTS
    plot_sizes: tuple[int, ...] = ()
    quiet: bool = False
    argv: tuple[str, ...] = field(default=())


PARITY_WORDS = {True: "on", False: "off", "natural": "natural"}  # the model config's values


def default_backends(device: torch.device) -> tuple[str, ...]:
    """The reference and every fused backend that runs natively on ``device`` (Triton's CPU
    interpreter is a test tool, not a backend to time)."""
    from ..ops.fused import available_backends

    native = ("cpu",) if device.type == "cpu" else ("cuda", "triton")
    return ("reference",) + tuple(b for b in available_backends() if b in native)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(setup: Setup) -> dict:
    device = setup.torch_device
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "nequip_fast": nequip_fast.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "upstream_nequip": upstream.version() if upstream.available() else None}


def _agreement(cases: dict[str, Case], graph, baseline: str) -> dict:
    """Energy and force differences of every case against the baseline (same weights everywhere)."""
    results = {name: case.calls(graph).energy_forces() for name, case in cases.items()}
    energy0, forces0 = (t.detach().double().cpu() for t in results[baseline])
    n = graph.pos.shape[0]
    out = {}
    for name, (energy, forces) in results.items():
        out[name] = {"energy_per_atom_abs_diff": float((energy.detach().double().cpu() - energy0).abs().max()) / n,
                     "forces_max_abs_diff": float((forces.detach().double().cpu() - forces0).abs().max()),
                     "forces_max_abs": float(forces0.abs().max())}
    return out


def run(options: Options) -> dict:
    setup = options.setup
    device = setup.torch_device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = options.cases
    if not names:
        raise ValueError("no cases to benchmark")
    measure = set(options.measure)
    steps = (2 + len(names) + ("energy_forces" in measure) + ("train_step" in measure) + 2 * ("conv" in measure)
             + len(names) * ("memory" in measure) + len(options.plot_sizes))
    progress = Progress(steps, options.quiet)

    progress("system and model")
    cfg, state, graph = setup.prepare()
    dtype = getattr(torch, cfg.dtype)
    result: dict = {
        "command": " ".join(options.argv), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(setup),
        "system": {"description": describe(setup.system), "atoms": graph.pos.shape[0],
                   "edges": graph.edge_index.shape[1]},
        "model": cfg.to_dict(), "stress": setup.stress, "warmup": options.warmup, "repeats": options.repeats,
        "cases": {name: {} for name in names},
    }
    progress("machine bandwidth and FLOP rate")
    peaks = measure_peaks(dtype, device)
    result["machine"].update(peaks.as_dict())

    cases = {}
    for name in names:
        progress(f"building {name}")
        cases[name] = Case(name, cfg, state, device, setup.stress, setup.model_file)
    fast = [c for c in cases.values() if c.name not in UPSTREAM_CASES + (DEPLOYED,)]
    baseline = "reference" if "reference" in cases else [n for n in names if n != DEPLOYED][0]
    result["baseline"] = baseline

    if UPSTREAM in cases:  # the same weights in every case: then all must give the same energy
        for case in fast:
            upstream.transfer_weights(cases[UPSTREAM].model, case.model)
        result["weights"] = "transferred from upstream NequIP to every nequip_fast case"
    # a deployed file keeps its weights inside the compiled code: nothing to agree with
    result["agreement"] = _agreement({n: c for n, c in cases.items() if n != DEPLOYED}, graph, baseline)

    conv = None
    if fast:
        layer = conv_layer(fast[0].model)
        descriptor = convolutions(fast[0].model)[layer].descriptor
        conv = (layer, (descriptor.irreps_in.dim, descriptor.irreps_sh.dim, descriptor.weight_numel))
        result["conv"] = {"layer": layer, "irreps_in": str(descriptor.irreps_in),
                          "irreps_sh": str(descriptor.irreps_sh), "weight_numel": descriptor.weight_numel,
                          **conv_cost(descriptor, graph.pos.shape[0], graph.edge_index.shape[1],
                                      dtype.itemsize).as_dict()}
    calls = {name: case.calls(graph, conv) for name, case in cases.items()}

    def timed(kind: str, attr: str):
        progress(f"timing {kind.replace('_', ' ')} ({options.warmup} warm-up + {options.repeats} rounds)")
        chosen = {n: getattr(c, attr) for n, c in calls.items() if getattr(c, attr) is not None}
        for name, timing in time_interleaved(chosen, options.warmup, options.repeats, sync).items():
            result["cases"][name][kind] = timing.as_dict()

    for kind in ("energy_forces", "train_step"):
        if kind in measure:
            timed(kind, kind)
    if "conv" in measure and conv is not None:
        timed("conv_forward", "conv_forward")
        timed("conv_forward_backward", "conv_forward_backward")
    if "memory" in measure:
        for name in names:
            progress(f"peak memory of {name} (fresh process)")
            result["cases"][name]["memory"] = measure_in_subprocess(setup, name)
    if options.plot_sizes:
        result["scaling"] = _scaling(cases, setup, options, progress, sync)
    return result


def _scaling(cases: dict[str, Case], setup: Setup, options: Options, progress, sync) -> dict:
    """Energy+forces time per atom-step against system size, the same models throughout."""
    out: dict[str, list] = {name: [] for name in cases}
    for size in options.plot_sizes:
        progress(f"scaling: {size} atoms")
        graph = setup.with_atoms(size).prepare()[2]
        calls = {name: case.calls(graph).energy_forces for name, case in cases.items()}
        timings = time_interleaved(calls, max(1, options.warmup // 2), max(2, options.repeats // 2), sync)
        for name, timing in timings.items():
            out[name].append({"atoms": graph.pos.shape[0], "median_s": timing.median,
                              "us_per_atom_step": 1e6 * timing.median / graph.pos.shape[0]})
    return out


# --- report -----------------------------------------------------------------------------------------

def _median(result: dict, name: str, kind: str) -> Optional[float]:
    entry = result["cases"][name].get(kind)
    return None if entry is None else entry["median_s"]


def _ratio(result: dict, base: str, name: str, kind: str) -> str:
    """Median over rounds of the per-round ratio: both calls of a round saw the same machine load."""
    a, b = result["cases"][base].get(kind), result["cases"][name].get(kind)
    if a is None or b is None:
        return ""
    return f"{statistics.median(x / y for x, y in zip(a['samples_s'], b['samples_s'])):.2f}x"


def _ms(result: dict, name: str, kind: str) -> str:
    entry = result["cases"][name].get(kind)
    if entry is None:
        return "-"
    timing = Timing(entry["median_s"], entry["q25_s"], entry["q75_s"], ())
    return f"{1e3 * timing.median:.1f} ±{100 * timing.spread:.0f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _memory(result: dict, name: str, kind: str) -> str:
    mem = result["cases"][name].get("memory")
    if mem is not None and "error" in mem:
        return "failed"
    if mem is None or kind not in mem:
        return "-"
    return f"{mem[kind]['peak_mib']:.0f} (+{mem[kind]['working_mib']:.0f})"


def format_report(result: dict) -> str:
    m, s, cfg = result["machine"], result["system"], result["model"]
    base = result["baseline"]
    atoms = s["atoms"]
    lines = [
        f"system: {s['description']}, {atoms} atoms, {s['edges']} edges ({s['edges'] / atoms:.1f} per atom)",
        f"model: {cfg['num_layers']} layers, l_max {cfg['l_max']}, parity {PARITY_WORDS[cfg['parity']]}, "
        f"{cfg['num_features']} features, r_max {cfg['r_max']}, {cfg['dtype']}"
        + (", with stress" if result["stress"] else ""),
        f"machine: {m['cpu']}, {m['threads']} threads, device {m['device']}, torch {m['torch']}; "
        f"copy {m['bandwidth'] / 1e9:.1f} GB/s, matmul {m['flop_rate'] / 1e9:.0f} GFLOP/s",
        f"times: median ±interquartile range over {result['repeats']} interleaved rounds after "
        f"{result['warmup']} warm-up; speed-ups against {base} (median of per-round ratios)",
        "",
    ]
    names = list(result["cases"])
    rows = []
    for name in names:
        ef = _median(result, name, "energy_forces")
        rows.append([name, _ms(result, name, "energy_forces"),
                     "-" if ef is None else f"{1e6 * ef / atoms:.2f}", _ratio(result, base, name, "energy_forces"),
                     _ms(result, name, "train_step"), _ratio(result, base, name, "train_step"),
                     _ms(result, name, "conv_forward"), _ms(result, name, "conv_forward_backward"),
                     _ratio(result, base, name, "conv_forward_backward")])
    lines.append(_table(["case", "E+F ms", "us/atom-step", "speed-up", "train ms", "speed-up",
                         "conv fwd ms", "conv fwd+bwd ms", "speed-up"], rows))

    conv = result.get("conv")
    if not any("conv_forward" in c for c in result["cases"].values()):
        conv = None
    if conv is not None:
        e = s["edges"]
        lines += ["", f"conv alone (layer {conv['layer']}, {conv['irreps_in']} x {conv['irreps_sh']}): per edge "
                  f"{conv['bytes_forward']:.0f} B and {conv['flops_forward']:.0f} FLOP forward, "
                  f"{conv['bytes_forward_backward']:.0f} B and {conv['flops_forward_backward']:.0f} FLOP fwd+bwd "
                  "(ideal fused traffic); achieved fraction of copy bandwidth / matmul FLOP rate:"]
    rows = []
    for name in names:
        row = [name]
        for kind, suffix in (("conv_forward", "forward"), ("conv_forward_backward", "forward_backward")):
            t = _median(result, name, kind)
            if conv is None or t is None:
                row += ["-", "-"]
            else:
                row += [f"{100 * conv['bytes_' + suffix] * e / t / m['bandwidth']:.1f}%",
                        f"{100 * conv['flops_' + suffix] * e / t / m['flop_rate']:.1f}%"]
        row += [_memory(result, name, "energy_forces"), _memory(result, name, "train_step")]
        rows.append(row)
    if any(cell != "-" for row in rows for cell in row[1:]):
        lines += ["", _table(["case", "fwd bandwidth", "fwd FLOP", "f+b bandwidth", "f+b FLOP",
                              "E+F peak MiB (+work)", "train peak MiB (+work)"], rows)]

    others = [f"{n} |dE|/atom {a['energy_per_atom_abs_diff']:.1e}, max |dF| {a['forces_max_abs_diff']:.1e}"
              for n, a in result["agreement"].items() if n != base]
    if others:
        lines += ["", f"agreement with {base} (same weights): " + ", ".join(others)]
    if UPSTREAM in result["cases"]:
        lines += ["", "against upstream NequIP eager (same weights, transferred):"]
        for name in names:
            if name in UPSTREAM_CASES:
                continue
            parts = [f"{what} {ratio} faster" for what, ratio in
                     (("energy+forces", _ratio(result, UPSTREAM, name, "energy_forces")),
                      ("training step", _ratio(result, UPSTREAM, name, "train_step"))) if ratio]
            mem = _memory_ratio(result, name, UPSTREAM)
            parts += [f"E+F working memory {mem}"] if mem else []
            lines.append(f"  {name}: " + ", ".join(parts))
    for name, entry in result["cases"].items():
        if "error" in entry.get("memory", {}):
            lines.append(f"peak memory of {name} failed: {entry['memory']['error']}")
    return "\n".join(lines)


def _memory_ratio(result: dict, name: str, other: str) -> str:
    a, b = result["cases"][name].get("memory"), result["cases"][other].get("memory")
    if not a or not b or "error" in a or "error" in b or b["energy_forces"]["working_mib"] < 1:
        return ""  # no ratio of nothings on tiny systems
    return f"{a['energy_forces']['working_mib'] / max(b['energy_forces']['working_mib'], 1e-9):.2f}x upstream's"


def plot(result: dict, path: str) -> None:
    """PNG of energy+forces time per atom-step against system size, one line per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in result["scaling"].items():
        ax.plot([p["atoms"] for p in points], [p["us_per_atom_step"] for p in points], marker="o", label=name)
    cfg = result["model"]
    ax.set(xscale="log", yscale="log", xlabel="atoms", ylabel="energy+forces time per atom-step (us)",
           title=f"{result['system']['description']}: l_max {cfg['l_max']}, {cfg['num_features']} features, "
                 f"{cfg['num_layers']} layers, {result['machine']['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
