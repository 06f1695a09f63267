// CPU kernels of the fused mixed node (schemas and semantics in ops/mixed_node.cpp).
//
// Every loop runs over (sample, channel) planes of H*W contiguous elements: a plane of the output or of the
// gradient stays in L1 while all K terms are streamed through it, so each tensor is read or written once.
// Reductions accumulate a plane in the compute type (float for float/bf16/half, double for double) and planes
// in double.
//
// Tensors in the rows layout (channels_last, mixed_node.h: the CPU ImageNet stem's BatchNorms) are read and
// written in place by the *_rows kernels below instead of being copied to planes: see RowPlan.
//
// Instruction sets: each kernel's per-chunk body is compiled for baseline, AVX2+FMA and AVX-512 and the level
// chosen at run time runs (cpu_isa::run_chunks, ops/cpu/cpu_isa.h; PROXYNAS_CPU_ISA forces one), for all four
// dtypes. GCC ends an `omp simd` reduction by adding its lanes one at a time, 16 for AVX-512: on 7x7 planes that
// makes the AVX-512 moments/dot sums no faster than AVX2 there; wide planes gain from it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <numeric>
#include <optional>
#include <utility>
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

// ----- the rows layout (channels_last): M = N*H*W rows of C adjacent channels -----
// Rows are taken in blocks of R, L = R*C elements, R the fewest rows that make L a multiple of 16 (whole vectors
// at every level); per-channel coefficients are tiled to L once, so every inner loop runs over L contiguous
// elements whatever C is (C = 24 would otherwise leave a partial vector per row). A chunk is a fixed number of
// rows (~8k elements, independent of the thread count, so results do not depend on it); reductions keep an
// L-wide partial per chunk, folded to C in double and combined in chunk order.
struct RowPlan {
  int64_t M, C, L, chunk_rows, chunks;
  explicit RowPlan(const at::Tensor& ref)
      : M(ref.size(0) * ref.size(2) * ref.size(3)), C(ref.size(1)), L(16 / std::gcd<int64_t>(C, 16) * C) {
    chunk_rows = (L / C) * std::max<int64_t>(1, 8192 / L);
    chunks = (M + chunk_rows - 1) / chunk_rows;
  }
  // Chunk `chunk` covers the flat elements [begin(chunk), end(chunk)), rows_of(chunk) whole rows.
  int64_t begin(int64_t chunk) const { return chunk * chunk_rows * C; }
  int64_t end(int64_t chunk) const { return std::min(M * C, begin(chunk + 1)); }
  int64_t rows_of(int64_t chunk) const { return (end(chunk) - begin(chunk)) / C; }
};

// v[k, c] (K x C, contiguous) repeated along L: out[k * L + j] = v[k * C + j % C].
template <typename acc_t>
std::vector<acc_t> tiled(const acc_t* v, int64_t K, int64_t C, int64_t L) {
  std::vector<acc_t> out(K * L);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < L; ++j) out[k * L + j] = v[k * C + j % C];
  return out;
}

