"""The float input's ``quantize`` as onnxruntime computes it, in a few instructions per element.

After :class:`~tvm_tiny.integerize.driver.IntegerizeQDQ` the only float op left in an integer
graph with float inputs is the quantize of each input. TVM legalizes ``R.quantize`` to
``round(x / scale)``: a call of the C library's ``roundf`` per element (88 instructions per
element on the Cortex-M4, 1% of int8 EEGFormer and 6% of the Deeploy attention), and rounding
ties away from zero where onnxruntime's QuantizeLinear rounds them to even.

:func:`lower_input_quantizes` writes each per-tensor int8 input quantize as plain Relax:
``y = x / scale`` (float32, as onnxruntime divides), clamped to ±1024 (beyond the int8 range
either way, and inside int32), truncated to int32 by C's conversion, then corrected to the
nearest integer, ties to even, by comparing the exact remainder ``y - trunc(y)`` with ±0.5;
plus the zero point, saturated. It is one TE expression (a PrimFunc of its own in the module,
called by ``call_tir``), which TVM fuses and compiles like the rest. The golden model is
:func:`tvm_tiny.reference.integer.quantize_half_even`.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.quant import QParams
from tvm_tiny.ir.relax_compat import constant_value, is_constant
from tvm_tiny.partition.bindings import bindings_of

CLAMP = 1024.0
"""|x / scale| is clamped here before the conversion to int32: far outside [-128, 127] after
any zero point, so the saturated result is unchanged."""


def quantize_half_even_te(x: te.Tensor, scale: te.Tensor, qp: QParams) -> te.Tensor:
    """``quantize(x, qp)`` for a per-tensor int8 ``qp``, rounding ties to even (module doc), as
    one elementwise expression: TVM's common-subexpression pass keeps ``y``, ``t`` and the
    remainder in registers, where Relax ops would hold each in a buffer of its own.

    ``scale`` is ``qp.scale`` as a float32 [1] tensor, not an immediate: TVM's C code generator
    prints float immediates with 7 significant digits (``3.315521e-02f`` for 0.033155214), and
    the quotient of a rounded scale lands on the other side of a rounding boundary now and then.
    A constant tensor is printed by tvm_tiny's AOT, exactly."""
    f32, i32 = "float32", "int32"
    lo, hi = qp.range

    def element(*index: tirx.PrimExpr) -> tirx.PrimExpr:
        y = tirx.max(tirx.min(x[index] / scale[0], tirx.const(CLAMP, f32)),
                     tirx.const(-CLAMP, f32))
        t = tirx.Cast(i32, y)  # C's conversion: toward zero
        rest = y - tirx.Cast(f32, t)  # exact: |y| < 2^23, |rest| < 1
        odd = t % 2 != 0  # truncated modulo: -1 for odd negatives
        half, one, zero = tirx.const(0.5, f32), tirx.const(1, i32), tirx.const(0, i32)
        up = tirx.Select(tirx.any(rest > half, tirx.all(rest == half, odd)), one, zero)
        down = tirx.Select(tirx.any(rest < -half, tirx.all(rest == -half, odd)), one, zero)
        q = t + up - down + tirx.const(qp.zero_point, i32)
        return tirx.Cast(str(qp.dtype), tirx.max(tirx.min(q, tirx.const(hi, i32)),
                                                 tirx.const(lo, i32)))

    return te.compute(x.shape, element, name="quantize_half_even")


def _input_qparams(call: relax.Call, params: set[relax.Var]) -> QParams | None:
    """The QParams of ``quantize(param)`` to int8 with one scale and zero point, else None."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == "relax.quantize" and call.args[0] in params):
        return None
    scale, zero = call.args[1], call.args[2]
    if not (is_constant(scale) and is_constant(zero)) or str(call.attrs.out_dtype) != "int8":
        return None
    s, z = constant_value(scale), constant_value(zero)
    if s.size != 1 or z.size != 1:
        return None
    return QParams(float(s.reshape(-1)[0]), int(z.reshape(-1)[0]), DType.INT8)


@relax.expr_functor.mutator
class _InputQuantizeLowerer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, params: set[relax.Var]) -> None:
        super().__init__(mod)
        self.params = params
        self.lowered = 0

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        qp = _input_qparams(binding.value, self.params)
        if qp is None:
            super().visit_var_binding_(binding)
            return
        x = self.visit_expr(binding.value.args[0])
        scale = relax.const(np.array([qp.scale], np.float32))
        new = self.builder_.emit_te(lambda t, s: quantize_half_even_te(t, s, qp), x, scale,
                                    primfunc_name_hint="quantize_half_even")
        self.set_var_remap(binding.var, new)
        self.lowered += 1


def lower_input_quantizes(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` with every per-tensor int8 quantize of a ``main`` input lowered (module doc),
    and how many."""
    func = mod["main"]
    if not any(_input_qparams(v, set(func.params)) for _, v in bindings_of(func)):
        return mod, 0
    lowerer = _InputQuantizeLowerer(mod, set(func.params))
    main = mod.get_global_var("main")
    lowerer.builder_.update_func(main, lowerer.visit_expr(func))
    return lowerer.builder_.get(), lowerer.lowered
