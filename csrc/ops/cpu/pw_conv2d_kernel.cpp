// CPU grouped pointwise (1x1) convolution: forward, grad-input, grad-weight (schemas in ops/pw_conv2d.cpp).
//
// input [N, E*Ci, H, W], weight [E, Co, Ci] -> [N, E*Co, H, W]: group e maps channels e*Ci.. to e*Co.. The fused
// DARTS cell runs the 1x1 convolutions of all edges reading one node this way. Each (sample, group) is a small
// matrix product Y[Co, P] = W[Co, Ci] X[Ci, P] over the P = H*W pixels of the planes: K = Ci is 8-64, so a
// BLAS call per plane (what torch.matmul does) spends much of its time in call and packing overhead. Here the
// planes are computed in place: a register tile of CB output channels x NV vectors of pixels accumulates over
// the Ci input rows (each input value loaded once per tile, each weight broadcast once per vector column). The
// input gradient is the same product with the transposed weight. The weight gradient, sum over samples and
// pixels of G[Co, P] X[Ci, P]^T, is split into (group, chunk of samples) items whose planes fit in L2; an
// RB x KB register block accumulates over all the chunk's samples and pixels, its lanes are summed in double,
// and the chunks' partials are added in a fixed order: the result does not depend on the thread count.
//
// Tile sizes depend on the instruction set (cpu_isa.h: baseline / AVX2+FMA / AVX-512 clones, chosen at run
// time): 16, 32 or 64-byte vectors and as many accumulators as the level has registers for. float64 runs the
// same loops (gradcheck); bfloat16/half are computed in float (converted once per call).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ops/cpu/compute_dtype.h"
#include "ops/cpu/cpu_isa.h"
#include "ops/cpu/vec.h"

