"""int8 linear layers (composite ``tvm_tiny.linear_s8`` → ``tt_linear_s8``).

The partitioner offloads the QDQ chain ``quantize([act](add?(dq(q(matmul(dq(x_q), dq(W_q)))),
b)))`` (``patterns.make_linear_s8_pattern``), reading its quantization into a
:class:`~tvm_tiny.reference.linear_s8.LinearS8Quant`. Here that is lowered
(``reference.linear_s8.lower_linear_s8``, the program the golden model runs) and laid out as the
``tt_linear_s8_params`` of ``kernels/include/tt_linear_s8.h``: the int8 weights pre-arranged
offline for the 2x2 register tiles (:func:`arrange_weights`), the int32 kernel biases with the
input zero point folded in, the multipliers with their real value beside each. The offloaded
function takes and returns int8, like ``tvm_tiny_mhsa_*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from tvm import relax
from tvm.relax.dpl import DFPattern

from tvm_tiny.codegen.instance import entry_call, fixed_point_text, instance_source
from tvm_tiny.codegen.kernel import CONST_ALIGNMENT, GeneratedKernel, kernel_function_name
from tvm_tiny.ir.cformat import const_array, designated, real_text
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.mhsa_s8 import ACC_BIAS_BITS
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.ir.relax_compat import static_shape
from tvm_tiny.partition.describe import match_composite
from tvm_tiny.partition.partitioner import composite_of
from tvm_tiny.partition.patterns import (
    LINEAR_S8_COMPOSITE,
    linear_s8_matched,
    make_linear_s8_pattern,
    read_linear_s8,
)
from tvm_tiny.reference.linear_s8 import LinearS8Quant, LoweredLinearS8, lower_linear_s8

__all__ = [
    "ARRAY_FIELDS",
    "DEFAULT_ROWS_PER_BLOCK",
    "LIBRARY_SOURCES",
    "SCALAR_FIELDS",
    "LinearS8Case",
    "LinearS8Descriptor",
    "arrange_linear_s8",
    "arrange_weights",
    "describe_linear_s8",
    "emit_linear_s8",
    "linear_s8_harness",
    "metadata_entry_s8",
    "read_offloaded_s8",
    "scalar_fields_linear_s8",
    "scratch_bytes_linear_s8",
]

LIBRARY_SOURCES = ("linear/tt_linear_s8.c",)

DEFAULT_ROWS_PER_BLOCK = 16
"""x rows widened per block (C ``tt_linear_s8_config.rows_per_block``); a tuning knob: larger
blocks prepare each column's requantization less often, at 2 * K bytes of scratch per row."""

ARRAY_FIELDS = ("weights", "kernel_bias", "mult", "shift")
"""The pointer fields of ``tt_linear_s8_params`` before its scalars, in struct order."""

QuantT = TypeVar("QuantT")
"""What a pattern's reader returns (``LinearS8Quant``, ``ConvS8Quant``)."""

SCALAR_FIELDS = ("per_channel", "y_zero_point", "act_min", "act_max", "two_step",
                 "acc_zero_point", "mult2", "shift2")
"""The int32 scalar fields, in struct order; the struct ends with the pointer ``bias2``."""


def _ceil4(n: int) -> int:
    return (n + 3) & ~3


