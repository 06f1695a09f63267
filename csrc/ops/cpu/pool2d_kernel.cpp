// CPU max / average pooling (forward and backward) in the flat phase layout (ops/cpu/flat_plane.h).
//
// PyTorch's CPU max_pool2d_with_indices and avg_pool2d on NCHW walk each window element by element; here a plane is
// laid out once in its padded phase planes (padding -inf for max, 0 for average), then every tap is one
// vectorised max or add over the flattened plane. The average divides by the count of input positions in each
// window (count_include_pad=False). Max backward finds each window's winner again by comparing with the forward
// output (first in row-major order, like PyTorch; the last NaN when the output is NaN), so no indices are kept;
// average backward is a gather over the count-scaled output gradient, like the depthwise input gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/compute_dtype.h"
#include "ops/cpu/flat_plane.h"
#include "ops/mixed_node.h"  // plane_contiguous

namespace proxynas_fast {
namespace {
using namespace flat;

struct PoolGeometry {
  int64_t N, C, H, W;
  int64_t KH, KW, SH, SW, PH, PW, DH, DW;
  int64_t Ho, Wo;
};

PoolGeometry pool_geometry(const at::Tensor& input, at::IntArrayRef kernel, at::IntArrayRef stride,
                           at::IntArrayRef padding) {
  TORCH_CHECK(input.dim() == 4, "pool2d: input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2,
              "pool2d: kernel, stride and padding take 2 values each");
  PoolGeometry g{input.size(0), input.size(1), input.size(2), input.size(3), kernel[0], kernel[1], stride[0],
                 stride[1], padding[0], padding[1], 1, 1, 0, 0};
  TORCH_CHECK(g.KH > 0 && g.KW > 0 && g.SH > 0 && g.SW > 0, "pool2d: kernel and stride must be positive");
  TORCH_CHECK(g.PH >= 0 && g.PW >= 0 && 2 * g.PH <= g.KH && 2 * g.PW <= g.KW,
              "pool2d: padding must be non-negative and at most half the kernel, got ", padding, " for kernel ",
              kernel);
  g.Ho = (g.H + 2 * g.PH - g.KH) / g.SH + 1;
  g.Wo = (g.W + 2 * g.PW - g.KW) / g.SW + 1;
  TORCH_CHECK(g.H + 2 * g.PH >= g.KH && g.W + 2 * g.PW >= g.KW && g.Ho > 0 && g.Wo > 0,
              "pool2d: output would be empty for input ", input.sizes(), " and kernel ", kernel);
  return g;
}

// 1 / (number of input positions in the window) at every valid grid position, 0 on the junk columns.
template <typename T>
std::vector<T> inverse_counts(const PoolGeometry& g, const FlatGeometry& f) {
  std::vector<T> inv(f.grid_t, T(0));
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    const int64_t h0 = ho * g.SH - g.PH;
    const int64_t rows = std::min(h0 + g.KH, g.H) - std::max<int64_t>(h0, 0);
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const int64_t w0 = wo * g.SW - g.PW;
      const int64_t cols = std::min(w0 + g.KW, g.W) - std::max<int64_t>(w0, 0);
      inv[ho * f.Wq + wo] = T(1) / T(rows * cols);
    }
  }
  return inv;
}

// grid[q] = max_k base[offs[k] + q] (NaN wins), or sum_k base[offs[k] + q] * inv[q], for q in [0, len).
template <typename T>
PNF_INLINE void pool_taps(const T* base, const int64_t* offs, int64_t taps, const T* inv, T* out, int64_t len,
                          bool is_max) {
  using V = typename Vec<T>::type;
  constexpr int L = 32 / sizeof(T), NV = TILE / L;
  for (int64_t q0 = 0; q0 < len; q0 += TILE) {
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = *reinterpret_cast<const V*>(base + offs[0] + q0 + v * L);
    for (int64_t k = 1; k < taps; ++k) {
      const T* s = base + offs[k] + q0;
      for (int v = 0; v < NV; ++v) {
        const V x = *reinterpret_cast<const V*>(s + v * L);
        if (is_max) {
          acc[v] = ((x > acc[v]) | (x != x)) ? x : acc[v];
        } else {
          acc[v] += x;
        }
      }
    }
    if (!is_max) {
      for (int v = 0; v < NV; ++v) acc[v] *= *reinterpret_cast<const V*>(inv + q0 + v * L);
    }
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out + q0 + v * L) = acc[v];
  }
}

