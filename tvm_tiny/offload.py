"""Offload stage of ``build``: partition, choose kernel configs, run our code generator once.

Order: :func:`partition_for_tiny` marks the functions; each is read once into its descriptor;
``tuning.apply`` chooses every MHSA's config; ``RunCodegen`` calls ``relax.ext.tvm_tiny``
(:mod:`tvm_tiny.codegen.ext`) once per function, with a :class:`CodegenSession` carrying the
descriptors and choices in and the generated kernels out, and replaces each call by
``call_dps_packed(<symbol>)``. The C sources TVM holds in ``external_mods`` are the ones the AOT
compiles (checked), and nothing is generated beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax

from tvm_tiny.codegen.conv_s8 import ConvS8Descriptor, metadata_entry_conv_s8
from tvm_tiny.codegen.ext import CodegenSession, describe_function
from tvm_tiny.codegen.kernel import GeneratedKernel
from tvm_tiny.codegen.linear import LinearDescriptor, metadata_entry
from tvm_tiny.codegen.linear_s8 import LinearS8Descriptor, metadata_entry_s8
from tvm_tiny.integerize.driver import IntegerizeQDQ, IOQuantization, make_io_int8
from tvm_tiny.integerize.quantize import lower_input_quantizes
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.kernel_config import KernelChoice
from tvm_tiny.ir.mhsa import MhsaShape, unfused_params_bytes
from tvm_tiny.ir.native_log import quiet_take_fast_mode
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.lower.aot import ExternKernel
from tvm_tiny.partition.describe import MhsaDescriptor, composite_of, offloaded_symbol
from tvm_tiny.partition.partitioner import (
    PartitionReport,
    conv_s8_functions,
    linear_s8_functions,
    mhsa_functions,
    partition_for_tiny,
    sparse_linear_functions,
)
from tvm_tiny.targets.boards import Board
from tvm_tiny.tuning.apply import kernel_configs
from tvm_tiny.tuning.task import Workload


@dataclass
class OffloadResult:
    """The module with every offloaded call lowered to ``call_dps_packed``, and what went where.

    ``mhsa`` holds one ``metadata["offloaded"]`` entry per MHSA, ``sparse_linear`` one
    ``metadata["sparse_linear"]`` record per pruned linear layer, ``externs`` the kernel instances
    the AOT calls, ``library_sources`` the kernel library files they need (relative to
    ``kernels/``), ``rejected`` why attentions that were not offloaded stayed with TVM, and
    ``composites`` the standalone Relax function of each MHSA (for the layer-wise comparison)
    and ``f32_choices`` the kernel choice of each float32 MHSA (they share one kernel variant).
    """

    module: tvm.IRModule
    mhsa: list[dict[str, Any]] = field(default_factory=list)
    sparse_linear: list[dict[str, Any]] = field(default_factory=list)
    linear_s8: list[dict[str, Any]] = field(default_factory=list)  # one per int8 linear layer
    conv_s8: list[dict[str, Any]] = field(default_factory=list)  # one per int8 convolution
    externs: dict[str, ExternKernel] = field(default_factory=dict)
    library_sources: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    composites: dict[str, relax.Function] = field(default_factory=dict)
    f32_choices: dict[str, KernelChoice] = field(default_factory=dict)
    not_integerized: list[str] = field(default_factory=list)
    io: IOQuantization | None = None


def _kernel_choices(descriptors: dict[str, MhsaDescriptor], profile: Board,
                    tuning_log: str | None, sparse: bool,
                    scratch_limit: int | None = None) -> dict[str, KernelChoice]:
    """The best tuning record per (board, workload): from ``tuning_log``, else the shipped
    ``tuning_logs/<board>.jsonl``, else the board default (:mod:`tvm_tiny.tuning.apply`).
    ``sparse=False`` forces every MHSA's weights dense (the default then ignores pruning)."""
    workloads, weights = {}, {}
    for symbol, desc in descriptors.items():
        # Without sparse storage a pruned layer runs as a dense one: same workload, same records.
        workloads[symbol] = Workload.of_layer(desc.shape, desc.dtype,
                                              desc.weights if sparse else None)
        if desc.dtype == DType.FLOAT32 and sparse:
            weights[symbol] = desc.weights
    applied = kernel_configs(workloads, profile.name, tuning_log, weights, scratch_limit)
    choices = {symbol: a.choice for symbol, a in applied.items()}
    if not sparse:
        for symbol, choice in choices.items():
            dense = type(choice.config)(choice.config.rows_per_block, choice.config.fuse_qk,
                                        sparse=False)
            choices[symbol] = KernelChoice(dense, choice.variant, choice.origin)
    return choices


