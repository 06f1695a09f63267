// CPU depthwise convolution with a channel multiplier: forward, grad-input, grad-weight.
//
// PyTorch's CPU depthwise backward is slow; here every (sample, channel) plane is a small independent problem,
// computed in the "flat phase" form described at FlatGeometry: one unit-stride, register-tiled loop per tap over
// the flattened zero-padded plane, the same for every stride, dilation and plane size. The tile loops have a
// fixed trip count, so the compiler vectorises them; they are compiled twice (baseline and AVX2+FMA) and the AVX2
// copy is picked at run time when the CPU has it. Planes are spread over threads with at::parallel_for.
// bfloat16/half are computed in float (converted once per call); float64 serves gradcheck.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/cpu/flat_plane.h"
#include "ops/dw_conv2d.h"

namespace proxynas_fast {
namespace {
using namespace flat;

// The dot-product loop compiled for the baseline ISA and for AVX2+FMA; the AVX2 copy is picked at run time.
template <typename T>
T dot_base(const T* a, const T* b, int64_t n) { return dot_tiles<T>(a, b, n); }
#ifdef PNF_HAVE_AVX2_CLONE
template <typename T>
__attribute__((target("avx2,fma"))) T dot_avx2(const T* a, const T* b, int64_t n) { return dot_tiles<T>(a, b, n); }
#endif
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
#ifdef PNF_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) return dot_avx2<T>(a, b, n);
#endif
  return dot_base<T>(a, b, n);
}

bool computes_natively(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

at::Tensor forward_impl(const at::Tensor& input_, const at::Tensor& weight_, const DwConvGeometry& g) {
  at::Tensor input = input_.contiguous();
  at::Tensor weight = weight_.contiguous();
  at::Tensor out = at::empty({g.N, g.M * g.C, g.Ho, g.Wo}, input.options());
  const FlatGeometry f = flat_geometry(g);
  const int64_t K = g.KH * g.KW;
  std::vector<int64_t> offs(K);
  for (int64_t k = 0; k < K; ++k) offs[k] = f.tap_phase[k] * f.phase_len + f.tap_off[k];
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dw_conv2d_cpu", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo;
    at::parallel_for(0, g.N * g.C, grain_for(g.M * out_plane * K), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> phases(f.phases * f.phase_len, scalar_t(0));
      std::vector<scalar_t> grid(f.grid_t);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / g.C, c = p % g.C;
        to_phases(x + p * in_plane, g, f, phases.data());
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = m * g.C + c;
          gather<scalar_t>(phases.data(), offs.data(), w + o * K, K, grid.data(), f.grid_t, false);
          scalar_t* dst = y + (n * CO + o) * out_plane;
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
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor out;
  if (computes_natively(input.scalar_type())) {
    out = forward_impl(input, weight, g);
  } else {
    out = forward_impl(input.to(at::kFloat), weight.to(at::kFloat), g).to(input.scalar_type());
  }
  return channels_last ? out.contiguous(at::MemoryFormat::ChannelsLast) : out;
}

// Input gradient: phase[u] = sum_{m, k in phase} w[m, k] * G_m[u - off_k], with G_m the output-gradient grid of
// kernel m stored after max_off zeros (so every index is non-negative), then gathered back to the input plane.
template <typename T>
void grad_input_planes(const T* go, const T* w, T* gi, const DwConvGeometry& g, const FlatGeometry& f) {
  const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, K = g.KH * g.KW;
  const int64_t front = f.max_off, glen = front + f.span_t;
  // Taps grouped by phase; offsets into the padded grids of all M kernels (grid m starts at m * glen).
  std::vector<std::vector<int64_t>> taps_of(f.phases), offs_of(f.phases);
  for (int64_t m = 0; m < g.M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      taps_of[f.tap_phase[k]].push_back(m * K + k);
      offs_of[f.tap_phase[k]].push_back(m * glen + front - f.tap_off[k]);
    }
  }
  at::parallel_for(0, g.N * g.C, grain_for(g.M * out_plane * K), [&](int64_t begin, int64_t end) {
    std::vector<T> grids(g.M * glen, T(0));
    std::vector<T> phases(f.phases * f.phase_len, T(0));
    std::vector<T> wts(g.M * K);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / g.C, c = p % g.C;
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = m * g.C + c;
        to_grid(go + (n * CO + o) * out_plane, g, f, grids.data() + m * glen + front);
      }
      for (int64_t ph = 0; ph < f.phases; ++ph) {
        const auto& taps = taps_of[ph];
        if (taps.empty()) {
          std::fill(phases.begin() + ph * f.phase_len, phases.begin() + ph * f.phase_len + f.span_t, T(0));
          continue;
        }
        for (size_t t = 0; t < taps.size(); ++t) {
          const int64_t m = taps[t] / K, k = taps[t] % K;
          wts[t] = w[(m * g.C + c) * K + k];
        }
        gather<T>(grids.data(), offs_of[ph].data(), wts.data(), static_cast<int64_t>(taps.size()),
                  phases.data() + ph * f.phase_len, f.span_t, false);
      }
      from_phases(phases.data(), g, f, gi + p * in_plane);
    }
  });
}

// Weight gradient: dw[o, k] = sum_n <G_{n,o}, phase_k(x_{n,c}) shifted by off_k>; one thread owns input channel c
// (all its M kernels) and reduces over the batch in double: no races, deterministic.
template <typename T>
void grad_weight_planes(const T* go, const T* x, double* acc, const DwConvGeometry& g, const FlatGeometry& f) {
  const int64_t CO = g.M * g.C, in_plane = g.H * g.W, out_plane = g.Ho * g.Wo, K = g.KH * g.KW;
  std::vector<int64_t> offs(K);
  for (int64_t k = 0; k < K; ++k) offs[k] = f.tap_phase[k] * f.phase_len + f.tap_off[k];
  at::parallel_for(0, g.C, grain_for(g.N * g.M * out_plane * K), [&](int64_t begin, int64_t end) {
    std::vector<T> phases(f.phases * f.phase_len, T(0));
    std::vector<T> grid(f.grid_t, T(0));
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < g.N; ++n) {
        to_phases(x + (n * g.C + c) * in_plane, g, f, phases.data());
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = m * g.C + c;
          to_grid(go + (n * CO + o) * out_plane, g, f, grid.data());
          for (int64_t k = 0; k < K; ++k) acc[o * K + k] += dot<T>(grid.data(), phases.data() + offs[k], f.grid_t);
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
