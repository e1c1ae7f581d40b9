// Every schema of the twolayer_ops namespace, declared once, and the CPU kernels.
// CUDA kernels register for the same schemas in cuda/linear_relu.cu, autograd in autograd.cpp,
// fake kernels from Python (twolayer_ops/ops.py).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_gemm.h"
#include "linear_relu.h"

namespace twolayer_ops {
namespace {

void check_cpu_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the native CPU kernels support float32 and float64, got ", t.scalar_type(),
              "; use backend='torch' for this dtype");
}

// ReLU with the reference's NaN rule: NaN <= 0 is false, so NaN passes through.
template <typename T>
inline T relu_keep_nan(T v) {
  return v <= T(0) ? T(0) : v;
}

// The ReLU mask of a gradient: 0 where out <= 0 (NaN passes). Both values arrive loaded, so the
// select compiles branch-free; a branch on a half-zero output mispredicts and costs 15x.
template <typename T>
inline T mask_grad(T out, T grad) {
  return out <= T(0) ? T(0) : grad;
}

// Rows per parallel_for task: enough elements that a task outweighs its scheduling.
int64_t row_grain(int64_t row_len) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, row_len));
}

at::Tensor linear_relu_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias) {
  check_linear_relu_args(x, weight, bias);
  check_cpu_dtype(x, "linear_relu");
  const at::Tensor x2 = as_matrix(x);
  const int64_t M = x2.size(0), N = weight.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  if (out.numel() > 0) {
    const at::Tensor b = has_bias(bias) ? bias->contiguous() : at::Tensor();
    const float* fused_bias = b.defined() && b.scalar_type() == at::kFloat ? b.const_data_ptr<float>() : nullptr;
    if (cpu_gemm::linear(x2, weight, fused_bias, /*relu=*/true, out)) return out.view(linear_out_sizes(x, N));
    at::mm_out(out, x2, weight.t());  // BLAS; K == 0 gives zeros
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_relu_cpu", [&] {
      scalar_t* o = out.data_ptr<scalar_t>();
      const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      // One pass over the output: bias and ReLU together.
      at::parallel_for(0, M, row_grain(N), [&](int64_t begin, int64_t end) {
        for (int64_t m = begin; m < end; ++m) {
          scalar_t* row = o + m * N;
          if (bp) {
            for (int64_t n = 0; n < N; ++n) row[n] = relu_keep_nan(row[n] + bp[n]);
          } else {
            for (int64_t n = 0; n < N; ++n) row[n] = relu_keep_nan(row[n]);
          }
        }
      });
    });
  }
  return out.view(linear_out_sizes(x, N));
}

// grad_out masked by the saved output: the one M x N temporary of the backward.
at::Tensor masked_grad_cpu(const at::Tensor& grad_out, const at::Tensor& out) {
  const at::Tensor g = as_matrix(grad_out), o = as_matrix(out);
  const int64_t M = g.size(0), N = g.size(1);
  at::Tensor gm = at::empty({M, N}, g.options());
  if (gm.numel() == 0) return gm;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "masked_grad_cpu", [&] {
    scalar_t* __restrict__ dst = gm.data_ptr<scalar_t>();
    if (g.is_contiguous() && o.is_contiguous()) {  // the common case: one flat, vectorizable loop
      const scalar_t* __restrict__ gp = g.const_data_ptr<scalar_t>();
      const scalar_t* __restrict__ op = o.const_data_ptr<scalar_t>();
      at::parallel_for(0, M * N, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) dst[i] = mask_grad(op[i], gp[i]);
      });
      return;
    }
    const auto ga = g.accessor<scalar_t, 2>();  // strided: any layout of grad_out
    const auto oa = o.accessor<scalar_t, 2>();
    at::parallel_for(0, M, row_grain(N), [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m)
        for (int64_t n = 0; n < N; ++n) dst[m * N + n] = mask_grad(oa[m][n], ga[m][n]);
    });
  });
  return gm;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
    std::array<bool, 3> output_mask) {
  check_linear_relu_args(x, weight, std::nullopt);
  check_cpu_dtype(x, "linear_relu_backward");
  check_grad_like_out(grad_out, out, "linear_relu_backward");
  TORCH_CHECK(out.sizes() == at::IntArrayRef(linear_out_sizes(x, weight.size(0))),
              "linear_relu_backward: saved output shape ", out.sizes(), " does not match x ",
              x.sizes(), " and weight ", weight.sizes());
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.device() == x.device(),
              "linear_relu_backward: grad_out and out must match x's dtype and device");
  const at::Tensor gm = masked_grad_cpu(grad_out, out);
  const at::Tensor grad_x = output_mask[0] ? cpu_gemm::mm(gm, weight).view(x.sizes()) : unrequested(x);
  const at::Tensor grad_w = output_mask[1] ? cpu_gemm::mm(gm.t(), as_matrix(x)) : unrequested(x);
  const at::Tensor grad_b = output_mask[2] ? gm.sum(0) : unrequested(x);
  return {grad_x, grad_w, grad_b};
}

