"""Where an energy+forces call spends its time, per model component, with and without radial tables.

    python benchmarks/profile_layers.py                      # l_max 1 and 2, eager, ~5 min on 2 cores
    python benchmarks/profile_layers.py --measure deployed   # deployed .pt2 E+F, tabulated vs not (compiles 4 files)
    python benchmarks/profile_layers.py --variants table-e3nn table          # fused layer epilogue vs e3nn's, E+F
    python benchmarks/profile_layers.py --variants mlp-e3nn mlp --measure train   # the same, training step
    python benchmarks/profile_layers.py --measure epilogue   # each layer's epilogue alone, fused vs e3nn

Variants (the same weights): "mlp" the model as built, "table" with radial tables (inference only,
not for train), and either with "-e3nn": each layer's linear_1 and epilogue (linear_2 + self-connection + gate)
computed by e3nn's modules as before their fusion (model/epilogue.py).

fcc Cu (rattled by 0.05 A, so forces are not zero by symmetry), 1024 atoms, 4 layers, 32 features,
float32, the fused "cpu" conv, 2 threads: the setup of `nequip-fast benchmark`. Forward time per
component comes from forward hooks (wall time between a module's pre-hook and hook); backward time
per component from full backward hooks (between its backward pre-hook and hook), so it is the
autograd nodes of that module. "other" is the rest of the call (edge vectors, one-hot, energy sum,
the autograd engine between modules). Hooks add a little overhead: the table also gives the
same call without hooks, timed interleaved with the hooked ones.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from nequip_fast.benchmark.setup import Setup
from nequip_fast.benchmark.system import SystemSpec, build_system
from nequip_fast.data import AtomicGraph
from nequip_fast.model import Potential, build_model
from nequip_fast.model.tabulated import tabulate

ROWS = ("radial basis", "radial MLP", "spherical harmonics", "linear_1", "conv", "linear_2", "self-connection",
        "gate", "epilogue", "readout")
VARIANTS = ("mlp", "table", "mlp-e3nn", "table-e3nn")


class E3nnEpilogue(torch.nn.Module):
    """A layer's epilogue by e3nn's linear_2, self-connection and gate (the model before the fusion)."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = (layer,)  # not a submodule: the layer owns the modules

    def forward(self, h, x, attrs, *weights):
        return self.layer[0].e3nn_epilogue(h, x, attrs)


class E3nnLinear(torch.nn.Module):
    """linear_1 by e3nn's Linear (the model before the fusion)."""

    def __init__(self, linear: torch.nn.Module):
        super().__init__()
        self.linear = (linear,)

    def forward(self, x, weight):
        return self.linear[0](x)


def with_e3nn_layers(model: Potential) -> Potential:
    """A copy whose layers compute linear_1 and the epilogue with e3nn's modules."""
    model = copy.deepcopy(model)
    for layer in model.energy_model.layers:
        layer.epilogue = E3nnEpilogue(layer)
        layer.block.fused_linear_1 = E3nnLinear(layer.block.linear_1)
    return model


def components(model: Potential) -> list[tuple[str, torch.nn.Module]]:
    """(row, module) for every timed module; a tabulated model's EdgeLength and tables take the
    rows of the basis and the MLP they replace."""
    energy = model.energy_model
    out = [("radial basis", energy.radial), ("spherical harmonics", energy.spherical_harmonics),
           ("readout", energy.readout)]
    for layer in energy.layers:
        block = layer.block
        e3nn = isinstance(layer.epilogue, E3nnEpilogue)
        out += [("radial MLP", block.radial_mlp), ("linear_1", block.linear_1 if e3nn else block.fused_linear_1),
                ("conv", block.conv)]
        if e3nn:
            out += [("linear_2", block.linear_2), ("self-connection", block.self_connection), ("gate", layer.gate)]
        else:
            out.append(("epilogue", layer.epilogue))
    return out


