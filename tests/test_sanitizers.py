"""C hygiene (issue #9): the generated C under AddressSanitizer + UndefinedBehaviorSanitizer, and
no heap in any linked firmware.

Sanitizers: a subset of models is compiled from ``lib.files`` (``TinyModule.source_files()`` /
``include_dirs()``) with ``gcc -fsanitize=address,undefined -fno-sanitize-recover=all -g`` into
an executable together with a generated ``main.c``. It reads every input from ``input<i>.bin`` into
a heap block of exactly the input's size, runs the model twice (static arena, then a caller arena
of exactly ``ARENA_BYTES``, also on the heap so ASan's redzone sits right after its last byte),
and writes ``output<i>.bin`` / ``arena_output<i>.bin`` from exact-size blocks. No Python runs in
that process, so ASan needs no ``LD_PRELOAD``. The outputs must equal ``lib.run``'s.

Firmware: a board project (``tvm_tiny.export_project`` + ``make``) is linked with the cross
toolchain and ``<prefix>nm`` must list no allocator symbol in either ELF. A canary program that
does call ``malloc`` is linked the same way first, so the check cannot pass vacuously.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_DIR

import tvm_tiny
from tvm_tiny.targets.boards import get_board
from tvm_tiny.testing.models import mhsa_helper

SANITIZE_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-O1", "-g", "-fno-omit-frame-pointer",
                  "-fno-strict-aliasing", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all")
#: LeakSanitizer is off: it needs ptrace, which many CI containers deny, and the models use no
#: heap at all (the firmware nm check below and test_generated_c.py's object check prove it).
SANITIZER_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:abort_on_error=0:detect_leaks=0:strict_string_checks=1:"
                    "detect_stack_use_after_return=1:check_initialization_order=1",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
#: Allocator entry points (C and newlib/picolibc reentrant names) no firmware may link.
HEAP_SYMBOLS = frozenset({
    "malloc", "free", "calloc", "realloc", "_malloc_r", "_free_r", "_calloc_r", "_realloc_r",
    "aligned_alloc", "posix_memalign", "memalign", "reallocarray"})
RUN_TIMEOUT_S = 300

#: (id, tests/data model or builder, target, offload, MHSAs offloaded). Chosen to cover every
#: code path once: P != E/H with E_out != E, no biases, two MHSAs inside TIR (offloaded and TVM
#: alone), torch's packed projection, two inputs and two outputs (near misses, TVM), the GAP9
#: cluster kernel with its serial port, S = 1 with P = 1, and FWSA (E < 2P) with a partial DFT
#: block (S = 13).
CASES = [
    ("proj", "mhsa_helper_proj", "host", True, 1),
    ("nobias", "mhsa_helper_nobias", "host", True, 1),
    ("encoder", "encoder_helper_relu", "host", True, 2),
    ("encoder-tvm", "encoder_helper_relu", "host", False, 0),
    ("mha_torch", "mha_torch", "host", True, 1),
    ("cross-attention", "near_miss_cross_attention", "host", True, 0),
    ("two-outputs", "near_miss_leaked_output", "host", True, 0),
    ("gap9-cluster", "encoder_helper_gelu", "gap9", True, 2),
    ("s1-p1", lambda: mhsa_helper(1, 4, 4, 1, biases=False, scale_op="div"), "host", True, 1),
    ("fused-qk-partial-block", lambda: mhsa_helper(13, 4, 2, 7, out_features=5), "host", True,
     1),
]

_PROBE = "#include <stdlib.h>\nint main(void) { char *p = malloc(4); p[0] = 1; " \
         "int r = p[0] - 1; free(p); return r; }\n"


@pytest.fixture(scope="session")
def sanitizer_gcc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """gcc, if it can link and run an ASan+UBSan program; else skip saying what is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found (Debian package: gcc)")
    probe = tmp_path_factory.mktemp("asan-probe")
    (probe / "probe.c").write_text(_PROBE)
    build = subprocess.run([gcc, *SANITIZE_FLAGS, "probe.c", "-o", "probe"], cwd=probe,
                           capture_output=True, text=True, check=False)
    if build.returncode != 0:
        pytest.skip("gcc cannot link -fsanitize=address,undefined: libasan/libubsan missing "
                    "(Debian packages libasan8 libubsan1, pulled in by gcc): "
                    + build.stderr.strip()[-300:])
    run = subprocess.run([str(probe / "probe")], capture_output=True, text=True, check=False,
                         env=_sanitizer_env())
    if run.returncode != 0:
        pytest.skip(f"ASan programs cannot run here (exit {run.returncode}): "
                    + run.stderr.strip()[-300:])
    return gcc


