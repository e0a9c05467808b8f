// ghost_head_aggregate row kernels for CPU capability AVX2 (built with its -m flags by setup.py).
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "../ghost_vec.h"
