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
from tvm_tiny.ir.cformat import (
    CONTINUATION_INDENT,
    c_comment,
    c_declaration,
    c_float,
    const_array,
    designated,
    format_call,
    format_signature,
    real_text,
)
from tvm_tiny.ir.mhsa import (
    SPARSE_FIELDS,
    KernelConfig,
    MhsaWeights,
    cluster_scratch_bytes,
    scratch_bytes,
    stored_arrays_f32,
    stored_params_bytes,
)
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.ir.sparse import CsrMatrix
from tvm_tiny.partition.describe import MhsaDescriptor

_PARAM_FIELDS = ("wq", "bq", "wk", "bk", "wf", "bf", "wv", "bv", "wo", "bo")
_LAYOUTS = {
    "wq": "[H][P][E]", "wk": "[H][P][E]", "wv": "[H][P][E]", "bq": "[H][P]", "bk": "[H][P]",
    "bv": "[H][P]", "wf": "[H][E][E] = scale * Wq_h Wk_h^T (transposed)", "bf": "[H][E]",
    "wo": "[H][E_out][P]", "bo": "[E_out]",
}


def emit_mhsa_f32(desc: MhsaDescriptor, config: KernelConfig, model: str,
                  config_source: str, cores: int = 1,
                  provenance: Provenance = UNKNOWN) -> GeneratedKernel:
    """C source of one float32 MHSA instance calling ``tt_mhsa_f32``, or, on a cluster of
    ``cores`` > 1 cores, ``tt_mhsa_f32_cluster`` (heads split across the cores)."""
    shape = desc.shape
    fn = kernel_function_name(model, desc.symbol)
    arrays, compressed = stored_arrays_f32(desc.weights, shape, config)
    origins = _origins(desc.weights, provenance)
    consts = [
        const_array(f"{fn}_{name}", arrays[name], CONST_ALIGNMENT,
                    f"{name} {_LAYOUTS[name]}; {origins[name]}")
        for name in _PARAM_FIELDS if name in arrays
    ]
    sparse_consts, sparse_struct = _sparse_f32(fn, compressed, origins)
    consts.extend(sparse_consts)
    pointers = [(name, f"{fn}_{name}" if name in arrays else "NULL") for name in _PARAM_FIELDS]
    pointers.append(("sparse", f"&{fn}_sparse" if compressed else "NULL"))
    pointers.append(("scale", c_float(desc.weights.scale)))
    call_args = [f"&{fn}_dims", f"&{fn}_config", f"&{fn}_params", "(const float *)args[0]",
                 "(float *)outs[0]", "(float *)(void *)scratch", "scratch_bytes"]
    if cores > 1:
        scratch = cluster_scratch_bytes(shape, config, cores)
        call = format_call("return (int32_t)tt_mhsa_f32_cluster", [*call_args, str(cores)],
                           indent=2)
        library: tuple[str, ...] = ("mhsa/tt_mhsa_f32.c", "mhsa/tt_mhsa_f32_cluster.c",
                                    "port/tt_cluster_serial.c")
        where = (f"heads split across {cores} cluster cores; scratch = "
                 "tt_mhsa_f32_cluster_get_buffer_size")
    else:
        scratch = scratch_bytes(shape, config)
        call = format_call("return (int32_t)tt_mhsa_f32", call_args, indent=2)
        library = ("mhsa/tt_mhsa_f32.c",)
        where = "one core; scratch = tt_mhsa_f32_get_buffer_size"
    fused = "Q and K fused offline (FWSA)" if config.fuse_qk else "Q and K unfused"
    header = provenance.c_comment(
        f"tvm_tiny offloaded MHSA '{desc.symbol}' of model '{model}'.", [
            f"Shape: S={shape.seq} E={shape.embed} H={shape.heads} P={shape.proj} "
            f"E_out={shape.out_features}, float32. {fused}.",
            f"Kernel config: rows_per_block={config.rows_per_block} fuse_qk="
            f"{int(config.fuse_qk)} sparse={int(config.sparse)} (from: {config_source}).",
            f"Weight storage: {_storage_comment(compressed)}.",
            f"Depth-first: one head's K/V and one block of {config.rows_per_block} score rows "
            f"live at a time; {where}: {scratch} bytes, taken from the model arena."])
    params_c = ["const void *const *args", "void *const *outs", "uint8_t *scratch",
                "int32_t scratch_bytes"]
    source = _MHSA_F32_TEMPLATE.format(
        header=header, fn=fn, consts="\n".join(consts), sparse_struct=sparse_struct,
        dims=c_declaration("static const tt_mhsa_dims", f"{fn}_dims = {{"),
        dims_fields=designated([("seq", str(shape.seq)), ("embed", str(shape.embed)),
                                ("heads", str(shape.heads)), ("proj", str(shape.proj)),
                                ("out_features", str(shape.out_features))]),
        config=c_declaration("static const tt_mhsa_config", f"{fn}_config = {{"),
        config_fields=designated([("rows_per_block", str(config.rows_per_block)),
                                  ("fuse_qk", str(int(config.fuse_qk)))]),
        params=c_declaration("static const tt_mhsa_f32_params", f"{fn}_params = {{"),
        params_fields=designated(pointers),
        scale_comment=c_comment(
            f"scale multiplies Q.K^T: {real_text(desc.weights.scale)} (float32 of the model's "
            f"{c_float(desc.weights.scale, single=False)}); folded into wf/bf when fused."),
        declaration=format_signature(f"int32_t {fn}", params_c),
        definition=format_signature(f"int32_t {fn}", params_c, " {"), call=call,
    )
    # Fork 1 splits the heads over the cores; fork 2 (only when more than one core has heads)
    # adds their partial outputs.
    forks = 0 if cores <= 1 else (2 if min(cores, shape.heads) > 1 else 1)
    return GeneratedKernel(desc.symbol, fn, source, scratch,
                           stored_params_bytes(arrays, compressed), library, forks,
                           weights_storage(arrays, compressed))


