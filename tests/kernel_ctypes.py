"""What the int8 linear and convolution kernel tests share: ctypes harness, compilers, ORT.

``tt_conv_s8`` runs its standard convolutions through ``tt_linear_s8`` and takes a
``tt_linear_s8_params`` inside its own params, so both tests compile the C the same way (host
gcc, strict C99 warnings), pass it the same parameter struct and buffers, call it the same way,
check it with the same cross compilers and emulated boards, and compare their offloaded QDQ
models with the same onnxruntime reference. Written once here, a change to the struct or to the
checks of the arguments is made (and tested) once for both kernels.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tvm_tiny.codegen.linear_s8 import SCALAR_FIELDS
from tvm_tiny.targets.boards import Board, get_board

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "kernels"
INCLUDES = [KERNELS / "include", REPO / "runtime_c" / "include"]
STRICT_C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
SHARED_LIBRARY_FLAGS = ["-O2", "-shared", "-fPIC", "-Wl,-Bsymbolic"]

TT_OK, TT_ARG_ERROR, TT_SCRATCH_ERROR = 0, -1, -2

CORTEX_M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]
"""arm-none-eabi-gcc flags of the Cortex-M4F boards (the DSP path's target)."""

CROSS_COMPILERS = [
    pytest.param("arm-none-eabi-gcc", CORTEX_M4_FLAGS, id="cortex-m4"),
    pytest.param("arm-none-eabi-gcc", ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard",
                                       "-mfpu=fpv5-d16"], id="cortex-m7"),
    pytest.param("riscv64-unknown-elf-gcc", ["--specs=picolibc.specs", "-march=rv32imc",
                                             "-mabi=ilp32"], id="rv32imc"),
    pytest.param("gcc", [], id="host"),
]
"""(compiler, flags) of every target the kernels must compile warning-free for."""

I8P = ctypes.POINTER(ctypes.c_int8)
I32P = ctypes.POINTER(ctypes.c_int32)


class LinearS8Params(ctypes.Structure):
    """``tt_linear_s8_params`` (``kernels/include/tt_linear_s8.h``; a test per kernel checks
    the header against these fields)."""

    _fields_ = ([("weights", I8P), ("kernel_bias", I32P), ("mult", I32P), ("shift", I32P)]
                + [(name, ctypes.c_int32) for name in SCALAR_FIELDS] + [("bias2", I32P)])


def fill_linear_s8_params(params: LinearS8Params, arrays: Mapping[str, np.ndarray],
                          scalars: Mapping[str, int]) -> None:
    """Point ``params`` at ``arrays`` (``arrange_linear_s8``'s, kept alive by the caller) and
    set its ``scalars`` (``scalar_fields_linear_s8``'s)."""
    for name, array in arrays.items():
        setattr(params, name, array.ctypes.data_as(I32P if array.dtype == np.int32 else I8P))
    for name, value in scalars.items():
        setattr(params, name, value)


def compile_c(compiler: str, flags: Sequence[str], sources: Sequence[Path], output: Path) -> None:
    """Compile ``sources`` with the strict warnings and the kernel include paths; the test fails
    with the compiler's message if it does not compile cleanly."""
    argv = [compiler, *STRICT_C_FLAGS, *flags, *(f"-I{d}" for d in INCLUDES),
            *map(str, sources), "-o", str(output)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stderr}"


def compile_paths(out: Path, stem: str, paths: Mapping[str, Sequence[str]],
                  sources: Sequence[Path]) -> dict[str, ctypes.CDLL]:
    """One host shared library of ``sources`` per C path (its name → its compile flags)."""
    libs = {}
    for name, flags in paths.items():
        lib = out / f"lib{stem}_{name}.so"
        compile_c("gcc", [*SHARED_LIBRARY_FLAGS, *flags], sources, lib)
        libs[name] = ctypes.CDLL(str(lib))
    return libs


def board_with_tools(board_name: str) -> Board:
    """The board ``board_name``, the test skipped when its compiler or emulator is missing."""
    board = get_board(board_name)
    assert board.toolchain is not None and board.emulator is not None
    for tool in (board.toolchain.cc, board.emulator.binary):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")
    return board


def aligned(nbytes: int, rng: np.random.Generator) -> np.ndarray:
    """int8 buffer of nbytes at an 8-byte aligned address, garbage-filled."""
    raw = np.empty(nbytes + 8, np.uint8)
    start = (-raw.ctypes.data) % 8
    buf = raw[start:start + nbytes].view(np.int8)
    buf[...] = rng.integers(-128, 128, nbytes, dtype=np.int8)
    return buf


@dataclass
class Call:
    """One call with all its arguments, mutable for the rejection cases."""

    dims: ctypes.Structure
    config: ctypes.Structure
    params: ctypes.Structure
    x: np.ndarray
    y: np.ndarray
    scratch: np.ndarray
    scratch_bytes: int
    keep: list[np.ndarray]


class KernelFront:
    """ctypes front of one compiled path of ``tt_<kernel>(dims, config, params, x, y, scratch,
    scratch_bytes)`` and its ``tt_<kernel>_get_buffer_size(dims, config)``."""

    def __init__(self, lib: ctypes.CDLL, kernel: str, dims: type[ctypes.Structure],
                 config: type[ctypes.Structure], params: type[ctypes.Structure]) -> None:
        self.kernel = kernel
        self._size = getattr(lib, f"{kernel}_get_buffer_size")
        self._size.argtypes = [ctypes.POINTER(dims), ctypes.POINTER(config)]
        self._size.restype = ctypes.c_int32
        self._run = getattr(lib, kernel)
        self._run.argtypes = [ctypes.POINTER(dims), ctypes.POINTER(config),
                              ctypes.POINTER(params), I8P, I8P, I8P, ctypes.c_int32]
        self._run.restype = ctypes.c_int

    def buffer_size(self, dims: ctypes.Structure | None, config: ctypes.Structure | None
                    ) -> int:
        return self._size(dims and ctypes.byref(dims), config and ctypes.byref(config))

    def call(self, c: Call) -> int:
        return self._run(ctypes.byref(c.dims), ctypes.byref(c.config), ctypes.byref(c.params),
                         c.x.ctypes.data_as(I8P), c.y.ctypes.data_as(I8P),
                         c.scratch.ctypes.data_as(I8P), c.scratch_bytes)

    def run_call(self, c: Call) -> np.ndarray:
        """The output of the prepared call ``c``, which must succeed."""
        status = self.call(c)
        assert status == TT_OK, f"{self.kernel} returned {status}"
        return c.y.copy()


def assert_bit_exact(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if not np.array_equal(got, want):
        bad = tuple(int(i) for i in np.argwhere(got != want)[0])
        pytest.fail(f"{what}: {int((got != want).sum())} of {got.size} differ; first at {bad}: "
                    f"got {got[bad]}, expected {want[bad]}")


def ort_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for the input ``x`` with the graph optimizations off, so that it
    runs the QDQ graph as written (no fused integer kernels with their own rounding)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options)
    return session.run(None, {"x": x})[0]


def output_step(model: onnx.ModelProto) -> float:
    """The scale of the QuantizeLinear feeding the graph output's DequantizeLinear."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    (dq,) = [n for n in model.graph.node if n.output[0] == model.graph.output[0].name]
    return float(inits[dq.input[1]])
