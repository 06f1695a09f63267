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

std::vector<at::Tensor> pw_conv2d_groups_call(const at::Tensor& input, const at::Tensor& weight) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::pw_conv2d_groups", "")
                       .typed<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&)>();
  return op.call(input, weight);
}

std::tuple<at::Tensor, at::Tensor> pw_conv2d_groups_backward_call(const c10::List<std::optional<at::Tensor>>& grads,
                                                                  const at::Tensor& input, const at::Tensor& weight,
                                                                  std::array<bool, 2> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("proxynas_fast::pw_conv2d_groups_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const c10::List<std::optional<at::Tensor>>&,
                                                                 const at::Tensor&, const at::Tensor&,
                                                                 std::array<bool, 2>)>();
  return op.call(grads, input, weight, mask);
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

// One output per group: each gets its own gradient (undefined where the pass does not reach it), with no
// concatenation of the groups' gradients (a split of one output would make one in its backward).
class PwConv2dGroupsFunction : public torch::autograd::Function<PwConv2dGroupsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> outs = pw_conv2d_groups_call(input, weight);
    ctx->save_for_backward({input, weight});
    ctx->set_materialize_grads(false);  // a group whose output the loss does not reach: no zero tensor made
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    bool any = false;
    c10::List<std::optional<at::Tensor>> given;
    for (const auto& g : grads) {
      any = any || g.defined();
      given.push_back(g.defined() ? std::optional<at::Tensor>(g) : std::nullopt);
    }
    if ((!mask[0] && !mask[1]) || !any) return {at::Tensor(), at::Tensor()};
    auto [grad_input, grad_weight] = pw_conv2d_groups_backward_call(given, saved[0], saved[1], mask);
    return {grad_input, grad_weight};
  }
};

std::vector<at::Tensor> pw_conv2d_groups_autograd(const at::Tensor& input, const at::Tensor& weight) {
  return PwConv2dGroupsFunction::apply(input, weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(proxynas_fast, Autograd, m) {
  m.impl("pw_conv2d", &pw_conv2d_autograd);
  m.impl("pw_conv2d_groups", &pw_conv2d_groups_autograd);
}

}  // namespace proxynas_fast
