"""Run a model on an emulated board and count its INSTRUCTIONS exactly (DESIGN.md §4).

:func:`run_on_board` builds the model's firmware project (:mod:`tvm_tiny.firmware.project`) in the cache
with the board's cross toolchain, runs it in QEMU with ``-icount shift=0`` and our TCG plugin
``wincount`` (``runtime_c/tools/qemu_wincount``), and reads back the outputs (semihosting files),
the instruction count of the run, of every kernel call, the memory use per linker region and
the stack high-water mark. On RISC-V the firmware also reads ``minstret`` around the run, an
independent cross-check of the plugin.

Every count here is a number of executed instructions, never cycles: QEMU models no pipeline,
cache, wait state or (GAP9) Xpulp extension.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tvm_tiny.firmware.project import (
    ELF,
    LABELS,
    MAX_LABEL_CHARS,
    PROFILED_ELF,
    PROFILED_LABELS,
    board_for,
    cluster_steps,
    per_kernel,
    project_files,
)
from tvm_tiny.ir.errors import RunError, ToolchainError
from tvm_tiny.targets.boards import Board
from tvm_tiny.targets.resources import runtime_dir
from tvm_tiny.targets.toolchain import cache_dir, require_tool, run_tool, tree_hash, write_tree

if TYPE_CHECKING:
    from tvm_tiny.module import TinyModule

QEMU_TIMEOUT_S = 600
#: ASSUMED cost of one fork/join on a PULP cluster (task dispatch through the event unit, then
#: the hardware barrier), in instructions of the slowest core. Not measured: an order of
#: magnitude for the modelled cluster latency until a GVSOC or board figure replaces it.
FORK_JOIN_INSTRUCTIONS = 100
_PLUGIN_CFLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC")
_EXIT_MEANING = {1: "the model returned an error", 2: "a semihosting file operation failed",
                 3: "the outputs differ from the expected files"}


# -- the wincount plugin ------------------------------------------------------------------------
@functools.cache
def qemu_version(binary: str) -> tuple[int, int]:
    """(major, minor) of a QEMU binary, from ``--version``."""
    path = require_tool(binary, "qemu-system-arm" if binary.endswith("arm") else "qemu-system-misc")
    text = run_tool([path, "--version"], f"{binary} --version")
    match = re.search(r"version (\d+)\.(\d+)", text)
    if match is None:
        raise ToolchainError(f"cannot read the version of {binary}", [path, "--version"], text)
    return int(match.group(1)), int(match.group(2))


def plugin_api_version(binary: str, required: bool = True) -> int:
    """The TCG plugin API version wincount must declare for this QEMU.

    The plugin uses the version-1 API (QEMU 4.2 to 8.x; tested with 7.2). ``required=False``
    returns 1 when the QEMU binary is not installed (exported Makefiles can override it).
    """
    try:
        major, minor = qemu_version(binary)
    except ToolchainError:
        if required:
            raise
        return 1
    if (major, minor) < (4, 2) or major >= 9:
        raise ToolchainError(
            f"{binary} {major}.{minor}: the wincount plugin uses the QEMU 4.2-8.x plugin API "
            "(version 1); QEMU 9 changed the inline-counter functions it needs")
    return 1


def wincount_plugin(binary: str = "qemu-system-arm") -> Path:
    """Path of the wincount plugin built for ``binary``'s QEMU, building it on first use.

    Built with host gcc into the cache (``scripts/setup.sh`` builds it at set-up time).
    """
    api = plugin_api_version(binary)
    source = runtime_dir() / "tools" / "qemu_wincount" / "wincount.c"
    text = source.read_text()
    key = tree_hash({"wincount.c": text}, (*_PLUGIN_CFLAGS, f"api{api}"))
    out_dir = cache_dir() / "qemu_wincount" / f"api{api}-{key}"
    plugin = out_dir / "libwincount.so"
    if plugin.exists():
        return plugin
    gcc = require_tool("gcc", "gcc")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"libwincount.so.tmp{id(text)}"
    run_tool([gcc, *_PLUGIN_CFLAGS, f"-DAPI_VERSION={api}", str(source), "-o", str(tmp)],
             "build of the QEMU wincount plugin")
    tmp.replace(plugin)
    return plugin


# -- parsing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One instruction-count window reported by the plugin."""

    label: str
    depth: int
    instructions: int


WINDOW_LINE = re.compile(r"wincount: window (\d+) depth (\d+) (?:instructions (\d+)|unclosed) "
                         r"label (.*)$")
