// The CPU kernel builds of the compiled ops. The vectorised kernels are compiled once per CPU
// capability (DEFAULT, AVX2, AVX512: cpu/isa/*_<isa>.cpp, setup.py) and picked at run time from
// ATen's capability (at::get_cpu_capability(), which ATEN_CPU_CAPABILITY can lower). Used by
// na2d (which has its own choice on top, na2d_kernels.h: na2d_build), the ghost op and the
// grouped convolution.
#pragma once

namespace mmattn {
namespace cpu {

enum class CpuBuild : int { DEFAULT, AVX2, AVX512 };

// The build that runs: ATen's capability mapped onto the builds this extension has, read once.
CpuBuild cpu_build();

// AMD Zen 4 (CPUID family 0x19 with AVX-512): 512-bit instructions run as two 256-bit halves.
// Not cached: callers keep the answer.
bool avx512_split_into_256_bit_halves();

// "AVX512", "AVX2" or "DEFAULT".
const char* cpu_build_name(CpuBuild build);

// cpu_build_name(cpu_build()) (mmattn._C.cpu_kernels()).
const char* cpu_kernels();

}  // namespace cpu
}  // namespace mmattn
