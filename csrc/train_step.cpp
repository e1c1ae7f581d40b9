// The fused training step of the seed's net on the CPU: one call does forward, loss, backward
// and the optimizer update, with no Python between the pieces.
//   h = relu(x W1^T + b1);  y_pred = h W2^T + b2;  loss = sum((y_pred - y)^2)
// Gradients of loss * loss_scale are added to the accumulators in `grads`; when `update` is true
// the optimizer steps every parameter and the accumulators are zeroed. The optimizer formulas are
// torch.optim's (SGD, SGD with momentum and dampening 0, Adam without weight decay or amsgrad; Adam
// runs ATen's fused Adam kernel, the one behind torch.optim.Adam(fused=True)).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "cpu_gemm.h"
#include "train_step.h"

namespace twolayer_ops {
namespace {

constexpr int64_t kGrain = 16384;

// The update loops take restrict pointers, so that the compiler vectorizes them.
template <typename T>
void sgd(T* __restrict__ p, const T* __restrict__ g, int64_t n, T lr) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] -= lr * g[i];
  });
}

// torch.optim.SGD(momentum=m): buf = m * buf + g (the zero-initialized buffer makes step 1 buf = g).
template <typename T>
void momentum_sgd(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf, int64_t n, T lr, T m) {
  at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      buf[i] = m * buf[i] + g[i];
      p[i] -= lr * buf[i];
    }
  });
}

// The float data of t, or null for another dtype (the small-GEMM kernels then decline).
const float* as_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t.const_data_ptr<float>() : nullptr;
}

at::Tensor two_layer_step_cpu(const at::Tensor& x, const at::Tensor& y, at::TensorList params, at::TensorList grads,
                              at::TensorList state, c10::string_view optimizer_view, double lr, double momentum,
                              double beta1, double beta2, double eps, int64_t step, double loss_scale, bool update) {
  const std::string optimizer(optimizer_view);
  check_step_args(x, y, params, grads, state, optimizer);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "two_layer_step: the CPU step supports float32 and float64, got ", x.scalar_type());
  check_adam_step(optimizer, step, update);
  const at::Tensor &w1 = params[0], &b1 = params[1], &w2 = params[2], &b2 = params[3];
  const int64_t n = x.size(0), hidden = w1.size(0), d_out = w2.size(0);
  at::Tensor loss = at::empty({}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "two_layer_step_cpu", [&] {
    using T = scalar_t;
    // Forward: h = relu(x W1^T + b1); y_pred = h W2^T + b2. The small-GEMM kernels fuse the bias
    // (and ReLU); BLAS, where they do not apply, is followed by one pass.
    at::Tensor h = at::empty({n, hidden}, x.options());
    T* hp = h.data_ptr<T>();
    if (!cpu_gemm::linear(x, w1, as_float(b1), /*relu=*/true, h)) {
      at::mm_out(h, x, w1.t());
      const T* b1p = b1.const_data_ptr<T>();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < hidden; ++j) {
          const T v = hp[i * hidden + j] + b1p[j];
          hp[i * hidden + j] = v <= T(0) ? T(0) : v;
        }
    }
    at::Tensor gy = at::empty({n, d_out}, x.options());
    if (!cpu_gemm::linear(h, w2, as_float(b2), /*relu=*/false, gy)) at::addmm_out(gy, b2, h, w2.t());
    // Loss and its gradient in one pass: gy = 2 * scale * (y_pred - y), in place of y_pred.
    const at::Tensor yc = y.contiguous();
    const T* yp = yc.const_data_ptr<T>();
    T* g = gy.data_ptr<T>();
    double total = 0;
    const T two_scale = T(2 * loss_scale);
    for (int64_t i = 0; i < n * d_out; ++i) {
      const T d = g[i] - yp[i];
      total += double(d) * double(d);
      g[i] = two_scale * d;
    }
    loss.fill_(T(total));  // a float32 loss past its range is inf, as in eager (fill_ of the double would throw)
    // Backward: layer 2, then the masked hidden gradient, then layer 1.
    cpu_gemm::addmm_(grads[2], gy.t(), h);
    grads[3].add_(gy.sum(0));
    at::Tensor gh = cpu_gemm::mm(gy, w2);
    T* ghp = gh.data_ptr<T>();
    for (int64_t i = 0; i < n * hidden; ++i) {  // both loaded: a branch-free select
      const T h_i = hp[i], g_i = ghp[i];
      ghp[i] = h_i <= T(0) ? T(0) : g_i;
    }
    cpu_gemm::addmm_(grads[0], gh.t(), x);
    grads[1].add_(gh.sum(0));

    if (update && optimizer == "adam") {
      // torch.optim.Adam(fused=True)'s own CPU kernel: vectorized for the machine's CPU capability.
      const std::vector<at::Tensor> steps(4, at::full({}, double(step), x.options().dtype(at::kFloat)));
      at::_fused_adam_(params, grads, state.slice(0, 4), state.slice(4, 4), /*max_exp_avg_sqs=*/{}, steps, lr, beta1,
                       beta2, /*weight_decay=*/0.0, eps, /*amsgrad=*/false, /*maximize=*/false);
    }
    if (update) {
      for (size_t i = 0; i < 4; ++i) {
        T* p = params[i].data_ptr<T>();
        const T* gr = grads[i].const_data_ptr<T>();
        const int64_t len = params[i].numel();
        if (optimizer == "sgd") {
          sgd(p, gr, len, T(lr));
        } else if (optimizer == "momentum") {
          momentum_sgd(p, gr, state[i].data_ptr<T>(), len, T(lr), T(momentum));
        }
        grads[i].zero_();
      }
    }
  });
  return loss;
}

at::Tensor two_layer_train_cpu(const at::Tensor& x, const at::Tensor& y, at::TensorList params, at::TensorList grads,
                               at::TensorList state, c10::string_view optimizer, double lr, double momentum,
                               double beta1, double beta2, double eps, int64_t calls_done, int64_t steps,
                               int64_t accumulation_steps) {
  check_train_args(calls_done, steps, accumulation_steps);
  at::Tensor losses = at::empty({steps}, x.options());
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t call = calls_done + i + 1;
    losses[i] = two_layer_step_cpu(x, y, params, grads, state, optimizer, lr, momentum, beta1, beta2, eps,
                                   std::max<int64_t>(call / accumulation_steps, 1), 1.0 / double(accumulation_steps),
                                   call % accumulation_steps == 0);
  }
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(twolayer_ops, CPU, m) {
  m.impl("two_layer_step", &two_layer_step_cpu);
  m.impl("two_layer_train", &two_layer_train_cpu);
}

}  // namespace twolayer_ops
