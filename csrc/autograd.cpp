// Autograd for the ops, in C++, so that a call runs no Python between the user and the kernel.
// One formula for every backend: the forward saves (x, weight, out) and the backward calls that
// backend's backward op for only the gradients autograd needs (the mask is out > 0).
// (twolayer_ops.LinearReLUFunction and MyReLU mirror it in Python for the autograd.Function API.)
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "linear_relu.h"

namespace twolayer_ops {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LinearReLUSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
using LinearReLUBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, std::array<bool, 3>);
using ReLUSig = at::Tensor(const at::Tensor&);
using ReLUBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "").typed<Sig>();
}

// The op names of one backend: "twolayer_ops::linear_relu" + suffix, and so on.
template <const char* Suffix>
struct Ops {
  static const c10::TypedOperatorHandle<LinearReLUSig>& linear_relu() {
    static const auto op = find_op<LinearReLUSig>(std::string("twolayer_ops::linear_relu") + Suffix);
    return op;
  }
  static const c10::TypedOperatorHandle<LinearReLUBackwardSig>& linear_relu_backward() {
    static const auto op = find_op<LinearReLUBackwardSig>(std::string("twolayer_ops::linear_relu_backward") + Suffix);
    return op;
  }
  static const c10::TypedOperatorHandle<ReLUSig>& relu() {
    static const auto op = find_op<ReLUSig>(std::string("twolayer_ops::relu") + Suffix);
    return op;
  }
  static const c10::TypedOperatorHandle<ReLUBackwardSig>& relu_backward() {
    static const auto op = find_op<ReLUBackwardSig>(std::string("twolayer_ops::relu_backward") + Suffix);
    return op;
  }
};

template <class O>
struct LinearReLUFunction : public torch::autograd::Function<LinearReLUFunction<O>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = O::linear_relu().call(x, weight, bias);
    ctx->save_for_backward({x, weight, out});
    ctx->saved_data["has_bias"] = has_bias(bias);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &out = saved[2];
    const bool bias_given = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      bias_given && ctx->needs_input_grad(2)};
    if (!mask[0] && !mask[1] && !mask[2]) return {at::Tensor(), at::Tensor(), at::Tensor()};
    auto [gx, gw, gb] = O::linear_relu_backward().call(grad_outputs[0], out, x, weight, mask);
    return {mask[0] ? gx : at::Tensor(), mask[1] ? gw : at::Tensor(), mask[2] ? gb : at::Tensor()};
  }
};

template <class O>
struct ReLUFunction : public torch::autograd::Function<ReLUFunction<O>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = O::relu().call(x);
    ctx->save_for_backward({out});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {O::relu_backward().call(grad_outputs[0], ctx->get_saved_variables()[0])};
  }
};

template <class O>
at::Tensor linear_relu_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return LinearReLUFunction<O>::apply(x, weight, bias);
}

template <class O>
at::Tensor relu_autograd(const at::Tensor& x) {
  return ReLUFunction<O>::apply(x);
}

constexpr char kNative[] = "";
constexpr char kTriton[] = "_triton";

}  // namespace autograd

TORCH_LIBRARY_IMPL(twolayer_ops, Autograd, m) {
  using namespace autograd;
  m.impl("linear_relu", &linear_relu_autograd<Ops<kNative>>);
  m.impl("relu", &relu_autograd<Ops<kNative>>);
  m.impl("linear_relu_triton", &linear_relu_autograd<Ops<kTriton>>);
  m.impl("relu_triton", &relu_autograd<Ops<kTriton>>);
}

}  // namespace twolayer_ops
