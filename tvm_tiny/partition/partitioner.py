"""``partition_for_tiny``: mark every MHSA of a Relax module for the tvm_tiny code generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from tvm_tiny.partition.canonicalize import CanonicalizeSelfAttention
from tvm_tiny.partition.patterns import LINEAR_SPARSE_COMPOSITE, MHSA_COMPOSITES, tiny_patterns
from tvm_tiny.partition.qdq import QuantizedConstants

CODEGEN_NAME = "tvm_tiny"


@dataclass
class PartitionReport:
    """What the partitioner did: offloaded function names and the near misses it left to TVM."""

    offloaded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def partition_for_tiny(mod: tvm.IRModule, report: PartitionReport | None = None, *,
                       sparse: bool = True) -> tvm.IRModule:
    """Partition ``mod``: each multi-head self-attention becomes a ``Codegen="tvm_tiny"`` function.

    Like ``partition_for_cmsisnn`` / ``partition_for_tensorrt``: normalize, match, outline.

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
    # int8 weights of QDQ graphs, recorded before FoldConstant turns them into float constants.
    canonicalize = CanonicalizeSelfAttention(QuantizedConstants.collect(mod))
    mod = tvm.transform.Sequential([
        relax.transform.FoldConstant(),
        canonicalize,
        relax.transform.DeadCodeElimination(),
    ])(mod)
    mod = relax.transform.FuseOpsByPattern(
        tiny_patterns(canonicalize.is_approved, sparse), bind_constants=True,
        annotate_codegen=True
    )(mod)
    mod, names = _rename_offloaded(mod)
    rejected = list(canonicalize.rejections)
    mhsa_names = [gv.name_hint for gv in mhsa_functions(mod)]
    if len(mhsa_names) != len(canonicalize.approved):
        # A canonicalized region no pattern claimed would run as the canonical chain, whose
        # rounding can differ from the exported graph's: keep the model as it was instead.
        rejected.append(
            f"internal: {len(canonicalize.approved)} attention(s) canonicalized but "
            f"{len(mhsa_names)} matched by the tvm_tiny patterns; the whole model is left to TVM")
        mod, names = original, []
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


def composite_name(func: relax.Function) -> str | None:
    """The ``Composite`` attribute of the function an offloaded wrapper holds (or of ``func``)."""
    if func.attrs is not None and func.attrs.get("Composite") is not None:
        return str(func.attrs["Composite"])
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Function):
                return composite_name(value)
            if isinstance(value, relax.Call) and isinstance(value.op, relax.Function):
                return composite_name(value.op)
    return None


def mhsa_functions(mod: tvm.IRModule) -> list[tvm.ir.GlobalVar]:
    """The offloaded functions holding an MHSA composite (float or int8), in call order."""
    return [gv for gv in offloaded_functions(mod) if composite_name(mod[gv]) in MHSA_COMPOSITES]


def sparse_linear_functions(mod: tvm.IRModule) -> list[tvm.ir.GlobalVar]:
    """The offloaded functions holding a ``tvm_tiny.linear`` composite, in call order."""
    return [gv for gv in offloaded_functions(mod)
            if composite_name(mod[gv]) == LINEAR_SPARSE_COMPOSITE]


_SHORT_NAMES = {LINEAR_SPARSE_COMPOSITE: "tvm_tiny_linear"}


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
