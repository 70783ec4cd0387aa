"""The int8 linear kernel (kernels/linear/tt_linear_s8.c) against its numpy golden model
(``tvm_tiny.reference.linear_s8``), bit for bit, and its offload from QDQ graphs.

Every C path is compiled once per session with host gcc (strict C99 warnings) and called through
ctypes with the arrays of ``codegen.linear_s8.arrange_linear_s8``: the portable loops, the
SMLAD path and the 4-way dot-product path (through tt_simd.h's portable helpers; the Arm DSP
build runs on QEMU Cortex-M4 in the emulator tests). The golden model is checked against
onnxruntime's reference QDQ semantics (ORT_DISABLE_ALL), errors in output steps.
"""

from __future__ import annotations

import ctypes
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_ctypes import (
    CORTEX_M4_FLAGS,
    CROSS_COMPILERS,
    I8P,
    KERNELS,
    TT_ARG_ERROR,
    TT_OK,
    TT_SCRATCH_ERROR,
    Call,
    KernelFront,
    LinearS8Params,
    aligned,
    assert_bit_exact,
    board_with_tools,
    compile_c,
    compile_paths,
    fill_linear_s8_params,
    ort_reference,
    output_step,
)
from onnx import TensorProto, helper, numpy_helper

import tvm_tiny
from tvm_tiny.codegen.linear_s8 import (
    LinearS8Case,
    arrange_linear_s8,
    arrange_weights,
    linear_s8_harness,
    scalar_fields_linear_s8,
    scratch_bytes_linear_s8,
)
from tvm_tiny.firmware.kernel_firmware import build_kernel_firmware, run_kernel_firmware
from tvm_tiny.ir.quant import QParams, QWeight
from tvm_tiny.reference.linear_s8 import (
    LinearS8Quant,
    LoweredLinearS8,
    float_reference_linear_s8,
    lower_linear_s8,
    reference_linear_s8,
)
from tvm_tiny.targets.boards import get_board

SOURCE = KERNELS / "linear" / "tt_linear_s8.c"

PATHS = {"portable": "-DTT_LINEAR_S8_PORTABLE", "smlad": "-DTT_LINEAR_S8_SMLAD",
         "sdot4": "-DTT_LINEAR_S8_SDOT4"}
"""Every C path of the kernel, selected at compile time (tt_linear_s8.c)."""


class Dims(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("rows", "in_features", "out_features")]


class Config(ctypes.Structure):
    _fields_ = [("rows_per_block", ctypes.c_int32)]


Params = LinearS8Params


