// Autograd for the ops, in C++, so that a call runs no Python between the user and the kernel.
// One formula for every backend: the forward saves out, and x and weight where the backward needs
// them (save_operands), and the backward calls that backend's backward op for only the gradients
// autograd needs (the mask is out > 0).
// (twolayer_ops.LinearReLUFunction and MyReLU mirror it in Python for the autograd.Function API.)
// The backward ops are differentiable too, so create_graph=True (double backward, gradient
// penalties) works as it does for relu(F.linear(...)).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "linear_relu.h"
#include "op_handles.h"

namespace twolayer_ops {
namespace autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// As torch's linear saves them: x only where weight needs its gradient (dW = gm^T x), weight only
// where x does (dX = gm W). So an input changed in place after the forward fails the backward only
// where its value is needed, and a frozen layer keeps no x alive. The backward op gets an unsaved
// operand as a placeholder of its shape (one uninitialized element, stride 0): every backend reads
// an operand only for a gradient that needs it, else its shape alone.
// Sizes as SymInts: torch.export and torch.compile trace the forward with symbolic shapes, and a
// concrete size read there would fix them.
inline void save_operands(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& out) {
  ctx->save_for_backward({weight.requires_grad() ? x : at::Tensor(), x.requires_grad() ? weight : at::Tensor(), out});
  ctx->saved_data["k"] = x.sym_size(-1);
}

// x (..., K) and weight (N, K) of the forward, saved or as placeholders, from out (..., N) and K.
inline std::pair<at::Tensor, at::Tensor> operands(AutogradContext* ctx, const variable_list& saved) {
  const at::Tensor& out = saved[2];
  const c10::SymInt k = ctx->saved_data["k"].toSymInt();
  const auto placeholder = [&](std::vector<c10::SymInt> sizes) {
    return at::empty({}, out.options()).expand_symint(sizes);
  };
  std::vector<c10::SymInt> x_sizes(out.sym_sizes().begin(), out.sym_sizes().end());
  x_sizes.back() = k;
  return {saved[0].defined() ? saved[0] : placeholder(x_sizes),
          saved[1].defined() ? saved[1] : placeholder({out.sym_size(-1), k})};
}

template <class O>
struct LinearReLUFunction : public torch::autograd::Function<LinearReLUFunction<O>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = O::linear_relu().call(x, weight, bias);
    save_operands(ctx, x, weight, out);
    ctx->saved_data["has_bias"] = has_bias(bias);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& out = saved[2];
    const auto [x, weight] = operands(ctx, saved);
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

// The backward op is linear in grad_out, x and weight, and constant in out (the mask is piecewise
// constant, as in torch's threshold_backward). With gm = mask(grad_out), gx = gm W, gw = gm^T x and
// gb = the row sum of gm, the incoming (ggx, ggw, ggb) give
//   d grad_out = mask(ggx W^T + x ggw^T + ggb),  d x = gm ggw,  d weight = gm^T ggx.
// Every product is a differentiable torch op and every mask is the backend's relu_backward, itself
// differentiable, so any order of derivative works.
template <class O>
struct LinearReLUBackwardFunction : public torch::autograd::Function<LinearReLUBackwardFunction<O>> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_out, const at::Tensor& out,
                               const at::Tensor& x, const at::Tensor& weight, std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [gx, gw, gb] = O::linear_relu_backward().call(grad_out, out, x, weight, output_mask);
    ctx->save_for_backward({grad_out, out, x, weight});
    ctx->saved_data["output_mask"] = std::vector<bool>(output_mask.begin(), output_mask.end());
    return {gx, gw, gb};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad_out = saved[0], &out = saved[1], &x = saved[2], &weight = saved[3];
    const auto output_mask = ctx->saved_data["output_mask"].toBoolList();
    // Gradients of outputs that were not requested (empty placeholders) carry nothing.
    auto incoming = [&](int i) { return output_mask.get(i) && grads[i].defined() ? grads[i] : at::Tensor(); };
    const at::Tensor ggx = incoming(0), ggw = incoming(1), ggb = incoming(2);
    const at::Tensor x2 = as_matrix(x);
    const int64_t n = weight.size(0);
    at::Tensor d_grad_out, d_x, d_weight;
    if (ctx->needs_input_grad(0) && (ggx.defined() || ggw.defined() || ggb.defined())) {
      at::Tensor pre = at::zeros({x2.size(0), n}, out.options());
      if (ggx.defined()) pre = pre.add(as_matrix(ggx).mm(weight.t()));
      if (ggw.defined()) pre = pre.add(x2.mm(ggw.t()));
      if (ggb.defined()) pre = pre.add(ggb);
      d_grad_out = O::relu_backward().call(pre.view(out.sizes()), out);
    }
    if ((ctx->needs_input_grad(2) && ggw.defined()) || (ctx->needs_input_grad(3) && ggx.defined())) {
      const at::Tensor gm = as_matrix(O::relu_backward().call(grad_out, out));
      if (ctx->needs_input_grad(2) && ggw.defined()) d_x = gm.mm(ggw).view(x.sizes());
      if (ctx->needs_input_grad(3) && ggx.defined()) d_weight = gm.t().mm(as_matrix(ggx));
    }
    return {d_grad_out, at::Tensor(), d_x, d_weight, at::Tensor()};
  }
};

