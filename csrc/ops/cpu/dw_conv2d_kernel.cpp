// CPU depthwise convolution with a channel multiplier: forward, grad-input, grad-weight.
//
// PyTorch's CPU depthwise backward is slow; here every (sample, channel) plane is a small independent problem,
// computed in the "flat phase" form described at FlatGeometry: one unit-stride, register-tiled loop per tap over
// the flattened zero-padded plane, the same for every stride, dilation and plane size. The weight gradient, the
// stride-1 forward and input gradient, and where it pays the strided input gradient use the same layout but go
// row by row over only the rows and columns that count (see there). The tile loops have a fixed trip count, so
// the compiler vectorises them; they are compiled twice (baseline and AVX2+FMA) and the AVX2 copy is picked at
// run time when the CPU has it. Planes are spread over threads with at::parallel_for.
// bfloat16/half are computed in float (converted once per call); float64 serves gradcheck.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/cpu/compute_dtype.h"
#include "ops/cpu/flat_plane.h"
#include "ops/dw_conv2d.h"

namespace proxynas_fast {
namespace {
using namespace flat;

// Input gradient for stride 1, row by row: the padded plane has one phase, and only its H x W interior is
// needed, so instead of the whole Hq x Wq phase plane (7x7 planes with 5x5 dil 2: 15x15, a fifth of it used)
// only the interior rows are computed, in vectors from column PW: out[r][v] = sum_t w_t * G[offs_t + u0 + r*Wq
// + v*L], R rows x NV vectors held in registers for every tap (the tap weight broadcast once for all of them).
// Rows past the plane (r >= rows) are computed and dropped (the grid buffer has room for their reads); the
// others are stored straight into the plane (row stride ld), whole vectors as such and the lanes of a last,
// partial vector (cols not a multiple of L) one by one. With `spill` (the row is one column chunk, rows stored
// in order) a partial vector is stored whole where its extra lanes land on later rows of the plane, which are
// stored after it (all rows but the last one or few); nothing is written past the plane.
template <typename T, int R, int NV>
PNF_INLINE void gin_rows(const T* grids, const int64_t* offs, const T* wts, int64_t taps, int64_t u0, int64_t Wq,
                         T* dst, int64_t ld, int64_t rows, int64_t cols, bool spill) {
  using V = typename Vec<T>::type;
  constexpr int L = 32 / sizeof(T);
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t t = 0; t < taps; ++t) {
    const T wv = wts[t];
    const T* src = grids + offs[t] + u0;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] += wv * *reinterpret_cast<const V*>(src + r * Wq + v * L);
  }
  for (int r = 0; r < R && r < rows; ++r) {
    T* d = dst + r * ld;
    for (int v = 0; v < NV; ++v) {
      const int64_t left = cols - v * L;
      if (left >= L || (spill && left > 0 && (r + 1) * ld + L - left <= rows * ld)) {
        *reinterpret_cast<V*>(d + v * L) = acc[r][v];
      } else {
        for (int64_t l = 0; l < left; ++l) d[v * L + l] = acc[r][v][l];
      }
    }
  }
}

// Rows per block for NV vectors per row and `rest` rows left: about 8 accumulators; the last block of a plane
// with fewer rows left takes fewer (one vector per row: up to 3 junk rows, rather than more passes over the taps).
constexpr int64_t gin_block_rows(int64_t nv, int64_t rest) {
  return nv == 1   ? (rest >= 5 ? 8 : rest >= 3 ? 4 : rest)
         : nv == 2 ? (rest >= 4 ? 4 : rest >= 2 ? 2 : 1)
                   : (rest >= 2 ? 2 : 1);
}

// Vectors gin_plane computes per tap for an H x W plane (the rows of its blocks times their vectors).
inline int64_t gin_plane_vectors(int64_t H, int64_t W, int64_t L) {
  int64_t total = 0;
  for (int64_t v0 = 0, nv = (W + L - 1) / L; v0 < nv; v0 += 4) {
    const int64_t NV = std::min<int64_t>(4, nv - v0);
    for (int64_t h0 = 0, R = 0; h0 < H; h0 += R) {
      R = gin_block_rows(NV, H - h0);
      total += R * NV;
    }
  }
  return total;
}

