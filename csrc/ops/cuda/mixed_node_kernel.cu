// CUDA kernels of the fused mixed node (schemas and semantics in ops/mixed_node.cpp).
//
// Term pointers travel in a kernel-argument struct (at most kMaxTerms per launch; longer lists are processed in
// chunks, the weighted sum carrying its running sum in the compute type from chunk to chunk), so no host-to-device copy is needed and the kernels can be captured in a CUDA graph. Elementwise
// kernels use one thread per (n, c, hw) element; per-channel reductions use one block per (term, channel)
// and reduce in the compute type, then across threads in double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "ops/mixed_node.h"

namespace proxynas_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxTerms = 32;

template <typename T>
struct TermPtrs {
  const T* ptr[kMaxTerms];
  int64_t batch_stride[kMaxTerms];
};
template <typename T>
struct OutPtrs {
  T* ptr[kMaxTerms];
};

inline int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 32); }

template <typename T>
TermPtrs<T> term_ptrs(const std::vector<at::Tensor>& terms, int64_t begin, int64_t count) {
  TermPtrs<T> p;
  for (int64_t k = 0; k < count; ++k) {
    p.ptr[k] = terms[begin + k].const_data_ptr<T>();
    p.batch_stride[k] = terms[begin + k].stride(0);
  }
  return p;
}

__device__ inline double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

// Block (k, c): mean and biased variance of term k's channel c (two passes over the channel).
template <typename scalar_t>
__global__ void moments_kernel(TermPtrs<scalar_t> terms, int64_t C, int64_t N, int64_t HW, double* mean,
                               double* var, int64_t k0) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double shared[kThreads];
  const int64_t k = blockIdx.x / C, c = blockIdx.x % C;
  const scalar_t* base = terms.ptr[k] + c * HW;
  const int64_t bs = terms.batch_stride[k], total = N * HW;
  acc_t s = 0;
  for (int64_t t = threadIdx.x; t < total; t += blockDim.x) s += static_cast<acc_t>(base[(t / HW) * bs + t % HW]);
  const double mu = block_sum(static_cast<double>(s), shared) / static_cast<double>(total);
  acc_t q = 0;
  const acc_t mu_a = static_cast<acc_t>(mu);
  for (int64_t t = threadIdx.x; t < total; t += blockDim.x) {
    const acc_t d = static_cast<acc_t>(base[(t / HW) * bs + t % HW]) - mu_a;
    q += d * d;
  }
  const double m2 = block_sum(static_cast<double>(q), shared);
  if (threadIdx.x == 0) {
    mean[(k0 + k) * C + c] = mu;
    var[(k0 + k) * C + c] = m2 / static_cast<double>(total);
  }
}

// One chunk of at most kMaxTerms terms. The running sum between chunks stays in the compute type (`partial`,
// nullptr when all terms fit in one launch): re-reading it from a bf16/fp16 output would round it once per chunk.
// First chunk: start from the bias; last chunk: write the output in the terms' dtype.
template <typename scalar_t, typename acc_t>
__global__ void weighted_sum_kernel(TermPtrs<scalar_t> terms, int64_t K, const acc_t* __restrict__ scale,
                                    const acc_t* __restrict__ bias, acc_t* __restrict__ partial,
                                    scalar_t* __restrict__ out, int64_t C, int64_t HW, int64_t total, bool first,
                                    bool last) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = idx / (C * HW), c = (idx / HW) % C, r = idx % (C * HW);
    acc_t acc = first ? bias[c] : partial[idx];
    for (int64_t k = 0; k < K; ++k) acc += scale[k * C + c] * static_cast<acc_t>(terms.ptr[k][n * terms.batch_stride[k] + r]);
    if (last) out[idx] = static_cast<scalar_t>(acc);
    else partial[idx] = acc;
  }
}

