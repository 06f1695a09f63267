// CPU depthwise convolution with a channel multiplier: forward, grad-input, grad-weight.
//
// PyTorch's CPU depthwise backward is slow; here every (sample, channel) plane is a small independent problem.
// A plane is copied into a zero-padded buffer (so the inner loops have no bounds checks), then each output row
// is computed in register tiles of TILE columns that accumulate all KH*KW taps before one store. The tile loops
// have a fixed trip count, so the compiler vectorises them; they are compiled twice (baseline and AVX2+FMA) and
// the AVX2 copy is picked at run time when the CPU has it. Planes are spread over threads with
// at::parallel_for. bfloat16/half are computed in float (converted once per call); float64 serves gradcheck.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/dw_conv2d.h"

namespace proxynas_fast {
namespace {

#define PNF_INLINE inline __attribute__((always_inline))

constexpr int64_t TILE = 16;

// Items per thread chunk so that a chunk has at least ~32k multiply-adds: small problems stay on one thread
// (a parallel region costs more than they do, badly so on a loaded machine).
int64_t grain_for(int64_t work_per_item) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item)); }

struct PlaneConv {
  int64_t Wp;              // row length of the padded source plane
  int64_t Ho, Wo;          // output plane
  int64_t KH, KW, SH, SW, DH, DW;
};

// out[ho, wo] (+)= sum_ij w[i*KW + j] * src[(ho*SH + i*DH) * Wp + wo*SW + j*DW]
template <typename T, int SWC>
PNF_INLINE void conv_rows(const T* src, const T* w, T* out, const PlaneConv& p, bool accumulate) {
  const int64_t sw = SWC > 0 ? SWC : p.SW;
  for (int64_t ho = 0; ho < p.Ho; ++ho) {
    T* orow = out + ho * p.Wo;
    int64_t wo0 = 0;
    for (; wo0 + TILE <= p.Wo; wo0 += TILE) {
      T acc[TILE];
      for (int t = 0; t < TILE; ++t) acc[t] = accumulate ? orow[wo0 + t] : T(0);
      for (int64_t i = 0; i < p.KH; ++i) {
        const T* prow = src + (ho * p.SH + i * p.DH) * p.Wp + wo0 * sw;
        for (int64_t j = 0; j < p.KW; ++j) {
          const T wv = w[i * p.KW + j];
          const T* s = prow + j * p.DW;
          for (int t = 0; t < TILE; ++t) acc[t] += wv * s[t * sw];
        }
      }
      for (int t = 0; t < TILE; ++t) orow[wo0 + t] = acc[t];
    }
    const int64_t rest = p.Wo - wo0;
    if (rest > 0) {
      T acc[TILE];
      for (int64_t t = 0; t < rest; ++t) acc[t] = accumulate ? orow[wo0 + t] : T(0);
      for (int64_t i = 0; i < p.KH; ++i) {
        const T* prow = src + (ho * p.SH + i * p.DH) * p.Wp + wo0 * sw;
        for (int64_t j = 0; j < p.KW; ++j) {
          const T wv = w[i * p.KW + j];
          const T* s = prow + j * p.DW;
          for (int64_t t = 0; t < rest; ++t) acc[t] += wv * s[t * sw];
        }
      }
      for (int64_t t = 0; t < rest; ++t) orow[wo0 + t] = acc[t];
    }
  }
}

