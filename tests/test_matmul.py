"""ops.matmul: oneDNN's product equals torch's ``@`` at every derivative level, and only where it may run."""
import pytest
import torch

from nequip_fast.ops import matmul as mm


@pytest.fixture
def onednn():
    if not mm.enable_onednn(True):
        pytest.skip("torch here has no usable oneDNN linear (torch.backends.mkldnn); matmul is torch's @")
    yield
    mm.enable_onednn(True)


def _operands(m=37, k=24, n=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, dtype=torch.float64, generator=g), torch.randn(k, n, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("shape", [(37, 24, 19), (1, 8, 64), (300, 64, 8), (0, 8, 16)])
def test_forward_equals_torch(onednn, shape):
    x, a = _operands(*shape)
    y = mm.matmul(x.float(), a.float())
    assert y.shape == (shape[0], shape[2]) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), x @ a, rtol=1e-5, atol=1e-5)


def test_the_onednn_path_is_taken_only_where_it_may(onednn):
    x, a = _operands()
    xf, af = x.float().requires_grad_(), a.float().requires_grad_()
    assert type(mm.matmul(xf, af).grad_fn).__name__ == "_OneDNNMatmulBackward"
    for other in (mm.matmul(x.requires_grad_(), a),  # float64: oneDNN has none
                  mm.matmul(xf.t().contiguous().t(), af)):  # a transposed x: MKL reads it in place
        assert type(other.grad_fn).__name__ == "MmBackward0"
    mm.enable_onednn(False)
    assert type(mm.matmul(xf, af).grad_fn).__name__ == "MmBackward0"


def assert_force_loss_gradients_match(product, exact_product, x, a, tolerance):
    """A force-like loss, the gradient of a function of y = product(x, a) differentiated again
    (training): ``product`` on float32 operands against ``exact_product`` on the float64 ones."""

    def loss(x, a, product):
        scale = a * 1.5  # a product, not a leaf: the engine can tell whether its gradient is used
        y = torch.tanh(product(x, scale))
        (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        return gx.pow(2).sum() + y.sum()

    xf, af = x.float().requires_grad_(), a.float().requires_grad_()
    x.requires_grad_(), a.requires_grad_()
    loss(xf, af, product).backward()
    loss(x, a, exact_product).backward()
    for ours, exact in ((xf.grad, x.grad), (af.grad, a.grad)):
        torch.testing.assert_close(ours.double(), exact, rtol=tolerance, atol=tolerance * exact.abs().max().item())


def test_first_and_second_derivatives_equal_float64(onednn):
    assert_force_loss_gradients_match(mm.matmul, torch.mm, *_operands(), 1e-5)


def test_forces_do_not_compute_the_weight_gradient(onednn, monkeypatch):
    """autograd.grad(E, x) asks for x only: the backward must not spend a product on the weight's;
    its products are ``matmul`` again (with a graph, so that the double backward has them too)."""
    calls, onednn_calls, tn_calls = [], [], []
    real, real_linear, real_tn = mm.matmul, mm._linear, mm.matmul_tn
    monkeypatch.setattr(mm, "matmul", lambda x, a: calls.append((tuple(x.shape), tuple(a.shape))) or real(x, a))
    monkeypatch.setattr(mm, "matmul_tn",
                        lambda x, g: tn_calls.append((tuple(x.shape), tuple(g.shape))) or real_tn(x, g))
    monkeypatch.setattr(mm, "_linear", lambda x, a: onednn_calls.append(tuple(x.shape)) or real_linear(x, a))
    x, a = _operands()
    xf, af = x.float().requires_grad_(), a.float().requires_grad_()
    rows = mm.row_bucket(37)  # oneDNN's products run on padded rows
    for create_graph in (False, True):  # forces in inference; a force loss
        calls.clear(), onednn_calls.clear()
        y = real(xf, af * 2.0)
        (gx,) = torch.autograd.grad(y.pow(2).sum(), xf, create_graph=create_graph)  # a contiguous cotangent
        assert calls == [((37, 19), (19, 24))] and onednn_calls == [(rows, 24), (rows, 19)] and tn_calls == []
    torch.testing.assert_close(gx, (2 * y) @ (af * 2.0).t())
    calls.clear()
    real(xf, af * 2.0).sum().backward()  # both gradients: the weight's is x^T g
    assert calls == [((37, 19), (19, 24))] and tn_calls == [((37, 24), (37, 19))]


def test_saves_only_what_the_backward_needs(onednn):
    """As torch's mm: x is kept for the weight's gradient only, the weight for x's only."""
    x, a = _operands()
    xf, af = x.float(), a.float()
    for needs, saved in (((True, False), (False, True)), ((False, True), (True, False)), ((True, True), (True, True))):
        y = mm.matmul(xf.clone().requires_grad_(needs[0]), af.clone().requires_grad_(needs[1]))
        assert type(y.grad_fn).__name__ == "_OneDNNMatmulBackward"
        kept = tuple(t is not None for t in y.grad_fn.saved_tensors)
        assert kept == saved, (needs, kept)


def test_forward_mode_and_transforms_use_torch(onednn):
    """Under torch.func (the radial tables' jvp) the op has no rule: torch's @ gives the right tangent."""
    x, a = _operands()
    xf, af = x.float(), a.float()
    tx = torch.ones_like(xf)
    y, ty = torch.func.jvp(lambda x: mm.matmul(x, af), (xf,), (tx,))
    torch.testing.assert_close(ty, tx @ af)
    torch.testing.assert_close(y, xf @ af)


@pytest.mark.parametrize("use_onednn", [True, False])
def test_constant_weights_keeps_no_x_and_gives_the_same_input_gradient(onednn, use_onednn):
    """Forces without a graph: the weight is taken as a constant, so x is not kept for its gradient."""
    mm.enable_onednn(use_onednn)
    x, a = _operands()
    xf, af = x.float().requires_grad_(), a.float().requires_grad_()
    y_ref = mm.matmul(xf, af * 2.0)
    (g_ref,) = torch.autograd.grad(y_ref.pow(2).sum(), xf)
    with mm.constant_weights():
        y = mm.matmul(xf, af * 2.0)
    assert not y.grad_fn.next_functions[1][0]  # the weight is outside the graph
    if use_onednn:
        assert [t is None for t in y.grad_fn.saved_tensors] == [True, False]
    else:
        assert type(y.grad_fn).__name__ == "MmBackward0" and y.grad_fn._saved_self is None
    (g,) = torch.autograd.grad(y.pow(2).sum(), xf)
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)
    assert mm.matmul(xf, af * 2.0).grad_fn.next_functions[1][0] is not None  # off again outside