// The ReLU folded into a BatchNorm (ops/mixed_node.cpp). The forward writes max(v, 0) (NaN stays NaN, as aten's
// relu); the backward reads the gradient through it: out[i] = grad[i] unless s * z[i] + b, rounded to the dtype
// as the forward wrote it, is <= 0 (so NaN passes, as in aten's relu backward).
template <typename acc_t>
PNF_INLINE_CHUNK acc_t relu_if(acc_t v, bool relu) {
  return relu && v < acc_t(0) ? acc_t(0) : v;
}
template <typename scalar_t, typename acc_t>
PNF_INLINE_CHUNK void gate_plane(const scalar_t* g, const scalar_t* z, acc_t s, acc_t b, int64_t n, scalar_t* out) {
  _Pragma("omp simd")
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<scalar_t>(s * static_cast<acc_t>(z[i]) + b) <= scalar_t(0) ? scalar_t(0) : g[i];
}
template <typename scalar_t, typename acc_t>
PNF_INLINE_CHUNK void gate_block(const scalar_t* g, const scalar_t* z, const acc_t* s, const acc_t* b, int64_t n,
                                 scalar_t* out) {
  _Pragma("omp simd")
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<scalar_t>(s[i] * static_cast<acc_t>(z[i]) + b[i]) <= scalar_t(0) ? scalar_t(0) : g[i];
}
// The gate's two rows (scale; shift) in the compute type: [2 * C].
template <typename acc_t>
std::vector<acc_t> gate_values(const std::optional<at::Tensor>& gate) {
  if (!gate.has_value()) return {};
  const at::Tensor g = gate->to(at::kCPU).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  return std::vector<acc_t>(g.const_data_ptr<acc_t>(), g.const_data_ptr<acc_t>() + g.numel());
}
// The rows kernels' gate: scale and shift each tiled to L (see `tiled`); empty without a gate.
template <typename acc_t>
std::pair<std::vector<acc_t>, std::vector<acc_t>> tiled_gate(const std::optional<at::Tensor>& gate, int64_t C,
                                                             int64_t L) {
  if (!gate.has_value()) return {};
  const auto gv = gate_values<acc_t>(gate);
  return {tiled(gv.data(), 1, C, L), tiled(gv.data() + C, 1, C, L)};
}

std::tuple<at::Tensor, at::Tensor> moments_rows(const std::vector<at::Tensor>& terms) {
  const at::Tensor& ref = terms[0];
  const int64_t K = terms.size();
  const RowPlan rp(ref);
  const int64_t C = rp.C, L = rp.L;
  std::vector<double> part_mean(rp.chunks * K * C), part_m2(rp.chunks * K * C);  // per chunk and term
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ref.scalar_type(), "channel_moments_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = base_ptrs<scalar_t>(terms);
    run_chunks(rp.chunks * K, grain_for(rp.chunk_rows * C), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      std::vector<acc_t> lane(L), mean_tiled(L);
      std::vector<double> mu(C);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t chunk = item / K, k = item % K;
        const int64_t n = rp.end(chunk) - rp.begin(chunk);
        const scalar_t* z = ptr[k] + rp.begin(chunk);
        acc_t* a = lane.data();
        // Two passes over the chunk (it stays in L2): the sums, then the squares about the chunk's means.
        std::fill(lane.begin(), lane.end(), acc_t(0));
        for (int64_t b = 0; b < n; b += L) {
          const int64_t len = std::min(L, n - b);
          const scalar_t* zb = z + b;
          _Pragma("omp simd")
          for (int64_t j = 0; j < len; ++j) a[j] += static_cast<acc_t>(zb[j]);
        }
        std::fill(mu.begin(), mu.end(), 0.0);
        for (int64_t j = 0; j < L; ++j) mu[j % C] += static_cast<double>(a[j]);
        const double rows = static_cast<double>(n / C);
        for (int64_t c = 0; c < C; ++c) mu[c] /= rows;
        for (int64_t j = 0; j < L; ++j) mean_tiled[j] = static_cast<acc_t>(mu[j % C]);
        const acc_t* m = mean_tiled.data();
        std::fill(lane.begin(), lane.end(), acc_t(0));
        for (int64_t b = 0; b < n; b += L) {
          const int64_t len = std::min(L, n - b);
          const scalar_t* zb = z + b;
          _Pragma("omp simd")
          for (int64_t j = 0; j < len; ++j) {
            const acc_t d = static_cast<acc_t>(zb[j]) - m[j];
            a[j] += d * d;
          }
        }
        double* pm = part_mean.data() + (chunk * K + k) * C;
        double* p2 = part_m2.data() + (chunk * K + k) * C;
        for (int64_t c = 0; c < C; ++c) pm[c] = mu[c], p2[c] = 0;
        for (int64_t j = 0; j < L; ++j) p2[j % C] += static_cast<double>(a[j]);
      }
    });
  });
  at::Tensor mean = at::empty({K, C}, ref.options().dtype(at::kDouble));
  at::Tensor var = at::empty({K, C}, ref.options().dtype(at::kDouble));
  double* mp = mean.mutable_data_ptr<double>();
  double* vp = var.mutable_data_ptr<double>();
  for (int64_t kc = 0; kc < K * C; ++kc) {
    double count = 0, mu = 0, m2 = 0;  // Chan's combination, chunk by chunk
    for (int64_t chunk = 0; chunk < rp.chunks; ++chunk) {
      const double nb = static_cast<double>(rp.rows_of(chunk)), delta = part_mean[chunk * K * C + kc] - mu;
      const double tot = count + nb;
      mu += delta * nb / tot;
      m2 += part_m2[chunk * K * C + kc] + delta * delta * count * nb / tot;
      count = tot;
    }
    mp[kc] = mu;
    vp[kc] = m2 / count;
  }
  const auto sdt = stats_dtype(ref.scalar_type());
  return {mean.to(sdt), var.to(sdt)};
}