namespace proxynas_fast {
namespace {
using namespace cpu_isa;

// Register tiles per level: vector bytes, output rows x vectors (matrix product), rows x columns (weight grad).
template <int L>
struct Tiles;
template <>
struct Tiles<kBaseline> {  // 16 xmm registers
  static constexpr int kBytes = 16, kRows = 4, kVecs = 2, kGradRows = 2, kGradCols = 4;
};
template <>
struct Tiles<kAvx2> {  // 16 ymm registers: 12 accumulators + 3 inputs
  static constexpr int kBytes = 32, kRows = 4, kVecs = 3, kGradRows = 2, kGradCols = 4;
};
template <>
struct Tiles<kAvx512> {  // 32 zmm registers: 24 accumulators + 3 inputs
  static constexpr int kBytes = 64, kRows = 8, kVecs = 3, kGradRows = 4, kGradCols = 4;
};

// Y[r0 + i][p] = sum_k A[k][r0 + i] * X[k][p] for i < CB and NV vectors of pixels starting at X, Y.
// A is [K][lda] (k-major: the CB weights of one k are adjacent), X rows ldx apart, Y rows ldy apart.
template <typename T, int BYTES, int CB, int NV>
PNF_INLINE_CHUNK void product_tile(const T* A, int64_t lda, int64_t K, const T* X, int64_t ldx, T* Y, int64_t ldy) {
  using V = typename VecOf<T, BYTES>::type;
  constexpr int VL = BYTES / sizeof(T);
  V acc[CB][NV];
  for (int i = 0; i < CB; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V x[NV];
    for (int v = 0; v < NV; ++v) x[v] = *reinterpret_cast<const V*>(X + k * ldx + v * VL);
    const T* a = A + k * lda;
    for (int i = 0; i < CB; ++i) {
      const T w = a[i];
      for (int v = 0; v < NV; ++v) acc[i][v] += w * x[v];
    }
  }
  for (int i = 0; i < CB; ++i)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(Y + i * ldy + v * VL) = acc[i][v];
}

// All R rows of Y for the NV vectors of pixels at X, Y: CB-row tiles, then single rows.
template <typename T, int BYTES, int CB, int NV>
PNF_INLINE_CHUNK void product_columns(const T* A, int64_t R, int64_t K, const T* X, int64_t ldx, T* Y,
                                      int64_t ldy) {
  int64_t r = 0;
  for (; r + CB <= R; r += CB) product_tile<T, BYTES, CB, NV>(A + r, R, K, X, ldx, Y + r * ldy, ldy);
  for (; r < R; ++r) product_tile<T, BYTES, 1, NV>(A + r, R, K, X, ldx, Y + r * ldy, ldy);
}

// Y[R, P] = A^T X for one plane: X [K, P] rows ldx apart (plane stride), Y [R, P] rows P apart. The pixels past
// the last whole tile are one more vector ending at P (overlapping the previous one: the values it rewrites are
// the same), or, for planes shorter than a vector, a zero-padded copy (buffers of K and R vectors).
template <typename T, int L>
PNF_INLINE_CHUNK void plane_product(const T* A, int64_t R, int64_t K, const T* X, int64_t P, T* Y, T* xpad,
                                    T* ypad) {
  using Tl = Tiles<L>;
  constexpr int VL = Tl::kBytes / sizeof(T), PB = VL * Tl::kVecs;
  int64_t p = 0;
  for (; p + PB <= P; p += PB) product_columns<T, Tl::kBytes, Tl::kRows, Tl::kVecs>(A, R, K, X + p, P, Y + p, P);
  for (; p + VL <= P; p += VL) product_columns<T, Tl::kBytes, Tl::kRows, 1>(A, R, K, X + p, P, Y + p, P);
  if (p == P) return;
  if (P >= VL) {
    product_columns<T, Tl::kBytes, Tl::kRows, 1>(A, R, K, X + P - VL, P, Y + P - VL, P);
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    std::copy(X + k * P, X + k * P + P, xpad + k * VL);
    std::fill(xpad + k * VL + P, xpad + (k + 1) * VL, T(0));
  }
  product_columns<T, Tl::kBytes, Tl::kRows, 1>(A, R, K, xpad, VL, ypad, VL);
  for (int64_t r = 0; r < R; ++r) std::copy(ypad + r * VL, ypad + r * VL + P, Y + r * P);
}

// Where the planes of each group are: group e of sample n starts at base[e] + n * sample_stride. One tensor
// [N, E*X, H, W] (`in_one`: base[e] = data + e*X*P, stride E*X*P) or one tensor [N, X, H, W] per group
// (`per_group`: pw_conv2d_groups' outputs and their gradients).
template <typename T>
struct GroupPlanes {
  std::vector<T*> base;
  int64_t sample_stride;
  T* at(int64_t n, int64_t e) const { return base[e] + n * sample_stride; }
};
template <typename T>
GroupPlanes<T> in_one(T* data, int64_t E, int64_t group_elems) {
  GroupPlanes<T> g{std::vector<T*>(E), E * group_elems};
  for (int64_t e = 0; e < E; ++e) g.base[e] = data + e * group_elems;
  return g;
}
template <typename T, typename Tensors>
GroupPlanes<T> per_group(Tensors& ts, int64_t group_elems) {  // contiguous [N, X, H, W] tensors
  GroupPlanes<T> g{{}, group_elems};
  for (auto& t : ts) {
    if constexpr (std::is_const_v<T>) {
      g.base.push_back(t.template const_data_ptr<std::remove_const_t<T>>());
    } else {
      g.base.push_back(t.template mutable_data_ptr<T>());
    }
  }
  return g;
}

// out[n, e*R + r, p] = sum_k A[e][k][r] * in[n, e*K + k, p] for every (n, e): the forward (A = W^T, [E, Ci, Co])
// and the input gradient (A = W, [E, Co, Ci]); `in` and `out` planes located by GroupPlanes.
template <typename T>
void grouped_product(const GroupPlanes<const T>& in, const T* A, const GroupPlanes<T>& out, int64_t N, int64_t E,
                     int64_t K, int64_t R, int64_t P) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, K * R * P));
  run_chunks(N * E, grain, [&](auto level, int64_t begin, int64_t end) PNF_CHUNK_BODY {
    constexpr int L = decltype(level)::value;
    constexpr int VL = Tiles<L>::kBytes / sizeof(T);
    std::vector<T> xpad(K * VL), ypad(R * VL);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / E, e = item % E;
      plane_product<T, L>(A + e * K * R, R, K, in.at(n, e), P, out.at(n, e), xpad.data(), ypad.data());
    }
  });
}