"""One line of the wincount plugin's report (window index, depth, instructions or unclosed)."""
_TOTAL = re.compile(r"wincount: total (\d+) windows (\d+) dropped (\d+) unbalanced (\d+)")


def parse_windows(report: str) -> list[Window]:
    """Windows of a wincount report; an unclosed, dropped or unbalanced window is an error."""
    windows: list[Window] = []
    total = None
    for line in report.splitlines():
        if m := WINDOW_LINE.match(line):
            if m.group(3) is None:
                raise ToolchainError(f"instruction window {m.group(1)} ({m.group(4)}) never "
                                     "closed: the firmware stopped inside it")
            windows.append(Window(m.group(4), int(m.group(2)), int(m.group(3))))
        elif m := _TOTAL.match(line):
            total = m
    if total is None:
        raise ToolchainError("the wincount plugin wrote no report", stderr=report)
    if int(total.group(3)) or int(total.group(4)):
        raise ToolchainError(f"wincount: {total.group(3)} windows dropped, {total.group(4)} "
                             "unbalanced end markers", stderr=report)
    return windows


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_REGION = re.compile(r"^\s*(\S+):\s+(\d+)\s*(B|KB|MB|GB)\s+(\d+)\s*(B|KB|MB|GB)\s+[\d.]+%")


def parse_memory_usage(text: str) -> dict[str, tuple[int, int]]:
    """``ld --print-memory-usage`` → {region: (bytes used, region size)} (ld prints exact
    multiples: a value shown in KB is a whole number of KiB)."""
    regions = {}
    for line in text.splitlines():
        if m := _REGION.match(line):
            regions[m.group(1)] = (int(m.group(2)) * _UNITS[m.group(3)],
                                   int(m.group(4)) * _UNITS[m.group(5)])
    return regions


def _symbols(nm: str, elf: Path) -> dict[str, int]:
    out = run_tool([nm, str(elf)], f"nm of {elf.name}")
    table = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            table[parts[2]] = int(parts[0], 16)
    return table


# -- building and running -----------------------------------------------------------------------
def _check_toolchain(board: Board) -> None:
    assert board.toolchain is not None and board.emulator is not None
    tc = board.toolchain
    cc = require_tool(tc.cc, tc.debian_packages)
    require_tool(tc.nm, tc.debian_packages)
    require_tool("make", "make")
    require_tool(board.emulator.binary, board.emulator.debian_package)
    specs = run_tool([cc, "-print-file-name=picolibc.specs"], f"{tc.cc} -print-file-name").strip()
    if not Path(specs).is_absolute():
        raise ToolchainError(f"{tc.cc} has no picolibc (picolibc.specs not found); install it "
                             f"with: apt-get install {tc.debian_packages}")


def check_board_tools(board: Board) -> None:
    """Raise :class:`ToolchainError` naming the Debian package of any tool the board's
    firmware needs (cross compiler with picolibc, make, QEMU) that is missing."""
    _check_toolchain(board)


def build_firmware(lib: TinyModule, board: Board | None = None) -> Path:
    """Build the model's firmware project for ``board`` in the cache; return its directory.

    The directory is keyed by the content of every project file (sources, flags, linker
    script), so an unchanged model reuses its build. A model that does not fit the board's
    memories fails here with the linker's "region ... overflowed" message.
    """
    board = board_for(lib, board)
    _check_toolchain(board)
    assert board.emulator is not None
    files = project_files(lib, board, plugin_api_version(board.emulator.binary))
    directory = cache_dir() / f"fw-{board.name}-{lib.prefix}-{tree_hash(files)}"
    if not directory.exists():
        tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_tree(tmp, files)
        try:
            tmp.rename(directory)
        except OSError:  # another process created it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    run_tool(["make", "-s", "-C", str(directory), "-j2", "all"],
             f"firmware build of '{lib.name}' for {board.name}")
    return directory


@dataclass(frozen=True)
class _Emulated:
    outputs: list[np.ndarray]
    windows: list[Window]
    console: str  # what the firmware printed


