// CPU kernel of proxynas_fast::augment_crops: images in parallel, each in two sweeps over its output rows
// (written straight into the output planes, so no scratch image): the first resamples the box and runs the colour
// ops that precede contrast while summing the channels; the second runs contrast (blending with the mean grey of
// the image as it is at that point), the remaining ops and the normalisation.  The steps repeat the float32
// arithmetic of the tensor-op reference (the grid coordinates as resample_boxes builds them and grid_sample reads
// them back, the blend and hue formulas of batch_augment.py); the bilinear weights are applied separably, which
// changes only the rounding.  The extension is built for baseline x86-64: the row loops the compiler vectorises
// are cloned for AVX2 and picked at load time (target_clones), the hue rotation has its own AVX2 version.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace proxynas_fast {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define PROXYNAS_ROW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PROXYNAS_ROW_CLONES
#endif

constexpr float kGreyR = 0.299f;
constexpr float kSixth = static_cast<float>(1.0 / 6.0);
// saturation's grey as the reference computes it: (r + g * (0.587 / 0.299) + b * (0.114 / 0.299)) * 0.299
constexpr float kGreyG = static_cast<float>(0.587 / 0.299);
constexpr float kGreyB = static_cast<float>(0.114 / 0.299);

inline float clamp255(float v) { return std::min(std::max(v, 0.0f), 255.0f); }

// The sample positions of one axis: source index of the first tap and the weight of the second, per output pixel.
struct Taps {
  std::vector<int32_t> index;
  std::vector<float> weight;
};

// resample_boxes' grid coordinate of output pixel k, then grid_sample's unnormalisation and border clip.
void axis_taps(float start, float length, int64_t size, int64_t extent, bool mirrored, Taps& taps) {
  taps.index.resize(size);
  taps.weight.resize(size);
  const float n = static_cast<float>(size), e = static_cast<float>(extent);
  for (int64_t k = 0; k < size; ++k) {
    const int64_t step = mirrored ? size - 1 - k : k;
    const float centre = (static_cast<float>(step) + 0.5f) / n;
    float source = start + centre * length - 0.5f;
    source = std::min(std::max(source, start), start + length - 1.0f);
    const float grid = (2.0f * source + 1.0f) / e - 1.0f;
    float x = (grid + 1.0f) * (e / 2.0f) - 0.5f;
    x = std::min(e - 1.0f, std::max(x, 0.0f));
    const float lo = std::floor(x);
    taps.index[k] = static_cast<int32_t>(lo);
    taps.weight[k] = x - lo;
  }
}

// The two source rows of an output row blended vertically, interleaved RGB as stored, over the columns the row's
// taps read ([first, last]).
PROXYNAS_ROW_CLONES void blend_rows(const uint8_t* __restrict top, const uint8_t* __restrict bottom, int64_t first,
                                    int64_t last, float s, float n, float* __restrict blended) {
  for (int64_t v = first * 3; v < (last + 1) * 3; ++v) blended[v] = s * top[v] + n * bottom[v];
}

// One output row of the bilinear resample into planar r, g, b: grid_sample's bilinear weights applied separably
// (vertically, then horizontally), which differs from its four-tap sum by rounding only.
void resample_row(const uint8_t* image, int64_t width, int64_t height, int32_t y0, float wy, const Taps& xs,
                  int64_t first, int64_t last, int64_t size, float* blended, float* r, float* g, float* b) {
  const int64_t y1 = std::min<int64_t>(y0 + 1, height - 1);
  blend_rows(image + y0 * width * 3, image + y1 * width * 3, first, last, 1.0f - wy, wy, blended);
  const int32_t* index = xs.index.data();
  const float* weight = xs.weight.data();
  for (int64_t k = 0; k < size; ++k) {
    const int64_t x0 = index[k], x1 = std::min<int64_t>(x0 + 1, width - 1);
    const float w = weight[k], e = 1.0f - w;
    const float* p0 = blended + x0 * 3;
    const float* p1 = blended + x1 * 3;
    r[k] = e * p0[0] + w * p1[0];
    g[k] = e * p0[1] + w * p1[1];
    b[k] = e * p0[2] + w * p1[2];
  }
}

