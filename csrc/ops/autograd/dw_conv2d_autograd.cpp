// Autograd of proxynas_fast::dw_conv2d, in C++ for every device: a search step makes about a thousand of these
// calls, and an autograd function in Python would add its interpreter overhead to each call and each backward.
//
// The backward asks only for the gradients this backward pass uses: AutogradContext::needs_input_grad is the
// engine's task_should_compute_output, so `torch.autograd.grad(loss, alphas)` (the DARTS architecture step)
// computes no weight gradient, and no input gradient where nothing upstream needs it.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace proxynas_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor dw_conv2d_call(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::dw_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef)>();
  return op.call(input, weight, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor> dw_conv2d_backward_call(const at::Tensor& grad, const at::Tensor& input,
                                                           const at::Tensor& weight, at::IntArrayRef stride,
                                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                                           std::array<bool, 2> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::dw_conv2d_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                                 at::IntArrayRef, std::array<bool, 2>)>();
  return op.call(grad, input, weight, stride, padding, dilation, mask);
}

class DwConv2dFunction : public torch::autograd::Function<DwConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = dw_conv2d_call(input, weight, stride, padding, dilation);
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    if (!mask[0] && !mask[1]) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto [grad_input, grad_weight] = dw_conv2d_backward_call(
        grads[0], saved[0], saved[1], ctx->saved_data["stride"].toIntVector(),
        ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(), mask);
    return {grad_input, grad_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor dw_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  return DwConv2dFunction::apply(input, weight, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, Autograd, m) {
  m.impl("dw_conv2d", &dw_conv2d_autograd);
}

}  // namespace proxynas_fast
