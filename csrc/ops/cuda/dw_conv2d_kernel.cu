// CUDA depthwise convolution with a channel multiplier (schema in ops/dw_conv2d.cpp, semantics in
// ops/dw_conv2d.h): forward and grad-input with one thread per output/input element, grad-weight with one
// block per (output channel, tap) reducing over batch and space. All types accumulate in float (double for
// double).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ops/dw_conv2d.h"

namespace proxynas_fast {
namespace {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535LL * 32); }

template <typename scalar_t>
__global__ void dw_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                  scalar_t* __restrict__ y, DwConvGeometry g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t CO = g.M * g.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t wo = idx % g.Wo;
    const int64_t ho = (idx / g.Wo) % g.Ho;
    const int64_t o = (idx / (g.Wo * g.Ho)) % CO;
    const int64_t n = idx / (g.Wo * g.Ho * CO);
    const int64_t c = o % g.C;
    const scalar_t* plane = x + (n * g.C + c) * g.H * g.W;
    const scalar_t* k = w + o * g.KH * g.KW;
    acc_t acc = 0;
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t ih = ho * g.SH - g.PH + i * g.DH;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = wo * g.SW - g.PW + j * g.DW;
        if (iw < 0 || iw >= g.W) continue;
        acc += static_cast<acc_t>(k[i * g.KW + j]) * static_cast<acc_t>(plane[ih * g.W + iw]);
      }
    }
    y[idx] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void dw_grad_input_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ w,
                                     scalar_t* __restrict__ gi, DwConvGeometry g, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t CO = g.M * g.C;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t iw = idx % g.W;
    const int64_t ih = (idx / g.W) % g.H;
    const int64_t c = (idx / (g.W * g.H)) % g.C;
    const int64_t n = idx / (g.W * g.H * g.C);
    acc_t acc = 0;
    for (int64_t m = 0; m < g.M; ++m) {
      const int64_t o = m * g.C + c;
      const scalar_t* plane = go + (n * CO + o) * g.Ho * g.Wo;
      const scalar_t* k = w + o * g.KH * g.KW;
      for (int64_t i = 0; i < g.KH; ++i) {
        const int64_t th = ih + g.PH - i * g.DH;  // = ho * SH
        if (th < 0 || th % g.SH != 0) continue;
        const int64_t ho = th / g.SH;
        if (ho >= g.Ho) continue;
        for (int64_t j = 0; j < g.KW; ++j) {
          const int64_t tw = iw + g.PW - j * g.DW;
          if (tw < 0 || tw % g.SW != 0) continue;
          const int64_t wo = tw / g.SW;
          if (wo >= g.Wo) continue;
          acc += static_cast<acc_t>(k[i * g.KW + j]) * static_cast<acc_t>(plane[ho * g.Wo + wo]);
        }
      }
    }
    gi[idx] = static_cast<scalar_t>(acc);
  }
}

// One block per (output channel o, tap i*KW + j): sum over n, ho, wo of grad_out * shifted input.
template <typename scalar_t>
__global__ void dw_grad_weight_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ x,
                                      scalar_t* __restrict__ gw, DwConvGeometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t CO = g.M * g.C, ksize = g.KH * g.KW;
  const int64_t o = blockIdx.x / ksize, tap = blockIdx.x % ksize;
  const int64_t i = tap / g.KW, j = tap % g.KW, c = o % g.C;
  const int64_t per_sample = g.Ho * g.Wo, total = g.N * per_sample;
  acc_t acc = 0;
  for (int64_t t = threadIdx.x; t < total; t += blockDim.x) {
    const int64_t n = t / per_sample, r = t % per_sample, ho = r / g.Wo, wo = r % g.Wo;
    const int64_t ih = ho * g.SH - g.PH + i * g.DH, iw = wo * g.SW - g.PW + j * g.DW;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    acc += static_cast<acc_t>(go[(n * CO + o) * per_sample + r]) *
           static_cast<acc_t>(x[((n * g.C + c) * g.H + ih) * g.W + iw]);
  }
  __shared__ acc_t shared[kThreads];
  shared[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) gw[o * ksize + tap] = static_cast<scalar_t>(shared[0]);
}

at::Tensor dw_conv2d_cuda(const at::Tensor& input_, const at::Tensor& weight_, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DwConvGeometry g = dw_conv_geometry(input_, weight_, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input_.device());
  const bool channels_last = input_.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor input = input_.contiguous(), weight = weight_.contiguous();
  at::Tensor out = at::empty({g.N, g.M * g.C, g.Ho, g.Wo}, input.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dw_conv2d_cuda", [&] {
    dw_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), g,
        total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return channels_last ? out.contiguous(at::MemoryFormat::ChannelsLast) : out;
}

std::tuple<at::Tensor, at::Tensor> dw_conv2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input_,
                                                           const at::Tensor& weight_, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                                           std::array<bool, 2> output_mask) {
  const DwConvGeometry g = dw_conv_geometry(input_, weight_, stride, padding, dilation);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.M * g.C &&
                  grad_output.size(2) == g.Ho && grad_output.size(3) == g.Wo,
              "dw_conv2d_backward: grad_output has shape ", grad_output.sizes(), ", expected [", g.N, ", ",
              g.M * g.C, ", ", g.Ho, ", ", g.Wo, "]");
  const c10::cuda::CUDAGuard guard(input_.device());
  at::Tensor input = input_.contiguous(), weight = weight_.contiguous();
  at::Tensor grad = grad_output.to(input.scalar_type()).contiguous();
  at::Tensor gin, gw;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dw_conv2d_backward_cuda", [&] {
    if (output_mask[0]) {
      gin = at::empty({g.N, g.C, g.H, g.W}, input.options());
      const int64_t total = gin.numel();
      if (total > 0) {
        dw_grad_input_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), gin.mutable_data_ptr<scalar_t>(), g,
            total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (output_mask[1]) {
      gw = at::empty_like(weight);
      const int64_t blocks = g.M * g.C * g.KH * g.KW;
      if (blocks > 0) {
        dw_grad_weight_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(), g);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  if (gin.defined() && input_.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    gin = gin.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return {gin, gw};
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CUDA, m) {
  m.impl("dw_conv2d", &dw_conv2d_cuda);
  m.impl("dw_conv2d_backward", &dw_conv2d_backward_cuda);
}

}  // namespace proxynas_fast
