"""The generated C is written formatted: clang-format (the PyPI wheel of the ``dev`` extra, with
the repository's ``.clang-format``) changes nothing in it, nor in the C runtime.

The files checked are every generated file (model ``.c``/``.h``, kernel instances, the TIR
``.c``, whose TVM-printed part is fenced off since it is TVM's text) of one float model with TIR
workspace, one TVM-only model, one int8 model and one row-compressed sparse model, and
``runtime_c/``'s runtime. The kernel library (``kernels/``) is not checked: reformatting it is
not part of this change.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tvm_tiny
from tvm_tiny.ir.cformat import braced_items, format_call, value_items
from tvm_tiny.testing.models import mhsa_helper
from tvm_tiny.testing.pruning import pruned_encoder

REPO = Path(__file__).resolve().parents[1]
STYLE = REPO / ".clang-format"
RUNTIME_SOURCES = ("runtime_c/src/tt_runtime.c", "runtime_c/include/tvm_tiny/tt_runtime.h")


@pytest.fixture(scope="module")
def clang_format() -> str:
    """The clang-format binary (``pip install -e .[dev]`` installs the pinned wheel)."""
    venv_tool = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "clang-format"
    tool = shutil.which("clang-format") or (str(venv_tool) if venv_tool.is_file() else None)
    if tool is None:
        pytest.skip("clang-format not found (PyPI package clang-format, in the dev extra)")
    return tool


def _reformatted(tool: str, text: str, name: str) -> str:
    proc = subprocess.run([tool, f"--style=file:{STYLE}", f"--assume-filename={name}"],
                          input=text, capture_output=True, text=True, check=True)
    return proc.stdout


def _first_change(before: str, after: str) -> str:
    for i, (a, b) in enumerate(zip(before.splitlines(), after.splitlines()), 1):
        if a != b:
            return f"line {i}:\n  generated: {a!r}\n  formatted: {b!r}"
    return "line count differs"


def _int8_model() -> object:
    model = mhsa_helper(16, 32, 4, 8)
    rng = np.random.default_rng(7)
    calibration = [rng.standard_normal((1, 16, 32)).astype(np.float32) for _ in range(8)]
    return tvm_tiny.quantize(model, calibration)


BUILDS = {
    "float_offload": lambda data: tvm_tiny.build(data / "encoder_helper_relu.onnx"),
    "float_tvm_only": lambda data: tvm_tiny.build(data / "mha_torch.onnx", offload=False),
    "int8": lambda data: tvm_tiny.build(_int8_model()),
    "sparse": lambda data: tvm_tiny.build(pruned_encoder(0.75)),
}


@pytest.mark.parametrize("case", sorted(BUILDS))
def test_generated_c_is_clang_format_clean(case, clang_format, data_dir):
    lib = BUILDS[case](data_dir)
    generated = sorted(p for p in lib.files if p.startswith("codegen/")
                       and p.endswith((".c", ".h")))
    assert generated
    unformatted = {}
    for rel in generated:
        after = _reformatted(clang_format, lib.files[rel], Path(rel).name)
        if after != lib.files[rel]:
            unformatted[rel] = _first_change(lib.files[rel], after)
    assert not unformatted, unformatted


@pytest.mark.parametrize("rel", RUNTIME_SOURCES)
def test_runtime_is_clang_format_clean(rel, clang_format):
    text = (REPO / rel).read_text()
    after = _reformatted(clang_format, text, Path(rel).name)
    assert after == text, _first_change(text, after)


def test_array_layout_matches_clang_format(clang_format):
    """cformat's column layout of initializers equals clang-format's on arrays of every width
    class (int8, int32, int64, float32 with varying digits, 1 to 300 elements)."""
    rng = np.random.default_rng(0)
    arrays = []
    for n in (1, 2, 4, 5, 6, 7, 9, 16, 33, 64, 127, 300):
        arrays.append(rng.integers(-128, 128, n).astype(np.int8))
        arrays.append(rng.integers(-2**31, 2**31 - 1, n).astype(np.int32))
        arrays.append(rng.integers(-2**40, 2**40, n).astype(np.int64))
        arrays.append((rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n))
                      .astype(np.float32))
    text = "".join(f"static const int a{k}[{a.size}] = {{\n{braced_items(value_items(a))}\n}};\n"
                   for k, a in enumerate(arrays))
    after = _reformatted(clang_format, text, "arrays.c")
    assert after == text, _first_change(text, after)


def test_call_layout_matches_clang_format(clang_format):
    """format_call's choice among its layouts equals clang-format's on calls of many widths."""
    lines = ["void f(void) {"]
    # Up to names that still fit a line: past that (TVM fusing many ops into one name), the
    # C is valid but clang-format would break inside expressions and string literals, which
    # format_call does not imitate.
    for width in range(4, 60, 5):
        name = "k" * width
        args = ["ctx", f"__tvm_ffi_{name}", f'"{name}"', "args", "3"]
        lines.append(format_call("tt_call_packed", args, indent=2, assign="rc ="))
        lines.append(format_call(f"fn_{name}", ["in", "out", f"arena + BUF_{name}_OFFSET",
                                                f"BUF_{name}_BYTES"], indent=2, assign="rc ="))
        lines.append(format_call("tt_make_tensor", [f"(void *)(arena + {name})", "3",
                                                    f"shape_{name}", "kDLFloat", "32"],
                                 indent=2, assign=f"DLTensor t{width} ="))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    after = _reformatted(clang_format, text, "calls.c")
    assert after == text, _first_change(text, after)