def _unfused_bytes(shape: MhsaShape, dtype: str, has_biases: bool) -> int:
    """Q/K/V/O weights (and biases) as the model stores them: float32, or int8 with int32 biases."""
    if dtype != DType.INT8:
        return unfused_params_bytes(shape, with_biases=has_biases)
    h, p, e, e_out = shape.heads, shape.proj, shape.embed, shape.out_features
    biases = 4 * (3 * h * p + e_out) if has_biases else 0
    return 3 * e * h * p + h * p * e_out + biases


def _mhsa_entry(desc: MhsaDescriptor, choice: KernelChoice, kernel: GeneratedKernel,
                cores: int) -> dict[str, Any]:
    """``metadata["offloaded"][i]``: shape, kernel config, bytes before and after fusion, peak."""
    shape, config, variant = desc.shape, choice.config, choice.variant
    element = 1 if desc.dtype == DType.INT8 else 4
    io_bytes = element * shape.seq * (shape.embed + shape.out_features)
    entry: dict[str, Any] = {
        "name": kernel.symbol, "function": kernel.c_function,
        "seq": shape.seq, "embed": shape.embed, "heads": shape.heads, "proj": shape.proj,
        "out_features": shape.out_features, "dtype": str(desc.dtype), "macs": shape.macs,
        "kernel": {"rows_per_block": config.rows_per_block, "fuse_qk": config.fuse_qk,
                   "source": str(choice.origin), "tile": variant.tile.name,
                   "fma": variant.fma, "sparse": config.sparse},
        "params_bytes": kernel.params_bytes,
        "weights": kernel.weights,
        "dense_params_bytes": kernel.params_bytes + sum(
            w["dense_bytes"] - w["stored_bytes"] for w in kernel.weights.values()),
        "unfused_params_bytes": _unfused_bytes(shape, desc.dtype, desc.weights.bq is not None),
        "scratch_bytes": kernel.scratch_bytes,
        "peak_bytes": kernel.scratch_bytes + io_bytes,
    }
    if kernel.cluster_forks:
        # The emulator labels each core's window per fork from this record.
        entry["cluster"] = {"cores": cores, "active_cores": min(cores, shape.heads),
                            "forks": kernel.cluster_forks}
    return entry


def integerize(mod: tvm.IRModule, int8_io: bool = False
               ) -> tuple[tvm.IRModule, list[str], IOQuantization | None]:
    """``IntegerizeQDQ`` on a partitioned module, then (``int8_io``) int8 inputs and outputs,
    the float inputs' quantizes as integer code, then the fold of the int8 weights left
    fake-quant: (module, not integerized, I/O params)."""
    integerizer = IntegerizeQDQ()
    mod = integerizer(mod)
    io = None
    if int8_io:
        io = IOQuantization()
        mod = make_io_int8(mod, io)
    mod, _ = lower_input_quantizes(mod)  # the float inputs left: quantized ties-to-even
    # Fold ``main`` alone: the offloaded functions are canonical chains their emitters read.
    main = mod.get_global_var("main")
    with quiet_take_fast_mode():
        folded = relax.transform.FoldConstant()(tvm.IRModule({main: mod[main]}))
    mod = mod.clone()
    mod[main] = folded[main]
    return mod, integerizer.not_integerized, io