PROXYNAS_ROW_CLONES void brightness_row(float* __restrict r, float* __restrict g, float* __restrict b, int64_t n,
                                        float f) {
  for (int64_t k = 0; k < n; ++k) {
    r[k] = clamp255(r[k] * f);
    g[k] = clamp255(g[k] * f);
    b[k] = clamp255(b[k] * f);
  }
}

// x * f + other * (1 - f), clamped; `mean_part` is the contrast's mean * (1 - f).
PROXYNAS_ROW_CLONES void contrast_row(float* __restrict r, float* __restrict g, float* __restrict b, int64_t n,
                                      float f, float mean_part) {
  for (int64_t k = 0; k < n; ++k) {
    r[k] = clamp255(r[k] * f + mean_part);
    g[k] = clamp255(g[k] * f + mean_part);
    b[k] = clamp255(b[k] * f + mean_part);
  }
}

PROXYNAS_ROW_CLONES void saturation_row(float* __restrict r, float* __restrict g, float* __restrict b, int64_t n,
                                        float f) {
  const float rest = 1.0f - f;
  for (int64_t k = 0; k < n; ++k) {
    const float grey_part = ((r[k] + g[k] * kGreyG) + b[k] * kGreyB) * kGreyR * rest;
    r[k] = clamp255(r[k] * f + grey_part);
    g[k] = clamp255(g[k] * f + grey_part);
    b[k] = clamp255(b[k] * f + grey_part);
  }
}

// adjust_hue's formulas: 6H from the max channel's sector (r before g before b), shifted, wrapped into [0, 6),
// and turned back with V = max, m = min, C = V - m.
inline void hue_pixel(float& r, float& g, float& b, float turn) {
  const float value = std::max(std::max(r, g), b);
  const float low = std::min(std::min(r, g), b);
  const float chroma = value - low;
  float h6 = (r - g) + chroma * 4.0f;
  h6 = value == g ? (b - r) + chroma * 2.0f : h6;
  h6 = value == r ? g - b : h6;
  h6 = h6 / std::max(chroma, 1e-6f);
  h6 = h6 + turn;
  h6 = h6 - std::floor(h6 * kSixth) * 6.0f;
  const float kr = std::min(std::max(std::fabs(h6 - 3.0f) - 1.0f, 0.0f), 1.0f);
  const float kg = std::min(std::max(2.0f - std::fabs(h6 - 2.0f), 0.0f), 1.0f);
  const float kb = std::min(std::max(2.0f - std::fabs(h6 - 4.0f), 0.0f), 1.0f);
  r = low + kr * chroma;
  g = low + kg * chroma;
  b = low + kb * chroma;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PROXYNAS_HUE_AVX2 1
// hue_pixel on eight pixels at a time (the compilers leave its selects and floor scalar).
__attribute__((target("avx2"))) void hue_row_avx2(float* r, float* g, float* b, int64_t n, float turn) {
  const __m256 shift = _mm256_set1_ps(turn), sixth = _mm256_set1_ps(kSixth), zero = _mm256_setzero_ps();
  const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f), three = _mm256_set1_ps(3.0f);
  const __m256 four = _mm256_set1_ps(4.0f), six = _mm256_set1_ps(6.0f), tiny = _mm256_set1_ps(1e-6f);
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 rv = _mm256_loadu_ps(r + k), gv = _mm256_loadu_ps(g + k), bv = _mm256_loadu_ps(b + k);
    const __m256 value = _mm256_max_ps(_mm256_max_ps(rv, gv), bv);
    const __m256 low = _mm256_min_ps(_mm256_min_ps(rv, gv), bv);
    const __m256 chroma = _mm256_sub_ps(value, low);
    __m256 h6 = _mm256_add_ps(_mm256_sub_ps(rv, gv), _mm256_mul_ps(chroma, four));
    h6 = _mm256_blendv_ps(h6, _mm256_add_ps(_mm256_sub_ps(bv, rv), _mm256_mul_ps(chroma, two)),
                          _mm256_cmp_ps(value, gv, _CMP_EQ_OQ));
    h6 = _mm256_blendv_ps(h6, _mm256_sub_ps(gv, bv), _mm256_cmp_ps(value, rv, _CMP_EQ_OQ));
    h6 = _mm256_div_ps(h6, _mm256_max_ps(chroma, tiny));
    h6 = _mm256_add_ps(h6, shift);
    h6 = _mm256_sub_ps(h6, _mm256_mul_ps(_mm256_floor_ps(_mm256_mul_ps(h6, sixth)), six));
    const __m256 kr = _mm256_sub_ps(_mm256_and_ps(_mm256_sub_ps(h6, three), magnitude), one);
    const __m256 kg = _mm256_sub_ps(two, _mm256_and_ps(_mm256_sub_ps(h6, two), magnitude));
    const __m256 kb = _mm256_sub_ps(two, _mm256_and_ps(_mm256_sub_ps(h6, four), magnitude));
    _mm256_storeu_ps(r + k, _mm256_add_ps(low, _mm256_mul_ps(_mm256_min_ps(_mm256_max_ps(kr, zero), one), chroma)));
    _mm256_storeu_ps(g + k, _mm256_add_ps(low, _mm256_mul_ps(_mm256_min_ps(_mm256_max_ps(kg, zero), one), chroma)));
    _mm256_storeu_ps(b + k, _mm256_add_ps(low, _mm256_mul_ps(_mm256_min_ps(_mm256_max_ps(kb, zero), one), chroma)));
  }
  for (; k < n; ++k) hue_pixel(r[k], g[k], b[k], turn);
}
const bool kHueAvx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2"));  // may run before libgcc inits it
#endif

