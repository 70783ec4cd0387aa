"""The measurement firmware: sources, cross-compilation and one emulated run.

``main.c`` reads one input, then calls every kernel instance of the batch in turn between
``tt_window_begin()`` / ``tt_window_end()`` and writes its output. Each kernel variant of the
batch is a compile group of its own (the kernel library compiled with that variant's macros and
renamed symbols, plus the instances that use it), so several variants share one firmware. The
compiler flags are the deployed firmware's (:func:`tvm_tiny.firmware.project.firmware_cflags`) and the
linker script has the board's real memory sizes.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvm_tiny.codegen.variant import compile_flags
from tvm_tiny.ir.errors import ToolchainError
from tvm_tiny.targets.boards import Board
from tvm_tiny.tuning.space import ConfigEntity, ConfigSpace
from tvm_tiny.tuning.task import TuningTask

#: Compiler processes one measurement runs at once (one per kernel variant of the batch).
PARALLEL_COMPILES = 2

_STATUS = re.compile(r"tt_tune: config (\d+) status (-?\d+)")


_MAIN_C = """\
/* tvm_tiny tuning harness (generated): {count} configs of {task} on {board}; each instance runs
 * once between tt_window_begin()/tt_window_end() and writes y<k>.bin. Exit: 0 ok, 2 I/O. */
#include <stdint.h>
#include <stdio.h>

#include "tt_port.h"
#include "tvm_tiny/tt_profile.h"
#include "tvm_tiny/tt_runtime.h"

typedef int32_t (*tt_tune_fn)(const void *const *args, void *const *outs, uint8_t *scratch,
                              int32_t scratch_bytes);
{decls}

static const struct {{
  tt_tune_fn fn;
  int32_t scratch_bytes;
}} tt_tune_configs[{count}] = {{
{table}
}};

static float tt_x[{x_floats}] TT_ALIGNED(16);
static float tt_y[{y_floats}] TT_ALIGNED(16);
static uint8_t tt_scratch[{scratch}] TT_ALIGNED(16);

