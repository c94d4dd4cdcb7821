"""The error that storing the per-edge weights w in fp16 or bf16 would cost (issue 14, item 3): w rounded
after the radial MLP, forces through the unrounded MLP (what a kernel reading rounded w with the
MLP's dw/dr would give), against the float64 model; float32 storage (today's) for scale.

    .venv/bin/python benchmarks/weight_precision.py      # the profile's fcc Cu 1024 atoms, l_max 1 and 2
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from profile_layers import benchmark_case
from nequip_fast.model import build_model
from nequip_fast.model.radial import RadialMLP
torch.set_num_threads(1)
for L in (1, 2):
    model, graph = benchmark_case(L, 1024, 1)
    exact = build_model(model.config.to_dict() | {"dtype": "float64", "conv_backend": "cpu"}).eval()
    exact.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    ref = exact(graph.to(dtype=torch.float64), forces=True)
    mode = {"dtype": None}
    def hook(mod, inp, out):
        if mode["dtype"] is None: return out
        return out + (out.to(mode["dtype"]).to(out.dtype) - out).detach()
    for m in model.modules():
        if isinstance(m, RadialMLP): m.register_forward_hook(hook)
    n = graph.pos.shape[0]
    fmax = ref.forces.abs().max().item()
    for dt in (None, torch.float16, torch.bfloat16):
        mode["dtype"] = dt
        p = model(graph, forces=True)
        de = (p.energy.double() - ref.energy).abs().item() / n
        df = (p.forces.double() - ref.forces).abs().max().item()
        print(f"l_max {L} w stored as {dt or 'float32'}: |dE|/atom {de:.1e} eV, max|dF| {df:.1e} eV/A (max|F| {fmax:.2f})")