// One plane: out rows [0, H) x columns [0, W) (row stride W) from the grid rows PH.. and columns PW.. (row
// stride Wq), rows in blocks of gin_block_rows, columns in chunks of up to 4 vectors.
template <typename T>
PNF_INLINE void gin_plane(const T* grids, const int64_t* offs, const T* wts, int64_t taps, int64_t H, int64_t W,
                          int64_t PH, int64_t PW, int64_t Wq, T* gi) {
  constexpr int L = 32 / sizeof(T);
  const int64_t nv = (W + L - 1) / L;
  for (int64_t v0 = 0; v0 < nv; v0 += 4) {
    const int64_t NV = std::min<int64_t>(4, nv - v0);
    const int64_t c0 = v0 * L, cols = std::min<int64_t>(W - c0, NV * L);
    const bool spill = nv <= 4;
    for (int64_t h0 = 0, R = 0; h0 < H; h0 += R) {
      const int64_t u0 = (PH + h0) * Wq + PW + c0, rest = H - h0;
      R = gin_block_rows(NV, rest);
      T* d = gi + h0 * W + c0;
      switch (NV * 16 + R) {
#define PNF_GIN_CASE(nv, r)                                                      \
  case nv * 16 + r:                                                              \
    gin_rows<T, r, nv>(grids, offs, wts, taps, u0, Wq, d, W, rest, cols, spill); \
    break;
        PNF_GIN_CASE(1, 1) PNF_GIN_CASE(1, 2) PNF_GIN_CASE(1, 4) PNF_GIN_CASE(1, 8)
        PNF_GIN_CASE(2, 1) PNF_GIN_CASE(2, 2) PNF_GIN_CASE(2, 4)
        PNF_GIN_CASE(3, 1) PNF_GIN_CASE(3, 2) PNF_GIN_CASE(4, 1) PNF_GIN_CASE(4, 2)
#undef PNF_GIN_CASE
        default: break;
      }
    }
  }
}

template <typename T>
void gin_plane_base(const T* grids, const int64_t* offs, const T* wts, int64_t taps, int64_t H, int64_t W,
                    int64_t PH, int64_t PW, int64_t Wq, T* gi) {
  gin_plane<T>(grids, offs, wts, taps, H, W, PH, PW, Wq, gi);
}
#ifdef PNF_HAVE_AVX2_CLONE
template <typename T>
__attribute__((target("avx2,fma"))) void gin_plane_avx2(const T* grids, const int64_t* offs, const T* wts,
                                                        int64_t taps, int64_t H, int64_t W, int64_t PH,
                                                        int64_t PW, int64_t Wq, T* gi) {
  gin_plane<T>(grids, offs, wts, taps, H, W, PH, PW, Wq, gi);
}
#endif
template <typename T>
void gin_plane_any(const T* grids, const int64_t* offs, const T* wts, int64_t taps, int64_t H, int64_t W,
                   int64_t PH, int64_t PW, int64_t Wq, T* gi) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return gin_plane_avx2<T>(grids, offs, wts, taps, H, W, PH, PW, Wq, gi);
#endif
  gin_plane_base<T>(grids, offs, wts, taps, H, W, PH, PW, Wq, gi);
}

// Forward. With stride 1 the padded input plane is a single phase and out[ho][wo] = sum_k w_k * P[off_k + ho*Wq
// + wo]: the same row-by-row computation as the stride-1 input gradient (gin_plane over the padded plane P with
// no border), which computes only the Ho x Wo outputs instead of the Wq-wide flat grid (7x7 planes with 5x5 dil
// 2: 7 vectors per tap instead of 16). It is taken where it needs no more vectors than the flat grid; strides
// above 1 keep the flat phase grid. The M kernels of a channel read the same padded plane.
bool forward_by_rows(const DwConvGeometry& g, const FlatGeometry& f, int64_t L) {
  if (g.SH != 1 || g.SW != 1) return false;
  return gin_plane_vectors(g.Ho, g.Wo, L) <= f.grid_t / L;
}

