"""Firmware that calls library kernels directly (no model) on an emulated board.

Kernel tests and kernel benchmarks use it to run a C kernel of ``kernels/`` on the boards of
:mod:`tvm_tiny.boards` and to count the INSTRUCTIONS (not cycles) of each call exactly. It
reuses the model firmware's pieces: the board's cross toolchain flags, its linker script with
the real memory sizes (:func:`tvm_tiny.firmware.project.linker_script`), the semihosting port
(``runtime_c/ports/semihost``), the window markers (``runtime_c/src/tt_profile.c``) and the
QEMU ``wincount`` plugin (:mod:`tvm_tiny.firmware.qemu`).

A harness ``main.c`` (see :func:`mhsa_s8_harness`) brackets each kernel call with
``tt_window_begin()``/``tt_window_end()`` and writes its outputs with ``tt_port_write_file``;
:func:`run_kernel_firmware` returns the windows and the files written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_tiny.firmware.project import linker_script
from tvm_tiny.firmware.qemu import (
    Window,
    parse_memory_usage,
    parse_windows,
    run_qemu,
    symbols_of,
)
from tvm_tiny.ir.cformat import const_array
from tvm_tiny.ir.errors import ToolchainError
from tvm_tiny.targets.boards import Board
from tvm_tiny.targets.resources import kernels_dir, runtime_dir
from tvm_tiny.targets.toolchain import (
    WARNING_FLAGS,
    cache_dir,
    require_tool,
    run_tool,
    tree_hash,
    write_tree,
)

__all__ = ["KernelRun", "MhsaS8Case", "build_kernel_firmware", "mhsa_s8_harness",
           "run_kernel_firmware"]

OPT_FLAGS = ("-O2", "-ffunction-sections", "-fdata-sections")


def _runtime_files() -> dict[str, str]:
    rt = runtime_dir()
    return {
        "runtime/src/tt_profile.c": (rt / "src" / "tt_profile.c").read_text(),
        "runtime/include/tvm_tiny/tt_profile.h":
            (rt / "include" / "tvm_tiny" / "tt_profile.h").read_text(),
        "port/tt_port.c": (rt / "ports" / "semihost" / "tt_port.c").read_text(),
        "port/tt_port.h": (rt / "ports" / "semihost" / "tt_port.h").read_text(),
    }


def build_kernel_firmware(board: Board, name: str, sources: dict[str, str],
                          kernel_sources: Sequence[str], defines: Sequence[str] = ()) -> Path:
    """Cross-compile a kernel firmware for ``board`` into the cache; return the ELF's path.

    ``sources`` are the harness files (relative path -> text, e.g. ``{"main.c": ...}``);
    ``kernel_sources`` are paths relative to ``kernels/`` (e.g. ``"mhsa/tt_mhsa_s8.c"``),
    compiled with ``kernels/include`` on the include path (as model builds do); ``defines``
    are ``-D`` arguments. The build is keyed by the content of every file and flag, so an
    unchanged firmware is reused.
    """
    if board.toolchain is None or board.emulator is None or board.placement is None:
        raise ValueError(f"board '{board.name}' has no cross toolchain and emulator")
    tc = board.toolchain
    cc = require_tool(tc.cc, tc.debian_packages)
    files: dict[str, str] = {**_runtime_files(), **sources}
    cg = kernels_dir()
    for rel in kernel_sources:
        files[f"kernels/{rel}"] = (cg / rel).read_text()
    for header in sorted((cg / "include").glob("*.h")):
        files[f"kernels/{header.relative_to(cg)}"] = header.read_text()
    files["firmware.ld"] = linker_script(board)
    flags = (*tc.arch_flags, *WARNING_FLAGS, *OPT_FLAGS, *tc.libc_flags,
             *(f"-D{d}" for d in defines))
    key = tree_hash(files, flags)
    directory = cache_dir() / f"kfw-{board.name}-{name}-{key}"
    elf = directory / "firmware.elf"
    if elf.exists():
        return elf
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tree(tmp, files)
    c_files = [p for p in files if p.endswith(".c") and not p.startswith("kernels/")]
    c_files += [f"kernels/{rel}" for rel in kernel_sources]
    command = [cc, *flags, "-Ikernels/include", "-Iruntime/include",
               "-Iport", *c_files, *tc.link_flags, "-Tfirmware.ld", "-Wl,--gc-sections",
               "-Wl,--print-memory-usage", "-o", "firmware.elf", "-lm"]
    memory = run_tool(command, f"kernel firmware build '{name}' for {board.name}", cwd=tmp)
    (tmp / "firmware.memory.txt").write_text(memory)
    try:
        tmp.rename(directory)
    except OSError:  # another process built it first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return elf


@dataclass(frozen=True)
class KernelRun:
    """One emulated kernel firmware run. Counts are INSTRUCTIONS executed, not cycles."""

    windows: list[Window]
    files: dict[str, bytes]  # files the firmware wrote through semihosting
    console: str
    memory: dict[str, tuple[int, int]]  # linker region -> (bytes used, bytes available)


def run_kernel_firmware(board: Board, elf: Path, labels: Sequence[str]) -> KernelRun:
    """Run ``elf`` in ``board``'s emulator with the wincount plugin; ``labels`` name the
    windows in the order they open. A non-zero exit of the firmware raises ToolchainError."""
    assert board.emulator is not None and board.toolchain is not None
    symbols = symbols_of(board, elf)
    with tempfile.TemporaryDirectory(prefix="tvm_tiny_kfw_") as run:
        run_dir = Path(run)
        (run_dir / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
        code, console, report = run_qemu(board, elf, symbols, run_dir / "labels.txt", run_dir)
        if code != 0:
            raise ToolchainError(f"kernel firmware exited with {code}",
                                 [board.emulator.binary, str(elf)], console)
        windows = parse_windows(report.read_text() if report.exists() else console)
        files = {p.name: p.read_bytes() for p in run_dir.iterdir()
                 if p.name not in ("labels.txt", "windows.txt")}
    memory = parse_memory_usage((elf.parent / "firmware.memory.txt").read_text())
    return KernelRun(windows, files, console, memory)


# -- the int8 MHSA harness ----------------------------------------------------------------------
@dataclass(frozen=True)
class MhsaS8Case:
    """One ``tt_mhsa_s8`` call of a harness: shape, knobs, the ``arrange_s8`` arrays, the
    ``scalar_fields_s8`` values, the int8 input, and the cluster core count (0: plain call)."""

    name: str
    dims: tuple[int, int, int, int, int]  # S, E, H, P, E_out
    rows_per_block: int
    fuse_qk: bool
    arrays: dict[str, np.ndarray]
    scalars: dict[str, int]
    x: np.ndarray
    scratch_bytes: int
    cores: int = 0


def mhsa_s8_harness(cases: Sequence[MhsaS8Case]) -> str:
    """``main.c`` running every case once between window markers; case k writes ``y<k>.bin``.
    One static scratch and one output buffer serve all cases (inputs and parameters are
    constants in flash). Exit status 1 if a call returns an error."""
    parts = ["/* tvm_tiny int8 MHSA kernel harness (generated by tvm_tiny.firmware.kernel_firmware). */",
             "#include <stdint.h>", "#include <stdio.h>", "", '#include "tt_mhsa_s8.h"',
             '#include "tt_port.h"', '#include "tvm_tiny/tt_profile.h"', "",
             "#define TT_ALIGNED(n) __attribute__((aligned(n)))", ""]
    scratch = max(c.scratch_bytes for c in cases)
    out_bytes = max(c.dims[0] * c.dims[4] for c in cases)
    parts.append(f"static int8_t g_scratch[{scratch}] TT_ALIGNED(8);")
    parts.append(f"static int8_t g_y[{out_bytes}] TT_ALIGNED(4);")
    calls = []
    for k, case in enumerate(cases):
        prefix = f"c{k}"
        for field, array in sorted(case.arrays.items()):
            parts.append(const_array(f"{prefix}_{field}", np.ascontiguousarray(array).ravel(), 4))
        parts.append(const_array(f"{prefix}_x", case.x.ravel(), 4))
        s, e, h, p, e_out = case.dims
        inits = [f"    .{field} = {prefix}_{field}," for field in sorted(case.arrays)]
        inits += [f"    .{field} = {value}," for field, value in case.scalars.items()]
        parts.append(f"static const tt_mhsa_s8_params {prefix}_params = {{\n"
                     + "\n".join(inits) + "\n};")
        parts.append(f"static const tt_mhsa_dims {prefix}_dims = {{{s}, {e}, {h}, {p}, "
                     f"{e_out}}};")
        parts.append(f"static const tt_mhsa_config {prefix}_cfg = {{{case.rows_per_block}, "
                     f"{int(case.fuse_qk)}}};\n")
        call = (f"tt_mhsa_s8_cluster(&{prefix}_dims, &{prefix}_cfg, &{prefix}_params, "
                f"{prefix}_x, g_y, g_scratch, {case.scratch_bytes}, {case.cores})"
                if case.cores else
                f"tt_mhsa_s8(&{prefix}_dims, &{prefix}_cfg, &{prefix}_params, {prefix}_x, "
                f"g_y, g_scratch, {case.scratch_bytes})")
        calls.append(f"""  /* {case.name} */
  tt_window_begin();
  rc = {call};
  tt_window_end();
  if (rc != TT_OK) {{
    printf("tvm_tiny: case {k} returned %d\\n", (int)rc);
    status = 1;
  }}
  if (tt_port_write_file("y{k}.bin", g_y, {s * e_out}) != TT_PORT_OK) {{
    status = 2;
  }}""")
    parts.append("int main(void) {\n  tt_status rc;\n  int status = 0;\n" + "\n".join(calls)
                 + "\n  return status;\n}\n")
    return "\n".join(parts)