void hue_row(float* r, float* g, float* b, int64_t n, float shift) {
  const float turn = 6.0f * shift;
#ifdef PROXYNAS_HUE_AVX2
  if (kHueAvx2) return hue_row_avx2(r, g, b, n, turn);
#endif
  for (int64_t k = 0; k < n; ++k) hue_pixel(r[k], g[k], b[k], turn);
}

PROXYNAS_ROW_CLONES void normalise_row(float* __restrict v, int64_t n, float scale, float shift) {
  for (int64_t k = 0; k < n; ++k) v[k] = v[k] * scale - shift;
}

PROXYNAS_ROW_CLONES void channel_sums_row(const float* __restrict r, const float* __restrict g,
                                          const float* __restrict b, int64_t n, double* sums) {
  float sr = 0.0f, sg = 0.0f, sb = 0.0f;  // a row's sum in float (its order free: simd), the image's in double
#pragma omp simd reduction(+ : sr, sg, sb)
  for (int64_t k = 0; k < n; ++k) {
    sr += r[k];
    sg += g[k];
    sb += b[k];
  }
  sums[0] += sr;
  sums[1] += sg;
  sums[2] += sb;
}

enum ColourOp : int64_t { kBrightness = 0, kContrast = 1, kSaturation = 2, kHue = 3 };

void colour_op_row(int64_t op, const float* factors, float contrast_mean_part, float* r, float* g, float* b,
                   int64_t n) {
  switch (op) {
    case kBrightness: brightness_row(r, g, b, n, factors[0]); break;
    case kContrast: contrast_row(r, g, b, n, factors[1], contrast_mean_part); break;
    case kSaturation: saturation_row(r, g, b, n, factors[2]); break;
    default: hue_row(r, g, b, n, factors[3]); break;
  }
}

