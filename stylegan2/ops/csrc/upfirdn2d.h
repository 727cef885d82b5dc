// upfirdn2d, one output sample at a time: upsample by zero insertion, pad
// (negative pads crop), convolve with a 2-D FIR kernel, keep every down-th
// sample. Used by both the CPU loop and the CUDA kernel.
#pragma once

#include "common.h"

namespace ipl {

struct Upfirdn2dParams {
  int64_t in_h, in_w;          // input image size
  int64_t out_h, out_w;        // output image size
  int64_t kernel_h, kernel_w;  // FIR kernel size
  int64_t upx, upy;            // upsampling factors
  int64_t downx, downy;        // downsampling factors
  int64_t padx0, pady0;        // leading pads; the trailing pads only set the output size
};

// Output sample (oy, ox) of one (H, W) plane, accumulated in acc_t.
//
// In the upsampled image (before padding), the filter window of this output
// starts at (wy, wx) and spans kernel_h x kernel_w positions. Only positions
// that are multiples of up hold input samples, so rather than walking every
// tap we walk the input rows/columns whose upsampled position falls inside the
// window: this skips the inserted zeros and everything outside the image.
template <typename scalar_t, typename acc_t>
IPL_HOST_DEVICE acc_t upfirdn2d_sample(const scalar_t* plane, const scalar_t* f,
                                       const Upfirdn2dParams& p, int64_t oy, int64_t ox) {
  const int64_t wy = oy * p.downy - p.pady0;
  const int64_t wx = ox * p.downx - p.padx0;

  int64_t iy_begin = ceil_div(wy, p.upy);
  int64_t iy_end = floor_div(wy + p.kernel_h - 1, p.upy) + 1;
  int64_t ix_begin = ceil_div(wx, p.upx);
  int64_t ix_end = floor_div(wx + p.kernel_w - 1, p.upx) + 1;
  iy_begin = iy_begin < 0 ? 0 : iy_begin;
  ix_begin = ix_begin < 0 ? 0 : ix_begin;
  iy_end = iy_end > p.in_h ? p.in_h : iy_end;
  ix_end = ix_end > p.in_w ? p.in_w : ix_end;

  acc_t acc = acc_t(0);
  for (int64_t iy = iy_begin; iy < iy_end; ++iy) {
    // Tap t = iy * upy - wy of the window meets f[kernel_h - 1 - t]: a true
    // convolution, i.e. a correlation with the flipped kernel.
    const int64_t fy = p.kernel_h - 1 - (iy * p.upy - wy);
    const scalar_t* x_row = plane + iy * p.in_w;
    const scalar_t* f_row = f + fy * p.kernel_w;
    for (int64_t ix = ix_begin; ix < ix_end; ++ix) {
      const int64_t fx = p.kernel_w - 1 - (ix * p.upx - wx);
      acc += static_cast<acc_t>(x_row[ix]) * static_cast<acc_t>(f_row[fx]);
    }
  }
  return acc;
}

}  // namespace ipl
