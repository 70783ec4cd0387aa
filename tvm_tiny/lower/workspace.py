"""TIR workspace per PrimFunc, read from the TIR that TVM's C code generator prints.

``LowerTVMBuiltin`` (TVM's host finalization, run inside ``tirx.build``) decides which
allocations of a PrimFunc go to ``TVMBackendAllocWorkspace`` (CPU buffers above
``kMaxStackAlloca`` bytes) and which stay on the stack. :class:`WorkspaceRecorder` is a pass
instrument that keeps the module that pass returns, so the sizes come from the same TIR the C is
printed from: no reimplementation of TVM's rule and no parsing of the C text.
"""

from __future__ import annotations

from collections.abc import Iterator

import tvm

from tvm_tiny.ir.errors import LoweringError
from tvm_tiny.lower.memory import DEFAULT_ALIGNMENT, align_up

_LOWER_TVM_BUILTIN = "tirx.LowerTVMBuiltin"
_ALLOC_WORKSPACE = "tirx.TVMBackendAllocWorkspace"


@tvm.instrument.pass_instrument
class WorkspaceRecorder:
    """Pass instrument: ``modules`` receives what every ``LowerTVMBuiltin`` run returned.

    Use it in the ``PassContext`` of ``tvm.tirx.build``; it observes, it never changes a module.
    """

    def __init__(self) -> None:
        self.modules: list[tvm.IRModule] = []

    def run_after_pass(self, mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        if info.name == _LOWER_TVM_BUILTIN:
            self.modules.append(mod)


def _fields(node: object) -> Iterator[tuple[str, object]]:
    """(name, value) of every reflected field of a TVM FFI object, base classes included."""
    info = type(node).__tvm_ffi_type_info__
    while info is not None:
        for fld in info.fields:
            yield fld.name, getattr(node, fld.name)
        info = info.parent_type_info


def _workspace_calls(stmt: tvm.tirx.Stmt, out: list[tvm.ir.Call]) -> None:
    """Collect the ``TVMBackendAllocWorkspace`` calls bound by statements under ``stmt``.

    ``LowerTVMBuiltin`` binds each allocation to its buffer's data variable at statement level
    (``DeclBuffer``/``LetStmt``, possibly through a cast), so statements are walked and
    expressions are not: the walk stays linear in the number of statements.
    """
    for _, value in _fields(stmt):
        if isinstance(value, tvm.tirx.Stmt):
            _workspace_calls(value, out)
        elif isinstance(value, tvm.ir.Array) and len(value) and isinstance(value[0],
                                                                              tvm.tirx.Stmt):
            for item in value:
                _workspace_calls(item, out)
        else:
            while isinstance(value, tvm.tirx.Cast):
                value = value.value
            if isinstance(value, tvm.ir.Call) and isinstance(value.op, tvm.ir.Op) and \
                    value.op.name == _ALLOC_WORKSPACE:
                out.append(value)


def workspace_bytes(host_module: tvm.IRModule, alignment: int = DEFAULT_ALIGNMENT
                    ) -> dict[str, int]:
    """PrimFunc name → bytes of ``TVMBackendAllocWorkspace`` it may hold at once.

    The sum of every allocation of the function (each aligned as ``runtime_c`` aligns it) is an
    upper bound: TVM frees workspace LIFO and never allocates one buffer twice concurrently.
    Functions without workspace are left out.
    """
    result: dict[str, int] = {}
    for gv, func in host_module.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        calls: list[tvm.ir.Call] = []
        _workspace_calls(func.body, calls)
        sizes = []
        for call in calls:
            nbytes = call.args[2]
            if not isinstance(nbytes, tvm.tirx.IntImm):
                raise LoweringError(f"{gv.name_hint} allocates workspace of symbolic size "
                                    f"{nbytes}; tvm_tiny plans static sizes only")
            sizes.append(int(nbytes.value))
        if sizes:
            result[gv.name_hint] = sum(align_up(s, alignment) for s in sizes)
    return result
