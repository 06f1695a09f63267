// Schemas of the grouped pointwise (1x1) convolution (see ops/cpu/pw_conv2d_kernel.cpp).
//
// input [N, E*Ci, H, W], weight [E, Co, Ci] -> output [N, E*Co, H, W]: output channels e*Co.. are the 1x1
// convolution of input channels e*Ci.. with weight[e] (the fused DARTS cell puts the E edges that read one node
// into those blocks). No bias. CPU kernel only: on other devices the Python wrapper uses torch.matmul.
// pw_conv2d_groups is the same convolution with each group's output in its own [N, Co, H, W] tensor (the fused cell
// hands each edge's block to a different node: as separate tensors, their gradients need no concatenation).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  m.def("pw_conv2d(Tensor input, Tensor weight) -> Tensor");
  m.def("pw_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("pw_conv2d_groups(Tensor input, Tensor weight) -> Tensor[]");
  m.def("pw_conv2d_groups_backward(Tensor?[] grads, Tensor input, Tensor weight, bool[2] output_mask) "
        "-> (Tensor, Tensor)");
}
