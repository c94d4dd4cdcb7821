// The radial table lookup of a tabulated model (nequip_fast/model/tabulated.py; fake functions and
// autograd in nequip_fast/ops/table.py). Per edge e on interval i = interval[e] at t = t[e] in [0, 1]:
// w[e] = sum_k t^k table[4 i + k], and for its backward the t-derivative against g,
// <g[e], table[4 i + 1] + 2 t table[4 i + 2] + 3 t^2 table[4 i + 3]>, one pass over the rows: torch's
// embedding_bag backward (the per-sample weights' gradient) made a BLAS dot call per edge and table
// row, 6-7% of a deployed E+F.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

namespace nequip_fast {
namespace {

constexpr int64_t kEdgeGrain = 64;

void check_operands(const char* op, const at::Tensor& interval, const at::Tensor& t, const at::Tensor& table) {
  TORCH_CHECK(interval.scalar_type() == at::kLong && interval.dim() == 1, "nequip_fast ", op,
              ": interval must be int64 of shape (E,), got ", interval.scalar_type(), " of shape ", interval.sizes());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == interval.size(0), "nequip_fast ", op, ": t must have shape (",
              interval.size(0), ",), got ", t.sizes());
  TORCH_CHECK(table.dim() == 2 && table.size(0) % 4 == 0 && table.scalar_type() == t.scalar_type(), "nequip_fast ",
              op, ": table must be (4 x intervals, W) of t's dtype ", t.scalar_type(), ", got ", table.scalar_type(),
              " of shape ", table.sizes());
  TORCH_CHECK(interval.device().is_cpu() && t.device().is_cpu() && table.device().is_cpu(), "nequip_fast ", op,
              ": CPU tensors only");
}

// Calls f(e, rows of e's interval) for edges [0, E) in parallel; false if an interval lies outside the table.
template <typename T, typename F>
bool for_edges(const int64_t* interval, int64_t edges, const T* table, int64_t intervals, int64_t width, F&& f) {
  std::atomic<bool> inside{true};
  at::parallel_for(0, edges, kEdgeGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const int64_t i = interval[e];
      if (i < 0 || i >= intervals) {
        inside = false;
        continue;
      }
      f(e, table + 4 * i * width);
    }
  });
  return inside;
}

at::Tensor table_lookup_cpu(const at::Tensor& interval, const at::Tensor& t, const at::Tensor& table) {
  check_operands("table_lookup", interval, t, table);
  const at::Tensor ic = interval.contiguous(), tc = t.contiguous(), tab = table.contiguous();
  const int64_t edges = ic.size(0), width = tab.size(1), intervals = tab.size(0) / 4;
  at::Tensor out = at::empty({edges, width}, t.options());
  bool inside = true;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "nequip_fast::table_lookup", [&] {
    const scalar_t* tv = tc.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    inside = for_edges(ic.data_ptr<int64_t>(), edges, tab.data_ptr<scalar_t>(), intervals, width,
                       [&](int64_t e, const scalar_t* r) {
                         const scalar_t x = tv[e];
                         scalar_t* oe = o + e * width;
                         _Pragma("omp simd")
                         for (int64_t w = 0; w < width; ++w)
                           oe[w] = r[w] + x * (r[width + w] + x * (r[2 * width + w] + x * r[3 * width + w]));
                       });
  });
  TORCH_CHECK(inside, "nequip_fast table_lookup: an interval index lies outside the table's ", intervals,
              " intervals");
  return out;
}

at::Tensor table_lookup_backward_cpu(const at::Tensor& g, const at::Tensor& interval, const at::Tensor& t,
                                     const at::Tensor& table) {
  check_operands("table_lookup_backward", interval, t, table);
  TORCH_CHECK(g.dim() == 2 && g.size(0) == t.size(0) && g.size(1) == table.size(1) &&
                  g.scalar_type() == t.scalar_type() && g.device().is_cpu(),
              "nequip_fast table_lookup_backward: g must be (", t.size(0), ", ", table.size(1), ") of t's dtype, got ",
              g.scalar_type(), " of shape ", g.sizes());
  const at::Tensor gc = g.contiguous(), ic = interval.contiguous(), tc = t.contiguous(), tab = table.contiguous();
  const int64_t edges = ic.size(0), width = tab.size(1), intervals = tab.size(0) / 4;
  at::Tensor out = at::empty({edges}, t.options());
  bool inside = true;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "nequip_fast::table_lookup_backward", [&] {
    const scalar_t* tv = tc.data_ptr<scalar_t>();
    const scalar_t* gv = gc.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    inside = for_edges(ic.data_ptr<int64_t>(), edges, tab.data_ptr<scalar_t>(), intervals, width,
                       [&](int64_t e, const scalar_t* r) {
                         const scalar_t x = tv[e], x2 = 2 * x, x3 = 3 * x * x;
                         const scalar_t* ge = gv + e * width;
                         scalar_t dot = 0;
                         _Pragma("omp simd reduction(+ : dot)")
                         for (int64_t w = 0; w < width; ++w)
                           dot += ge[w] * (r[width + w] + x2 * r[2 * width + w] + x3 * r[3 * width + w]);
                         o[e] = dot;
                       });
  });
  TORCH_CHECK(inside, "nequip_fast table_lookup_backward: an interval index lies outside the table's ", intervals,
              " intervals");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nequip_fast, CPU, m) {
  m.impl("table_lookup", &table_lookup_cpu);
  m.impl("table_lookup_backward", &table_lookup_backward_cpu);
}

}  // namespace nequip_fast