def _sanitizer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(SANITIZER_ENV)
    return env


def harness_main(lib: tvm_tiny.TinyModule) -> str:
    """``main.c`` for the sanitizer executable of ``lib`` (exit 0 ok, 1 model error, 2 I/O)."""
    p, upper = lib.prefix, lib.prefix.upper()
    lines = []
    for i, t in enumerate(lib.inputs):
        lines.append(f'  inputs.{t.name} = read_exact("input{i}.bin", {upper}_{t.name.upper()}'
                     f"_SIZE);")
    for t in lib.outputs:
        size = f"{upper}_{t.name.upper()}_SIZE"
        lines.append(f"  outputs.{t.name} = poisoned({size});")
        lines.append(f"  arena_outputs.{t.name} = poisoned({size});")
    allocs = "\n".join(lines)
    writes = "\n".join(
        f'  write_all("output{i}.bin", outputs.{t.name}, {upper}_{t.name.upper()}_SIZE);\n'
        f'  write_all("arena_output{i}.bin", arena_outputs.{t.name}, '
        f"{upper}_{t.name.upper()}_SIZE);"
        for i, t in enumerate(lib.outputs))
    frees = "\n".join([f"  free((void *)inputs.{t.name});" for t in lib.inputs]
                      + [f"  free(outputs.{t.name});\n  free(arena_outputs.{t.name});"
                         for t in lib.outputs])
    return _MAIN_C.format(prefix=p, upper=upper, allocs=allocs, writes=writes, frees=frees)


_MAIN_C = """\
/* Sanitizer harness (generated by tests/test_sanitizers.py): every buffer is an exact-size heap
 * block, so AddressSanitizer reports any access past an input, an output or the arena. */
#define _POSIX_C_SOURCE 200112L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tvm_tiny/tt_runtime.h"
#include "{prefix}.h"

static void die(const char *what, const char *detail, int code) {{
  fprintf(stderr, "harness: %s: %s\\n", what, detail);
  exit(code);
}}

static void *read_exact(const char *path, size_t size) {{
  FILE *f = fopen(path, "rb");
  void *data = malloc(size);
  if (f == NULL || data == NULL) die("cannot open", path, 2);
  if (fread(data, 1, size, f) != size || fgetc(f) != EOF) die("wrong size", path, 2);
  fclose(f);
  return data;
}}

static void *poisoned(size_t size) {{
  void *data = malloc(size);
  if (data == NULL) die("out of memory", "output", 2);
  memset(data, 0xA5, size);  /* a model that skips an element leaves a NaN-ish pattern */
  return data;
}}

static void write_all(const char *path, const void *data, size_t size) {{
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0) die("cannot write", path,
                                                                         2);
}}

int main(void) {{
  struct {prefix}_inputs inputs;
  struct {prefix}_outputs outputs;
  struct {prefix}_outputs arena_outputs;
  size_t arena_bytes = {upper}_ARENA_BYTES > 0 ? {upper}_ARENA_BYTES : 1;
  void *arena = NULL;
  int32_t rc;
{allocs}
  rc = {prefix}_run(&inputs, &outputs);
  if (rc != 0) die("run", {prefix}_last_error(), 1);
  if (posix_memalign(&arena, {upper}_ARENA_ALIGNMENT, arena_bytes) != 0) {{
    die("out of memory", "arena", 2);
  }}
  memset(arena, 0xA5, arena_bytes);
  rc = {prefix}_run_with_arena(&inputs, &arena_outputs, (uint8_t *)arena, {upper}_ARENA_BYTES);
  if (rc != 0) die("run_with_arena", {prefix}_last_error(), 1);
{writes}
{frees}
  free(arena);
  return 0;
}}
"""


