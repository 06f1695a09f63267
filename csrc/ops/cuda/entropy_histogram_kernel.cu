// CUDA kernel of proxynas_fast::entropy_histogram: one warp per row (two sweeps over the row: max,
// then the exp sums, the second served from L1/L2), a per-block histogram in shared memory merged
// with one atomic per bin, and the first bad row recorded with atomicMin and reported after the launch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../entropy_histogram.h"

namespace proxynas_fast {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxSharedBins = 4096;

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

template <typename scalar_t>
__global__ void entropy_histogram_kernel(const scalar_t* __restrict__ logits, int64_t N, int64_t C,
                                         const double* __restrict__ edges, int64_t num_bins,
                                         float* __restrict__ entropy, int64_t* __restrict__ bins,
                                         unsigned long long* __restrict__ counts,
                                         unsigned long long* __restrict__ first_bad) {
  extern __shared__ unsigned int block_counts[];
  const bool shared_hist = num_bins <= kMaxSharedBins;
  if (shared_hist)
    for (int64_t b = threadIdx.x; b < num_bins; b += blockDim.x) block_counts[b] = 0;
  __syncthreads();

  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t num_warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = warp; r < N; r += num_warps) {
    const scalar_t* row = logits + r * C;
    float mx = -INFINITY, bad = 0.f;
    for (int64_t j = lane; j < C; j += 32) {
      const float v = to_float(row[j]);
      mx = fmaxf(mx, v);
      bad += v - v;  // 0 for finite values, NaN for NaN/inf
    }
    mx = warp_max(mx);
    bad = warp_sum(bad);
    // d_j = x_j - max; rest = sum_{d<0} e^d, k = #ties of the max, t = sum d e^d (see the CPU kernel).
    float rest = 0.f, k = 0.f, t = 0.f;
    for (int64_t j = lane; j < C; j += 32) {
      const float d = to_float(row[j]) - mx;
      const float e = expf(d);
      if (d < 0.f) rest += e; else k += 1.f;
      t = fmaf(d, e, t);
    }
    rest = warp_sum(rest);
    k = warp_sum(k);
    t = warp_sum(t);
    if (lane == 0) {
      if (!isfinite(bad) || !isfinite(mx)) {
        atomicMin(first_bad, static_cast<unsigned long long>(r));
        entropy[r] = NAN;
        bins[r] = 0;
        continue;
      }
      const double kd = k, rd = rest;
      const double h = fmax(log(kd) + log1p(rd / kd) - static_cast<double>(t) / (kd + rd), 0.0);
      entropy[r] = static_cast<float>(h);
      const double v = log10(h);  // -inf for h == 0: bin 0
      int64_t lo = 0, hi = num_bins + 1;  // upper_bound over edges[0..num_bins]
      while (lo < hi) {
        const int64_t mid = (lo + hi) >> 1;
        if (edges[mid] <= v) lo = mid + 1; else hi = mid;
      }
      int64_t b = lo - 1;
      b = b < 0 ? 0 : (b > num_bins - 1 ? num_bins - 1 : b);
      bins[r] = b;
      if (shared_hist) atomicAdd(&block_counts[b], 1u);
      else atomicAdd(&counts[b], 1ull);
    }
  }
  __syncthreads();
  if (shared_hist)
    for (int64_t b = threadIdx.x; b < num_bins; b += blockDim.x)
      if (block_counts[b]) atomicAdd(&counts[b], static_cast<unsigned long long>(block_counts[b]));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> entropy_histogram_cuda(const at::Tensor& logits_in,
                                                                       const at::Tensor& edges_in) {
  check_entropy_histogram_args(logits_in, edges_in);
  // The kernel computes in float: float64 logits would silently lose their precision here. Python's
  // proxynas_fast.ops.entropy_histogram sends them to the float64 reference instead.
  TORCH_CHECK(logits_in.scalar_type() != at::kDouble,
              "entropy_histogram: the CUDA kernel takes float32, float16 or bfloat16 logits, got float64 "
              "(use proxynas_fast.ops.entropy_histogram, which computes float64 logits in float64)");
  c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const auto edges = edges_in.contiguous();
  const auto edges_cpu = edges.cpu();
  const double* e = edges_cpu.data_ptr<double>();
  for (int64_t i = 0; i + 1 < edges_cpu.numel(); ++i)
    TORCH_CHECK(std::isfinite(e[i]) && std::isfinite(e[i + 1]) && e[i] < e[i + 1],
                "entropy_histogram: edges must be finite and strictly increasing");
  const int64_t N = logits.size(0), C = logits.size(1), num_bins = edges.numel() - 1;
  auto entropy = at::empty({N}, logits.options().dtype(at::kFloat));
  auto bins = at::empty({N}, logits.options().dtype(at::kLong));
  // int64 counts accumulated as unsigned 64-bit (same bit pattern for non-negative values).
  auto counts = at::zeros({num_bins}, logits.options().dtype(at::kLong));
  auto first_bad = at::full({1}, N, logits.options().dtype(at::kLong));
  if (N == 0) return {entropy, bins, counts};

  const int threads = kWarpsPerBlock * 32;
  const int64_t blocks_needed = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int max_blocks = at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 16;
  const int blocks = static_cast<int>(std::min<int64_t>(blocks_needed, max_blocks));
  const size_t shmem = num_bins <= kMaxSharedBins ? num_bins * sizeof(unsigned int) : 0;
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto launch = [&](auto tag) {
    using scalar_t = decltype(tag);
    entropy_histogram_kernel<scalar_t><<<blocks, threads, shmem, stream>>>(
        logits.data_ptr<scalar_t>(), N, C, edges.data_ptr<double>(), num_bins, entropy.data_ptr<float>(),
        bins.data_ptr<int64_t>(), reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()),
        reinterpret_cast<unsigned long long*>(first_bad.data_ptr<int64_t>()));
  };
  switch (logits.scalar_type()) {  // float32, float16, bfloat16 only (float64 rejected above)
    case at::kFloat: launch(float{}); break;
    case at::kHalf: launch(at::Half{}); break;
    case at::kBFloat16: launch(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "entropy_histogram: unsupported dtype ", logits.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t bad = first_bad.item<int64_t>();  // synchronises: bad rows must raise here
  TORCH_CHECK(bad == N, "entropy_histogram: row ", bad,
              " of the logits contains NaN or inf; entropies are only defined for finite logits");
  return {entropy, bins, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CUDA, m) {
  m.impl("entropy_histogram", &entropy_histogram_cuda);
}

}  // namespace proxynas_fast
