"""Emitter of the int8 MHSA kernel instance (composite ``tvm_tiny.mhsa_s8`` → ``tt_mhsa_s8``).

The descriptor's quantization (``MhsaDescriptor.quant``, an ``ir.quant.MhsaInt8Params``: per-tensor
activation parameters, int8 weights with per-column scales, float biases, as the partitioner read
them) is lowered offline by ``codegen.mhsa_s8_layout.arrange_s8`` to the arrays the C kernel reads
(int8 weights pre-arranged for SXTB16/SMLAD, int32 biases, fixed-point multipliers and shifts, the
softmax lookup table), and by ``scalar_fields_s8`` to the zero points and scalar multipliers. The
numpy golden model ``reference.mhsa_s8.reference_mhsa_s8`` computes exactly the same integers.
"""

from __future__ import annotations

import numpy as np

from tvm_tiny.codegen.instance import entry_call, fixed_point_text, instance_source
from tvm_tiny.codegen.kernel import CONST_ALIGNMENT, GeneratedKernel, kernel_function_name
from tvm_tiny.codegen.mhsa_s8_layout import (
    ACC_ARRAY_FIELDS,
    ARRAY_FIELDS,
    arrange_s8,
    cluster_scratch_bytes_s8,
    scalar_fields_s8,
    scratch_bytes_s8,
)
from tvm_tiny.ir.cformat import (
    CONTINUATION_INDENT,
    c_comment,
    const_array,
    designated,
    real_text,
)
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.mhsa import KernelConfig, stored_params_bytes
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.ir.quant import MhsaInt8Params, QParams
from tvm_tiny.partition.describe import MhsaDescriptor

# tt_mhsa_s8.c, the production kernel, uses the Arm DSP extension when the target has it
# (__ARM_FEATURE_DSP), GAP9's 4-way dot products on RISC-V, and its portable fallback elsewhere;
# tt_mhsa_s8_reference.c (same symbols, plain loops) is the test-only oracle it is checked
# against. Both equal the golden model bit for bit (tests/test_mhsa_s8_kernel.py).
LIBRARY_SOURCES = ("mhsa/tt_mhsa_s8.c",)
CLUSTER_SOURCES = ("mhsa/tt_mhsa_s8_cluster.c", "port/tt_cluster_serial.c")


def _int8_params(desc: MhsaDescriptor) -> MhsaInt8Params:
    """The quantization of an int8 descriptor (CodegenError when it has none)."""
    if desc.quant is None:
        raise CodegenError(f"'{desc.symbol}': int8 MHSA descriptor without quantization")
    return desc.quant


