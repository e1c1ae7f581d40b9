// Shared host-side helpers for the CPU (ops.cpp) and CUDA (cuda/linear_relu.cu) kernels:
// argument checks and the (..., K) <-> (M, K) reshaping, written once.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace twolayer_ops {

inline bool is_float_dtype(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// A bias was given: C++ callers may pass an optional that holds an undefined tensor, which torch
// treats as None, so both count as no bias.
inline bool has_bias(const std::optional<at::Tensor>& bias) { return bias.has_value() && bias->defined(); }

// Checks x (..., K), weight (N, K), bias (N,) or None: one floating dtype, one device.
inline void check_linear_relu_args(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(is_float_dtype(x.scalar_type()),
              "linear_relu: x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, "linear_relu: x must have at least 1 dimension, got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 2, "linear_relu: weight must be 2-D (N, K), got shape ", weight.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), "linear_relu: x's last dimension (", x.size(-1),
              ") must equal weight.shape[1] (", weight.size(1), "); x ", x.sizes(), ", weight ",
              weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "linear_relu: weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "linear_relu: weight is on ", weight.device(),
              " but x is on ", x.device());
  if (has_bias(bias)) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == weight.size(0), "linear_relu: bias must have shape (",
                weight.size(0), ",), got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == x.scalar_type(), "linear_relu: bias dtype ", b.scalar_type(),
                " differs from x dtype ", x.scalar_type());
    TORCH_CHECK(b.device() == x.device(), "linear_relu: bias is on ", b.device(),
                " but x is on ", x.device());
  }
}

// Checks the saved output and the incoming gradient of an elementwise ReLU-masked op.
inline void check_grad_like_out(const at::Tensor& grad_out, const at::Tensor& out, const char* op) {
  TORCH_CHECK(grad_out.sizes() == out.sizes(), op, ": grad_out shape ", grad_out.sizes(),
              " differs from the saved output shape ", out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == out.scalar_type(), op, ": grad_out dtype ",
              grad_out.scalar_type(), " differs from the saved output dtype ", out.scalar_type());
  TORCH_CHECK(grad_out.device() == out.device(), op, ": grad_out is on ", grad_out.device(),
              " but the saved output is on ", out.device());
}

// (..., K) -> (M, K). A view whenever the layout allows it; kernels take strides, not copies.
// M is counted, not inferred: reshape({-1, 0}) cannot infer the rows of a (..., 0) tensor.
inline at::Tensor as_matrix(const at::Tensor& t) {
  if (t.dim() == 2) return t;
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return t.reshape({rows, t.size(-1)});
}

// Output sizes (..., N) for x (..., K).
inline std::vector<int64_t> linear_out_sizes(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = n;
  return sizes;
}

// Gradients not asked for by output_mask come back as empty (0,) tensors; autograd maps them to None.
inline at::Tensor unrequested(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace twolayer_ops
