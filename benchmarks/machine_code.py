"""The built CUDA kernels as machine code, read from the extension with cuobjdump: no GPU needed.

    python -m benchmarks.machine_code [--so PATH] [--kernels REGEX] [--arch sm_90a]

One row per kernel and arch: registers, stack and local memory (spills live there), the counts of
the instructions that show a kernel runs the way it was written: HGMMA (wgmma), HMMA (mma.sync, WMMA),
UTMALDG (TMA loads), USETMAXREG (warp specialization's register split), LDL/STL (local memory traffic),
and for SIMT kernels one steady-state trip through the k-loop: instructions, and the FMAs' share of
them (Kernel.loop_trip: every instruction takes an FMA's issue slot, so that share bounds the speed).
cuobjdump is taken from PATH, then CUDA_HOME, then the copy that ships inside the triton package.
"""
import argparse
import collections
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile

COUNTED = ("HGMMA", "HMMA", "UTMALDG", "USETMAXREG", "FFMA", "DFMA", "LDL", "STL")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Za-z0-9_.]+)?(.*)")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_REGISTER_A = re.compile(r"\sR\d+, R\d+, gdesc")  # HGMMA ... D, A, B: A a register, not in the gdesc
_TARGET = re.compile(r"0x([0-9a-f]+)")


class Instruction(collections.namedtuple("Instruction", "address opcode suffix operands guarded")):
    """One SASS instruction: opcode (FFMA), suffix (.E.128 or ""), operands, guarded by a predicate."""

    @property
    def branch_target(self):
        """Where a BRA goes (None for other instructions); it may also fall through when guarded or
        when it names a predicate operand (BRA P0, 0x...)."""
        target = _TARGET.search(self.operands) if self.opcode == "BRA" else None
        return int(target.group(1), 16) if target else None

    @property
    def conditional(self):
        return self.guarded or re.match(r"\s*!?U?P[T0-9]+,", self.operands) is not None


@dataclasses.dataclass
class Kernel:
    name: str  # demangled, without namespaces and parameters: sm90_gemm_kernel<1, 1, 1, false>
    mangled: str
    arch: str
    regs: int = 0
    stack: int = 0
    local: int = 0
    shared: int = 0
    ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # opcode -> count
    mnemonics: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # with suffixes: HGMMA.64x256x8.F32.TF32
    hot_loop_ops: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # the same, in the math loops
    code: list = dataclasses.field(default_factory=list, repr=False)  # Instructions
    hot_loops: list = dataclasses.field(default_factory=list, repr=False)  # (first, last address) of each

    @property
    def local_traffic(self):
        return self.ops["LDL"] + self.ops["STL"]

    @property
    def register_fed_wgmma(self):
        """HGMMA whose A operand comes from registers rather than from shared memory."""
        return sum(1 for i in self.code if i.opcode == "HGMMA" and _REGISTER_A.search(i.operands))

    @property
    def hot_loop_local_traffic(self):
        """LDL/STL in the innermost loops that do the math: spills paid on every step, not once per tile."""
        return self.hot_loop_ops["LDL"] + self.hot_loop_ops["STL"]

    def loop_trip(self):
        """Opcode counts of one trip through the innermost math loop with the most math, along the
        steady-state path of a whole tile: every math instruction of the loop, vector global loads where
        it has scalar ones beside them, the most shared-memory stores (a SIMT GEMM's k-loop stores the
        next K-tile, one element at a time where it transposes, as for K-contiguous x and W), and
        otherwise the fewest instructions. In a SIMT kernel every instruction takes an FMA's issue slot,
        so the FMAs' share of the trip bounds the loop's speed. None without a math loop."""
        if not self.hot_loops:
            return None
        index = {i.address: n for n, i in enumerate(self.code)}

        def math_count(span):
            return sum(i.opcode in MATH for i in self.code if span[0] <= i.address <= span[1])

        lo, hi = (index[a] for a in max(self.hot_loops, key=math_count))

        def score(i):
            vector = i.opcode == "LDG" and ".128" in i.suffix  # the kernels' vectors are 16 bytes
            scalar = i.opcode == "LDG" and not vector
            return (int(i.opcode in MATH), int(vector) - int(scalar), int(i.opcode == "STS"), -1)

        best = {hi: (score(self.code[hi]), (hi,))}  # index -> (summed score, path to the loop's end)
        for n in range(hi - 1, lo - 1, -1):
            i = self.code[n]
            if i.opcode in ("EXIT", "RET"):
                continue
            target = i.branch_target
            nexts = [n + 1] if target is None or i.conditional else []
            if target is not None:
                nexts.append(index.get(target, -1))
            paths = [best[m] for m in nexts if n < m <= hi and m in best]
            if paths:
                total, path = max(paths, key=lambda p: p[0])
                best[n] = (tuple(a + b for a, b in zip(total, score(i))), (n,) + path)
        return collections.Counter(self.code[n].opcode for n in best[lo][1]) if lo in best else None


MATH = ("HGMMA", "HMMA", "FFMA", "DFMA", "DMMA")


def _count_hot_loops(kernel):
    """Fills hot_loop_ops: the instructions of the innermost loops that do the math (a loop is the
    span from a backward branch's target to the branch)."""
    spans = []
    for i in kernel.code:
        target = i.branch_target
        if target is not None and target <= i.address:
            spans.append((target, i.address))

    def math_in(lo, hi):
        return any(lo <= i.address <= hi and i.opcode in MATH for i in kernel.code)

    math_spans = [s for s in spans if math_in(*s)]
    hot = [(lo, hi) for lo, hi in math_spans
           if not any((lo, hi) != (l2, h2) and lo <= l2 and h2 <= hi for l2, h2 in math_spans)]
    kernel.hot_loops = hot
    for i in kernel.code:
        if any(lo <= i.address <= hi for lo, hi in hot):
            kernel.hot_loop_ops[i.opcode] += 1