def _origins(weights: MhsaWeights, provenance: Provenance) -> dict[str, str]:
    """Per stored field, the ONNX initializer(s) it is arranged from (recoverable names only)."""
    def of(*names: str) -> str:
        parts = []
        for name in names:
            value = getattr(weights, name)
            if value is not None:
                parts.append(f"{name.upper()} from {provenance.describe_constant(value)}")
        return "; ".join(parts)

    return {"wq": of("wq"), "bq": of("bq"), "wk": of("wk"), "bk": of("bk"),
            "wf": of("wq", "wk"), "bf": of("bq", "wk"), "wv": of("wv"), "bv": of("bv"),
            "wo": of("wo"), "bo": of("bo")}


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


def _sparse_f32(fn: str, compressed: dict[str, CsrMatrix], origins: dict[str, str]
                ) -> tuple[list[str], str]:
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
            f"row_ptr[r] .. row_ptr[r+1]-1; {origins[name]}"))
        if m.nnz:  # an all-zero matrix stores no indices nor values (NULL pointers)
            consts.append(const_array(f"{base}_col_idx", m.col_idx, CONST_ALIGNMENT,
                                      f"{name} column of each nonzero"))
            consts.append(const_array(f"{base}_values", m.values, CONST_ALIGNMENT,
                                      f"{name} nonzero weights"))
        idx, val = (f"{base}_col_idx", f"{base}_values") if m.nnz else ("NULL", "NULL")
        inner = designated([("row_ptr", f"{base}_row_ptr"), ("col_idx", idx),
                            ("values", val)], 3 * CONTINUATION_INDENT)
        members.append(f"    .{name} =\n        {{\n{inner}\n        }},")
    decl = c_declaration("static const tt_mhsa_f32_sparse", f"{fn}_sparse = {{")
    struct = f"{decl}\n" + "\n".join(members) + "\n};\n"
    return consts, struct


def _storage_comment(compressed: dict[str, CsrMatrix]) -> str:
    if not compressed:
        return "all weights dense"
    parts = [f"{name} CSR {100.0 * m.nnz / (m.rows * m.cols):.0f}% dense"
             for name, m in compressed.items()]
    return "pruned weights row-compressed: " + ", ".join(parts)


_MHSA_F32_TEMPLATE = """\
{header}#include <math.h> /* NAN/INFINITY, should a weight hold them */
#include <stddef.h>
#include <stdint.h>

#include "tt_mhsa.h"
#include "tvm_tiny/tt_runtime.h"

{consts}
{dims}
{dims_fields}
}};
{config}
{config_fields}
}};
{sparse_struct}{scale_comment}
{params}
{params_fields}
}};

{declaration}

/* AOT entry: args[0] = x [S][E], outs[0] = y [S][E_out]; scratch from the arena. */
{definition}
{call}
}}
"""
