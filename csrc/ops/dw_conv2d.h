// Shape logic shared by the CPU and CUDA depthwise-convolution kernels.
#pragma once
#include <ATen/ATen.h>

namespace proxynas_fast {

struct DwConvGeometry {
  int64_t N, C, H, W;  // input
  int64_t M;           // channel multiplier (output channels = M * C)
  int64_t KH, KW, SH, SW, PH, PW, DH, DW;
  int64_t Ho, Wo;
};

inline DwConvGeometry dw_conv_geometry(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, "dw_conv2d: input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1, "dw_conv2d: weight must be [M*C, 1, KH, KW], got ",
              weight.sizes());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "dw_conv2d: stride, padding and dilation take 2 values each");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "dw_conv2d: input (", input.scalar_type(),
              ") and weight (", weight.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(input.device() == weight.device(), "dw_conv2d: input and weight must be on the same device");
  DwConvGeometry g;
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  TORCH_CHECK(g.C > 0 && weight.size(0) % g.C == 0, "dw_conv2d: weight has ", weight.size(0),
              " output channels, not a multiple of the ", g.C, " input channels");
  g.M = weight.size(0) / g.C;
  g.KH = weight.size(2);
  g.KW = weight.size(3);
  g.SH = stride[0];
  g.SW = stride[1];
  g.PH = padding[0];
  g.PW = padding[1];
  g.DH = dilation[0];
  g.DW = dilation[1];
  TORCH_CHECK(g.SH > 0 && g.SW > 0 && g.DH > 0 && g.DW > 0, "dw_conv2d: stride and dilation must be positive");
  TORCH_CHECK(g.PH >= 0 && g.PW >= 0, "dw_conv2d: padding must be non-negative");
  // Floor division like conv2d, the fake kernel and every size the schema accepts: a dilated kernel larger than
  // the padded input is an error (C++ division truncates toward zero, so a negative span would give Ho = 1).
  TORCH_CHECK_VALUE(g.KH > 0 && g.KW > 0, "dw_conv2d: kernel must be at least 1x1, got ", weight.sizes());
  const int64_t span_h = g.H + 2 * g.PH - g.DH * (g.KH - 1) - 1, span_w = g.W + 2 * g.PW - g.DW * (g.KW - 1) - 1;
  TORCH_CHECK_VALUE(span_h >= 0 && span_w >= 0, "dw_conv2d: output would be empty: the dilated kernel (",
                    g.DH * (g.KH - 1) + 1, "x", g.DW * (g.KW - 1) + 1, ") is larger than the padded input (",
                    g.H + 2 * g.PH, "x", g.W + 2 * g.PW, ")");
  g.Ho = span_h / g.SH + 1;
  g.Wo = span_w / g.SW + 1;
  return g;
}

}  // namespace proxynas_fast
