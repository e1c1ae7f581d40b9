"""The built CUDA kernels are what they were written to be, read from their machine code (cuobjdump,
which ships inside the triton package): no GPU needed, so CI checks it on every build."""
import re
import shutil

import pytest

from benchmarks import machine_code
from twolayer_ops import ops

pytestmark = [
    pytest.mark.skipif(not ops.HAS_CUDA_KERNELS, reason="extension built without CUDA"),
    pytest.mark.skipif(machine_code.find_cuobjdump() is None, reason="no cuobjdump (PATH, CUDA_HOME or triton)"),
]


@pytest.fixture(scope="module")
def sm90a():
    kernels = [k for k in machine_code.read_kernels() if k.arch == "sm_90a"]
    if not kernels:
        pytest.skip("no sm_90a cubin in this build (TORCH_CUDA_ARCH_LIST names no 9.0 arch)")
    return kernels


def named(kernels, prefix):
    found = [k for k in kernels if k.name.startswith(prefix)]
    assert found, f"no {prefix} kernel in the sm_90a cubin: {sorted({k.name for k in kernels})}"
    return found


def simt_gemms(kernels):
    """The portable SIMT GEMMs: one product per launch (gemm_kernel), or dX and dW in one (grads_kernel)."""
    return [k for dtype in ("float", "double") for prefix in (f"gemm_kernel<{dtype},", f"grads_kernel<{dtype},")
            for k in named(kernels, prefix)]


def test_hopper_gemm_is_wgmma_fed_by_tma_with_warp_specialization(sm90a):
    for k in named(sm90a, "sm90_gemm_kernel<") + named(sm90a, "sm90_gemm_pair_kernel<"):
        assert k.ops["HGMMA"] > 0, f"{k.name}: no HGMMA (wgmma), so no Hopper tensor-core path"
        assert k.ops["UTMALDG"] > 0, f"{k.name}: no UTMALDG, so its tiles are not loaded by TMA"
        assert k.ops["UTMASTG"] > 0, f"{k.name}: no UTMASTG, so it has no TMA-store epilogue"
        assert k.ops["USETMAXREG"] >= 2, f"{k.name}: producer and consumers do not split the registers"
        assert k.ops["HMMA"] == 0, f"{k.name}: has mma.sync (HMMA) besides wgmma"
        assert k.register_fed_wgmma == 0, f"{k.name}: a wgmma reads its A operand from registers"


def mask_writers(kernels):
    """The sm90 GEMMs that carry the overlapped mask's writers: the 16-bit (element types 0, 1) backward
    products (no ReLU) run alone, not the merged pair kernel."""
    backward_16bit = re.compile(r"sm90_gemm_kernel<[01], \d, \d, false,")
    return [k for k in named(kernels, "sm90_gemm_kernel<") if backward_16bit.match(k.name)]


def test_hopper_backward_gemms_carry_the_overlapped_masks_writers(sm90a):
    """TWOLAYER_OPS_SM90_OVERLAP_MASK: the 16-bit backward GEMMs' spare producer warps take chunks from a
    counter (ATOMG), prefetch their rows into L2 (UBLKPF), read g and out in streaming 16-byte loads
    (LDG.E.EF.128), fence their Gm stores for the async proxy (FENCE.VIEW.ASYNC.G, also in the producer
    thread after it acquires a chunk) and count the chunks written (REDG). No other sm90 kernel has any of
    it: the forwards, TF32 and the merged pair kernel keep the pass."""
    writers = mask_writers(sm90a)
    assert len(writers) == 8, sorted(k.name for k in writers)  # float16 / bfloat16, dX / dW, 1 or 2 blocks
    for k in named(sm90a, "sm90_gemm_kernel<") + named(sm90a, "sm90_gemm_pair_kernel<"):
        ours = (k.ops["ATOMG"], k.ops["UBLKPF"], k.mnemonics["LDG.E.EF.128"], k.ops["REDG"],
                k.mnemonics["FENCE.VIEW.ASYNC.G"])
        if k in writers:
            assert min(ours) > 0 and k.mnemonics["FENCE.VIEW.ASYNC.G"] >= 3, (k.name, ours)
        else:
            assert ours == (0, 0, 0, 0, 0), (k.name, ours)


def test_overlapped_mask_writers_stay_within_the_producers_registers(sm90a):
    """The writers run after setmaxnreg.dec to 40 (kProducerRegs): a register past R39 there would hold
    garbage. Their loop (from the first chunk counter, prefetch or count instruction to the last) names
    none, and holds no tensor-core code."""
    for k in mask_writers(sm90a):
        marks = [i for i, ins in enumerate(k.code) if ins.opcode in ("ATOMG", "UBLKPF", "REDG")]
        loop = k.code[min(marks):max(marks) + 1]
        assert len(loop) > 50 and not any(ins.opcode == "HGMMA" for ins in loop), (k.name, len(loop))
        top = max(int(r) for ins in loop for r in re.findall(r"\bR(\d+)\b", ins.operands))
        assert top < 40, f"{k.name}: the writers use R{top}"


