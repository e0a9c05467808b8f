// Portability macros shared by the CPU (C++) and CUDA translation units.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MMATTN_HD __host__ __device__ __forceinline__
#else
#define MMATTN_HD inline
#endif
