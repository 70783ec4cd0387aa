"""The generated C: strict C99 for host and both board toolchains, heap-free, deterministic, and
exported in the Model Library Format-like layout.

Cross-compiler tests skip, naming the Debian package, when a toolchain is missing; CI installs
them all (scripts/setup.sh) so it skips nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import tvm_tiny

STRICT_C_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O2")
HEAP_FUNCTIONS = ("malloc", "calloc", "realloc", "free", "aligned_alloc", "posix_memalign")

#: (tests/data model, offload): one offloaded model with TIR around it, one TVM-only model.
MODELS = [("encoder_helper_relu", True), ("mha_torch", False)]


def _model_id(case: tuple[str, bool]) -> str:
    return f"{case[0]}-{'offload' if case[1] else 'tvm'}"


@dataclass(frozen=True)
class Compiler:
    """A C compiler for one target: tool, flags, and the Debian packages providing it."""

    tool: str
    flags: tuple[str, ...]
    package: str
    libc_package: str


COMPILERS = {
    "host": Compiler("gcc", (), "gcc", "libc6-dev"),
    "cortex-m4": Compiler(
        "arm-none-eabi-gcc",
        ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
        "gcc-arm-none-eabi", "libnewlib-arm-none-eabi"),
    "rv32imac": Compiler(
        "riscv64-unknown-elf-gcc",
        ("-march=rv32imac", "-mabi=ilp32", "--specs=picolibc.specs"),
        "gcc-riscv64-unknown-elf", "picolibc-riscv64-unknown-elf"),
}

_LIBC_PROBE = "#include <math.h>\n#include <stdint.h>\n#include <string.h>\nint f(void);\n" \
              "int f(void) { return (int)sqrtf(4.0f); }\n"


@pytest.fixture(scope="session")
def compiler_path(tmp_path_factory: pytest.TempPathFactory):
    """``compiler_path(key)``: the compiler's path, or skip naming the missing Debian package."""
    checked: dict[str, str] = {}

    def find(key: str) -> str:
        if key not in checked:
            compiler = COMPILERS[key]
            path = shutil.which(compiler.tool)
            if path is None:
                pytest.skip(f"{compiler.tool} not found (Debian package: {compiler.package})")
            probe = tmp_path_factory.mktemp(f"probe-{key}") / "probe.c"
            probe.write_text(_LIBC_PROBE)
            proc = subprocess.run([path, *compiler.flags, "-c", str(probe), "-o",
                                   str(probe.with_suffix(".o"))],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                pytest.skip(f"{compiler.tool} has no usable C library (Debian package: "
                            f"{compiler.libc_package}): {proc.stderr.strip()[-300:]}")
            checked[key] = path
        return checked[key]

    return find


def _compile_each(lib: tvm_tiny.TinyModule, tool: str, flags: tuple[str, ...], root: Path
                  ) -> list[Path]:
    """``-c`` every .c file of ``lib`` (written under ``root``); fail listing each error."""
    lib.write_sources(root)
    includes = [f"-I{root / d}" for d in lib.include_dirs()]
    objects, failures = [], []
    for rel in lib.source_files():
        obj = root / "obj" / (rel.replace("/", "__") + ".o")
        obj.parent.mkdir(exist_ok=True)
        command = [tool, *STRICT_C_FLAGS, *flags, *includes, "-c", str(root / rel),
                   "-o", str(obj)]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            failures.append(f"{rel}:\n  {' '.join(command)}\n{proc.stderr.strip()[-2000:]}")
        objects.append(obj)
    assert not failures, "\n\n".join(failures)
    return objects


@pytest.fixture(scope="session")
def host_objects(built, tmp_path_factory: pytest.TempPathFactory, compiler_path):
    """``host_objects(case)``: host gcc objects of every .c of a MODELS case (cached)."""
    cache: dict[tuple[str, bool], list[Path]] = {}

    def objects(case: tuple[str, bool]) -> list[Path]:
        if case not in cache:
            root = tmp_path_factory.mktemp(f"host-{_model_id(case)}")
            cache[case] = _compile_each(built(*case), compiler_path("host"), (), root)
        return cache[case]

    return objects


@pytest.mark.parametrize("key", sorted(COMPILERS))
@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_sources_compile_strict_c99(case, key, built, compiler_path, host_objects, tmp_path):
    lib = built(*case)
    assert any(p.startswith("codegen/host/src/") for p in lib.source_files())
    if key == "host":
        assert all(obj.is_file() for obj in host_objects(case))
        return
    compiler = COMPILERS[key]
    objects = _compile_each(lib, compiler_path(key), compiler.flags, tmp_path)
    assert all(obj.is_file() for obj in objects)


def _strip_c_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_sources_never_call_the_heap(case, built):
    heap_call = re.compile(rf"\b({'|'.join(HEAP_FUNCTIONS)})\s*\(")
    found = []
    for rel, text in sorted(built(*case).files.items()):
        if rel.endswith((".c", ".h")):
            for match in heap_call.finditer(_strip_c_comments(text)):
                found.append(f"{rel}: {match.group(0)}")
    assert not found, found


@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_host_objects_reference_no_heap_symbol(case, host_objects):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found (Debian package: binutils)")
    referenced: dict[str, set[str]] = {}
    for obj in host_objects(case):
        out = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True, check=True)
        names = {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if line}
        referenced[obj.name] = names & set(HEAP_FUNCTIONS)
    assert not any(referenced.values()), referenced
    assert referenced, "no object was compiled"