// Block (k, c) for k < K: sum of grad * term k over channel c; block (K, c): sum of grad.
template <typename scalar_t>
__global__ void dot_sums_kernel(const scalar_t* __restrict__ grad, int64_t grad_bs, TermPtrs<scalar_t> terms,
                                int64_t K, int64_t C, int64_t N, int64_t HW, double* sg, double* sgz, int64_t k0) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double shared[kThreads];
  const int64_t k = blockIdx.x / C, c = blockIdx.x % C, total = N * HW;
  acc_t s = 0;
  if (k < K) {
    const scalar_t* z = terms.ptr[k] + c * HW;
    const int64_t bs = terms.batch_stride[k];
    for (int64_t t = threadIdx.x; t < total; t += blockDim.x) {
      const int64_t n = t / HW, r = t % HW;
      s += static_cast<acc_t>(grad[n * grad_bs + c * HW + r]) * static_cast<acc_t>(z[n * bs + r]);
    }
  } else {
    for (int64_t t = threadIdx.x; t < total; t += blockDim.x)
      s += static_cast<acc_t>(grad[(t / HW) * grad_bs + c * HW + t % HW]);
  }
  const double v = block_sum(static_cast<double>(s), shared);
  if (threadIdx.x == 0) {
    if (k < K) sgz[(k0 + k) * C + c] = v;
    else sg[c] = v;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void affine_combine_kernel(const scalar_t* __restrict__ grad, int64_t grad_bs, TermPtrs<scalar_t> terms,
                                      OutPtrs<scalar_t> outs, int64_t K, const acc_t* __restrict__ a,
                                      const acc_t* __restrict__ b, const acc_t* __restrict__ cc, int64_t C, int64_t HW,
                                      int64_t total) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t n = idx / (C * HW), c = (idx / HW) % C, r = idx % (C * HW);
    const acc_t g = static_cast<acc_t>(grad[n * grad_bs + r]);
    for (int64_t k = 0; k < K; ++k) {
      const acc_t z = static_cast<acc_t>(terms.ptr[k][n * terms.batch_stride[k] + r]);
      outs.ptr[k][idx] = static_cast<scalar_t>(a[k * C + c] * g + b[k * C + c] * z + cc[k * C + c]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> channel_moments_cuda(at::TensorList terms_) {
  const auto terms = prepare_terms("channel_moments", terms_);
  const at::Tensor& ref = terms[0];
  const c10::cuda::CUDAGuard guard(ref.device());
  const int64_t K = terms.size(), N = ref.size(0), C = ref.size(1), HW = ref.size(2) * ref.size(3);
  at::Tensor mean = at::zeros({K, C}, ref.options().dtype(at::kDouble));
  at::Tensor var = at::zeros({K, C}, ref.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (N * HW > 0 && C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ref.scalar_type(), "channel_moments_cuda", [&] {
      for (int64_t k0 = 0; k0 < K; k0 += kMaxTerms) {
        const int64_t cnt = std::min<int64_t>(kMaxTerms, K - k0);
        moments_kernel<scalar_t><<<cnt * C, kThreads, 0, stream>>>(term_ptrs<scalar_t>(terms, k0, cnt), C, N, HW,
                                                                    mean.mutable_data_ptr<double>(),
                                                                    var.mutable_data_ptr<double>(), k0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  const auto sdt = stats_dtype(ref.scalar_type());
  return {mean.to(sdt), var.to(sdt)};
}

at::Tensor channel_weighted_sum_cuda(at::TensorList terms_, const at::Tensor& scale_, const at::Tensor& bias_,
                                     bool relu) {
  const auto terms = prepare_terms("channel_weighted_sum", terms_);
  const bool rows = rows_layout(terms_[0]);  // the output's layout (computed in planes)
  const at::Tensor& ref = terms[0];
  const c10::cuda::CUDAGuard guard(ref.device());
  const int64_t K = terms.size(), N = ref.size(0), C = ref.size(1), HW = ref.size(2) * ref.size(3);
  check_coeffs("channel_weighted_sum", "scale", scale_, K, C, ref);
  check_bias("channel_weighted_sum", bias_, C, ref);
  at::Tensor out = at::empty({N, C, ref.size(2), ref.size(3)}, ref.options());
  const int64_t total = out.numel();
  if (total == 0) return in_rows_layout_if(out, rows);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ref.scalar_type(), "channel_weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr auto adt = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor scale = scale_.to(adt).contiguous(), bias = bias_.to(adt).contiguous();
    // More than kMaxTerms terms (the last node of a DARTS cell has 35): the running sum lives in acc_t between
    // the chunks, so the result is rounded to the output dtype once, as on the CPU and in the reference.
    at::Tensor partial;
    if (K > kMaxTerms) partial = at::empty({total}, out.options().dtype(adt));
    for (int64_t k0 = 0; k0 < K; k0 += kMaxTerms) {
      const int64_t cnt = std::min<int64_t>(kMaxTerms, K - k0);
      weighted_sum_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
          term_ptrs<scalar_t>(terms, k0, cnt), cnt, scale.const_data_ptr<acc_t>() + k0 * C,
          bias.const_data_ptr<acc_t>(), partial.defined() ? partial.mutable_data_ptr<acc_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), C, HW, total, k0 == 0, k0 + cnt >= K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (relu) out.relu_();  // the CUDA path folds nothing: a ReLU pass (the CPU kernel clamps as it writes)
  return in_rows_layout_if(out, rows);
}

std::tuple<at::Tensor, at::Tensor> channel_dot_sums_cuda(const at::Tensor& grad_, at::TensorList terms_,
                                                         const std::optional<at::Tensor>& gate) {
  at::Tensor grad = plane_contiguous(grad_) ? grad_ : grad_.contiguous();
  const auto terms = prepare_terms("channel_dot_sums", terms_, &grad);
  if (gate.has_value()) {
    check_gate("channel_dot_sums", *gate, terms.size(), grad.size(1), grad);
    grad = gated_gradient(grad, terms[0], *gate).contiguous();
  }
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t K = terms.size(), N = grad.size(0), C = grad.size(1), HW = grad.size(2) * grad.size(3);
  at::Tensor sg = at::zeros({C}, grad.options().dtype(at::kDouble));
  at::Tensor sgz = at::zeros({K, C}, grad.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (N * HW > 0 && C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "channel_dot_sums_cuda", [&] {
      // Chunks of terms; the last chunk also computes the plain gradient sums (block row `cnt`).
      int64_t k0 = 0;
      do {
        const int64_t cnt = std::min<int64_t>(kMaxTerms, K - k0);
        const bool last = k0 + cnt >= K;
        const int64_t rows = cnt + (last ? 1 : 0);
        dot_sums_kernel<scalar_t><<<rows * C, kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), grad.stride(0), term_ptrs<scalar_t>(terms, k0, cnt), cnt, C, N, HW,
            sg.mutable_data_ptr<double>(), sgz.mutable_data_ptr<double>(), k0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        k0 += cnt;
      } while (k0 < K);
    });
  }
  const auto sdt = stats_dtype(grad.scalar_type());
  return {sg.to(sdt), sgz.to(sdt)};
}

std::vector<at::Tensor> channel_affine_combine_cuda(const at::Tensor& grad_, at::TensorList terms_,
                                                    const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& c_,
                                                    const std::optional<at::Tensor>& gate) {
  at::Tensor grad = plane_contiguous(grad_) ? grad_ : grad_.contiguous();
  const bool rows = rows_layout(grad_);  // the outputs' layout (computed in planes)
  const auto terms = prepare_terms("channel_affine_combine", terms_, &grad);
  if (gate.has_value()) {
    check_gate("channel_affine_combine", *gate, terms.size(), grad.size(1), grad);
    grad = gated_gradient(grad, terms[0], *gate).contiguous();
  }
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t K = terms.size(), N = grad.size(0), C = grad.size(1), HW = grad.size(2) * grad.size(3);
  check_coeffs("channel_affine_combine", "a", a_, K, C, grad);
  check_coeffs("channel_affine_combine", "b", b_, K, C, grad);
  check_coeffs("channel_affine_combine", "c", c_, K, C, grad);
  std::vector<at::Tensor> outs;
  for (int64_t k = 0; k < K; ++k) outs.push_back(at::empty({N, C, grad.size(2), grad.size(3)}, grad.options()));
  const int64_t total = N * C * HW;
  if (K == 0 || total == 0) {
    for (auto& o : outs) o = in_rows_layout_if(o, rows);
    return outs;
  }
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "channel_affine_combine_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr auto adt = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor a = a_.to(adt).contiguous(), b = b_.to(adt).contiguous(), cc = c_.to(adt).contiguous();
    for (int64_t k0 = 0; k0 < K; k0 += kMaxTerms) {
      const int64_t cnt = std::min<int64_t>(kMaxTerms, K - k0);
      OutPtrs<scalar_t> o;
      for (int64_t k = 0; k < cnt; ++k) o.ptr[k] = outs[k0 + k].mutable_data_ptr<scalar_t>();
      affine_combine_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), grad.stride(0), term_ptrs<scalar_t>(terms, k0, cnt), o, cnt,
          a.const_data_ptr<acc_t>() + k0 * C, b.const_data_ptr<acc_t>() + k0 * C, cc.const_data_ptr<acc_t>() + k0 * C,
          C, HW, total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  for (auto& o : outs) o = in_rows_layout_if(o, rows);
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CUDA, m) {
  m.impl("channel_moments", &channel_moments_cuda);
  m.impl("channel_weighted_sum", &channel_weighted_sum_cuda);
  m.impl("channel_dot_sums", &channel_dot_sums_cuda);
  m.impl("channel_affine_combine", &channel_affine_combine_cuda);
}

}  // namespace proxynas_fast
