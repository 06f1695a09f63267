// Schemas of the 2-D max / average pooling used by the fused DARTS cell (see ops/cpu/pool2d_kernel.cpp).
//
// input [N, C, H, W] -> [N, C, Ho, Wo], floor output size, padding ignored by the average (the divisor counts
// only input positions: PyTorch's count_include_pad=False, as in DARTS' avg_pool_3x3). Max pooling propagates
// NaN. The backward of max pooling takes the forward output instead of saved int64 indices (the winning tap is
// the first in row-major window order that equals it), so it keeps no extra tensor.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  m.def("pool2d(Tensor input, bool is_max, int[2] kernel, int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "pool2d_backward(Tensor grad_output, Tensor input, Tensor output, bool is_max, int[2] kernel, int[2] stride, "
      "int[2] padding) -> Tensor");
}
