// ghost_head_aggregate row kernels for CPU capability AVX512 (built with its -m flags by setup.py).
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "../ghost_vec.h"
