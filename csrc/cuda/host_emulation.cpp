// Replays the CUDA kernels' threads on the host, one warp and lane at a time, through the same
// plan view (../plan.h) and lane code (conv_lanes.h) the device runs, on the plan that
// nequip_fast.ops.plan.lower made; tests/test_cuda_compile.py compares the results with the e3nn
// reference. This checks the plan and the index arithmetic without a GPU; it cannot check what only
// a GPU shows (launch configuration, shared memory, races, speed).
//
// Usage: host_emulation IN OUT. IN holds int64 [layout_size, n_ints, n_values, N, E, fa, fs, fw, fb,
// bits (32 | 64), W (weight rows: E - P for P pairs, see weight_row)], the layout (int64), the plan ints
// (int32), the plan values (float64), then edge_index (2, E), ptr (2, N + 1), perm (2, E) as int64
// and x (N, fa), sh (E, fs), w (W, fw), g (N, fb) as float64. OUT receives float64
// segment_conv(x) (N, fb), segment_conv^T(g) (N, fa), g_sh (E, fs), g_w (W, fw), computed in the
// precision `bits` (g_w of a pair's row: the sum over its two edges, as conv_cuda.cu does).
#include "conv_lanes.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace nequip_fast::cuda;
using nequip_fast::PlanView;

template <typename V>
std::vector<V> read(std::FILE* f, int64_t n) {
  std::vector<V> v(n);
  if (n > 0 && std::fread(v.data(), sizeof(V), n, f) != size_t(n)) {
    std::fprintf(stderr, "host_emulation: short input\n");
    std::exit(2);
  }
  return v;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
PlanView<T> view_or_exit(const std::vector<int64_t>& layout, bool transpose, const std::vector<int32_t>& ints,
                         const std::vector<T>& values) {
  const std::string error =
      nequip_fast::check_layout(layout.data(), int64_t(layout.size()), transpose, int64_t(ints.size()),
                                int64_t(values.size()));
  if (!error.empty()) {
    std::fprintf(stderr, "host_emulation: %s\n", error.c_str());
    std::exit(3);
  }
  const PlanView<T> view = nequip_fast::make_view<T>(layout.data(), transpose, ints.data(), values.data());
  if (view.max_dim > kMaxDim) {
    std::fprintf(stderr, "host_emulation: irrep dimension %lld > %d\n", (long long)view.max_dim, kMaxDim);
    std::exit(3);
  }
  return view;
}

template <typename T>
std::vector<T> segment_conv(const PlanView<T>& view, const T* x, int64_t fa, const T* sh, int64_t fs, const T* w,
                            int64_t fw, const int64_t* ptr, const int64_t* perm, const int64_t* col, int64_t rows,
                            int64_t fb, int64_t pairs) {
  std::vector<T> out(rows * fb, T(0));
  for (int64_t warp = 0; warp < rows * view.n_tasks; ++warp)
    for (int lane = 0; lane < kWarpSize; ++lane)
      segment_thread(view, warp, lane, x, fa, sh, fs, w, fw, pairs, ptr, perm, col, out.data(), fb);
  return out;
}

template <typename T>
void run(std::FILE* in, std::FILE* out_file, const int64_t* h) {
  const int64_t layout_size = h[0], n_ints = h[1], n_values = h[2], n = h[3], e = h[4], fa = h[5], fs = h[6],
                fw = h[7], fb = h[8], wr = h[10], pairs = e - wr;
  const auto layout = read<int64_t>(in, layout_size);
  const auto ints = read<int32_t>(in, n_ints);
  const auto values = cast<T>(read<double>(in, n_values));
  const auto edge_index = read<int64_t>(in, 2 * e);
  const auto ptr = read<int64_t>(in, 2 * (n + 1));
  const auto perm = read<int64_t>(in, 2 * e);
  const auto x = cast<T>(read<double>(in, n * fa)), sh = cast<T>(read<double>(in, e * fs)),
             w = cast<T>(read<double>(in, wr * fw)), g = cast<T>(read<double>(in, n * fb));

  const PlanView<T> forward = view_or_exit(layout, false, ints, values);
  const PlanView<T> transposed = view_or_exit(layout, true, ints, values);
  // Direction d reduces rows of ptr[d] over edges perm[d] and gathers edge_index[1 - d].
  const auto out = segment_conv<T>(forward, x.data(), fa, sh.data(), fs, w.data(), fw, ptr.data(), perm.data(),
                                   edge_index.data() + e, n, fb, pairs);
  const auto out_t = segment_conv<T>(transposed, g.data(), fb, sh.data(), fs, w.data(), fw, ptr.data() + n + 1,
                                     perm.data() + e, edge_index.data(), n, fa, pairs);

  std::vector<T> g_sh(e * fs), g_w(e * fw, T(0)), g_rows(wr * fw, T(0)), scratch(fs * kScratchStride);
  for (int64_t k = 0; k < e; ++k) {
    std::fill(scratch.begin(), scratch.end(), T(0));
    const int64_t r = edge_index[k], s = edge_index[e + k];
    for (int lane = 0; lane < kWarpSize; ++lane)
      edge_lane(forward, lane, x.data() + s * fa, g.data() + r * fb, sh.data() + k * fs,
                w.data() + weight_row(k, pairs) * fw, g_w.data() + k * fw, scratch.data());
    for (int64_t c = 0; c < fs; ++c) g_sh[k * fs + c] = scratch_column_sum(scratch.data(), c);
  }
  for (int64_t k = 0; k < e; ++k)  // a pair's row sums its two edges
    for (int64_t c = 0; c < fw; ++c) g_rows[weight_row(k, pairs) * fw + c] += g_w[k * fw + c];
  for (const std::vector<T>& v : {out, out_t, g_sh, g_rows}) {
    const std::vector<double> d(v.begin(), v.end());
    std::fwrite(d.data(), sizeof(double), d.size(), out_file);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: host_emulation IN OUT\n");
    return 1;
  }
  std::FILE* in = std::fopen(argv[1], "rb");
  std::FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) {
    std::fprintf(stderr, "host_emulation: cannot open files\n");
    return 1;
  }
  const auto h = read<int64_t>(in, 11);
  if (h[9] == 32)
    run<float>(in, out, h.data());
  else
    run<double>(in, out, h.data());
  return std::fclose(out) == 0 ? 0 : 1;
}