at::Tensor forward_impl(const at::Tensor& input_, const at::Tensor& weight_, const DwConvGeometry& g) {
  at::Tensor input = input_.contiguous();
  at::Tensor weight = weight_.contiguous();
  at::Tensor out = at::empty({g.N, g.M * g.C, g.Ho, g.Wo}, input.options());
  const FlatGeometry f = flat_geometry(g);
  const int64_t K = g.KH * g.KW;
  std::vector<int64_t> offs(K);
  for (int64_t k = 0; k < K; ++k) offs[k] = f.tap_phase[k] * f.phase_len + f.tap_off[k];
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dw_conv2d_cpu", [&] {
    constexpr int L = 32 / sizeof(scalar_t);
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
    const bool rows = forward_by_rows(g, f, L);
    // Row blocks read up to 3 rows past Ho and up to L - 1 lanes past Wo; the slack keeps that in the buffer.
    const int64_t slack = rows ? 8 * f.Wq + 4 * L : 0;
    at::parallel_for(0, g.N * g.C, grain_for(g.M * out_plane * K), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> phases(f.phases * f.phase_len + slack, scalar_t(0));
      std::vector<scalar_t> grid(rows ? 0 : f.grid_t);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.C, c = p % g.C;
        to_phases(x + p * in_plane, g, f, phases.data());
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = m * g.C + c;
          scalar_t* dst = y + (n * CO + o) * out_plane;
          if (rows) {
            gin_plane_any<scalar_t>(phases.data(), offs.data(), w + o * K, K, g.Ho, g.Wo, 0, 0, f.Wq, dst);
            continue;
          }
          gather<scalar_t>(phases.data(), offs.data(), w + o * K, K, grid.data(), f.grid_t, false);
          for (int64_t ho = 0; ho < g.Ho; ++ho) {
            std::copy(grid.data() + ho * f.Wq, grid.data() + ho * f.Wq + g.Wo, dst + ho * g.Wo);
          }
        }
      }
    });
  });
  return out;
}

at::Tensor dw_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DwConvGeometry g = dw_conv_geometry(input, weight, stride, padding, dilation);
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  return as_output_for(forward_impl(input.to(ct), weight.to(ct), g), input);
}

template <typename T>
void grad_input_rows(const T* go, const T* w, T* gi, const DwConvGeometry& g, const FlatGeometry& f) {
  constexpr int L = 32 / sizeof(T);
  const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, K = g.KH * g.KW;
  const int64_t front = f.max_off, glen = front + f.span_t;
  // Blocks read up to 3 rows past H and up to L - 1 lanes past W; the slack keeps the last grid's reads inside.
  const int64_t slack = 8 * f.Wq + 4 * L;
  std::vector<int64_t> offs(g.M * K);
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t k = 0; k < K; ++k) offs[m * K + k] = m * glen + front - f.tap_off[k];
  at::parallel_for(0, g.N * g.C, grain_for(g.M * out_plane * K), [&](int64_t begin, int64_t end) {
    std::vector<T> grids(g.M * glen + slack, T(0));
    std::vector<T> wts(g.M * K);
    int64_t wc = -1;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = m * g.C + c;
        to_grid(go + (n * CO + o) * out_plane, g, f, grids.data() + m * glen + front);
      }
      if (c != wc) {
        for (int64_t m = 0; m < g.M; ++m)
          for (int64_t k = 0; k < K; ++k) wts[m * K + k] = w[(m * g.C + c) * K + k];
        wc = c;
      }
      gin_plane_any<T>(grids.data(), offs.data(), wts.data(), g.M * K, g.H, g.W, g.PH, g.PW, f.Wq,
                       gi + p * in_plane);
    }
  });
}

