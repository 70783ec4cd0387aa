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
from tvm_tiny.ir.provenance import model_sha256
from tvm_tiny.testing.models import mhsa_helper

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


# -- what a board engineer reads (issue 13, item 7) ---------------------------------------------
def _generated(lib: tvm_tiny.TinyModule) -> dict[str, str]:
    return {rel: text for rel, text in lib.files.items()
            if rel.startswith("codegen/") and rel.endswith((".c", ".h"))}


@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_every_generated_file_states_its_provenance(case, built, data_dir):
    name, offload = case
    lib = built(*case)
    path = data_dir / f"{name}.onnx"
    # Arguments equal to build's defaults (target="host" here) are left out of the call.
    call = f'tvm_tiny.build("{path}"' + ("" if offload else ", offload=False") + ")"
    expected = [f"Generated by tvm_tiny {tvm_tiny.__version__} (Apache TVM ",
                f"Model SHA-256: {model_sha256(path)}", "Target: host", f"Made by: {call}"]
    files = _generated(lib)
    assert any(rel.endswith("_tir.c") for rel in files)
    assert not offload or any("_tvm_tiny_mhsa_" in rel for rel in files)
    for rel, text in files.items():
        head = text[:text.index("*/")]
        missing = [line for line in expected if line not in head]
        assert not missing, f"{rel}: header lacks {missing}"


@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_arena_plan_is_a_table_and_the_code_uses_its_macros(case, built):
    lib = built(*case)
    text = lib.files[f"codegen/host/src/{lib.prefix}.c"]
    upper = lib.prefix.upper()
    plan = lib.metadata["memory_plan"]
    assert plan
    table = text[text.index(" * Arena plan:"):]
    table = table[:table.index("*/")]
    for k, buf in enumerate(plan):
        assert f"#define {upper}_BUF{k}_OFFSET {buf['offset']}u\n" in text
        assert f"#define {upper}_BUF{k}_BYTES {buf['bytes']}u\n" in text
        row = re.search(rf"^ \* BUF{k} +(\d+) +(\d+) +(\d+) +(\d+)  (.*)$", table, re.M)
        assert row is not None, f"no table row for BUF{k} {buf['name']}"
        assert [int(v) for v in row.groups()[:4]] == [
            buf["offset"], buf["bytes"], buf["first_step"], buf["last_step"]]
        # The name comes last, so a long one is cut ("...") and never hides a number.
        shown = row.group(5).removesuffix("...")
        assert f"{buf['name']}: ".startswith(shown) or shown.startswith(f"{buf['name']}: ")
    code = _strip_c_comments(text)
    assert not re.search(r"arena \+ \d", code), "bare arena offset in the code"
    assert f"arena + {upper}_BUF" in code


def test_constants_carry_recoverable_onnx_names_only(built, onnx_model):
    lib = built("encoder_helper_relu")
    names = {init.name for init in onnx_model("encoder_helper_relu").graph.initializer}
    quoted, unnamed = set(), 0
    for text in _generated(lib).values():
        for comment in re.findall(r"/\*(.*?)\*/", text, re.S):
            comment = " ".join(comment.replace("*", " ").split())
            quoted.update(re.findall(r"ONNX initializer '([^']+)'", comment))
            unnamed += "no ONNX initializer holds these values" in comment
    assert quoted and quoted <= names, quoted - names
    # LayerNorm parameters reach TIR unchanged; the MHSA weights reach the kernel instance.
    assert any("norm" in n for n in quoted) and any("attn" in n for n in quoted), quoted
    model_c = lib.files[f"codegen/host/src/{lib.prefix}.c"]
    constants = re.findall(r"/\* constant \d+: ([^*]*)\*/", model_c.replace("\n *", ""))
    assert constants and all("ONNX initializer" in c or "no ONNX initializer" in c
                             for c in constants), constants


@pytest.mark.parametrize("case", MODELS, ids=_model_id)
def test_no_python_repr_in_generated_c(case, built):
    for rel, text in _generated(built(*case)).items():
        for marker in ("np.", "numpy", "array(", "dtype("):
            assert marker not in text, f"{rel} holds {marker!r}"


@pytest.fixture(scope="module")
def int8_lib():
    model = mhsa_helper(16, 32, 4, 8)
    rng = np.random.default_rng(7)
    calibration = [rng.standard_normal((1, 16, 32)).astype(np.float32) for _ in range(8)]
    return tvm_tiny.build(tvm_tiny.quantize(model, calibration))


def test_int8_multipliers_carry_their_real_scales(int8_lib):
    (rel,) = [r for r in int8_lib.files if "_tvm_tiny_mhsa_" in r and r.endswith(".c")]
    text = int8_lib.files[rel]
    assert "np." not in text and "repr" not in text
    # Scalars: a comment "/* name: R = M * 2^E */" above ".name_mult = M," ".name_shift = S,".
    scalars = re.findall(r"/\* ([\w/]+): (\S+) = (-?\d+) \* 2\^(-?\d+) \*/\n"
                         r" +\.(\w+)_mult = (-?\d+),\n +\.\w+_shift = (-?\d+),", text)
    mults = re.findall(r"^ +\.(\w+_mult) = -?\d+,$", text, re.M)
    assert scalars and len(scalars) == len(mults), (scalars, mults)
    for _label, real, mult, exponent, name, mult_again, shift in scalars:
        assert mult == mult_again
        expected_exponent = -int(shift) if name == "probs" else int(shift) - 31
        assert int(exponent) == expected_exponent, name
        assert float(real) == pytest.approx(int(mult) * 2.0 ** int(exponent), rel=1e-6)
    # Arrays: the comment over each *_mult array gives one real multiplier per element.
    for name, count in re.findall(r"static const int32_t \w+_(\w+_mult)\[(\d+)\]", text):
        comment = re.search(rf"/\*[\s*]*{name} \(with \w+\), real multipliers:(.*?)\*/", text,
                            re.S)
        assert comment is not None, name
        reals = re.findall(r"(\S+) = (-?\d+) \* 2\^(-?\d+)", comment.group(1).replace("\n *", ""))
        assert len(reals) == int(count), name
        for real, mult, exponent in reals:
            assert float(real) == pytest.approx(int(mult) * 2.0 ** int(exponent), rel=1e-6)


def test_tir_workspace_comes_from_the_tir_and_equals_the_c_text(built):
    """The workspace planned per TIR call (read from the TIR after LowerTVMBuiltin) equals the
    sum of the aligned TVMBackendAllocWorkspace sizes the printed C asks for."""
    lib = built("mha_torch", False)
    tir = lib.files[f"codegen/host/src/{lib.prefix}_tir.c"]
    starts = [(m.start(), m.group(1)) for m in re.finditer(
        r"int32_t __tvm_ffi_(\w+)\(void\* self_handle[^)]*\)\s*\{", tir)]
    from_c: dict[str, int] = {}
    for k, (start, symbol) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(tir)
        sizes = re.findall(r"AllocWorkspace\(\s*\d+\s*,\s*\w+\s*,\s*\(uint64_t\)(\d+)",
                           tir[start:end])
        from_c[symbol.removeprefix(f"{lib.prefix}_")] = sum(-(-int(s) // 16) * 16 for s in sizes)
    planned = {f["name"]: f["workspace_bytes"] for f in lib.metadata["tvm_functions"]}
    assert any(planned.values())
    assert planned == {name: from_c[name] for name in planned}