def emit_mhsa_s8(desc: MhsaDescriptor, config: KernelConfig, model: str, config_source: str,
                 cores: int = 1, provenance: Provenance = UNKNOWN) -> GeneratedKernel:
    """C source of one int8 MHSA instance calling ``tt_mhsa_s8``, or on a cluster of ``cores``
    > 1 cores ``tt_mhsa_s8_cluster`` (heads split across cores, then the output rows)."""
    shape = desc.shape
    fn = kernel_function_name(model, desc.symbol)
    params = _int8_params(desc)
    arrays = arrange_s8(params, shape, config)
    scalars = scalar_fields_s8(params, shape, config)
    fields = ARRAY_FIELDS + tuple(ACC_ARRAY_FIELDS)
    unknown = set(arrays) - set(fields)
    if unknown:  # a kernel field this emitter does not know would silently stay NULL
        raise CodegenError(f"'{desc.symbol}': arrange_s8 returned unknown fields {sorted(unknown)}")
    consts = [const_array(f"{fn}_{name}", arrays[name], CONST_ALIGNMENT,
                          _array_comment(name, arrays, params, provenance))
              for name in fields if name in arrays]
    pointers = [(name, f"{fn}_{name}" if name in arrays else "NULL") for name in fields]
    if cores > 1:
        scratch = cluster_scratch_bytes_s8(shape, config, cores)
        call = entry_call(fn, "tt_mhsa_s8_cluster", str(cores))
        library, forks = LIBRARY_SOURCES + CLUSTER_SOURCES, 2
    else:
        scratch = scratch_bytes_s8(shape, config)
        call = entry_call(fn, "tt_mhsa_s8")
        library, forks = LIBRARY_SOURCES, 0
    q = desc.quant
    cores_text = f"heads split across {cores} cluster cores" if cores > 1 else "one core"
    header = provenance.c_comment(
        f"tvm_tiny offloaded int8 MHSA '{desc.symbol}' of model '{model}'.", [
            f"Shape: S={shape.seq} E={shape.embed} H={shape.heads} P={shape.proj} "
            f"E_out={shape.out_features}; int8 in, int8 out (QDQ semantics).",
            f"Kernel config: rows_per_block={config.rows_per_block} fuse_qk="
            f"{int(config.fuse_qk)} (from: {config_source}).",
            f"Quantization (real = scale * (q - zero point)): x {_describe(q.x)}; y "
            f"{_describe(q.y)}; softmax input {_describe(q.scores)}; softmax output "
            f"{_describe(q.probs)}; attention scale {real_text(desc.weights.scale)}.",
            "Fixed point: requant(acc, mult, shift) = (acc * mult + 2^(n-1)) >> n with "
            "n = 31 - shift, i.e. acc times the real multiplier mult * 2^(shift-31), which the "
            "comments give beside each mult/shift.",
            f"Depth-first: one head and one block of score rows at a time ({cores_text}); "
            f"scratch = {scratch} bytes (closed form, tt_mhsa_s8*_get_buffer_size), from the "
            "model arena."])
    source = instance_source(
        header, ("tt_cluster.h", "tt_mhsa_s8.h", "tvm_tiny/tt_runtime.h"), consts, fn, [
            ("tt_mhsa_dims", "dims", designated([
                ("seq", str(shape.seq)), ("embed", str(shape.embed)),
                ("heads", str(shape.heads)), ("proj", str(shape.proj)),
                ("out_features", str(shape.out_features))])),
            ("tt_mhsa_config", "config", designated([
                ("rows_per_block", str(config.rows_per_block)),
                ("fuse_qk", str(int(config.fuse_qk)))])),
            ("tt_mhsa_s8_params", "params",
             designated(pointers) + "\n" + _scalar_fields(scalars))],
        "/* AOT entry: args[0] = x int8 [S][E], outs[0] = y int8 [S][E_out]; scratch from the "
        "arena. */", call)
    return GeneratedKernel(desc.symbol, fn, source, scratch, stored_params_bytes(arrays),
                           library, forks)


def _describe(point: QParams) -> str:
    return f"scale {real_text(point.scale)}, zero point {point.zero_point}"


def _array_comment(name: str, arrays: dict[str, np.ndarray], params: MhsaInt8Params,
                   provenance: Provenance) -> str:
    """The comment above one ``tt_mhsa_s8_params`` array: the real multiplier of every
    mult/shift element, and the ONNX initializer a weight is arranged from."""
    if name.endswith("_mult") and name.replace("_mult", "_shift") in arrays:
        shifts = arrays[name.replace("_mult", "_shift")].reshape(-1)
        reals = [fixed_point_text(m, s) for m, s in zip(arrays[name].reshape(-1), shifts)]
        return f"{name} (with {name.replace('_mult', '_shift')}), real multipliers: " + \
            ", ".join(reals)
    if name.endswith("_shift") and name.replace("_shift", "_mult") in arrays:
        return f"{name}: exponents of {name.replace('_shift', '_mult')} (see there)"
    weight = getattr(params, name, None) if name in ("wq", "wk", "wv", "wo") else None
    if weight is not None and hasattr(weight, "values"):
        return f"{name}, arranged from {provenance.describe_constant(weight.values)}"
    return name


_PROBS_PAIR = ("probs_mult", "probs_shift")


def _scalar_fields(scalars: dict[str, int]) -> str:
    """The scalar fields of ``tt_mhsa_s8_params``, each mult/shift pair under a comment with
    its real value (``probs``: 1/s_probs = probs_mult * 2^-probs_shift, tt_mhsa_s8.h)."""
    lines, done = [], set()
    for name, value in scalars.items():
        if name in done:
            continue
        shift = name.replace("_mult", "_shift")
        if name.endswith("_mult") and shift in scalars:
            if name == _PROBS_PAIR[0]:
                text = f"1/s_probs: {fixed_point_text(value, -int(scalars[shift]), 0)}"
            else:
                text = f"{name[:-5]}: {fixed_point_text(value, scalars[shift])}"
            lines.append(c_comment(text, CONTINUATION_INDENT))
            lines.append(f"    .{name} = {value},")
            lines.append(f"    .{shift} = {scalars[shift]},")
            done.add(shift)
        else:
            lines.append(f"    .{name} = {value},")
    return "\n".join(lines)
