"""Emitter of the float32 MHSA kernel instance (composite ``tvm_tiny.mhsa`` → ``tt_mhsa_f32``).

Writes the kernel's weights (re-arranged offline, fused for FWSA when chosen, row-compressed where
pruned and smaller) as aligned ``static const`` arrays, the parameter structs, and a thin entry
``tvmtiny_<model>_<symbol>`` that the AOT entry point calls with input/output pointers and a
scratch region of the arena. The kernel body is never copied per model: the instance calls the
library kernel (``kernels/mhsa/tt_mhsa_f32.c``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm_tiny.codegen.kernel import CONST_ALIGNMENT, GeneratedKernel, kernel_function_name
from tvm_tiny.ir.cformat import const_array
from tvm_tiny.ir.mhsa import (
    SPARSE_FIELDS,
    KernelConfig,
    cluster_scratch_bytes,
    scratch_bytes,
    stored_arrays_f32,
    stored_params_bytes,
)
from tvm_tiny.ir.sparse import CsrMatrix
from tvm_tiny.partition.describe import MhsaDescriptor

_PARAM_FIELDS = ("wq", "bq", "wk", "bk", "wf", "bf", "wv", "bv", "wo", "bo")
_LAYOUTS = {
    "wq": "[H][P][E]", "wk": "[H][P][E]", "wv": "[H][P][E]", "bq": "[H][P]", "bk": "[H][P]",
    "bv": "[H][P]", "wf": "[H][E][E] = scale * Wq_h Wk_h^T (transposed)", "bf": "[H][E]",
    "wo": "[H][E_out][P]", "bo": "[E_out]",
}


def emit_mhsa_f32(desc: MhsaDescriptor, config: KernelConfig, model: str,
                  config_source: str, cores: int = 1) -> GeneratedKernel:
    """C source of one float32 MHSA instance calling ``tt_mhsa_f32``, or, on a cluster of
    ``cores`` > 1 cores, ``tt_mhsa_f32_cluster`` (heads split across the cores)."""
    shape = desc.shape
    fn = kernel_function_name(model, desc.symbol)
    arrays, compressed = stored_arrays_f32(desc.weights, shape, config)
    consts = [
        const_array(f"{fn}_{name}", arrays[name], CONST_ALIGNMENT, f"{name} {_LAYOUTS[name]}")
        for name in _PARAM_FIELDS if name in arrays
    ]
    sparse_consts, sparse_struct = _sparse_f32(fn, compressed)
    consts.extend(sparse_consts)
    pointers = ",\n  ".join(
        f".{name} = {fn}_{name}" if name in arrays else f".{name} = NULL"
        for name in _PARAM_FIELDS
    )
    pointers += f",\n  .sparse = &{fn}_sparse" if compressed else ",\n  .sparse = NULL"
    if cores > 1:
        scratch = cluster_scratch_bytes(shape, config, cores)
        call = _CLUSTER_CALL.format(fn=fn, cores=cores)
        library: tuple[str, ...] = ("mhsa/tt_mhsa_f32.c", "mhsa/tt_mhsa_f32_cluster.c",
                                    "port/tt_cluster_serial.c")
        where = (f"heads split across {cores} cluster cores; scratch = "
                 "tt_mhsa_f32_cluster_get_buffer_size")
    else:
        scratch = scratch_bytes(shape, config)
        call = _SINGLE_CALL.format(fn=fn)
        library = ("mhsa/tt_mhsa_f32.c",)
        where = "one core; scratch = tt_mhsa_f32_get_buffer_size"
    source = _MHSA_F32_TEMPLATE.format(
        fn=fn, symbol=desc.symbol, model=model, s=shape.seq, e=shape.embed, h=shape.heads,
        p=shape.proj, eo=shape.out_features, rows=config.rows_per_block,
        fuse=int(config.fuse_qk), source=config_source, scale=repr(desc.weights.scale),
        scale_c=f"{desc.weights.scale!r}f" if "e" in repr(desc.weights.scale)
        or "." in repr(desc.weights.scale) else f"{desc.weights.scale!r}.0f",
        consts="\n".join(consts), pointers=pointers, scratch=scratch, call=call, where=where,
        fused="Q and K fused offline (FWSA)" if config.fuse_qk else "Q and K unfused",
        sparse_struct=sparse_struct, storage=_storage_comment(compressed),
        sparse=int(config.sparse),
    )
    # Fork 1 splits the heads over the cores; fork 2 (only when more than one core has heads)
    # adds their partial outputs.
    forks = 0 if cores <= 1 else (2 if min(cores, shape.heads) > 1 else 1)
    return GeneratedKernel(desc.symbol, fn, source, scratch,
                           stored_params_bytes(arrays, compressed), library, forks,
                           weights_storage(arrays, compressed))


def weights_storage(arrays: dict[str, np.ndarray], compressed: dict[str, CsrMatrix]
                    ) -> dict[str, dict[str, Any]]:
    """``metadata["offloaded"][i]["weights"]``: per weight matrix of an instance, its format
    (``dense`` or ``csr``), nonzeros, and bytes stored dense against bytes actually stored."""
    out: dict[str, dict[str, Any]] = {}
    for name in SPARSE_FIELDS:
        if name in compressed:
            m = compressed[name]
            out[name] = {"format": "csr", "rows": m.rows, "cols": m.cols, "nnz": m.nnz,
                         "dense_bytes": m.dense_bytes, "stored_bytes": m.stored_bytes}
        elif name in arrays:
            a = arrays[name]
            out[name] = {"format": "dense", "rows": int(a.size // a.shape[-1]),
                         "cols": int(a.shape[-1]), "nnz": int(np.count_nonzero(a)),
                         "dense_bytes": int(a.nbytes), "stored_bytes": int(a.nbytes)}
    return out


def _sparse_f32(fn: str, compressed: dict[str, CsrMatrix]) -> tuple[list[str], str]:
    """The const arrays and the ``tt_mhsa_f32_sparse`` struct of the row-compressed matrices
    (an empty struct text when none is)."""
    if not compressed:
        return [], ""
    consts, members = [], []
    for name in SPARSE_FIELDS:
        if name not in compressed:
            continue
        m = compressed[name]
        base = f"{fn}_{name}"
        consts.append(const_array(
            f"{base}_row_ptr", m.row_ptr, CONST_ALIGNMENT,
            f"{name} row-compressed: {m.rows} rows of {m.cols} ({_LAYOUTS[name]}), {m.nnz} "
            f"nonzeros, {m.stored_bytes} B (dense {m.dense_bytes} B); row r's nonzeros are "
            f"row_ptr[r] .. row_ptr[r+1]-1"))
        if m.nnz:  # an all-zero matrix stores no indices nor values (NULL pointers)
            consts.append(const_array(f"{base}_col_idx", m.col_idx, CONST_ALIGNMENT,
                                      f"{name} column of each nonzero"))
            consts.append(const_array(f"{base}_values", m.values, CONST_ALIGNMENT,
                                      f"{name} nonzero weights"))
        idx, val = (f"{base}_col_idx", f"{base}_values") if m.nnz else ("NULL", "NULL")
        members.append(f"  .{name} = {{.row_ptr = {base}_row_ptr,\n"
                       f"         .col_idx = {idx},\n"
                       f"         .values = {val}}},")
    struct = (f"static const tt_mhsa_f32_sparse {fn}_sparse = {{\n" + "\n".join(members)
              + "\n};\n")
    return consts, struct


def _storage_comment(compressed: dict[str, CsrMatrix]) -> str:
    if not compressed:
        return "all weights dense"
    parts = [f"{name} CSR {100.0 * m.nnz / (m.rows * m.cols):.0f}% dense"
             for name, m in compressed.items()]
    return "pruned weights row-compressed: " + ", ".join(parts)


_MHSA_F32_TEMPLATE = """\
/*
 * tvm_tiny offloaded MHSA '{symbol}' of model '{model}' (generated; do not edit).
 * Shape: S={s} E={e} H={h} P={p} E_out={eo}, float32. {fused}.
 * Kernel config: rows_per_block={rows} fuse_qk={fuse} sparse={sparse} (from: {source}).
 * Weight storage: {storage}.
 * Depth-first: one head's K/V and one block of {rows} score rows live at a time;
 * {where}: {scratch} bytes, taken from the model arena.
 */
