"""Run a firmware in the board's QEMU and count its INSTRUCTIONS exactly (DESIGN.md §4).

:func:`emulate` is the one place that runs QEMU: ``-icount shift=0`` and our TCG plugin
``wincount`` (``runtime_c/tools/qemu_wincount``), semihosting for the firmware's files, in a run
directory holding its inputs; it returns the exit code, the console, the files the firmware wrote
and the plugin's report (read with :func:`tvm_tiny.firmware.windows.parse_windows`). Model runs
(:mod:`tvm_tiny.firmware.runner`), kernel harnesses (:mod:`tvm_tiny.firmware.kernel_firmware`)
and the tuner (:mod:`tvm_tiny.tuning.firmware`) all go through it.

Every count is a number of executed instructions, never cycles: QEMU models no pipeline, cache,
wait state or (GAP9) Xpulp extension.

``python -m tvm_tiny.firmware`` (:func:`main`) builds the plugin for every installed QEMU
(``scripts/setup.sh`` runs it at set-up time; :func:`wincount_plugin` also builds it on first
use).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tvm_tiny.firmware.windows import Window, labels_text, parse_windows
from tvm_tiny.ir.errors import ToolchainError
from tvm_tiny.targets.boards import Board
from tvm_tiny.targets.resources import runtime_dir
from tvm_tiny.targets.toolchain import cache_dir, require_tool, run_tool, tree_hash

QEMU_TIMEOUT_S = 600
_PLUGIN_CFLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC")
#: Files of a run directory that are the runner's, not the firmware's.
_RUN_FILES = ("labels.txt", "windows.txt")


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


def plugin_source() -> str:
    """The wincount plugin's C source (exported projects carry a copy)."""
    return (runtime_dir() / "tools" / "qemu_wincount" / "wincount.c").read_text()


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


# -- tools --------------------------------------------------------------------------------------
def check_board_tools(board: Board) -> None:
    """Raise :class:`ToolchainError` naming the Debian package of any tool a board firmware
    needs (cross compiler with picolibc, nm, QEMU) that is missing."""
    if board.toolchain is None or board.emulator is None:
        raise ValueError(f"board '{board.name}' has no cross toolchain and emulator")
    tc = board.toolchain
    cc = require_tool(tc.cc, tc.debian_packages)
    require_tool(tc.nm, tc.debian_packages)
    require_tool(board.emulator.binary, board.emulator.debian_package)
    specs = run_tool([cc, "-print-file-name=picolibc.specs"], f"{tc.cc} -print-file-name").strip()
    if not Path(specs).is_absolute():
        raise ToolchainError(f"{tc.cc} has no picolibc (picolibc.specs not found); install it "
                             f"with: apt-get install {tc.debian_packages}")


def symbols_of(board: Board, elf: Path) -> dict[str, int]:
    """Symbol addresses of a firmware (``nm`` of the board's toolchain)."""
    assert board.toolchain is not None
    nm = require_tool(board.toolchain.nm, board.toolchain.debian_packages)
    table = {}
    for line in run_tool([nm, str(elf)], f"nm of {elf.name}").splitlines():
        parts = line.split()
        if len(parts) == 3:
            table[parts[2]] = int(parts[0], 16)
    return table


# -- running ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Emulation:
    """One firmware run in QEMU. ``exit_code`` is None when the run was stopped at its
    timeout; ``report`` is the plugin's window report ("" when it wrote none)."""

    exit_code: int | None
    console: str  # what the firmware printed (QEMU prints semihosting stdout on its stderr)
    report: str
    files: dict[str, bytes]  # files the firmware wrote (and its inputs)

    def windows(self, partial: bool = False) -> list[Window]:
        """The windows of the run (:func:`tvm_tiny.firmware.windows.parse_windows`)."""
        return parse_windows(self.report or self.console, partial)


def _run(board: Board, elf: Path, labels: Sequence[str], run_dir: Path, timeout_s: float,
         keep_partial_on_timeout: bool) -> tuple[int | None, str, Path]:
    assert board.emulator is not None
    symbols = symbols_of(board, elf)
    plugin = wincount_plugin(board.emulator.binary)
    labels_file = run_dir / "labels.txt"
    labels_file.write_text(labels_text(labels))
    report = run_dir / "windows.txt"
    paths = (plugin, labels_file, report)
    if any("," in str(p) for p in paths):
        raise ToolchainError(f"QEMU plugin arguments cannot hold commas: {paths}")
    command = [*board.emulator.argv(), "-kernel", str(elf), "-plugin",
               f"{plugin},begin={symbols['tt_window_begin']:#x},"
               f"end={symbols['tt_window_end']:#x},labels={labels_file},out={report}"]
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


def emulate(board: Board, elf: Path, labels: Sequence[str],
            inputs: Mapping[str, bytes] | None = None, *, run_dir: Path | None = None,
            timeout_s: float = QEMU_TIMEOUT_S, keep_partial_on_timeout: bool = False
            ) -> Emulation:
    """Run ``elf`` in ``board``'s QEMU with the wincount plugin; ``labels`` name the windows in
    the order they open, ``inputs`` are files the firmware reads (name -> bytes).

    Runs in ``run_dir`` (kept, e.g. for debugging) or a temporary directory. A run past
    ``timeout_s`` raises, unless ``keep_partial_on_timeout``: then the exit code is None and the
    console and report are what the firmware produced before it was stopped. The exit code is
    the caller's to interpret.
    """
    if board.emulator is None or board.toolchain is None:
        raise ValueError(f"board '{board.name}' has no cross toolchain and emulator")
    with tempfile.TemporaryDirectory(prefix="tvm_tiny_run_") as tmp:
        directory = run_dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in (inputs or {}).items():
            (directory / name).write_bytes(data)
        code, console, report = _run(board, elf, labels, directory, timeout_s,
                                     keep_partial_on_timeout)
        text = report.read_text() if report.exists() else ""
        files = {p.name: p.read_bytes() for p in directory.iterdir()
                 if p.is_file() and p.name not in _RUN_FILES}
    return Emulation(code, console, text, files)


def main() -> None:
    """``python -m tvm_tiny.firmware``: build the wincount plugin for every installed QEMU."""
    for binary in ("qemu-system-arm", "qemu-system-riscv32"):
        if not shutil.which(binary):
            print(f"{binary}: not installed, plugin not built")
            continue
        try:
            print(f"{binary}: {wincount_plugin(binary)}")
        except ToolchainError as err:  # report, keep going: set-up must not stop here
            print(f"{binary}: plugin NOT built: {err}")
