"""Two different models in one program: every model symbol is prefixed and each model's runtime
state (TIR workspace, last error) lives in its own context, so both link and run side by side.

One host program (gcc, ``-Wall -Wextra -Werror``) links an offloaded float model with TIR
workspace and a TVM-only model whose TIR allocates workspace three times, with the runtime and the
kernel library compiled once; it runs both, interleaved, and writes their outputs, which must
equal each model's own ``lib.run`` bit for bit. A failed run of one model (an arena too small)
sets its error and leaves the other's empty.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from tvm_tiny.ir.cformat import c_type
from tvm_tiny.targets.toolchain import HOST_FLAGS, WARNING_FLAGS

#: (tests/data model, offload): both have TIR steps that allocate workspace.
MODELS = [("encoder_helper_relu", True), ("mha_torch", False)]

_MAIN = """\
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

{includes}

static void *read_file(const char *path, size_t size) {{
  void *data = malloc(size);
  FILE *f = fopen(path, "rb");
  if (data == NULL || f == NULL || fread(data, 1, size, f) != size) exit(2);
  fclose(f);
  return data;
}}

static void write_file(const char *path, const void *data, size_t size) {{
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(data, 1, size, f) != size) exit(2);
  fclose(f);
}}

int main(void) {{
  int round;
{declarations}
  for (round = 0; round < 2; ++round) {{ /* interleaved, twice: no state leaks across runs */
{runs}
  }}
{failure}
  return 0;
}}
"""


def _model_block(k: int, lib) -> tuple[str, str]:
    """(declarations, run statements) of model ``k`` in the test program."""
    p = lib.prefix
    decls = [f"  struct {p}_inputs in{k};", f"  struct {p}_outputs out{k};"]
    for i, t in enumerate(lib.inputs):
        decls.append(f'  in{k}.{t.name} = read_file("m{k}_in{i}.bin", '
                     f"{p.upper()}_{t.name.upper()}_SIZE);")
    for t in lib.outputs:
        decls.append(f"  out{k}.{t.name} = ({c_type(t.dtype)} *)malloc("
                     f"{p.upper()}_{t.name.upper()}_SIZE);")
    runs = [f"    if ({p}_run(&in{k}, &out{k}) != 0) {{",
            f'      printf("model {k}: %s\\n", {p}_last_error());', "      return 1;", "    }"]
    for i, t in enumerate(lib.outputs):
        runs.append(f'    write_file("m{k}_out{i}.bin", out{k}.{t.name}, '
                    f"{p.upper()}_{t.name.upper()}_SIZE);")
    return "\n".join(decls), "\n".join(runs)


def _program_files(libs: list) -> dict[str, str]:
    """Every model's generated sources and one copy of the runtime tree (shared files equal)."""
    files: dict[str, str] = {}
    for lib in libs:
        for rel, text in lib.files.items():
            if rel.endswith((".c", ".h")):
                assert files.get(rel, text) == text, f"{rel} differs between the two models"
                files[rel] = text
    return files


@pytest.fixture(scope="module")
def two_models(built, model_inputs, tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found (Debian package: gcc)")
    libs = [built(name, offload) for name, offload in MODELS]
    assert libs[0].prefix != libs[1].prefix
    root = tmp_path_factory.mktemp("two_models")
    for rel, text in _program_files(libs).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    blocks = [_model_block(k, lib) for k, lib in enumerate(libs)]
    small = libs[1].prefix
    failure = "\n".join([
        "  {",
        "    static uint8_t small[16];",
        f"    if ({small}_run_with_arena(&in1, &out1, small, sizeof(small)) == 0) return 3;",
        f'    printf("error1: %s\\n", {small}_last_error());',
        f'    printf("error0: [%s]\\n", {libs[0].prefix}_last_error());',
        "  }",
    ])
    (root / "main.c").write_text(_MAIN.format(
        includes="\n".join(f'#include "{lib.prefix}.h"' for lib in libs),
        declarations="\n".join(b[0] for b in blocks), runs="\n".join(b[1] for b in blocks),
        failure=failure))
    sources = sorted({s for lib in libs for s in lib.source_files()}) + ["main.c"]
    includes = sorted({f"-I{d}" for lib in libs for d in lib.include_dirs()})
    flags = [f for f in HOST_FLAGS if f not in ("-shared", "-fPIC", "-Wl,-Bsymbolic")]
    command = [gcc, *WARNING_FLAGS, *flags, *includes, *sources, "-o", "two_models", "-lm"]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr[-3000:]}"
    for k, (name, _) in enumerate(MODELS):
        for i, value in enumerate(model_inputs(name).values()):
            (root / f"m{k}_in{i}.bin").write_bytes(np.ascontiguousarray(value).tobytes())
    run = subprocess.run(["./two_models"], cwd=root, capture_output=True, text=True,
                         check=False, timeout=60)
    return libs, root, run


def test_two_models_link_and_match_lib_run(two_models, model_inputs):
    libs, root, run = two_models
    assert run.returncode == 0, run.stdout + run.stderr
    for k, ((name, _), lib) in enumerate(zip(MODELS, libs)):
        expected = lib.run(*model_inputs(name).values())
        for i, (spec, want) in enumerate(zip(lib.outputs, expected)):
            got = np.fromfile(root / f"m{k}_out{i}.bin", dtype=spec.dtype).reshape(spec.shape)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} output {i}")


def test_one_models_error_is_its_own(two_models):
    libs, _, run = two_models
    assert run.returncode == 0, run.stdout + run.stderr
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    assert f"{libs[1].prefix.upper()}_ARENA_BYTES" in lines["error1"]
    assert lines["error0"] == "[]"


@pytest.mark.parametrize("case", MODELS, ids=[m for m, _ in MODELS])
def test_generated_model_code_has_no_mutable_global_but_its_context(case, built):
    """The model .c defines exactly two mutable statics, both model-prefixed: its context and
    its arena; the runtime none."""
    lib = built(*case)
    # clang-format continues a long declaration on the next line, indented by four
    text = lib.files[f"codegen/host/src/{lib.prefix}.c"].replace("\n    ", " ")
    statics = re.findall(r"^static (?!const )[\w ]+? \**(\w+)\s*[\[;]", text, re.M)
    assert statics == [f"{lib.prefix}_context", f"{lib.prefix}_arena"], statics
    runtime = lib.files["runtime/src/tt_runtime.c"]
    assert not [line for line in runtime.splitlines()
                if line.startswith("static ") and "(" not in line]


def test_tir_source_calls_only_its_models_backend(built):
    lib = built("mha_torch", False)
    tir = lib.files[f"codegen/host/src/{lib.prefix}_tir.c"]
    assert f"#define TVMBackendAllocWorkspace {lib.prefix}_TVMBackendAllocWorkspace" in tir
    model = lib.files[f"codegen/host/src/{lib.prefix}.c"]
    assert f"{lib.prefix}_TVMBackendAllocWorkspace(" in model
    assert "TVMBackendAllocWorkspace(" not in lib.files["runtime/src/tt_runtime.c"]