// Input gradient (strides above 1; stride 1 takes grad_input_rows): phase[u] = sum_{m, k in phase} w[m, k] *
// G_m[u - off_k], with G_m the output-gradient grid of kernel m stored after max_off zeros (so every index is
// non-negative), then gathered back to the input plane. Only the positions of a phase plane that are input
// positions count (the rows r with r*SH + a - PH in [0, H), likewise the columns): where that takes fewer
// vectors, those are computed row by row (gin_plane over the phase's rows and columns, into a small plane then
// scattered to the input plane with the strides) instead of the whole Hq x Wq phase plane (7x7 planes with
// stride 2 and 5x5 dil 2: 7 vectors per tap instead of 16).
template <typename T>
void grad_input_planes(const T* go, const T* w, T* gi, const DwConvGeometry& g, const FlatGeometry& f) {
  constexpr int L = 32 / sizeof(T);
  const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, K = g.KH * g.KW;
  if (g.SH == 1 && g.SW == 1) return grad_input_rows<T>(go, w, gi, g, f);
  const int64_t front = f.max_off, glen = front + f.span_t;
  // Taps grouped by phase; offsets into the padded grids of all M kernels (grid m starts at m * glen).
  std::vector<std::vector<int64_t>> taps_of(f.phases), offs_of(f.phases);
  for (int64_t m = 0; m < g.M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      taps_of[f.tap_phase[k]].push_back(m * K + k);
      offs_of[f.tap_phase[k]].push_back(m * glen + front - f.tap_off[k]);
    }
  }
  // Phase (a, b) holds the input rows h0[a], h0[a] + SH, ... (nh[a] of them) from its row r0[a] on, and the
  // columns likewise.
  std::vector<int64_t> h0(g.SH), nh(g.SH), r0(g.SH), w0(g.SW), nw(g.SW), s0(g.SW);
  for (int64_t a = 0; a < g.SH; ++a) {
    h0[a] = ((a - g.PH) % g.SH + g.SH) % g.SH;
    nh[a] = h0[a] < g.H ? (g.H - 1 - h0[a]) / g.SH + 1 : 0;
    r0[a] = (h0[a] + g.PH) / g.SH;
  }
  for (int64_t b = 0; b < g.SW; ++b) {
    w0[b] = ((b - g.PW) % g.SW + g.SW) % g.SW;
    nw[b] = w0[b] < g.W ? (g.W - 1 - w0[b]) / g.SW + 1 : 0;
    s0[b] = (w0[b] + g.PW) / g.SW;
  }
  const int64_t nh_max = *std::max_element(nh.begin(), nh.end());
  const int64_t nw_max = *std::max_element(nw.begin(), nw.end());
  int64_t rows_vectors = 0;
  for (int64_t a = 0; a < g.SH; ++a)
    for (int64_t b = 0; b < g.SW; ++b)
      if (nh[a] > 0 && nw[b] > 0) rows_vectors += gin_plane_vectors(nh[a], nw[b], L);
  // (the per-phase scatter and the few taps per phase cost more than a vector or two: only clearly fewer)
  const bool rows = rows_vectors * 4 <= f.phases * (f.span_t / L) * 3;
  // Row blocks read up to 3 rows past a phase's last row and L - 1 lanes past its last column.
  const int64_t slack = rows ? 8 * f.Wq + 4 * L : 0;
  at::parallel_for(0, g.N * g.C, grain_for(g.M * out_plane * K), [&](int64_t begin, int64_t end) {
    std::vector<T> grids(g.M * glen + slack, T(0));
    std::vector<T> phases(rows ? 0 : f.phases * f.phase_len, T(0));
    std::vector<T> small(rows ? nh_max * nw_max : 0);
    std::vector<T> wts(g.M * K);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = m * g.C + c;
        to_grid(go + (n * CO + o) * out_plane, g, f, grids.data() + m * glen + front);
      }
      T* dst = gi + p * in_plane;
      for (int64_t ph = 0; ph < f.phases; ++ph) {
        const auto& taps = taps_of[ph];
        const int64_t a = ph / g.SW, b = ph % g.SW;
        if (rows && (nh[a] == 0 || nw[b] == 0)) continue;
        if (taps.empty()) {
          if (rows) {
            for (int64_t i = 0; i < nh[a]; ++i)
              for (int64_t j = 0; j < nw[b]; ++j) dst[(h0[a] + i * g.SH) * g.W + w0[b] + j * g.SW] = T(0);
          } else {
            std::fill(phases.begin() + ph * f.phase_len, phases.begin() + ph * f.phase_len + f.span_t, T(0));
          }
          continue;
        }
        for (size_t t = 0; t < taps.size(); ++t) {
          const int64_t m = taps[t] / K, k = taps[t] % K;
          wts[t] = w[(m * g.C + c) * K + k];
        }
        const int64_t ntaps = static_cast<int64_t>(taps.size());
        if (rows) {
          gin_plane_any<T>(grids.data(), offs_of[ph].data(), wts.data(), ntaps, nh[a], nw[b], r0[a], s0[b], f.Wq,
                           small.data());
          for (int64_t i = 0; i < nh[a]; ++i) {
            const T* s = small.data() + i * nw[b];
            T* d = dst + (h0[a] + i * g.SH) * g.W + w0[b];
            for (int64_t j = 0; j < nw[b]; ++j) d[j * g.SW] = s[j];
          }
        } else {
          gather<T>(grids.data(), offs_of[ph].data(), wts.data(), ntaps, phases.data() + ph * f.phase_len,
                    f.span_t, false);
        }
      }
      if (!rows) from_phases(phases.data(), g, f, dst);
    }
  });
}

