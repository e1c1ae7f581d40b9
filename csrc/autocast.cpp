// Autocast for the fused forward ops, as for F.linear: under torch.autocast, x, weight and bias are
// cast to the autocast dtype (float64 and other devices' tensors stay as they are), then the op
// runs. relu and the backward ops, like torch.relu and the backward, run in their inputs' dtype.
#include <ATen/autocast_mode.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/relu.h>
#include <torch/library.h>

#include "op_handles.h"

namespace twolayer_ops {
namespace {

template <class O, c10::DeviceType Device>
at::Tensor linear_relu_autocast(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(Device));
  const at::ScalarType to = at::autocast::get_lower_precision_fp_from_device_type(Device);
  const at::Tensor xc = at::autocast::cached_cast(to, x, Device), wc = at::autocast::cached_cast(to, weight, Device);
  const std::optional<at::Tensor> bc = at::autocast::cached_cast(to, bias, Device);
  // The CPU kernels run float32 and float64 only: there a 16-bit autocast runs F.linear's own ops,
  // as backend "auto" does for 16-bit tensors on the CPU.
  if (Device == c10::DeviceType::CPU && xc.scalar_type() != at::kFloat && xc.scalar_type() != at::kDouble) {
    return at::relu(at::linear(xc, wc, bc));
  }
  return O::linear_relu().call(xc, wc, bc);
}

}  // namespace

TORCH_LIBRARY_IMPL(twolayer_ops, AutocastCPU, m) {
  m.impl("linear_relu", &linear_relu_autocast<Ops<kNative>, c10::DeviceType::CPU>);
  m.impl("linear_relu_triton", &linear_relu_autocast<Ops<kTriton>, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(twolayer_ops, AutocastCUDA, m) {
  m.impl("linear_relu", &linear_relu_autocast<Ops<kNative>, c10::DeviceType::CUDA>);
  m.impl("linear_relu_triton", &linear_relu_autocast<Ops<kTriton>, c10::DeviceType::CUDA>);
}

}  // namespace twolayer_ops
