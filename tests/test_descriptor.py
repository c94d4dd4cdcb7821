"""The descriptor's path table is the same function as e3nn's TensorProduct, and the seam matches it."""
import pytest
import torch
from e3nn import o3

from nequip_fast.ops import ConvDescriptor, TensorProductConv


def contract(desc: ConvDescriptor, x, sh, w):
    """The path table read literally: what every kernel backend must compute per edge."""
    out = x.new_zeros(x.shape[0], desc.irreps_out.dim)
    for p in desc.paths:
        for i, j, k, value in p.cg:
            xi = x[:, p.in_offset + i: p.in_offset + p.mul * p.in_dim: p.in_dim]
            out[:, p.out_offset + k: p.out_offset + p.mul * p.out_dim: p.out_dim] += (
                value * xi * sh[:, p.sh_offset + j, None] * w[:, p.weight_offset: p.weight_offset + p.mul]
            )
    return out


@pytest.mark.parametrize(
    "irreps_in, l_max, parity",
    [("5x0e", 1, True), ("3x0e+3x1o", 2, True), ("4x0e+2x1o+3x2e+1x3o", 3, True), ("2x0e+2x1e+2x2e", 2, False),
     ("16x0e+16x1o+16x1e", 3, True)],
)
def test_path_table_equals_e3nn(irreps_in, l_max, parity):
    irreps_sh = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
    target = o3.Irreps([(1, (l, p)) for l in range(l_max + 1) for p in (1, -1)])
    desc = ConvDescriptor.nequip(irreps_in, irreps_sh, target)
    assert desc.paths and desc.weight_numel == desc.e3nn_tensor_product().weight_numel
    torch.manual_seed(0)
    x = torch.randn(7, desc.irreps_in.dim, dtype=torch.float64)
    sh = torch.randn(7, desc.irreps_sh.dim, dtype=torch.float64)
    w = torch.randn(7, desc.weight_numel, dtype=torch.float64)
    torch.set_default_dtype(torch.float64)  # e3nn stores its Clebsch-Gordan buffers in the default dtype
    try:
        tp = desc.e3nn_tensor_product()
    finally:
        torch.set_default_dtype(torch.float32)
    expected = tp(x, sh, w)
    torch.testing.assert_close(contract(desc, x, sh, w), expected, atol=1e-12, rtol=1e-12)


def test_nequip_rule_keeps_only_target_irreps_sorted():
    desc = ConvDescriptor.nequip("2x0e+2x1o", "0e+1o+2e", "4x0e+4x1o")
    assert all(ir in (o3.Irrep("0e"), o3.Irrep("1o")) for _, ir in desc.irreps_out)
    assert desc.irreps_out == desc.irreps_out.sort().irreps


def test_reference_conv_sums_messages_into_receivers():
    desc = ConvDescriptor.nequip("3x0e+3x1o", "0e+1o", "3x0e+3x1o")
    conv = TensorProductConv(desc, "reference").double()  # float32-rounded CG: compare loosely
    torch.manual_seed(1)
    x = torch.randn(4, desc.irreps_in.dim, dtype=torch.float64)
    edge_index = torch.tensor([[0, 0, 2, 2, 2], [1, 3, 0, 1, 1]])  # node 1 and 3 receive nothing; a duplicate edge
    sh = torch.randn(5, desc.irreps_sh.dim, dtype=torch.float64)
    w = torch.randn(5, desc.weight_numel, dtype=torch.float64)
    out = conv(x, sh, w, edge_index)
    messages = contract(desc, x[edge_index[1]], sh, w)
    torch.testing.assert_close(out[0], messages[0] + messages[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[2], messages[2:].sum(0), atol=1e-6, rtol=1e-6)
    assert (out[1] == 0).all() and (out[3] == 0).all()