#include <math.h> /* NAN/INFINITY, should a weight hold them */
#include <stddef.h>
#include <stdint.h>

#include "tt_mhsa.h"
#include "tvm_tiny/tt_runtime.h"

{consts}
static const tt_mhsa_dims {fn}_dims = {{
  .seq = {s}, .embed = {e}, .heads = {h}, .proj = {p}, .out_features = {eo}}};
static const tt_mhsa_config {fn}_config = {{.rows_per_block = {rows}, .fuse_qk = {fuse}}};
{sparse_struct}/* scale multiplies Q.K^T (exported value {scale}); folded into wf/bf when fused. */
static const tt_mhsa_f32_params {fn}_params = {{
  {pointers},
  .scale = {scale_c}}};

int32_t {fn}(const void *const *args, void *const *outs, uint8_t *scratch,
             int32_t scratch_bytes);

/* AOT entry: args[0] = x [S][E], outs[0] = y [S][E_out]; scratch from the arena. */
int32_t {fn}(const void *const *args, void *const *outs, uint8_t *scratch,
             int32_t scratch_bytes) {{
{call}
}}
"""

_SINGLE_CALL = """\
  return (int32_t)tt_mhsa_f32(&{fn}_dims, &{fn}_config, &{fn}_params, (const float *)args[0],
                              (float *)outs[0], (float *)(void *)scratch, scratch_bytes);"""

_CLUSTER_CALL = """\
  return (int32_t)tt_mhsa_f32_cluster(&{fn}_dims, &{fn}_config, &{fn}_params,
                                      (const float *)args[0], (float *)outs[0],
                                      (float *)(void *)scratch, scratch_bytes, {cores});"""
