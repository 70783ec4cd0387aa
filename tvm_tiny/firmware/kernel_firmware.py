"""Firmware that calls library kernels directly (no model) on an emulated board.

Kernel tests and kernel benchmarks use it to run a C kernel of ``kernels/`` on the boards of
:mod:`tvm_tiny.targets.boards` and to count the INSTRUCTIONS (not cycles) of each call exactly.
It is a :class:`tvm_tiny.firmware.builder.FirmwareSpec` like a model's firmware: the same
builder, board flags and include rule, the board's linker script with the real memory sizes
(:func:`tvm_tiny.firmware.linker.linker_script`), the semihosting port, the window markers
(``runtime_c/src/tt_profile.c``) and :func:`tvm_tiny.firmware.qemu.emulate`.

A harness ``main.c`` (see :func:`mhsa_s8_harness`) brackets each kernel call with
``tt_window_begin()``/``tt_window_end()`` and writes its outputs with ``tt_port_write_file``;
:func:`run_kernel_firmware` returns the windows and the files written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_tiny.firmware.builder import (
    PORT_DIR,
    FirmwareSpec,
    Image,
    Unit,
    build_cached,
    memory_usage,
    port_files,
)
from tvm_tiny.firmware.linker import linker_script
from tvm_tiny.firmware.qemu import emulate
from tvm_tiny.firmware.windows import Window
from tvm_tiny.ir.cformat import const_array
from tvm_tiny.ir.errors import ToolchainError
from tvm_tiny.targets.boards import Board
from tvm_tiny.targets.resources import kernels_dir, runtime_dir

__all__ = ["KernelRun", "MhsaS8Case", "build_kernel_firmware", "kernel_firmware",
           "mhsa_s8_harness", "run_kernel_firmware"]

ELF = "build/firmware.elf"
_PROFILE = "runtime/src/tt_profile.c"


def kernel_firmware(board: Board, name: str, sources: dict[str, str],
                    kernel_sources: Sequence[str], defines: Sequence[str] = ()) -> FirmwareSpec:
    """The spec of a kernel firmware: the harness ``sources`` (relative path -> text, e.g.
    ``{"main.c": ...}``), the ``kernel_sources`` (paths relative to ``kernels/``, e.g.
    ``"mhsa/tt_mhsa_s8.c"``) with every header of ``kernels/include``, the window markers and
    the port; ``defines`` are ``-D`` arguments of every unit."""
    if board.toolchain is None or board.emulator is None or board.placement is None:
        raise ValueError(f"board '{board.name}' has no cross toolchain and emulator")
    rt, kernels = runtime_dir(), kernels_dir()
    files: dict[str, str] = {
        _PROFILE: (rt / "src" / "tt_profile.c").read_text(),
        "runtime/include/tvm_tiny/tt_profile.h":
            (rt / "include" / "tvm_tiny" / "tt_profile.h").read_text(),
        **port_files(),
        **sources,
    }
    for rel in kernel_sources:
        files[f"kernels/{rel}"] = (kernels / rel).read_text()
    for header in sorted((kernels / "include").glob("*.h")):
        files[f"kernels/{header.relative_to(kernels).as_posix()}"] = header.read_text()
    script = f"firmware/{board.name}.ld"
    files[script] = linker_script(board)
    flags = tuple(f"-D{d}" for d in defines)
    harness = [p for p in sources if p.endswith(".c")]
    order = [_PROFILE, f"{PORT_DIR}/tt_port.c", *harness, *(f"kernels/{r}" for r in kernel_sources)]
    return FirmwareSpec(name, board, files, script,
                        (Image(ELF, tuple(Unit(s, flags=flags) for s in order)),))


def build_kernel_firmware(board: Board, name: str, sources: dict[str, str],
                          kernel_sources: Sequence[str], defines: Sequence[str] = ()) -> Path:
    """Cross-compile a kernel firmware (:func:`kernel_firmware`) for ``board`` into the cache;
    return the ELF's path. The build is keyed by the content of every file and command, so an
    unchanged firmware is reused."""
    spec = kernel_firmware(board, name, sources, kernel_sources, defines)
    return build_cached(spec, "kfw") / ELF


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
    assert board.emulator is not None
    run = emulate(board, elf, labels)
    if run.exit_code != 0:
        raise ToolchainError(f"kernel firmware exited with {run.exit_code}",
                             [board.emulator.binary, str(elf)], run.console)
    return KernelRun(run.windows(), run.files, run.console, memory_usage(elf))


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
    parts = ["/* tvm_tiny int8 MHSA kernel harness (generated by "
             "tvm_tiny.firmware.kernel_firmware). */",
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
