// The radial MLP's SiLU and its first two derivatives, each one elementwise pass (CPU); and
// silu with its derivative in one pass, for forces without a graph (ops/matmul.py: silu_matmul).
//
// torch runs silu, silu_backward and autograd's formula for the double backward as separate
// kernels (the double backward as ~9 multiplies and a sigmoid over the edges x width tensor),
// and its exp costs ~1 ns per element on this class of machine. Here every output of a derivative
// level is one pass over its operands:
//   silu(z) = z s,  silu'(z) = s (1 + z q),  silu''(z) = s q (2 + z (q - s)),
// with s = sigmoid(z), q = 1 - s, both from e = exp(-|z|) without cancellation (z >= 0: s = 1 / (1 + e),
// q = e / (1 + e); z < 0 swapped), so no intermediate overflows for any |z|; infinities and NaN give
// what torch gives (silu(-inf) and every derivative at +-inf are NaN).
// float64: silu and g silu' are ATen's kernels, the pair one pass with std::exp (the model's float64
// results stay those of torch to ~1e-15). float32 runs
// in 8-float lanes (16 with AVX-512) with a polynomial exp: within ~3 ulp of the truth (tests/test_silu.py
// bounds it; torch's own float32 silu_backward is off by up to ~9 ulp). Lanes of doubles were
// accurate to half an ulp but measured twice as slow, no faster than torch's silu.
// Every element's result depends on its value only (the tail runs through the same vector code),
// so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace nequip_fast {
namespace {

#define NEQUIP_FAST_SILU_INLINE __attribute__((always_inline)) inline

// The lane helpers are always inlined into the per-ISA versions, so no vector crosses a call
// boundary (the ABI note GCC gives for the baseline version does not apply).
#pragma GCC diagnostic ignored "-Wpsabi"
// W floats (8: one AVX2 register, two SSE ones; 16: one AVX-512 register), their bits and
// comparison masks, and the type of loads and stores.
template <int W>
struct Lanes {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef int32_t Bits __attribute__((vector_size(4 * W)));
  typedef float Unaligned __attribute__((vector_size(4 * W), aligned(4), may_alias));
};
template <typename F>  // the bits type of a float vector type
using BitsOf = typename Lanes<sizeof(F) / 4>::Bits;
constexpr int64_t kGrain = 1 << 15;  // elements per task: ~10 us of work

// mask ? a : b per lane (masks are 0 or -1): a blend where one ISA vector holds the lanes (kBlend),
// else bit operations: GCC splits vector arithmetic wider than the ISA (the baseline's SSE2) into
// halves, but a wide ?: or compare into scalar code.
template <bool kBlend, typename F>
NEQUIP_FAST_SILU_INLINE F select(BitsOf<F> mask, F a, F b) {
  using B = BitsOf<F>;
  if constexpr (kBlend) return mask ? a : b;
  return (F)((mask & (B)a) | (~mask & (B)b));
}

// exp(-|z|) in float lanes from |z|'s bits: -|z| = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite),
// exp(r) by Cephes' expf minimax polynomial, 2^n from the exponent bits. Above |z| = 87.3 (2^n no
// longer normal) the result is 0: z e is then below 1e-35 for every finite z, and an exact 0 keeps
// silu(-inf) and the derivatives at +-inf NaN, as in torch (NaN z stays NaN through the factor z).
// Masks come from integer bits, not float compares (see select).
template <bool kBlend, typename F>
NEQUIP_FAST_SILU_INLINE F exp_minus(BitsOf<F> magnitude) {
  using B = BitsOf<F>;
  const B underflow = (B{} + 0x42ae999a - magnitude) >> 31;  // |z| > 87.3f (or NaN)
  const F x = select<kBlend>(underflow, F{} - 87.3f, (F)(magnitude | INT32_MIN));
  const F shift = F{} + 0x1.8p23f;  // adding it rounds x / ln2 to an integer in the low bits
  const F t = x * 1.44269504088896341f + shift;
  const F n = t - shift;
  F r = x - n * 0.693359375f;  // ln2 split: the high part times n is exact
  r = r - n * -2.12194440e-4f;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const B exponent = ((B)t - (B)shift + 127) << 23;
  return (F)(~underflow & (B)(p * (F)exponent));
}

// s = sigmoid(z) and q = 1 - s from e = exp(-|z|): z >= 0: s = 1 / (1 + e), q = e / (1 + e); z < 0
// swapped (-0 either way: both give 1/2).
template <bool kBlend, typename F>
NEQUIP_FAST_SILU_INLINE void sigmoids(F z, F& s, F& q) {
  const BitsOf<F> bits = (BitsOf<F>)z;
  const BitsOf<F> negative = bits >> 31;
  const F e = exp_minus<kBlend, F>(bits & INT32_MAX);
  const F d = 1.0f / (1.0f + e), p = e * d;
  s = select<kBlend>(negative, p, d);
  q = select<kBlend>(negative, d, p);
}

template <bool kBlend>
NEQUIP_FAST_SILU_INLINE void sigmoids(double z, double& s, double& q) {  // exact: the float64 pair
  const double e = std::exp(-std::fabs(z));
  const double d = 1.0 / (1.0 + e), p = e * d;
  s = std::signbit(z) ? p : d;
  q = std::signbit(z) ? d : p;
}

// The three derivative levels on lanes (V = Lanes) or scalars (V = double).
struct Silu {
  template <bool kBlend, typename V>
  NEQUIP_FAST_SILU_INLINE static void apply(const V* in, V* out) {
    V s, q;
    sigmoids<kBlend>(in[0], s, q);
    out[0] = in[0] * s;
  }
  static constexpr int kIn = 1, kOut = 1;
};

struct SiluGrad {  // (g, z) -> g silu'(z)
  template <bool kBlend, typename V>
  NEQUIP_FAST_SILU_INLINE static void apply(const V* in, V* out) {
    V s, q;
    sigmoids<kBlend>(in[1], s, q);
    out[0] = in[0] * (s * (1.0 + in[1] * q));
  }
  static constexpr int kIn = 2, kOut = 1;
};

struct SiluWithGrad {  // z -> (silu(z), silu'(z)): forces without a graph keep silu'(z) for the backward
  template <bool kBlend, typename V>
  NEQUIP_FAST_SILU_INLINE static void apply(const V* in, V* out) {
    V s, q;
    sigmoids<kBlend>(in[0], s, q);
    out[0] = in[0] * s;
    out[1] = s * (1.0 + in[0] * q);
  }
  static constexpr int kIn = 1, kOut = 2;
};

struct SiluGrad2 {  // (gg, g, z) -> (gg silu'(z), gg g silu''(z))
  template <bool kBlend, typename V>
  NEQUIP_FAST_SILU_INLINE static void apply(const V* in, V* out) {
    const V z = in[2];
    V s, q;
    sigmoids<kBlend>(z, s, q);
    out[0] = in[0] * (s * (1.0 + z * q));
    out[1] = in[0] * in[1] * (s * q * (2.0 + z * (q - s)));
  }
  static constexpr int kIn = 3, kOut = 2;
};

// W elements from i.
template <bool kBlend, typename Op, int W>
NEQUIP_FAST_SILU_INLINE void step_f32(const float* const* in, float* const* out, int64_t i) {
  using U = typename Lanes<W>::Unaligned;
  typename Lanes<W>::F x[Op::kIn], y[Op::kOut];
#pragma GCC unroll 4
  for (int k = 0; k < Op::kIn; ++k) x[k] = *reinterpret_cast<const U*>(in[k] + i);
  Op::template apply<kBlend>(x, y);
#pragma GCC unroll 4
  for (int k = 0; k < Op::kOut; ++k) *reinterpret_cast<U*>(out[k] + i) = y[k];
}

// Elements [begin, end): whole steps, then the tail through the same code (zero padded).
template <bool kBlend, typename Op, int W>
NEQUIP_FAST_SILU_INLINE void run_f32(const float* const* in, float* const* out, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + W <= end; i += W) step_f32<kBlend, Op, W>(in, out, i);
  if (i == end) return;
  float in_tail[Op::kIn][W] = {}, out_tail[Op::kOut][W];
  const float* in_ptrs[Op::kIn];
  float* out_ptrs[Op::kOut];
  for (int k = 0; k < Op::kIn; ++k) {
    std::memcpy(in_tail[k], in[k] + i, (end - i) * sizeof(float));
    in_ptrs[k] = in_tail[k];
  }
  for (int k = 0; k < Op::kOut; ++k) out_ptrs[k] = out_tail[k];
  step_f32<kBlend, Op, W>(in_ptrs, out_ptrs, 0);
  for (int k = 0; k < Op::kOut; ++k) std::memcpy(out[k] + i, out_tail[k], (end - i) * sizeof(float));
}