// acc[i*KW + j] += sum_{ho, wo} g[ho, wo] * src[(ho*SH + i*DH) * Wp + wo*SW + j*DW]
template <typename T, int SWC>
PNF_INLINE void correlate_rows(const T* g, const T* src, double* acc, const PlaneConv& p) {
  const int64_t sw = SWC > 0 ? SWC : p.SW;
  for (int64_t i = 0; i < p.KH; ++i) {
    for (int64_t j = 0; j < p.KW; ++j) {
      T part[TILE] = {};
      T tail = 0;
      for (int64_t ho = 0; ho < p.Ho; ++ho) {
        const T* grow = g + ho * p.Wo;
        const T* s = src + (ho * p.SH + i * p.DH) * p.Wp + j * p.DW;
        int64_t wo0 = 0;
        for (; wo0 + TILE <= p.Wo; wo0 += TILE) {
          for (int t = 0; t < TILE; ++t) part[t] += grow[wo0 + t] * s[(wo0 + t) * sw];
        }
        for (int64_t wo = wo0; wo < p.Wo; ++wo) tail += grow[wo] * s[wo * sw];
      }
      double total = tail;
      for (int t = 0; t < TILE; ++t) total += part[t];
      acc[i * p.KW + j] += total;
    }
  }
}

// dst[(ho*SH + i*DH) * Wp + wo*SW + j*DW] += w[i*KW + j] * g[ho, wo]  (transposed conv, any stride)
template <typename T>
PNF_INLINE void scatter_rows(const T* g, const T* w, T* dst, const PlaneConv& p) {
  for (int64_t ho = 0; ho < p.Ho; ++ho) {
    const T* grow = g + ho * p.Wo;
    for (int64_t i = 0; i < p.KH; ++i) {
      T* prow = dst + (ho * p.SH + i * p.DH) * p.Wp;
      for (int64_t j = 0; j < p.KW; ++j) {
        const T wv = w[i * p.KW + j];
        T* d = prow + j * p.DW;
        for (int64_t wo = 0; wo < p.Wo; ++wo) d[wo * p.SW] += wv * grow[wo];
      }
    }
  }
}

template <typename T>
PNF_INLINE void conv_dispatch(const T* src, const T* w, T* out, const PlaneConv& p, bool accumulate) {
  if (p.SW == 1) conv_rows<T, 1>(src, w, out, p, accumulate);
  else if (p.SW == 2) conv_rows<T, 2>(src, w, out, p, accumulate);
  else conv_rows<T, 0>(src, w, out, p, accumulate);
}

template <typename T>
PNF_INLINE void correlate_dispatch(const T* g, const T* src, double* acc, const PlaneConv& p) {
  if (p.SW == 1) correlate_rows<T, 1>(g, src, acc, p);
  else if (p.SW == 2) correlate_rows<T, 2>(g, src, acc, p);
  else correlate_rows<T, 0>(g, src, acc, p);
}

// The same hot loops compiled for the baseline ISA and for AVX2+FMA.
template <typename T>
void conv_plane_base(const T* s, const T* w, T* o, const PlaneConv& p, bool a) { conv_dispatch<T>(s, w, o, p, a); }
template <typename T>
void correlate_plane_base(const T* g, const T* s, double* a, const PlaneConv& p) { correlate_dispatch<T>(g, s, a, p); }
template <typename T>
void scatter_plane_base(const T* g, const T* w, T* d, const PlaneConv& p) { scatter_rows<T>(g, w, d, p); }
#if defined(__x86_64__) && defined(__GNUC__)
#define PNF_HAVE_AVX2_CLONE 1
template <typename T>
__attribute__((target("avx2,fma"))) void conv_plane_avx2(const T* s, const T* w, T* o, const PlaneConv& p, bool a) {
  conv_dispatch<T>(s, w, o, p, a);
}
template <typename T>
__attribute__((target("avx2,fma"))) void correlate_plane_avx2(const T* g, const T* s, double* a, const PlaneConv& p) {
  correlate_dispatch<T>(g, s, a, p);
}
template <typename T>
__attribute__((target("avx2,fma"))) void scatter_plane_avx2(const T* g, const T* w, T* d, const PlaneConv& p) {
  scatter_rows<T>(g, w, d, p);
}
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename T>
void conv_plane(const T* s, const T* w, T* o, const PlaneConv& p, bool a) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return conv_plane_avx2<T>(s, w, o, p, a);
#endif
  conv_plane_base<T>(s, w, o, p, a);
}
template <typename T>
void correlate_plane(const T* g, const T* s, double* a, const PlaneConv& p) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return correlate_plane_avx2<T>(g, s, a, p);
#endif
  correlate_plane_base<T>(g, s, a, p);
}
template <typename T>
void scatter_plane(const T* g, const T* w, T* d, const PlaneConv& p) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return scatter_plane_avx2<T>(g, w, d, p);
#endif
  scatter_plane_base<T>(g, w, d, p);
}

