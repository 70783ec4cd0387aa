"""Lower the part of the graph that stays with TVM: Relax → fused PrimFuncs → C via ``tirx.build``.

Order matters: the tvm_tiny regions are already replaced by ``call_dps_packed`` (``RunCodegen``)
when this runs, so TVM never sees the attention it would lower layer-wise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from tvm_tiny.ir.cformat import c_define
from tvm_tiny.ir.errors import LoweringError
from tvm_tiny.ir.native_log import quiet_take_fast_mode
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.lower.inline import InlineSingleUseElementwise
from tvm_tiny.lower.workspace import WorkspaceRecorder, workspace_bytes

# TVM's C code generator leaves shape/stride locals and packed-ABI parameters unused. We compile
# with -Wall -Wextra -Werror everywhere, so TVM's translation unit opens by silencing exactly those
# two warnings; everything else stays an error. The #defines give the TVM backend functions the
# TIR calls model-prefixed names (defined in the model's .c on its own context, lower/aot.py):
# TVMBackendAllocWorkspace has no context argument, and the rename is what keeps two models of
# one firmware apart. They precede TVM's #includes so its declarations are renamed alike.
_TVM_C_PREAMBLE = """\
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#endif
{renames}

/* TVM's code below is as TVM printed it. */
/* clang-format off */
"""


BACKEND_FUNCTIONS = ("TVMBackendAllocWorkspace", "TVMBackendFreeWorkspace",
                     "TVMFFIErrorSetRaisedFromCStr", "TVMFFIErrorSetRaisedFromCStrParts")
"""The TVM backend functions TIR C may call; each model defines its own (``lower/aot.py``)."""
LIBRARY_CONTEXT = "__tvm_ffi__library_ctx"
"""The module-context pointer TVM's C code generator defines in every TIR source (NULL; our TIR
never reads it); model-prefixed too, or two models' TIR sources would not link together."""


@dataclass(frozen=True)
class LoweredModel:
    """The lowered Relax ``main`` plus TVM's C source for the PrimFuncs it calls."""

    module: tvm.IRModule
    tir_c_source: str
    tir_symbols: dict[str, str]  # PrimFunc name -> exported C symbol (without the ffi prefix)
    # PrimFunc name -> TVMBackendAllocWorkspace bytes, from the TIR (lower/workspace.py)
    workspace_bytes: dict[str, int] = field(default_factory=dict)


def fuse_and_plan(mod: tvm.IRModule, inline_single_use: bool = False) -> tvm.IRModule:
    """Legalize and fuse the remaining Relax ops, then plan memory statically.

    ``default_build_pipeline`` does not fuse on its own (see the 0.27 notes), so LegalizeOps,
    AnnotateTIROpPattern, FoldConstant, FuseOps and FuseTIR run first. StaticPlanBlockMemory in
    the default pipeline then turns every intermediate into a static storage token, which is what
    the AOT emitter reads. LegalizeOps prints TVM's "Fast mode segfaults" warning once per
    ``relax.take`` of an ONNX ``Gather`` (see :mod:`tvm_tiny.ir.native_log`); that one line is
    kept from the user, nothing else. ``inline_single_use`` inlines the single-use steps of each
    fused function (:mod:`tvm_tiny.lower.inline`; every build that offloads).
    """
    seq = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            *([InlineSingleUseElementwise()] if inline_single_use else []),
            relax.transform.DeadCodeElimination(),
            relax.pipeline.default_build_pipeline(),
        ]
    )
    with tvm.transform.PassContext(opt_level=3), quiet_take_fast_mode():
        return seq(mod)


def _rename_primfuncs(mod: tvm.IRModule, prefix: str) -> tuple[tvm.IRModule, dict[str, str]]:
    """Give every PrimFunc a model-unique C symbol so two models can link into one firmware."""
    symbols: dict[str, str] = {}
    updates = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            symbol = f"{prefix}_{gv.name_hint}"
            symbols[gv.name_hint] = symbol
            updates[gv] = func.with_attr("global_symbol", symbol)
    for gv, func in updates.items():
        mod[gv] = func
    return mod, symbols


def build_tir_to_c(mod: tvm.IRModule, target: tvm.target.Target, prefix: str,
                   provenance: Provenance = UNKNOWN) -> LoweredModel:
    """Compile the PrimFuncs of a lowered module to one C source with TVM's C code generator.

    Runtime asserts are disabled (``tirx.disable_assert``): shapes are checked once by the
    generated entry point and the AOT emitter builds every DLTensor itself. The source opens
    with ``provenance``'s header.
    """
    mod, symbols = _rename_primfuncs(mod, prefix)
    tir_funcs = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    if not tir_funcs:
        return LoweredModel(mod, "", {})
    tir_mod = tvm.IRModule(tir_funcs)
    recorder = WorkspaceRecorder()
    try:
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True},
                                       instruments=[recorder]):
            built = tvm.tirx.build(tir_mod, target=target)
    except Exception as err:  # TVM raises TVMError subclasses; name the stage and re-raise
        raise LoweringError(f"TVM's TIR-to-C build failed for target {target}: {err}") from err
    if len(recorder.modules) != 1:
        raise LoweringError(f"expected one LowerTVMBuiltin run in tirx.build, saw "
                            f"{len(recorder.modules)}: TVM's pipeline changed")
    header = provenance.c_comment(
        "TIR kernels of this model, printed by TVM's C code generator (tirx.build, target "
        f"\"{target.kind.name}\").", ["TVM's packed-ABI prologue leaves some shape locals and "
                                    "parameters unused; the pragmas below silence exactly that."])
    renames = "\n".join(c_define(name, f"{prefix}_{name}")
                        for name in (*BACKEND_FUNCTIONS, LIBRARY_CONTEXT))
    preamble = header + _TVM_C_PREAMBLE.format(renames=renames)
    return LoweredModel(mod, preamble + built.inspect_source(), symbols,
                        workspace_bytes(recorder.modules[0]))
