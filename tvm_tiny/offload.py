"""Offload stage of ``build``: partition, run our code generator, and describe the kernels.

``RunCodegen`` calls ``relax.ext.tvm_tiny`` (``codegen.py``) for every ``Codegen="tvm_tiny"``
function and replaces its calls by ``call_dps_packed(<symbol>)``; the C source modules it returns
land in the module attribute ``external_mods``, from which the AOT takes the sources.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from tvm_tiny.codegen.ext import CodegenOptions, generate_kernel
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.mhsa import MhsaShape, unfused_params_bytes
from tvm_tiny.lower.aot import ExternKernel
from tvm_tiny.partition.describe import offloaded_symbol
from tvm_tiny.partition.partitioner import (
    PartitionReport,
    mhsa_functions,
    partition_for_tiny,
    sparse_linear_functions,
)
from tvm_tiny.targets.boards import Board


def _kernel_configs(mod: tvm.IRModule, profile: Board, tuning_log: str | None = None,
                    sparse: bool = True) -> dict[str, dict[str, object]]:
    """The best tuning record per (board, workload): from ``tuning_log``, else the shipped
    ``tuning_logs/<board>.jsonl``, else the board default (:mod:`tvm_tiny.tuning.apply`).
    ``sparse=False`` forces every MHSA's weights dense (the default then ignores pruning)."""
    from tvm_tiny.partition.describe import describe_mhsa
    from tvm_tiny.tuning.apply import kernel_configs
    from tvm_tiny.tuning.task import Workload

    workloads, weights = {}, {}
    for gv in mhsa_functions(mod):
        symbol = offloaded_symbol(mod[gv])
        desc = describe_mhsa(mod[gv], symbol)
        # Without sparse storage a pruned layer runs as a dense one: same workload, same records.
        workloads[symbol] = Workload.of_layer(desc.shape, desc.dtype,
                                              desc.weights if sparse else None)
        if desc.dtype == "float32" and sparse:
            weights[symbol] = desc.weights
    applied = kernel_configs(workloads, profile.name, tuning_log, weights)
    options = {symbol: a.as_options() for symbol, a in applied.items()}
    if not sparse:
        for chosen in options.values():
            chosen["sparse"] = False
    return options


def _unfused_bytes(shape: MhsaShape, dtype: str, has_biases: bool) -> int:
    """Q/K/V/O weights (and biases) as the model stores them: float32, or int8 with int32 biases."""
    if dtype != "int8":
        return unfused_params_bytes(shape, with_biases=has_biases)
    h, p, e, e_out = shape.heads, shape.proj, shape.embed, shape.out_features
    biases = 4 * (3 * h * p + e_out) if has_biases else 0
    return 3 * e * h * p + h * p * e_out + biases


