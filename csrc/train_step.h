// Argument checks of the fused training step, shared by its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

namespace twolayer_ops {

// x (N, D_in), y (N, D_out); params and grads [w1 (H, D_in), b1 (H), w2 (D_out, H), b2 (D_out)];
// state: none for sgd, 4 momentum buffers, or Adam's 4 first then 4 second moments. One dtype and
// device throughout, and contiguous parameters, gradients and state (the kernels index them flat).
inline void check_step_args(const at::Tensor& x, const at::Tensor& y, at::TensorList params, at::TensorList grads,
                     at::TensorList state, const std::string& optimizer) {
  TORCH_CHECK(params.size() == 4 && grads.size() == 4,
              "two_layer_step: params and grads are [w1, b1, w2, b2], got ", params.size(), " and ", grads.size());
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0),
              "two_layer_step: x (N, D_in) and y (N, D_out) must be 2-D with the same N; got ", x.sizes(), " and ",
              y.sizes());
  const int64_t d_in = x.size(1), d_out = y.size(1), h = params[0].size(0);
  const std::vector<std::vector<int64_t>> shapes = {{h, d_in}, {h}, {d_out, h}, {d_out}};
  const char* names[] = {"w1", "b1", "w2", "b2"};
  for (size_t i = 0; i < 4; ++i) {
    TORCH_CHECK(params[i].sizes() == at::IntArrayRef(shapes[i]), "two_layer_step: ", names[i], " has shape ",
                params[i].sizes(), ", expected ", at::IntArrayRef(shapes[i]));
    TORCH_CHECK(grads[i].sizes() == params[i].sizes(), "two_layer_step: the gradient of ", names[i], " has shape ",
                grads[i].sizes(), ", expected ", params[i].sizes());
  }
  const size_t want_state = optimizer == "sgd" ? 0 : optimizer == "momentum" ? 4 : optimizer == "adam" ? 8 : 99;
  TORCH_CHECK(want_state != 99, "two_layer_step: optimizer must be 'sgd', 'momentum' or 'adam', got '", optimizer, "'");
  TORCH_CHECK(state.size() == want_state, "two_layer_step: optimizer '", optimizer, "' keeps ", want_state,
              " state tensors, got ", state.size());
  for (size_t i = 0; i < state.size(); ++i)
    TORCH_CHECK(state[i].sizes() == params[i % 4].sizes(), "two_layer_step: state tensor ", i, " has shape ",
                state[i].sizes(), ", expected ", params[i % 4].sizes());
  std::vector<at::Tensor> all = {x, y};
  for (auto lists : {params, grads, state})
    for (const auto& t : lists) all.push_back(t);
  for (const auto& t : all) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "two_layer_step: every tensor must have x's dtype ",
                x.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "two_layer_step: every tensor must be on x's device ", x.device(),
                ", got ", t.device());
  }
  for (auto lists : {params, grads, state})
    for (const auto& t : lists) TORCH_CHECK(t.is_contiguous(), "two_layer_step: parameters, gradients and state must be contiguous");
}

// A single step's Adam count: torch.optim's bias correction divides by 1 - beta^step.
inline void check_adam_step(const std::string& optimizer, int64_t step, bool update) {
  TORCH_CHECK(!update || optimizer != "adam" || step >= 1, "two_layer_step: Adam's step count starts at 1, got ", step);
}

inline void check_train_args(int64_t calls_done, int64_t steps, int64_t accumulation_steps) {
  TORCH_CHECK(steps >= 0 && calls_done >= 0, "two_layer_train: steps and calls_done must be >= 0, got ", steps, " and ",
              calls_done);
  TORCH_CHECK(accumulation_steps >= 1, "two_layer_train: accumulation_steps must be >= 1, got ", accumulation_steps);
}

}  // namespace twolayer_ops
