// C++-level checks of the operators through the dispatcher (no Python): built and run by CMake/ctest.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <tuple>

#define EXPECT(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                   \
    }                                                                 \
  } while (0)

static std::tuple<at::Tensor, at::Tensor, at::Tensor> entropy_histogram(const at::Tensor& x, const at::Tensor& e) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::entropy_histogram", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>();
  return op.call(x, e);
}

static at::Tensor pool2d(const at::Tensor& x, bool is_max, int64_t k, int64_t s, int64_t p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::pool2d", "")
                       .typed<at::Tensor(const at::Tensor&, bool, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(x, is_max, {k, k}, {s, s}, {p, p});
}

int main() {
  // pooling equals ATen's max_pool2d / avg_pool2d(count_include_pad=false), strides 1 and 2
  auto planes = at::randn({2, 3, 7, 9}, at::kFloat);
  for (int64_t stride : {1, 2}) {
    EXPECT(at::allclose(pool2d(planes, true, 3, stride, 1), at::max_pool2d(planes, {3, 3}, {stride, stride}, {1, 1})));
    EXPECT(at::allclose(pool2d(planes, false, 3, stride, 1),
                        at::avg_pool2d(planes, {3, 3}, {stride, stride}, {1, 1}, false, false)));
  }

  // uniform rows over C classes have entropy log(C); a one-hot row has entropy 0 and lands in bin 0
  auto x = at::zeros({3, 10});
  x.index_put_({1, 4}, 500.0);
  x.index_put_({2}, at::arange(10, at::kFloat));
  auto edges = at::arange(-6, 3, at::kDouble) * 0.5;  // [-3, -2.5, ..., 1]
  auto [ent, bins, counts] = entropy_histogram(x, edges);
  EXPECT(std::fabs(ent[0].item<float>() - std::log(10.0f)) < 1e-5f);
  EXPECT(ent[1].item<float>() == 0.0f);
  EXPECT(bins[1].item<int64_t>() == 0);
  auto logp = at::log_softmax(x.to(at::kDouble), 1);
  auto ref = -(logp.exp() * logp).sum(1);
  EXPECT(std::fabs(ent[2].item<float>() - ref[2].item<double>()) < 1e-5);
  EXPECT(counts.sum().item<int64_t>() == 3);

  bool raised = false;
  try {
    auto bad = at::zeros({2, 5});
    bad.index_put_({1, 2}, NAN);
    entropy_histogram(bad, edges);
  } catch (const c10::Error& err) {
    raised = std::string(err.what()).find("row 1") != std::string::npos;
  }
  EXPECT(raised);
  std::printf("test_ops_cpp: all checks passed\n");
  return 0;
}