template <typename T>
void pool_base(const T* b, const int64_t* o, int64_t k, const T* inv, T* out, int64_t n, bool m) {
  pool_taps<T>(b, o, k, inv, out, n, m);
}
#ifdef PNF_HAVE_AVX2_CLONE
template <typename T>
__attribute__((target("avx2,fma"))) void pool_avx2(const T* b, const int64_t* o, int64_t k, const T* inv, T* out,
                                                   int64_t n, bool m) {
  pool_taps<T>(b, o, k, inv, out, n, m);
}
#endif

template <typename T>
void pool(const T* b, const int64_t* o, int64_t k, const T* inv, T* out, int64_t n, bool m) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return pool_avx2<T>(b, o, k, inv, out, n, m);
#endif
  pool_base<T>(b, o, k, inv, out, n, m);
}

template <typename T>
T pad_value(bool is_max) {
  return is_max ? -std::numeric_limits<T>::infinity() : T(0);
}

// The input plane p = n * C + c: planes of one sample adjacent, samples `batch_stride` apart (a channel block of a
// bigger tensor, e.g. PC-DARTS's partial channels, is read in place).
template <typename T>
const T* input_plane(const T* x, int64_t p, const PoolGeometry& g, int64_t batch_stride) {
  return x + (p / g.C) * batch_stride + (p % g.C) * g.H * g.W;
}

template <typename T>
void forward_planes(const T* x, int64_t x_batch_stride, T* y, const PoolGeometry& g, const FlatGeometry& f,
                    bool is_max) {
  const int64_t K = g.KH * g.KW, out_plane = g.Ho * g.Wo;
  std::vector<int64_t> offs(K);
  for (int64_t k = 0; k < K; ++k) offs[k] = f.tap_phase[k] * f.phase_len + f.tap_off[k];
  const std::vector<T> inv = inverse_counts<T>(g, f);
  at::parallel_for(0, g.N * g.C, grain_for(out_plane * K), [&](int64_t begin, int64_t end) {
    std::vector<T> phases(f.phases * f.phase_len, pad_value<T>(is_max));
    std::vector<T> grid(f.grid_t);
    for (int64_t p = begin; p < end; ++p) {
      to_phases(input_plane(x, p, g, x_batch_stride), g, f, phases.data());
      pool<T>(phases.data(), offs.data(), K, inv.data(), grid.data(), f.grid_t, is_max);
      T* dst = y + p * out_plane;
      for (int64_t ho = 0; ho < g.Ho; ++ho) {
        std::copy(grid.data() + ho * f.Wq, grid.data() + ho * f.Wq + g.Wo, dst + ho * g.Wo);
      }
    }
  });
}

// Average: phase[u] = sum_{k in phase} G[u - off_k], G the count-scaled output gradient on the grid.
template <typename T>
void avg_backward_planes(const T* go, T* gi, const PoolGeometry& g, const FlatGeometry& f) {
  const int64_t K = g.KH * g.KW, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
  const int64_t front = f.max_off, glen = front + f.span_t;
  std::vector<std::vector<int64_t>> offs_of(f.phases);
  for (int64_t k = 0; k < K; ++k) offs_of[f.tap_phase[k]].push_back(front - f.tap_off[k]);
  const std::vector<T> ones(K, T(1));
  const std::vector<T> inv = inverse_counts<T>(g, f);
  at::parallel_for(0, g.N * g.C, grain_for(out_plane * K), [&](int64_t begin, int64_t end) {
    std::vector<T> grid(glen, T(0));
    std::vector<T> phases(f.phases * f.phase_len, T(0));
    for (int64_t p = begin; p < end; ++p) {
      const T* src = go + p * out_plane;
      for (int64_t ho = 0; ho < g.Ho; ++ho) {
        T* row = grid.data() + front + ho * f.Wq;
        for (int64_t wo = 0; wo < g.Wo; ++wo) row[wo] = src[ho * g.Wo + wo] * inv[ho * f.Wq + wo];
      }
      for (int64_t ph = 0; ph < f.phases; ++ph) {
        T* dst = phases.data() + ph * f.phase_len;
        if (offs_of[ph].empty()) {
          std::fill(dst, dst + f.span_t, T(0));
        } else {
          gather<T>(grid.data(), offs_of[ph].data(), ones.data(), static_cast<int64_t>(offs_of[ph].size()), dst,
                    f.span_t, false);
        }
      }
      from_phases(phases.data(), g, f, gi + p * in_plane);
    }
  });
}

