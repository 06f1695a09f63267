// Schemas of the depthwise convolution with a channel multiplier (see ops/cpu/dw_conv2d_kernel.cpp).
//
// input [N, C, H, W], weight [M*C, 1, KH, KW] -> output [N, M*C, Ho, Wo]; output channel m*C + c reads input
// channel c (multiplier-major, so the M groups of C channels are contiguous blocks: the fused DARTS cell puts the
// M edges that read one node into those blocks).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  m.def("dw_conv2d(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "dw_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, bool[2] output_mask) -> (Tensor, Tensor)");
}
