#pragma once
#include <ATen/ATen.h>

namespace proxynas_fast {

// Argument checks shared by the CPU and CUDA kernels.
inline void check_entropy_histogram_args(const at::Tensor& logits, const at::Tensor& edges) {
  TORCH_CHECK(logits.dim() == 2, "entropy_histogram: logits must be 2-D [N, C], got ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 1, "entropy_histogram: logits need at least one class");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kHalf ||
                  logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kDouble,
              "entropy_histogram: logits must be float32, float16, bfloat16 or float64, got ",
              logits.scalar_type());
  TORCH_CHECK(edges.dim() == 1 && edges.numel() >= 2,
              "entropy_histogram: edges must be 1-D with at least 2 values, got ", edges.sizes());
  TORCH_CHECK(edges.scalar_type() == at::kDouble, "entropy_histogram: edges must be float64");
  TORCH_CHECK(edges.device() == logits.device(), "entropy_histogram: edges on ", edges.device(),
              " but logits on ", logits.device());
}

}  // namespace proxynas_fast