// Max backward of one tile of grid positions [q0, q0 + TILE): tap by tap in row-major window order, the first
// valid input equal to the output claims the output's gradient (vectorised; outputs must not be NaN).
template <typename T>
PNF_INLINE void max_backward_taps(const T* phases, const int64_t* offs, int64_t taps, const T* valid, int64_t vstride,
                                  const T* y, const T* gy, T* grads, int64_t len) {
  using V = typename Vec<T>::type;
  using Mask = decltype(V{} == V{});
  constexpr int L = 32 / sizeof(T), NV = TILE / L;
  for (int64_t q0 = 0; q0 < len; q0 += TILE) {
    Mask claimed[NV];
    V best[NV], g[NV];
    for (int v = 0; v < NV; ++v) {
      claimed[v] = Mask{};
      best[v] = *reinterpret_cast<const V*>(y + q0 + v * L);
      g[v] = *reinterpret_cast<const V*>(gy + q0 + v * L);
    }
    for (int64_t k = 0; k < taps; ++k) {
      const T* x = phases + offs[k] + q0;
      const T* ok = valid + k * vstride + q0;
      T* d = grads + offs[k] + q0;
      for (int v = 0; v < NV; ++v) {
        const V xv = *reinterpret_cast<const V*>(x + v * L);
        const Mask win = (xv == best[v]) & (*reinterpret_cast<const V*>(ok + v * L) != V{}) & ~claimed[v];
        claimed[v] |= win;
        *reinterpret_cast<V*>(d + v * L) += win ? g[v] : V{};
      }
    }
  }
}

template <typename T>
void max_backward_base(const T* p, const int64_t* o, int64_t k, const T* ok, int64_t vs, const T* y, const T* g,
                       T* d, int64_t n) {
  max_backward_taps<T>(p, o, k, ok, vs, y, g, d, n);
}
#ifdef PNF_HAVE_AVX2_CLONE
template <typename T>
__attribute__((target("avx2,fma"))) void max_backward_avx2(const T* p, const int64_t* o, int64_t k, const T* ok,
                                                           int64_t vs, const T* y, const T* g, T* d, int64_t n) {
  max_backward_taps<T>(p, o, k, ok, vs, y, g, d, n);
}
#endif
template <typename T>
void max_backward_tiles(const T* p, const int64_t* o, int64_t k, const T* ok, int64_t vs, const T* y, const T* g,
                        T* d, int64_t n) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return max_backward_avx2<T>(p, o, k, ok, vs, y, g, d, n);
#endif
  max_backward_base<T>(p, o, k, ok, vs, y, g, d, n);
}

// Max: each output's gradient goes to its window's winner, found again by comparison with the output. Planes
// with a NaN output take a scalar path (the last NaN of a window wins, like PyTorch).
template <typename T>
void max_backward_planes(const T* go, const T* x, int64_t x_batch_stride, const T* y, T* gi, const PoolGeometry& g,
                         const FlatGeometry& f) {
  const int64_t K = g.KH * g.KW, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
  std::vector<int64_t> offs(K);
  for (int64_t k = 0; k < K; ++k) offs[k] = f.tap_phase[k] * f.phase_len + f.tap_off[k];
  // valid[k][q]: tap k of output q reads an input position (not padding).
  std::vector<T> valid(K * f.grid_t, T(0));
  for (int64_t i = 0; i < g.KH; ++i) {
    for (int64_t j = 0; j < g.KW; ++j) {
      for (int64_t ho = 0; ho < g.Ho; ++ho) {
        const int64_t h = ho * g.SH + i - g.PH;
        if (h < 0 || h >= g.H) continue;
        for (int64_t wo = 0; wo < g.Wo; ++wo) {
          const int64_t w = wo * g.SW + j - g.PW;
          if (w >= 0 && w < g.W) valid[(i * g.KW + j) * f.grid_t + ho * f.Wq + wo] = T(1);
        }
      }
    }
  }
  at::parallel_for(0, g.N * g.C, grain_for(out_plane * K), [&](int64_t begin, int64_t end) {
    std::vector<T> phases(f.phases * f.phase_len, -std::numeric_limits<T>::infinity());
    std::vector<T> grads(f.phases * f.phase_len, T(0));
    std::vector<T> ygrid(f.grid_t, T(0)), ggrid(f.grid_t, T(0));
    for (int64_t p = begin; p < end; ++p) {
      to_phases(input_plane(x, p, g, x_batch_stride), g, f, phases.data());
      std::fill(grads.begin(), grads.end(), T(0));
      const T* yp = y + p * out_plane;
      const T* gp = go + p * out_plane;
      bool has_nan = false;
      for (int64_t q = 0; q < out_plane; ++q) has_nan |= std::isnan(yp[q]);
      if (!has_nan) {
        to_grid(yp, g, f, ygrid.data());
        to_grid(gp, g, f, ggrid.data());
        max_backward_tiles<T>(phases.data(), offs.data(), K, valid.data(), f.grid_t, ygrid.data(), ggrid.data(),
                              grads.data(), f.grid_t);
      } else {
        for (int64_t ho = 0; ho < g.Ho; ++ho) {
          for (int64_t wo = 0; wo < g.Wo; ++wo) {
            const T best = yp[ho * g.Wo + wo];
            const int64_t q = ho * f.Wq + wo;
            int64_t winner = -1;
            for (int64_t k = 0; k < K; ++k) {
              if (valid[k * f.grid_t + q] == T(0)) continue;
              const T v = phases[offs[k] + q];
              if (std::isnan(best) ? std::isnan(v) : (v == best && winner < 0)) winner = k;
            }
            if (winner >= 0) grads[offs[winner] + q] += gp[ho * g.Wo + wo];
          }
        }
      }
      from_phases(grads.data(), g, f, gi + p * in_plane);
    }
  });
}