at::Tensor weighted_sum_rows(const std::vector<at::Tensor>& terms, const at::Tensor& scale_, const at::Tensor& bias_,
                             bool relu) {
  const at::Tensor& ref = terms[0];
  const int64_t K = terms.size();
  const RowPlan rp(ref);
  const int64_t C = rp.C, L = rp.L;
  at::Tensor out = at::empty(ref.sizes(), ref.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, ref.scalar_type(), "channel_weighted_sum_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr auto adt = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor scale = scale_.to(adt).contiguous(), bias = bias_.to(adt).contiguous();
    const auto st = tiled(scale.const_data_ptr<acc_t>(), K, C, L);
    const auto bt = tiled(bias.const_data_ptr<acc_t>(), 1, C, L);
    const auto ptr = base_ptrs<scalar_t>(terms);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    run_chunks(rp.chunks, grain_for(rp.chunk_rows * C * K), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      std::vector<acc_t> acc(L);
      acc_t* a = acc.data();
      const acc_t* bb = bt.data();
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t e0 = rp.begin(chunk), e1 = rp.end(chunk);
        for (int64_t b = e0; b < e1; b += L) {
          const int64_t len = std::min(L, e1 - b);
          _Pragma("omp simd")
          for (int64_t j = 0; j < len; ++j) a[j] = bb[j];
          for (int64_t k = 0; k < K; ++k) {
            const acc_t* s = st.data() + k * L;
            const scalar_t* z = ptr[k] + b;
            _Pragma("omp simd")
            for (int64_t j = 0; j < len; ++j) a[j] += s[j] * static_cast<acc_t>(z[j]);
          }
          scalar_t* o = op + b;
          _Pragma("omp simd")
          for (int64_t j = 0; j < len; ++j) o[j] = static_cast<scalar_t>(relu_if(a[j], relu));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dot_sums_rows(const at::Tensor& grad, const std::vector<at::Tensor>& terms,
                                                 const std::optional<at::Tensor>& gate) {
  const int64_t K = terms.size();
  const RowPlan rp(grad);
  const int64_t C = rp.C, L = rp.L;
  std::vector<double> part_g(rp.chunks * C), part_gz(rp.chunks * K * C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "channel_dot_sums_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto ptr = base_ptrs<scalar_t>(terms);
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const auto gate_rows = tiled_gate<acc_t>(gate, C, L);
    const std::vector<acc_t>& gs = gate_rows.first;  // scale, shift (a lambda can't capture structured bindings
    const std::vector<acc_t>& gb = gate_rows.second;  // before C++20)
    run_chunks(rp.chunks, grain_for(rp.chunk_rows * C * (K + 1)), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      std::vector<acc_t> lane_g(L), lane_gz(K * L);
      std::vector<scalar_t> gated(gate ? L : 0);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t e0 = rp.begin(chunk), e1 = rp.end(chunk);
        std::fill(lane_g.begin(), lane_g.end(), acc_t(0));
        std::fill(lane_gz.begin(), lane_gz.end(), acc_t(0));
        acc_t* ag = lane_g.data();
        for (int64_t b = e0; b < e1; b += L) {
          const int64_t len = std::min(L, e1 - b);
          const scalar_t* g = gp + b;
          if (gate) {
            gate_block(g, ptr[0] + b, gs.data(), gb.data(), len, gated.data());
            g = gated.data();
          }
          _Pragma("omp simd")
          for (int64_t j = 0; j < len; ++j) ag[j] += static_cast<acc_t>(g[j]);
          for (int64_t k = 0; k < K; ++k) {
            acc_t* az = lane_gz.data() + k * L;
            const scalar_t* z = ptr[k] + b;
            _Pragma("omp simd")
            for (int64_t j = 0; j < len; ++j) az[j] += static_cast<acc_t>(g[j]) * static_cast<acc_t>(z[j]);
          }
        }
        double* pg = part_g.data() + chunk * C;
        double* pgz = part_gz.data() + chunk * K * C;
        std::fill(pg, pg + C, 0.0);
        std::fill(pgz, pgz + K * C, 0.0);
        for (int64_t j = 0; j < L; ++j) pg[j % C] += static_cast<double>(ag[j]);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < L; ++j) pgz[k * C + j % C] += static_cast<double>(lane_gz[k * L + j]);
      }
    });
  });
  at::Tensor sg = at::zeros({C}, grad.options().dtype(at::kDouble));
  at::Tensor sgz = at::zeros({K, C}, grad.options().dtype(at::kDouble));
  double* sgp = sg.mutable_data_ptr<double>();
  double* sgzp = sgz.mutable_data_ptr<double>();
  for (int64_t chunk = 0; chunk < rp.chunks; ++chunk) {  // in chunk order
    for (int64_t c = 0; c < C; ++c) sgp[c] += part_g[chunk * C + c];
    for (int64_t kc = 0; kc < K * C; ++kc) sgzp[kc] += part_gz[chunk * K * C + kc];
  }
  const auto sdt = stats_dtype(grad.scalar_type());
  return {sg.to(sdt), sgz.to(sdt)};
}

