"""Emitter of the int8 MHSA kernel instance (composite ``tvm_tiny.mhsa_s8`` → ``tt_mhsa_s8``).

The descriptor's quantization (``attention_match.MhsaQuantization``: per-tensor activation
parameters, int8 weights with per-column scales, float biases) becomes the kernel's
``MhsaInt8Params``; ``mhsa_int8.arrange_s8`` lowers it offline to the arrays the C kernel reads
(int8 weights pre-arranged for SXTB16/SMLAD, int32 biases, fixed-point multipliers and shifts, the
softmax lookup table), and ``scalar_fields_s8`` to the zero points and scalar multipliers. The
numpy golden model ``mhsa_int8.reference_mhsa_s8`` computes exactly the same integers.
"""

from __future__ import annotations

import numpy as np

from tvm_tiny.codegen.kernel import CONST_ALIGNMENT, GeneratedKernel, kernel_function_name
from tvm_tiny.ir.cformat import const_array
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.mhsa import KernelConfig, stored_params_bytes
from tvm_tiny.ir.mhsa_s8 import (
    ACC_ARRAY_FIELDS,
    MhsaInt8Params,
    QParams,
    QWeight,
    arrange_s8,
    cluster_scratch_bytes_s8,
    scalar_fields_s8,
    scratch_bytes_s8,
)
from tvm_tiny.partition.attention_match import MhsaQuantization
from tvm_tiny.partition.describe import MhsaDescriptor
from tvm_tiny.partition.layout_trace import QuantPoint
from tvm_tiny.partition.qdq import QuantizedWeight

ARRAY_FIELDS = ("wq", "wk", "wf", "wv", "wo", "bq", "bk", "bf", "bv", "bo", "q_mult", "q_shift",
                "k_mult", "k_shift", "t_mult", "t_shift", "v_mult", "v_shift", "score_mult",
                "score_shift", "o_mult", "o_shift", "softmax_lut")
"""Pointer fields of ``tt_mhsa_s8_params`` (absent ones are NULL), then the stage-2 biases of
the exported intermediate roundings (``mhsa_int8.ACC_ARRAY_FIELDS``)."""

# tt_mhsa_s8_simd.c and tt_mhsa_s8.c define the same symbols: link one. The SIMD file uses the
# Arm DSP extension when the target has it (__ARM_FEATURE_DSP) and its portable 4-way fallback
# elsewhere; both are bit-exact against the golden model (tests/test_mhsa_s8_kernel.py).
LIBRARY_SOURCES = ("mhsa/tt_mhsa_s8_simd.c",)
CLUSTER_SOURCES = ("mhsa/tt_mhsa_s8_cluster.c", "port/tt_cluster_serial.c")


def int8_params(desc: MhsaDescriptor) -> MhsaInt8Params:
    """The kernel's quantization record from an int8 descriptor."""
    quant: MhsaQuantization = desc.quant

    def qp(point: QuantPoint | None) -> QParams | None:
        return None if point is None else QParams(point.scale, point.zero_point)

    def qw(weight: QuantizedWeight) -> QWeight:
        return QWeight(weight.values, weight.scale)

    w = desc.weights
    return MhsaInt8Params(
        x=qp(quant.x), q=qp(quant.q), k=qp(quant.k), v=qp(quant.v), scores=qp(quant.scores),
        probs=qp(quant.probs), ctx=qp(quant.ctx), y=qp(quant.y),
        wq=qw(quant.wq), wk=qw(quant.wk), wv=qw(quant.wv), wo=qw(quant.wo),
        bq=w.bq, bk=w.bk, bv=w.bv, bo=w.bo, scale=w.scale,
        q_acc=qp(quant.q_acc), k_acc=qp(quant.k_acc), v_acc=qp(quant.v_acc),
        o_acc=qp(quant.o_acc), qk_acc=qp(quant.qk_acc),
    )