void augment_image(const uint8_t* image, int64_t height, int64_t width, const double* box, bool flip,
                   const double* factors64, const int64_t* order, int64_t size, const float* scale,
                   const float* shift, float* out) {
  Taps ys, xs;
  const float top = static_cast<float>(box[0]), left = static_cast<float>(box[1]);
  axis_taps(top, static_cast<float>(box[2]), size, height, false, ys);
  axis_taps(left, static_cast<float>(box[3]), size, width, flip, xs);
  float factors[4];
  for (int i = 0; i < 4; ++i) factors[i] = static_cast<float>(factors64[i]);
  int contrast_at = 0;
  while (contrast_at < 4 && order[contrast_at] != kContrast) ++contrast_at;
  const int64_t plane = size * size;
  const auto columns = std::minmax_element(xs.index.begin(), xs.index.end());
  const int64_t first = *columns.first, last = std::min<int64_t>(*columns.second + 1, width - 1);
  std::vector<float> blended(static_cast<size_t>(width) * 3);
  double sums[3] = {0.0, 0.0, 0.0};
  for (int64_t y = 0; y < size; ++y) {  // sweep 1: resample, the ops before contrast, channel sums
    float *r = out + y * size, *g = r + plane, *b = g + plane;
    resample_row(image, width, height, ys.index[y], ys.weight[y], xs, first, last, size, blended.data(), r, g, b);
    for (int i = 0; i < contrast_at; ++i) colour_op_row(order[i], factors, 0.0f, r, g, b, size);
    if (contrast_at < 4) channel_sums_row(r, g, b, size, sums);
  }
  float mean_part = 0.0f;
  if (contrast_at < 4) {  // adjust_contrast: the grey weights applied to the channel means
    const float count = static_cast<float>(plane);
    const float mean = static_cast<float>(sums[0] / count) * kGreyR + static_cast<float>(sums[1] / count) * 0.587f +
                       static_cast<float>(sums[2] / count) * 0.114f;
    mean_part = mean * (1.0f - factors[1]);
  }
  for (int64_t y = 0; y < size; ++y) {  // sweep 2: contrast and the ops after it, normalisation
    float *r = out + y * size, *g = r + plane, *b = g + plane;
    for (int i = contrast_at; i < 4; ++i) colour_op_row(order[i], factors, mean_part, r, g, b, size);
    normalise_row(r, size, scale[0], shift[0]);
    normalise_row(g, size, scale[1], shift[1]);
    normalise_row(b, size, scale[2], shift[2]);
  }
}

// A float32 tensor of `sizes` starting on a 2 MiB boundary of its storage, whose pages the kernel is asked to back
// with huge pages (advice only: a no-op where transparent huge pages are off).  A batch's output is tens of MiB
// written once: with 4 KiB pages the page faults of its first touch took more CPU time than the augmentation.
at::Tensor empty_on_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t n : sizes) numel *= n;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr int64_t kHuge = int64_t{1} << 21;
  constexpr int64_t kSlack = kHuge / static_cast<int64_t>(sizeof(float));
  if (numel * static_cast<int64_t>(sizeof(float)) >= kHuge) {
    auto storage = at::empty({numel + kSlack}, options);
    const auto address = reinterpret_cast<uintptr_t>(storage.data_ptr<float>());
    const int64_t offset = static_cast<int64_t>(((kHuge - address % kHuge) % kHuge) / sizeof(float));
    float* start = storage.data_ptr<float>() + offset;
    // the whole huge pages from `start` that lie inside the storage (numel + kSlack - offset floats)
    const int64_t span = (numel + kSlack - offset) * static_cast<int64_t>(sizeof(float)) / kHuge * kHuge;
    madvise(start, static_cast<size_t>(span), MADV_HUGEPAGE);
    return storage.narrow(0, offset, numel).view(sizes);
  }
#endif
  return at::empty(sizes, options);
}