def test_hopper_gemm_clusters_share_b_by_multicast(sm90a):
    """The two-block cluster instantiations (last template argument 2) load B by TMA multicast; the
    others never do. Their consumers hand stages back to both blocks with CTA-scope arrivals: their one
    MEMBAR.ALL.GPU is the release before the blocks leave, none is in a K-step. The same for the kernels
    that run two products (sm90_gemm_pair_kernel, the merged backward). The one-product kernels have one
    more, stream-K's release of a partial sum (fence.acq_rel.gpu before its flag), and the 16-bit backward
    ones one more, the overlapped mask's writers' release of a chunk (fence.acq_rel.gpu before its flag
    and its count)."""
    gemms = named(sm90a, "sm90_gemm_kernel<") + named(sm90a, "sm90_gemm_pair_kernel<")
    clustered = [k for k in gemms if k.name.endswith(", 2>")]
    assert len(clustered) == len(gemms) // 2, sorted(k.name for k in gemms)
    for k in gemms:
        multicast = k.mnemonics["UTMALDG.2D.MULTICAST"]
        assert (multicast > 0) == (k in clustered), (k.name, multicast)
        want = (k in clustered) + k.name.startswith("sm90_gemm_kernel<") + (k in mask_writers(sm90a))
        assert k.mnemonics["MEMBAR.ALL.GPU"] == want, (k.name, k.mnemonics["MEMBAR.ALL.GPU"])
        assert k.hot_loop_ops["MEMBAR"] == 0, k.name


def test_hopper_tf32_gemms_run_tf32_wgmma(sm90a):
    """The float32 instantiations of the Hopper GEMM (element type 2: the forward with bias + ReLU, and the
    backward's plain product), both K-major, issue TF32 wgmma and store float pairs; the 16-bit ones
    issue f16/bf16 wgmma, all of the one 64x256 shape."""
    tf32 = named(sm90a, "sm90_gemm_kernel<2,")
    assert sorted(k.name for k in tf32) == [f"sm90_gemm_kernel<2, 0, 0, {relu}, {cl}>" for relu in ("false", "true")
                                            for cl in (1, 2)]
    for k in tf32:
        hgmma = {m for m in k.mnemonics if m.startswith("HGMMA")}
        assert hgmma == {"HGMMA.64x256x8.F32.TF32"}, (k.name, hgmma)
        assert k.mnemonics["STG.E.64"] > 0, f"{k.name}: no 8-byte stores of float pairs"
    # Element type 0 is float16 (ptxas names no input type for it), 1 bfloat16; nothing else, such as
    # the filler HGMMA.64x8x16 ptxas adds for a commit group that may hold no wgmma.
    for dt, want in (("0", "HGMMA.64x256x16.F32"), ("1", "HGMMA.64x256x16.F32.BF16")):
        for k in named(sm90a, f"sm90_gemm_kernel<{dt},"):
            hgmma = {m for m in k.mnemonics if m.startswith("HGMMA")}
            assert hgmma == {want}, (k.name, hgmma)


def test_hopper_16bit_gemms_have_the_wide_store_epilogue(sm90a):
    """The float16 / bfloat16 Hopper GEMMs can store C in 16-byte stores (TWOLAYER_OPS_SM90_WIDE_STORES):
    per consumer thread and tile, 16 of them after 16 quad transposes of 4 butterfly shuffles each, 1 to 3
    lanes apart (counted in multiples of 64: ptxas may keep a copy for a warp that reaches them diverged).
    TF32 has no such path."""
    quad = re.compile(r", 0x[123], 0x1f")  # a butterfly within the quad (the overlapped mask's are 8 and 16 apart)
    for k in named(sm90a, "sm90_gemm_kernel<0,") + named(sm90a, "sm90_gemm_kernel<1,"):
        assert k.mnemonics["STG.E.128"] >= 16, (k.name, k.mnemonics["STG.E.128"])
        shuffles = sum(1 for ins in k.code
                       if ins.opcode == "SHFL" and ".BFLY" in ins.suffix and quad.search(ins.operands))
        assert shuffles >= 64 and shuffles % 64 == 0, (k.name, shuffles)
    for k in named(sm90a, "sm90_gemm_kernel<2,"):
        assert k.mnemonics["STG.E.128"] == 0 and k.ops["SHFL"] == 0, k.name


