"""Compiling a kernel for a GPU that is not there (tests and evidence): triton.compile with an
explicit GPUTarget, as in triton 3.6 and 3.8. The result holds .asm (ttgir, ptx, cubin) and
.metadata.shared, so a CPU machine can check what a config becomes on an H100."""
import torch
import triton

TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
DIVISIBLE_BY_16 = [["tt.divisibility", 16]]


def compile_for(kernel, config, dtype, capability=90, descriptors=None, ints=None, **constexprs):
    """Compiles the autotuned `kernel` under `config` for an sm_<capability> GPU.

    descriptors: tensor-descriptor parameters -> their block shapes. The other *_ptr parameters point
    to dtype and, like torch's allocations, are 16-byte aligned. ints: integer parameters -> the value
    of a real call, specialized as the JIT would (1 becomes a constant, a multiple of 16 is marked so);
    integers not given are plain i32. constexprs: the kernel's constexprs that the config does not set."""
    from triton.backends.compiler import GPUTarget

    ty = TRITON_TYPES[dtype]
    descriptors, ints = descriptors or {}, ints or {}
    signature, attrs, constants = {}, {}, {**constexprs, **config.kwargs}
    for i, p in enumerate(kernel.fn.params):
        value = ints.get(p.name)
        if p.is_constexpr or value == 1:
            signature[p.name] = "constexpr"
            if value == 1:
                constants[p.name] = 1
        elif p.name in descriptors:
            rows, cols = descriptors[p.name]
            signature[p.name] = f"tensordesc<{ty}[{rows}, {cols}]>"
        elif p.name.endswith("_ptr"):
            signature[p.name] = f"*{ty}"
            attrs[(i,)] = DIVISIBLE_BY_16
        else:
            signature[p.name] = "i32"
            if value is not None and value % 16 == 0:
                attrs[(i,)] = DIVISIBLE_BY_16
    source = triton.compiler.ASTSource(kernel.fn, signature, constants, attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