// Weight gradient: dw[o, k] = sum_{n, ho, wo} G_{n,o}[ho, wo] * phase_k(x_{n,c})[ho*Wq + wo + off_k].
//
// Computed row by row, not over the flat grid: the output-gradient rows are read in place, ceil(Wo / L) vectors
// per row with the lanes past Wo of the last one masked to zero, instead of the Wq-wide zero-padded flat rows
// (7x7 planes with 5x5 dil 2: 7 vectors per plane and tap instead of 16). Taps are taken in blocks of up to
// WG_MAX_TAPS with one vector accumulator per tap: each gradient vector is loaded once per block, and the
// partial sums stay in vector lanes across rows and samples instead of one horizontal reduction per
// (sample, kernel, tap). After about WG_FLUSH vectors per lane the float lanes are added into double lanes
// (rows are taken in chunks of that many vectors); the lanes are summed once per (o, k) at the end. One thread
// owns input channel c (all its M kernels) and runs over the batch in a fixed order: no races, the same result
// for any thread count.
constexpr int WG_MAX_TAPS = 9;
constexpr int64_t WG_FLUSH = 64;

// The gradient rows of one plane: row ho starts at g + ho * stride; `full` whole vectors, then, if tail, one
// vector of which only the lanes set in `mask` are used, the others zeroed (they belong to the next row or
// plane; reading them stays inside the buffer, see grad_weight_planes).
template <typename T>
struct GradRows {
  const T* g;
  int64_t stride, full;
  bool tail;
  T mask[32 / sizeof(T)];  // all bits set or clear, read as MaskOf<T, 32> (ops/cpu/vec.h)
};

// acc[t] (L lanes each) += sum over rows [ho0, ho1) of grad row ho * tap[t][ho*Wq + lane] (lanes over the row's
// vectors). One accumulator per tap: the gradient vector is loaded once for KB taps.
template <typename T, int KB>
PNF_INLINE void wgrad_taps(const GradRows<T>& gr, const T* const* tap, int64_t Wq, int64_t ho0, int64_t ho1,
                           T* acc) {
  using V = typename Vec<T>::type;
  using VI = typename MaskOf<T, 32>::type;
  constexpr int L = 32 / sizeof(T);
  const T* p[KB];
  V a[KB];
  for (int t = 0; t < KB; ++t) {
    p[t] = tap[t] + ho0 * Wq;
    a[t] = *reinterpret_cast<const V*>(acc + t * L);
  }
  const int64_t full = gr.full, stride = gr.stride, rows = ho1 - ho0;
  const T* g = gr.g + ho0 * stride;
  if (full == 0) {  // narrow planes (Wo < L): one masked vector per row
    const VI mask = *reinterpret_cast<const VI*>(gr.mask);
    for (int64_t r = 0; r < rows; ++r, g += stride) {
      const V gv = reinterpret_cast<V>(*reinterpret_cast<const VI*>(g) & mask);
      const int64_t base = r * Wq;
      for (int t = 0; t < KB; ++t) a[t] += gv * *reinterpret_cast<const V*>(p[t] + base);
    }
  } else {
    for (int64_t r = 0; r < rows; ++r, g += stride) {
      const int64_t base = r * Wq;
      for (int64_t v = 0; v < full; ++v) {
        const V gv = *reinterpret_cast<const V*>(g + v * L);
        for (int t = 0; t < KB; ++t) a[t] += gv * *reinterpret_cast<const V*>(p[t] + base + v * L);
      }
      if (gr.tail) {
        const VI mask = *reinterpret_cast<const VI*>(gr.mask);
        const V gv = reinterpret_cast<V>(*reinterpret_cast<const VI*>(g + full * L) & mask);
        for (int t = 0; t < KB; ++t) a[t] += gv * *reinterpret_cast<const V*>(p[t] + base + full * L);
      }
    }
  }
  for (int t = 0; t < KB; ++t) *reinterpret_cast<V*>(acc + t * L) = a[t];
}

