"""int8 convolutions (composite ``tvm_tiny.conv_s8`` → ``tt_conv_s8``).

The partitioner offloads the QDQ chain ``quantize([act](add?(conv2d(dq(x_q), dq(W_q)), b)))``
(``patterns.make_conv_s8_pattern``), read into a
:class:`~tvm_tiny.reference.conv_s8.ConvS8Quant`. Its integer program is the int8 linear
layer's (``reference.conv_s8``), so the arrays are the ``tt_linear_s8_params`` of
``codegen.linear_s8`` (:func:`~tvm_tiny.codegen.linear_s8.arrange_linear_s8`), with the weights
of a standard conv arranged for ``tt_linear_s8``'s register tiles and those of a depthwise conv
in their natural [C][KH*KW] order. The offloaded function takes and returns int8 NCHW.

Weights shared by several convolutions (a backbone applied repeatedly, as in the hybrid
Neural-ODE) are emitted once per build: each instance defines its weight array as a weak symbol
named by the array's content hash (GCC/Clang; other compilers get one static copy per
instance), and ``metadata["conv_s8"]`` records it under ``shared_weights`` so the build counts
its bytes once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from tvm_tiny.codegen.instance import entry_call, fixed_point_text, instance_source
from tvm_tiny.codegen.kernel import CONST_ALIGNMENT, GeneratedKernel, kernel_function_name
from tvm_tiny.codegen.linear_s8 import (
    SCALAR_FIELDS,
    arrange_linear_s8,
    arrange_weights,
    read_offloaded_s8,
    scalar_fields_linear_s8,
)
from tvm_tiny.ir.cformat import (
    c_comment,
    c_declaration,
    const_array,
    designated,
    format_values,
    real_text,
)
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.mhsa_s8 import ACC_BIAS_BITS
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.partition.patterns import (
    CONV_S8_COMPOSITE,
    make_conv_s8_pattern,
    read_conv_s8,
)
from tvm_tiny.reference.conv_s8 import ConvGeometry, ConvS8Quant, LoweredConvS8, lower_conv_s8

__all__ = [
    "DEFAULT_PIXELS_PER_BLOCK",
    "LIBRARY_SOURCES",
    "ConvS8Case",
    "ConvS8Descriptor",
    "arrange_conv_s8",
    "conv_s8_harness",
    "describe_conv_s8",
    "emit_conv_s8",
    "metadata_entry_conv_s8",
    "scratch_bytes_conv_s8",
]

LIBRARY_SOURCES = ("conv/tt_conv_s8.c", "linear/tt_linear_s8.c")

DEFAULT_PIXELS_PER_BLOCK = 8
"""Output pixels gathered per block (C ``tt_conv_s8_config.pixels_per_block``): the GEMM's
per-column setup is spread over X/2 register tiles, at about 3 K + O bytes of scratch per
pixel."""


def _ceil4(n: int) -> int:
    return (n + 3) & ~3


def scratch_bytes_conv_s8(g: ConvGeometry, pixels_per_block: int = DEFAULT_PIXELS_PER_BLOCK
                          ) -> int:
    """``tt_conv_s8_get_buffer_size``: depthwise, one zero-point padded channel plane
    ceil4((H+PT+PB)(W+PL+PR)) (0 without padding); else ceil4(X K) + ceil4(X O) + 2 X ceil4(K)
    (tt_linear_s8's), X = pixels_per_block rounded up to even, at most OH*OW."""
    if g.depthwise:
        pt, pl, pb, pr = g.padding
        return _ceil4((g.in_height + pt + pb) * (g.in_width + pl + pr)) if any(g.padding) else 0
    x = min(pixels_per_block + (pixels_per_block & 1), g.out_height * g.out_width)
    k = g.reduction
    return _ceil4(x * k) + _ceil4(x * g.out_channels) + 2 * x * _ceil4(k)


def arrange_conv_s8(low: LoweredConvS8) -> dict[str, np.ndarray]:
    """The array fields of the conv's ``tt_linear_s8_params`` by name (``weights`` laid out for
    the kernel the geometry selects, the rest as ``arrange_linear_s8``)."""
    arrays = arrange_linear_s8(low.linear)
    w = low.linear.weight  # [K, O]
    arrays["weights"] = (np.ascontiguousarray(w.T).reshape(-1) if low.geometry.depthwise
                         else arrange_weights(w))
    return arrays


def weight_symbol(weights: np.ndarray) -> str:
    """The C name of a weight array: its content hash, so equal weights share one symbol."""
    digest = hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest()[:16]
    return f"tt_conv_s8_w_{weights.size}_{digest}"


def _shared_array(name: str, array: np.ndarray, comment: str) -> str:
    """A weak (one copy per link) aligned const int8 array definition."""
    decl = c_declaration("TT_CONV_S8_SHARED const int8_t",
                         f"{name}[{array.size}] TT_ALIGNED({CONST_ALIGNMENT}) = {{")
    return f"{c_comment(comment)}\n{decl}\n{format_values(array)}\n}};\n"


# ---------------------------------------------------------------- the offloaded function
@dataclass(frozen=True)
class ConvS8Descriptor:
    """One offloaded int8 convolution: y_q [N, O, OH, OW] of x_q [N, C, H, W]."""

    symbol: str
    quant: ConvS8Quant
    dtype: str = DType.INT8

    @property
    def geometry(self) -> ConvGeometry:
        return self.quant.geometry


def describe_conv_s8(func: relax.Function, symbol: str) -> ConvS8Descriptor:
    """The :class:`ConvS8Descriptor` of an offloaded ``tvm_tiny.conv_s8`` function: the
    pattern matched again on its composite, its quantization read as the check read it."""
    quant, _ = read_offloaded_s8(func, symbol, CONV_S8_COMPOSITE, make_conv_s8_pattern,
                                 read_conv_s8)
    return ConvS8Descriptor(symbol, quant)


def metadata_entry_conv_s8(desc: ConvS8Descriptor, kernel: GeneratedKernel) -> dict[str, Any]:
    """The ``metadata["conv_s8"]`` record of one offloaded int8 convolution. ``params_bytes``
    is the instance's own arrays; ``shared_weights`` the weight array, counted once per build
    however many instances read it."""
    g = desc.geometry
    low = lower_conv_s8(desc.quant)
    weights = arrange_conv_s8(low)["weights"]
    return {
        "name": desc.symbol, "function": kernel.c_function, "dtype": str(desc.dtype),
        "input_shape": list(g.input_shape), "output_shape": list(g.output_shape),
        "kernel": list(g.kernel), "strides": list(g.strides), "padding": list(g.padding),
        "groups": g.groups, "kind": "depthwise" if g.depthwise else
        ("pointwise" if g.pointwise else "standard"),
        "per_channel": low.linear.per_channel, "two_step": low.linear.step.second is not None,
        "activation": [low.linear.act_min, low.linear.act_max], "macs": g.macs,
        "params_bytes": kernel.params_bytes, "scratch_bytes": kernel.scratch_bytes,
        "shared_weights": {"symbol": weight_symbol(weights), "bytes": int(weights.nbytes)},
    }


def _dims_fields(g: ConvGeometry) -> list[tuple[str, str]]:
    pt, pl, pb, pr = g.padding
    values = [("batch", g.batch), ("in_channels", g.in_channels), ("in_height", g.in_height),
              ("in_width", g.in_width), ("out_channels", g.out_channels),
              ("kernel_h", g.kernel[0]), ("kernel_w", g.kernel[1]), ("stride_h", g.strides[0]),
              ("stride_w", g.strides[1]), ("pad_top", pt), ("pad_left", pl),
              ("pad_bottom", pb), ("pad_right", pr), ("dilation_h", 1), ("dilation_w", 1),
              ("groups", g.groups)]
    return [(name, str(v)) for name, v in values]


def emit_conv_s8(desc: ConvS8Descriptor, config: object, model: str, config_source: str,
                 cores: int = 1, provenance: Provenance = UNKNOWN) -> GeneratedKernel:
    """C source of one int8 convolution calling ``tt_conv_s8`` (``config``, ``config_source``,
    ``cores``: the MHSA emitters' arguments; one core, the default block)."""
    del config, config_source, cores
    q, g = desc.quant.linear, desc.geometry
    try:
        low = lower_conv_s8(desc.quant)
    except ValueError as why:
        raise CodegenError(f"'{desc.symbol}': {why}") from why
    fn = kernel_function_name(model, desc.symbol)
    arrays = arrange_conv_s8(low)
    weights = arrays.pop("weights")
    wsym = weight_symbol(weights)
    scalars = scalar_fields_linear_s8(low.linear)
    oihw = np.ascontiguousarray(q.weight.values.T).reshape(
        g.out_channels, g.reduction // (g.kernel[0] * g.kernel[1]), *g.kernel)
    layout = "W [C][KH*KW], natural order" if g.depthwise else \
        "W as [K][O] in column pairs (tt_linear_s8.h)"
    reals = ", ".join(fixed_point_text(m, s) for m, s in zip(arrays["mult"], arrays["shift"]))
    comments = {
        "kernel_bias": "kernel_bias [O] int32 = bias - zp_x * sum W[o]"
                       + ("" if q.bias is None else
                          f"; bias from {provenance.describe_constant(q.bias)}"),
        "mult": f"mult (with shift), real multipliers: {reals}",
        "shift": "shift: exponents of mult (see there)",
        "bias2": f"bias2 [O] int32: stage-2 bias, round(b / s_acc * 2^{ACC_BIAS_BITS})",
    }
    consts = [_shared_array(wsym, weights, f"weights [{weights.size}] int8, {layout}, from "
                                           f"{provenance.describe_constant(oihw)}; shared by "
                                           "every conv with these weights (weak symbol)")]
    consts += [const_array(f"{fn}_{name}", array, CONST_ALIGNMENT, comments[name])
               for name, array in arrays.items()]
    scratch = scratch_bytes_conv_s8(g)
    kind = "depthwise" if g.depthwise else ("pointwise" if g.pointwise else "standard")
    lines = [
        f"y{list(g.output_shape)} = conv2d(x{list(g.input_shape)}, W{list(oihw.shape)}), "
        f"strides {list(g.strides)}, padding {list(g.padding)}, groups {g.groups} ({kind}); "
        f"int8 in, int8 out, NCHW (QDQ semantics); "
        f"{'per-channel' if low.linear.per_channel else 'per-tensor'} weights.",
        f"Quantization (real = scale * (q - zero point)): x scale {real_text(q.x.scale)}, zero "
        f"point {q.x.zero_point} (the padding value); y scale {real_text(q.y.scale)}, zero "
        f"point {q.y.zero_point}.",
        f"Output clamp [{low.linear.act_min}, {low.linear.act_max}].",
        "Fixed point: requant(acc, mult, shift) = (acc * mult + 2^(n-1)) >> n with n = 31 - "
        "shift, i.e. acc times mult * 2^(shift-31), given beside each mult.",
        f"Scratch = {scratch} bytes (tt_conv_s8_get_buffer_size, pixels_per_block="
        f"{DEFAULT_PIXELS_PER_BLOCK}), from the model arena.",
    ]
    header = provenance.c_comment(
        f"tvm_tiny offloaded int8 convolution '{desc.symbol}' of model '{model}'.", lines)
    gemm = [("weights", wsym)] + [(name, f"{fn}_{name}") for name in
                                  ("kernel_bias", "mult", "shift")]
    gemm += [(name, str(scalars[name])) for name in SCALAR_FIELDS]
    gemm += [("bias2", f"{fn}_bias2" if "bias2" in arrays else "NULL")]
    params_fields = (f"    .gemm =\n        {{\n{designated(gemm, 12)}\n        }},\n"
                     f"    .x_zero_point = {q.x.zero_point},")
    source = instance_source(
        header, ("tt_conv_s8.h", "tvm_tiny/tt_runtime.h"), consts, fn, [
            ("tt_conv_s8_dims", "dims", designated(_dims_fields(g))),
            ("tt_conv_s8_config", "config",
             designated([("pixels_per_block", str(DEFAULT_PIXELS_PER_BLOCK))])),
            ("tt_conv_s8_params", "params", params_fields)],
        f"/* AOT entry: args[0] = x int8 {list(g.input_shape)}, outs[0] = y int8 "
        f"{list(g.output_shape)}, NCHW. */", entry_call(fn, "tt_conv_s8"), _WEAK_SHARED)
    params_bytes = int(sum(a.nbytes for a in arrays.values()))
    return GeneratedKernel(desc.symbol, fn, source, scratch, params_bytes, LIBRARY_SOURCES)


_WEAK_SHARED = """\
#if defined(__GNUC__)
#define TT_CONV_S8_SHARED __attribute__((weak))
#else
#define TT_CONV_S8_SHARED static
#endif

"""
"""What ``TT_CONV_S8_SHARED`` (the shared weight arrays' storage class) means per compiler."""


# ---------------------------------------------------------------- kernel firmware harness
@dataclass(frozen=True)
class ConvS8Case:
    """One ``tt_conv_s8`` call of a kernel firmware (tests, ``benchmarks/kernel_conv_s8``)."""

    name: str
    low: LoweredConvS8
    x: np.ndarray  # int8 [N, C, H, W]
    pixels_per_block: int = DEFAULT_PIXELS_PER_BLOCK

    @property
    def scratch_bytes(self) -> int:
        return scratch_bytes_conv_s8(self.low.geometry, self.pixels_per_block)


def _case_structs(prefix: str, case: ConvS8Case) -> list[str]:
    """The const arrays and parameter structs of one harness case."""
    arrays = arrange_conv_s8(case.low)
    parts = [const_array(f"{prefix}_{name}", array.ravel(), 4) for name, array in arrays.items()]
    parts.append(const_array(f"{prefix}_x", np.ascontiguousarray(case.x).ravel(), 4))
    inits = [f"    .gemm.{name} = {prefix}_{name}," for name in arrays]
    inits += [f"    .gemm.{name} = {v}," for name, v in scalar_fields_linear_s8(case.low.linear)
              .items()]
    inits.append(f"    .x_zero_point = {case.low.linear.zp_x},")
    parts.append(f"static const tt_conv_s8_params {prefix}_params = {{\n" + "\n".join(inits)
                 + "\n};")
    dims = ", ".join(v for _, v in _dims_fields(case.low.geometry))
    parts.append(f"static const tt_conv_s8_dims {prefix}_dims = {{{dims}}};")
    parts.append(f"static const tt_conv_s8_config {prefix}_cfg = {{{case.pixels_per_block}}};")
    return parts


def conv_s8_harness(cases: Sequence[ConvS8Case]) -> str:
    """``main.c`` of a kernel firmware (``firmware.kernel_firmware``): each case once between
    window markers, its output written to ``y<k>.bin``; exit status 1 if a call fails."""
    parts = ["/* tvm_tiny int8 conv kernel harness (tvm_tiny.codegen.conv_s8). */",
             "#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>", "",
             '#include "tt_conv_s8.h"', '#include "tt_port.h"',
             '#include "tvm_tiny/tt_profile.h"', "",
             "#define TT_ALIGNED(n) __attribute__((aligned(n)))", ""]
    scratch = max([c.scratch_bytes for c in cases] + [4])
    out_bytes = max(math.prod(c.low.geometry.output_shape) for c in cases)
    parts.append(f"static int8_t g_scratch[{scratch}] TT_ALIGNED(8);")
    parts.append(f"static int8_t g_y[{out_bytes}] TT_ALIGNED(4);")
    calls = []
    for i, case in enumerate(cases):
        prefix = f"c{i}"
        parts += _case_structs(prefix, case)
        size = math.prod(case.low.geometry.output_shape)
        calls.append(f"""  /* {case.name} */
  tt_window_begin();
  rc = tt_conv_s8(&{prefix}_dims, &{prefix}_cfg, &{prefix}_params, {prefix}_x, g_y, g_scratch,
                  {case.scratch_bytes});
  tt_window_end();
  if (rc != TT_OK) {{
    printf("tvm_tiny: case {i} returned %d\\n", (int)rc);
    status = 1;
  }}
  if (tt_port_write_file("y{i}.bin", g_y, {size}) != TT_PORT_OK) {{
    status = 2;
  }}""")
    parts.append("int main(void) {\n  tt_status rc;\n  int status = 0;\n" + "\n".join(calls)
                 + "\n  return status;\n}\n")
    return "\n".join(parts)