// out[i * ldo + j] += (double) sum over the samples of the chunk and pixels [0, P) of G[i][p] * X[j][p], for an
// RB x KB block: the partial sums stay in vector registers over all the chunk's samples. G rows and X rows are P
// apart, samples `gs` and `xs` apart; P >= the vector length. Pixels past the last whole vector are the last
// vector ending at P with the lanes already summed cleared (bitwise, in both operands).
template <typename T, int BYTES, int RB, int KB>
PNF_INLINE_CHUNK void grad_block(const T* G, int64_t gs, const T* X, int64_t xs, int64_t samples, int64_t P,
                                 double* out, int64_t ldo) {
  using V = typename VecOf<T, BYTES>::type;
  using M = typename MaskOf<T, BYTES>::type;
  constexpr int VL = BYTES / sizeof(T);
  const int64_t pv = P / VL * VL, tail = P - pv;
  M keep;  // lanes l >= VL - tail of the vector at P - VL are the pixels past pv
  for (int l = 0; l < VL; ++l) keep[l] = l >= VL - tail ? -1 : 0;
  V s[RB][KB];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < KB; ++j) s[i][j] = V{};
  for (int64_t n = 0; n < samples; ++n) {
    const T* Gn = G + n * gs;
    const T* Xn = X + n * xs;
    for (int64_t p = 0; p < pv; p += VL) {
      V g[RB], x[KB];
      for (int i = 0; i < RB; ++i) g[i] = *reinterpret_cast<const V*>(Gn + i * P + p);
      for (int j = 0; j < KB; ++j) x[j] = *reinterpret_cast<const V*>(Xn + j * P + p);
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < KB; ++j) s[i][j] += g[i] * x[j];
    }
    if (tail == 0) continue;
    V g[RB], x[KB];
    for (int i = 0; i < RB; ++i) g[i] = (V)(*reinterpret_cast<const M*>(Gn + i * P + P - VL) & keep);
    for (int j = 0; j < KB; ++j) x[j] = (V)(*reinterpret_cast<const M*>(Xn + j * P + P - VL) & keep);
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < KB; ++j) s[i][j] += g[i] * x[j];
  }
  for (int i = 0; i < RB; ++i) {
    for (int j = 0; j < KB; ++j) {
      double t = 0;
      for (int l = 0; l < VL; ++l) t += static_cast<double>(s[i][j][l]);
      out[i * ldo + j] += t;
    }
  }
}

// Samples per weight-gradient chunk: the chunk's input and output-gradient planes of one group (~256 KiB
// together) stay in L2 while every register block sweeps them. Depends on the shape only, never on the threads.
int64_t grad_chunk_samples(int64_t K, int64_t R, int64_t P, int64_t elem) {
  return std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, (K + R) * P * elem));
}

// gw[e][r][k] = sum_n sum_p grad[n, e*R + r, p] * in[n, e*K + k, p] (grad's planes located by GroupPlanes). Items
// are (group, chunk of samples): each
// writes its own double partial [R, K] (register blocks summed over the chunk's samples and pixels); the
// partials are then added chunk by chunk in order. The chunks depend on the shape only, so the result does not
// depend on the thread count.
template <typename T>
void grouped_weight_grad(const GroupPlanes<const T>& grad, const T* in, double* gw, int64_t N, int64_t E, int64_t K,
                         int64_t R, int64_t P) {
  const int64_t chunk = grad_chunk_samples(K, R, P, sizeof(T));
  const int64_t chunks = (N + chunk - 1) / chunk;
  std::vector<double> partial(E * chunks * R * K, 0.0);
  const int64_t gs = grad.sample_stride, xs = E * K * P;  // sample strides
  run_chunks(E * chunks, 1, [&](auto level, int64_t begin, int64_t end) PNF_CHUNK_BODY {
    constexpr int L = decltype(level)::value;
    using Tl = Tiles<L>;
    constexpr int VL = Tl::kBytes / sizeof(T), RB = Tl::kGradRows, KB = Tl::kGradCols;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t e = item / chunks, n0 = (item % chunks) * chunk;
      const int64_t samples = std::min<int64_t>(chunk, N - n0);
      double* out = partial.data() + item * R * K;
      const T* G = grad.at(n0, e);
      const T* X = in + n0 * xs + e * K * P;
      if (P < VL) {  // planes shorter than a vector (e.g. 1x1): plain loops
        for (int64_t n = 0; n < samples; ++n)
          for (int64_t i = 0; i < R; ++i)
            for (int64_t k = 0; k < K; ++k) {
              T s = 0;
              for (int64_t p = 0; p < P; ++p) s += G[n * gs + i * P + p] * X[n * xs + k * P + p];
              out[i * K + k] += static_cast<double>(s);
            }
        continue;
      }
      for (int64_t i0 = 0; i0 < R; i0 += RB) {
        for (int64_t k0 = 0; k0 < K; k0 += KB) {
          if (i0 + RB <= R && k0 + KB <= K) {
            grad_block<T, Tl::kBytes, RB, KB>(G + i0 * P, gs, X + k0 * P, xs, samples, P, out + i0 * K + k0, K);
            continue;
          }
          for (int64_t i = i0; i < std::min<int64_t>(i0 + RB, R); ++i)
            for (int64_t j = k0; j < std::min<int64_t>(k0 + KB, K); ++j)
              grad_block<T, Tl::kBytes, 1, 1>(G + i * P, gs, X + j * P, xs, samples, P, out + i * K + j, K);
        }
      }
    }
  });
  for (int64_t e = 0; e < E; ++e) {
    double* dst = gw + e * R * K;
    for (int64_t c = 0; c < chunks; ++c) {
      const double* src = partial.data() + (e * chunks + c) * R * K;
      for (int64_t i = 0; i < R * K; ++i) dst[i] += src[i];
    }
  }
}