def find_cuobjdump():
    found = shutil.which("cuobjdump")
    home = os.environ.get("CUDA_HOME")
    if not found and home and os.path.exists(os.path.join(home, "bin", "cuobjdump")):
        found = os.path.join(home, "bin", "cuobjdump")
    if not found:
        try:
            import triton
        except ImportError:
            return None
        bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        found = bundled if os.path.exists(bundled) else None
    return found


def extension_path():
    import twolayer_ops._C

    return twolayer_ops._C.__file__


def _by_arch(text, line_re):
    """Yields (arch, mangled function name, line) for each line that follows a 'Function' line."""
    arch = function = None
    for line in text.splitlines():
        header = re.match(r"\s*(arch =|code for) (sm_\w+)", line)
        # cuobjdump 12.8 (triton 3.6's) says "code for sm_90" under "arch = sm_90a": keep the full name.
        if header and not (header.group(1) == "code for" and (arch or "").startswith(header.group(2))):
            arch = header.group(2)
        found = re.search(r"Function\s*:?\s*([\w$.]+)", line)
        if found:
            function = found.group(1).rstrip(":")
            continue
        if function and line_re.search(line):
            yield arch, function, line


def short_names(mangled):
    """Demangled names (c++filt, where installed) without namespaces, return type and parameters."""
    filt = shutil.which("c++filt")
    names = list(mangled)
    if filt and names:
        names = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=True).stdout.split("\n")
    out = {}
    for m, name in zip(mangled, names):
        name = re.sub(r"^void ", "", name)
        name = re.sub(r"(\(anonymous namespace\)|\w+)::", "", name)
        depth = 0
        for i, ch in enumerate(name):  # drop the parameter list: the first '(' outside template brackets
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                name = name[:i]
                break
        out[m] = name
    return out


def read_kernels(so_path=None, cuobjdump=None):
    """Every kernel of every cubin in the extension (or in a .cubin file), with its resources and
    instruction counts."""
    so_path = so_path or extension_path()
    cuobjdump = cuobjdump or find_cuobjdump()
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (PATH, CUDA_HOME/bin, or the triton package)")

    def dump(flag):
        return subprocess.run([cuobjdump, flag, so_path], capture_output=True, text=True, check=True).stdout

    kernels = {}
    for arch, fn, line in _by_arch(dump("-res-usage"), _RESOURCES):
        regs, stack, shared, local = map(int, _RESOURCES.search(line).groups())
        kernels[arch, fn] = Kernel("", fn, arch, regs, stack, local, shared)
    for arch, fn, line in _by_arch(dump("-sass"), _INSTRUCTION):
        if (arch, fn) not in kernels and (None, fn) in kernels:  # a bare cubin's -res-usage names no arch
            kernels[arch, fn] = dataclasses.replace(kernels.pop((None, fn)), arch=arch)
        kernel = kernels.setdefault((arch, fn), Kernel("", fn, arch))
        address, guard, opcode, suffix, operands = _INSTRUCTION.match(line).groups()
        kernel.ops[opcode] += 1
        kernel.mnemonics[opcode + (suffix or "")] += 1
        kernel.code.append(Instruction(int(address, 16), opcode, suffix or "", operands, guard is not None))
    for kernel in kernels.values():
        _count_hot_loops(kernel)
    names = short_names(sorted({k.mangled for k in kernels.values()}))
    for kernel in kernels.values():
        kernel.name = names[kernel.mangled]
    return sorted(kernels.values(), key=lambda k: (k.arch, k.name))


def read_cubin(cubin, cuobjdump=None):
    """The kernels of a cubin held in memory, such as a Triton kernel's compiled.asm["cubin"]."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return read_kernels(f.name, cuobjdump)


def trip_summary(kernel):
    """'instructions (FMA share)' of a SIMT kernel's loop_trip(); '' for the others, whose tensor-core
    instructions each keep the tensor cores busy for many issue slots."""
    trip = kernel.loop_trip()
    fma = trip and trip["FFMA"] + trip["DFMA"]
    if not fma:
        return ""
    total = sum(trip.values())
    return f"{total} ({fma / total:.0%})"


def table(kernels):
    head = ["kernel", "arch", "regs", "stack B", "local B", *COUNTED, "LDL/STL in math loops", "SIMT k-loop trip (FMA share)"]
    rows = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for k in kernels:
        cells = [k.name, k.arch, k.regs, k.stack, k.local, *(k.ops[o] for o in COUNTED), k.hot_loop_local_traffic, trip_summary(k)]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--so", help="the extension (default: the importable twolayer_ops._C)")
    parser.add_argument("--kernels", default="", help="only kernels whose short name matches this regex")
    parser.add_argument("--arch", default="", help="only this arch, e.g. sm_90a")
    args = parser.parse_args(argv)
    so_path = args.so or extension_path()
    kernels = [k for k in read_kernels(so_path) if re.search(args.kernels, k.name) and args.arch in ("", k.arch)]
    print(f"{so_path}: {len(kernels)} kernels")
    print(table(kernels))
    spilling = [f"{k.name} ({k.arch}: {k.local_traffic} LDL/STL, {k.hot_loop_local_traffic} in math loops, {k.stack} B stack)"
                for k in kernels if k.local_traffic]
    print("local memory traffic (spills or local arrays): " + ("; ".join(spilling) if spilling else "none"))


if __name__ == "__main__":
    main()
