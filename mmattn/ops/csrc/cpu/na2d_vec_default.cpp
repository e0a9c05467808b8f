// na2d row kernels for ATen's DEFAULT CPU capability (the generic Vectorized<T>, no -m flags).
#define CPU_CAPABILITY DEFAULT
#include "na2d_vec.h"