def build_sanitized(lib: tvm_tiny.TinyModule, gcc: str, root: Path) -> Path:
    """Write ``lib``'s sources plus the harness under ``root`` and link the ASan executable."""
    lib.write_sources(root)
    (root / "harness" / "main.c").parent.mkdir(parents=True, exist_ok=True)
    (root / "harness" / "main.c").write_text(harness_main(lib))
    exe = root / "model_asan"
    command = [gcc, *SANITIZE_FLAGS, *(f"-I{d}" for d in lib.include_dirs()),
               *lib.source_files(), "harness/main.c", "-o", str(exe), "-lm"]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr[-4000:]}"
    return exe


def run_sanitized(lib: tvm_tiny.TinyModule, exe: Path, inputs: list[np.ndarray]
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run the executable; return (outputs, arena outputs). Any sanitizer report fails."""
    work = exe.parent / "run"
    work.mkdir(exist_ok=True)
    for i, array in enumerate(inputs):
        (work / f"input{i}.bin").write_bytes(np.ascontiguousarray(array).tobytes())
    proc = subprocess.run([str(exe)], cwd=work, capture_output=True, text=True, check=False,
                          env=_sanitizer_env(), timeout=RUN_TIMEOUT_S)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{report[-6000:]}"
    assert "runtime error:" not in report and "Sanitizer" not in report, report[-6000:]

    def read(stem: str) -> list[np.ndarray]:
        return [np.fromfile(work / f"{stem}{i}.bin", dtype=t.dtype).reshape(t.shape)
                for i, t in enumerate(lib.outputs)]

    return read("output"), read("arena_output")


@pytest.fixture(scope="module")
def case_lib(built) -> object:
    """``case_lib(case)``: the TinyModule of a CASES entry (tests/data ones shared per session)."""
    cache: dict[str, tvm_tiny.TinyModule] = {}

    def get(case: tuple) -> tvm_tiny.TinyModule:
        key, model, target, offload, _ = case
        if key not in cache:
            if isinstance(model, str) and target == "host":
                cache[key] = built(model, offload=offload)
            else:
                source = DATA_DIR / f"{model}.onnx" if isinstance(model, str) else model()
                cache[key] = tvm_tiny.build(source, target=target, offload=offload,
                                            name=f"asan_{key.replace('-', '_')}")
        return cache[key]

    return get


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_generated_c_is_clean_under_asan_and_ubsan(case, case_lib, sanitizer_gcc, tmp_path):
    lib = case_lib(case)
    assert len(lib.metadata["offloaded"]) == case[4], "the case must cover what CASES says"
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(t.shape).astype(t.dtype) for t in lib.inputs]
    exe = build_sanitized(lib, sanitizer_gcc, tmp_path)
    outputs, arena_outputs = run_sanitized(lib, exe, inputs)
    expected = lib.run(*inputs)
    for i, (got, via_arena, ref) in enumerate(zip(outputs, arena_outputs, expected)):
        # Same C, same libm, no FMA contraction on x86-64 by default: -O1 with sanitizers and
        # the -O2 shared library compute the same bits; a tolerance would only hide a read of
        # uninitialized or out-of-bounds memory that happens to be small.
        np.testing.assert_array_equal(got, ref, err_msg=f"output {i} vs lib.run")
        np.testing.assert_array_equal(via_arena, ref, err_msg=f"output {i} (caller arena)")


def test_harness_catches_an_out_of_bounds_write(sanitizer_gcc, case_lib, tmp_path):
    """Negative control: the same harness with one output a byte too small must fail in ASan,
    so a green run above means the model stayed inside its buffers."""
    lib = case_lib(CASES[0])
    exe = build_sanitized(lib, sanitizer_gcc, tmp_path)
    source = (tmp_path / "harness" / "main.c").read_text()
    (spec,) = lib.outputs
    size = f"{lib.prefix.upper()}_{spec.name.upper()}_SIZE"
    broken = source.replace(f"outputs.{spec.name} = poisoned({size});",
                            f"outputs.{spec.name} = poisoned({size} - 1);", 1)
    assert broken != source
    (tmp_path / "harness" / "main.c").write_text(broken)
    command = [sanitizer_gcc, *SANITIZE_FLAGS, *(f"-I{d}" for d in lib.include_dirs()),
               *lib.source_files(), "harness/main.c", "-o", str(exe), "-lm"]
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    work = tmp_path / "run"
    work.mkdir()
    for i, t in enumerate(lib.inputs):
        (work / f"input{i}.bin").write_bytes(np.zeros(t.shape, t.dtype).tobytes())
    proc = subprocess.run([str(exe)], cwd=work, capture_output=True, text=True, check=False,
                          env=_sanitizer_env(), timeout=RUN_TIMEOUT_S)
    assert proc.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]


# -- no heap in any linked firmware ----------------------------------------------------------
FIRMWARE_BOARDS = ["stm32l4", "stm32h7", "gap9"]


def _cross_tools(board_name: str) -> tuple[str, str]:
    """(cc, nm) of the board's toolchain, or skip naming the Debian packages."""
    board = get_board(board_name)
    assert board.toolchain is not None
    tools = [shutil.which(board.toolchain.cc), shutil.which(board.toolchain.nm),
             shutil.which("make")]
    if None in tools:
        pytest.skip(f"{board.toolchain.cc}/{board.toolchain.nm}/make not found (Debian: "
                    f"{board.toolchain.debian_packages} make)")
    return tools[0], tools[1]


def _heap_symbols(nm: str, elf: Path) -> tuple[set[str], set[str]]:
    """(every symbol name of ``elf``, the allocator ones among them)."""
    out = subprocess.run([nm, str(elf)], capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    return names, names & HEAP_SYMBOLS


@pytest.mark.parametrize("board", FIRMWARE_BOARDS)
def test_heap_check_sees_a_canary_malloc(board, tmp_path):
    """A program calling malloc, linked with the board's libc flags, shows it to nm."""
    cc, nm = _cross_tools(board)
    tc = get_board(board).toolchain
    assert tc is not None
    (tmp_path / "canary.c").write_text(
        "#include <stdlib.h>\nint main(void) { void *p = malloc(16); free(p); "
        "return p == NULL; }\n")
    subprocess.run([cc, *tc.arch_flags, *tc.libc_flags, *tc.link_flags, "-O2", "canary.c",
                    "-o", "canary.elf"], cwd=tmp_path, check=True, capture_output=True)
    _, heap = _heap_symbols(nm, tmp_path / "canary.elf")
    assert {"malloc", "free"} <= heap


@pytest.mark.parametrize("board", FIRMWARE_BOARDS)
def test_linked_firmware_has_no_heap(board, data_dir, tmp_path):
    """The exported project of the test encoder (two offloaded MHSAs, TIR with workspace; on
    GAP9 the cluster kernel) links without any allocator, in both of its ELFs."""
    from tvm_tiny.firmware.project import ELF, PROFILED_ELF

    _, nm = _cross_tools(board)
    lib = tvm_tiny.build(data_dir / "encoder_helper_relu.onnx", target=board)
    assert len(lib.metadata["offloaded"]) == 2
    out = tvm_tiny.export_project(lib, tmp_path / board)
    make = subprocess.run(["make", "-C", str(out), "-j2", "all"], capture_output=True, text=True,
                          check=False)
    assert make.returncode == 0, make.stdout[-2000:] + make.stderr[-4000:]
    for elf in (ELF, PROFILED_ELF):
        names, heap = _heap_symbols(nm, out / elf)
        assert f"{lib.prefix}_run" in names, f"{elf}: entry point missing from nm output"
        assert not heap, f"{elf} links allocator symbols {sorted(heap)}"
