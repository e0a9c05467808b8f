// na2d row kernels for CPU capability AVX512; built with the matching -m flags by setup.py
// (BuildExtensionWithRecord compiles cpu/isa/*_avx512.cpp with them).
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "../na2d_vec.h"
