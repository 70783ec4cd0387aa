"""The kernel configuration an offloaded MHSA is built with, as one set of typed values.

``KernelConfig`` (``ir.mhsa``) holds the knobs compiled into one instance (DFT block rows, FWSA,
sparse storage). :class:`KernelVariant` holds the knobs compiled into the kernel library itself
(register tile, FMA), shared by every MHSA of a firmware. :class:`KernelChoice` joins them with
:class:`ConfigOrigin`, where they came from (DESIGN.md §6: tuning log, shipped log, default).

These values travel from ``tuning.apply`` through the code generator into the metadata as they
are; they become strings only where a record or the metadata JSON is written (``Tile.name``,
``str(ConfigOrigin)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tvm_tiny.ir.enums import ConfigSource
from tvm_tiny.ir.mhsa import KernelConfig

_TILE_EDGES = (1, 2, 4)


@dataclass(frozen=True, order=True)
class Tile:
    """Register tile of the float32 kernel's matmuls: ``rows`` of A by ``cols`` of B."""

    rows: int = 2
    cols: int = 2

    def __post_init__(self) -> None:
        if self.rows not in _TILE_EDGES or self.cols not in _TILE_EDGES:
            raise ValueError(f"tile {self.rows}x{self.cols}: rows and cols must each be "
                             f"one of {_TILE_EDGES}")

    @property
    def name(self) -> str:
        """The record spelling, e.g. ``"4x2"`` (AutoTVM ``ot`` knob value)."""
        return f"{self.rows}x{self.cols}"

    @classmethod
    def parse(cls, text: str) -> Tile:
        """The tile a record spells as ``"<rows>x<cols>"``."""
        rows, sep, cols = str(text).partition("x")
        if not sep or not rows.isdigit() or not cols.isdigit():
            raise ValueError(f"tile {text!r} is not <rows>x<cols> with 1, 2 or 4 each")
        return cls(int(rows), int(cols))


TILES = (Tile(2, 2), Tile(2, 4), Tile(4, 2), Tile(4, 4))
"""Register tiles the tuner tries; 2x2 is the reference kernel's."""


@dataclass(frozen=True)
class KernelVariant:
    """One compile-time variant of the float32 kernel library ``tt_mhsa_f32``."""

    tile: Tile = field(default_factory=Tile)
    fma: bool = False

    @property
    def is_default(self) -> bool:
        return self == KernelVariant()

    @property
    def name(self) -> str:
        """Identifier-safe name, e.g. ``t4x2_fma``."""
        return f"t{self.tile.name}" + ("_fma" if self.fma else "")

    def macros(self) -> dict[str, int]:
        """The macros ``kernels/mhsa/tt_mhsa_f32.c`` reads to compile this variant."""
        return {"TT_MHSA_F32_TILE_ROWS": self.tile.rows, "TT_MHSA_F32_TILE_COLS": self.tile.cols,
                "TT_MHSA_F32_FMA": int(self.fma)}


@dataclass(frozen=True)
class ConfigOrigin:
    """Where a kernel config came from; ``log`` names the tuning log file when there is one."""

    source: ConfigSource
    log: str | None = None

    def __str__(self) -> str:
        """The label reports and ``metadata["offloaded"][i]["kernel"]["source"]`` show:
        ``tuning_log:<path>``, ``shipped:<board>.jsonl``, ``default`` or ``options``."""
        return self.source.value if self.log is None else f"{self.source.value}:{self.log}"


DEFAULT_ORIGIN = ConfigOrigin(ConfigSource.DEFAULT)


@dataclass(frozen=True)
class KernelChoice:
    """Everything that decides how one offloaded MHSA is compiled."""

    config: KernelConfig
    variant: KernelVariant = field(default_factory=KernelVariant)
    origin: ConfigOrigin = DEFAULT_ORIGIN
