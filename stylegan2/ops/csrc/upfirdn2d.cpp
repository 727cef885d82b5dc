// Python binding, argument checks and CPU loop of upfirdn2d. The CUDA launch is
// in upfirdn2d_kernel.cu. The CPU loop is not used by stylegan2.ops at run time
// (the pure-PyTorch reference serves the CPU); it exists so that the index
// arithmetic shared with the GPU kernel can be tested on machines without one.

#include <torch/extension.h>

#include <ATen/OpMathType.h>

#include "upfirdn2d.h"

namespace ipl {

// Defined in upfirdn2d_kernel.cu.
void upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, at::Tensor& y,
                    const Upfirdn2dParams& p);

namespace {

void upfirdn2d_cpu(const at::Tensor& x, const at::Tensor& f, at::Tensor& y,
                   const Upfirdn2dParams& p) {
  const int64_t planes = x.size(0) * x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* f_data = f.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* x_plane = x_data + plane * p.in_h * p.in_w;
        scalar_t* y_plane = y_data + plane * p.out_h * p.out_w;
        for (int64_t oy = 0; oy < p.out_h; ++oy) {
          for (int64_t ox = 0; ox < p.out_w; ++ox) {
            const acc_t sample = upfirdn2d_sample<scalar_t, acc_t>(x_plane, f_data, p, oy, ox);
            y_plane[oy * p.out_w + ox] = static_cast<scalar_t>(sample);
          }
        }
      }
    });
  });
}

}  // namespace

at::Tensor upfirdn2d(const at::Tensor& x_in, const at::Tensor& f_in, int64_t upx, int64_t upy,
                     int64_t downx, int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0,
                     int64_t pady1) {
  TORCH_CHECK(x_in.dim() == 4, "upfirdn2d: x must have shape (N, C, H, W), got ", x_in.sizes());
  TORCH_CHECK(f_in.dim() == 2 && f_in.numel() > 0,
              "upfirdn2d: f must be a non-empty (kh, kw) kernel, got ", f_in.sizes());
  TORCH_CHECK(x_in.device() == f_in.device(), "upfirdn2d: x is on ", x_in.device(), " but f is on ",
              f_in.device(), "; move f to x.device");
  TORCH_CHECK(x_in.scalar_type() == f_in.scalar_type(), "upfirdn2d: x is ", x_in.scalar_type(),
              " but f is ", f_in.scalar_type(), "; cast f to x.dtype");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1,
              "upfirdn2d: up and down factors must be >= 1, got up=(", upx, ", ", upy, "), down=(",
              downx, ", ", downy, ")");

  const at::Tensor x = x_in.contiguous();
  const at::Tensor f = f_in.contiguous();

  Upfirdn2dParams p;
  p.in_h = x.size(2);
  p.in_w = x.size(3);
  p.kernel_h = f.size(0);
  p.kernel_w = f.size(1);
  p.upx = upx;
  p.upy = upy;
  p.downx = downx;
  p.downy = downy;
  p.padx0 = padx0;
  p.pady0 = pady0;

  const int64_t padded_h = p.in_h * upy + pady0 + pady1;
  const int64_t padded_w = p.in_w * upx + padx0 + padx1;
  TORCH_CHECK(padded_h >= p.kernel_h && padded_w >= p.kernel_w,
              "upfirdn2d: the upsampled and padded input (", padded_h, ", ", padded_w,
              ") is smaller than the kernel (", p.kernel_h, ", ", p.kernel_w, ")");
  p.out_h = (padded_h - p.kernel_h) / downy + 1;
  p.out_w = (padded_w - p.kernel_w) / downx + 1;

  at::Tensor y = at::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options());
  if (y.numel() == 0) {
    return y;
  }
  if (x.is_cuda()) {
    upfirdn2d_cuda(x, f, y, p);
  } else {
    TORCH_CHECK(x.is_cpu(), "upfirdn2d: unsupported device ", x.device());
    upfirdn2d_cpu(x, f, y, p);
  }
  return y;
}

}  // namespace ipl

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &ipl::upfirdn2d,
        "Upsample by zero insertion, pad (negative crops), convolve with the 2-D kernel f "
        "(true convolution) and keep every down-th sample of (N, C, H, W) images. "
        "f must have the dtype and device of x.",
        py::arg("x"), py::arg("f"), py::arg("upx"), py::arg("upy"), py::arg("downx"),
        py::arg("downy"), py::arg("padx0"), py::arg("padx1"), py::arg("pady0"), py::arg("pady1"));
}
