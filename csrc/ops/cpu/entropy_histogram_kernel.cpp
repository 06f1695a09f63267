// CPU kernel of proxynas_fast::entropy_histogram: rows split over threads, each row reduced
// with SIMD in two sweeps that stay in L1 (max, then the exp sums), per-thread histograms.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cmath>
#include <limits>
#include <vector>

#include "../entropy_histogram.h"

namespace proxynas_fast {
namespace {

// e^d for d <= 0 (Cephes-style: d = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n from the exponent
// bits); about 1 ulp. Results below the float range (d < -87.3) are flushed to 0 like the exact value.
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// The float whose bit pattern is `bits` (std::bit_cast is C++20; the extension is C++17 under torch 2.11).
inline float float_from_bits(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float exp_nonpositive(float d) {
  if (d < -87.3f) return 0.0f;
  const float n = std::floor(d * kLog2e + 0.5f);
  const float r = std::fma(n, -kLn2Lo, std::fma(n, -kLn2Hi, d));
  float p = kP0;
  p = std::fma(p, r, kP1);
  p = std::fma(p, r, kP2);
  p = std::fma(p, r, kP3);
  p = std::fma(p, r, kP4);
  p = std::fma(p, r, kP5);
  p = std::fma(p, r * r, r) + 1.0f;
  return p * float_from_bits((static_cast<int32_t>(n) + 127) << 23);
}

struct RowSums {
  double rest = 0;  // sum of e^{d_j} over d_j < 0
  double k = 0;     // number of d_j == 0 (ties of the maximum)
  double t = 0;     // sum of d_j e^{d_j}
};

// Portable path.
inline bool row_max_scalar(const float* x, int64_t n, float* mx_out) {
  float mx = x[0];
  for (int64_t j = 0; j < n; ++j) {
    if (!std::isfinite(x[j])) return false;
    mx = std::max(mx, x[j]);
  }
  *mx_out = mx;
  return true;
}

inline RowSums row_sums_scalar(const float* x, int64_t n, float mx) {
  RowSums s;
  for (int64_t j = 0; j < n; ++j) {
    const float d = x[j] - mx;
    const float e = exp_nonpositive(d);
    if (d < 0.f) s.rest += e; else s.k += 1.0;
    s.t += static_cast<double>(d) * e;
  }
  return s;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PROXYNAS_HAVE_AVX2_PATH 1
// AVX2+FMA path, compiled for that target only and chosen at run time (the extension itself is built
// for baseline x86-64, so ATen's Vectorized<float> would be scalar here).
__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) static bool row_max_avx2(const float* x, int64_t n, float* mx_out) {
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 vbad = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    vmax = _mm256_max_ps(vmax, v);
    vbad = _mm256_add_ps(vbad, _mm256_sub_ps(v, v));  // 0 for finite lanes, NaN for NaN/inf
  }
  float buf[8];
  _mm256_storeu_ps(buf, vmax);
  float mx = buf[0];
  for (int i = 1; i < 8; ++i) mx = std::max(mx, buf[i]);
  if (!std::isfinite(hsum256(vbad))) return false;
  for (; j < n; ++j) {
    if (!std::isfinite(x[j])) return false;
    mx = std::max(mx, x[j]);
  }
  *mx_out = mx;
  return true;
}

__attribute__((target("avx2,fma"))) static inline __m256 exp_nonpositive_avx2(__m256 d) {
  const __m256 under = _mm256_cmp_ps(d, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  const __m256 dc = _mm256_max_ps(d, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(dc, _mm256_set1_ps(kLog2e), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), dc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

__attribute__((target("avx2,fma"))) static RowSums row_sums_avx2(const float* x, int64_t n, float mx) {
  const __m256 vmx = _mm256_set1_ps(mx), zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  __m256 vrest = zero, vk = zero, vt = zero;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), vmx);
    const __m256 e = exp_nonpositive_avx2(d);
    const __m256 neg = _mm256_cmp_ps(d, zero, _CMP_LT_OQ);
    vrest = _mm256_add_ps(vrest, _mm256_and_ps(neg, e));
    vk = _mm256_add_ps(vk, _mm256_andnot_ps(neg, one));
    vt = _mm256_fmadd_ps(d, e, vt);
  }
  RowSums s;
  s.rest = hsum256(vrest);
  s.k = hsum256(vk);
  s.t = hsum256(vt);
  const RowSums tail = row_sums_scalar(x + j, n - j, mx);
  s.rest += tail.rest;
  s.k += tail.k;
  s.t += tail.t;
  return s;
}

static const bool kUseAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

// Entropy (nats) of softmax(x[0..n)). With d_j = x_j - max, k = #{d_j == 0},
// rest = sum_{d_j<0} e^{d_j} and t = sum_j d_j e^{d_j} (<= 0):
//   H = log(k + rest) - t / (k + rest) = log k + log1p(rest / k) + (-t) / (k + rest).
// Keeping `rest` apart from the k exact ones keeps full relative precision for confident rows
// (H ~ 1e-8), where summing e^{d} directly would round 1 + rest to 1.
inline double row_entropy(const float* x, int64_t n) {
  float mx = 0.f;
  RowSums s;
#ifdef PROXYNAS_HAVE_AVX2_PATH
  if (kUseAvx2) {
    if (!row_max_avx2(x, n, &mx)) return std::numeric_limits<double>::quiet_NaN();
    s = row_sums_avx2(x, n, mx);
  } else
#endif
  {
    if (!row_max_scalar(x, n, &mx)) return std::numeric_limits<double>::quiet_NaN();
    s = row_sums_scalar(x, n, mx);
  }
  return std::log(s.k) + std::log1p(s.rest / s.k) - s.t / (s.k + s.rest);
}

// A row as float32: float rows are used in place, other types widened into `buf`.
inline const float* row_as_float(const float* src, int64_t, std::vector<float>&) { return src; }
template <typename T>
inline const float* row_as_float(const T* src, int64_t n, std::vector<float>& buf) {
  buf.resize(n);
  for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(src[j]);
  return buf.data();
}

inline int64_t find_bin(double h, const double* edges, int64_t num_bins) {
  const double v = std::log10(h);  // -inf for h == 0: lands in bin 0
  const int64_t pos = std::upper_bound(edges, edges + num_bins + 1, v) - edges - 1;
  return std::min(std::max<int64_t>(pos, 0), num_bins - 1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> entropy_histogram_cpu(const at::Tensor& logits_in,
                                                                      const at::Tensor& edges_in) {
  check_entropy_histogram_args(logits_in, edges_in);
  const auto edges = edges_in.contiguous();
  const double* e = edges.data_ptr<double>();
  const int64_t num_bins = edges.numel() - 1;
  for (int64_t i = 0; i < num_bins; ++i) {
    TORCH_CHECK(std::isfinite(e[i]) && std::isfinite(e[i + 1]) && e[i] < e[i + 1],
                "entropy_histogram: edges must be finite and strictly increasing (edge ", i, " = ", e[i],
                ", edge ", i + 1, " = ", e[i + 1], ")");
  }
  // float64 logits are reduced in float64 through the reference path of the wrapper; here
  // everything is reduced in float32 (reduced-precision inputs are widened per row).
  const auto logits = logits_in.scalar_type() == at::kDouble ? logits_in.to(at::kFloat).contiguous()
                                                             : logits_in.contiguous();
  const int64_t N = logits.size(0), C = logits.size(1);
  auto entropy = at::empty({N}, logits.options().dtype(at::kFloat));
  auto bins = at::empty({N}, logits.options().dtype(at::kLong));
  float* ent_p = entropy.data_ptr<float>();
  int64_t* bin_p = bins.data_ptr<int64_t>();

  const int nthreads = at::get_num_threads();
  std::vector<int64_t> local_counts(static_cast<size_t>(nthreads) * num_bins, 0);
  std::atomic<int64_t> first_bad{N};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "entropy_histogram_cpu", [&] {
    const scalar_t* src = logits.data_ptr<scalar_t>();
    at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
      int64_t* counts = local_counts.data() + static_cast<size_t>(at::get_thread_num()) * num_bins;
      std::vector<float> widened;
      for (int64_t r = begin; r < end; ++r) {
        const float* row = row_as_float(src + r * C, C, widened);
        const double h = row_entropy(row, C);
        if (!std::isfinite(h)) {
          int64_t cur = first_bad.load();
          while (r < cur && !first_bad.compare_exchange_weak(cur, r)) {
          }
          ent_p[r] = std::numeric_limits<float>::quiet_NaN();
          bin_p[r] = 0;
          continue;
        }
        const double hc = std::max(h, 0.0);  // rounding can give -1e-17 for one-hot rows
        ent_p[r] = static_cast<float>(hc);
        const int64_t b = find_bin(hc, e, num_bins);
        bin_p[r] = b;
        counts[b] += 1;
      }
    });
  });
  TORCH_CHECK(first_bad.load() == N, "entropy_histogram: row ", first_bad.load(),
              " of the logits contains NaN or inf; entropies are only defined for finite logits");

  auto counts = at::zeros({num_bins}, logits.options().dtype(at::kLong));
  int64_t* c = counts.data_ptr<int64_t>();
  for (int t = 0; t < nthreads; ++t)
    for (int64_t b = 0; b < num_bins; ++b) c[b] += local_counts[static_cast<size_t>(t) * num_bins + b];
  return {entropy, bins, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CPU, m) {
  m.impl("entropy_histogram", &entropy_histogram_cpu);
}

}  // namespace proxynas_fast