// Copies an H x W plane into the interior of a zero-bordered (H + top + bottom) x (W + left + right) buffer.
template <typename T>
void pad_plane(const T* src, int64_t H, int64_t W, T* buf, int64_t Wp, int64_t top, int64_t left) {
  for (int64_t h = 0; h < H; ++h) std::copy(src + h * W, src + (h + 1) * W, buf + (h + top) * Wp + left);
}

bool computes_natively(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

at::Tensor forward_impl(const at::Tensor& input_, const at::Tensor& weight_, const DwConvGeometry& g) {
  at::Tensor input = input_.contiguous();
  at::Tensor weight = weight_.contiguous();
  at::Tensor out = at::empty({g.N, g.M * g.C, g.Ho, g.Wo}, input.options());
  // Rows/columns the taps can reach: the padded plane must cover them (the bottom/right may exceed the padding).
  const int64_t Hp = std::max(g.H + g.PH, (g.Ho - 1) * g.SH + (g.KH - 1) * g.DH + 1);
  const int64_t Wp = std::max(g.W + g.PW, (g.Wo - 1) * g.SW + (g.KW - 1) * g.DW + 1);
  const PlaneConv pc{Wp, g.Ho, g.Wo, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dw_conv2d_cpu", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, ksize = g.KH * g.KW;
    at::parallel_for(0, g.N * g.C, grain_for(g.M * out_plane * ksize), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buf(Hp * Wp, scalar_t(0));
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.C, c = p % g.C;
        pad_plane(x + p * in_plane, g.H, g.W, buf.data(), Wp, g.PH, g.PW);
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = m * g.C + c;
          conv_plane<scalar_t>(buf.data(), w + o * ksize, y + (n * CO + o) * out_plane, pc, false);
        }
      }
    });
  });
  return out;
}

at::Tensor dw_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DwConvGeometry g = dw_conv_geometry(input, weight, stride, padding, dilation);
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor out;
  if (computes_natively(input.scalar_type())) {
    out = forward_impl(input, weight, g);
  } else {
    out = forward_impl(input.to(at::kFloat), weight.to(at::kFloat), g).to(input.scalar_type());
  }
  return channels_last ? out.contiguous(at::MemoryFormat::ChannelsLast) : out;
}