def test_row_counts_fall_into_few_shapes():
    """oneDNN makes (and keeps) a primitive per shape: the radial MLP's rows, which change with every
    MD step and batch, are rounded up to at most 1/16 more, so that nearby counts share a shape."""
    assert all(m <= mm.row_bucket(m) <= m + max(1, m // 16) for m in range(1, 5000))
    assert len({mm.row_bucket(m) for m in range(20000, 24000)}) <= 5
    assert mm.row_bucket(21504) == 21504


def test_padded_rows_are_cut_off(onednn):
    x, a = _operands(m=1000 + 3, k=64, n=32)
    assert mm.row_bucket(x.shape[0]) > x.shape[0]  # the padded path
    y = mm.matmul(x.float(), a.float())
    assert y.shape == (1003, 32) and y.is_contiguous()
    torch.testing.assert_close(y.double(), x @ a, rtol=1e-5, atol=1e-5)


def test_silu_matmul_for_forces_keeps_the_derivative_and_is_one_product_back(onednn):
    """Forces without a graph: ``silu(z) @ a`` keeps silu'(z) (not z) and its backward is one oneDNN
    product and a multiply; values and input gradient equal the unfused path's; a backward that
    would keep a graph (never asked for by such calls) is refused rather than wrong."""
    from nequip_fast.ops import activations

    z, a = _operands(m=1003, k=64, n=40)  # 1003 rows: the padded path
    zf, af = z.float().requires_grad_(), a.float().requires_grad_()
    if not activations.fused(zf):
        pytest.skip("the C++ ops library is not available here")
    y_ref = mm.matmul(activations.silu(zf), af)
    (g_ref,) = torch.autograd.grad(y_ref.pow(2).sum(), zf)
    with mm.constant_weights():
        y = mm.silu_matmul(zf, af)
    assert type(y.grad_fn).__name__ == "_SiluMatmulBackward"
    ds, kept_a = y.grad_fn.saved_tensors
    silu_prime = torch.sigmoid(z) * (1 + z * torch.sigmoid(-z))
    torch.testing.assert_close(ds.double(), silu_prime, rtol=1e-6, atol=1e-7)
    assert kept_a.requires_grad is False
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="without a graph"):
        torch.autograd.grad(y.pow(2).sum(), zf, create_graph=True, retain_graph=True)
    (g,) = torch.autograd.grad(y.pow(2).sum(), zf)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-4)
    # outside constant_weights: the differentiable composition
    y2 = mm.silu_matmul(zf, af)
    assert type(y2.grad_fn).__name__ != "_SiluMatmulBackward" and torch.equal(y2, y_ref)


