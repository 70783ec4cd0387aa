"""Sparse float32 linear layers (composite ``tvm_tiny.linear`` → ``tt_linear_f32_csr``).

The partitioner offloads ``matmul(x, W) [+ b]`` only when the pruned constant ``W`` [K, N] is
smaller stored sparse (``patterns._check_linear_sparse``). :func:`describe_linear` reads the
composite back (same pattern, annotated constants); :func:`emit_linear_sparse_f32` writes W as CSR
by output column (``kernels/include/tt_linear.h`` says why that layout) and a thin AOT entry with
the ``ExternKernel`` calling convention (``args[0]`` = x, ``outs[0]`` = y, no scratch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax

from tvm_tiny.codegen.kernel import CONST_ALIGNMENT, GeneratedKernel, kernel_function_name
from tvm_tiny.ir.cformat import (
    c_declaration,
    const_array,
    designated,
    format_call,
    format_signature,
)
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape
from tvm_tiny.ir.sparse import csr_rows
from tvm_tiny.partition.partitioner import composite_of
from tvm_tiny.partition.patterns import (
    LINEAR_SPARSE_COMPOSITE,
    make_linear_sparse_pattern,
    sparse_stored_bytes,
)

LIBRARY_SOURCES = ("linear/tt_linear_f32_csr.c",)


@dataclass(frozen=True)
class LinearDescriptor:
    """One offloaded sparse linear layer: y[R, N] = x[R, K] W[K, N] (+ b[N])."""

    symbol: str
    rows: int
    in_features: int
    out_features: int
    weight: np.ndarray  # [K, N] float32, pruned
    bias: np.ndarray | None  # [N] float32
    dtype: str = "float32"

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weight))

    @property
    def dense_bytes(self) -> int:
        """Weight and bias stored dense, as TVM keeps them."""
        bias = 0 if self.bias is None else 4 * self.out_features
        return 4 * self.in_features * self.out_features + bias

    @property
    def stored_bytes(self) -> int:
        """Weight as CSR by output column plus the dense bias (what the kernel instance holds)."""
        bias = 0 if self.bias is None else 4 * self.out_features
        return sparse_stored_bytes(self.nnz, self.in_features, self.out_features) + bias


def describe_linear(func: relax.Function, symbol: str) -> LinearDescriptor:
    """The :class:`LinearDescriptor` of an offloaded ``tvm_tiny.linear`` function."""
    composite = composite_of(func, LINEAR_SPARSE_COMPOSITE)
    var2val = {b.var: b.value for block in composite.body.blocks for b in block.bindings}
    pattern, annotations = make_linear_sparse_pattern()
    result = composite.body.body
    root = var2val.get(result, result)
    matched = pattern.extract_matched_expr(root, var2val)
    if matched is None:
        raise CodegenError(f"'{symbol}' is not a tvm_tiny.linear chain")
    w_expr = matched[annotations["w"]]
    b_expr = matched.get(annotations["b"])
    if not is_constant(w_expr) or (b_expr is not None and not is_constant(b_expr)):
        raise CodegenError(f"'{symbol}': weight or bias is not a constant")
    x_shape = static_shape(matched[annotations["x"]])
    weight = constant_value(w_expr).astype(np.float32)
    if x_shape is None or weight.ndim != 2 or x_shape[-1] != weight.shape[0]:
        raise CodegenError(f"'{symbol}': linear shapes are not static [..., K] x [K, N]")
    bias = None if b_expr is None else constant_value(b_expr).astype(np.float32).reshape(-1)
    k, n = weight.shape
    return LinearDescriptor(symbol, int(math.prod(x_shape[:-1])), int(k), int(n), weight, bias)


def csr_by_output(weight: np.ndarray) -> dict[str, np.ndarray]:
    """W [K, N] as CSR of W^T: ``col_ptr`` [N+1] int32, ``k_idx`` [nnz] (uint16 when K < 65536,
    else int32) ascending within each output, ``values`` [nnz] float32."""
    csr = csr_rows(np.asarray(weight).T)
    return {"col_ptr": csr.row_ptr, "k_idx": csr.col_idx, "values": csr.values}


def metadata_entry(desc: LinearDescriptor, kernel: GeneratedKernel) -> dict[str, Any]:
    """The ``metadata["sparse_linear"]`` record of one layer."""
    size = desc.in_features * desc.out_features
    return {
        "name": desc.symbol, "function": kernel.c_function, "format": "csr_by_output",
        "rows": desc.rows, "in_features": desc.in_features, "out_features": desc.out_features,
        "dtype": desc.dtype, "nnz": desc.nnz, "density": desc.nnz / size,
        "index_bytes": 2 if desc.in_features < 65536 else 4,
        "dense_bytes": desc.dense_bytes, "stored_bytes": desc.stored_bytes,
        "params_bytes": kernel.params_bytes, "macs": desc.rows * desc.nnz,
    }


def emit_linear_sparse_f32(desc: LinearDescriptor, config: object, model: str,
                           config_source: str, cores: int = 1,
                           provenance: Provenance = UNKNOWN) -> GeneratedKernel:
    """C source of one sparse linear instance calling ``tt_linear_f32_csr`` (``config``,
    ``config_source`` and ``cores`` are the MHSA emitters' arguments; unused: one core, no
    tunable knobs)."""
    del config, config_source, cores
    fn = kernel_function_name(model, desc.symbol)
    csr = csr_by_output(desc.weight)
    wide = csr["k_idx"].dtype == np.int32
    arrays = {"col_ptr": csr["col_ptr"]}
    origin = f"W [K][N] from {provenance.describe_constant(desc.weight)}"
    consts = [
        const_array(f"{fn}_col_ptr", csr["col_ptr"], CONST_ALIGNMENT,
                    "col_ptr [N+1]: nonzeros of output n are col_ptr[n] .. col_ptr[n+1]-1; "
                    + origin),
    ]
    if desc.nnz:  # an all-zero weight stores no values nor indices (NULL pointers)
        arrays["values"] = csr["values"]
        consts.append(const_array(f"{fn}_values", csr["values"], CONST_ALIGNMENT,
                                  "values [nnz] = W[k][n]"))
        arrays["k_idx"] = csr["k_idx"]
        consts.append(const_array(f"{fn}_k_idx", csr["k_idx"], CONST_ALIGNMENT,
                                  "k_idx [nnz]: input index k of each value"))
    if desc.bias is not None:
        arrays["bias"] = desc.bias
        consts.append(const_array(f"{fn}_bias", desc.bias, CONST_ALIGNMENT,
                                  f"bias [N], {provenance.describe_constant(desc.bias)}"))
    idx16 = f"{fn}_k_idx" if desc.nnz and not wide else "NULL"
    idx32 = f"{fn}_k_idx" if desc.nnz and wide else "NULL"
    bias = f"{fn}_bias" if desc.bias is not None else "NULL"
    values = f"{fn}_values" if desc.nnz else "NULL"
    params_bytes = int(sum(a.nbytes for a in arrays.values()))
    density = f"{100.0 * desc.nnz / (desc.in_features * desc.out_features):.1f}"
    header = provenance.c_comment(
        f"tvm_tiny offloaded sparse linear '{desc.symbol}' of model '{model}'.", [
            f"y[{desc.rows}][{desc.out_features}] = x[{desc.rows}][{desc.in_features}] "
            f"W[{desc.in_features}][{desc.out_features}] + b, float32; W pruned: {desc.nnz} "
            f"nonzeros ({density}%), stored as CSR by output column with "
            f"{'int32' if wide else 'uint16'} indices: {desc.stored_bytes} bytes (dense "
            f"{desc.dense_bytes} bytes). No scratch."])
    params_c = ["const void *const *args", "void *const *outs", "uint8_t *scratch",
                "int32_t scratch_bytes"]
    source = _LINEAR_TEMPLATE.format(
        header=header, fn=fn, r=desc.rows, k=desc.in_features, n=desc.out_features,
        consts="\n".join(consts),
        dims=c_declaration("static const tt_linear_dims", f"{fn}_dims = {{"),
        dims_fields=designated([("rows", str(desc.rows)), ("in_features", str(desc.in_features)),
                                ("out_features", str(desc.out_features))]),
        params=c_declaration("static const tt_linear_f32_csr_params", f"{fn}_params = {{"),
        params_fields=designated([("col_ptr", f"{fn}_col_ptr"), ("k_idx16", idx16),
                                  ("k_idx32", idx32), ("values", values), ("bias", bias),
                                  ("nnz", str(desc.nnz))]),
        declaration=format_signature(f"int32_t {fn}", params_c),
        definition=format_signature(f"int32_t {fn}", params_c, " {"),
        call=format_call("return (int32_t)tt_linear_f32_csr", [
            f"&{fn}_dims", f"&{fn}_params", "(const float *)args[0]", "(float *)outs[0]"],
            indent=2),
    )
    return GeneratedKernel(desc.symbol, fn, source, 0, params_bytes, LIBRARY_SOURCES)


_LINEAR_TEMPLATE = """\
{header}#include <math.h> /* NAN/INFINITY, should a weight hold them */
#include <stddef.h>
#include <stdint.h>

#include "tt_linear.h"
#include "tvm_tiny/tt_runtime.h"

{consts}
{dims}
{dims_fields}
}};
{params}
{params_fields}
}};

{declaration}

/* AOT entry: args[0] = x [{r}][{k}], outs[0] = y [{r}][{n}]; no scratch. */
{definition}
  (void)scratch;
  (void)scratch_bytes;
{call}
}}
"""
