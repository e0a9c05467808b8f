// The CPU kernel builds of the compiled ops: which one runs on this machine (capability.h).
#include "capability.h"

#include <ATen/Version.h>

#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace mmattn {
namespace cpu {

// The kernel build that runs: ATen's CPU capability (ATEN_CPU_CAPABILITY can lower it), read
// once, mapped onto the builds this extension has.
CpuBuild cpu_build() {
  static const CpuBuild build = [] {
    const std::string cap = at::get_cpu_capability();
#if defined(MMATTN_HAVE_AVX512)
    if (cap == "AVX512") return CpuBuild::AVX512;
#endif
#if defined(MMATTN_HAVE_AVX2)
    if (cap == "AVX2" || cap == "AVX512") return CpuBuild::AVX2;
#endif
    return CpuBuild::DEFAULT;
  }();
  return build;
}

bool avx512_split_into_256_bit_halves() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;  // (callers cache the answer)
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  // "AuthenticAMD" in ebx, edx, ecx
  const bool amd = ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;
  if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  unsigned family = (eax >> 8) & 0xfu;
  if (family == 0xfu) family += (eax >> 20) & 0xffu;
  return family == 0x19u;  // Zen 3 (no AVX-512) and Zen 4
#else
  return false;
#endif
}

const char* cpu_build_name(CpuBuild build) {
  switch (build) {
    case CpuBuild::AVX512: return "AVX512";
    case CpuBuild::AVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

const char* cpu_kernels() { return cpu_build_name(cpu_build()); }

}  // namespace cpu
}  // namespace mmattn
