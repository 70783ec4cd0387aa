"""Integer LayerNorm, Softmax, pooling/mean and Conv rules: TVM-compiled code against the numpy
golden models (bit-exact) and against onnxruntime's QDQ semantics (steps).

Each case is a one-op QDQ ONNX model, int8 in and int8 out (``DequantizeLinear -> op ->
QuantizeLinear``). onnxruntime runs it with every graph optimization off (its reference QDQ
semantics: float op, round-half-even quantize). The same model goes through TVM's importer;
:func:`_match` reads the op's region out of the Relax ``main`` as the integerize driver does
(int8 activations as ``QTensor``, constants behind a dequantize as ``QConst``), the rule under
test rewrites it, and TVM compiles the result for the host ("llvm") and runs it in the VM.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import tvm_tiny.integerize.conv  # noqa: F401  (registers the rules under test)
import tvm_tiny.integerize.layernorm  # noqa: F401
import tvm_tiny.integerize.pool  # noqa: F401
import tvm_tiny.integerize.softmax  # noqa: F401
from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.integerize.rule import REGION_RULES, RULES, NotInteger, OpMatch, QConst, QTensor
from tvm_tiny.ir.quant import QParams
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape
from tvm_tiny.reference import integer_norm as golden

QDQ_OPS = ("relax.quantize", "relax.dequantize")


def _qp(scale: float, zero_point: int) -> QParams:
    """Quantization parameters as the model stores them (a float32 scale)."""
    return QParams(float(np.float32(scale)), zero_point)

# --- QDQ models and onnxruntime --------------------------------------------------------------


def _qdq_model(op: str, x_shape: list[int], y_shape: list[int], x: QParams, y: QParams,
               attrs: dict | None = None, consts: dict[str, np.ndarray] | None = None,
               qconsts: dict[str, tuple[np.ndarray, np.ndarray, int]] | None = None,
               ) -> onnx.ModelProto:
    """int8 ``x`` -> DequantizeLinear -> ``op`` -> QuantizeLinear -> int8 ``y``. ``consts`` are
    float initializers, ``qconsts`` integer ones behind a DequantizeLinear (values, scale,
    axis); the op reads its inputs in the order x, then ``qconsts``, then ``consts``."""
    inits = [numpy_helper.from_array(np.array(x.scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x.zero_point, np.int8), "xz"),
             numpy_helper.from_array(np.array(y.scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y.zero_point, np.int8), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"])]
    inputs = ["xf"]
    for name, (values, scale, axis) in (qconsts or {}).items():
        zero = np.zeros(scale.shape, values.dtype)
        inits += [numpy_helper.from_array(values, f"{name}_q"),
                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_s"),
                  numpy_helper.from_array(zero, f"{name}_z")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s",
                                                           f"{name}_z"], [name], axis=axis))
        inputs.append(name)
    for name, value in (consts or {}).items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        inputs.append(name)
    nodes += [helper.make_node(op, inputs, ["yf"], **(attrs or {})),
              helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.INT8, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT8, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model: onnx.ModelProto, q: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": q})[0]


# --- the driver's view of the region, and the VM ---------------------------------------------


def _qparams(call: relax.Call) -> QParams:
    scale = float(np.asarray(constant_value(call.args[1])).reshape(-1)[0])
    zero = int(np.asarray(constant_value(call.args[2])).reshape(-1)[0])
    return QParams(scale, zero)


def _match(mod: tvm.IRModule) -> tuple[OpMatch, relax.Var]:
    """The region between the input's dequantize and the output's quantize, as an OpMatch
    whose int8 input is a fresh parameter ``x``."""
    func = mod["main"]
    param = func.params[0]
    x_var = relax.Var("x", relax.TensorType(list(static_shape(param)), "int8"))
    leaves: dict[relax.Expr, object] = {}
    region: list[tuple[relax.Var, relax.Call]] = []
    output = None
    for binding in func.body.blocks[0].bindings:
        call, var = binding.value, binding.var
        if not isinstance(call, relax.Call):
            continue
        name = call.op.name
        if name == "relax.dequantize" and call.args[0].same_as(param):
            leaves[var] = QTensor(x_var, _qparams(call), static_shape(param))
        elif name == "relax.dequantize" and is_constant(call.args[0]):
            scale = np.asarray(constant_value(call.args[1]))
            leaves[var] = QConst(constant_value(call.args[0]), scale,
                                 np.asarray(constant_value(call.args[2])), int(call.attrs.axis),
                                 np.zeros(0, np.float32))
            q = leaves[var]
            real = np.asarray(scale, np.float64).reshape(
                [-1 if d == q.axis and scale.size > 1 else 1 for d in range(q.values.ndim)])
            leaves[var] = QConst(q.values, q.scale, q.zero_point, q.axis,
                                 (real * q.values).astype(np.float32))
        elif name == "relax.quantize":
            output = (_qparams(call), static_shape(var))
        elif name not in QDQ_OPS:
            for arg in call.args:
                if is_constant(arg):
                    leaves[arg] = constant_value(arg).astype(np.float64)
            region.append((var, call))
    assert output is not None and region
    last = region[-1][1]
    match = OpMatch(call=last, name=last.op.name, operands=tuple(leaves.get(a) for a in
                    last.args), output=output[0], output_shape=output[1], region=tuple(region),
                    leaves=leaves)
    return match, x_var


def _rule_for(match: OpMatch):
    return RULES[match.name] if len(match.region) == 1 else REGION_RULES[match.name]


def _run(model: onnx.ModelProto, q: np.ndarray) -> np.ndarray:
    """The rule's integer Relax for the model's op, compiled for the host and run on ``q``."""
    mod, _ = to_relax(model)
    match, x_var = _match(mod)
    bb = relax.BlockBuilder()
    with bb.function("main", [x_var]):
        with bb.dataflow():
            out = bb.emit_output(_rule_for(match)(match))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), "llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(q)).numpy()


def _steps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


def _check(model: onnx.ModelProto, q: np.ndarray, want: np.ndarray, max_steps: int = 1
           ) -> int:
    """TVM == golden bit for bit, golden within ``max_steps`` of onnxruntime; returns the
    steps."""
    got = _run(model, q)
    np.testing.assert_array_equal(got, want.astype(np.int8))
    steps = _steps(want, _ort(model, q))
    assert steps <= max_steps
    return steps


def _int8(rng: np.random.Generator, shape: list[int]) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8)


SCALES = st.floats(0.005, 0.2)
ZEROS = st.integers(-20, 20)
FAST = settings(max_examples=6, deadline=None)

# --- LayerNorm -----------------------------------------------------------------------------


def _layer_norm_case(seed: int, n: int, rows: int, xs: float, xz: int, ys: float, yz: int,
                     spread: int = 128):
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.2, 2.0, n) * rng.choice([-1, 1], n)
    beta = rng.uniform(-1, 1, n)
    x, y = _qp(xs, xz), _qp(ys, yz)
    model = _qdq_model("LayerNormalization", [rows, n], [rows, n], x, y,
                       {"axis": -1, "epsilon": 1e-5}, consts={"g": gamma, "b": beta})
    q = np.clip(rng.integers(-spread, spread, (rows, n)), -128, 127).astype(np.int8)
    p = golden.layer_norm_params(n, x, gamma.astype(np.float32), beta.astype(np.float32),
                                 np.float32(1e-5), y)
    return model, q, golden.layer_norm_s8(q, p)


@FAST
@given(seed=st.integers(0, 2**16), n=st.sampled_from([8, 17, 64]), xs=SCALES, xz=ZEROS,
       ys=st.floats(0.01, 0.05), yz=ZEROS)
def test_layer_norm(seed: int, n: int, xs: float, xz: int, ys: float, yz: int) -> None:
    model, q, want = _layer_norm_case(seed, n, 4, xs, xz, ys, yz)
    _check(model, q, want)


@pytest.mark.parametrize("spread", [1, 3, 128], ids=["flat", "narrow", "wide"])
def test_layer_norm_golden_against_onnxruntime(spread: int) -> None:
    """Many rows (near-constant ones included: the integer root's hardest case), golden
    only: within one step of onnxruntime."""
    worst = 0
    for seed in range(20):
        model, q, want = _layer_norm_case(seed, 32, 64, 0.05, 3, 0.03, -2, spread)
        worst = max(worst, _steps(want, _ort(model, q)))
    assert worst <= 1


def test_isqrt_is_the_floor() -> None:
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.integers(2**60, 2**62, 2000, dtype=np.int64),
                        np.array([2**60, 2**62 - 1, (2**31 - 1) ** 2, (2**30 + 7) ** 2 - 1],
                                 np.int64)])
    r = golden.isqrt_normalized(t)
    assert np.all(r * r <= t) and np.all((r + 1) * (r + 1) > t)
    k = golden.normalize_shift(np.array([1, 3, 4, 2**59, 2**60, 2**62 - 1], np.int64))
    assert k.tolist() == [30, 30, 29, 1, 0, 0]


def test_decomposed_layer_norm() -> None:
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add: one region, the same integers."""
    n, rows = 16, 6
    rng = np.random.default_rng(1)
    gamma, beta = rng.uniform(0.5, 1.5, n), rng.uniform(-0.5, 0.5, n)
    x, y = _qp(0.04, 5), _qp(0.03, -1)
    inits = [numpy_helper.from_array(np.array(v, dt), name) for name, v, dt in (
        ("xs", x.scale, np.float32), ("xz", x.zero_point, np.int8), ("ys", y.scale, np.float32),
        ("yz", y.zero_point, np.int8), ("two", 2.0, np.float32), ("eps", 1e-5, np.float32),
        ("g", gamma, np.float32), ("b", beta, np.float32))]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("ReduceMean", ["xf"], ["m"], axes=[-1]),
             helper.make_node("Sub", ["xf", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["nr"]),
             helper.make_node("Mul", ["nr", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "b"], ["yf"]),
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    graph = helper.make_graph(
        nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.INT8, [rows, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [rows, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = _int8(rng, [rows, n])
    p = golden.layer_norm_params(n, x, gamma.astype(np.float32), beta.astype(np.float32),
                                 np.float32(1e-5), y)
    _check(model, q, golden.layer_norm_s8(q, p))


def test_layer_norm_rejects_a_middle_axis() -> None:
    model = _qdq_model("LayerNormalization", [2, 4, 8], [2, 4, 8], _qp(0.05, 0),
                       _qp(0.05, 0), {"axis": 1}, consts={"g": np.ones((4, 8)),
                                                             "b": np.zeros((4, 8))})
    match, _ = _match(to_relax(model)[0])
    with pytest.raises(NotInteger, match="last axis"):
        RULES[match.name](match)


# --- Softmax -------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), n=st.sampled_from([3, 10, 100]), xs=st.floats(0.01, 0.3),
       xz=ZEROS)
def test_softmax(seed: int, n: int, xs: float, xz: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = _qp(xs, xz), _qp(1 / 256, -128)
    model = _qdq_model("Softmax", [4, n], [4, n], x, y, {"axis": -1})
    q = _int8(rng, [4, n])
    _check(model, q, golden.softmax_s8(q, golden.softmax_params(n, x, y)))


# --- pooling and mean ----------------------------------------------------------------------


POOLS = [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, _qp(0.05, 3)),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
     _qp(0.04, -2)),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
     _qp(0.04, -2)),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1],
                     "count_include_pad": 1}, _qp(0.03, 7)),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, _qp(0.05, 3)),
]