class ComponentTimer:
    """Accumulates forward and backward time per row over one call, on ``clock``."""

    def __init__(self, model: Potential, clock=time.perf_counter):
        self.forward: dict[str, float] = defaultdict(float)
        self.backward: dict[str, float] = defaultdict(float)
        self.handles = []
        started: dict[int, float] = {}
        for row, module in components(model):
            def pre(module, *_, key=id(module)):
                started[key] = clock()

            def post(module, *_, key=id(module), row=row, into=self.forward):
                into[row] += clock() - started.pop(key)

            def bpre(module, *_, key=-id(module)):
                started[key] = clock()

            def bpost(module, *_, key=-id(module), row=row, into=self.backward):
                if key in started:
                    into[row] += clock() - started.pop(key)

            self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post),
                             module.register_full_backward_pre_hook(bpre), module.register_full_backward_hook(bpost)]
        # the whole call, and where the forward ends (the rest is autograd.grad and the force sums)
        marks: dict[str, float] = {}
        self.handles += [
            model.register_forward_pre_hook(lambda *_: marks.__setitem__("start", clock())),
            model.energy_model.register_forward_hook(lambda *_: marks.__setitem__("forward", clock())),
            model.register_forward_hook(lambda *_: marks.__setitem__("end", clock())),
        ]
        self.marks = marks

    def reset(self) -> None:
        self.forward.clear()
        self.backward.clear()

    def call_totals(self) -> tuple[float, float]:
        """(forward, backward) seconds of the last call."""
        return self.marks["forward"] - self.marks["start"], self.marks["end"] - self.marks["forward"]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def profile(models: dict[str, Potential], graph: AtomicGraph, repeats: int, clock=time.perf_counter
            ) -> dict[str, dict[str, float]]:
    """Median ms per call of every row, forward and backward, plus the call totals, per model; and
    ``plain``: the E+F call of an unhooked copy. All calls interleaved round by round, so load
    from other processes hits every model alike."""
    plain = {name: copy.deepcopy(model) for name, model in models.items()}
    timers = {name: ComponentTimer(model, clock) for name, model in models.items()}
    samples: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in models}
    try:
        for round_ in range(repeats + 1):  # one warm-up round
            for name, model in models.items():
                timer = timers[name]
                timer.reset()
                model(graph, forces=True)
                start = clock()
                plain[name](graph, forces=True)
                plain_s = clock() - start
                if round_ == 0:
                    continue
                forward, backward = timer.call_totals()
                into = samples[name]
                for row in ROWS:
                    into[f"fwd {row}"].append(timer.forward.get(row, 0.0))
                    into[f"bwd {row}"].append(timer.backward.get(row, 0.0))
                into["fwd other"].append(forward - sum(timer.forward.values()))
                into["bwd other"].append(backward - sum(timer.backward.values()))
                into["fwd total"].append(forward)
                into["bwd total"].append(backward)
                into["plain"].append(plain_s)
    finally:
        for timer in timers.values():
            timer.remove()
    return {name: {key: 1e3 * statistics.median(values) for key, values in into.items()}
            for name, into in samples.items()}


def train_speed(models: dict[str, Potential], graph: AtomicGraph, repeats: int, clock=time.perf_counter
                ) -> dict[str, float]:
    """Median ms of a training step (forces kept differentiable, energy + force loss, backward to the
    parameters: the double backward), per model, interleaved round by round."""
    samples: dict[str, list[float]] = defaultdict(list)
    n = graph.pos.shape[0]
    for round_ in range(repeats + 1):  # one warm-up round
        for name, model in models.items():
            model.train()
            start = clock()
            model.zero_grad(set_to_none=True)
            out = model(graph, forces=True, create_graph=True)
            ((out.energy / n).square().mean() + out.forces.square().mean()).backward()
            if round_ > 0:
                samples[name].append(clock() - start)
            model.eval()
    return {name: 1e3 * statistics.median(values) for name, values in samples.items()}