def run_qemu(board: Board, elf: Path, symbols: dict[str, int], labels: Path, run_dir: Path,
             timeout_s: float = QEMU_TIMEOUT_S, keep_partial_on_timeout: bool = False
             ) -> tuple[int | None, str, Path]:
    """Run ``elf`` in the board's QEMU with our instruction-window plugin, in ``run_dir``.

    Returns the exit code, the console (QEMU prints the firmware's semihosting stdout on its
    stderr) and the path of the window report. On a timeout it raises, unless
    ``keep_partial_on_timeout``: then the exit code is None and the console is what the
    firmware printed before it was killed (the tuner keeps the configs that finished).
    """
    plugin = wincount_plugin(board.emulator.binary)
    report = run_dir / "windows.txt"
    paths = (plugin, labels, report)
    if any("," in str(p) for p in paths):
        raise ToolchainError(f"QEMU plugin arguments cannot hold commas: {paths}")
    command = [*board.emulator.argv(), "-kernel", str(elf), "-plugin",
               f"{plugin},begin={symbols['tt_window_begin']:#x},"
               f"end={symbols['tt_window_end']:#x},labels={labels},out={report}"]
    try:
        proc = subprocess.run(command, cwd=run_dir, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        if not keep_partial_on_timeout:
            raise ToolchainError(f"{board.emulator.binary} did not finish within "
                                 f"{timeout_s} s", command) from err
        console = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                          for part in (err.stdout or "", err.stderr or ""))
        return None, console, report
    return proc.returncode, proc.stdout + proc.stderr, report


def symbols_of(board: Board, elf: Path) -> dict[str, int]:
    """Symbol addresses of a firmware (``nm`` of the board's toolchain)."""
    assert board.toolchain is not None
    return _symbols(require_tool(board.toolchain.nm, board.toolchain.debian_packages), elf)


def _emulate(lib: TinyModule, board: Board, directory: Path, elf: str, labels: str,
             arrays: list[np.ndarray]) -> _Emulated:
    assert board.toolchain is not None and board.emulator is not None
    elf_path = directory / elf
    symbols = _symbols(board.toolchain.nm, elf_path)
    with tempfile.TemporaryDirectory(prefix="tvm_tiny_run_") as run:
        run_dir = Path(run)
        for i, array in enumerate(arrays):
            (run_dir / f"input{i}.bin").write_bytes(array.tobytes())
        code, console, report = run_qemu(board, elf_path, symbols, directory / labels, run_dir)
        if code == 1:
            detail = re.search(r"tvm_tiny: error: (.*)", console)
            raise RunError(f"model '{lib.name}' failed on {board.name}: "
                           f"{detail.group(1) if detail else console.strip()}")
        if code != 0:
            meaning = _EXIT_MEANING.get(code, "the emulator failed")
            raise ToolchainError(f"{board.emulator.binary} exited with {code}: {meaning}",
                                 [board.emulator.binary, str(elf_path)], console)
        outputs = [np.fromfile(run_dir / f"output{i}.bin", dtype=t.dtype).reshape(t.shape)
                   for i, t in enumerate(lib.outputs)]
        windows = parse_windows(report.read_text() if report.exists() else console)
    return _Emulated(outputs, windows, console)


@dataclass(frozen=True)
class BoardRun:
    """One model run on an emulated board. Every count is INSTRUCTIONS executed, not cycles."""

    board: str
    machine: str
    outputs: list[np.ndarray]
    instructions: int  # one model run (entry point call), firmware without per-kernel markers
    per_step: list[tuple[str, int]]  # each kernel call in order: (kernel name, instructions)
    per_kernel: dict[str, int]  # kernel name -> instructions, summed over its calls
    profiled_instructions: int  # the run in the per-kernel firmware (markers cost a few each)
    minstret: int | None  # RISC-V: minstret delta around the run (cross-check), else None
    memory: dict[str, tuple[int, int]]  # linker region -> (bytes used, bytes available)
    stack_used: int  # deepest stack use of the firmware (painted-stack scan), bytes
    stack_bytes: int  # stack reserved by the linker script
    cluster: ClusterModel | None = None  # GAP9: MODELLED parallel latency of cluster kernels


@dataclass(frozen=True)
class ClusterModel:
    """MODELLED latency of the cluster kernels (GAP9): each core's task is measured (the
    portable port runs the cores one after another), the parallel time of a fork is modelled as
    the slowest core plus :data:`FORK_JOIN_INSTRUCTIONS`. Instructions, not cycles."""

    cores: int
    fork_join_instructions: int
    per_core: dict[str, list[list[int]]]  # kernel call -> per fork -> instructions per core
    modelled_per_step: dict[str, int]  # cluster kernel call -> modelled parallel instructions
    serial_instructions: int  # the whole run with the cores one after another (measured)
    modelled_instructions: int  # the whole run with each fork modelled as parallel


