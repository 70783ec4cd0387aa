"""Instruction-count windows: the wincount plugin's report, and the modelled cluster latency.

The firmware calls ``tt_window_begin()``/``tt_window_end()`` around what it measures; the QEMU
plugin ``wincount`` (:mod:`tvm_tiny.firmware.qemu`) reports one line per window in the order the
windows opened, with its nesting depth and the INSTRUCTIONS executed inside it (never cycles).
Every firmware reads its report through :func:`parse_windows` here.

On a cluster board (GAP9) the portable port runs the cores one after another and, in a profiled
build, wraps each core's task in a window nested inside the kernel call's window. The parallel
latency of the call is MODELLED from those windows by :func:`model_cluster_call`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tvm_tiny.ir.errors import ToolchainError

#: ASSUMED cost of one fork/join on a PULP cluster (task dispatch through the event unit, then
#: the hardware barrier), in instructions of the slowest core. Not measured: an order of
#: magnitude for the modelled cluster latency until a GVSOC or board figure replaces it.
FORK_JOIN_INSTRUCTIONS = 100
#: Characters of a window label the plugin keeps (it stores 95 per label).
MAX_LABEL_CHARS = 90


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


def parse_windows(report: str, partial: bool = False) -> list[Window]:
    """The windows of a wincount report, in the order they opened.

    Strict by default: an unclosed, dropped or unbalanced window, or a report without its total
    line, raises :class:`ToolchainError`. ``partial=True`` reads a run that stopped early (a
    crashed or killed firmware, as the tuner meets them): the windows opened before the first
    unclosed one, whatever else the report says.
    """
    windows: list[Window] = []
    total = None
    for line in report.splitlines():
        if m := WINDOW_LINE.match(line):
            if m.group(3) is None:
                if partial:
                    return windows
                raise ToolchainError(f"instruction window {m.group(1)} ({m.group(4)}) never "
                                     "closed: the firmware stopped inside it")
            windows.append(Window(m.group(4), int(m.group(2)), int(m.group(3))))
        elif m := _TOTAL.match(line):
            total = m
    if partial:
        return windows
    if total is None:
        raise ToolchainError("the wincount plugin wrote no report", stderr=report)
    if int(total.group(3)) or int(total.group(4)):
        raise ToolchainError(f"wincount: {total.group(3)} windows dropped, {total.group(4)} "
                             "unbalanced end markers", stderr=report)
    return windows


def labels_text(labels: Sequence[str]) -> str:
    """The plugin's ``labels=`` file: one label per line, as much as the plugin keeps."""
    return "".join(f"{label.replace(chr(10), ' ')[:MAX_LABEL_CHARS]}\n" for label in labels)


def nested(windows: Sequence[Window], depth: int, strict: bool = True
           ) -> list[tuple[Window, list[int]]]:
    """Each window at ``depth`` with the instructions of the windows directly inside it.

    ``strict``: a window at another depth, or a child before any parent, raises
    :class:`ToolchainError`; otherwise such windows are skipped.
    """
    groups: list[tuple[Window, list[int]]] = []
    for w in windows:
        if w.depth == depth:
            groups.append((w, []))
        elif w.depth == depth + 1 and groups:
            groups[-1][1].append(w.instructions)
        elif strict:
            raise ToolchainError(f"unexpected instruction window {w}")
    return groups


@dataclass(frozen=True)
class ClusterCall:
    """One kernel call split over a cluster: each fork's per-core instructions and the MODELLED
    latency of the call (instructions, not cycles)."""

    forks: list[list[int]]  # per fork, the instructions of each core's task
    serial: int  # the call measured with the cores one after another
    modelled: int  # the call with each fork as the slowest core plus FORK_JOIN_INSTRUCTIONS


def model_cluster_call(name: str, instructions: int, core_windows: Sequence[int], cores: int,
                       forks: int) -> ClusterCall:
    """Model the parallel latency of a cluster call measured serially as ``instructions``,
    whose ``core_windows`` are ``forks`` groups of ``cores`` task windows.

    The work outside the core tasks (the caller's set-up, the port's bookkeeping) stays serial;
    each fork costs its slowest core plus :data:`FORK_JOIN_INSTRUCTIONS`.
    """
    if len(core_windows) != cores * forks:
        raise ToolchainError(f"{name}: expected {forks} forks of {cores} core windows, got "
                             f"{len(core_windows)} windows")
    groups = [list(core_windows[i:i + cores]) for i in range(0, len(core_windows), cores)]
    parallel = sum(max(g) + FORK_JOIN_INSTRUCTIONS for g in groups)
    return ClusterCall(groups, instructions, instructions - sum(core_windows) + parallel)