template <typename T>
void grad_input_planes(const T* go, const T* w, T* gi, const DwConvGeometry& g) {
  const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, ksize = g.KH * g.KW;
  // Stride 1 with padding no larger than the kernel reach: a plain correlation of the zero-padded
  // grad-output with the flipped kernel (gather form, register tiles). Otherwise: scatter into a padded buffer.
  const int64_t qh = (g.KH - 1) * g.DH - g.PH, qw = (g.KW - 1) * g.DW - g.PW;
  const bool gather = g.SH == 1 && g.SW == 1 && qh >= 0 && qw >= 0;
  at::parallel_for(0, g.N * g.C, grain_for(g.M * out_plane * ksize), [&](int64_t begin, int64_t end) {
    if (gather) {
      const int64_t Hp = std::max(g.Ho + qh, g.H + (g.KH - 1) * g.DH), Wp = std::max(g.Wo + qw, g.W + (g.KW - 1) * g.DW);
      std::vector<T> buf(Hp * Wp, T(0));
      std::vector<T> flipped(ksize);
      const PlaneConv pc{Wp, g.H, g.W, g.KH, g.KW, 1, 1, g.DH, g.DW};
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.C, c = p % g.C;
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = m * g.C + c;
          for (int64_t k = 0; k < ksize; ++k) flipped[k] = w[o * ksize + ksize - 1 - k];
          pad_plane(go + (n * CO + o) * out_plane, g.Ho, g.Wo, buf.data(), Wp, qh, qw);
          conv_plane<T>(buf.data(), flipped.data(), gi + p * in_plane, pc, m > 0);
        }
      }
    } else {
      const int64_t Hp = std::max(g.H + g.PH, (g.Ho - 1) * g.SH + (g.KH - 1) * g.DH + 1);
      const int64_t Wp = std::max(g.W + g.PW, (g.Wo - 1) * g.SW + (g.KW - 1) * g.DW + 1);
      std::vector<T> buf(Hp * Wp);
      const PlaneConv pc{Wp, g.Ho, g.Wo, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW};
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.C, c = p % g.C;
        std::fill(buf.begin(), buf.end(), T(0));
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = m * g.C + c;
          scatter_plane<T>(go + (n * CO + o) * out_plane, w + o * ksize, buf.data(), pc);
        }
        T* dst = gi + p * in_plane;
        for (int64_t h = 0; h < g.H; ++h) std::copy(buf.data() + (h + g.PH) * Wp + g.PW,
                                                    buf.data() + (h + g.PH) * Wp + g.PW + g.W, dst + h * g.W);
      }
    }
  });
}

template <typename T>
void grad_weight_planes(const T* go, const T* x, double* acc, const DwConvGeometry& g) {
  const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, ksize = g.KH * g.KW;
  const int64_t Hp = std::max(g.H + g.PH, (g.Ho - 1) * g.SH + (g.KH - 1) * g.DH + 1);
  const int64_t Wp = std::max(g.W + g.PW, (g.Wo - 1) * g.SW + (g.KW - 1) * g.DW + 1);
  const PlaneConv pc{Wp, g.Ho, g.Wo, g.KH, g.KW, g.SH, g.SW, g.DH, g.DW};
  // One thread owns input channel c (all its M kernels) and reduces over the batch: no races, deterministic.
  at::parallel_for(0, g.C, grain_for(g.N * g.M * out_plane * ksize), [&](int64_t begin, int64_t end) {
    std::vector<T> buf(Hp * Wp, T(0));
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < g.N; ++n) {
        pad_plane(x + (n * g.C + c) * in_plane, g.H, g.W, buf.data(), Wp, g.PH, g.PW);
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = m * g.C + c;
          correlate_plane<T>(go + (n * CO + o) * out_plane, buf.data(), acc + o * ksize, pc);
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
  at::Tensor gin, gw;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dw_conv2d_backward_cpu", [&] {
    if (need_input) {
      gin = at::empty({g.N, g.C, g.H, g.W}, input.options());
      grad_input_planes<scalar_t>(grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                                  gin.mutable_data_ptr<scalar_t>(), g);
    }
    if (need_weight) {
      at::Tensor acc = at::zeros({g.M * g.C, g.KH * g.KW}, input.options().dtype(at::kDouble));
      grad_weight_planes<scalar_t>(grad.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                   acc.mutable_data_ptr<double>(), g);
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
  const at::ScalarType t = input.scalar_type();
  at::Tensor gin, gw;
  if (computes_natively(t)) {
    std::tie(gin, gw) = backward_impl(grad_output.to(t), input, weight, g, output_mask[0], output_mask[1]);
  } else {
    std::tie(gin, gw) = backward_impl(grad_output.to(at::kFloat), input.to(at::kFloat), weight.to(at::kFloat), g,
                                      output_mask[0], output_mask[1]);
    if (gin.defined()) gin = gin.to(t);
    if (gw.defined()) gw = gw.to(t);
  }
  if (gin.defined() && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    gin = gin.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return {gin, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CPU, m) {
  m.impl("dw_conv2d", &dw_conv2d_cpu);
  m.impl("dw_conv2d_backward", &dw_conv2d_backward_cpu);
}

}  // namespace proxynas_fast