class Kernel(KernelFront):
    """ctypes front of one compiled path."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib, "tt_linear_s8", Dims, Config, Params)

    def prepare(self, low: LoweredLinearS8, x: np.ndarray, rows_per_block: int,
                seed: int = 0) -> Call:
        rng = np.random.default_rng(seed)
        arrays = arrange_linear_s8(low)
        params = Params()
        fill_linear_s8_params(params, arrays, scalar_fields_linear_s8(low))
        rows, k = x.shape
        n = low.weight.shape[1]
        nbytes = scratch_bytes_linear_s8(rows, k, rows_per_block)
        x_buf = aligned(rows * k, rng).reshape(rows, k)
        x_buf[...] = x
        return Call(Dims(rows, k, n), Config(rows_per_block), params, x_buf,
                    aligned(rows * n, rng).reshape(rows, n), aligned(nbytes + 64, rng),
                    nbytes, list(arrays.values()))

    def run(self, low: LoweredLinearS8, x: np.ndarray, rows_per_block: int) -> np.ndarray:
        return self.run_call(self.prepare(low, x, rows_per_block))


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kernel]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found (Debian package gcc)")
    libs = compile_paths(tmp_path_factory.mktemp("linear_s8"), "tt_linear_s8",
                         {name: [flag] for name, flag in PATHS.items()}, [SOURCE])
    return {name: Kernel(lib) for name, lib in libs.items()}


# ---------------------------------------------------------------- cases
def make_quant(rng: np.random.Generator, k: int, n: int, *, per_channel: bool = True,
               bias: bool = True, two_step: bool = False, act: str = "none",
               x_scale: float = 0.05, x_zp: int = 3, y_zp: int = -5) -> LinearS8Quant:
    """A calibrated layer: N(0, 1/K) weights, the output range from the float layer itself."""
    w = rng.standard_normal((k, n)) / np.sqrt(k)
    weight = QWeight.quantize(w, per_channel=per_channel)
    b = (0.3 * rng.standard_normal(n)).astype(np.float32) if bias else None
    x = x_scale * (rng.integers(-128, 128, (64, k)) - x_zp)
    acc_real = x @ weight.dequantize()
    y_real = acc_real + (0 if b is None else b)
    spread = float(np.abs(y_real).max()) + 1e-3
    y = QParams(2 * spread / 255, y_zp)
    acc = QParams(2 * (float(np.abs(acc_real).max()) + 1e-3) / 255, 1) if two_step else None
    bounds = {"none": (None, None), "relu": (0.0, None), "clip": (-0.5 * spread, 0.5 * spread)}
    lo, hi = bounds[act]
    return LinearS8Quant(QParams(x_scale, x_zp), weight, b, y, acc, lo, hi)


@st.composite
def layers(draw: st.DrawFn) -> tuple[LoweredLinearS8, np.ndarray, int]:
    rows = draw(st.integers(1, 9))
    k = draw(st.integers(1, 37))
    n = draw(st.integers(1, 11))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    q = make_quant(rng, k, n, per_channel=draw(st.booleans()), bias=draw(st.booleans()),
                   two_step=draw(st.booleans()),
                   act=draw(st.sampled_from(["none", "relu", "clip"])),
                   x_scale=draw(st.floats(1e-3, 1.0)), x_zp=draw(st.integers(-128, 127)),
                   y_zp=draw(st.integers(-128, 127)))
    x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
    return lower_linear_s8(q), x, draw(st.integers(1, 6))


# ---------------------------------------------------------------- bit-exactness
@settings(max_examples=40, deadline=None)
@given(case=layers())
def test_every_path_equals_the_numpy_model(kernels: dict[str, Kernel],
                                           case: tuple[LoweredLinearS8, np.ndarray, int]) -> None:
    low, x, rows_per_block = case
    want = reference_linear_s8(x, low)
    for name, kernel in kernels.items():
        assert_bit_exact(kernel.run(low, x, rows_per_block), want, name)


@pytest.mark.parametrize("path", list(PATHS))
def test_large_layer_and_extreme_zero_points(kernels: dict[str, Kernel], path: str) -> None:
    """K = 300, N = 65: the unrolled loop, all tails; x at the int8 extremes, zp_x = -128."""
    rng = np.random.default_rng(7)
    low = lower_linear_s8(make_quant(rng, 300, 65, x_zp=-128, y_zp=127, two_step=True))
    x = rng.choice(np.array([-128, 127], np.int8), (13, 300))
    assert_bit_exact(kernels[path].run(low, x, 4), reference_linear_s8(x, low), path)


@pytest.mark.parametrize("path", list(PATHS))
def test_runs_twice_with_same_result_and_scratch_bounds(kernels: dict[str, Kernel],
                                                        path: str) -> None:
    rng = np.random.default_rng(3)
    low = lower_linear_s8(make_quant(rng, 21, 7))
    x = rng.integers(-128, 128, (5, 21), dtype=np.int8)
    c = kernels[path].prepare(low, x, 3)
    canary = c.scratch[c.scratch_bytes:].copy()
    assert kernels[path].call(c) == TT_OK
    first = c.y.copy()
    assert kernels[path].call(c) == TT_OK
    assert_bit_exact(c.y, first, "second call")
    assert np.array_equal(c.scratch[c.scratch_bytes:], canary), "wrote past the scratch"


def test_scratch_size_c_equals_python(kernels: dict[str, Kernel]) -> None:
    for rows, k, rpb in [(1, 1, 1), (7, 13, 3), (81, 128, 16), (4, 64, 100), (9, 5, 8)]:
        assert kernels["portable"].buffer_size(Dims(rows, k, 3), Config(rpb)) == \
            scratch_bytes_linear_s8(rows, k, rpb)


@pytest.mark.parametrize("dims,config", [
    pytest.param(None, Config(2), id="no-dims"), pytest.param(Dims(2, 3, 4), None, id="no-cfg"),
    pytest.param(Dims(0, 3, 4), Config(2), id="rows-0"),
    pytest.param(Dims(2, 32768, 4), Config(2), id="K-too-large"),
    pytest.param(Dims(2, 3, 0), Config(2), id="N-0"),
    pytest.param(Dims(2, 3, 4), Config(0), id="rows-per-block-0")])
def test_buffer_size_rejects_bad_arguments(kernels: dict[str, Kernel], dims: Dims | None,
                                           config: Config | None) -> None:
    assert kernels["portable"].buffer_size(dims, config) == TT_ARG_ERROR


def _field(name: str, value: object) -> Callable[[Call], None]:
    def mutate(c: Call) -> None:
        setattr(c.params, name, value)
    return mutate


def _misalign_weights(c: Call) -> None:
    raw = np.zeros(c.keep[0].size + 4, np.int8)
    c.keep.append(raw)
    start = 1 + (-raw[1:].ctypes.data) % 4 if raw.ctypes.data % 4 == 3 else 1
    c.params.weights = raw[start:].ctypes.data_as(I8P)
    if raw[start:].ctypes.data % 4 == 0:
        c.params.weights = raw[start + 1:].ctypes.data_as(I8P)


def _scratch_over_y(c: Call) -> None:
    c.scratch = c.y.reshape(-1)


def _y_over_x(c: Call) -> None:
    c.y = c.x


def _misalign_scratch(c: Call) -> None:
    c.scratch = c.scratch[1:]


def _dims(**fields: int) -> Callable[[Call], None]:
    def mutate(c: Call) -> None:
        for name, value in fields.items():
            setattr(c.dims, name, value)
    return mutate


REJECTIONS = [
    pytest.param(_field("weights", None), TT_ARG_ERROR, id="no-weights"),
    pytest.param(_field("kernel_bias", None), TT_ARG_ERROR, id="no-kernel-bias"),
    pytest.param(_field("mult", None), TT_ARG_ERROR, id="no-mult"),
    pytest.param(_field("shift", None), TT_ARG_ERROR, id="no-shift"),
    pytest.param(_misalign_weights, TT_ARG_ERROR, id="misaligned-weights"),
    pytest.param(_field("per_channel", 2), TT_ARG_ERROR, id="per-channel-2"),
    pytest.param(_field("two_step", -1), TT_ARG_ERROR, id="two-step-bad"),
    pytest.param(_field("y_zero_point", 128), TT_ARG_ERROR, id="zp-out-of-range"),
    pytest.param(_field("act_min", 10), TT_ARG_ERROR, id="act-min-above-max"),
    pytest.param(_field("act_max", 200), TT_ARG_ERROR, id="act-max-out-of-range"),
    pytest.param(_field("mult2", 5), TT_ARG_ERROR, id="stage-2-fields-without-two-step"),
    pytest.param(_dims(in_features=0), TT_ARG_ERROR, id="K-0"),
    pytest.param(_dims(rows=-3), TT_ARG_ERROR, id="rows-negative"),
    pytest.param(_y_over_x, TT_ARG_ERROR, id="y-overlaps-x"),
    pytest.param(_scratch_over_y, TT_ARG_ERROR, id="scratch-overlaps-y"),
    pytest.param(_misalign_scratch, TT_ARG_ERROR, id="misaligned-scratch"),
    pytest.param(lambda c: setattr(c, "scratch_bytes", c.scratch_bytes - 1), TT_SCRATCH_ERROR,
                 id="scratch-too-small"),
]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("mutate,status", REJECTIONS)
def test_bad_arguments_are_rejected(kernels: dict[str, Kernel], path: str,
                                    mutate: Callable[[Call], None], status: int) -> None:
    rng = np.random.default_rng(0)
    q = make_quant(rng, 9, 5)
    low = lower_linear_s8(LinearS8Quant(q.x, q.weight, q.bias, q.y, act_max=0.0))
    assert low.act_max < 10  # the act-min case needs act_max below it
    c = kernels[path].prepare(low, rng.integers(-128, 128, (4, 9), dtype=np.int8), 2)
    mutate(c)
    before = c.y.copy()
    assert kernels[path].call(c) == status
    if c.y is not c.x:
        assert np.array_equal(c.y, before), "wrote the output on error"


def test_null_params_pointer_is_rejected(kernels: dict[str, Kernel]) -> None:
    rng = np.random.default_rng(0)
    low = lower_linear_s8(make_quant(rng, 4, 4))
    c = kernels["smlad"].prepare(low, rng.integers(-128, 128, (2, 4), dtype=np.int8), 2)
    status = kernels["smlad"]._run(ctypes.byref(c.dims), ctypes.byref(c.config), None,
                                   c.x.ctypes.data_as(I8P), c.y.ctypes.data_as(I8P),
                                   c.scratch.ctypes.data_as(I8P), c.scratch_bytes)
    assert status == TT_ARG_ERROR


def test_header_struct_matches_ctypes() -> None:
    header = (KERNELS / "include" / "tt_linear_s8.h").read_text()
    body = re.search(r"typedef struct \{([^{}]*)\} tt_linear_s8_params;", header).group(1)
    names = re.findall(r"\b(\w+);", re.sub(r"/\*.*?\*/", "", body, flags=re.S))
    assert names == [name for name, _ in Params._fields_]


def test_weight_layout_pairs_columns() -> None:
    w = np.arange(5 * 3, dtype=np.int8).reshape(5, 3)  # K = 5 (K4 = 8), N = 3
    got = arrange_weights(w)
    col = [np.concatenate([w[:, n], np.zeros(3, np.int8)]) for n in range(3)]
    want = np.concatenate([col[0][:4], col[1][:4], col[0][4:], col[1][4:], col[2]])
    assert np.array_equal(got, want)


# ---------------------------------------------------------------- lowering and accuracy
def test_relu_and_clip_are_exact_clamps() -> None:
    """quantize(relu(v)) == max(quantize(v), zp_y): the clamp reproduces the float graph."""
    rng = np.random.default_rng(1)
    q = make_quant(rng, 16, 8, act="relu", y_zp=-20)
    low = lower_linear_s8(q)
    assert (low.act_min, low.act_max) == (-20, 127)
    x = rng.integers(-128, 128, (50, 16), dtype=np.int8)
    assert reference_linear_s8(x, low).min() >= -20


@pytest.mark.parametrize("two_step", [False, True], ids=["one-step", "two-step"])
def test_golden_is_within_one_step_of_the_float_graph(two_step: bool) -> None:
    rng = np.random.default_rng(5)
    q = make_quant(rng, 64, 32, two_step=two_step)
    x = rng.integers(-128, 128, (40, 64), dtype=np.int8)
    err = np.abs(reference_linear_s8(x, lower_linear_s8(q)).astype(int)
                 - float_reference_linear_s8(x, q).astype(int))
    assert err.max() <= 1


def test_lowering_rejects_what_the_kernel_cannot_take() -> None:
    rng = np.random.default_rng(0)
    q = make_quant(rng, 4, 4)
    with pytest.raises(ValueError, match="int8 tensors only"):
        lower_linear_s8(LinearS8Quant(QParams(0.1, 0, "uint8"), q.weight, q.bias, q.y))
    with pytest.raises(ValueError, match="does not fit int32"):
        lower_linear_s8(LinearS8Quant(q.x, q.weight, np.full(4, 1e12, np.float32), q.y))
    with pytest.raises(ValueError, match="empty activation range"):
        lower_linear_s8(LinearS8Quant(q.x, q.weight, q.bias, q.y, act_min=1.0, act_max=-1.0))


# ---------------------------------------------------------------- cross compilers
@pytest.mark.parametrize(("compiler", "flags"), CROSS_COMPILERS)
def test_compiles_warning_free_at_every_level(tmp_path: Path, compiler: str,
                                              flags: list[str]) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not found")
    paths = [""] + ([] if compiler != "gcc" else list(PATHS.values()))
    for level in ("-O0", "-O1", "-O2", "-O3", "-Os"):
        for path in paths:
            compile_c(compiler, [*flags, level, *([path] if path else []), "-c"], [SOURCE],
                     tmp_path / "out.o")


def test_arm_build_uses_the_dsp_instructions(tmp_path: Path) -> None:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not found")
    asm = tmp_path / "linear.s"
    compile_c("arm-none-eabi-gcc", [*CORTEX_M4_FLAGS, "-O2", "-S"], [SOURCE], asm)
    text = asm.read_text()
    for mnemonic in ("smlad", "ldrd", "sxtb16", "smmul", "ssat"):
        assert re.search(rf"\b{mnemonic}\b", text), mnemonic


# ---------------------------------------------------------------- emulated boards
def _board_cases() -> list[LinearS8Case]:
    rng = np.random.default_rng(11)
    specs = [(5, 13, 7, dict(act="relu")), (4, 64, 16, dict(two_step=True)),
             (3, 9, 2, dict(per_channel=False, act="clip")), (9, 37, 5, dict(bias=False)),
             (7, 36, 6, dict(two_step=True, act="relu")), (3, 128, 4, dict(two_step=True))]
    cases = []
    for i, (rows, k, n, kw) in enumerate(specs):
        low = lower_linear_s8(make_quant(rng, k, n, **kw))
        cases.append(LinearS8Case(f"case{i}", rows, low,
                                  rng.integers(-128, 128, (rows, k), dtype=np.int8), 3))
    return cases


@pytest.mark.emulator
@pytest.mark.parametrize("board_name", ["stm32l4", "gap9"])
def test_board_build_equals_the_numpy_model(board_name: str) -> None:
    """The Arm DSP path on QEMU mps2-an386 (Cortex-M4) and the dot-product path on rv32imc."""
    board = board_with_tools(board_name)
    cases = _board_cases()
    elf = build_kernel_firmware(board, "test_linear_s8", {"main.c": linear_s8_harness(cases)},
                                ["linear/tt_linear_s8.c"])
    run = run_kernel_firmware(board, elf, [c.name for c in cases])
    assert len(run.windows) == len(cases)
    for i, case in enumerate(cases):
        n = case.low.weight.shape[1]
        got = np.frombuffer(run.files[f"y{i}.bin"], np.int8).reshape(case.rows, n)
        assert_bit_exact(got, reference_linear_s8(case.x, case.low), f"{board_name} {case.name}")


# ---------------------------------------------------------------- offload of QDQ models
def _float_ffn(k: int = 32, hidden: int = 48, n: int = 16, seq: int = 8,
               act: str = "Relu") -> onnx.ModelProto:
    """x [1, S, K] -> MatMul + Add [-> act] -> MatMul + Add: the FFN of an encoder layer."""
    rng = np.random.default_rng(2)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]),
             helper.make_node("Add", ["h0", "b1"], ["h1"])]
    hidden_out = "h1"
    if act:
        nodes.append(helper.make_node(act, ["h1"], ["h2"]))
        hidden_out = "h2"
    nodes += [helper.make_node("MatMul", [hidden_out, "w2"], ["y0"]),
              helper.make_node("Add", ["y0", "b2"], ["y"])]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, n])],
        [init("w1", k, hidden), init("b1", hidden), init("w2", hidden, n), init("b2", n)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def qdq_ffn() -> Callable[[bool], onnx.ModelProto]:
    cache: dict[bool, onnx.ModelProto] = {}

    def make(per_channel: bool) -> onnx.ModelProto:
        if per_channel not in cache:
            rng = np.random.default_rng(5)
            calibration = [rng.standard_normal((1, 8, 32)).astype(np.float32) for _ in range(16)]
            cache[per_channel] = tvm_tiny.quantize(_float_ffn(), calibration,
                                                   per_channel=per_channel)
        return cache[per_channel]

    return make


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qdq_linear_layers_are_offloaded_and_close_to_onnxruntime(
        qdq_ffn: Callable[[bool], onnx.ModelProto], per_channel: bool) -> None:
    model = qdq_ffn(per_channel)
    lib = tvm_tiny.build(model, name="q_ffn")
    entries = lib.metadata["linear_s8"]
    assert [(e["in_features"], e["out_features"], e["rows"]) for e in entries] == \
        [(32, 48, 8), (48, 16, 8)], lib.metadata
    assert all(e["per_channel"] == per_channel for e in entries)
    # int8 weights in flash: one byte per weight, plus int32 biases (and the stage-2 biases
    # of the exporter's two-step form) and the multipliers.
    for e in entries:
        k, n = e["in_features"], e["out_features"]
        assert e["params_bytes"] == k * n + 4 * n + (8 * n if per_channel else 8) + (
            4 * n if e["two_step"] else 0)
    x = np.random.default_rng(3).standard_normal((1, 8, 32)).astype(np.float32)
    (y,) = lib.run(x)
    steps = np.abs(y - ort_reference(model, x)) / output_step(model)
    assert steps.max() <= 2.0 + 1e-3, f"max {steps.max():.2f} steps from onnxruntime"


def test_linear_pattern_leaves_float_models_alone() -> None:
    """A float MatMul+Add has no quantize: the int8 pattern never claims it."""
    lib = tvm_tiny.build(_float_ffn(), name="f_ffn")
    assert lib.metadata["linear_s8"] == []


@pytest.mark.emulator
def test_offloaded_model_on_stm32l4_equals_host(qdq_ffn: Callable[[bool], onnx.ModelProto]
                                                ) -> None:
    board = get_board("stm32l4")
    assert board.toolchain is not None and board.emulator is not None
    for tool in (board.toolchain.cc, board.emulator.binary):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")
    model = qdq_ffn(True)
    lib = tvm_tiny.build(model, target="stm32l4", name="q_ffn_l4")
    assert len(lib.metadata["linear_s8"]) == 2
    x = np.random.default_rng(4).standard_normal((1, 8, 32)).astype(np.float32)
    res = lib.run_on_board(x)
    (host,) = tvm_tiny.build(model, name="q_ffn_host").run(x)
    np.testing.assert_array_equal(res.outputs[0], host)
