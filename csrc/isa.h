// The x86-64 ISA level of this CPU, for kernels with one version per level (conv_cpu.cpp,
// matmul_cpu.cpp): picked at run time, so the wheel stays portable without -march.
#pragma once

#include <algorithm>
#include <cstdlib>

// Per-ISA versions need GCC's target attributes on x86-64; -DNEQUIP_FAST_BASELINE_ONLY builds the
// baseline alone (tests/test_fused_ops.py checks that build).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(NEQUIP_FAST_BASELINE_ONLY)
#define NEQUIP_FAST_ISA_LEVELS 1
#else
#define NEQUIP_FAST_ISA_LEVELS 0
#endif

namespace nequip_fast {

// 4: x86-64-v4 (AVX-512 F, VL, BW, DQ, CD), 3: x86-64-v3 (AVX2, FMA, BMI, ...), 0: the baseline.
// NEQUIP_FAST_CPU_LEVEL caps it (tests run the lower versions on a machine with the higher ones).
inline int isa_level() {
  static const int level = [] {
    int cap = 4;
    if (const char* env = std::getenv("NEQUIP_FAST_CPU_LEVEL")) cap = std::atoi(env);
#if NEQUIP_FAST_ISA_LEVELS
    __builtin_cpu_init();
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe") &&
                    __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("sse4.2");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512cd");
    return std::min(cap, v4 ? 4 : v3 ? 3 : 0);
#else
    (void)cap;
    return 0;
#endif
  }();
  return level;
}

}  // namespace nequip_fast