def offload(mod: tvm.IRModule, model: str, profile: Board, tuning_log: str | None = None,
            sparse: bool = True, provenance: Provenance = UNKNOWN, *,
            integer: bool = False, int8_io: bool = False,
            scratch_limit: int | None = None) -> OffloadResult:
    """Partition ``mod`` and generate the C of every offloaded kernel, once each.

    Every matched MHSA becomes a ``tvm_tiny.mhsa`` / ``tvm_tiny.mhsa_s8`` kernel (config applied
    from ``tuning_log`` and the shipped logs, see :func:`_kernel_choices`), and with ``sparse``
    every pruned linear layer that is smaller row-compressed a ``tvm_tiny.linear`` kernel.
    With ``integer`` the QDQ regions left are rewritten into integer Relax (:func:`integerize`;
    ``int8_io``: ``main`` takes and returns int8). ``scratch_limit``: tuning records whose MHSA
    scratch is larger do not apply (the build's memory budget, see ``build``).
    """
    report = PartitionReport()
    mod = partition_for_tiny(mod, report, sparse=sparse, keep_int8_weights=integer)
    not_integerized: list[str] = []
    io = None
    if integer:
        mod, not_integerized, io = integerize(mod, int8_io)
    mhsa_gvs = mhsa_functions(mod)
    linear_gvs = sparse_linear_functions(mod) + linear_s8_functions(mod) + conv_s8_functions(mod)
    mhsa_symbols = [offloaded_symbol(mod[gv]) for gv in mhsa_gvs]
    linear_symbols = [offloaded_symbol(mod[gv]) for gv in linear_gvs]
    descriptors = {symbol: describe_function(mod[gv], symbol)
                   for gv, symbol in zip(mhsa_gvs + linear_gvs, mhsa_symbols + linear_symbols)}
    mhsa_descs = {s: d for s, d in descriptors.items() if isinstance(d, MhsaDescriptor)}
    session = CodegenSession(model, profile.cluster_cores,
                             _kernel_choices(mhsa_descs, profile, tuning_log, sparse,
                                             scratch_limit),
                             dict(descriptors), provenance=provenance)
    composites = {symbol: standalone_composite(mod[gv])
                  for gv, symbol in zip(mhsa_gvs, mhsa_symbols)}
    try:
        mod = relax.transform.RunCodegen({"tvm_tiny": session.options()})(mod)
    except Exception:  # noqa: BLE001 - the FFI retypes our error; give the user the original
        if session.failure is not None:
            raise session.failure from None
        raise
    result = OffloadResult(mod, rejected=report.rejected, composites=composites,
                           not_integerized=not_integerized, io=io)
    for symbol in mhsa_symbols + linear_symbols:
        kernel = session.generated.get(symbol)
        if kernel is None:
            raise CodegenError(f"RunCodegen did not generate the kernel of '{symbol}'")
        result.externs[symbol] = ExternKernel(symbol, kernel.c_function, kernel.scratch_bytes,
                                              kernel.source)
        result.library_sources.extend(s for s in kernel.library_sources
                                      if s not in result.library_sources)
        desc = descriptors[symbol]
        if isinstance(desc, LinearDescriptor):
            result.sparse_linear.append(metadata_entry(desc, kernel))
        elif isinstance(desc, LinearS8Descriptor):
            result.linear_s8.append(metadata_entry_s8(desc, kernel))
        elif isinstance(desc, ConvS8Descriptor):
            result.conv_s8.append(metadata_entry_conv_s8(desc, kernel))
        else:
            choice = session.choices[symbol]
            result.mhsa.append(_mhsa_entry(desc, choice, kernel, profile.cluster_cores))
            if desc.dtype == DType.FLOAT32:
                result.f32_choices[symbol] = choice
    _check_external_modules(mod, result.externs)
    return result


def conv_s8_params_bytes(entries: list[dict[str, Any]]) -> int:
    """Flash bytes of the int8 convolutions: each instance's own arrays, plus each weight array
    once however many instances share it (``metadata["conv_s8"][i]["shared_weights"]``)."""
    shared = {e["shared_weights"]["symbol"]: e["shared_weights"]["bytes"] for e in entries}
    return sum(e["params_bytes"] for e in entries) + sum(shared.values())


def standalone_composite(func: relax.Function) -> relax.Function:
    """The MHSA of an offloaded wrapper as a standalone ``main`` (what TVM alone would compile)."""
    composite = composite_of(func)
    standalone = relax.Function(composite.params, composite.body, composite.ret_ty)
    return standalone.with_attrs({"global_symbol": "main", "num_input": 1})


def _check_external_modules(mod: tvm.IRModule, externs: dict[str, ExternKernel]) -> None:
    """The sources TVM got from ``relax.ext.tvm_tiny`` are the ones the AOT will compile."""
    ext_mods = mod.attrs.get("external_mods", []) if mod.attrs is not None else []
    sources = {m.inspect_source() for m in ext_mods}
    for kernel in externs.values():
        if kernel.source not in sources:
            raise CodegenError(f"RunCodegen did not produce the source of '{kernel.symbol}'")
