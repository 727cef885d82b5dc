// CUDA launches of the fused bias + leaky ReLU + gain op and of its gradient:
// one thread per element (grid-stride loop), the arithmetic itself is in
// fused_bias_act.h.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "fused_bias_act.h"

namespace ipl {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU; larger tensors loop inside the kernel.
constexpr int64_t kMaxBlocks = 65536;

int64_t blocks_for(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
}

template <typename scalar_t>
__global__ void fused_bias_act_kernel(const scalar_t* __restrict__ x,
                                      const scalar_t* __restrict__ b, scalar_t* __restrict__ y,
                                      const int64_t total, const int64_t channels,
                                      const int64_t inner, const at::opmath_type<scalar_t> slope,
                                      const at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    y[i] = bias_act_element<scalar_t, acc_t>(x, b, i, channels, inner, slope, scale);
  }
}

template <typename scalar_t>
__global__ void fused_bias_act_grad_kernel(const scalar_t* __restrict__ dy,
                                           const scalar_t* __restrict__ ref,
                                           const scalar_t* __restrict__ b,
                                           scalar_t* __restrict__ dx, const int64_t total,
                                           const int64_t channels, const int64_t inner,
                                           const int64_t ref_kind,
                                           const at::opmath_type<scalar_t> slope,
                                           const at::opmath_type<scalar_t> scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    dx[i] = bias_act_grad_element<scalar_t, acc_t>(dy, ref, b, i, channels, inner, ref_kind,
                                                   slope, scale);
  }
}

}  // namespace

void fused_bias_act_cuda(const at::Tensor& x, const at::Tensor& b, at::Tensor& y,
                         int64_t channels, int64_t inner, double slope, double scale) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = x.numel();
  const auto blocks = static_cast<unsigned int>(blocks_for(total));
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_bias_act_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    fused_bias_act_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), b.numel() > 0 ? b.const_data_ptr<scalar_t>() : nullptr,
        y.mutable_data_ptr<scalar_t>(), total, channels, inner, static_cast<acc_t>(slope),
        static_cast<acc_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void fused_bias_act_grad_cuda(const at::Tensor& dy, const at::Tensor& ref, const at::Tensor& b,
                              at::Tensor& dx, int64_t channels, int64_t inner, int64_t ref_kind,
                              double slope, double scale) {
  const c10::cuda::CUDAGuard device_guard(dy.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = dy.numel();
  const auto blocks = static_cast<unsigned int>(blocks_for(total));
  const auto dtype = dy.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_bias_act_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    fused_bias_act_grad_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        dy.const_data_ptr<scalar_t>(), ref.const_data_ptr<scalar_t>(),
        b.numel() > 0 ? b.const_data_ptr<scalar_t>() : nullptr, dx.mutable_data_ptr<scalar_t>(),
        total, channels, inner, ref_kind, static_cast<acc_t>(slope), static_cast<acc_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ipl