template <typename Op>
NEQUIP_FAST_SILU_INLINE void run_f64(const double* const* in, double* const* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    double x[Op::kIn], y[Op::kOut];
    for (int k = 0; k < Op::kIn; ++k) x[k] = in[k][i];
    Op::template apply<false>(x, y);
    for (int k = 0; k < Op::kOut; ++k) out[k][i] = y[k];
  }
}

// One version per ISA level, picked at load time (ifunc): AVX-512 (run by the suite on a Zen 5) and
// AVX2+FMA blend, the baseline x86-64 (SSE2) selects by bits; the wheel stays portable without -march.
// -DNEQUIP_FAST_BASELINE_ONLY builds the baseline alone (tests/test_fused_ops.py checks that build).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NEQUIP_FAST_BASELINE_ONLY)
#define NEQUIP_FAST_SILU_KERNEL(NAME, OP)                                                                  \
  __attribute__((target("default"))) void NAME(const float* const* in, float* const* out, int64_t b,       \
                                               int64_t e) {                                               \
    run_f32<false, OP, 8>(in, out, b, e);                                                                  \
  }                                                                                                        \
  __attribute__((target("arch=x86-64-v3"))) void NAME(const float* const* in, float* const* out, int64_t b, \
                                                      int64_t e) {                                        \
    run_f32<true, OP, 8>(in, out, b, e);                                                                   \
  }                                                                                                        \
  __attribute__((target("arch=x86-64-v4"))) void NAME(const float* const* in, float* const* out, int64_t b, \
                                                      int64_t e) {                                        \
    run_f32<true, OP, 16>(in, out, b, e);                                                                  \
  }
