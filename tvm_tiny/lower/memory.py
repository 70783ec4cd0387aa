"""Static memory planners for the model arena.

Every buffer has a byte size and a lifetime ``[first_use, last_use]`` in execution steps. A planner
assigns each buffer an offset in one arena so that buffers alive at the same step never overlap.
Two planners share one interface, as in TFLite Micro's ``micro_memory_planner.h``:

* :class:`LinearPlanner` gives every buffer its own space (the no-reuse upper bound);
* :class:`GreedyPlanner` places buffers largest first, each at the lowest aligned offset that does
  not collide with an already placed buffer whose lifetime overlaps. Like TFLM's greedy planner
  it is not guaranteed optimal, only never worse than linear.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tvm_tiny.ir.errors import MemoryPlanError

DEFAULT_ALIGNMENT = 16


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment``."""
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class Buffer:
    """One planned buffer: its name (for reports), size in bytes and inclusive lifetime."""

    name: str
    size: int
    first_use: int
    last_use: int

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.first_use <= other.last_use and other.first_use <= self.last_use


class PlannerKind(enum.Enum):
    LINEAR = "linear"
    GREEDY = "greedy"


class MemoryPlanner:
    """Interface: add buffers, then read offsets and the peak (arena size in bytes)."""

    def __init__(self, alignment: int = DEFAULT_ALIGNMENT) -> None:
        self.alignment = alignment
        self.buffers: list[Buffer] = []
        self._offsets: list[int] | None = None

    def add_buffer(self, name: str, size: int, first_use: int, last_use: int) -> int:
        """Register a buffer; returns its index. Zero-size buffers get an aligned dummy slot."""
        if size < 0:
            raise MemoryPlanError(f"buffer '{name}' has a negative size ({size} bytes)")
        if last_use < first_use:
            raise MemoryPlanError(
                f"buffer '{name}' ends (step {last_use}) before it starts (step {first_use})"
            )
        self.buffers.append(Buffer(name, size, first_use, last_use))
        self._offsets = None
        return len(self.buffers) - 1

    def offsets(self) -> list[int]:
        """Byte offset of every buffer, in the order they were added."""
        if self._offsets is None:
            self._offsets = self._plan()
        return self._offsets

    def peak(self) -> int:
        """Arena bytes the plan needs (aligned)."""
        offsets = self.offsets()
        ends = [off + align_up(b.size, self.alignment) for off, b in zip(offsets, self.buffers)]
        return max(ends, default=0)

    def usage_by_step(self) -> list[int]:
        """Bytes in use (sum of live buffer sizes) at each step; for reports and plots."""
        last = max((b.last_use for b in self.buffers), default=-1)
        usage = [0] * (last + 1)
        for b in self.buffers:
            for step in range(b.first_use, b.last_use + 1):
                usage[step] += b.size
        return usage

    def _plan(self) -> list[int]:
        raise NotImplementedError

    def check_no_overlap(self) -> None:
        """Test helper: raise if two buffers alive at the same step share bytes."""
        offsets = self.offsets()
        items = list(zip(offsets, self.buffers))
        for i, (off_a, a) in enumerate(items):
            for off_b, b in items[i + 1 :]:
                if not a.overlaps_in_time(b) or a.size == 0 or b.size == 0:
                    continue
                if off_a < off_b + b.size and off_b < off_a + a.size:
                    raise MemoryPlanError(
                        f"buffers '{a.name}' [{off_a}, {off_a + a.size}) and '{b.name}' "
                        f"[{off_b}, {off_b + b.size}) overlap while both are alive"
                    )


class LinearPlanner(MemoryPlanner):
    """No reuse: buffers are laid out one after another in the order they were added."""

    def _plan(self) -> list[int]:
        offsets, cursor = [], 0
        for b in self.buffers:
            offsets.append(cursor)
            cursor += align_up(b.size, self.alignment)
        return offsets


class GreedyPlanner(MemoryPlanner):
    """Largest buffer first, each at the lowest aligned offset free during its lifetime."""

    def _plan(self) -> list[int]:
        order = sorted(
            range(len(self.buffers)),
            key=lambda i: (-self.buffers[i].size, self.buffers[i].first_use, i),
        )
        offsets = [0] * len(self.buffers)
        placed: list[int] = []
        for i in order:
            buf = self.buffers[i]
            size = align_up(buf.size, self.alignment)
            conflicts = sorted(
                (offsets[j], offsets[j] + align_up(self.buffers[j].size, self.alignment))
                for j in placed
                if self.buffers[j].overlaps_in_time(buf)
            )
            candidate = 0
            for start, end in conflicts:
                if candidate + size <= start:
                    break
                candidate = max(candidate, end)
            offsets[i] = candidate
            placed.append(i)
        return offsets


def make_planner(kind: PlannerKind, alignment: int = DEFAULT_ALIGNMENT) -> MemoryPlanner:
    """Planner factory for the enum (the AOT uses GREEDY; LINEAR is the comparison bound)."""
    return {PlannerKind.LINEAR: LinearPlanner, PlannerKind.GREEDY: GreedyPlanner}[kind](alignment)