std::vector<at::Tensor> affine_combine_rows(const at::Tensor& grad, const std::vector<at::Tensor>& terms,
                                            const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& c_,
                                            const std::optional<at::Tensor>& gate) {
  const int64_t K = terms.size();
  const RowPlan rp(grad);
  const int64_t C = rp.C, L = rp.L;
  std::vector<at::Tensor> outs;
  for (int64_t k = 0; k < K; ++k)
    outs.push_back(at::empty(grad.sizes(), grad.options().memory_format(at::MemoryFormat::ChannelsLast)));
  if (K == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "channel_affine_combine_rows", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr auto adt = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor a = a_.to(adt).contiguous(), b = b_.to(adt).contiguous(), cc = c_.to(adt).contiguous();
    const auto at_ = tiled(a.const_data_ptr<acc_t>(), K, C, L);
    const auto bt = tiled(b.const_data_ptr<acc_t>(), K, C, L);
    const auto ct = tiled(cc.const_data_ptr<acc_t>(), K, C, L);
    const auto ptr = base_ptrs<scalar_t>(terms);
    std::vector<scalar_t*> optr;
    for (auto& o : outs) optr.push_back(o.mutable_data_ptr<scalar_t>());
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const auto gate_rows = tiled_gate<acc_t>(gate, C, L);
    const std::vector<acc_t>& gs = gate_rows.first;  // scale, shift (a lambda can't capture structured bindings
    const std::vector<acc_t>& gb = gate_rows.second;  // before C++20)
    run_chunks(rp.chunks, grain_for(rp.chunk_rows * C * K), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      std::vector<scalar_t> gated(gate ? L : 0);
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t e0 = rp.begin(chunk), e1 = rp.end(chunk);
        for (int64_t b0 = e0; b0 < e1; b0 += L) {
          const int64_t len = std::min(L, e1 - b0);
          const scalar_t* g = gp + b0;
          if (gate) {
            gate_block(g, ptr[0] + b0, gs.data(), gb.data(), len, gated.data());
            g = gated.data();
          }
          for (int64_t k = 0; k < K; ++k) {
            const acc_t* av = at_.data() + k * L;
            const acc_t* bv = bt.data() + k * L;
            const acc_t* cv = ct.data() + k * L;
            const scalar_t* z = ptr[k] + b0;
            scalar_t* o = optr[k] + b0;
            _Pragma("omp simd")
            for (int64_t j = 0; j < len; ++j)
              o[j] = static_cast<scalar_t>(av[j] * static_cast<acc_t>(g[j]) + bv[j] * static_cast<acc_t>(z[j]) + cv[j]);
          }
        }
      }
    });
  });
  return outs;
}