void check_args(const at::Tensor& images, const at::Tensor& boxes, const at::Tensor& flip, const at::Tensor& factors,
                const at::Tensor& order, int64_t size, const at::Tensor& scale, const at::Tensor& shift) {
  TORCH_CHECK(images.dim() == 4 && images.size(3) == 3 && images.scalar_type() == at::kByte,
              "augment_crops: images must be uint8 [B, H, W, 3], got ", images.scalar_type(), " ", images.sizes());
  const int64_t count = images.size(0);
  TORCH_CHECK(size >= 1, "augment_crops: size must be positive, got ", size);
  TORCH_CHECK(boxes.scalar_type() == at::kDouble && boxes.sizes() == at::IntArrayRef({count, 4}),
              "augment_crops: boxes must be float64 [B, 4], got ", boxes.scalar_type(), " ", boxes.sizes());
  TORCH_CHECK(flip.scalar_type() == at::kBool && flip.sizes() == at::IntArrayRef({count}),
              "augment_crops: flip must be bool [B], got ", flip.scalar_type(), " ", flip.sizes());
  TORCH_CHECK(factors.scalar_type() == at::kDouble && factors.sizes() == at::IntArrayRef({count, 4}),
              "augment_crops: factors must be float64 [B, 4], got ", factors.scalar_type(), " ", factors.sizes());
  TORCH_CHECK(order.scalar_type() == at::kLong && order.sizes() == at::IntArrayRef({count, 4}),
              "augment_crops: order must be int64 [B, 4], got ", order.scalar_type(), " ", order.sizes());
  for (const auto* t : {&scale, &shift}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == 3,
                "augment_crops: scale and shift must be float32 with 3 values, got ", t->scalar_type(), " ",
                t->sizes());
  }
}

at::Tensor augment_crops_cpu(const at::Tensor& images_in, const at::Tensor& boxes_in, const at::Tensor& flip_in,
                             const at::Tensor& factors_in, const at::Tensor& order_in, int64_t size,
                             const at::Tensor& scale_in, const at::Tensor& shift_in) {
  check_args(images_in, boxes_in, flip_in, factors_in, order_in, size, scale_in, shift_in);
  const auto images = images_in.contiguous();
  const auto boxes = boxes_in.contiguous(), factors = factors_in.contiguous(), order = order_in.contiguous();
  const auto flip = flip_in.contiguous(), scale = scale_in.contiguous(), shift = shift_in.contiguous();
  const int64_t count = images.size(0), height = images.size(1), width = images.size(2);
  const double* box_p = boxes.data_ptr<double>();
  const int64_t* order_p = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const double* box = box_p + i * 4;
    TORCH_CHECK(box[0] >= 0 && box[1] >= 0 && box[2] >= 1 && box[3] >= 1 && box[0] + box[2] <= height &&
                    box[1] + box[3] <= width,
                "augment_crops: box ", i, " (top ", box[0], ", left ", box[1], ", height ", box[2], ", width ",
                box[3], ") does not lie inside the ", height, " x ", width, " image");
    int seen = 0;
    for (int j = 0; j < 4; ++j) {
      const int64_t op = order_p[i * 4 + j];
      TORCH_CHECK(op >= 0 && op < 4, "augment_crops: order of image ", i, " holds ", op, ", not an op index 0..3");
      seen |= 1 << op;
    }
    TORCH_CHECK(seen == 15, "augment_crops: order of image ", i, " is not a permutation of 0..3");
  }
  auto out = empty_on_huge_pages({count, 3, size, size}, images.options().dtype(at::kFloat));
  const uint8_t* image_p = images.data_ptr<uint8_t>();
  const bool* flip_p = flip.data_ptr<bool>();
  const double* factor_p = factors.data_ptr<double>();
  const float* scale_p = scale.data_ptr<float>();
  const float* shift_p = shift.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      augment_image(image_p + i * height * width * 3, height, width, box_p + i * 4, flip_p[i], factor_p + i * 4,
                    order_p + i * 4, size, scale_p, shift_p, out_p + i * 3 * size * size);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, CPU, m) {
  m.impl("augment_crops", &augment_crops_cpu);
}

}  // namespace proxynas_fast