at::Tensor relu_cpu(const at::Tensor& x) {
  TORCH_CHECK(is_float_dtype(x.scalar_type()), "relu: x must be a floating tensor, got ", x.scalar_type());
  check_cpu_dtype(x, "relu");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_cpu", [&] {
    const scalar_t* src = xc.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) dst[i] = relu_keep_nan(src[i]);
    });
  });
  return out;
}

at::Tensor relu_backward_cpu(const at::Tensor& grad_out, const at::Tensor& out) {
  check_grad_like_out(grad_out, out, "relu_backward");
  check_cpu_dtype(out, "relu_backward");
  const at::Tensor gc = grad_out.contiguous(), oc = out.contiguous();
  at::Tensor grad_x = at::empty(out.sizes(), out.options());
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "relu_backward_cpu", [&] {
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* o = oc.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_x.data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) dst[i] = mask_grad(o[i], g[i]);
    });
  });
  return grad_x;
}

}  // namespace

// One schema per op, shared by every backend: a backend's ops are the same schemas under the op
// name plus the backend's suffix ("" for native, "_triton" for the Triton kernels, which register
// their implementations from Python).
void define_backend_ops(torch::Library& m, const std::string& suffix) {
  m.def(("linear_relu" + suffix + "(Tensor x, Tensor weight, Tensor? bias) -> Tensor").c_str());
  // Unrequested gradients (output_mask False) come back as empty (0,) tensors.
  m.def(("linear_relu_backward" + suffix +
         "(Tensor grad_out, Tensor out, Tensor x, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)")
            .c_str());
  m.def(("relu" + suffix + "(Tensor x) -> Tensor").c_str());
  m.def(("relu_backward" + suffix + "(Tensor grad_out, Tensor out) -> Tensor").c_str());
}

TORCH_LIBRARY(twolayer_ops, m) {
  define_backend_ops(m, "");
  define_backend_ops(m, "_triton");
  // The seed net's whole training step (forward, MSE-sum loss, backward, optimizer update) in one
  // call; returns the loss. Kernels: train_step.cpp (CPU), cuda/train_step.cu (CUDA).
  m.def("two_layer_step(Tensor x, Tensor y, Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state, "
        "str optimizer, float lr, float momentum, float beta1, float beta2, float eps, int step, float loss_scale, "
        "bool update) -> Tensor");
  // `steps` such steps in one call (one launch on CUDA); returns their losses. Call c (counting from
  // calls_done + 1) updates when c % accumulation_steps == 0, Adam's step count being c / accumulation_steps.
  m.def("two_layer_train(Tensor x, Tensor y, Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state, "
        "str optimizer, float lr, float momentum, float beta1, float beta2, float eps, int calls_done, int steps, "
        "int accumulation_steps) -> Tensor");
}

TORCH_LIBRARY_IMPL(twolayer_ops, CPU, m) {
  m.impl("linear_relu", &linear_relu_cpu);
  m.impl("linear_relu_backward", &linear_relu_backward_cpu);
  m.impl("relu", &relu_cpu);
  m.impl("relu_backward", &relu_backward_cpu);
}

}  // namespace twolayer_ops

// An importable module, so that `import twolayer_ops._C` loads the library and runs the registrations.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
