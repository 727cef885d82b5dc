// Helpers shared by the CPU loops (.cpp, compiled by the C++ compiler) and the
// CUDA kernels (.cu, compiled by nvcc). Keeping the per-element arithmetic in
// headers means the code the GPU runs is the very code the CPU tests exercise.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define IPL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IPL_HOST_DEVICE inline
#endif

namespace ipl {

// Floor of a / b for b > 0 and a of either sign (C++ division truncates
// towards zero, which is wrong for negative a).
IPL_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

// Ceiling of a / b for b > 0 and a of either sign.
IPL_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) {
  return floor_div(a + b - 1, b);
}

}  // namespace ipl