def _cluster_model(lib: TinyModule, serial_total: int, profiled: list[Window],
                   steps: list[tuple[str, int]]) -> ClusterModel | None:
    """Group the per-core windows (depth 2) under their kernel call and model the forks."""
    clusters = cluster_steps(lib)
    if not clusters:
        return None
    cores_of_step: list[list[int]] = []
    for w in profiled[1:]:
        if w.depth == 1:
            cores_of_step.append([])
        elif w.depth == 2 and cores_of_step:
            cores_of_step[-1].append(w.instructions)
        else:
            raise ToolchainError(f"unexpected instruction window {w}")
    per_core: dict[str, list[list[int]]] = {}
    modelled: dict[str, int] = {}
    saved = 0
    for (name, count), windows in zip(steps, cores_of_step):
        cluster = clusters.get(name)
        if cluster is None:
            continue
        n = cluster["cores"]
        if len(windows) != n * cluster["forks"]:
            raise ToolchainError(f"{name}: expected {cluster['forks']} forks of {n} core "
                                 f"windows, got {len(windows)} windows")
        forks = [windows[i:i + n] for i in range(0, len(windows), n)]
        parallel = sum(max(f) + FORK_JOIN_INSTRUCTIONS for f in forks)
        serial = sum(sum(f) for f in forks)
        per_core[name] = forks
        modelled[name] = count - serial + parallel
        saved += serial - parallel
    cores = max(c["cores"] for c in clusters.values())
    return ClusterModel(cores, FORK_JOIN_INSTRUCTIONS, per_core, modelled, serial_total,
                        serial_total - saved)


def _field(pattern: str, console: str) -> int | None:
    match = re.search(pattern, console)
    return int(match.group(1)) if match else None


def run_on_board(lib: TinyModule, *inputs: np.ndarray, board: Board | None = None) -> BoardRun:
    """Cross-compile ``lib`` for its board, run it in the board's emulator, count instructions.

    Runs two firmwares of the same project: ``model.elf`` gives the outputs and the exact
    instruction count of one run; ``model_profiled.elf`` (entry point built with
    ``TT_PROFILE_STEPS``) gives one window per kernel call. Counts are deterministic.
    """
    board = board_for(lib, board)
    assert board.emulator is not None and board.placement is not None
    arrays = lib._check_inputs(inputs)
    directory = build_firmware(lib, board)
    plain = _emulate(lib, board, directory, ELF, LABELS, arrays)
    profiled = _emulate(lib, board, directory, PROFILED_ELF, PROFILED_LABELS, arrays)
    steps = [(w.label, w.instructions) for w in profiled.windows if w.depth == 1]
    expected = [s["name"] for s in lib.metadata["steps"]]
    # The plugin holds labels up to MAX_LABEL_CHARS; long fused TIR names come back truncated.
    if [w.depth for w in plain.windows] != [0] or profiled.windows[0].depth != 0 or \
            [n for n, _ in steps] != [name[:MAX_LABEL_CHARS] for name in expected]:
        raise ToolchainError(f"unexpected instruction windows on {board.name}: "
                             f"{plain.windows} / {profiled.windows}")
    steps = [(name, count) for name, (_, count) in zip(expected, steps)]
    cluster = _cluster_model(lib, plain.windows[0].instructions, profiled.windows, steps)
    for a, b in zip(plain.outputs, profiled.outputs):
        if a.tobytes() != b.tobytes():
            raise ToolchainError("the per-kernel firmware computed different outputs than the "
                                 "plain one; the window markers must not change results")
    memory = parse_memory_usage((directory / ELF).with_suffix(".memory.txt").read_text())
    return BoardRun(
        board=board.name, machine=board.emulator.machine, outputs=plain.outputs,
        instructions=plain.windows[0].instructions, per_step=steps, per_kernel=per_kernel(steps),
        profiled_instructions=profiled.windows[0].instructions,
        minstret=_field(r"tvm_tiny: minstret (\d+)", plain.console), memory=memory,
        stack_used=_field(r"tvm_tiny: stack_used (\d+)", plain.console) or 0,
        stack_bytes=board.placement.stack_bytes, cluster=cluster)


def main() -> None:
    """``python -m tvm_tiny.firmware.qemu``: build the wincount plugin for every installed QEMU."""
    for binary in ("qemu-system-arm", "qemu-system-riscv32"):
        if not shutil.which(binary):
            print(f"{binary}: not installed, plugin not built")
            continue
        try:
            print(f"{binary}: {wincount_plugin(binary)}")
        except ToolchainError as err:  # report, keep going: set-up must not stop here
            print(f"{binary}: plugin NOT built: {err}")


if __name__ == "__main__":
    main()