int main(void) {{
  char name[16];
  if (tt_port_read_file("x.bin", tt_x, sizeof(tt_x)) != TT_PORT_OK) {{
    printf("tvm_tiny: cannot read x.bin\\n");
    return 2;
  }}
  for (int32_t k = 0; k < {count}; ++k) {{
    const void *args[1] = {{tt_x}};
    void *outs[1] = {{tt_y}};
    int32_t rc;
    for (int32_t i = 0; i < {y_floats}; ++i) {{
      tt_y[i] = -1e30f; /* an instance that leaves y unwritten fails the check */
    }}
    tt_window_begin();
    rc = tt_tune_configs[k].fn(args, outs, tt_scratch, tt_tune_configs[k].scratch_bytes);
    tt_window_end();
    snprintf(name, sizeof(name), "y%ld.bin", (long)k);
    if (tt_port_write_file(name, tt_y, sizeof(tt_y)) != TT_PORT_OK) {{
      printf("tvm_tiny: cannot write %s\\n", name);
      return 2;
    }}
    printf("tt_tune: config %ld status %ld\\n", (long)k, (long)rc);
    fflush(stdout); /* a later instance may hang: this line must be out first */
  }}
  return 0;
}}
"""


@dataclass
class Firmware:
    """The sources of one measurement firmware."""

    entities: list[ConfigEntity]
    files: dict[str, str] = field(default_factory=dict)
    # compile group ("common" or a variant name) -> (extra flags, sources)
    groups: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    cluster: dict[int, tuple[int, int]] = field(default_factory=dict)  # k -> (cores, forks)

    def add(self, group: str, flags: list[str], source: str) -> None:
        self.groups.setdefault(group, (flags, []))[1].append(source)


def firmware_sources(task: TuningTask, space: ConfigSpace, entities: list[ConfigEntity],
              kernels: dict[int, Any]) -> Firmware:
    from tvm_tiny.firmware.project import linker_script
    from tvm_tiny.targets.resources import kernels_dir, runtime_dir

    board = space.board
    fw = Firmware(list(entities))
    decls, table = [], []
    shape = task.shape
    library: list[str] = []
    for k, entity in enumerate(entities):
        kernel = kernels[entity.index]
        variant = entity.variant()
        path = f"src/cfg{entity.index}.c"
        fw.files[path] = kernel.source
        fw.add(variant.name, compile_flags(variant), path)
        for rel in kernel.library_sources:
            # The kernel library once per variant (renamed symbols); the port once.
            group = variant.name if rel.startswith("mhsa/") else "common"
            flags = compile_flags(variant) if group != "common" else []
            if f"lib/{rel}" not in fw.groups.get(group, ([], []))[1]:
                fw.add(group, flags, f"lib/{rel}")
            if rel not in library:
                library.append(rel)
        decls.append(f"int32_t {kernel.c_function}(const void *const *args, void *const *outs, "
                     "uint8_t *scratch, int32_t scratch_bytes);")
        table.append(f"  {{{kernel.c_function}, {kernel.scratch_bytes}}},")
        fw.labels.append(f"cfg{entity.index}")
        cores = board.cluster_cores
        if cores > 1:
            forks = 2 if min(cores, shape.heads) > 1 else 1
            fw.cluster[k] = (cores, forks)
            fw.labels += [f"cfg{entity.index} fork{f} core{c}" for f in range(forks)
                          for c in range(cores)]
    for rel in library:
        fw.files[f"lib/{rel}"] = (kernels_dir() / rel).read_text()
    for header in (kernels_dir() / "include").glob("*.h"):
        fw.files[f"include/{header.name}"] = header.read_text()
    for rel in ("include/tvm_tiny/tt_profile.h", "include/tvm_tiny/tt_runtime.h",
                "src/tt_profile.c", "ports/semihost/tt_port.h", "ports/semihost/tt_port.c"):
        fw.files[f"rt/{rel}"] = (runtime_dir() / rel).read_text()
    for source in ("rt/src/tt_profile.c", "rt/ports/semihost/tt_port.c", "main.c"):
        fw.add("common", [], source)
    scratch = max(kernels[e.index].scratch_bytes for e in entities)
    fw.files["main.c"] = _MAIN_C.format(
        count=len(entities), task=task.describe(), board=board.name, decls="\n".join(decls),
        table="\n".join(table), x_floats=shape.seq * shape.embed,
        y_floats=shape.seq * shape.out_features, scratch=max(scratch, 16))
    fw.files["board.ld"] = linker_script(board)
    fw.files["labels.txt"] = "\n".join(fw.labels) + "\n"
    return fw


def _run_all(jobs: list[tuple[list[str], Path]], timeout_s: float) -> None:
    """Run compiler commands, up to ``PARALLEL_COMPILES`` at a time; raise on the first
    failure (``ToolchainError`` with the command and its output)."""
    pending = list(jobs)
    running: list[tuple[subprocess.Popen, list[str]]] = []
    deadline = time.monotonic() + timeout_s
    failure: ToolchainError | None = None
    while (pending or running) and failure is None:
        while pending and len(running) < PARALLEL_COMPILES:
            argv, cwd = pending.pop(0)
            running.append((subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True), argv))
        proc, argv = running.pop(0)
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failure = ToolchainError(f"firmware build timed out after {timeout_s} s", argv)
            break
        if proc.returncode != 0:
            failure = ToolchainError("firmware build failed", argv, out)
    for proc, _ in running:
        proc.kill()
        proc.communicate()
    if failure is not None:
        raise failure


def _include_flags(directory: Path) -> list[str]:
    from tvm_tiny.targets.resources import tvm_header_dirs

    flags = [f"-I{directory / d}" for d in ("include", "rt/include", "rt/ports/semihost")]
    return flags + [f"-I{d}" for d in tvm_header_dirs()]


def compile_firmware(board: Board, directory: Path, fw: Firmware, timeout_s: float) -> None:
    """Cross-compile (one command per compile group) and link ``fw`` in ``directory``."""
    from tvm_tiny.firmware.project import firmware_cflags, firmware_ldflags

    assert board.toolchain is not None
    tc = board.toolchain
    jobs, objects = [], []
    for group, (flags, sources) in fw.groups.items():
        out = directory / "obj" / group
        out.mkdir(parents=True, exist_ok=True)
        # TT_PROFILE_STEPS: the cluster port opens one window per core (no effect elsewhere).
        jobs.append(([tc.cc, *tc.arch_flags, *firmware_cflags(board), "-DTT_PROFILE_STEPS",
                      *flags, *_include_flags(directory), "-c",
                      *(str(directory / s) for s in sources)], out))
        objects += [str(out / (Path(s).stem + ".o")) for s in sources]
    _run_all(jobs, timeout_s)
    link = [tc.cc, *tc.arch_flags, *objects,
            *firmware_ldflags(board, str(directory / "board.ld")), "-o",
            str(directory / "tune.elf"), "-lm"]
    _run_all([(link, directory)], timeout_s)


def compile_instance(board: Board, directory: Path, entity: ConfigEntity) -> str | None:
    """Compile one instance alone (no link); the compiler's message when it fails."""
    from tvm_tiny.firmware.project import firmware_cflags

    assert board.toolchain is not None
    tc = board.toolchain
    source = directory / f"src/cfg{entity.index}.c"
    argv = [tc.cc, *tc.arch_flags, *firmware_cflags(board), *compile_flags(entity.variant()),
            *_include_flags(directory), "-c", str(source), "-o", str(source) + ".o"]
    proc = subprocess.run(argv, cwd=directory, capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else proc.stderr + proc.stdout


@dataclass(frozen=True)
class EmulatedRun:
    statuses: dict[int, int]  # k -> kernel status, for every instance that returned
    windows: list[tuple[int, int | None]]  # (depth, instructions or None if unclosed)
    failure: str | None  # why the run did not complete


def emulate(board: Board, directory: Path, x: np.ndarray, timeout_s: float) -> EmulatedRun:
    from tvm_tiny.firmware.qemu import WINDOW_LINE, run_qemu, symbols_of

    assert board.emulator is not None and board.toolchain is not None
    elf = directory / "tune.elf"
    run_dir = directory / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "x.bin").write_bytes(x.tobytes())
    code, console, report = run_qemu(board, elf, symbols_of(board, elf),
                                     directory / "labels.txt", run_dir, timeout_s,
                                     keep_partial_on_timeout=True)
    failure = None
    if code is None:
        failure = f"timeout after {timeout_s} s"
    elif code != 0:
        failure = f"firmware exited with {code}: {console.strip()[-500:]}"
    statuses = {int(m.group(1)): int(m.group(2)) for m in _STATUS.finditer(console)}
    windows = []
    if report.exists():
        for line in report.read_text().splitlines():
            if m := WINDOW_LINE.match(line):
                windows.append((int(m.group(2)), int(m.group(3)) if m.group(3) else None))
    return EmulatedRun(statuses, windows, failure)


def window_costs(fw: Firmware, windows: list[tuple[int, int | None]]
           ) -> dict[int, tuple[float, float]]:
    """(cost, all_cost) per instance k from the windows: the instructions of its window, or on
    a cluster the modelled parallel latency and the instructions of all cores one after
    another."""
    from tvm_tiny.firmware.qemu import FORK_JOIN_INSTRUCTIONS

    costs: dict[int, tuple[float, float]] = {}
    k = -1
    cores_of: dict[int, list[int]] = {}
    for depth, count in windows:
        if depth == 0:
            k += 1
            if count is None:
                break
            costs[k] = (float(count), float(count))
            cores_of[k] = []
        elif depth == 1 and k in cores_of and count is not None:
            cores_of[k].append(count)
    for k, (cores, forks) in fw.cluster.items():
        if k not in costs:
            continue
        per_core = cores_of.get(k, [])
        if len(per_core) != cores * forks:
            del costs[k]
            continue
        groups = [per_core[i:i + cores] for i in range(0, len(per_core), cores)]
        parallel = sum(max(g) + FORK_JOIN_INSTRUCTIONS for g in groups)
        serial = costs[k][0]
        costs[k] = (serial - sum(per_core) + parallel, serial)
    return costs
