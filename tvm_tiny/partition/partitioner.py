"""``partition_for_tiny``: mark every MHSA of a Relax module for the tvm_tiny code generator.

The passes, in order:

1. fold constants, except the int8 weights of QDQ graphs (``qdq.py``: the matcher reads them);
2. rewrite every proved attention into its canonical chain behind a proof mark
   (``canonicalize.py``, ``proof_mark.py``);
3. fold the int8 weights no canonical int8 chain nor int8 linear layer reads (those of rejected
   attentions and of the rest of the graph), so that what TVM receives is folded exactly as
   ``FoldConstant`` folds it;
4. fuse by the ``tvm_tiny.*`` patterns of TVM's registry (``patterns.py``);
5. remove the proof marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax
from tvm.relax.backend.pattern_registry import get_patterns_with_prefix

from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.native_log import quiet_take_fast_mode
from tvm_tiny.ir.relax_compat import is_constant, static_shape, tensor_dtype
from tvm_tiny.partition.bindings import bindings_of
from tvm_tiny.partition.canonicalize import CanonicalizeSelfAttention
from tvm_tiny.partition.patterns import (
    CODEGEN_NAME,
    CONV_S8_COMPOSITE,
    LINEAR_S8_COMPOSITE,
    LINEAR_SPARSE_COMPOSITE,
    MHSA_COMPOSITES,
    PATTERN_PREFIX,
    kept_int8_weights,
)
from tvm_tiny.partition.proof_mark import RemoveProofMarks, count_marks, unclaimed_marks
from tvm_tiny.partition.qdq import FoldConstantExceptInt8Weights, int8_matmul_weights
from tvm_tiny.partition.split_dequantize import SplitSharedDequantize

__all__ = ["CODEGEN_NAME", "PartitionReport", "composite_name", "conv_s8_functions",
           "linear_s8_functions", "mhsa_functions", "offloaded_functions", "partition_for_tiny",
           "sparse_linear_functions"]


@dataclass
class PartitionReport:
    """What the partitioner did: offloaded function names and the near misses it left to TVM."""

    offloaded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def every_int8_weight(func: relax.Function) -> list[relax.Var]:
    """The vars bound to ``dequantize(int8 constant of rank >= 2)``: every int8 weight matrix or
    kernel, kept for the integer rules (``partition_for_tiny(..., keep_int8_weights=True)``).
    Biases and scalars fold as before: the attention matcher reads them as float constants."""
    return [var for var, value in bindings_of(func)
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
            and value.op.name == "relax.dequantize" and is_constant(value.args[0])
            and tensor_dtype(value.args[0]) == "int8"
            and len(static_shape(value.args[0]) or ()) >= 2]


def int8_conv_weights(func: relax.Function) -> list[relax.Var]:
    """The vars bound to ``dequantize(4-D int8 constant)`` read only as a ``conv2d`` weight: kept
    by the first fold (as the matmul weights are) so the ``tvm_tiny.conv_s8`` pattern can read
    their integers; the refold folds those it does not take."""
    users: dict[relax.Var, list[relax.Expr]] = {}
    for _, value in bindings_of(func):
        if isinstance(value, relax.Call):
            for arg in value.args:
                if isinstance(arg, relax.Var):
                    users.setdefault(arg, []).append(value)
    return [var for var in every_int8_weight(func)
            if len(static_shape(var) or ()) == 4 and users.get(var) and all(
                isinstance(u.op, tvm.ir.Op) and u.op.name == "relax.nn.conv2d"
                and u.args[1].same_as(var) and not u.args[0].same_as(var)
                for u in users[var])]


def _matmul_and_conv_weights(func: relax.Function) -> list[relax.Var]:
    return int8_matmul_weights(func) + int8_conv_weights(func)


def partition_for_tiny(mod: tvm.IRModule, report: PartitionReport | None = None, *,
                       sparse: bool = True, keep_int8_weights: bool = False) -> tvm.IRModule:
    """Partition ``mod``: each multi-head self-attention becomes a ``Codegen="tvm_tiny"`` function.

    Like ``partition_for_cmsisnn`` / ``partition_for_tensorrt``: normalize, match, outline
    (the module docstring lists the passes). The patterns come from TVM's registry, highest
    priority first (``get_patterns_with_prefix("tvm_tiny.")``).

    Parameters
    ----------
    mod
        A Relax module whose weights are bound as constants (``from_onnx`` with
        ``keep_params_in_input=False``, or ``relax.transform.BindParams`` first) and whose shapes
        are static.
    report
        Optional; filled with the offloaded function names and the reason each near miss
        (masked or cross-attention, shared weights, leaked intermediates, batch > 1) stayed
        with TVM.
    sparse
        Offload pruned linear layers (``tvm_tiny.linear``: MatMul [+ Add] outside attention with
        a constant weight smaller stored row-compressed) to the sparse kernel; ``False`` leaves
        them to TVM, dense.
    keep_int8_weights
        Leave every int8 weight as ``dequantize(int8 constant)`` instead of folding it to float
        (for ``integerize.IntegerizeQDQ``, which reads the integers; ``FoldConstant`` after it
        folds those it left fake-quant).

    Returns
    -------
    The module with one function ``tvm_tiny_mhsa_<i>`` (attributes ``Codegen="tvm_tiny"`` and
    ``global_symbol``) per offloaded MHSA, each wrapping a ``Composite="tvm_tiny.mhsa"`` function.

    Examples
    --------
    >>> mod = tvm_tiny.partition_for_tiny(mod)
    >>> [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.startswith("tvm_tiny")]
    ['tvm_tiny_mhsa_0']
    """
    original = mod
    canonicalize = CanonicalizeSelfAttention()
    # FoldConstant legalizes every call to see whether it folds, so TVM logs its "Fast mode"
    # warning once per Gather-made take; that line alone is dropped (tvm_tiny.ir.native_log).
    with quiet_take_fast_mode():
        mod = tvm.transform.Sequential([
            FoldConstantExceptInt8Weights(
                every_int8_weight if keep_int8_weights else _matmul_and_conv_weights),
            canonicalize,
            FoldConstantExceptInt8Weights(
                every_int8_weight if keep_int8_weights else kept_int8_weights, refold=True),
            relax.transform.DeadCodeElimination(),
            SplitSharedDequantize(),
        ])(mod)
    patterns = [p for p in get_patterns_with_prefix(PATTERN_PREFIX)
                if sparse or p.name != LINEAR_SPARSE_COMPOSITE]
    mod = relax.transform.FuseOpsByPattern(patterns, bind_constants=True,
                                           annotate_codegen=True)(mod)
    rejected = list(canonicalize.rejections)
    unclaimed = unclaimed_marks(mod, offloaded_functions(mod))
    if unclaimed:
        # A canonicalized region no pattern claimed would run as the canonical chain, whose
        # rounding can differ from the exported graph's: keep the model as it was instead.
        rejected.append(
            f"internal: {unclaimed} of {count_marks(mod)} canonicalized attention(s) not "
            "matched by the tvm_tiny patterns; the whole model is left to TVM")
        mod, names = original, []
    else:
        mod, names = _rename_offloaded(RemoveProofMarks()(mod))
    if report is not None:
        report.offloaded.extend(names)
        report.rejected.extend(rejected)
    return mod


def offloaded_functions(mod: tvm.IRModule) -> list[tvm.ir.GlobalVar]:
    """GlobalVars of the functions marked for the tvm_tiny code generator, in call order."""
    marked = [gv for gv, f in mod.functions.items()
              if isinstance(f, relax.Function) and f.attrs is not None
              and f.attrs.get("Codegen") == CODEGEN_NAME]
    order = {}
    if "main" in [gv.name_hint for gv in mod.get_global_vars()]:
        for block in mod["main"].body.blocks:
            for binding in block.bindings:
                value = binding.value
                if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
                    order.setdefault(value.op.name_hint, len(order))
    return sorted(marked, key=lambda gv: (order.get(gv.name_hint, len(order)), gv.name_hint))


def composite_function(func: relax.Function) -> relax.Function | None:
    """The function carrying a ``Composite`` attribute: ``func`` itself, or the one an offloaded
    wrapper holds (as a binding or as the callee of one), else None. Every kernel family reads
    its composite back through this one walk."""
    if func.attrs is not None and func.attrs.get("Composite") is not None:
        return func
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Function):
                return composite_function(value)
            if isinstance(value, relax.Call) and isinstance(value.op, relax.Function):
                return composite_function(value.op)
    return None


def composite_of(func: relax.Function, *names: str) -> relax.Function:
    """:func:`composite_function`, required to be one of the composites ``names``."""
    found = composite_function(func)
    if found is None or str(found.attrs["Composite"]) not in names:
        raise CodegenError(f"offloaded function holds no {' or '.join(map(repr, names))} "
                           "composite function")
    return found


def composite_name(func: relax.Function) -> str | None:
    """The ``Composite`` attribute of the function an offloaded wrapper holds (or of ``func``)."""
    found = composite_function(func)
    return None if found is None else str(found.attrs["Composite"])


def mhsa_functions(mod: tvm.IRModule) -> list[tvm.ir.GlobalVar]:
    """The offloaded functions holding an MHSA composite (float or int8), in call order."""
    return [gv for gv in offloaded_functions(mod) if composite_name(mod[gv]) in MHSA_COMPOSITES]


def sparse_linear_functions(mod: tvm.IRModule) -> list[tvm.ir.GlobalVar]:
    """The offloaded functions holding a ``tvm_tiny.linear`` composite, in call order."""
    return [gv for gv in offloaded_functions(mod)
            if composite_name(mod[gv]) == LINEAR_SPARSE_COMPOSITE]


def linear_s8_functions(mod: tvm.IRModule) -> list[tvm.ir.GlobalVar]:
    """The offloaded functions holding a ``tvm_tiny.linear_s8`` composite, in call order."""
    return [gv for gv in offloaded_functions(mod)
            if composite_name(mod[gv]) == LINEAR_S8_COMPOSITE]


def conv_s8_functions(mod: tvm.IRModule) -> list[tvm.ir.GlobalVar]:
    """The offloaded functions holding a ``tvm_tiny.conv_s8`` composite, in call order."""
    return [gv for gv in offloaded_functions(mod)
            if composite_name(mod[gv]) == CONV_S8_COMPOSITE]


_SHORT_NAMES = {LINEAR_SPARSE_COMPOSITE: "tvm_tiny_linear",
                LINEAR_S8_COMPOSITE: "tvm_tiny_linear_s8",
                CONV_S8_COMPOSITE: "tvm_tiny_conv_s8"}


def _rename_offloaded(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[str]]:
    """Give offloaded functions short, readable names (``tvm_tiny_mhsa_0`` …): they become C
    symbols, and the pattern-derived names are hundreds of characters long."""
    old = offloaded_functions(mod)
    if not old:
        return mod, []
    builder = relax.BlockBuilder()
    mapping = {}
    counters: dict[str, int] = {}
    for gv in old:
        prefix = _SHORT_NAMES.get(composite_name(mod[gv]) or "", "tvm_tiny_mhsa")
        i = counters[prefix] = counters.get(prefix, -1) + 1
        name = f"{prefix}_{i}"
        mapping[gv] = builder.add_func(mod[gv].with_attr("global_symbol", name), name)

    @relax.expr_functor.mutator
    class _Renamer(relax.PyExprMutator):
        def visit_global_var_(self, op: tvm.ir.GlobalVar) -> relax.Expr:
            return mapping.get(op, op)

    for gv, func in mod.functions.items():
        if gv in mapping:
            continue
        if isinstance(func, relax.Function):
            func = _Renamer().visit_expr(func)
        builder.add_func(func, gv.name_hint)
    new_mod = builder.get()
    if mod.attrs is not None:
        new_mod = new_mod.with_attrs(mod.attrs)
    return new_mod, [gv.name_hint for gv in mapping.values()]