// One chunk of rows of one sample: all M kernels (grads[m]) against all K taps (tap[k]); acc holds M * K
// vectors of L lanes. With flush_to, acc is then added into those double lanes and cleared.
template <typename T>
PNF_INLINE void wgrad_chunk(const GradRows<T>* grads, int64_t M, const T* const* tap, int64_t K, int64_t Wq,
                            int64_t ho0, int64_t ho1, T* acc, double* flush_to) {
  constexpr int L = 32 / sizeof(T);
  const int64_t blocks = (K + WG_MAX_TAPS - 1) / WG_MAX_TAPS;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0, k0 = 0; b < blocks; ++b) {
      const int64_t kb = (K - k0) / (blocks - b);  // blocks as even as possible
      T* a = acc + (m * K + k0) * L;
      const T* const* tp = tap + k0;
      switch (kb) {
#define PNF_WG_CASE(n)                               \
  case n:                                            \
    wgrad_taps<T, n>(grads[m], tp, Wq, ho0, ho1, a); \
    break;
        PNF_WG_CASE(1) PNF_WG_CASE(2) PNF_WG_CASE(3) PNF_WG_CASE(4) PNF_WG_CASE(5)
        PNF_WG_CASE(6) PNF_WG_CASE(7) PNF_WG_CASE(8) PNF_WG_CASE(9)
#undef PNF_WG_CASE
        default: break;
      }
      k0 += kb;
    }
  }
  if (flush_to != nullptr) {
    const int64_t n = M * K * L;
    for (int64_t i = 0; i < n; ++i) flush_to[i] += static_cast<double>(acc[i]);
    std::fill(acc, acc + n, T(0));
  }
}

template <typename T>
void wgrad_chunk_base(const GradRows<T>* g, int64_t M, const T* const* tap, int64_t K, int64_t Wq, int64_t ho0,
                      int64_t ho1, T* acc, double* flush_to) {
  wgrad_chunk<T>(g, M, tap, K, Wq, ho0, ho1, acc, flush_to);
}
#ifdef PNF_HAVE_AVX2_CLONE
template <typename T>
__attribute__((target("avx2,fma"))) void wgrad_chunk_avx2(const GradRows<T>* g, int64_t M, const T* const* tap,
                                                          int64_t K, int64_t Wq, int64_t ho0, int64_t ho1, T* acc,
                                                          double* flush_to) {
  wgrad_chunk<T>(g, M, tap, K, Wq, ho0, ho1, acc, flush_to);
}
#endif
template <typename T>
void wgrad_chunk_any(const GradRows<T>* g, int64_t M, const T* const* tap, int64_t K, int64_t Wq, int64_t ho0,
                     int64_t ho1, T* acc, double* flush_to) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return wgrad_chunk_avx2<T>(g, M, tap, K, Wq, ho0, ho1, acc, flush_to);
#endif
  wgrad_chunk_base<T>(g, M, tap, K, Wq, ho0, ho1, acc, flush_to);
}