#else
#define NEQUIP_FAST_SILU_KERNEL(NAME, OP) \
  void NAME(const float* const* in, float* const* out, int64_t b, int64_t e) { run_f32<false, OP, 8>(in, out, b, e); }
#endif
NEQUIP_FAST_SILU_KERNEL(silu_f32, Silu)
NEQUIP_FAST_SILU_KERNEL(silu_grad_f32, SiluGrad)
NEQUIP_FAST_SILU_KERNEL(silu_grad2_f32, SiluGrad2)
NEQUIP_FAST_SILU_KERNEL(silu_with_grad_f32, SiluWithGrad)
void silu_grad2_f64(const double* const* in, double* const* out, int64_t b, int64_t e) {
  run_f64<SiluGrad2>(in, out, b, e);
}

using KernelF32 = void (*)(const float* const*, float* const*, int64_t, int64_t);
using KernelF64 = void (*)(const double* const*, double* const*, int64_t, int64_t);

// Checks the operands (same shape and dtype, float32 or float64), and runs the kernel of their dtype
// over contiguous copies in parallel; returns the outputs, shaped like z (the last operand).
template <int kIn, int kOut>
std::array<at::Tensor, kOut> elementwise(const char* name, const std::array<at::Tensor, kIn>& operands,
                                         KernelF32 f32, KernelF64 f64) {
  const at::Tensor& z = operands[kIn - 1];
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, "nequip_fast ", name,
              ": float32 or float64 expected, got ", z.scalar_type());
  std::array<at::Tensor, kIn> in;
  for (int k = 0; k < kIn; ++k) {
    TORCH_CHECK(operands[k].scalar_type() == z.scalar_type() && operands[k].sizes() == z.sizes(), "nequip_fast ",
                name, ": operand ", k, " is ", operands[k].scalar_type(), operands[k].sizes(), ", expected ",
                z.scalar_type(), z.sizes(), " (like z)");
    in[k] = operands[k].contiguous();
  }
  std::array<at::Tensor, kOut> out;
  for (int k = 0; k < kOut; ++k) out[k] = at::empty_like(in[kIn - 1], at::MemoryFormat::Contiguous);
  const int64_t n = z.numel();
  if (z.scalar_type() == at::kFloat) {
    const float* ip[kIn];
    float* op[kOut];
    for (int k = 0; k < kIn; ++k) ip[k] = in[k].template data_ptr<float>();
    for (int k = 0; k < kOut; ++k) op[k] = out[k].template data_ptr<float>();
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { f32(ip, op, begin, end); });
  } else {
    const double* ip[kIn];
    double* op[kOut];
    for (int k = 0; k < kIn; ++k) ip[k] = in[k].template data_ptr<double>();
    for (int k = 0; k < kOut; ++k) op[k] = out[k].template data_ptr<double>();
    TORCH_INTERNAL_ASSERT(f64 != nullptr, "nequip_fast ", name, ": no float64 kernel");
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { f64(ip, op, begin, end); });
  }
  return out;
}

// float64 silu and its backward are ATen's own kernels (vectorised, torch's values): a pass with
// the scalar std::exp measured 4x slower than them, and so made a float64 E+F 25% slower. Only the
// double backward's pair gains from fusion in float64 (the pass replaces ~9).
at::Tensor silu_cpu(const at::Tensor& z) {
  if (z.scalar_type() == at::kDouble) return at::silu(z);
  return elementwise<1, 1>("silu", {z}, silu_f32, nullptr)[0];
}

at::Tensor silu_grad_cpu(const at::Tensor& g, const at::Tensor& z) {
  if (z.scalar_type() == at::kDouble && g.scalar_type() == at::kDouble && g.sizes() == z.sizes())
    return at::silu_backward(g, z);
  return elementwise<2, 1>("silu_grad", {g, z}, silu_grad_f32, nullptr)[0];
}

std::tuple<at::Tensor, at::Tensor> silu_grad2_cpu(const at::Tensor& gg, const at::Tensor& g, const at::Tensor& z) {
  auto out = elementwise<3, 2>("silu_grad2", {gg, g, z}, silu_grad2_f32, silu_grad2_f64);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> silu_with_grad_cpu(const at::Tensor& z) {
  // float32 only: its caller (ops/matmul.py: silu_matmul) takes the oneDNN path, which is float32
  auto out = elementwise<1, 2>("silu_with_grad", {z}, silu_with_grad_f32, nullptr);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(nequip_fast, CPU, m) {
  m.impl("silu", &silu_cpu);
  m.impl("silu_grad", &silu_grad_cpu);
  m.impl("silu_grad2", &silu_grad2_cpu);
  m.impl("silu_with_grad", &silu_with_grad_cpu);
}

}  // namespace nequip_fast
