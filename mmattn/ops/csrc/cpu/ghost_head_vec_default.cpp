// ghost_head_aggregate row kernels for ATen's DEFAULT CPU capability (generic Vectorized<T>).
#define CPU_CAPABILITY DEFAULT
#include "ghost_vec.h"
