"""``nequip-fast benchmark`` on a tiny system: the CLI, its JSON and plot, memory, upstream comparison."""
import json

import pytest

from nequip_fast.interop import upstream
from nequip_fast.benchmark.cost import conv_cost
from nequip_fast.benchmark.memory import measure_in_subprocess
from nequip_fast.benchmark.setup import Setup
from nequip_fast.benchmark.system import SystemSpec, build_system, near_cubic_repeats
from nequip_fast.benchmark.timing import Timing
from nequip_fast.cli import main
from nequip_fast.model import ModelConfig, build_model
from nequip_fast.ops import ConvDescriptor

TINY = ["--atoms", "4", "--set", "num_layers=2", "--set", "num_features=4", "--set", "r_max=3.0",
        "--set", "radial_mlp_width=8", "--warmup", "0", "--repeats", "2", "--threads", "1", "--quiet"]
TINY_MODEL = dict(r_max=3.0, num_layers=2, num_features=4, radial_mlp_width=8)


def test_cli_table_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "scaling.png"
    backends = "reference,cpu" if _has_cpu_backend() else "reference"
    code = main(["benchmark", *TINY, "--backends", backends, "--skip", "memory", "--json", str(out_json),
                 "--plot", str(out_png), "--plot-sizes", "4,8"])
    assert code == 0
    table = capsys.readouterr().out
    assert "reference" in table and "us/atom-step" in table
    result = json.loads(out_json.read_text())
    assert result["system"]["atoms"] == 4 and result["model"]["num_features"] == 4
    for name in backends.split(","):
        case = result["cases"][name]
        for kind in ("energy_forces", "train_step", "conv_forward", "conv_forward_backward"):
            assert len(case[kind]["samples_s"]) == 2 and case[kind]["median_s"] > 0
        assert result["agreement"][name]["forces_max_abs_diff"] < 1e-4  # same weights on every backend
        assert [p["atoms"] for p in result["scaling"][name]] == [4, 8]
    assert out_png.read_bytes().startswith(b"\x89PNG")


def test_peak_memory_in_a_fresh_process():
    setup = Setup(model=TINY_MODEL, system=SystemSpec(atoms=4))
    mem = measure_in_subprocess(setup, "reference")
    assert "error" not in mem, mem
    for kind in ("energy_forces", "train_step"):
        assert mem[kind]["peak_mib"] > 50 and mem[kind]["working_mib"] >= 0


def test_compare_upstream_without_nequip_says_so(monkeypatch, capsys):
    monkeypatch.setattr(upstream, "available", lambda: False)
    code = main(["benchmark", *TINY, "--backends", "reference", "--compare-upstream",
                 "--skip", "energy_forces,train_step,conv,memory"])
    assert code == 0
    captured = capsys.readouterr()
    assert "upstream NequIP is not installed" in captured.err and "pip install nequip" in captured.err
    assert "upstream" not in captured.out.split("agreement")[0]


def test_bad_arguments_are_clear_errors(capsys):
    assert main(["benchmark", *TINY, "--backends", "nope"]) == 2
    assert "--backends" in capsys.readouterr().err
    assert main(["benchmark", *TINY, "--skip", "everything"]) == 2
    assert "--skip" in capsys.readouterr().err


def test_systems_and_cost_model():
    assert near_cubic_repeats(256) == (4, 8, 8)
    assert len(build_system(SystemSpec("Si", "diamond", 64))) == 64
    assert len(build_system(SystemSpec("Fe", "bcc", 128))) == 128
    timing = Timing.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert timing.median == 3.0 and timing.q25 == 2.0 and timing.q75 == 4.0
    # DESIGN.md §3: at 32 channels, l_max 2, the per-edge weights dominate the fused forward's traffic
    irreps = "32x0e+32x0o+32x1o+32x1e+32x2e+32x2o"
    d = ConvDescriptor.nequip(irreps, "1x0e+1x1o+1x2e", irreps)
    cost = conv_cost(d, num_nodes=1000, num_edges=43000, itemsize=4)
    assert 0.8 < 4 * d.weight_numel / cost.bytes_forward < 0.95


@pytest.mark.skipif(not upstream.available(), reason=upstream.NOT_INSTALLED)
@pytest.mark.parametrize("l_max", [1, 2])
def test_upstream_weights_give_the_same_energy_and_forces(l_max):
    from conftest import graph_of, random_crystal

    cfg = ModelConfig.from_dict(dict(species=["H", "C", "O"], r_max=3.5, num_layers=3, l_max=l_max, num_features=4,
                                     radial_mlp_width=8, avg_num_neighbors=10.0, dtype="float64",
                                     per_species_scales=[1.5, 0.5, 1.0], per_species_shifts=[-1.0, -3.0, -2.0]))
    reference = upstream.build(cfg, seed=3)
    model = build_model(cfg)
    upstream.transfer_weights(reference, model)
    diff = upstream.compare(reference, model, graph_of(random_crystal(6, seed=1), model))
    assert diff["energy_abs_diff"] < 1e-10 * max(1.0, diff["energy_abs"])
    assert diff["forces_max_abs_diff"] < 1e-10 * max(1.0, diff["forces_max_abs"])


def _has_cpu_backend() -> bool:
    from nequip_fast.ops.fused import available_backends

    return "cpu" in available_backends()

