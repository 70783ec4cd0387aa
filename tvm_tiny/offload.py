"""Offload stage of ``build``: partition, run our code generator, and describe the kernels.

``RunCodegen`` calls ``relax.ext.tvm_tiny`` (``codegen.py``) for every ``Codegen="tvm_tiny"``
function and replaces its calls by ``call_dps_packed(<symbol>)``; the C source modules it returns
land in the module attribute ``external_mods``, from which the AOT takes the sources.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax

from .aot import ExternKernel
from .boards import Board
from .codegen import CodegenOptions, generate_kernel
from .errors import CodegenError
from .mhsa import offloaded_symbol
from .mhsa_weights import KernelConfig, unfused_params_bytes
from .partition import PartitionReport, offloaded_functions, partition_for_tiny


def _kernel_configs(mod: tvm.IRModule) -> dict[str, dict[str, object]]:
    """Board defaults for now; tuning logs (issue #6) will be consulted first."""
    from .mhsa import describe_mhsa

    configs = {}
    for gv in offloaded_functions(mod):
        symbol = offloaded_symbol(mod[gv])
        config = KernelConfig.default_for(describe_mhsa(mod[gv], symbol).shape)
        configs[symbol] = {"rows_per_block": config.rows_per_block,
                           "fuse_qk": config.fuse_qk, "source": "default"}
    return configs


def offload_mhsa(mod: tvm.IRModule, model: str, profile: Board
                 ) -> tuple[tvm.IRModule, list[dict[str, Any]], dict[str, ExternKernel],
                            list[str], list[str]]:
    """Partition ``mod`` and generate C for every offloaded MHSA.

    Returns the module with offloaded calls lowered to ``call_dps_packed``, the metadata entry of
    each offloaded MHSA, the extern kernels for the AOT, the kernel library sources they need and
    the reasons attentions that were not offloaded stayed with TVM.
    """
    report = PartitionReport()
    mod = partition_for_tiny(mod, report)
    cores = profile.cluster_cores
    options = CodegenOptions(model, _kernel_configs(mod), cores)
    entries: list[dict[str, Any]] = []
    externs: dict[str, ExternKernel] = {}
    library: list[str] = []
    for gv in offloaded_functions(mod):
        func = mod[gv]
        kernel = generate_kernel(func, options)
        from .mhsa import describe_mhsa

        desc = describe_mhsa(func, kernel.symbol)
        externs[kernel.symbol] = ExternKernel(kernel.symbol, kernel.c_function,
                                              kernel.scratch_bytes, kernel.source)
        library.extend(s for s in kernel.library_sources if s not in library)
        shape, config = desc.shape, options.configs[kernel.symbol]
        io_bytes = 4 * shape.seq * (shape.embed + shape.out_features)
        has_biases = desc.weights.bq is not None
        entries.append({
            "name": kernel.symbol, "function": kernel.c_function,
            "seq": shape.seq, "embed": shape.embed, "heads": shape.heads, "proj": shape.proj,
            "out_features": shape.out_features, "dtype": desc.dtype, "macs": shape.macs,
            "kernel": {"rows_per_block": config["rows_per_block"],
                       "fuse_qk": bool(config["fuse_qk"]), "source": config["source"]},
            "params_bytes": kernel.params_bytes,
            "unfused_params_bytes": unfused_params_bytes(shape, with_biases=has_biases),
            "scratch_bytes": kernel.scratch_bytes,
            "peak_bytes": kernel.scratch_bytes + io_bytes,
            "layerwise_peak_bytes": layerwise_peak_bytes(func, model, profile),
        })
        if cores > 1:
            # Fork 1 splits the heads over the cores; fork 2 (when more than one core has
            # heads) adds their partial outputs. The emulator labels each core's window.
            active = min(cores, shape.heads)
            entries[-1]["cluster"] = {"cores": cores, "active_cores": active,
                                      "forks": 2 if active > 1 else 1}
    mod = relax.transform.RunCodegen({"tvm_tiny": {"options": options.to_json()}})(mod)
    _check_external_modules(mod, externs)
    return mod, entries, externs, library, report.rejected


def layerwise_peak_bytes(func: relax.Function, model: str, profile: Board) -> int:
    """Peak working memory of one MHSA compiled layer-wise by TVM alone (same AOT planner).

    The offloaded composite is compiled as a model of its own, so the figure is measured the same
    way as ours: arena (planned intermediates + TIR workspace) plus the input and output tensors.
    """
    from .aot import emit_aot
    from .lower import build_tir_to_c, fuse_and_plan
    from .mhsa import _composite_of

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