def emit_mhsa_s8(desc: MhsaDescriptor, config: KernelConfig, model: str, config_source: str,
                 cores: int = 1) -> GeneratedKernel:
    """C source of one int8 MHSA instance calling ``tt_mhsa_s8``, or on a cluster of ``cores``
    > 1 cores ``tt_mhsa_s8_cluster`` (heads split across cores, then the output rows)."""
    shape = desc.shape
    fn = kernel_function_name(model, desc.symbol)
    params = int8_params(desc)
    arrays = arrange_s8(params, shape, config)
    scalars = scalar_fields_s8(params, shape, config)
    fields = ARRAY_FIELDS + tuple(ACC_ARRAY_FIELDS)
    unknown = set(arrays) - set(fields)
    if unknown:  # a kernel field this emitter does not know would silently stay NULL
        raise CodegenError(f"'{desc.symbol}': arrange_s8 returned unknown fields {sorted(unknown)}")
    consts = [const_array(f"{fn}_{name}", arrays[name], CONST_ALIGNMENT, name)
              for name in fields if name in arrays]
    pointers = ",\n  ".join(
        f".{name} = {fn}_{name}" if name in arrays else f".{name} = NULL" for name in fields)
    scalar_init = ",\n  ".join(f".{name} = {value}" for name, value in scalars.items())
    if cores > 1:
        scratch = cluster_scratch_bytes_s8(shape, config, cores)
        call = (f"tt_mhsa_s8_cluster(&{fn}_dims, &{fn}_config, &{fn}_params, "
                f"(const int8_t *)args[0],\n                                     "
                f"(int8_t *)outs[0], (int8_t *)(void *)scratch, scratch_bytes, {cores})")
        library, forks = LIBRARY_SOURCES + CLUSTER_SOURCES, 2
    else:
        scratch = scratch_bytes_s8(shape, config)
        call = (f"tt_mhsa_s8(&{fn}_dims, &{fn}_config, &{fn}_params, (const int8_t *)args[0],"
                f"\n                             (int8_t *)outs[0], (int8_t *)(void *)scratch, "
                "scratch_bytes)")
        library, forks = LIBRARY_SOURCES, 0
    q = desc.quant
    source = _MHSA_S8_TEMPLATE.format(
        fn=fn, symbol=desc.symbol, model=model, s=shape.seq, e=shape.embed, h=shape.heads,
        p=shape.proj, eo=shape.out_features, rows=config.rows_per_block,
        fuse=int(config.fuse_qk), source=config_source, scratch=scratch,
        consts="\n".join(consts), pointers=pointers, scalars=scalar_init,
        x=_describe(q.x), y=_describe(q.y), scores=_describe(q.scores),
        probs=_describe(q.probs), attn_scale=repr(desc.weights.scale), call=call,
        cores=f"heads split across {cores} cluster cores" if cores > 1 else "one core",
    )
    return GeneratedKernel(desc.symbol, fn, source, scratch, stored_params_bytes(arrays),
                           library, forks)


def _describe(point: QuantPoint) -> str:
    return f"scale {np.float32(point.scale)!r}, zero point {point.zero_point}"


_MHSA_S8_TEMPLATE = """\
/*
 * tvm_tiny offloaded int8 MHSA '{symbol}' of model '{model}' (generated; do not edit).
 * Shape: S={s} E={e} H={h} P={p} E_out={eo}; int8 in, int8 out (QDQ semantics).
 * Kernel config: rows_per_block={rows} fuse_qk={fuse} (from: {source}).
 * Quantization (real = scale * (q - zero point)): x {x}; y {y};
 *   softmax input {scores}; softmax output {probs}; attention scale {attn_scale}.
 * Depth-first: one head and one block of score rows at a time ({cores});
 * scratch = {scratch} bytes (closed form, tt_mhsa_s8*_get_buffer_size), from the model arena.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_cluster.h"
#include "tt_mhsa_s8.h"
#include "tvm_tiny/tt_runtime.h"

{consts}
static const tt_mhsa_dims {fn}_dims = {{
  .seq = {s}, .embed = {e}, .heads = {h}, .proj = {p}, .out_features = {eo}}};
static const tt_mhsa_config {fn}_config = {{.rows_per_block = {rows}, .fuse_qk = {fuse}}};
static const tt_mhsa_s8_params {fn}_params = {{
  {pointers},
  {scalars}}};

int32_t {fn}(const void *const *args, void *const *outs, uint8_t *scratch,
             int32_t scratch_bytes);

/* AOT entry: args[0] = x int8 [S][E], outs[0] = y int8 [S][E_out]; scratch from the arena. */
int32_t {fn}(const void *const *args, void *const *outs, uint8_t *scratch,
             int32_t scratch_bytes) {{
  return (int32_t){call};
}}
"""