def test_hopper_gemm_loads_a_tiles_bias_in_pairs(sm90a):
    """The epilogue's bias (TileBias): where it is contiguous, each consumer thread loads its 32 column
    pairs of a tile in 32 loads, a 4-byte word of two 16-bit values or 8 bytes of two floats. Every
    global load of a consumer comes before its wait for the tile's last wgmma batch (wait_group 0), so
    no load latency falls between that wait and the stores; but stream-K's reads of other blocks' flags
    and partial sums, coherent loads (.STRONG.GPU) that can only follow the block's own products."""
    for dt, pair_load in (("0", "LDG.E"), ("1", "LDG.E"), ("2", "LDG.E.64")):
        for k in named(sm90a, f"sm90_gemm_kernel<{dt},"):
            assert k.mnemonics[pair_load] >= 32, (k.name, k.mnemonics[pair_load])
    for k in named(sm90a, "sm90_gemm_kernel<") + named(sm90a, "sm90_gemm_pair_kernel<"):
        waited, late = False, []
        for ins in k.code:
            if ins.opcode == "WARPGROUP" and ins.suffix.startswith(".DEPBAR") and \
                    ins.operands.strip().startswith("gsb0, 0x0"):
                waited = True
            elif ins.opcode in ("HGMMA", "USETMAXREG"):  # (the producers' code follows the consumers')
                waited = False
            elif ins.opcode == "LDG" and waited and ".STRONG.GPU" not in ins.suffix:
                late.append(hex(ins.address))
        assert not late, f"{k.name}: global loads after the last wgmma wait at {late[:8]}"