// relu_backward is mask(grad_out): linear in grad_out, constant in out.
template <class O>
struct ReLUBackwardFunction : public torch::autograd::Function<ReLUBackwardFunction<O>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_out, const at::Tensor& out) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({out});
    return O::relu_backward().call(grad_out, out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {O::relu_backward().call(grads[0], ctx->get_saved_variables()[0]), at::Tensor()};
  }
};

// Autograd records a call when an input requires grad under grad mode, or carries a forward-mode tangent.
inline bool tracked(const at::Tensor& t) {
  return t.defined() && ((t.requires_grad() && at::GradMode::is_enabled()) || t._fw_grad(/*level=*/0).defined());
}
inline bool tracked(const std::optional<at::Tensor>& t) { return t.has_value() && tracked(*t); }

// Nothing for autograd to record: grad mode is off (no_grad, inference, the forward of a Python
// autograd Function, the first-order backward) or no input requires grad, and no input carries a
// forward-mode tangent. Such a call goes straight to the kernel; a Function would still wrap its
// outputs (about 1 us a call). A tangent goes to the Function, which refuses it clearly (the C++ API
// has no jvp) instead of dropping it.
template <typename... Tensors>
bool untracked(const Tensors&... tensors) {
  return !(tracked(tensors) || ...);
}

template <class O>
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  if (untracked(grad_out, out, x, weight)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return O::linear_relu_backward().call(grad_out, out, x, weight, output_mask);
  }
  auto g = LinearReLUBackwardFunction<O>::apply(grad_out, out, x, weight, output_mask);
  return {g[0], g[1], g[2]};
}

template <class O>
at::Tensor relu_backward_autograd(const at::Tensor& grad_out, const at::Tensor& out) {
  if (untracked(grad_out, out)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return O::relu_backward().call(grad_out, out);
  }
  return ReLUBackwardFunction<O>::apply(grad_out, out);
}

template <class O>
at::Tensor linear_relu_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (untracked(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return O::linear_relu().call(x, weight, bias);
  }
  return LinearReLUFunction<O>::apply(x, weight, bias);
}

template <class O>
at::Tensor relu_autograd(const at::Tensor& x) {
  if (untracked(x)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return O::relu().call(x);
  }
  return ReLUFunction<O>::apply(x);
}

}  // namespace autograd

TORCH_LIBRARY_IMPL(twolayer_ops, Autograd, m) {
  using namespace autograd;
  m.impl("linear_relu", &linear_relu_autograd<Ops<kNative>>);
  m.impl("linear_relu_backward", &linear_relu_backward_autograd<Ops<kNative>>);
  m.impl("relu", &relu_autograd<Ops<kNative>>);
  m.impl("relu_backward", &relu_backward_autograd<Ops<kNative>>);
  m.impl("linear_relu_triton", &linear_relu_autograd<Ops<kTriton>>);
  m.impl("linear_relu_backward_triton", &linear_relu_backward_autograd<Ops<kTriton>>);
  m.impl("relu_triton", &relu_autograd<Ops<kTriton>>);
  m.impl("relu_backward_triton", &relu_backward_autograd<Ops<kTriton>>);
}

}  // namespace twolayer_ops