def _pool_golden(op: str, attrs: dict, q: np.ndarray, x: QParams, y: QParams,
                 out_hw: tuple[int, int]) -> np.ndarray:
    pool, strides = tuple(attrs["kernel_shape"]), tuple(attrs["strides"])
    pads = tuple(attrs.get("pads", [0, 0, 0, 0]))
    if op == "MaxPool":
        return golden.max_pool2d_s8(q, x, y, out_hw, pool, strides, (1, 1), pads)
    acc = golden.sum_pool2d_s8(q, x.zero_point, out_hw, pool, strides, (1, 1), pads)
    counts = golden.avg_pool_counts(q.shape[2:], out_hw, pool, strides, (1, 1), pads,
                                    bool(attrs.get("count_include_pad", 0)))
    return golden.requantize8(acc, x.scale / (y.scale * counts), y)


@pytest.mark.parametrize("op, attrs, y", POOLS,
                         ids=["max", "max_pad_requant", "avg_pad", "avg_include_pad", "avg"])
def test_pool(op: str, attrs: dict, y: QParams) -> None:
    x = _qp(0.05, 3)
    h = 9
    pads = attrs.get("pads", [0, 0, 0, 0])
    oh = (h + pads[0] + pads[2] - attrs["kernel_shape"][0]) // attrs["strides"][0] + 1
    model = _qdq_model(op, [2, 3, h, h], [2, 3, oh, oh], x, y, attrs)
    q = _int8(np.random.default_rng(3), [2, 3, h, h])
    want = _pool_golden(op, attrs, q, x, y, (oh, oh))
    _check(model, q, want, max_steps=0 if op == "MaxPool" and x == y else 1)


