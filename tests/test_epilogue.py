"""The fused epilogue (linear_2 + self-connection + gate, model/epilogue.py) equals e3nn's three
modules, and the fused linear_1 e3nn's Linear, in every layer of every model option: forward,
backward and the double backward of force-loss training, in float64 to 1e-12 and float32 to 1e-5."""
import pytest
import torch

from conftest import small_config
from nequip_fast.model import build_model

OPTIONS = {
    "parity on, l_max 1": dict(),
    "SO(3)": dict(parity=False),
    "parity on, l_max 2, 4 layers (0o scalars)": dict(l_max=2, num_layers=4),
    "natural parity, uneven l_max 3": dict(parity="natural", l_max=3, num_features=[6, 4, 3, 2]),
    "per-species norm, embedding width": dict(parity="natural", l_max=2, type_embed_num_features=5,
                                              avg_num_neighbors={"H": 3.0, "C": 6.0, "O": 9.0}),
    "1 species, readout MLP": dict(species=["Cu"], readout_mlp_depth=2, readout_nonlinearity="silu"),
}


def layers_of(options: dict, dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # exact e3nn constants, as the fused-model tests do
    try:
        torch.manual_seed(0)
        model = build_model(small_config(**{"num_layers": 3, **options}))  # a middle layer: l > 0 in and out
    finally:
        torch.set_default_dtype(old)
    return [layer.to(dtype) for layer in model.energy_model.layers], len(model.config.species)


def inputs(layer, num_species: int, dtype: torch.dtype, n: int = 11):
    gen = torch.Generator().manual_seed(n)
    h = torch.randn(n, layer.block.linear_2.irreps_in.dim, generator=gen, dtype=dtype, requires_grad=True)
    x = torch.randn(n, layer.block.irreps_in.dim, generator=gen, dtype=dtype, requires_grad=True)
    species = torch.randint(0, num_species, (n,), generator=gen)
    return h, x, torch.nn.functional.one_hot(species, num_species).to(dtype)


def derivatives(function, inputs, weights):
    """Output; gradients of <out, v> w.r.t. the inputs and weights; then the gradient of a loss on
    the inputs' gradients (as a force loss differentiates forces) w.r.t. the same (None where the
    loss does not depend on one: a linear map's input)."""
    out = function(*inputs)
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    first = torch.autograd.grad((out * v).sum(), inputs + weights, create_graph=True)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in first[:len(inputs)]), inputs + weights,
                                 allow_unused=True)
    return [out, *first, *second]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_fused_epilogue_equals_e3nn_modules(name, dtype, tolerance):
    layers, num_species = layers_of(OPTIONS[name], dtype)
    for i, layer in enumerate(layers):
        h, x, attrs = inputs(layer, num_species, dtype)
        block = layer.block
        cases = {  # name: (fused, reference, inputs, weights)
            "epilogue": (lambda h, x: layer.epilogue(h, x, attrs, block.linear_2.weight, block.self_connection.weight),
                         lambda h, x: layer.e3nn_epilogue(h, x, attrs), [h, x],
                         [block.linear_2.weight, block.self_connection.weight]),
            "linear_1": (lambda x: block.fused_linear_1(x, block.linear_1.weight), block.linear_1, [x],
                         [block.linear_1.weight]),
        }
        for case, (fused, reference, args, weights) in cases.items():
            got, expected = derivatives(fused, args, weights), derivatives(reference, args, weights)
            labels = ["out"] + [f"{order} {k}" for order in ("d", "d2") for k in range(len(args) + len(weights))]
            assert sum(e is not None for e in expected) > 1 + len(args)  # first and some second derivatives
            for label, a, e in zip(labels, got, expected):
                if e is None:
                    assert a is None or not a.any(), f"layer {i} {case} {label}: should not depend on its input"
                    continue
                assert e.abs().max() > 0, f"layer {i} {case} {label}: the reference is zero, the check would be empty"
                assert rel_err(a, e) < tolerance, f"layer {i} {case} {label}: relative error {rel_err(a, e):.1e}"


def test_weights_stay_the_e3nn_modules_parameters():
    """Same state-dict keys as before the fusion (checkpoints load), and the fused path reads them."""
    layers, num_species = layers_of({}, torch.float64)
    layer = layers[0]
    keys = set(layer.state_dict())
    assert {"block.linear_2.weight", "block.self_connection.weight"} <= keys
    assert not any(k.startswith("epilogue.") for k in keys)
    h, x, attrs = inputs(layer, num_species, torch.float64)
    assert not layer.epilogue.state_dict() and not layer.block.fused_linear_1.state_dict()

    def fused():
        return layer.epilogue(h, x, attrs, layer.block.linear_2.weight, layer.block.self_connection.weight)

    before = fused()
    with torch.no_grad():
        layer.block.self_connection.weight.mul_(2.0)
    assert rel_err(fused(), layer.e3nn_epilogue(h, x, attrs)) < 1e-12
    assert (fused() - before).abs().max() > 1e-3
