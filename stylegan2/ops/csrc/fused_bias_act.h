// Bias + leaky ReLU + gain, one element at a time, and its gradient. Used by
// both the CPU loop and the CUDA kernel.
#pragma once

#include "common.h"

namespace ipl {

// Which saved tensor the gradient reads to decide on which side of the kink an
// element was. The output is free to keep (the next layer saves it anyway) but
// its sign gives the side only for a non-negative slope; the Python wrapper
// picks the input otherwise.
enum BiasActRef : int64_t {
  kRefInput = 0,           // ref = x before the bias: positive side iff x + b > 0
  kRefOutputPosScale = 1,  // ref = output, scale >= 0: positive side iff out > 0
  kRefOutputNegScale = 2,  // ref = output, scale < 0: positive side iff out < 0
};

// Element i of an (N, C, ...) tensor with `inner` elements per (n, c) belongs
// to channel (i / inner) % channels.
IPL_HOST_DEVICE int64_t channel_of(int64_t i, int64_t channels, int64_t inner) {
  return (i / inner) % channels;
}

// leaky_relu(x + b) * scale; b == nullptr means no bias.
template <typename scalar_t, typename acc_t>
IPL_HOST_DEVICE scalar_t bias_act_element(const scalar_t* x, const scalar_t* b, int64_t i,
                                          int64_t channels, int64_t inner, acc_t slope,
                                          acc_t scale) {
  acc_t v = static_cast<acc_t>(x[i]);
  if (b != nullptr) {
    v += static_cast<acc_t>(b[channel_of(i, channels, inner)]);
  }
  return static_cast<scalar_t>((v > acc_t(0) ? v : v * slope) * scale);
}

// d(loss)/d(x + b) = dy * scale on the positive side, dy * slope * scale on the
// other one (the kink itself counts as the negative side, as in PyTorch).
template <typename scalar_t, typename acc_t>
IPL_HOST_DEVICE scalar_t bias_act_grad_element(const scalar_t* dy, const scalar_t* ref,
                                               const scalar_t* b, int64_t i, int64_t channels,
                                               int64_t inner, int64_t ref_kind, acc_t slope,
                                               acc_t scale) {
  const acc_t r = static_cast<acc_t>(ref[i]);
  bool positive;
  if (ref_kind == kRefInput) {
    const acc_t bias =
        b != nullptr ? static_cast<acc_t>(b[channel_of(i, channels, inner)]) : acc_t(0);
    positive = r + bias > acc_t(0);
  } else if (ref_kind == kRefOutputPosScale) {
    positive = r > acc_t(0);
  } else {
    positive = r < acc_t(0);
  }
  return static_cast<scalar_t>(static_cast<acc_t>(dy[i]) * (positive ? scale : slope * scale));
}

}  // namespace ipl
