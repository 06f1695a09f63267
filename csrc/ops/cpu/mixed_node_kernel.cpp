// CPU kernels of the fused mixed node (schemas and semantics in ops/mixed_node.cpp).
//
// Every loop runs over (sample, channel) planes of H*W contiguous elements: a plane of the output or of the
// gradient stays in L1 while all K terms are streamed through it, so each tensor is read or written once.
// Reductions accumulate a plane in the compute type (float for float/bf16/half, double for double) and planes
// in double.
//
// Instruction sets: each kernel's per-chunk body is compiled for baseline, AVX2+FMA and AVX-512 and the level
// chosen at run time runs (cpu_isa::run_chunks, ops/cpu/cpu_isa.h; PROXYNAS_CPU_ISA forces one), for all four
// dtypes. GCC ends an `omp simd` reduction by adding its lanes one at a time, 16 for AVX-512: on 7x7 planes that
// makes the AVX-512 moments/dot sums no faster than AVX2 (measured; wide planes gain 2x).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/cpu/cpu_isa.h"
#include "ops/mixed_node.h"

namespace proxynas_fast {
namespace {
using cpu_isa::run_chunks;

// Items per thread chunk so that a chunk touches at least ~32k elements: small problems stay on one thread.
int64_t grain_for(int64_t work_per_item) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item)); }

template <typename T>
std::vector<const T*> base_ptrs(const std::vector<at::Tensor>& ts) {
  std::vector<const T*> p;
  for (const auto& t : ts) p.push_back(t.const_data_ptr<T>());
  return p;
}
std::vector<int64_t> batch_strides(const std::vector<at::Tensor>& ts) {
  std::vector<int64_t> s;
  for (const auto& t : ts) s.push_back(t.stride(0));
  return s;
}

std::tuple<at::Tensor, at::Tensor> channel_moments_cpu(at::TensorList terms_) {
  const auto terms = prepare_terms("channel_moments", terms_);
  const at::Tensor& ref = terms[0];
  const int64_t K = terms.size(), N = ref.size(0), C = ref.size(1), HW = ref.size(2) * ref.size(3);
  const auto sdt = stats_dtype(ref.scalar_type());
  at::Tensor mean = at::empty({K, C}, ref.options().dtype(at::kDouble));
  at::Tensor var = at::empty({K, C}, ref.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ref.scalar_type(), "channel_moments_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = base_ptrs<scalar_t>(terms);
    const auto bs = batch_strides(terms);
    double* mp = mean.mutable_data_ptr<double>();
    double* vp = var.mutable_data_ptr<double>();
    run_chunks(K * C, grain_for(N * HW), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      for (int64_t kc = begin; kc < end; ++kc) {
        const int64_t k = kc / C, c = kc % C;
        // Chan's parallel combination of per-plane (mean, M2): accurate without a second pass over memory.
        double count = 0, mu = 0, m2 = 0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* z = ptr[k] + n * bs[k] + c * HW;
          acc_t s = 0;
          _Pragma("omp simd reduction(+ : s)")
          for (int64_t i = 0; i < HW; ++i) s += static_cast<acc_t>(z[i]);
          const acc_t pm = s / static_cast<acc_t>(HW);
          acc_t q = 0;
          _Pragma("omp simd reduction(+ : q)")
          for (int64_t i = 0; i < HW; ++i) {
            const acc_t d = static_cast<acc_t>(z[i]) - pm;
            q += d * d;
          }
          const double nb = static_cast<double>(HW), delta = static_cast<double>(pm) - mu;
          const double tot = count + nb;
          mu += delta * nb / tot;
          m2 += static_cast<double>(q) + delta * delta * count * nb / tot;
          count = tot;
        }
        mp[kc] = mu;
        vp[kc] = m2 / count;
      }
    });
  });
  return {mean.to(sdt), var.to(sdt)};
}