def test_model_forces_without_a_graph_equal_those_with_one(onednn, monkeypatch):
    """float32: forces through ``silu_matmul``'s one-product backward (no graph) equal those through
    the differentiable composition (create_graph=True), as a force loss computes them."""
    from conftest import graph_of, random_crystal, small_model

    model = small_model(seed=5, dtype="float32")
    graph = graph_of(random_crystal(seed=6), model)
    calls, apply = [], mm._SiluMatmul.apply
    monkeypatch.setattr(mm._SiluMatmul, "apply", lambda *args: calls.append(1) or apply(*args))
    fast = model(graph).forces
    assert calls  # the one-product path ran
    kept = model(graph, create_graph=True).forces.detach()
    assert fast.abs().max() > 1e-2
    torch.testing.assert_close(fast, kept, rtol=1e-5, atol=1e-5 * fast.abs().max().item())


def _tn_operands(k, m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, m, dtype=torch.float64, generator=g), torch.randn(k, n, dtype=torch.float64, generator=g)


# (k, m, n): one chunk of rows and several (1024 each; beyond 64 chunks, longer ones), partial blocks
# of rows; tiles of a's columns (6) with a remainder, every remainder of vectors of b's; a narrow n
# or an m wider than n (the product computed as (b^T a)^T), neither side a whole number of vectors
# and a side narrower than a tile (torch's), k = 0
TN_SHAPES = [(300, 64, 64), (2500, 64, 64), (70000, 8, 16), (1100, 8, 64), (2049, 64, 8), (700, 13, 48),
             (700, 6, 16), (500, 64, 112), (640, 96, 160), (700, 160, 48), (300, 50, 50), (300, 64, 13),
             (200, 4, 64), (200, 64, 3), (0, 8, 16)]


@pytest.mark.parametrize("shape", TN_SHAPES)
def test_matmul_tn_equals_float64(shape):
    x, g = _tn_operands(*shape)
    y = mm.matmul_tn(x.float(), g.float())
    assert y.shape == shape[1:] and y.dtype == torch.float32 and y.is_contiguous()
    exact = x.t() @ g
    scale = (x.abs().t() @ g.abs()).max().item() if shape[0] else 1.0  # the sums of the terms' magnitudes
    torch.testing.assert_close(y.double(), exact, rtol=0, atol=2e-6 * scale)
    if shape[0]:
        assert type(mm.matmul_tn(x.float().requires_grad_(), g.float()).grad_fn).__name__ == "_MatmulTNBackward"


@pytest.mark.parametrize("k", [5000, 70000])
def test_matmul_tn_does_not_depend_on_the_thread_count(k):
    x, g = (t.float() for t in _tn_operands(k, 64, 16))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = mm.matmul_tn(x, g)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(mm.matmul_tn(x, g), one)
    finally:
        torch.set_num_threads(threads)


def test_matmul_tn_derivatives_equal_float64():
    """First and second derivatives (a weight gradient in a force loss's double backward)."""
    x, g = _tn_operands(1500, 8, 32)
    assert_force_loss_gradients_match(mm.matmul_tn, lambda x, g: x.t() @ g, x, g, 1e-4)
    xd, gd = (t.detach()[:40].clone().requires_grad_() for t in (x, g))
    assert torch.autograd.gradcheck(mm.matmul_tn, (xd, gd)) and torch.autograd.gradgradcheck(mm.matmul_tn, (xd, gd))


@pytest.mark.parametrize("constant", [False, True])
def test_radial_mlp_pads_its_rows_once(onednn, monkeypatch, constant):
    """Off a row bucket, the radial MLP pads its input once and cuts its output once: no product
    pads its own operand (each such pad copied an (edges x width) operand), forward or backward;
    values and gradients equal the unpadded float64 MLP's."""
    from nequip_fast.model.radial import RadialMLP

    mlp = RadialMLP([8, 64, 64, 48])
    x = torch.randn(1003, 8, dtype=torch.float64)
    assert mm.row_bucket(1003) > 1003
    pads = []
    real_pad = mm._pad_rows
    monkeypatch.setattr(mm, "_pad_rows", lambda x, rows: pads.append(x.shape) or real_pad(x, rows))
    xf = x.float().requires_grad_()
    with mm.constant_weights(constant):
        y = mlp.float()(xf)
    (g,) = torch.autograd.grad(y.pow(2).sum(), xf)
    assert pads == [] and y.shape == (1003, 48)
    x64 = x.clone().requires_grad_()
    mlp64 = RadialMLP([8, 64, 64, 48]).double()
    mlp64.load_state_dict(mlp.state_dict())
    with mm.constant_weights(constant):
        y64 = mlp64(x64)
    (g64,) = torch.autograd.grad(y64.pow(2).sum(), x64)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5 * y64.abs().max().item())
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-4 * g64.abs().max().item())
