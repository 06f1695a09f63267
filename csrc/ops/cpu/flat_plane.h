// The "flat phase" layout shared by the CPU depthwise-convolution and pooling kernels (header-only).
//
// G is any geometry with fields H, W (input plane), KH, KW, SH, SW, PH, PW, DH, DW (window), Ho, Wo (output).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/cpu/vec.h"

namespace proxynas_fast {
namespace flat {

#define PNF_INLINE inline __attribute__((always_inline))

// Output elements per register tile: 32 floats = 4 AVX2 accumulators, enough independent FMAs to hide latency.
constexpr int64_t TILE = 32;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Items per thread chunk so that a chunk has at least ~32k multiply-adds: small problems stay on one thread
// (a parallel region costs more than they do, badly so on a loaded machine).
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

#if defined(__x86_64__) && defined(__GNUC__)
// Kernels compile their hot loops twice (baseline and __attribute__((target("avx2,fma")))) and pick at run time.
#define PNF_HAVE_AVX2_CLONE 1
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

// The "flat phase" form of a strided, dilated, padded sliding-window operation (depthwise convolution, pooling).
//
// The padded input plane (Hp x Wp, both rounded up to multiples of the stride) is split into SH*SW phase
// planes of Hq x Wq, phase (a, b)[r, s] = padded[r*SH + a, s*SW + b]. Tap (i, j) then reads phase
// ((i*DH) % SH, (j*DW) % SW) at row/column shift ((i*DH) / SH, (j*DW) / SW), so every output plane is
//     grid[q] = sum_k w_k * phase_k[q + off_k],   q = ho*Wq + wo,   off_k = shift_row*Wq + shift_col,
// one long unit-stride loop per tap over the flattened plane, whatever the stride, dilation and plane size
// (small 8x8 planes and stride 2 vectorise as well as large ones). Columns wo >= Wo of the grid are junk and
// dropped. The input gradient is the same gather in the other direction (phase[u] = sum_k w_k * G[u - off_k]
// over the zero-filled output-gradient grid G), and the weight gradient one dot product per tap.
struct FlatGeometry {
  int64_t phases, Hq, Wq;
  int64_t grid;       // Ho * Wq, output positions on the flat grid
  int64_t grid_t;     // grid rounded up to TILE
  int64_t max_off;    // largest tap offset
  int64_t phase_len;  // length of one phase buffer (room for tile overrun)
  int64_t span_t;     // Hq * Wq rounded up to TILE: positions of one phase plane, for the input gradient
  std::vector<int64_t> tap_phase, tap_off;  // per tap k = i*KW + j
};

template <typename G>
FlatGeometry flat_geometry(const G& g) {
  FlatGeometry f;
  const int64_t Hp = std::max(g.H + g.PH, (g.Ho - 1) * g.SH + (g.KH - 1) * g.DH + 1);
  const int64_t Wp = std::max(g.W + g.PW, (g.Wo - 1) * g.SW + (g.KW - 1) * g.DW + 1);
  f.phases = g.SH * g.SW;
  f.Hq = round_up(Hp, g.SH) / g.SH;
  f.Wq = round_up(Wp, g.SW) / g.SW;
  f.grid = g.Ho * f.Wq;
  f.grid_t = round_up(f.grid, TILE);
  f.max_off = 0;
  for (int64_t i = 0; i < g.KH; ++i) {
    for (int64_t j = 0; j < g.KW; ++j) {
      const int64_t a = (i * g.DH) % g.SH, b = (j * g.DW) % g.SW;
      const int64_t off = (i * g.DH / g.SH) * f.Wq + j * g.DW / g.SW;
      f.tap_phase.push_back(a * g.SW + b);
      f.tap_off.push_back(off);
      f.max_off = std::max(f.max_off, off);
    }
  }
  f.span_t = round_up(f.Hq * f.Wq, TILE);
  f.phase_len = std::max(f.span_t, f.grid_t + f.max_off);
  return f;
}

// The flat-phase loops' vectors: 32 bytes (ops/cpu/vec.h).
template <typename T>
struct Vec {
  typedef typename VecOf<T, 32>::type type;
};

// out[q] (+)= sum_k w[k] * base[offs[k] + q] for q in [0, len), len a multiple of TILE.
template <typename T>
PNF_INLINE void gather_taps(const T* base, const int64_t* offs, const T* w, int64_t taps, T* out, int64_t len,
                            bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int L = 32 / sizeof(T), NV = TILE / L;
  for (int64_t q0 = 0; q0 < len; q0 += TILE) {
    V acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = accumulate ? *reinterpret_cast<const V*>(out + q0 + v * L) : V{};
    for (int64_t k = 0; k < taps; ++k) {
      const T wv = w[k];
      const T* s = base + offs[k] + q0;
      for (int v = 0; v < NV; ++v) acc[v] += wv * *reinterpret_cast<const V*>(s + v * L);
    }
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out + q0 + v * L) = acc[v];
  }
}

// sum_q a[q] * b[q] for q in [0, len), len a multiple of TILE.
template <typename T>
PNF_INLINE T dot_tiles(const T* a, const T* b, int64_t len) {
  using V = typename Vec<T>::type;
  constexpr int L = 32 / sizeof(T), NV = TILE / L;
  V part[NV];
  for (int v = 0; v < NV; ++v) part[v] = V{};
  for (int64_t q0 = 0; q0 < len; q0 += TILE) {
    for (int v = 0; v < NV; ++v) {
      part[v] += *reinterpret_cast<const V*>(a + q0 + v * L) * *reinterpret_cast<const V*>(b + q0 + v * L);
    }
  }
  for (int v = 1; v < NV; ++v) part[0] += part[v];
  T total = 0;
  for (int l = 0; l < L; ++l) total += part[0][l];
  return total;
}

// gather_taps compiled for the baseline ISA and for AVX2+FMA; `gather` picks at run time.
template <typename T>
void gather_base(const T* b, const int64_t* o, const T* w, int64_t k, T* out, int64_t n, bool a) {
  gather_taps<T>(b, o, w, k, out, n, a);
}
#ifdef PNF_HAVE_AVX2_CLONE
template <typename T>
__attribute__((target("avx2,fma"))) void gather_avx2(const T* b, const int64_t* o, const T* w, int64_t k, T* out,
                                                     int64_t n, bool a) {
  gather_taps<T>(b, o, w, k, out, n, a);
}
#endif
template <typename T>
void gather(const T* b, const int64_t* o, const T* w, int64_t k, T* out, int64_t n, bool a) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return gather_avx2<T>(b, o, w, k, out, n, a);
#endif
  gather_base<T>(b, o, w, k, out, n, a);
}