def arrange_weights(w: np.ndarray) -> np.ndarray:
    """int8 W [K, N] → the ``weights`` array [N * K4] (``tt_linear_s8.h``): W^T rows padded to
    K4 with zeros, column pairs interleaved by groups of 4 k, a last odd column contiguous."""
    k, n = w.shape
    k4 = _ceil4(k)
    rows = np.zeros((n, k4), np.int8)
    rows[:, :k] = np.asarray(w, np.int8).T
    pairs = n // 2
    paired = rows[:2 * pairs].reshape(pairs, 2, k4 // 4, 4).transpose(0, 2, 1, 3).reshape(-1)
    return np.ascontiguousarray(np.concatenate([paired, rows[2 * pairs:].reshape(-1)]))


def arrange_linear_s8(low: LoweredLinearS8) -> dict[str, np.ndarray]:
    """The array fields of ``tt_linear_s8_params`` by name: weights int8 [N*K4], kernel_bias
    int32 [N], mult/shift int32 [N] (per channel) or [1], and bias2 int32 [N] for a two-step
    layer with a bias."""
    step = low.step
    count = len(step.mult) if low.per_channel else 1
    out = {"weights": arrange_weights(low.weight), "kernel_bias": low.kernel_bias,
           "mult": step.mult[:count], "shift": step.shift[:count]}
    if step.second is not None and step.second.bias is not None:
        out["bias2"] = step.second.bias
    return {name: np.ascontiguousarray(a) for name, a in out.items()}


def scalar_fields_linear_s8(low: LoweredLinearS8) -> dict[str, int]:
    """The int32 scalar fields of ``tt_linear_s8_params`` (:data:`SCALAR_FIELDS` order)."""
    second = low.step.second
    return {"per_channel": int(low.per_channel), "y_zero_point": low.zp_y,
            "act_min": low.act_min, "act_max": low.act_max, "two_step": int(second is not None),
            "acc_zero_point": 0 if second is None else second.acc_zero_point,
            "mult2": 0 if second is None else second.mult,
            "shift2": 0 if second is None else second.shift}


def scratch_bytes_linear_s8(rows: int, in_features: int,
                            rows_per_block: int = DEFAULT_ROWS_PER_BLOCK) -> int:
    """``tt_linear_s8_get_buffer_size``: 2 X K4, X = rows_per_block rounded up to even, <= R."""
    x = min(rows_per_block + (rows_per_block & 1), rows)
    return 2 * x * _ceil4(in_features)


# ---------------------------------------------------------------- the offloaded function
@dataclass(frozen=True)
class LinearS8Descriptor:
    """One offloaded int8 linear layer: y_q[R, N] of x_q[R, K] (R: the leading dims)."""

    symbol: str
    rows: int
    quant: LinearS8Quant
    dtype: str = DType.INT8

    @property
    def in_features(self) -> int:
        return self.quant.in_features

    @property
    def out_features(self) -> int:
        return self.quant.out_features


def read_offloaded_s8(func: relax.Function, symbol: str, composite: str,
                      make_pattern: Callable[[], tuple[DFPattern, dict[str, DFPattern]]],
                      read: Callable[[Mapping[str, relax.Expr]], tuple[QuantT | None, str]]
                      ) -> tuple[QuantT, dict[str, relax.Expr]]:
    """The quantization ``read`` finds in the offloaded ``func`` holding ``composite`` and the
    matched expressions by annotation name: the pattern matched again on the composite, read as
    the partitioner's check read it, so the code generator emits what was checked. Shared by the
    int8 linear and convolution descriptors, whose patterns annotate the same way."""
    pattern, annotations = make_pattern()
    matched = match_composite(composite_of(func, composite), pattern, symbol,
                              f"a {composite} chain")
    named = linear_s8_matched(matched, annotations)
    quant, reason = read(named)
    if quant is None:
        raise CodegenError(f"'{symbol}': {reason}")
    return quant, named


def describe_linear_s8(func: relax.Function, symbol: str) -> LinearS8Descriptor:
    """The :class:`LinearS8Descriptor` of an offloaded ``tvm_tiny.linear_s8`` function: the
    pattern matched again on its composite, its quantization read as the check read it."""
    quant, named = read_offloaded_s8(func, symbol, LINEAR_S8_COMPOSITE, make_linear_s8_pattern,
                                     read_linear_s8)
    x_shape = static_shape(named["xq"])
    return LinearS8Descriptor(symbol, int(math.prod(x_shape[:-1])), quant)


def metadata_entry_s8(desc: LinearS8Descriptor, kernel: GeneratedKernel) -> dict[str, Any]:
    """The ``metadata["linear_s8"]`` record of one offloaded int8 linear layer."""
    low = lower_linear_s8(desc.quant)
    return {
        "name": desc.symbol, "function": kernel.c_function, "dtype": str(desc.dtype),
        "rows": desc.rows, "in_features": desc.in_features, "out_features": desc.out_features,
        "per_channel": low.per_channel, "two_step": low.step.second is not None,
        "activation": [low.act_min, low.act_max],
        "macs": desc.rows * desc.in_features * desc.out_features,
        "params_bytes": kernel.params_bytes, "scratch_bytes": kernel.scratch_bytes,
    }


def _describe(point: Any) -> str:
    return f"scale {real_text(point.scale)}, zero point {point.zero_point}"


def emit_linear_s8(desc: LinearS8Descriptor, config: object, model: str, config_source: str,
                   cores: int = 1, provenance: Provenance = UNKNOWN) -> GeneratedKernel:
    """C source of one int8 linear instance calling ``tt_linear_s8`` (``config``,
    ``config_source``, ``cores``: the MHSA emitters' arguments; one core, the default block)."""
    del config, config_source, cores
    q = desc.quant
    try:
        low = lower_linear_s8(q)
    except ValueError as why:
        raise CodegenError(f"'{desc.symbol}': {why}") from why
    fn = kernel_function_name(model, desc.symbol)
    arrays = arrange_linear_s8(low)
    scalars = scalar_fields_linear_s8(low)
    k, n, r = desc.in_features, desc.out_features, desc.rows
    reals = ", ".join(fixed_point_text(m, s) for m, s in zip(arrays["mult"], arrays["shift"]))
    comments = {
        "weights": f"weights [N*K4] int8, W^T in column pairs (tt_linear_s8.h), arranged from "
                   f"{provenance.describe_constant(q.weight.values)}",
        "kernel_bias": "kernel_bias [N] int32 = bias - zp_x * sum_k W[k][n]"
                       + ("" if q.bias is None else
                          f"; bias from {provenance.describe_constant(q.bias)}"),
        "mult": f"mult (with shift), real multipliers: {reals}",
        "shift": "shift: exponents of mult (see there)",
        "bias2": f"bias2 [N] int32: stage-2 bias, round(b / s_acc * 2^{ACC_BIAS_BITS})",
    }
    consts = [const_array(f"{fn}_{name}", array, CONST_ALIGNMENT, comments[name])
              for name, array in arrays.items()]
    scratch = scratch_bytes_linear_s8(r, k)
    second = low.step.second
    lines = [
        f"y[{r}][{n}] = x[{r}][{k}] W[{k}][{n}] + b, int8 in, int8 out (QDQ semantics); "
        f"{'per-channel' if low.per_channel else 'per-tensor'} weights.",
        f"Quantization (real = scale * (q - zero point)): x {_describe(q.x)}; y "
        f"{_describe(q.y)}" + ("" if q.acc is None else
                               f"; rounding point after the MatMul {_describe(q.acc)}") + ".",
        f"Output clamp [{low.act_min}, {low.act_max}]"
        + (" (the following ReLU/Clip)." if (low.act_min, low.act_max) != (-128, 127) else "."),
        "Fixed point: requant(acc, mult, shift) = (acc * mult + 2^(n-1)) >> n with n = 31 - "
        "shift, i.e. acc times mult * 2^(shift-31), given beside each mult.",
        f"Scratch = {scratch} bytes (tt_linear_s8_get_buffer_size, rows_per_block="
        f"{DEFAULT_ROWS_PER_BLOCK}), from the model arena.",
    ]
    if second is not None:
        lines.insert(3, "Two-step requantization (MatMul -> Q -> DQ -> Add -> Q): stage 2 "
                     f"{fixed_point_text(second.mult, second.shift)}.")
    header = provenance.c_comment(
        f"tvm_tiny offloaded int8 linear '{desc.symbol}' of model '{model}'.", lines)
    pointers = [(name, f"{fn}_{name}") for name in ARRAY_FIELDS]
    scalar_items = [(name, str(scalars[name])) for name in SCALAR_FIELDS]
    bias2 = [("bias2", f"{fn}_bias2" if "bias2" in arrays else "NULL")]
    source = instance_source(
        header, ("tt_linear_s8.h", "tvm_tiny/tt_runtime.h"), consts, fn, [
            ("tt_linear_dims", "dims", designated([
                ("rows", str(r)), ("in_features", str(k)), ("out_features", str(n))])),
            ("tt_linear_s8_config", "config",
             designated([("rows_per_block", str(DEFAULT_ROWS_PER_BLOCK))])),
            ("tt_linear_s8_params", "params", designated(pointers + scalar_items + bias2))],
        f"/* AOT entry: args[0] = x int8 [{r}][{k}], outs[0] = y int8 [{r}][{n}]; scratch from "
        "the arena. */", entry_call(fn, "tt_linear_s8"))
    params_bytes = int(sum(a.nbytes for a in arrays.values()))
    return GeneratedKernel(desc.symbol, fn, source, scratch, params_bytes, LIBRARY_SOURCES)


# ---------------------------------------------------------------- kernel firmware harness
@dataclass(frozen=True)
class LinearS8Case:
    """One ``tt_linear_s8`` call of a kernel firmware (tests, ``benchmarks/kernel_linear_s8``)."""

    name: str
    rows: int
    low: LoweredLinearS8
    x: np.ndarray  # int8 [rows, K]
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK

    @property
    def scratch_bytes(self) -> int:
        return scratch_bytes_linear_s8(self.rows, self.low.weight.shape[0], self.rows_per_block)


def linear_s8_harness(cases: Sequence[LinearS8Case]) -> str:
    """``main.c`` of a kernel firmware (``firmware.kernel_firmware``): each case once between
    window markers, its output written to ``y<k>.bin``; exit status 1 if a call fails."""
    parts = ["/* tvm_tiny int8 linear kernel harness (tvm_tiny.codegen.linear_s8). */",
             "#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>", "",
             '#include "tt_linear_s8.h"', '#include "tt_port.h"',
             '#include "tvm_tiny/tt_profile.h"', "",
             "#define TT_ALIGNED(n) __attribute__((aligned(n)))", ""]
    scratch = max(c.scratch_bytes for c in cases)
    out_bytes = max(c.rows * c.low.weight.shape[1] for c in cases)
    parts.append(f"static int8_t g_scratch[{scratch}] TT_ALIGNED(8);")
    parts.append(f"static int8_t g_y[{out_bytes}] TT_ALIGNED(4);")
    calls = []
    for i, case in enumerate(cases):
        prefix = f"c{i}"
        arrays = arrange_linear_s8(case.low)
        for name, array in arrays.items():
            parts.append(const_array(f"{prefix}_{name}", array.ravel(), 4))
        parts.append(const_array(f"{prefix}_x", np.ascontiguousarray(case.x).ravel(), 4))
        k, n = case.low.weight.shape
        inits = [f"    .{name} = {prefix}_{name}," for name in arrays]
        inits += [f"    .{name} = {v}," for name, v in scalar_fields_linear_s8(case.low).items()]
        parts.append(f"static const tt_linear_s8_params {prefix}_params = {{\n"
                     + "\n".join(inits) + "\n};")
        parts.append(f"static const tt_linear_dims {prefix}_dims = {{{case.rows}, {k}, {n}}};")
        parts.append(f"static const tt_linear_s8_config {prefix}_cfg = {{{case.rows_per_block}}};")
        calls.append(f"""  /* {case.name} */
  tt_window_begin();
  rc = tt_linear_s8(&{prefix}_dims, &{prefix}_cfg, &{prefix}_params, {prefix}_x, g_y, g_scratch,
                    {case.scratch_bytes});
  tt_window_end();
  if (rc != TT_OK) {{
    printf("tvm_tiny: case {i} returned %d\\n", (int)rc);
    status = 1;
  }}
  if (tt_port_write_file("y{i}.bin", g_y, {case.rows * n}) != TT_PORT_OK) {{
    status = 2;
  }}""")
    parts.append("int main(void) {\n  tt_status rc;\n  int status = 0;\n" + "\n".join(calls)
                 + "\n  return status;\n}\n")
    return "\n".join(parts)
