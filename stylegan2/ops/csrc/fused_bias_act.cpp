// Python binding, argument checks and CPU loops of the fused bias + leaky ReLU +
// gain op and of its gradient. The CUDA launches are in fused_bias_act_kernel.cu.
// The CPU loops are not used by stylegan2.ops at run time (the pure-PyTorch
// reference serves the CPU); they let the arithmetic shared with the GPU kernels
// be tested on machines without one.

#include <torch/extension.h>

#include <ATen/OpMathType.h>

#include "fused_bias_act.h"

namespace ipl {

// Defined in fused_bias_act_kernel.cu; b may be empty (no bias).
void fused_bias_act_cuda(const at::Tensor& x, const at::Tensor& b, at::Tensor& y,
                         int64_t channels, int64_t inner, double slope, double scale);
void fused_bias_act_grad_cuda(const at::Tensor& dy, const at::Tensor& ref, const at::Tensor& b,
                              at::Tensor& dx, int64_t channels, int64_t inner, int64_t ref_kind,
                              double slope, double scale);

namespace {

// Channel count and elements per (n, c) of x seen as (N, C, ...).
std::pair<int64_t, int64_t> channel_layout(const at::Tensor& x) {
  const int64_t channels = x.dim() >= 2 ? x.size(1) : 1;
  int64_t inner = 1;
  for (int64_t d = 2; d < x.dim(); ++d) {
    inner *= x.size(d);
  }
  return {channels, inner};
}

at::Tensor checked_bias(const at::Tensor& x, const at::Tensor& b) {
  if (b.numel() == 0) {
    return b;
  }
  TORCH_CHECK(b.dim() == 1 && x.dim() >= 2 && b.size(0) == x.size(1),
              "fused_bias_act: bias of shape ", b.sizes(),
              " does not match the channel dimension of an input of shape ", x.sizes());
  TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(),
              "fused_bias_act: bias must have the device and dtype of x; got ", b.device(), " ",
              b.scalar_type(), " for x on ", x.device(), " ", x.scalar_type());
  return b.contiguous();
}

}  // namespace

at::Tensor fused_bias_act(const at::Tensor& x_in, const at::Tensor& b_in, double slope,
                          double scale) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor b = checked_bias(x, b_in);
  const auto [channels, inner] = channel_layout(x);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) {
    return y;
  }
  if (x.is_cuda()) {
    fused_bias_act_cuda(x, b, y, channels, inner, slope, scale);
    return y;
  }
  TORCH_CHECK(x.is_cpu(), "fused_bias_act: unsupported device ", x.device());
  const auto dtype = x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_bias_act_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* b_data = b.numel() > 0 ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        y_data[i] = bias_act_element<scalar_t, acc_t>(x_data, b_data, i, channels, inner,
                                                      static_cast<acc_t>(slope),
                                                      static_cast<acc_t>(scale));
      }
    });
  });
  return y;
}

at::Tensor fused_bias_act_grad(const at::Tensor& dy_in, const at::Tensor& ref_in,
                               const at::Tensor& b_in, int64_t ref_kind, double slope,
                               double scale) {
  TORCH_CHECK(dy_in.sizes() == ref_in.sizes(), "fused_bias_act_grad: dy of shape ", dy_in.sizes(),
              " and the saved tensor of shape ", ref_in.sizes(), " differ");
  TORCH_CHECK(dy_in.device() == ref_in.device() && dy_in.scalar_type() == ref_in.scalar_type(),
              "fused_bias_act_grad: dy and the saved tensor must share device and dtype");
  TORCH_CHECK(ref_kind == kRefInput || ref_kind == kRefOutputPosScale ||
                  ref_kind == kRefOutputNegScale,
              "fused_bias_act_grad: ref_kind must be 0 (input), 1 (output, scale >= 0) or "
              "2 (output, scale < 0), got ", ref_kind);
  const at::Tensor dy = dy_in.contiguous();
  const at::Tensor ref = ref_in.contiguous();
  const at::Tensor b = checked_bias(dy, b_in);
  const auto [channels, inner] = channel_layout(dy);
  at::Tensor dx = at::empty_like(dy);
  if (dy.numel() == 0) {
    return dx;
  }
  if (dy.is_cuda()) {
    fused_bias_act_grad_cuda(dy, ref, b, dx, channels, inner, ref_kind, slope, scale);
    return dx;
  }
  TORCH_CHECK(dy.is_cpu(), "fused_bias_act_grad: unsupported device ", dy.device());
  const auto dtype = dy.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fused_bias_act_grad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    const scalar_t* ref_data = ref.const_data_ptr<scalar_t>();
    const scalar_t* b_data = b.numel() > 0 ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, dy.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        dx_data[i] = bias_act_grad_element<scalar_t, acc_t>(
            dy_data, ref_data, b_data, i, channels, inner, ref_kind, static_cast<acc_t>(slope),
            static_cast<acc_t>(scale));
      }
    });
  });
  return dx;
}

}  // namespace ipl

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_bias_act", &ipl::fused_bias_act,
        "leaky_relu(x + b, slope) * scale with b broadcast over dim 1; an empty b means no bias.",
        py::arg("x"), py::arg("b"), py::arg("slope"), py::arg("scale"));
  m.def("fused_bias_act_grad", &ipl::fused_bias_act_grad,
        "Gradient w.r.t. x + b of fused_bias_act, given dy and the saved tensor ref "
        "(ref_kind: 0 = input x before the bias, 1 = output with scale >= 0, "
        "2 = output with scale < 0).",
        py::arg("dy"), py::arg("ref"), py::arg("b"), py::arg("ref_kind"), py::arg("slope"),
        py::arg("scale"));
}
