"""Argument checks of the ops, shared by the Python front end and every backend: clear, typed
errors for bad shapes, dtypes and devices."""
import torch


def check_tensor(op, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


# The dtypes torch.autocast casts (float64 it leaves alone).
AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def autocast_casts(t):
    """Whether torch.autocast, on for t's device, will cast t for the op (as for F.linear)."""
    if t.dtype not in AUTOCAST_DTYPES:
        return False
    try:
        return torch.is_autocast_enabled(t.device.type)
    except RuntimeError:  # a device type autocast does not know, such as meta
        return False


def same_dtype(t, x):
    """t's dtype agrees with x's as F.linear sees them: equal, or both cast to one by autocast (the
    second layer of an autocast net gets a 16-bit x and keeps float32 parameters)."""
    return t.dtype is x.dtype or (t.dtype in AUTOCAST_DTYPES and autocast_casts(x))


def args_ok(x, weight, bias):
    """The common, valid case, decided by one cheap test: x (..., K), weight (N, K), bias (N,) or None."""
    try:
        return (
            same_dtype(weight, x)
            and x.is_floating_point()
            and weight.dim() == 2
            and x.dim() >= 1
            and x.shape[-1] == weight.shape[1]
            and x.device == weight.device
            and (bias is None or (same_dtype(bias, x) and bias.shape == weight.shape[:1] and bias.device == x.device))
        )
    except AttributeError:
        return False  # not a tensor: explained by explain_bad_args


def check_linear_relu_args(x, weight, bias):
    """Clear errors for bad shapes, dtypes and devices, the same for every backend. Only a failure
    of the cheap test looks closer, to say what is wrong."""
    if not args_ok(x, weight, bias):
        explain_bad_args(x, weight, bias, other_forms=False)


def explain_bad_args(x, weight, bias, *, other_forms):
    """Raises the error that says what is wrong; other_forms: F.linear's other forms are valid."""
    named = [("x", x), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    for name, t in named:
        check_tensor("linear_relu", name, t)
        if t.layout is not torch.strided or t.is_nested:  # (linear_relu sends a sparse or nested x elsewhere)
            raise TypeError(f"linear_relu: {name} must be a dense tensor, got a {layout_name(t)} one")
    if x.dim() < 1:
        raise ValueError("linear_relu: x must have at least 1 dimension (..., in_features), got a 0-d tensor")
    if weight.dim() not in ((1, 2) if other_forms else (2,)):
        forms = "(out_features, in_features)" + (" or (in_features,)" if other_forms else "")
        raise ValueError(f"linear_relu: weight must be {forms}, got shape {tuple(weight.shape)}")
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"linear_relu: x's last dimension ({x.shape[-1]}) must equal weight.shape[-1] ({weight.shape[-1]}); "
            f"x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if bias is not None and (feature_bias(x, weight, bias) is None if other_forms else bias.shape != weight.shape[:1]):
        n = weight.shape[0] if weight.dim() == 2 else 1
        forms = f"one value per output feature: ({n},), () or (1, ..., {n})" if other_forms else f"shape ({n},)"
        shapes = f"got {tuple(bias.shape)} for weight {tuple(weight.shape)}"
        raise ValueError(f"linear_relu: bias must have {forms}; {shapes}")
    for name, t in named[1:]:
        if not same_dtype(t, x):
            raise TypeError(f"linear_relu: {name} dtype {t.dtype} differs from x dtype {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"linear_relu: {name} is on {t.device} but x is on {x.device}")
    raise AssertionError("linear_relu rejected arguments that explain_bad_args accepts")


def feature_bias(x, weight, bias):
    """bias as the kernels' (N,) vector (a view), where F.linear broadcasts it as one value per
    output feature: (N,), (), (1,) or (1, ..., 1 or N), with no more dimensions than the output, and
    (1, N) for a 1-D x, whose output F.linear keeps 1-D. None for any other shape (a bias that varies
    over rows cannot go in the fused epilogue)."""
    features = weight.shape[0] if weight.dim() == 2 else 1
    out_dim = x.dim() if weight.dim() == 2 else x.dim() - 1
    last = bias.shape[-1] if bias.dim() else 1
    if x.dim() == 1 and weight.dim() == 2 and tuple(bias.shape) == (1, features):
        return bias.reshape(features)
    if bias.dim() > out_dim or last not in (1, features) or any(d != 1 for d in bias.shape[:-1]):
        return None
    return bias.reshape(last).expand(features)


def layout_name(t):
    """"sparse_coo", "sparse_csr", ..., "strided-layout nested", "jagged nested" or "strided"."""
    if t.is_nested:
        return f"{str(t.layout).removeprefix('torch.')}{'-layout' if t.layout is torch.strided else ''} nested"
    return str(t.layout).removeprefix("torch.")
