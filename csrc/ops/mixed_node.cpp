// Schemas of the fused mixed-node kernels (see ops/cpu/mixed_node_kernel.cpp).
//
// A DARTS node is sum_k a_k * normalize_k(z_k): every candidate op's output z_k (a [N, C, H, W] tensor; pooling,
// convolution, identity) is normalised per channel (batch-statistics or running-statistics BatchNorm without
// affine parameters, or nothing for identity) and weighted by its architecture weight. Folding the weight into
// the per-channel normalisation gives out = bias[c] + sum_k scale[k, c] * z_k, computed in one pass that keeps
// no per-op output. Backward needs per-channel sums of grad and grad * z_k, then one elementwise pass per term.
// `terms` may be channel-block views of a bigger tensor: each must be contiguous within a sample (any batch stride).
//
// A BatchNorm followed by a ReLU runs as one term with the ReLU folded in: `relu` clamps the weighted sum at 0, and
// `gate` ([2, C]: the BatchNorm's per-channel scale and shift) makes the backward ops read the gradient through the
// ReLU, grad * [scale[c] * terms[0] + shift[c] > 0] (0 where the output, rounded to the dtype, is <= 0, as aten's
// relu backward), so neither the ReLU's pass nor its gradient's pass and tensor exist.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  // Per-channel mean and biased variance of every term: ([K, C], [K, C]).
  m.def("channel_moments(Tensor[] terms) -> (Tensor, Tensor)");
  // bias[c] + sum_k scale[k, c] * terms[k][n, c, h, w]; with relu, max(that, 0).
  m.def("channel_weighted_sum(Tensor[] terms, Tensor scale, Tensor bias, bool relu=False) -> Tensor");
  // (sum over n,h,w of grad: [C], sum over n,h,w of grad * terms[k]: [K, C]); grad gated by `gate` when given.
  m.def("channel_dot_sums(Tensor grad, Tensor[] terms, Tensor? gate=None) -> (Tensor, Tensor)");
  // out[k] = a[k, c] * grad + b[k, c] * terms[k] + c[k, c]; grad gated by `gate` when given.
  m.def("channel_affine_combine(Tensor grad, Tensor[] terms, Tensor a, Tensor b, Tensor c, Tensor? gate=None) "
        "-> Tensor[]");
}
