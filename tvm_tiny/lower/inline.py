"""``InlineSingleUseElementwise``: inline each fused step whose one consumer reads it once.

``FuseOps``/``FuseTIR`` join a chain of elementwise ops into one PrimFunc, but keep one block,
and one full-size buffer, per op. For an integer graph that is costly: a requantization alone is
seven steps (int64 cast, multiply, add, shift, add, clip, cast), so every int8 tensor briefly
exists as several int64 tensors, which become TIR workspace in the arena (int8 EEGFormer: the
arena grows from 127 KB to 242 KB). Inlining a block into its consumer removes its buffer.

Only a block whose single consumer reads its buffer exactly once, and whose buffer is no smaller
than the consumer's, is inlined. A per-row value broadcast into a per-element consumer (the
LayerNorm's reciprocal square root, an int64 division) would otherwise be recomputed for every
element (int8 EEGFormer's LayerNorm step: 205,396 QEMU instructions on the M4 so, 198,297
without). Inlining a value
read twice duplicates its computation (the integer square root's Newton steps read each
estimate twice, and inlining them grows the expression exponentially; TVM then takes minutes to
simplify it). TVM 0.27 has no Python TIR visitor, so the reads are counted in the consumer's
printed TIR (``name[`` occurrences of the buffer).

Runs after ``FuseTIR``, before the default build pipeline plans memory, in every build that
offloads (``build(..., offload=True)``, float and int8 alike: each output element is computed
by the same expression as before, so outputs do not change). ``offload=False``, the TVM-alone
baseline, keeps TVM's plain pipeline.
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir.dlight.analysis.common_analysis import normalize_prim_func


def _reads_once(sch: s_tir.Schedule, block_rv: s_tir.schedule.SBlockRV) -> bool:
    block = sch.get(block_rv)
    if len(block.writes) != 1:
        return False
    consumers = sch.get_consumers(block_rv)
    if len(consumers) != 1:
        return False
    consumer = sch.get(consumers[0])
    if _elements(block) < _elements(consumer):
        return False  # a broadcast ([S, 1] into [S, E]): inlining would redo it per element
    name = block.writes[0].source.name
    return str(consumer.body).count(f"{name}[") == 1


def _elements(block: s_tir.SBlock) -> int:
    """Elements of the one buffer a block writes (its iteration domain for a spatial block)."""
    count = 1
    for extent in block.writes[0].source.shape:
        count *= int(extent)
    return count


def inline_single_use(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """``func`` with every single-use block inlined into its consumer (see the module doc)."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return func
    for info in infos[:-1]:
        if not _reads_once(sch, info.block_rv):
            continue
        try:
            sch.compute_inline(info.block_rv)
        except s_tir.schedule.ScheduleError:  # not inlinable (a reduction, opaque): keep it
            continue
    return sch.mod["main"]


@tvm.transform.module_pass(opt_level=0, name="InlineSingleUseElementwise")
class InlineSingleUseElementwise:
    """See the module docstring."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc):
                inlined = inline_single_use(func)
                if func.attrs is not None:
                    inlined = inlined.with_attrs(func.attrs)
                mod[gv] = inlined
        return mod
