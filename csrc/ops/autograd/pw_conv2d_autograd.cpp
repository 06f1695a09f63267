// Autograd of proxynas_fast::pw_conv2d, in C++ (see dw_conv2d_autograd.cpp: no Python per call; the backward asks
// only for the gradients the pass uses, so the architecture step computes no weight gradient).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace proxynas_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor pw_conv2d_call(const at::Tensor& input, const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::pw_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(input, weight);
}

std::tuple<at::Tensor, at::Tensor> pw_conv2d_backward_call(const at::Tensor& grad, const at::Tensor& input,
                                                           const at::Tensor& weight, std::array<bool, 2> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::pw_conv2d_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, std::array<bool, 2>)>();
  return op.call(grad, input, weight, mask);
}

class PwConv2dFunction : public torch::autograd::Function<PwConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = pw_conv2d_call(input, weight);
    ctx->save_for_backward({input, weight});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    if (!mask[0] && !mask[1]) return {at::Tensor(), at::Tensor()};
    auto [grad_input, grad_weight] = pw_conv2d_backward_call(grads[0], saved[0], saved[1], mask);
    return {grad_input, grad_weight};
  }
};

at::Tensor pw_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight) {
  return PwConv2dFunction::apply(input, weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, Autograd, m) {
  m.impl("pw_conv2d", &pw_conv2d_autograd);
}

}  // namespace proxynas_fast
