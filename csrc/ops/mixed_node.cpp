// Schemas of the fused mixed-node kernels (see ops/cpu/mixed_node_kernel.cpp).
//
// A DARTS node is sum_k a_k * normalize_k(z_k): every candidate op's output z_k (a [N, C, H, W] tensor; pooling,
// convolution, identity) is normalised per channel (batch-statistics or running-statistics BatchNorm without
// affine parameters, or nothing for identity) and weighted by its architecture weight. Folding the weight into
// the per-channel normalisation gives out = bias[c] + sum_k scale[k, c] * z_k, computed in one pass that keeps
// no per-op output. Backward needs per-channel sums of grad and grad * z_k, then one elementwise pass per term.
// `terms` may be channel-block views of a bigger tensor: each must be contiguous within a sample (any batch stride).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  // Per-channel mean and biased variance of every term: ([K, C], [K, C]).
  m.def("channel_moments(Tensor[] terms) -> (Tensor, Tensor)");
  // bias[c] + sum_k scale[k, c] * terms[k][n, c, h, w].
  m.def("channel_weighted_sum(Tensor[] terms, Tensor scale, Tensor bias) -> Tensor");
  // (sum over n,h,w of grad: [C], sum over n,h,w of grad * terms[k]: [K, C]).
  m.def("channel_dot_sums(Tensor grad, Tensor[] terms) -> (Tensor, Tensor)");
  // out[k] = a[k, c] * grad + b[k, c] * terms[k] + c[k, c].
  m.def("channel_affine_combine(Tensor grad, Tensor[] terms, Tensor a, Tensor b, Tensor c) -> Tensor[]");
}