struct PwGeometry {
  int64_t N, E, Ci, Co, H, W;
};

PwGeometry pw_geometry(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.dim() == 4, "pw_conv2d: input must be [N, E*Ci, H, W], got ", input.sizes());
  TORCH_CHECK(weight.dim() == 3, "pw_conv2d: weight must be [E, Co, Ci], got ", weight.sizes());
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "pw_conv2d: input (", input.scalar_type(),
              ") and weight (", weight.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(input.device() == weight.device(), "pw_conv2d: input and weight must be on the same device");
  PwGeometry g{input.size(0), weight.size(0), weight.size(2), weight.size(1), input.size(2), input.size(3)};
  TORCH_CHECK(g.E > 0 && g.Ci > 0 && g.Co > 0 && input.size(1) == g.E * g.Ci, "pw_conv2d: input has ",
              input.size(1), " channels, weight [E, Co, Ci] = ", weight.sizes(), " needs E*Ci = ", g.E * g.Ci);
  return g;
}

// The output in one tensor [N, E*Co, H, W] or (`groups`) one [N, Co, H, W] per group.
std::vector<at::Tensor> forward_impl(const at::Tensor& input_, const at::Tensor& weight, const PwGeometry& g,
                                     bool groups) {
  const at::Tensor input = input_.contiguous();
  const at::Tensor wt = weight.transpose(1, 2).contiguous();  // [E, Ci, Co]: the Co weights of one ci adjacent
  const int64_t P = g.H * g.W;
  std::vector<at::Tensor> outs;
  if (groups) {
    for (int64_t e = 0; e < g.E; ++e) outs.push_back(at::empty({g.N, g.Co, g.H, g.W}, input.options()));
  } else {
    outs.push_back(at::empty({g.N, g.E * g.Co, g.H, g.W}, input.options()));
  }
  if (g.N * g.Co * P == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "pw_conv2d_cpu", [&] {
    const auto out = groups ? per_group<scalar_t>(outs, g.Co * P)
                            : in_one(outs[0].mutable_data_ptr<scalar_t>(), g.E, g.Co * P);
    grouped_product<scalar_t>(in_one(input.const_data_ptr<scalar_t>(), g.E, g.Ci * P), wt.const_data_ptr<scalar_t>(),
                              out, g.N, g.E, g.Ci, g.Co, P);
  });
  return outs;
}

at::Tensor pw_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight) {
  const PwGeometry g = pw_geometry(input, weight);
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  return as_output_for(forward_impl(input.to(ct), weight.to(ct), g, false)[0], input);
}

std::vector<at::Tensor> pw_conv2d_groups_cpu(const at::Tensor& input, const at::Tensor& weight) {
  const PwGeometry g = pw_geometry(input, weight);
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  std::vector<at::Tensor> outs = forward_impl(input.to(ct), weight.to(ct), g, true);
  for (auto& o : outs) o = as_output_for(o, input);
  return outs;
}

