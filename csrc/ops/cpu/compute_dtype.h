// The dtypes and layouts the CPU kernels compute in, shared by dw_conv2d, pw_conv2d and pool2d: float and double
// natively, bfloat16 and half through float (converted once per call, the result rounded once); always NCHW, the
// result returned in channels_last when the input's suggested memory format is (the fake kernels say the same,
// proxynas_fast/ops/_layout.py).
#pragma once
#include <ATen/ATen.h>

namespace proxynas_fast {

inline at::ScalarType compute_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble ? t : at::kFloat;
}

// A kernel's NCHW result as the op's output for `input`: in input's dtype, and channels_last where input suggests
// it. An undefined tensor (a gradient not asked for) stays undefined.
inline at::Tensor as_output_for(const at::Tensor& result, const at::Tensor& input) {
  if (!result.defined()) return result;
  at::Tensor out = result.to(input.scalar_type());
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? out.contiguous(at::MemoryFormat::ChannelsLast)
             : out;
}

// A weight gradient in the weight's dtype (undefined stays undefined).
inline at::Tensor as_dtype_of(const at::Tensor& result, const at::Tensor& like) {
  return result.defined() ? result.to(like.scalar_type()) : result;
}

}  // namespace proxynas_fast