template <typename T>
void grad_weight_planes(const T* go, const T* x, double* out, const DwConvGeometry& g, const FlatGeometry& f) {
  constexpr int L = 32 / sizeof(T);
  const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, K = g.KH * g.KW;
  const int64_t Wr = round_up(g.Wo, L), nv = Wr / L;
  const int64_t rows_per_chunk = std::max<int64_t>(1, WG_FLUSH / nv);
  const int64_t next_chunk = std::min(rows_per_chunk, g.Ho) * nv;  // vectors per lane of a chunk, at most
  // The gradient planes are read in place; a row's last vector reads Wr - Wo elements past the row, which for
  // the planes at the very end of the tensor would leave it, so those few are copied into a padded buffer.
  const int64_t total = g.N * CO * out_plane, reach = (g.Ho - 1) * g.Wo + Wr;
  GradRows<T> proto;
  proto.stride = g.Wo;
  proto.full = g.Wo / L;
  proto.tail = g.Wo % L != 0;
  for (int l = 0; l < L; ++l) {
    using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    const I bits = l < g.Wo % L ? I(-1) : I(0);
    std::memcpy(&proto.mask[l], &bits, sizeof(T));
  }
  std::vector<int64_t> offs(K);
  for (int64_t k = 0; k < K; ++k) offs[k] = f.tap_phase[k] * f.phase_len + f.tap_off[k];
  at::parallel_for(0, g.C, grain_for(g.N * g.M * out_plane * K), [&](int64_t begin, int64_t end) {
    // Taps read up to Wr - Wo lanes past the last flat position; the slack keeps that inside the buffer.
    std::vector<T> phases(f.phases * f.phase_len + Wr, T(0));
    std::vector<T> spill(g.M * reach, T(0));
    std::vector<T> accf(g.M * K * L);
    std::vector<double> accd(g.M * K * L);
    std::vector<GradRows<T>> grads(g.M, proto);
    std::vector<const T*> tap(K);
    for (int64_t k = 0; k < K; ++k) tap[k] = phases.data() + offs[k];
    for (int64_t c = begin; c < end; ++c) {
      std::fill(accf.begin(), accf.end(), T(0));
      std::fill(accd.begin(), accd.end(), 0.0);
      int64_t since_flush = 0;  // vectors summed per float lane since the last flush
      const int64_t last = g.N - 1;
      for (int64_t n = 0; n < g.N; ++n) {
        to_phases(x + (n * g.C + c) * in_plane, g, f, phases.data());
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t start = (n * CO + m * g.C + c) * out_plane;
          if (start + reach <= total) {
            grads[m].g = go + start;
          } else {
            std::copy(go + start, go + start + out_plane, spill.data() + m * reach);
            grads[m].g = spill.data() + m * reach;
          }
        }
        for (int64_t ho0 = 0; ho0 < g.Ho; ho0 += rows_per_chunk) {
          const int64_t ho1 = std::min(g.Ho, ho0 + rows_per_chunk);
          since_flush += (ho1 - ho0) * nv;
          // flush before the next chunk would take a lane past WG_FLUSH vectors (or past one chunk's)
          const bool flush = since_flush + next_chunk > WG_FLUSH || (n == last && ho1 == g.Ho);
          if (flush) since_flush = 0;
          wgrad_chunk_any<T>(grads.data(), g.M, tap.data(), K, f.Wq, ho0, ho1, accf.data(),
                             flush ? accd.data() : nullptr);
        }
      }
      for (int64_t m = 0; m < g.M; ++m) {
        for (int64_t k = 0; k < K; ++k) {
          const double* lanes = accd.data() + (m * K + k) * L;
          double total_k = 0;
          for (int l = 0; l < L; ++l) total_k += lanes[l];
          out[(m * g.C + c) * K + k] = total_k;
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_, const at::Tensor& input_,
                                                 const at::Tensor& weight_, const DwConvGeometry& g,
                                                 bool need_input, bool need_weight) {
  at::Tensor grad = grad_.contiguous();
  at::Tensor input = input_.contiguous();
  at::Tensor weight = weight_.contiguous();
  const FlatGeometry f = flat_geometry(g);
  at::Tensor gin, gw;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dw_conv2d_backward_cpu", [&] {
    if (need_input) {
      gin = at::empty({g.N, g.C, g.H, g.W}, input.options());
      grad_input_planes<scalar_t>(grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  gin.mutable_data_ptr<scalar_t>(), g, f);
    }
    if (need_weight) {
      at::Tensor acc = at::zeros({g.M * g.C, g.KH * g.KW}, input.options().dtype(at::kDouble));
      grad_weight_planes<scalar_t>(grad.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                   acc.mutable_data_ptr<double>(), g, f);
      gw = acc.to(input.scalar_type()).view({g.M * g.C, 1, g.KH, g.KW});
    }
  });
  return {gin, gw};
}

std::tuple<at::Tensor, at::Tensor> dw_conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& weight, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                                          std::array<bool, 2> output_mask) {
  const DwConvGeometry g = dw_conv_geometry(input, weight, stride, padding, dilation);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.M * g.C &&
                  grad_output.size(2) == g.Ho && grad_output.size(3) == g.Wo,
              "dw_conv2d_backward: grad_output has shape ", grad_output.sizes(), ", expected [", g.N, ", ",
              g.M * g.C, ", ", g.Ho, ", ", g.Wo, "]");
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  auto [gin, gw] = backward_impl(grad_output.to(ct), input.to(ct), weight.to(ct), g, output_mask[0], output_mask[1]);
  return {as_output_for(gin, input), as_dtype_of(gw, weight)};
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CPU, m) {
  m.impl("dw_conv2d", &dw_conv2d_cpu);
  m.impl("dw_conv2d_backward", &dw_conv2d_backward_cpu);
}

}  // namespace proxynas_fast