@FAST
@given(seed=st.integers(0, 2**16), xs=SCALES, xz=ZEROS, ys=SCALES, yz=ZEROS,
       kind=st.sampled_from(["global", "tokens"]))
def test_mean(seed: int, xs: float, xz: int, ys: float, yz: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    x, y = _qp(xs, xz), _qp(ys, yz)
    if kind == "global":
        shape, out, axes = [1, 5, 6, 7], [1, 5, 1, 1], (2, 3)
        model = _qdq_model("GlobalAveragePool", shape, out, x, y)
    else:
        shape, out, axes = [2, 9, 8], [2, 8], (1,)
        model = _qdq_model("ReduceMean", shape, out, x, y, {"axes": [1], "keepdims": 0})
    q = _int8(rng, shape)
    _check(model, q, golden.mean_s8(q, x, y, axes, keepdims=kind == "global"))


# --- Conv ----------------------------------------------------------------------------------


def _conv_case(seed: int, c: int, o: int, k: int, groups: int, pad: int, stride: int,
               per_channel: bool, bias: bool, x: QParams, y: QParams):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (o, c // groups, k, k)).astype(np.int8)
    w_scale = (rng.uniform(0.002, 0.02, o) if per_channel else
               np.full(1, rng.uniform(0.002, 0.02))).astype(np.float32)
    qconsts = {"w": (w, w_scale, 0)}
    b_real = None
    if bias:
        s_b = (np.float32(x.scale) * np.broadcast_to(w_scale, (o,))).astype(np.float32)
        b_q = rng.integers(-3000, 3000, o).astype(np.int32)
        qconsts["b"] = (b_q, s_b, 0)
        b_real = b_q.astype(np.float64) * s_b.astype(np.float64)
    h = 7
    oh = (h + 2 * pad - k) // stride + 1
    attrs = {"pads": [pad] * 4, "strides": [stride, stride], "group": groups}
    model = _qdq_model("Conv", [1, c, h, h], [1, o, oh, oh], x, y, attrs, qconsts=qconsts)
    q = _int8(rng, [1, c, h, h])
    want = golden.conv2d_s8(q, x, w, w_scale.astype(np.float64), b_real, y, (stride, stride),
                            (pad,) * 4, (1, 1), groups)
    return model, q, want


CONVS = [  # c, o, k, groups, pad, stride, per_channel, bias
    (4, 6, 3, 1, 1, 1, True, True),
    (4, 6, 3, 1, 0, 2, False, False),
    (8, 8, 3, 8, 1, 1, True, True),  # depthwise
    (8, 16, 1, 1, 0, 1, True, True),  # pointwise
]


@pytest.mark.parametrize("case", CONVS, ids=["3x3", "3x3_stride_tensor", "depthwise",
                                             "pointwise"])
def test_conv(case: tuple) -> None:
    model, q, want = _conv_case(0, *case, _qp(0.05, 3), _qp(0.04, -2))
    _check(model, q, want)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), case=st.sampled_from(CONVS), xs=SCALES, xz=ZEROS,
       ys=st.floats(0.02, 0.5), yz=ZEROS)
def test_conv_golden_against_onnxruntime(seed: int, case: tuple, xs: float, xz: int,
                                         ys: float, yz: int) -> None:
    model, q, want = _conv_case(seed, *case, _qp(xs, xz), _qp(ys, yz))
    assert _steps(want, _ort(model, q)) <= 1


def test_conv_rejects_a_float_weight() -> None:
    w = np.random.default_rng(0).normal(size=(4, 4, 3, 3))
    model = _qdq_model("Conv", [1, 4, 7, 7], [1, 4, 5, 5], _qp(0.05, 0), _qp(0.05, 0),
                       {}, consts={"w": w})
    match, _ = _match(to_relax(model)[0])
    with pytest.raises(NotInteger, match="float constant with no dequantize"):
        RULES[match.name](match)