def offload_mhsa(mod: tvm.IRModule, model: str, profile: Board, tuning_log: str | None = None,
                 sparse: bool = True
                 ) -> tuple[tvm.IRModule, list[dict[str, Any]], dict[str, ExternKernel],
                            list[str], list[str], list[dict[str, Any]]]:
    """Partition ``mod`` and generate C for every offloaded MHSA (kernel configs applied from
    ``tuning_log`` and the shipped logs, see :func:`_kernel_configs`).

    Returns the module with offloaded calls lowered to ``call_dps_packed``, the metadata entry of
    each offloaded MHSA, the extern kernels for the AOT, the kernel library sources they need and
    the reasons attentions that were not offloaded stayed with TVM, and the
    ``metadata["sparse_linear"]`` record of each pruned linear layer offloaded sparse (kept out
    of the MHSA entries, whose keys other code reads).
    """
    report = PartitionReport()
    mod = partition_for_tiny(mod, report, sparse=sparse)
    cores = profile.cluster_cores
    options = CodegenOptions(model, _kernel_configs(mod, profile, tuning_log, sparse), cores)
    entries: list[dict[str, Any]] = []
    externs: dict[str, ExternKernel] = {}
    library: list[str] = []
    for gv in mhsa_functions(mod):
        func = mod[gv]
        kernel = generate_kernel(func, options)
        from tvm_tiny.partition.describe import describe_mhsa

        desc = describe_mhsa(func, kernel.symbol)
        externs[kernel.symbol] = ExternKernel(kernel.symbol, kernel.c_function,
                                              kernel.scratch_bytes, kernel.source)
        library.extend(s for s in kernel.library_sources if s not in library)
        shape, config = desc.shape, options.configs[kernel.symbol]
        element = 1 if desc.dtype == "int8" else 4
        io_bytes = element * shape.seq * (shape.embed + shape.out_features)
        has_biases = desc.weights.bq is not None
        entries.append({
            "name": kernel.symbol, "function": kernel.c_function,
            "seq": shape.seq, "embed": shape.embed, "heads": shape.heads, "proj": shape.proj,
            "out_features": shape.out_features, "dtype": desc.dtype, "macs": shape.macs,
            "kernel": {"rows_per_block": config["rows_per_block"],
                       "fuse_qk": bool(config["fuse_qk"]), "source": config["source"],
                       "tile": config["tile"], "fma": bool(config["fma"]),
                       "sparse": bool(config.get("sparse", True))},
            "params_bytes": kernel.params_bytes,
            "weights": kernel.weights,
            "dense_params_bytes": kernel.params_bytes + sum(
                w["dense_bytes"] - w["stored_bytes"] for w in kernel.weights.values()),
            "unfused_params_bytes": _unfused_bytes(shape, desc.dtype, has_biases),
            "scratch_bytes": kernel.scratch_bytes,
            "peak_bytes": kernel.scratch_bytes + io_bytes,
            "layerwise_peak_bytes": layerwise_peak_bytes(func, model, profile),
        })
        if kernel.cluster_forks:
            # The emulator labels each core's window per fork from this record.
            entries[-1]["cluster"] = {"cores": cores, "active_cores": min(cores, shape.heads),
                                      "forks": kernel.cluster_forks}
    sparse = _offload_sparse_linear(mod, options, externs, library)
    mod = relax.transform.RunCodegen({"tvm_tiny": {"options": options.to_json()}})(mod)
    _check_external_modules(mod, externs)
    return mod, entries, externs, library, report.rejected, sparse


def _offload_sparse_linear(mod: tvm.IRModule, options: CodegenOptions,
                           externs: dict[str, ExternKernel], library: list[str]
                           ) -> list[dict[str, Any]]:
    """Generate every ``tvm_tiny.linear`` kernel; their metadata records."""
    from tvm_tiny.codegen.linear import describe_linear, metadata_entry

    records = []
    for gv in sparse_linear_functions(mod):
        kernel = generate_kernel(mod[gv], options)
        externs[kernel.symbol] = ExternKernel(kernel.symbol, kernel.c_function,
                                              kernel.scratch_bytes, kernel.source)
        library.extend(s for s in kernel.library_sources if s not in library)
        records.append(metadata_entry(describe_linear(mod[gv], kernel.symbol), kernel))
    return records


def layerwise_peak_bytes(func: relax.Function, model: str, profile: Board) -> int:
    """Peak working memory of one MHSA compiled layer-wise by TVM alone (same AOT planner).

    The offloaded composite is compiled as a model of its own, so the figure is measured the same
    way as ours: arena (planned intermediates + TIR workspace) plus the input and output tensors.
    """
    from tvm_tiny.lower.aot import emit_aot
    from tvm_tiny.lower.relax_to_c import build_tir_to_c, fuse_and_plan
    from tvm_tiny.partition.describe import _composite_of

    composite = _composite_of(func)
    standalone = relax.Function(composite.params, composite.body, composite.ret_ty)
    standalone = standalone.with_attrs({"global_symbol": "main", "num_input": 1})
    lowered = fuse_and_plan(tvm.IRModule({"main": standalone}))
    tir = build_tir_to_c(lowered, profile.tvm_target(), f"tvmtiny_{model}_layerwise")
    aot = emit_aot(tir.module["main"], f"{model}_layerwise", {}, tir.tir_symbols,
                   tir.tir_c_source)
    io_bytes = sum(t.nbytes for t in aot.inputs) + sum(t.nbytes for t in aot.outputs)
    return aot.arena_bytes + io_bytes


def _check_external_modules(mod: tvm.IRModule, externs: dict[str, ExternKernel]) -> None:
    """The sources TVM got from ``relax.ext.tvm_tiny`` are the ones the AOT will compile."""
    ext_mods = mod.attrs.get("external_mods", []) if mod.attrs is not None else []
    sources = {m.inspect_source() for m in ext_mods}
    for kernel in externs.values():
        if kernel.source not in sources:
            raise CodegenError(f"RunCodegen did not produce the source of '{kernel.symbol}'")
