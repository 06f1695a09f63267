// Argument checks shared by the CPU and CUDA mixed-node kernels: the only checks on the kernel path. They raise
// ValueError in Python (TORCH_CHECK_VALUE), as the Python wrappers' checks on the reference path do.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace proxynas_fast {

// A term's layout as the kernels read it: planes of H*W contiguous elements, channel planes adjacent,
// samples `batch_stride` apart.
inline bool plane_contiguous(const at::Tensor& t) {
  return t.dim() == 4 && t.stride(3) == 1 && (t.size(2) == 1 || t.stride(2) == t.size(3)) &&
         (t.size(1) == 1 || t.stride(1) == t.size(2) * t.size(3));
}

// The "rows" layout: channels_last-contiguous (every position's C channels adjacent) and not also plane-contiguous
// (C == 1 or H*W == 1 are both). The CPU kernels read and write such tensors in place (rows of C, the layout of
// the CPU ImageNet stem); an op whose reference tensor (the first term, or the gradient) is in it returns its
// tensor outputs in channels_last, on every device (the CUDA kernels compute in planes and convert).
inline bool rows_layout(const at::Tensor& t) {
  return t.dim() == 4 && !plane_contiguous(t) && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}
inline at::Tensor in_rows_layout_if(const at::Tensor& t, bool rows) {
  return rows ? t.contiguous(at::MemoryFormat::ChannelsLast) : t;
}
// Returns the terms in the kernels' layout (planes; with `rows`, channels_last-contiguous), copying only those that
// are not, checking shapes/dtypes/devices.
inline std::vector<at::Tensor> prepare_terms(const char* op, at::TensorList terms, const at::Tensor* like = nullptr,
                                             bool rows = false) {
  TORCH_CHECK_VALUE(!terms.empty() || like != nullptr, op, ": needs at least one term");
  const at::Tensor& ref = like != nullptr ? *like : terms[0];
  TORCH_CHECK_VALUE(ref.dim() == 4, op, ": tensors must be [N, C, H, W], got ", ref.sizes());
  std::vector<at::Tensor> out;
  out.reserve(terms.size());
  for (size_t k = 0; k < terms.size(); ++k) {
    const at::Tensor& t = terms[k];
    TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": term ", k, " has shape ", t.sizes(), ", expected ",
                      ref.sizes());
    TORCH_CHECK_VALUE(t.scalar_type() == ref.scalar_type(), op, ": term ", k, " has dtype ", t.scalar_type(),
                ", expected ", ref.scalar_type());
    TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": term ", k, " is on ", t.device(), ", expected ",
                      ref.device());
    if (rows) {
      out.push_back(t.is_contiguous(at::MemoryFormat::ChannelsLast) ? t : t.contiguous(at::MemoryFormat::ChannelsLast));
    } else {
      out.push_back(plane_contiguous(t) ? t : t.contiguous());
    }
  }
  return out;
}

inline at::ScalarType stats_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_coeffs(const char* op, const char* name, const at::Tensor& t, int64_t K, int64_t C,
                         const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == K && t.size(1) == C, op, ": ", name, " must be [", K, ", ", C,
              "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), ", expected ", ref.device());
}

// The bias of channel_weighted_sum: [C] on the terms' device (the kernels read it through a raw pointer).
inline void check_bias(const char* op, const at::Tensor& bias, int64_t C, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == C, op, ": bias must be [", C, "], got ", bias.sizes());
  TORCH_CHECK_VALUE(bias.device() == ref.device(), op, ": bias is on ", bias.device(), ", expected ", ref.device());
}

// The ReLU gate of the backward ops (ops/mixed_node.cpp): [2, C] (scale; shift) on the gradient's device, with a
// first term to gate by.
inline void check_gate(const char* op, const at::Tensor& gate, int64_t K, int64_t C, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(K >= 1, op, ": a gate needs a first term to gate the gradient by");
  TORCH_CHECK_VALUE(gate.dim() == 2 && gate.size(0) == 2 && gate.size(1) == C, op, ": gate must be [2, ", C,
                    "], got ", gate.sizes());
  TORCH_CHECK_VALUE(gate.device() == ref.device(), op, ": gate is on ", gate.device(), ", expected ", ref.device());
}

// grad where (gate[0, c] * z + gate[1, c]), rounded to grad's dtype, is > 0, else 0: the gate by aten ops (the
// CUDA path; the CPU kernels gate in their own passes). NaN passes the gradient, as aten's relu backward does.
inline at::Tensor gated_gradient(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& gate) {
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g = gate.to(acc);
  const at::Tensor pre = (z.to(acc) * g[0].view({1, -1, 1, 1}) + g[1].view({1, -1, 1, 1})).to(grad.scalar_type());
  return at::where(pre <= 0, at::zeros({}, grad.options()), grad);
}

}  // namespace proxynas_fast
