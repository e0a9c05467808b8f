// na2d row kernels for CPU capability AVX2; built with the matching -m flags by setup.py
// (BuildExtensionWithRecord compiles cpu/isa/*_avx2.cpp with them).
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "../na2d_vec.h"
