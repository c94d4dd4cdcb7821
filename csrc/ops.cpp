// Schemas of the fused convolution ops. Kernels register per device: conv_cpu.cpp for CPU; a
// CUDA build adds TORCH_LIBRARY_IMPL(nequip_fast, CUDA, m) in csrc/*.cu with the same names.
// Fake (meta) functions and autograd are registered from Python (nequip_fast/ops/fused.py).
#include <torch/library.h>

TORCH_LIBRARY(nequip_fast, m) {
  // Row pointers (2, N + 1) and edge order (2, E) of the graph sorted stably by receiver (row 0)
  // and by sender (row 1): the CSRs that the two ops below walk.
  m.def("conv_graph(Tensor edge_index, SymInt num_nodes) -> (Tensor, Tensor)");
  // (plan, values, layout) is a ConvPlan (nequip_fast/ops/plan.py, csrc/plan.h) holding both
  // orientations of T: `transpose` selects the pre-lowered adjoint T^T and the graph direction.
  // Rows of direction d = transpose: out[r] = sum_{k in ptr[d][r]..ptr[d][r+1]} T(x[col(e)], sh[e], w[e]),
  // e = perm[d][k], col = edge_index[1 - d].
  m.def("segment_conv(Tensor x, Tensor sh, Tensor weight, Tensor plan, Tensor values, int[] layout, "
        "Tensor edge_index, Tensor ptr, Tensor perm, bool transpose) -> Tensor");
  // segment_conv(x, sh, weight) + segment_conv(x, sh2, weight2) in one walk of the CSR (x read once,
  // out written once): the double backward's sums of two convs. CPU only; other devices take the two calls.
  m.def("segment_conv2(Tensor x, Tensor sh, Tensor weight, Tensor sh2, Tensor weight2, Tensor plan, Tensor values, "
        "int[] layout, Tensor edge_index, Tensor ptr, Tensor perm, bool transpose) -> Tensor");
  // Per edge e = (receiver r, sender s): gradients of <g[r], T(x[s], sh[e], w[e])> wrt sh[e] and w[e].
  m.def("edge_grads(Tensor x, Tensor g, Tensor sh, Tensor weight, Tensor plan, Tensor values, int[] layout, "
        "Tensor edge_index, Tensor ptr, Tensor perm) -> (Tensor, Tensor)");
  // The radial MLP's SiLU, one elementwise pass per derivative level (silu.cpp; autograd in
  // nequip_fast/ops/activations.py): silu(z); g silu'(z); (gg silu'(z), gg g silu''(z)).
  m.def("silu(Tensor z) -> Tensor");
  m.def("silu_grad(Tensor g, Tensor z) -> Tensor");
  m.def("silu_grad2(Tensor gg, Tensor g, Tensor z) -> (Tensor, Tensor)");
  m.def("silu_with_grad(Tensor z) -> (Tensor, Tensor)");  // (silu(z), silu'(z)), no autograd
  // a^T b for a (K, m), b (K, n), K long: the weight gradients of the radial MLP's products
  // (matmul_cpu.cpp; autograd in nequip_fast/ops/matmul.py).
  m.def("matmul_tn(Tensor a, Tensor b) -> Tensor");
  // A tabulated radial network (table_cpu.cpp; autograd in nequip_fast/ops/table.py): per edge,
  // w[e] = sum_k t[e]^k table[4 interval[e] + k], and the t-derivative of <g, w> per edge.
  m.def("table_lookup(Tensor interval, Tensor t, Tensor table) -> Tensor");
  m.def("table_lookup_backward(Tensor g, Tensor interval, Tensor t, Tensor table) -> Tensor");
}