at::Tensor channel_weighted_sum_cpu(at::TensorList terms_, const at::Tensor& scale_, const at::Tensor& bias_) {
  const auto terms = prepare_terms("channel_weighted_sum", terms_);
  const at::Tensor& ref = terms[0];
  const int64_t K = terms.size(), N = ref.size(0), C = ref.size(1), HW = ref.size(2) * ref.size(3);
  check_coeffs("channel_weighted_sum", "scale", scale_, K, C, ref);
  TORCH_CHECK_VALUE(bias_.dim() == 1 && bias_.size(0) == C, "channel_weighted_sum: bias must be [", C, "], got ",
                    bias_.sizes());
  at::Tensor out = at::empty({N, C, ref.size(2), ref.size(3)}, ref.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ref.scalar_type(), "channel_weighted_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor scale = scale_.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const at::Tensor bias = bias_.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* sp = scale.const_data_ptr<acc_t>();
    const acc_t* bp = bias.const_data_ptr<acc_t>();
    const auto ptr = base_ptrs<scalar_t>(terms);
    const auto bs = batch_strides(terms);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    run_chunks(N * C, grain_for(K * HW), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      std::vector<acc_t> acc(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        std::fill(acc.begin(), acc.end(), bp[c]);
        acc_t* a = acc.data();
        for (int64_t k = 0; k < K; ++k) {
          // No shortcut for s == 0: 0 * NaN/Inf must give NaN, as in the reference and the CUDA kernel.
          const acc_t s = sp[k * C + c];
          const scalar_t* z = ptr[k] + n * bs[k] + c * HW;
          _Pragma("omp simd")
          for (int64_t i = 0; i < HW; ++i) a[i] += s * static_cast<acc_t>(z[i]);
        }
        scalar_t* o = op + p * HW;
        _Pragma("omp simd")
        for (int64_t i = 0; i < HW; ++i) o[i] = static_cast<scalar_t>(a[i]);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> channel_dot_sums_cpu(const at::Tensor& grad_, at::TensorList terms_) {
  const at::Tensor grad = plane_contiguous(grad_) ? grad_ : grad_.contiguous();
  const auto terms = prepare_terms("channel_dot_sums", terms_, &grad);
  const int64_t K = terms.size(), N = grad.size(0), C = grad.size(1), HW = grad.size(2) * grad.size(3);
  const auto sdt = stats_dtype(grad.scalar_type());
  at::Tensor sg = at::zeros({C}, grad.options().dtype(at::kDouble));
  at::Tensor sgz = at::zeros({K, C}, grad.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "channel_dot_sums_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = base_ptrs<scalar_t>(terms);
    const auto bs = batch_strides(terms);
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const int64_t gbs = grad.stride(0);
    double* sgp = sg.mutable_data_ptr<double>();
    double* sgzp = sgz.mutable_data_ptr<double>();
    // One thread owns channel c: the gradient plane is loaded once per sample and dotted with every term.
    run_chunks(C, grain_for(N * (K + 1) * HW), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* g = gp + n * gbs + c * HW;
          acc_t s = 0;
          _Pragma("omp simd reduction(+ : s)")
          for (int64_t i = 0; i < HW; ++i) s += static_cast<acc_t>(g[i]);
          sgp[c] += static_cast<double>(s);
          for (int64_t k = 0; k < K; ++k) {
            const scalar_t* z = ptr[k] + n * bs[k] + c * HW;
            acc_t d = 0;
            _Pragma("omp simd reduction(+ : d)")
            for (int64_t i = 0; i < HW; ++i) d += static_cast<acc_t>(g[i]) * static_cast<acc_t>(z[i]);
            sgzp[k * C + c] += static_cast<double>(d);
          }
        }
      }
    });
  });
  return {sg.to(sdt), sgz.to(sdt)};
}

std::vector<at::Tensor> channel_affine_combine_cpu(const at::Tensor& grad_, at::TensorList terms_,
                                                   const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& c_) {
  const at::Tensor grad = plane_contiguous(grad_) ? grad_ : grad_.contiguous();
  const auto terms = prepare_terms("channel_affine_combine", terms_, &grad);
  const int64_t K = terms.size(), N = grad.size(0), C = grad.size(1), HW = grad.size(2) * grad.size(3);
  check_coeffs("channel_affine_combine", "a", a_, K, C, grad);
  check_coeffs("channel_affine_combine", "b", b_, K, C, grad);
  check_coeffs("channel_affine_combine", "c", c_, K, C, grad);
  std::vector<at::Tensor> outs;
  for (int64_t k = 0; k < K; ++k) outs.push_back(at::empty({N, C, grad.size(2), grad.size(3)}, grad.options()));
  if (K == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "channel_affine_combine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr auto adt = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor a = a_.to(adt).contiguous(), b = b_.to(adt).contiguous(), cc = c_.to(adt).contiguous();
    const acc_t* ap = a.const_data_ptr<acc_t>();
    const acc_t* bp = b.const_data_ptr<acc_t>();
    const acc_t* cp = cc.const_data_ptr<acc_t>();
    const auto ptr = base_ptrs<scalar_t>(terms);
    const auto bs = batch_strides(terms);
    std::vector<scalar_t*> optr;
    for (auto& o : outs) optr.push_back(o.mutable_data_ptr<scalar_t>());
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const int64_t gbs = grad.stride(0);
    run_chunks(N * C, grain_for(K * HW), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const scalar_t* g = gp + n * gbs + c * HW;
        for (int64_t k = 0; k < K; ++k) {
          const acc_t av = ap[k * C + c], bv = bp[k * C + c], cv = cp[k * C + c];
          const scalar_t* z = ptr[k] + n * bs[k] + c * HW;
          scalar_t* o = optr[k] + p * HW;
          _Pragma("omp simd")
          for (int64_t i = 0; i < HW; ++i)
            o[i] = static_cast<scalar_t>(av * static_cast<acc_t>(g[i]) + bv * static_cast<acc_t>(z[i]) + cv);
        }
      }
    });
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CPU, m) {
  m.impl("channel_moments", &channel_moments_cpu);
  m.impl("channel_weighted_sum", &channel_weighted_sum_cpu);
  m.impl("channel_dot_sums", &channel_dot_sums_cpu);
  m.impl("channel_affine_combine", &channel_affine_combine_cpu);
}

}  // namespace proxynas_fast
