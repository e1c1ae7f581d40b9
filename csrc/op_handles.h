// Typed handles of each backend's ops, looked up once, for the C++ kernels that call an op through
// the dispatcher (autograd.cpp, autocast.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

namespace twolayer_ops {

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

inline constexpr char kNative[] = "";
inline constexpr char kTriton[] = "_triton";

}  // namespace twolayer_ops
