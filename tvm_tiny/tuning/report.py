"""Progress bar, summary table and convergence plot of tuning runs (``tvm-tiny tune``).

Every figure is INSTRUCTIONS counted in the board's emulator (on GAP9 a modelled cluster
latency), never cycles or time.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO

from matplotlib.figure import Figure

from tvm_tiny.tuning.tuner import Progress, TaskResult


def _instr(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{int(value):,}"


class ProgressBar:
    """Plain-text progress on a stream (stderr): one line per task, redrawn in place on a
    terminal, one line per update otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, label: str = "") -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.label = label
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open = False

    def __call__(self, p: Progress) -> None:
        filled = self.width * p.done // max(1, p.total)
        bar = "#" * filled + "-" * (self.width - filled)
        line = (f"{self.label}[{p.task_index + 1}/{p.task_count}] {p.task} [{bar}] "
                f"{p.done}/{p.total} best {_instr(p.best_cost)} instructions")
        if p.default_cost is not None and math.isfinite(p.default_cost) \
                and math.isfinite(p.best_cost):
            line += f" (default {_instr(p.default_cost)}, {p.default_cost / p.best_cost:.2f}x)"
        if self._tty:
            self.stream.write("\r\033[K" + line)
            self._open = True
            if p.done >= p.total:
                self.stream.write("\n")
                self._open = False
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False


def summary(results: list[TaskResult]) -> str:
    """A markdown table: one row per (task, tuner)."""
    lines = ["| task | tuner | trials | default (instr) | best (instr) | speedup | best config |"
             " errors |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for r in results:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        lines.append(f"| {r.task.describe()} | {r.tuner} | {r.trials + r.resumed} | "
                     f"{_instr(r.default_cost)} | {_instr(r.best_cost)} | {speedup} | "
                     f"{r.best or '-'} | {r.errors} |")
    return "\n".join(lines)


def plot_convergence(results: list[TaskResult], path: str) -> None:
    """Best instructions so far vs trials, one curve per tuner, one panel per task."""
    tasks: dict[str, list[TaskResult]] = {}
    for r in results:
        tasks.setdefault(r.task.describe(), []).append(r)
    fig = Figure(figsize=(8, 3.5 * len(tasks)))
    axes = fig.subplots(len(tasks), 1, squeeze=False)
    for ax, (name, runs) in zip(axes[:, 0], tasks.items()):
        for r in runs:
            points = [(r.resumed + t, best) for t, _, best in r.history if math.isfinite(best)]
            if points:
                ax.step([t for t, _ in points], [b for _, b in points], where="post",
                        label=f"{r.tuner} (best {_instr(r.best_cost)})")
        defaults = [r.default_cost for r in runs if r.default_cost is not None]
        if defaults:
            ax.axhline(defaults[0], linestyle=":", color="grey",
                       label=f"default config ({_instr(defaults[0])})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("trials (configs measured)")
        ax.set_ylabel("best instructions so far")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
