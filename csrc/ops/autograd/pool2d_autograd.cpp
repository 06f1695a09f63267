// Autograd of proxynas_fast::pool2d, in C++ (as dw_conv2d_autograd.cpp: no Python per call; the fused cell pools
// every state twice a cell, ~320 calls a search step). Max pooling keeps its input and output for the backward,
// which finds the winning tap from the output; average pooling keeps no tensor alive, only one-element stand-ins
// expanded to the shapes (its backward reads neither).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace proxynas_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor pool2d_call(const at::Tensor& input, bool is_max, at::IntArrayRef kernel, at::IntArrayRef stride,
                       at::IntArrayRef padding) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::pool2d", "")
                       .typed<at::Tensor(const at::Tensor&, bool, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(input, is_max, kernel, stride, padding);
}

at::Tensor pool2d_backward_call(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output,
                                bool is_max, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::pool2d_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad, input, output, is_max, kernel, stride, padding);
}

// A tensor of t's shape, dtype and device that holds one element (what the average's backward is given).
at::Tensor stand_in(const at::Tensor& t) { return at::empty({1, 1, 1, 1}, t.options()).expand(t.sizes()); }

class Pool2dFunction : public torch::autograd::Function<Pool2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, bool is_max, at::IntArrayRef kernel,
                            at::IntArrayRef stride, at::IntArrayRef padding) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = pool2d_call(input, is_max, kernel, stride, padding);
    ctx->saved_data["is_max"] = is_max;
    ctx->saved_data["kernel"] = kernel.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    if (is_max) {
      ctx->save_for_backward({input, out});
    } else {
      ctx->save_for_backward({stand_in(input), stand_in(out)});
    }
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!ctx->needs_input_grad(0)) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<int64_t> kernel = ctx->saved_data["kernel"].toIntVector();
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    at::Tensor grad_input = pool2d_backward_call(grads[0], saved[0], saved[1], ctx->saved_data["is_max"].toBool(),
                                                 kernel, stride, padding);
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor pool2d_autograd(const at::Tensor& input, bool is_max, at::IntArrayRef kernel, at::IntArrayRef stride,
                           at::IntArrayRef padding) {
  return Pool2dFunction::apply(input, is_max, kernel, stride, padding);
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, Autograd, m) {
  m.impl("pool2d", &pool2d_autograd);
}

}  // namespace proxynas_fast
