// Schema of proxynas_fast::entropy_histogram.
//
// entropy_histogram(logits[N, C], edges[B + 1]) -> (entropy[N] float32 nats,
//                                                 bin[N] int64, counts[B] int64)
// In one pass over each row: the entropy of softmax(row) with a numerically stable
// log-softmax, the bin of log10(entropy) among the edges, and the bin counts.
// Bins are half-open [edges[i], edges[i+1]); values below the first edge (including
// log10(0) = -inf) fall into bin 0 and values at or above the last edge into bin B-1.
// A row holding NaN or +-inf raises an error that names the row.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(proxynas_fast, m) {
  m.def("entropy_histogram(Tensor logits, Tensor edges) -> (Tensor, Tensor, Tensor)");
}