def test_vector_shared_accesses_at_constant_offsets_are_aligned(sm90a):
    """An 8- or 16-byte LDS/STS faults unless its address is a multiple of its width. ptxas only merges
    accesses it knows to be aligned, but inline PTX vectors are taken as written: stream-K's work list
    was once stored with st.shared.v2 at offsets of 4 mod 8 (STS.64 [UR8+0x38044]). Checked wherever the
    offset is a constant added to a register, the base being aligned (as the shared window's is)."""
    width = re.compile(r"\.(64|128)\b")
    offset = re.compile(r"\[[^\]]*\+(0x[0-9a-f]+)\]")
    bad, checked = [], 0
    for k in sm90a:
        for ins in k.code:
            w, off = width.search(ins.suffix), offset.search(ins.operands)
            if ins.opcode in ("LDS", "STS") and w and off:
                checked += 1
                if int(off.group(1), 16) % (int(w.group(1)) // 8):
                    bad.append(f"{k.name}: {ins.opcode}{ins.suffix} {ins.operands.split(';')[0].strip()}")
    assert checked > 0, "no vector shared-memory access at a constant offset: the pattern no longer matches the SASS"
    assert not bad, bad[:8]


def test_portable_forward_and_dx_prefetch_small_grids_into_l2(sm90a):
    """plan_prefetch's hint (prefetch.L2: CCTL in the SASS) is in every portable GEMM that runs a forward
    or dX (MODE 0, 1; grads_kernel runs dX) and in no dW kernel (MODE 2), whose float32 k-loop it made spill."""
    portable = [k for k in sm90a if re.match(r"(gemm|grads)_kernel<", k.name)]
    with_dx = [k for k in portable if re.match(r"gemm_kernel<\w+, [01],|grads_kernel<", k.name)]
    assert with_dx and all(k.ops["CCTL"] > 0 for k in with_dx), {k.name: k.ops["CCTL"] for k in with_dx}
    dw = [k for k in portable if k not in with_dx]
    assert dw and all(k.ops["CCTL"] == 0 for k in dw), {k.name: k.ops["CCTL"] for k in dw}


def test_no_local_memory_in_the_hopper_simt_and_fused_step_kernels(sm90a):
    """No spills: nothing in local memory, no LDL/STL (the ptxas report's '0 bytes spill' from the binary).
    The SIMT GEMMs fit since their tile loader keeps one offset per chunk instead of recomputing addresses."""
    checked = named(sm90a, "sm90_") + named(sm90a, "fused_two_layer_kernel<") + simt_gemms(sm90a)
    bad = [f"{k.name}: {k.stack} B stack, {k.local} B local, {k.local_traffic} LDL/STL" for k in checked
           if k.stack or k.local or k.local_traffic]
    assert not bad, bad


def test_no_kernel_spills_in_its_math_loops(sm90a):
    """Every kernel, the portable 16-bit WMMA GEMMs included: no LDL/STL in the innermost loops that do
    the math."""
    bad = [f"{k.name}: {k.hot_loop_local_traffic}" for k in sm90a if k.hot_loop_local_traffic]
    assert not bad, bad


def test_float32_kernels_never_use_tf32_tensor_cores(sm90a):
    """The portable float32 GEMMs and the fused step are SIMT FFMA: IEEE float32, never TF32."""
    for k in named(sm90a, "gemm_kernel<float,") + named(sm90a, "grads_kernel<float,") + \
            named(sm90a, "fused_two_layer_kernel<float,"):
        assert k.ops["FFMA"] > 0 and k.ops["HMMA"] == 0 and k.ops["HGMMA"] == 0, (k.name, k.ops)


def test_simt_kernels_fit_two_blocks_per_sm(sm90a):
    """kMinBlocksPerSm: 128 registers or fewer for 256 threads, so two blocks share an SM (the
    k-loop spill check above keeps that from costing spills where it matters). Not the 128-thread
    tiles (float32's kWideThreadTiles, the last template argument 2): two of their blocks fit any count
    up to the 255 a thread can have, and that check covers their k-loops."""
    for k in simt_gemms(sm90a):
        wide = k.name.startswith(("gemm_kernel<float,", "grads_kernel<float,")) and k.name.endswith(", 2>")
        assert wide or k.regs <= 128, f"{k.name}: {k.regs} registers"


def test_simt_float32_forward_k_loop_is_mostly_ffma(sm90a):
    """One K-tile of the float32 forward's k-loop, K-contiguous x and W: 8 k steps of an 8x8 outer
    product (64 FFMA) from 4 vector shared-memory reads each, the next K-tile's vector loads and
    transposing stores, one barrier; at least 80% of its issue slots FFMA (83.8% with nvcc 13.0; 81.3%
    before 2026-11-28: the tile loader's offsets and K-tile test moved out of the loop). In the
    128-thread tiles, 8 k steps of an 8x16 outer product from 6 reads each: at least 86% (87.6%)."""
    for name, (ffma, lds, share) in {"gemm_kernel<float, 0, 0>": (512, 32, 0.8),
                                     "gemm_kernel<float, 0, 2>": (1024, 48, 0.86)}.items():
        (k,) = named(sm90a, name)
        trip = k.loop_trip()
        assert (trip["FFMA"], trip["LDS"], trip["BAR"]) == (ffma, lds, 1), (name, trip)
        assert trip["FFMA"] >= share * sum(trip.values()), f"{name}: {trip['FFMA']} FFMA of {sum(trip.values())}: {trip}"


def test_loop_trip_follows_the_vector_path_of_the_busiest_loop():
    """loop_trip on hand-made SASS: a setup loop without math is ignored; in the k-loop the guarded
    branch to the scalar-load fallback is not taken, the vector load is."""
    lines = """
        /*0000*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0010*/               @P0 BRA 0x0 ;
        /*0020*/               @P1 BRA 0x60 ;
        /*0030*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0040*/                   FFMA R8, R4, R5, R8 ;
        /*0050*/                   BRA 0x80 ;
        /*0060*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0070*/                   LDG.E R5, desc[UR4][R2.64+0x4] ;
        /*0080*/                   FFMA R9, R4, R5, R9 ;
        /*0090*/               @P2 BRA 0x20 ;
        /*00a0*/                   EXIT ;"""
    kernel = machine_code.Kernel("k", "k", "sm_90a")
    for line in lines.strip().splitlines():
        address, guard, opcode, suffix, operands = machine_code._INSTRUCTION.match(line).groups()
        kernel.code.append(machine_code.Instruction(int(address, 16), opcode, suffix or "", operands, guard is not None))
    machine_code._count_hot_loops(kernel)
    assert kernel.hot_loops == [(0x20, 0x90)]
    assert kernel.loop_trip() == {"BRA": 3, "LDG": 1, "FFMA": 2}


def test_half_precision_kernels_use_tensor_cores(sm90a):
    for k in named(sm90a, "gemm_kernel<Half,") + named(sm90a, "gemm_kernel<BFloat16,") + \
            named(sm90a, "grads_kernel<Half,") + named(sm90a, "grads_kernel<BFloat16,"):
        assert k.ops["HMMA"] > 0, f"{k.name}: no HMMA, so WMMA did not reach the tensor cores"


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="no c++filt: names stay mangled")
def test_short_names_drop_namespaces_and_parameters():
    mangled = ("_ZN12twolayer_ops4sm9052_GLOBAL__N__83cf05b4_19_linear_relu_sm90_cu_4be4ac6716sm90_gemm_kernel"
               "ILb1ELi0ELi1ELb0EEEv14CUtensorMap_stS3_NS1_8GemmArgsE")
    assert machine_code.short_names([mangled]) == {mangled: "sm90_gemm_kernel<true, 0, 1, false>"}