// The input as the kernels read it: in place when its planes are contiguous, else a contiguous copy.
at::Tensor planes_of(const at::Tensor& t) { return plane_contiguous(t) ? t : t.contiguous(); }

at::Tensor forward_impl(const at::Tensor& input_, bool is_max, const PoolGeometry& g) {
  const at::Tensor input = planes_of(input_);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, input.options());
  const FlatGeometry f = flat_geometry(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pool2d_cpu", [&] {
    forward_planes<scalar_t>(input.const_data_ptr<scalar_t>(), input.stride(0), out.mutable_data_ptr<scalar_t>(), g,
                             f, is_max);
  });
  return out;
}

at::Tensor backward_impl(const at::Tensor& grad_, const at::Tensor& input_, const at::Tensor& output_, bool is_max,
                         const PoolGeometry& g) {
  at::Tensor grad = grad_.contiguous();
  at::Tensor gin = at::empty({g.N, g.C, g.H, g.W}, grad.options());
  const FlatGeometry f = flat_geometry(g);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "pool2d_backward_cpu", [&] {
    if (is_max) {
      const at::Tensor input = planes_of(input_), output = output_.contiguous();
      max_backward_planes<scalar_t>(grad.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                    input.stride(0), output.const_data_ptr<scalar_t>(),
                                    gin.mutable_data_ptr<scalar_t>(), g, f);
    } else {
      avg_backward_planes<scalar_t>(grad.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g, f);
    }
  });
  return gin;
}

at::Tensor pool2d_cpu(const at::Tensor& input, bool is_max, at::IntArrayRef kernel, at::IntArrayRef stride,
                      at::IntArrayRef padding) {
  const PoolGeometry g = pool_geometry(input, kernel, stride, padding);
  return as_output_for(forward_impl(input.to(compute_dtype(input.scalar_type())), is_max, g), input);
}

at::Tensor pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& output,
                               bool is_max, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding) {
  const PoolGeometry g = pool_geometry(input, kernel, stride, padding);
  for (const at::Tensor* t : {&grad_output, &output}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) == g.N && t->size(1) == g.C && t->size(2) == g.Ho && t->size(3) == g.Wo,
                "pool2d_backward: grad_output and output must be [", g.N, ", ", g.C, ", ", g.Ho, ", ", g.Wo,
                "], got ", t->sizes());
  }
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  // average pooling's backward reads neither input nor output: they are not converted
  return as_output_for(backward_impl(grad_output.to(ct), is_max ? input.to(ct) : input,
                                     is_max ? output.to(ct) : output, is_max, g),
                       input);
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CPU, m) {
  m.impl("pool2d", &pool2d_cpu);
  m.impl("pool2d_backward", &pool2d_backward_cpu);
}

}  // namespace proxynas_fast
