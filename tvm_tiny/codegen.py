"""The tvm_tiny code generator, registered with TVM as ``relax.ext.tvm_tiny``.

``RunCodegen`` hands it the offloaded functions; for each it writes one C translation unit: the
kernel's weights (re-arranged offline, fused for FWSA when chosen) as aligned ``static const``
arrays, the parameter structs, and a thin entry ``tvmtiny_<model>_<symbol>`` that the AOT entry
point calls with input/output pointers and a scratch region of the arena. Kernel bodies are never
copied per model: the instance calls the library kernel (``codegen/mhsa/tt_mhsa_f32.c``).

Composite → emitter table: one entry per ``tvm_tiny.<op>`` composite (naming contract of
``patterns.py``; a test checks the two agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from .cformat import c_identifier, const_array
from .errors import CodegenError
from .mhsa import MhsaDescriptor, describe_mhsa, offloaded_symbol
from .mhsa_weights import (
    SPARSE_FIELDS,
    KernelConfig,
    cluster_scratch_bytes,
    scratch_bytes,
    stored_arrays_f32,
    stored_params_bytes,
)
from .patterns import LINEAR_SPARSE_COMPOSITE, MHSA_COMPOSITE, MHSA_S8_COMPOSITE
from .sparse_format import CsrMatrix

CONST_ALIGNMENT = 16
_PARAM_FIELDS = ("wq", "bq", "wk", "bk", "wf", "bf", "wv", "bv", "wo", "bo")
_LAYOUTS = {
    "wq": "[H][P][E]", "wk": "[H][P][E]", "wv": "[H][P][E]", "bq": "[H][P]", "bk": "[H][P]",
    "bv": "[H][P]", "wf": "[H][E][E] = scale * Wq_h Wk_h^T (transposed)", "bf": "[H][E]",
    "wo": "[H][E_out][P]", "bo": "[E_out]",
}


@dataclass(frozen=True)
class GeneratedKernel:
    """One emitted kernel instance and the facts the build reports about it."""

    symbol: str
    c_function: str
    source: str
    scratch_bytes: int
    params_bytes: int
    library_sources: tuple[str, ...]
    cluster_forks: int = 0  # forks per call on a multi-core cluster (0: single core)
    # Storage of each weight matrix (MHSA float32): field -> format, nnz, dense and stored bytes.
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)


def kernel_function_name(model: str, symbol: str) -> str:
    """C name of the instance entry (model-prefixed so models can share a firmware)."""
    return f"tvmtiny_{c_identifier(model)}_{symbol}"


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


from .codegen_linear import describe_linear, emit_linear_sparse_f32  # noqa: E402
from .codegen_s8 import emit_mhsa_s8  # noqa: E402 - needs GeneratedKernel defined above

# (descriptor, kernel config or None, model, config source, cores) -> kernel
Emitter = Callable[[Any, Any, str, str, int], GeneratedKernel]
EMITTERS: dict[tuple[str, str], Emitter] = {
    (MHSA_COMPOSITE, "float32"): emit_mhsa_f32,
    (MHSA_S8_COMPOSITE, "int8"): emit_mhsa_s8,
    (LINEAR_SPARSE_COMPOSITE, "float32"): emit_linear_sparse_f32,
}
"""(composite, dtype) → emitter; every pattern in ``patterns.tiny_patterns`` has an entry."""


@dataclass(frozen=True)
class CodegenOptions:
    """Options ``RunCodegen`` passes to ``relax.ext.tvm_tiny`` (as one JSON string)."""

    model: str
    configs: dict[str, dict[str, object]]  # symbol -> {"rows_per_block", "fuse_qk", "source"}
    cores: int = 1  # cores the MHSA heads are split across (the board's cluster)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> CodegenOptions:
        data = json.loads(text)
        return CodegenOptions(data["model"], data["configs"], int(data.get("cores", 1)))


def generate_kernel(func: tvm.relax.Function, options: CodegenOptions) -> GeneratedKernel:
    """Emit the C instance of one offloaded function (pure: same inputs, same bytes)."""
    from .partition import composite_name

    symbol = offloaded_symbol(func)
    composite = composite_name(func)
    if composite == LINEAR_SPARSE_COMPOSITE:
        linear = describe_linear(func, symbol)
        return EMITTERS[(composite, linear.dtype)](linear, None, options.model, "n/a",
                                                   options.cores)
    if composite not in (MHSA_COMPOSITE, MHSA_S8_COMPOSITE):
        raise CodegenError(f"'{symbol}': no tvm_tiny emitter for composite {composite!r}")
    desc = describe_mhsa(func, symbol)
    chosen = options.configs.get(symbol)
    if chosen is None:
        weights = desc.weights if desc.dtype == "float32" else None
        config, source = KernelConfig.default_for(desc.shape, weights), "default"
    else:
        config = KernelConfig(int(chosen["rows_per_block"]), bool(chosen["fuse_qk"]),
                              bool(chosen.get("sparse", True)))
        source = str(chosen.get("source", "options"))
    key = (composite, desc.dtype)
    if key not in EMITTERS:
        raise CodegenError(f"'{symbol}': no tvm_tiny emitter for {composite} {desc.dtype}")
    emitter = EMITTERS[key]
    return emitter(desc, config, options.model, source, options.cores)


@tvm_ffi.register_global_func("relax.ext.tvm_tiny")
def _relax_ext_tvm_tiny(funcs: list, options: dict, constant_names: dict) -> list:
    """BYOC entry: one C source module per offloaded function (``CSourceModuleCreate``)."""
    del constant_names  # weights are emitted into the kernel source itself
    parsed = CodegenOptions.from_json(str(options["options"])) if "options" in options else \
        CodegenOptions("model", {})
    create = tvm.get_global_func("runtime.CSourceModuleCreate")
    modules = []
    for func in funcs:
        kernel = generate_kernel(func, parsed)
        modules.append(create(kernel.source, "c", [kernel.symbol], []))
    return modules


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
