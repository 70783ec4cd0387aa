"""The int8 convolution kernel (kernels/conv/tt_conv_s8.c) against its numpy golden model
(``tvm_tiny.reference.conv_s8``), bit for bit, and its offload from QDQ graphs.

The golden model is first checked against the integer Relax rule's model
(``reference.integer_norm.conv2d_s8``, what TVM runs for the convolutions it keeps). The C is
compiled with host gcc once per GEMM path of ``tt_linear_s8`` (portable, SMLAD and 4-way dot
products through tt_simd.h's portable helpers) and called through ctypes; the Arm DSP build runs
on QEMU Cortex-M4 and the rv32 build on QEMU riscv32 in the emulator tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_ctypes import (
    CORTEX_M4_FLAGS,
    CROSS_COMPILERS,
    I8P,
    KERNELS,
    REPO,
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
from tvm_tiny.codegen.conv_s8 import (
    ConvS8Case,
    arrange_conv_s8,
    conv_s8_harness,
    scratch_bytes_conv_s8,
)
from tvm_tiny.codegen.linear_s8 import scalar_fields_linear_s8
from tvm_tiny.firmware.kernel_firmware import build_kernel_firmware, run_kernel_firmware
from tvm_tiny.ir.quant import QParams, QWeight
from tvm_tiny.partition import partitioner
from tvm_tiny.partition.patterns import CONV_S8_COMPOSITE
from tvm_tiny.reference.conv_s8 import (
    ConvGeometry,
    ConvS8Quant,
    LoweredConvS8,
    im2col,
    lower_conv_s8,
    reference_conv_s8,
    weight_matrix,
)
from tvm_tiny.reference.integer_norm import conv2d_s8
from tvm_tiny.reference.linear_s8 import LinearS8Quant

SOURCES = [KERNELS / "conv" / "tt_conv_s8.c", KERNELS / "linear" / "tt_linear_s8.c"]

PATHS = {"portable": ["-DTT_LINEAR_S8_PORTABLE"],
         "smlad": ["-DTT_LINEAR_S8_SMLAD", "-DTT_CONV_S8_DW_SMLAD"],
         "sdot4": ["-DTT_LINEAR_S8_SDOT4"]}
"""The C paths, selected at compile time: the GEMM of the standard kernel (tt_linear_s8.c) and
the SMLAD rows of the 3x3 depthwise kernel (the Cortex-M DSP default, here through tt_simd.h's
portable helpers)."""

DIM_FIELDS = ("batch", "in_channels", "in_height", "in_width", "out_channels", "kernel_h",
              "kernel_w", "stride_h", "stride_w", "pad_top", "pad_left", "pad_bottom",
              "pad_right", "dilation_h", "dilation_w", "groups")


class Dims(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in DIM_FIELDS]


class Config(ctypes.Structure):
    _fields_ = [("pixels_per_block", ctypes.c_int32)]


class Params(ctypes.Structure):
    _fields_ = [("gemm", LinearS8Params), ("x_zero_point", ctypes.c_int32)]


def dims_of(g: ConvGeometry) -> Dims:
    pt, pl, pb, pr = g.padding
    return Dims(g.batch, g.in_channels, g.in_height, g.in_width, g.out_channels, *g.kernel,
                *g.strides, pt, pl, pb, pr, 1, 1, g.groups)


class Kernel(KernelFront):
    """ctypes front of one compiled path."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        super().__init__(lib, "tt_conv_s8", Dims, Config, Params)

    def prepare(self, low: LoweredConvS8, x: np.ndarray, pixels_per_block: int,
                seed: int = 0) -> Call:
        rng = np.random.default_rng(seed)
        arrays = arrange_conv_s8(low)
        params = Params()
        fill_linear_s8_params(params.gemm, arrays, scalar_fields_linear_s8(low.linear))
        params.x_zero_point = low.linear.zp_x
        g = low.geometry
        nbytes = scratch_bytes_conv_s8(g, pixels_per_block)
        x_buf = aligned(x.size, rng).reshape(x.shape)
        x_buf[...] = x
        y_buf = aligned(int(np.prod(g.output_shape)), rng).reshape(g.output_shape)
        return Call(dims_of(g), Config(pixels_per_block), params, x_buf, y_buf,
                    aligned(nbytes + 64, rng), nbytes, list(arrays.values()))

    def run(self, low: LoweredConvS8, x: np.ndarray, pixels_per_block: int) -> np.ndarray:
        return self.run_call(self.prepare(low, x, pixels_per_block))


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kernel]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found (Debian package gcc)")
    libs = compile_paths(tmp_path_factory.mktemp("conv_s8"), "tt_conv_s8", PATHS, SOURCES)
    return {name: Kernel(lib) for name, lib in libs.items()}