def _first_difference(a: dict[str, str], b: dict[str, str]) -> str:
    if sorted(a) != sorted(b):
        return f"file lists differ: {sorted(set(a) ^ set(b))}"
    for rel in sorted(a):
        if a[rel] != b[rel]:
            lines = zip(a[rel].splitlines(), b[rel].splitlines())
            line = next((i for i, (x, y) in enumerate(lines) if x != y), None)
            return f"{rel} differs at line {line}"
    return ""


@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_build_is_deterministic(case, built, data_dir):
    name, offload = case
    again = tvm_tiny.build(data_dir / f"{name}.onnx", offload=offload)
    assert again.files == built(*case).files, _first_difference(again.files, built(*case).files)


def _files_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def test_build_is_deterministic_across_processes(built, data_dir):
    """Another interpreter with another hash seed (set/dict order) emits the same bytes."""
    name = "encoder_helper_relu"
    script = (
        "import hashlib, json, sys, tvm_tiny\n"
        "lib = tvm_tiny.build(sys.argv[1])\n"
        "print(hashlib.sha256(json.dumps(lib.files, sort_keys=True).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", script, str(data_dir / f"{name}.onnx")],
                          capture_output=True, text=True, env=env, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == _files_digest(built(name).files)


@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_export_library_format(case, built, tmp_path):
    lib = built(*case)
    path = lib.export_library_format(tmp_path / "model.tar")
    with tarfile.open(path) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        contents = {rel: tar.extractfile(m).read().decode() for rel, m in members.items()}
    names = sorted(members)
    assert any(re.fullmatch(r"codegen/host/src/[^/]+\.c", n) for n in names), names
    assert any(re.fullmatch(r"codegen/host/include/[^/]+\.h", n) for n in names), names
    assert any(n.startswith("runtime/") and n.endswith(".c") for n in names), names
    assert any(n.startswith("runtime/") and n.endswith(".h") for n in names), names
    assert "metadata.json" in names and "src/relax.txt" in names
    assert contents == lib.files
    assert json.loads(contents["metadata.json"]) == lib.metadata
    assert all(m.mtime == 0 for m in members.values())
    again = lib.export_library_format(tmp_path / "again.tar")
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("input_name", ["float", "int"])
def test_input_named_like_a_c_keyword(input_name):
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", [input_name], ["y"])], "keyword",
                              [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    lib = tvm_tiny.build(model)
    value = np.array([[-1.0, 0.5, -2.0, 3.0]], np.float32)
    (out,) = lib.run(value)
    np.testing.assert_array_equal(out, np.maximum(value, 0))
