// CUDA launch of upfirdn2d: one thread per output sample (grid-stride loop),
// the arithmetic itself is upfirdn2d_sample() in upfirdn2d.h.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "upfirdn2d.h"

namespace ipl {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU; larger outputs loop inside the kernel.
constexpr int64_t kMaxBlocks = 65536;

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ f,
                                 scalar_t* __restrict__ y, const Upfirdn2dParams p,
                                 const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t ox = i % p.out_w;
    const int64_t oy = (i / p.out_w) % p.out_h;
    const int64_t plane = i / (p.out_w * p.out_h);
    y[i] = static_cast<scalar_t>(
        upfirdn2d_sample<scalar_t, acc_t>(x + plane * p.in_h * p.in_w, f, p, oy, ox));
  }
}

}  // namespace

void upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, at::Tensor& y,
                    const Upfirdn2dParams& p) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = y.numel();
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    upfirdn2d_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
        p, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ipl