# ---------------------------------------------------------------- cases
def make_conv(rng: np.random.Generator, g: ConvGeometry, *, per_channel: bool = True,
              bias: bool = True, two_step: bool = False, act: str = "none",
              x_scale: float = 0.05, x_zp: int = 3, y_zp: int = -5) -> ConvS8Quant:
    """A calibrated conv: N(0, 1/K) weights, the output range from the float conv itself."""
    cg = 1 if g.depthwise else g.in_channels
    w = rng.standard_normal((g.out_channels, cg, *g.kernel)) / np.sqrt(g.reduction)
    weight = QWeight.quantize(weight_matrix(w, g.groups), per_channel=per_channel)
    b = (0.3 * rng.standard_normal(g.out_channels)).astype(np.float32) if bias else None
    x = x_scale * (im2col(rng.integers(-128, 128, g.input_shape), g, x_zp) - x_zp)
    wf = weight.dequantize()
    acc_real = np.einsum("ncpk,kc->npc", x, wf) if g.depthwise else x @ wf
    y_real = acc_real + (0 if b is None else b)
    spread = float(np.abs(y_real).max()) + 1e-3
    y = QParams(2 * spread / 255, y_zp)
    acc = QParams(2 * (float(np.abs(acc_real).max()) + 1e-3) / 255, 1) if two_step else None
    bounds = {"none": (None, None), "relu": (0.0, None), "clip": (-0.5 * spread, 0.5 * spread)}
    return ConvS8Quant(g, LinearS8Quant(QParams(x_scale, x_zp), weight, b, y, acc,
                                        *bounds[act]))