def epilogue_speed(model: Potential, num_atoms: int, repeats: int, clock=time.perf_counter) -> list[dict]:
    """Per layer, median ms of the fused epilogue and of e3nn's three modules, forward and backward
    (to h and x, as E+F needs), on random inputs of the layer's sizes, interleaved."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for layer in model.energy_model.layers:
        block = layer.block
        h = torch.randn(num_atoms, block.linear_2.irreps_in.dim, generator=gen, dtype=model.dtype, requires_grad=True)
        x = torch.randn(num_atoms, block.irreps_in.dim, generator=gen, dtype=model.dtype, requires_grad=True)
        attrs = torch.ones(num_atoms, 1, dtype=model.dtype)
        calls = {"fused": lambda: layer.epilogue(h, x, attrs, block.linear_2.weight, block.self_connection.weight),
                 "e3nn": lambda: layer.e3nn_epilogue(h, x, attrs)}
        samples: dict[str, list[float]] = defaultdict(list)
        for round_ in range(repeats + 1):
            for name, call in calls.items():
                start = clock()
                y = call()
                mid = clock()
                torch.autograd.grad(y.sum(), [h, x])
                if round_ > 0:
                    samples[f"{name} fwd"].append(mid - start)
                    samples[f"{name} bwd"].append(clock() - mid)
        out.append({"irreps": f"{block.linear_2.irreps_in} -> {layer.gate.irreps_out}"}
                   | {key: 1e3 * statistics.median(v) for key, v in samples.items()})
    return out


def errors(model: Potential, tabulated: Potential, graph: AtomicGraph) -> dict[str, float]:
    """Tabulated vs untabulated (float32) and untabulated float32 vs float64 (its own rounding)."""
    exact = build_model(model.config.to_dict() | {"dtype": "float64"})
    exact.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    results = {name: m(graph.to(dtype=m.dtype), forces=True)
               for name, m in (("f32", model), ("tab", tabulated), ("f64", exact))}
    n = graph.pos.shape[0]

    def diff(a, b, key):
        return float((getattr(results[a], key).double() - getattr(results[b], key).double()).abs().max().detach())

    return {"energy_per_atom_tab_vs_mlp": diff("tab", "f32", "energy") / n,
            "energy_per_atom_f32_vs_f64": diff("f32", "f64", "energy") / n,
            "forces_tab_vs_mlp": diff("tab", "f32", "forces"), "forces_f32_vs_f64": diff("f32", "f64", "forces"),
            "forces_max_abs": float(results["f64"].forces.abs().max())}


def deployed_speed(model: Potential, tabulated_model: Potential, graph: AtomicGraph, repeats: int,
                   folder: Path, clock=time.perf_counter) -> dict:
    """Deploy the model with and without tables into ``folder`` (reused when present); time their E+F
    interleaved call by call in this process (median ms on ``clock``)."""
    from nequip_fast.deploy import DeployedPotential, deploy

    out = {}
    files = {}
    for name, tab in (("untabulated", False), ("tabulated", True)):
        path = folder / f"l{model.config.l_max}_{name}.pt2"
        if not path.is_file():
            start = time.perf_counter()
            deploy(model, path, tabulate=tab)
            out[f"deploy_s_{name}"] = time.perf_counter() - start
        files[name] = DeployedPotential(path)
    samples: dict[str, list[float]] = defaultdict(list)
    for round_ in range(repeats + 2):  # two warm-up rounds
        for name, deployed in files.items():
            start = clock()
            deployed(graph, forces=True)
            if round_ >= 2:
                samples[name].append(clock() - start)
    for name, values in samples.items():
        out[f"ms_{name}"] = 1e3 * statistics.median(values)
    got, expected = files["tabulated"](graph), tabulated_model(graph)
    out["deployed_vs_eager_tabulated_forces"] = float((got.forces - expected.forces).abs().max().detach())
    return out


def markdown(results: dict, variants: list[str]) -> str:
    lmaxes = sorted(results)
    head = "| ms per call |" + "".join(f" l_max {l} {v} fwd | bwd |" for l in lmaxes for v in variants)
    lines = [head, "| --- |" + " ---: |" * 2 * len(variants) * len(lmaxes)]
    for row in ROWS + ("other", "total"):
        cells = []
        for l in lmaxes:
            for variant in variants:
                p = results[l][variant]
                cells += [f"{p[f'fwd {row}']:.1f}", f"{p[f'bwd {row}']:.1f}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for label, key in (("E+F without hooks", "plain"), ("training step", "train")):
        if key in results[lmaxes[0]][variants[0]]:
            cells = []
            for l in lmaxes:
                for variant in variants:
                    cells += [f"{results[l][variant][key]:.1f}", ""]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def benchmark_case(l_max: int, atoms: int, threads: int) -> tuple[Potential, AtomicGraph]:
    """The model (random weights, seed 0, fused cpu conv) and rattled fcc Cu graph of ``nequip-fast benchmark``."""
    setup = Setup(model={"l_max": l_max, "num_layers": 4, "num_features": 32, "dtype": "float32"},
                  system=SystemSpec(atoms=atoms), threads=threads)
    cfg, _, _ = setup.prepare()
    structure = build_system(setup.system)
    structure.rattle(0.05, seed=0)
    graph = AtomicGraph.from_atoms(structure, cfg.species, cfg.r_max, dtype=torch.float32)
    torch.manual_seed(0)
    return build_model(cfg.to_dict() | {"conv_backend": "cpu"}).eval(), graph


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l-max", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--atoms", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tolerance", type=float, help="table tolerance (default: the float32 default)")
    parser.add_argument("--measure", nargs="+", choices=("profile", "train", "epilogue", "deployed"),
                        default=["profile"],
                        help="profile: eager per-component times; train: eager training step (force loss); "
                             "epilogue: each layer's fused epilogue vs e3nn's modules alone; "
                             "deployed: deploy with and without tables and time their E+F")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["mlp", "table"],
                        help="models profiled side by side (profile, train)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: CPU time of the calling thread (needs --threads 1): on a shared, loaded "
                             "machine it counts this call's work, not the waits for other processes")
    parser.add_argument("--deploy-dir", help="keep (and reuse) the deployed files here")
    parser.add_argument("--json", help="write all numbers here")
    args = parser.parse_args(argv)
    if "train" in args.measure and any(v.startswith("table") for v in args.variants):
        parser.error("--measure train: radial tables are for inference; use the mlp variants")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures the calling thread: use --threads 1")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    results = {}
    for l_max in args.l_max:
        model, graph = benchmark_case(l_max, args.atoms, args.threads)
        start = time.perf_counter()
        tabulated = tabulate(model, args.tolerance)
        entry = {"tabulate_s": time.perf_counter() - start, "radial_table": tabulated.radial_table.summary(),
                 "edges": graph.edge_index.shape[1], "errors": errors(model, tabulated, graph)}
        print(f"l_max {l_max}: {entry['edges']} edges; {entry['radial_table']}; {entry['tabulate_s']:.1f} s", file=sys.stderr)
        base = {"mlp": model, "table": tabulated}
        variants = {name: with_e3nn_layers(base[name[:-5]]) if name.endswith("-e3nn") else base[name]
                    for name in args.variants}
        entry.update({name: {} for name in variants})
        if "profile" in args.measure:
            entry.update(profile(variants, graph, args.repeats, clock))
        if "train" in args.measure:
            for name, ms in train_speed(variants, graph, args.repeats, clock).items():
                entry[name]["train"] = ms
        if "epilogue" in args.measure:
            entry["epilogue"] = epilogue_speed(model, args.atoms, args.repeats, clock)
            for i, row in enumerate(entry["epilogue"]):
                print(f"l_max {l_max} layer {i} epilogue ({row['irreps']}) ms fwd/bwd: "
                      f"fused {row['fused fwd']:.2f}/{row['fused bwd']:.2f}, "
                      f"e3nn {row['e3nn fwd']:.2f}/{row['e3nn bwd']:.2f}")
        if "deployed" in args.measure:
            folder = Path(args.deploy_dir or tempfile.mkdtemp(prefix="profile_layers."))
            folder.mkdir(parents=True, exist_ok=True)
            entry["deployed"] = deployed_speed(model, tabulated, graph, args.repeats, folder, clock)
        results[l_max] = entry
        print(json.dumps({k: v for k, v in entry.items() if k not in VARIANTS}, indent=1), file=sys.stderr)
    if "profile" in args.measure:
        print(markdown(results, args.variants))
    elif "train" in args.measure:
        for l_max, entry in results.items():
            times = ", ".join(f"{v} {entry[v]['train']:.1f}" for v in args.variants)
            print(f"l_max {l_max} training step ms: {times}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