std::tuple<at::Tensor, at::Tensor> channel_moments_cpu(at::TensorList terms_) {
  const bool rows = !terms_.empty() && rows_layout(terms_[0]);
  const auto terms = prepare_terms("channel_moments", terms_, nullptr, rows);
  if (rows) return moments_rows(terms);
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

at::Tensor channel_weighted_sum_cpu(at::TensorList terms_, const at::Tensor& scale_, const at::Tensor& bias_,
                                    bool relu) {
  const bool rows = !terms_.empty() && rows_layout(terms_[0]);
  const auto terms = prepare_terms("channel_weighted_sum", terms_, nullptr, rows);
  const at::Tensor& ref = terms[0];
  const int64_t K = terms.size(), N = ref.size(0), C = ref.size(1), HW = ref.size(2) * ref.size(3);
  check_coeffs("channel_weighted_sum", "scale", scale_, K, C, ref);
  check_bias("channel_weighted_sum", bias_, C, ref);
  if (rows) return weighted_sum_rows(terms, scale_, bias_, relu);
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
        for (int64_t i = 0; i < HW; ++i) o[i] = static_cast<scalar_t>(relu_if(a[i], relu));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> channel_dot_sums_cpu(const at::Tensor& grad_, at::TensorList terms_,
                                                        const std::optional<at::Tensor>& gate) {
  const bool rows = rows_layout(grad_);
  const at::Tensor grad = rows || plane_contiguous(grad_) ? grad_ : grad_.contiguous();
  const auto terms = prepare_terms("channel_dot_sums", terms_, &grad, rows);
  if (gate) check_gate("channel_dot_sums", *gate, terms.size(), grad.size(1), grad);
  if (rows) return dot_sums_rows(grad, terms, gate);
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
    const auto gv = gate_values<acc_t>(gate);
    // One thread owns channel c: the gradient plane is loaded once per sample and dotted with every term.
    run_chunks(C, grain_for(N * (K + 1) * HW), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      std::vector<scalar_t> gated(gate ? HW : 0);
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* g = gp + n * gbs + c * HW;
          if (gate) {
            gate_plane(g, ptr[0] + n * bs[0] + c * HW, gv[c], gv[C + c], HW, gated.data());
            g = gated.data();
          }
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
                                                   const at::Tensor& a_, const at::Tensor& b_, const at::Tensor& c_,
                                                   const std::optional<at::Tensor>& gate) {
  const bool rows = rows_layout(grad_);
  const at::Tensor grad = rows || plane_contiguous(grad_) ? grad_ : grad_.contiguous();
  const auto terms = prepare_terms("channel_affine_combine", terms_, &grad, rows);
  const int64_t K = terms.size(), N = grad.size(0), C = grad.size(1), HW = grad.size(2) * grad.size(3);
  check_coeffs("channel_affine_combine", "a", a_, K, C, grad);
  check_coeffs("channel_affine_combine", "b", b_, K, C, grad);
  check_coeffs("channel_affine_combine", "c", c_, K, C, grad);
  if (gate) check_gate("channel_affine_combine", *gate, K, C, grad);
  if (rows) return affine_combine_rows(grad, terms, a_, b_, c_, gate);
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
    const auto gv = gate_values<acc_t>(gate);
    run_chunks(N * C, grain_for(K * HW), [&](int64_t begin, int64_t end) PNF_CHUNK_BODY {
      std::vector<scalar_t> gated(gate ? HW : 0);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / C, c = p % C;
        const scalar_t* g = gp + n * gbs + c * HW;
        if (gate) {
          gate_plane(g, ptr[0] + n * bs[0] + c * HW, gv[c], gv[C + c], HW, gated.data());
          g = gated.data();
        }
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