// The gradients from grad_output in one tensor [N, E*Co, H, W], or (pw_conv2d_groups) one [N, Co, H, W] per group.
std::tuple<at::Tensor, at::Tensor> backward_impl(const std::vector<at::Tensor>& grads_, bool groups,
                                                 const at::Tensor& input_, const at::Tensor& weight_,
                                                 const PwGeometry& g, bool need_input, bool need_weight) {
  std::vector<at::Tensor> grads;
  for (const auto& t : grads_) grads.push_back(t.contiguous());
  const at::Tensor weight = weight_.contiguous();
  const at::TensorOptions opts = weight.options();
  at::Tensor gin, gw;
  const int64_t P = g.H * g.W;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "pw_conv2d_backward_cpu", [&] {
    const auto G = groups ? per_group<const scalar_t>(grads, g.Co * P)
                          : in_one(grads[0].const_data_ptr<scalar_t>(), g.E, g.Co * P);
    if (need_input) {
      gin = at::empty({g.N, g.E * g.Ci, g.H, g.W}, opts);
      if (gin.numel() > 0) {
        grouped_product<scalar_t>(G, weight.const_data_ptr<scalar_t>(),
                                  in_one(gin.mutable_data_ptr<scalar_t>(), g.E, g.Ci * P), g.N, g.E, g.Co, g.Ci, P);
      }
    }
    if (need_weight) {
      const at::Tensor input = input_.contiguous();
      at::Tensor acc = at::zeros({g.E, g.Co, g.Ci}, opts.dtype(at::kDouble));
      if (g.N * P > 0) {
        grouped_weight_grad<scalar_t>(G, input.const_data_ptr<scalar_t>(), acc.mutable_data_ptr<double>(), g.N, g.E,
                                      g.Ci, g.Co, P);
      }
      gw = acc.to(weight.scalar_type());
    }
  });
  return {gin, gw};
}

std::tuple<at::Tensor, at::Tensor> pw_conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& weight, std::array<bool, 2> output_mask) {
  const PwGeometry g = pw_geometry(input, weight);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.E * g.Co &&
                  grad_output.size(2) == g.H && grad_output.size(3) == g.W,
              "pw_conv2d_backward: grad_output has shape ", grad_output.sizes(), ", expected [", g.N, ", ",
              g.E * g.Co, ", ", g.H, ", ", g.W, "]");
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  auto [gin, gw] = backward_impl({grad_output.to(ct)}, false, input.to(ct), weight.to(ct), g, output_mask[0],
                                 output_mask[1]);
  return {as_output_for(gin, input), as_dtype_of(gw, weight)};
}

// Gradients of pw_conv2d_groups: grads[e] is group e's output gradient [N, Co, H, W]; an undefined one is zeros.
std::tuple<at::Tensor, at::Tensor> pw_conv2d_groups_backward_cpu(const c10::List<std::optional<at::Tensor>>& grads_,
                                                                 const at::Tensor& input,
                                                                 const at::Tensor& weight,
                                                                 std::array<bool, 2> output_mask) {
  const PwGeometry g = pw_geometry(input, weight);
  TORCH_CHECK(static_cast<int64_t>(grads_.size()) == g.E, "pw_conv2d_groups_backward: ", grads_.size(),
              " gradients for ", g.E, " groups");
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  std::vector<at::Tensor> grads;
  for (size_t e = 0; e < grads_.size(); ++e) {
    const std::optional<at::Tensor> given = grads_[e];
    if (!given.has_value() || !given->defined()) {
      grads.push_back(at::zeros({g.N, g.Co, g.H, g.W}, input.options().dtype(ct)));
      continue;
    }
    const at::Tensor& t = *given;
    TORCH_CHECK(t.dim() == 4 && t.size(0) == g.N && t.size(1) == g.Co && t.size(2) == g.H && t.size(3) == g.W,
                "pw_conv2d_groups_backward: gradient ", e, " has shape ", t.sizes(), ", expected [", g.N, ", ", g.Co,
                ", ", g.H, ", ", g.W, "]");
    grads.push_back(t.to(ct));
  }
  auto [gin, gw] = backward_impl(grads, true, input.to(ct), weight.to(ct), g, output_mask[0], output_mask[1]);
  return {as_output_for(gin, input), as_dtype_of(gw, weight)};
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CPU, m) {
  m.impl("pw_conv2d", &pw_conv2d_cpu);
  m.impl("pw_conv2d_backward", &pw_conv2d_backward_cpu);
  m.impl("pw_conv2d_groups", &pw_conv2d_groups_cpu);
  m.impl("pw_conv2d_groups_backward", &pw_conv2d_groups_backward_cpu);
}

}  // namespace proxynas_fast