@st.composite
def geometries(draw: st.DrawFn, depthwise: bool | None = None) -> ConvGeometry:
    dw = draw(st.booleans()) if depthwise is None else depthwise
    c = draw(st.integers(1, 9))
    o = c if dw else draw(st.integers(1, 11))
    kh, kw = (3, 3) if draw(st.booleans()) else (draw(st.integers(1, 4)),
                                                   draw(st.integers(1, 4)))
    pads = tuple(draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw))
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 9))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 9))
    return ConvGeometry(draw(st.integers(1, 2)), c, h, w, o, (kh, kw),
                        (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                        (pads[0], pads[1], pads[2], pads[3]), c if dw and c > 1 else 1)


@st.composite
def convs(draw: st.DrawFn, depthwise: bool | None = None
          ) -> tuple[LoweredConvS8, np.ndarray, int]:
    g = draw(geometries(depthwise))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    q = make_conv(rng, g, per_channel=draw(st.booleans()), bias=draw(st.booleans()),
                  two_step=draw(st.booleans()),
                  act=draw(st.sampled_from(["none", "relu", "clip"])),
                  x_scale=draw(st.floats(1e-3, 1.0)), x_zp=draw(st.integers(-128, 127)),
                  y_zp=draw(st.integers(-128, 127)))
    x = rng.integers(-128, 128, g.input_shape, dtype=np.int8)
    return lower_conv_s8(q), x, draw(st.integers(1, 7))


# ---------------------------------------------------------------- the golden model
@settings(max_examples=40, deadline=None)
@given(g=geometries(), seed=st.integers(0, 2**31), per_channel=st.booleans())
def test_golden_model_is_the_integer_relax_conv(g: ConvGeometry, seed: int,
                                                per_channel: bool) -> None:
    """One-step convs without clamp: the kernel's program is exactly the arithmetic TVM runs
    for the convolutions left to the integer rule (integerize/conv.py)."""
    rng = np.random.default_rng(seed)
    q = make_conv(rng, g, per_channel=per_channel, x_zp=int(rng.integers(-128, 128)))
    x = rng.integers(-128, 128, g.input_shape, dtype=np.int8)
    lin = q.linear
    cg = 1 if g.depthwise else g.in_channels
    w = np.ascontiguousarray(lin.weight.values.T).reshape(g.out_channels, cg, *g.kernel)
    want = conv2d_s8(x, lin.x, w, lin.weight.scale.astype(np.float64), lin.bias, lin.y,
                     g.strides, g.padding, (1, 1), g.groups)
    assert_bit_exact(reference_conv_s8(x, lower_conv_s8(q)), want.astype(np.int8), str(g))


def test_geometry_rejects_what_the_kernel_cannot_do() -> None:
    with pytest.raises(ValueError, match="only 1 or depthwise"):
        ConvGeometry(1, 4, 5, 5, 8, (3, 3), groups=2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ConvGeometry(1, 1, 2, 2, 1, (3, 3))
    g = ConvGeometry(1, 2, 5, 5, 3, (3, 3))
    q = make_conv(np.random.default_rng(0), g)
    bad = ConvS8Quant(ConvGeometry(1, 3, 5, 5, 3, (3, 3)), q.linear)
    with pytest.raises(ValueError, match="does not match the geometry"):
        lower_conv_s8(bad)


# ---------------------------------------------------------------- bit-exactness of the C
@settings(max_examples=60, deadline=None)
@given(case=convs())
def test_every_path_equals_the_numpy_model(kernels: dict[str, Kernel],
                                           case: tuple[LoweredConvS8, np.ndarray, int]) -> None:
    low, x, pixels_per_block = case
    want = reference_conv_s8(x, low)
    for name, kernel in kernels.items():
        assert_bit_exact(kernel.run(low, x, pixels_per_block), want, f"{name} {low.geometry}")


@settings(max_examples=25, deadline=None)
@given(case=convs(depthwise=True))
def test_depthwise_equals_the_numpy_model(kernels: dict[str, Kernel],
                                          case: tuple[LoweredConvS8, np.ndarray, int]) -> None:
    low, x, pixels_per_block = case
    want = reference_conv_s8(x, low)
    for name, kernel in kernels.items():
        assert_bit_exact(kernel.run(low, x, pixels_per_block), want, f"{name} {low.geometry}")


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("g", [
    ConvGeometry(1, 16, 10, 10, 24, (3, 3), (1, 1), (1, 1, 1, 1)),     # K = 144, unrolled
    ConvGeometry(1, 32, 6, 6, 17, (1, 1)),                             # pointwise, odd O
    ConvGeometry(2, 8, 9, 7, 8, (3, 3), (2, 2), (1, 0, 1, 2), 8),      # depthwise, batch 2
    ConvGeometry(1, 5, 8, 9, 5, (3, 3), (1, 1), (1, 1, 1, 1), 5),      # depthwise 3x3 rows
    ConvGeometry(1, 3, 12, 12, 20, (5, 5), (3, 2), (2, 2, 0, 1)),      # K = 75
], ids=["3x3_k144", "pointwise", "depthwise", "depthwise_3x3", "5x5"])
def test_representative_shapes_at_the_int8_extremes(kernels: dict[str, Kernel], path: str,
                                                    g: ConvGeometry) -> None:
    rng = np.random.default_rng(7)
    low = lower_conv_s8(make_conv(rng, g, x_zp=-128, y_zp=127, two_step=True))
    x = rng.choice(np.array([-128, 127], np.int8), g.input_shape)
    assert_bit_exact(kernels[path].run(low, x, 5), reference_conv_s8(x, low), path)
    low = lower_conv_s8(make_conv(rng, g, act="relu", per_channel=False))
    x = rng.integers(-128, 128, g.input_shape, dtype=np.int8)
    assert_bit_exact(kernels[path].run(low, x, 6), reference_conv_s8(x, low), path)


@pytest.mark.parametrize("path", list(PATHS))
def test_runs_twice_with_same_result_and_scratch_bounds(kernels: dict[str, Kernel],
                                                        path: str) -> None:
    rng = np.random.default_rng(3)
    low = lower_conv_s8(make_conv(rng, ConvGeometry(1, 5, 7, 6, 9, (3, 2), (1, 2),
                                                    (1, 1, 0, 1))))
    x = rng.integers(-128, 128, low.geometry.input_shape, dtype=np.int8)
    c = kernels[path].prepare(low, x, 3)
    canary = c.scratch[c.scratch_bytes:].copy()
    assert kernels[path].call(c) == TT_OK
    first = c.y.copy()
    assert kernels[path].call(c) == TT_OK
    assert_bit_exact(c.y, first, "second call")
    assert np.array_equal(c.scratch[c.scratch_bytes:], canary), "wrote past the scratch"


def test_scratch_size_c_equals_python(kernels: dict[str, Kernel]) -> None:
    for g, ppb in [(ConvGeometry(1, 3, 32, 32, 64, (3, 3), (2, 2), (1, 1, 1, 1)), 8),
                   (ConvGeometry(1, 128, 8, 8, 128, (3, 3), (1, 1), (1, 1, 1, 1)), 16),
                   (ConvGeometry(1, 7, 3, 3, 5, (1, 1)), 100),
                   (ConvGeometry(2, 4, 5, 5, 4, (3, 3), groups=4), 8),
                   (ConvGeometry(1, 5, 4, 4, 3, (2, 2)), 3)]:
        assert kernels["portable"].buffer_size(dims_of(g), Config(ppb)) == \
            scratch_bytes_conv_s8(g, ppb), str(g)


def _conv_call(kernels: dict[str, Kernel], g: ConvGeometry | None = None) -> Call:
    g = g or ConvGeometry(1, 3, 6, 6, 4, (3, 3), (1, 1), (1, 1, 1, 1))
    rng = np.random.default_rng(1)
    low = lower_conv_s8(make_conv(rng, g))
    return kernels["portable"].prepare(low, rng.integers(-128, 128, g.input_shape,
                                                         dtype=np.int8), 4)


@pytest.mark.parametrize("field,value", [
    ("dilation_h", 2), ("dilation_w", 0), ("groups", 3), ("stride_h", 0), ("pad_left", -1),
    ("kernel_h", 9), ("batch", 0), ("in_channels", 0),
], ids=lambda v: str(v))
def test_bad_dims_are_argument_errors(kernels: dict[str, Kernel], field: str,
                                      value: int) -> None:
    c = _conv_call(kernels)
    before = c.y.copy()
    setattr(c.dims, field, value)
    assert kernels["portable"].call(c) == TT_ARG_ERROR
    assert kernels["portable"].buffer_size(c.dims, c.config) == TT_ARG_ERROR
    assert np.array_equal(c.y, before), "wrote the output on error"


def test_other_errors(kernels: dict[str, Kernel]) -> None:
    k = kernels["portable"]
    c = _conv_call(kernels)
    c.scratch_bytes -= 1
    assert k.call(c) == TT_SCRATCH_ERROR
    c = _conv_call(kernels)
    c.config.pixels_per_block = 0
    assert k.call(c) == TT_ARG_ERROR
    c = _conv_call(kernels)
    c.params.gemm.act_min, c.params.gemm.act_max = 5, 4
    assert k.call(c) == TT_ARG_ERROR
    c = _conv_call(kernels)
    c.params.x_zero_point = 128
    assert k.call(c) == TT_ARG_ERROR
    c = _conv_call(kernels)  # y overlapping x
    assert k._run(ctypes.byref(c.dims), ctypes.byref(c.config), ctypes.byref(c.params),
                  c.x.ctypes.data_as(I8P), c.x.ctypes.data_as(I8P),
                  c.scratch.ctypes.data_as(I8P), c.scratch_bytes) == TT_ARG_ERROR
    dw = _conv_call(kernels, ConvGeometry(1, 4, 5, 5, 4, (3, 3), groups=4))
    dw.params.gemm.shift[0] = 31
    assert k.call(dw) == TT_ARG_ERROR


# ---------------------------------------------------------------- cross compilers
@pytest.mark.parametrize(("compiler", "flags"), CROSS_COMPILERS)
def test_compiles_warning_free_at_every_level(tmp_path: Path, compiler: str,
                                              flags: list[str]) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not found")
    for level in ("-O0", "-O1", "-O2", "-O3", "-Os"):
        compile_c(compiler, [*flags, level, "-c"], SOURCES[:1], tmp_path / "out.o")


def test_kernel_sources_are_clang_format_clean() -> None:
    tool = shutil.which("clang-format") or str(REPO / ".venv" / "bin" / "clang-format")
    if not Path(tool).is_file():
        pytest.skip("clang-format not found (PyPI package clang-format, in the dev extra)")
    for path in (SOURCES[0], KERNELS / "include" / "tt_conv_s8.h"):
        text = path.read_text()
        proc = subprocess.run([tool, f"--style=file:{REPO / '.clang-format'}",
                               f"--assume-filename={path.name}"], input=text,
                              capture_output=True, text=True, check=True)
        assert proc.stdout == text, f"{path.name} is not clang-format clean"


def test_arm_build_uses_the_dsp_instructions(tmp_path: Path) -> None:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not found")
    asm = tmp_path / "conv.s"
    compile_c("arm-none-eabi-gcc", [*CORTEX_M4_FLAGS, "-O2", "-S"], SOURCES[:1], asm)
    text = asm.read_text()
    for mnemonic in ("smlad", "sxtb16", "smmul", "ssat"):
        assert re.search(rf"\b{mnemonic}\b", text), mnemonic
    assert re.search(r"\bbl\s+tt_linear_s8\b", text), "the GEMM is not tt_linear_s8"


# ---------------------------------------------------------------- emulated boards
def _board_cases() -> list[ConvS8Case]:
    rng = np.random.default_rng(11)
    specs = [(ConvGeometry(1, 3, 9, 9, 8, (3, 3), (2, 2), (1, 1, 1, 1)), dict(act="relu")),
             (ConvGeometry(1, 16, 5, 5, 12, (3, 3), (1, 1), (1, 1, 1, 1)),
              dict(two_step=True)),
             (ConvGeometry(1, 12, 4, 4, 7, (1, 1)), dict(per_channel=False, act="clip")),
             (ConvGeometry(1, 6, 7, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), 6), dict(bias=False))]
    cases = []
    for i, (g, kw) in enumerate(specs):
        low = lower_conv_s8(make_conv(rng, g, **kw))
        cases.append(ConvS8Case(f"case{i}", low,
                                rng.integers(-128, 128, g.input_shape, dtype=np.int8), 3))
    return cases


@pytest.mark.emulator
@pytest.mark.parametrize("board_name", ["stm32l4", "gap9"])
def test_board_build_equals_the_numpy_model(board_name: str) -> None:
    """The Arm DSP path on QEMU mps2-an386 (Cortex-M4) and the dot-product path on rv32imc."""
    board = board_with_tools(board_name)
    cases = _board_cases()
    elf = build_kernel_firmware(board, "test_conv_s8", {"main.c": conv_s8_harness(cases)},
                                ["conv/tt_conv_s8.c", "linear/tt_linear_s8.c"])
    run = run_kernel_firmware(board, elf, [c.name for c in cases])
    assert len(run.windows) == len(cases)
    for i, case in enumerate(cases):
        got = np.frombuffer(run.files[f"y{i}.bin"], np.int8).reshape(case.low.geometry
                                                                      .output_shape)
        assert_bit_exact(got, reference_conv_s8(case.x, case.low), f"{board_name} {case.name}")


# ---------------------------------------------------------------- offload of QDQ models
def _float_convs(dilation: int = 1, depthwise: bool = False) -> onnx.ModelProto:
    """x [1, 4, 10, 10] -> Conv3x3 + Relu -> [depthwise] Conv3x3 stride 2 -> Conv1x1."""
    rng = np.random.default_rng(2)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4,
                              dilations=[dilation] * 2, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, strides=[2, 2],
                              kernel_shape=[3, 3], group=8 if depthwise else 1),
             helper.make_node("Conv", ["c2", "w3"], ["y"], kernel_shape=[1, 1])]  # no bias
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 5, 5])],
        [init("w1", 8, 4, 3, 3), init("b1", 8), init("w2", 8, 1 if depthwise else 8, 3, 3),
         init("b2", 8), init("w3", 6, 8, 1, 1)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(model: onnx.ModelProto, per_channel: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    calibration = [rng.standard_normal((1, 4, 10, 10)).astype(np.float32) for _ in range(8)]
    return tvm_tiny.quantize(model, calibration, per_channel=per_channel)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("depthwise", [False, True], ids=["standard", "depthwise"])
def test_qdq_convs_are_offloaded_and_close_to_onnxruntime(per_channel: bool,
                                                          depthwise: bool) -> None:
    model = _quantized(_float_convs(depthwise=depthwise), per_channel)
    lib = tvm_tiny.build(model, name="q_convs")
    entries = lib.metadata["conv_s8"]
    assert [(e["kind"], e["output_shape"]) for e in entries] == [
        ("standard", [1, 8, 10, 10]), ("depthwise" if depthwise else "standard", [1, 8, 5, 5]),
        ("pointwise", [1, 6, 5, 5])], entries
    assert all(e["per_channel"] == per_channel for e in entries)
    for e in entries:  # int8 weights once, int32 kernel biases, the multipliers
        o = e["output_shape"][1]
        k = (1 if e["kind"] == "depthwise" else e["input_shape"][1]) * e["kernel"][0] * \
            e["kernel"][1]
        padded = o * k if e["kind"] == "depthwise" else o * ((k + 3) & ~3)
        assert e["shared_weights"]["bytes"] == padded
        assert e["params_bytes"] == 4 * o + (8 * o if per_channel else 8)
    x = np.random.default_rng(3).standard_normal((1, 4, 10, 10)).astype(np.float32)
    (y,) = lib.run(x)
    steps = np.abs(y - ort_reference(model, x)) / output_step(model)
    assert steps.max() <= 2.0 + 1e-3, f"max {steps.max():.2f} steps from onnxruntime"
    (fake,) = tvm_tiny.build(model, name="q_convs_fq", integer=False).run(x)
    assert len(tvm_tiny.build(model, name="q_convs_fq2", integer=False)
               .metadata["conv_s8"]) == 3
    np.testing.assert_array_equal(fake, y)


def test_dilated_conv_stays_with_the_integer_rule() -> None:
    """Dilation 2: the kernel rejects it, the integer Relax conv still runs it (and the other
    two convolutions are offloaded)."""
    model = _quantized(_float_convs(dilation=2), False)
    lib = tvm_tiny.build(model, name="q_dilated")
    assert [e["kind"] for e in lib.metadata["conv_s8"]] == ["standard", "pointwise"]
    assert not any("conv" in why for why in lib.metadata["not_integerized"])
    x = np.random.default_rng(3).standard_normal((1, 4, 10, 10)).astype(np.float32)
    (y,) = lib.run(x)
    steps = np.abs(y - ort_reference(model, x)) / output_step(model)
    assert steps.max() <= 2.0 + 1e-3, f"max {steps.max():.2f} steps from onnxruntime"


def test_conv_pattern_leaves_float_models_alone() -> None:
    lib = tvm_tiny.build(_float_convs(), name="f_convs")
    assert lib.metadata["conv_s8"] == []


def test_shared_weights_are_stored_once() -> None:
    """The hybrid's Neural-ODE block applies one pair of convolutions three times: six
    instances, two weight arrays, counted once each in params_bytes."""
    from tvm_tiny.testing.hybrid import hybrid_ode_int8

    lib = tvm_tiny.build(hybrid_ode_int8(size="small"), name="hyb_shared")
    entries = lib.metadata["conv_s8"]
    symbols = [e["shared_weights"]["symbol"] for e in entries]
    assert len(entries) == 7 and len(set(symbols)) == 3
    sources = {name: text for name, text in lib.files.items() if "conv_s8" in name}
    assert "".join(sources.values()).count("TT_CONV_S8_SHARED const int8_t") == 7
    tool = shutil.which("clang-format") or str(REPO / ".venv" / "bin" / "clang-format")
    if Path(tool).is_file():  # the instances are written formatted, like every generated file
        for name, text in sources.items():
            proc = subprocess.run([tool, f"--style=file:{REPO / '.clang-format'}",
                                   f"--assume-filename={name}"], input=text,
                                  capture_output=True, text=True, check=True)
            assert proc.stdout == text, f"{name} is not clang-format clean"


@contextlib.contextmanager
def _conv_pattern_withheld() -> Iterator[None]:
    """Partition without the ``tvm_tiny.conv_s8`` pattern: every conv takes the integer rule."""
    original = partitioner.get_patterns_with_prefix
    partitioner.get_patterns_with_prefix = lambda prefix: [
        p for p in original(prefix) if p.name != CONV_S8_COMPOSITE]
    try:
        yield
    finally:
        partitioner.get_patterns_with_prefix = original


# int8 vs onnxruntime's reference QDQ kernels, in output steps: cct measured at most 2 on
# these inputs; the hybrid's own test (tests/test_hybrid.py) allows 3.
NETWORK_MAX_STEPS = 3


@pytest.mark.parametrize("name", ["cct", "hybrid_small"])
def test_int8_networks_equal_the_integer_build_and_stay_close_to_onnxruntime(name: str) -> None:
    """Whole int8 networks: with every conv offloaded the output is bit-identical to the build
    that leaves them to the integer Relax rule (the same arithmetic), and within
    NETWORK_MAX_STEPS of onnxruntime."""
    from tvm_tiny.testing.hybrid import hybrid_ode_int8
    from tvm_tiny.testing.networks import build_network, network_inputs

    model = build_network("cct", dtype="int8") if name == "cct" else hybrid_ode_int8()
    lib = tvm_tiny.build(model, name=f"{name}_conv")
    assert len(lib.metadata["conv_s8"]) == (2 if name == "cct" else 7)
    with _conv_pattern_withheld():
        integer = tvm_tiny.build(model, name=f"{name}_int")
    assert integer.metadata["conv_s8"] == []
    step = output_step(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    for seed in range(3):
        x = network_inputs(model, seed=seed)[0]
        (y,) = lib.run(x)
        np.testing.assert_array_equal(y, integer.run(x)[0])
        ref = session.run(None, {model.graph.input[0].name: x})[0]
        assert np.abs(y - ref).max() / step <= NETWORK_MAX_STEPS + 1e-3


def _two_step_qdq_conv() -> onnx.ModelProto:
    """A hand-written QDQ conv that rounds after the Conv and again after the bias Add
    (Conv -> Q -> DQ -> Add -> Q): the exporter form the two-step output stage reproduces."""
    rng = np.random.default_rng(9)
    w = rng.integers(-127, 128, (6, 3, 3, 3), dtype=np.int8)
    consts = {"x_s": np.float32(0.03), "x_z": np.int8(-7), "w": w,
              "w_s": np.full(6, 0.01, np.float32), "w_z": np.zeros(6, np.int8),
              "a_s": np.float32(0.08), "a_z": np.int8(3),
              "b": (0.5 * rng.standard_normal((6, 1, 1))).astype(np.float32),
              "y_s": np.float32(0.1), "y_z": np.int8(-2)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("QuantizeLinear", ["c", "a_s", "a_z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "a_s", "a_z"], ["cd"]),
             helper.make_node("Add", ["cd", "b"], ["s"]),
             helper.make_node("QuantizeLinear", ["s", "y_s", "y_z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"])]
    graph = helper.make_graph(
        nodes, "two_step", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 7, 7])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_two_step_export_is_offloaded_and_matches_onnxruntime() -> None:
    model = _two_step_qdq_conv()
    lib = tvm_tiny.build(model, name="q_two_step")
    (entry,) = lib.metadata["conv_s8"]
    assert entry["two_step"] and entry["per_channel"] is False
    x = np.random.default_rng(1).standard_normal((1, 3, 7, 7)).astype(np.float32)
    (y,) = lib.run(x)
    steps = np.abs(y - ort_reference(model, x)) / 0.1  # observed: 0 (every output equal)
    assert steps.max() <= 1.0 + 1e-3, f"max {steps.max():.2f} steps from onnxruntime"
