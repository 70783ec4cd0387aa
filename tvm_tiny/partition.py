"""``partition_for_tiny``: mark every MHSA of a Relax module for the tvm_tiny code generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from .canonicalize import CanonicalizeSelfAttention
from .patterns import tiny_patterns
from .qdq import QuantizedConstants

CODEGEN_NAME = "tvm_tiny"


@dataclass
class PartitionReport:
    """What the partitioner did: offloaded function names and the near misses it left to TVM."""

    offloaded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def partition_for_tiny(mod: tvm.IRModule, report: PartitionReport | None = None) -> tvm.IRModule:
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
        tiny_patterns(canonicalize.is_approved), bind_constants=True, annotate_codegen=True
    )(mod)
    mod, names = _rename_offloaded(mod)
    rejected = list(canonicalize.rejections)
    if len(names) != len(canonicalize.approved):
        # A canonicalized region no pattern claimed would run as the canonical chain, whose
        # rounding can differ from the exported graph's: keep the model as it was instead.
        rejected.append(
            f"internal: {len(canonicalize.approved)} attention(s) canonicalized but "
            f"{len(names)} matched by the tvm_tiny patterns; the whole model is left to TVM")
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


def _rename_offloaded(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[str]]:
    """Give offloaded functions short, readable names (``tvm_tiny_mhsa_0`` …): they become C
    symbols, and the pattern-derived names are hundreds of characters long."""
    old = offloaded_functions(mod)
    if not old:
        return mod, []
    builder = relax.BlockBuilder()
    mapping = {}
    for i, gv in enumerate(old):
        name = f"tvm_tiny_mhsa_{i}"
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