// Scatters an H x W input plane into its phase planes (buffers of f.phase_len each; positions outside the data
// keep the padding value the buffers were filled with, because every plane writes the same positions).
template <typename T, typename G>
void to_phases(const T* src, const G& g, const FlatGeometry& f, T* phases) {
  for (int64_t h = 0; h < g.H; ++h) {
    const int64_t hp = h + g.PH;
    const int64_t a = hp % g.SH, r = hp / g.SH;
    const T* row = src + h * g.W;
    if (g.SW == 1) {
      std::copy(row, row + g.W, phases + a * f.phase_len + r * f.Wq + g.PW);
    } else {
      // column phase by column phase: input columns w0, w0 + SW, ... land at consecutive positions
      for (int64_t w0 = 0; w0 < std::min(g.SW, g.W); ++w0) {
        const int64_t wp = w0 + g.PW;
        T* d = phases + (a * g.SW + wp % g.SW) * f.phase_len + r * f.Wq + wp / g.SW;
        for (int64_t w = w0, i = 0; w < g.W; w += g.SW, ++i) d[i] = row[w];
      }
    }
  }
}

// The inverse: gathers the input-plane positions back out of phase planes.
template <typename T, typename G>
void from_phases(const T* phases, const G& g, const FlatGeometry& f, T* dst) {
  for (int64_t h = 0; h < g.H; ++h) {
    const int64_t hp = h + g.PH;
    const int64_t a = hp % g.SH, r = hp / g.SH;
    T* row = dst + h * g.W;
    if (g.SW == 1) {
      const T* s = phases + a * f.phase_len + r * f.Wq + g.PW;
      std::copy(s, s + g.W, row);
    } else {
      for (int64_t w0 = 0; w0 < std::min(g.SW, g.W); ++w0) {
        const int64_t wp = w0 + g.PW;
        const T* s = phases + (a * g.SW + wp % g.SW) * f.phase_len + r * f.Wq + wp / g.SW;
        for (int64_t w = w0, i = 0; w < g.W; w += g.SW, ++i) row[w] = s[i];
      }
    }
  }
}

// Copies an Ho x Wo output-gradient plane onto the flat grid (row stride Wq) at `dst` (junk columns stay zero).
template <typename T, typename G>
void to_grid(const T* src, const G& g, const FlatGeometry& f, T* dst) {
  for (int64_t ho = 0; ho < g.Ho; ++ho) std::copy(src + ho * g.Wo, src + (ho + 1) * g.Wo, dst + ho * f.Wq);
}

}  // namespace flat
}  // namespace proxynas_fast
