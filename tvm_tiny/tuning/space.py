"""Config space of an MHSA tuning task: declarative knobs, validity rules, index <-> config, and
the features the cost model learns from.

Knobs use AutoTVM's knob types (``python/tvm/autotvm/task/space.py``) so records read like
AutoTVM's:

=================  ====  ============================================================
knob               type  values
=================  ====  ============================================================
``rows_per_block`` sp    ``[-1, x]``: S split into ceil(S/x) blocks of x query rows (the
                         last may be shorter; the kernel handles the tail), -1 = inferred
``fuse_qk``        ot    ``False`` / ``True``: separate Q and K projections, or FWSA
``tile``           ot    register tile of the kernel's matmuls, ``"2x2"`` ... ``"4x4"``
``fma``            ot    ``False`` / ``True``: multiply-adds as ``fmaf`` (one VFMA on
                         Cortex-M; a libm call without an FPU)
``sparse``         ot    ``False`` / ``True``: pruned layers only (workload ``nnz`` set):
                         keep every matrix dense, or store each one row-compressed when
                         that is smaller (fewer flash bytes; faster only below a density
                         that depends on the board, which is what measuring decides)
=================  ====  ============================================================

The int8 kernel (``tt_mhsa_s8``, task ``tt_mhsa_s8``) has ``rows_per_block`` and ``fuse_qk``
only. Its register tile is fixed (2x2 over pair-interleaved int16 operands, the SMLAD and
``pv.sdotsp`` paths alike) and it has no multiply-add form, so there is no compile-time variant
to tune (its one ISA switch, ``TT_MHSA_S8_SDOT4`` on RISC-V, picks the instruction set, not a
tile). It runs blocks of an even number of rows (``codegen.mhsa_s8_layout.block_rows_s8``), so
its block candidates are the even ones and S: an odd value would only re-measure the next even
one. ``fuse_qk`` changes the integer program (FWSA rounds T = x Wf once instead of Q and K), so
each config is checked against the golden model of its own program.

Every knob changes the generated code: ``rows_per_block`` the DFT block size compiled into the
instance's ``tt_mhsa_config`` (loop trip counts, tail blocks, scratch layout), ``fuse_qk`` the
weights emitted and the path the kernel takes, ``tile`` and ``fma`` the kernel library itself
(a compile-time variant, :mod:`tvm_tiny.codegen.variant`; one per firmware).

Validity rules (:meth:`ConfigSpace.check`): the kernel's scratch (per core times the active
cores, plus the partial outputs, on a cluster) must fit the board's fast memory
(:meth:`Board.fast_memory_bytes`: DTCM on STM32H7, L1 on GAP9, minus the stack when it lives
there), and the weights of the chosen Q/K variant must fit the memory that holds constants.
For int8 the scratch is ``codegen.mhsa_s8_layout.scratch_bytes_s8`` (``cluster_scratch_bytes_s8``
on a cluster), the closed form of ``tt_mhsa_s8_get_buffer_size``.

A config's index is mixed-radix over the knobs in order, the first knob fastest (AutoTVM's
``ConfigSpace.get``): ``index = sum_k value_index_k * prod_{j<k} len(knob_j)``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvm_tiny.codegen.mhsa_s8_layout import cluster_scratch_bytes_s8, scratch_bytes_s8
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.kernel_config import TILES, KernelVariant, Tile
from tvm_tiny.ir.mhsa import (
    FLOAT32_BYTES,
    KernelConfig,
    MhsaShape,
    cluster_scratch_bytes,
    scratch_bytes,
)
from tvm_tiny.ir.sparse import csr_bytes
from tvm_tiny.targets.boards import Board, get_board
from tvm_tiny.tuning.task import TuningTask, Workload

#: The smallest blocks are always candidates; beyond them, the block sizes that give a distinct
#: number of blocks (ceil(S / n) for every n), so no candidate only pads another's tail.
SMALL_BLOCKS = 16


class KnobType(enum.Enum):
    """AutoTVM knob types, by their record tag."""

    SPLIT = "sp"  # a split of a loop extent: [-1, inner]
    OTHER = "ot"  # one of a list of values


@dataclass(frozen=True)
class Knob:
    """One named knob: its type and its candidate values, in index order."""

    name: str
    type: KnobType
    values: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.values)

    def record_value(self, value: Any) -> Any:
        """The value as a record stores it (a split as ``[-1, inner]``)."""
        return [-1, int(value)] if self.type is KnobType.SPLIT else value

    def from_record(self, value: Any) -> Any:
        if self.type is KnobType.SPLIT:
            if not (isinstance(value, list) and len(value) == 2 and value[0] == -1
                    and isinstance(value[1], int) and not isinstance(value[1], bool)):
                raise ValueError(f"knob {self.name}: split value {value!r} is not [-1, inner]")
            return value[1]
        return value


@dataclass(frozen=True)
class ConfigEntity:
    """One point of the space: its index and the value of every knob (in knob order)."""

    index: int
    values: tuple[tuple[str, Any], ...]

    def __getitem__(self, name: str) -> Any:
        for knob, value in self.values:
            if knob == name:
                return value
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def kernel_config(self) -> KernelConfig:
        """The ``tt_mhsa_config`` this entity selects (``sparse`` defaults to on: spaces of
        dense layers have no such knob, and it changes nothing for them)."""
        return KernelConfig(int(self["rows_per_block"]), bool(self["fuse_qk"]),
                            bool(self.get("sparse", True)))

    def variant(self) -> KernelVariant:
        """The compile-time kernel variant this entity selects (the default one for a kernel
        without variants: int8, whose space has no ``tile`` knob)."""
        if self.get("tile") is None:
            return KernelVariant()
        return KernelVariant(Tile.parse(self["tile"]), bool(self["fma"]))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)


class ConfigSpace:
    """The knobs of one task on one board, and the rules a config must satisfy there."""

    def __init__(self, workload: Workload, board: Board, knobs: tuple[Knob, ...]) -> None:
        self.workload = workload
        self.board = board
        self.knobs = knobs
        self._radix = [1]
        for knob in knobs[:-1]:
            self._radix.append(self._radix[-1] * len(knob))

    def __len__(self) -> int:
        return math.prod(len(k) for k in self.knobs)

    def neighbour(self, index: int, knob: int, step: int) -> int:
        """The index of ``index`` with knob number ``knob`` moved ``step`` values on
        (cyclically): integer arithmetic only, for the annealer's inner loop."""
        size, radix = len(self.knobs[knob]), self._radix[knob]
        digit = (index // radix) % size
        return index + ((digit + step) % size - digit) * radix

    def knob(self, name: str) -> Knob:
        for knob in self.knobs:
            if knob.name == name:
                return knob
        raise KeyError(name)

    # -- index <-> config -------------------------------------------------------------------
    def get(self, index: int) -> ConfigEntity:
        """The entity of ``index`` (0 <= index < len(self))."""
        if not 0 <= index < len(self):
            raise IndexError(f"config index {index} outside 0..{len(self) - 1}")
        values = []
        for knob, radix in zip(self.knobs, self._radix):
            values.append((knob.name, knob.values[(index // radix) % len(knob)]))
        return ConfigEntity(index, tuple(values))

    def index_of(self, values: dict[str, Any]) -> int:
        """The index of the config with these knob values (``ValueError`` if not in the space)."""
        index = 0
        for knob, radix in zip(self.knobs, self._radix):
            if knob.name not in values:
                raise ValueError(f"config lacks knob {knob.name!r}")
            try:
                index += knob.values.index(values[knob.name]) * radix
            except ValueError:
                raise ValueError(f"{values[knob.name]!r} is not a value of knob {knob.name!r} "
                                 f"(values: {list(knob.values)})") from None
        return index

    def entity(self, values: dict[str, Any]) -> ConfigEntity:
        return self.get(self.index_of(values))

    def from_kernel_config(self, config: KernelConfig,
                           variant: KernelVariant | None = None) -> ConfigEntity | None:
        """The entity of a kernel config and variant (None when a value is not a candidate)."""
        variant = variant or KernelVariant()
        values: dict[str, Any] = {"rows_per_block": config.rows_per_block,
                                  "fuse_qk": config.fuse_qk}
        if self.has_knob("tile"):
            values.update(tile=variant.tile.name, fma=variant.fma)
        elif not variant.is_default:
            return None  # the kernel has no variants: only the default describes it
        if self.has_knob("sparse"):
            values["sparse"] = config.sparse
        try:
            return self.entity(values)
        except ValueError:
            return None

    def has_knob(self, name: str) -> bool:
        return any(k.name == name for k in self.knobs)

    def record_entity(self, entity: ConfigEntity) -> list[list[Any]]:
        """``[[knob, type, value], ...]`` as AutoTVM's ``config.entity``."""
        return [[k.name, k.type.value, k.record_value(v)]
                for k, (_, v) in zip(self.knobs, entity.values)]

    def from_record_entity(self, entity: list[list[Any]]) -> ConfigEntity:
        """Inverse of :meth:`record_entity` (``ValueError`` when it does not fit this space)."""
        values = {}
        for item in entity:
            name, tag, value = item
            knob = self.knob(name)
            if tag != knob.type.value:
                raise ValueError(f"knob {name!r} has type {knob.type.value!r}, record says {tag!r}")
            values[name] = knob.from_record(value)
        return self.entity(values)

    def code_hash(self, entity: ConfigEntity) -> str:
        """Hash of what the config compiles to: workload, board and knob values."""
        text = json.dumps([self.board.name, self.workload.key(), self.record_entity(entity)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- validity ---------------------------------------------------------------------------
    def scratch_bytes(self, entity: ConfigEntity) -> int:
        """Scratch the instance takes from the arena (cluster drivers: all active cores)."""
        config = entity.kernel_config()
        cores = self.board.cluster_cores
        shape = self.workload.shape
        if self.workload.dtype == DType.INT8:
            return (cluster_scratch_bytes_s8(shape, config, cores) if cores > 1
                    else scratch_bytes_s8(shape, config))
        return (cluster_scratch_bytes(shape, config, cores) if cores > 1
                else scratch_bytes(shape, config))

    def params_bytes(self, entity: ConfigEntity) -> int:
        """Bytes of the weights the instance stores (the fused or unfused Q/K variant; pruned
        matrices row-compressed when ``sparse`` and smaller, the fused Wf counted dense)."""
        s = self.workload.shape
        h, e, p, eo = s.heads, s.embed, s.proj, s.out_features
        if self.workload.dtype == DType.INT8:
            return _params_bytes_s8(s, bool(entity["fuse_qk"]))
        nnz = self.workload.nnz if entity.get("sparse", False) else None
        nq, nk, nv, no = nnz or (h * p * e,) * 3 + (h * eo * p,)

        def matrix(count: int, rows: int, cols: int) -> int:
            return min(csr_bytes(count, rows, cols), FLOAT32_BYTES * rows * cols)

        qk = (h * e * e * FLOAT32_BYTES + h * e * FLOAT32_BYTES if entity["fuse_qk"]
              else matrix(nq, h * p, e) + matrix(nk, h * p, e) + 2 * h * p * FLOAT32_BYTES)
        return (qk + matrix(nv, h * p, e) + matrix(no, h * eo, p)
                + (h * p + eo) * FLOAT32_BYTES)

    def check(self, entity: ConfigEntity) -> str | None:
        """None when the config is valid on the board, else the reason it is not."""
        fast = self.board.fast_memory_bytes()
        need = self.scratch_bytes(entity)
        if fast is not None and need > fast:
            name = self.board.fast_memory or (self.board.placement.data
                                              if self.board.placement else "?")
            return (f"scratch {need} B does not fit {name} ({fast} B available for scratch on "
                    f"{self.board.name})")
        if self.board.placement is not None:
            code = self.board.memory(self.board.placement.code)
            params = self.params_bytes(entity)
            if params > code.size:
                return f"weights {params} B do not fit {code.name} ({code.size} B)"
        return None

    def is_valid(self, entity: ConfigEntity) -> bool:
        return self.check(entity) is None

    def valid_indices(self) -> list[int]:
        return [i for i in range(len(self)) if self.is_valid(self.get(i))]

    # -- features ---------------------------------------------------------------------------
    def features(self, entity: ConfigEntity) -> np.ndarray:
        """Knob and workload features of one config, for the cost model (float64 vector).

        Knobs: x, log2 x, number of blocks, tail rows, x odd, fuse_qk, tile rows and columns,
        rows of a block left over by the tile, fma, sparse. Workload: S, E, H, P, E_out (logs),
        weight density. Derived: the multiply-accumulates of the Q.K^T path each variant runs
        and the scratch bytes, so a model trained on one shape transfers to another.
        """
        s = self.workload.shape
        x = min(int(entity["rows_per_block"]), s.seq)
        fused = bool(entity["fuse_qk"])
        variant = entity.variant()
        blocks = -(-s.seq // x)
        qk_macs = (s.seq * s.embed * s.embed + s.seq * s.seq * s.embed if fused
                   else 2 * s.seq * s.proj * s.embed + s.seq * s.seq * s.proj)
        return np.array([
            x, math.log2(x), blocks, s.seq - (blocks - 1) * x, x % 2, float(fused),
            variant.tile.rows, variant.tile.cols, x % variant.tile.rows, float(variant.fma),
            math.log2(s.seq), math.log2(s.embed), math.log2(s.heads), math.log2(s.proj),
            math.log2(s.out_features), math.log2(s.heads * qk_macs),
            math.log2(self.scratch_bytes(entity)), float(bool(entity.get("sparse", False))),
            self._density(),
        ], dtype=np.float64)

    def _density(self) -> float:
        """Nonzeros of Wq, Wk, Wv, Wo over their sizes (1.0 for a dense workload)."""
        nnz = self.workload.nnz
        if nnz is None:
            return 1.0
        s = self.workload.shape
        return sum(nnz) / (3 * s.embed * s.heads * s.proj + s.heads * s.proj * s.out_features)

    def feature_matrix(self, indices: list[int]) -> np.ndarray:
        return np.stack([self.features(self.get(i)) for i in indices]) if indices else \
            np.zeros((0, len(self.features(self.get(0)))))


def _ceil4(n: int) -> int:
    return (n + 3) & ~3


def _params_bytes_s8(s: MhsaShape, fused: bool) -> int:
    """Bytes of the ``tt_mhsa_s8_params`` arrays (``codegen.mhsa_s8_layout.arrange_s8``) of a
    layer with every bias: int8 weight rows padded to 4, int32 biases (a two-step
    requantization's stage-2 bias takes its bias's place), int32 multipliers and shifts, the
    uint16 softmax table. Exact for onnxruntime's QDQ exports; a layer without biases stores
    less, so for packing a batch it errs on the safe side."""
    h, e, p, eo = s.heads, s.embed, s.proj, s.out_features
    i32 = 4
    if fused:  # wf [H][E+1][EK], bf [H][E+1], t_mult/t_shift [H]
        qk = h * (e + 1) * _ceil4(e + 1) + i32 * h * (e + 1) + 2 * i32 * h
    else:  # wq, wk [H][P][E4]; bq, bk, q_/k_ mult and shift [H][P]
        qk = 2 * h * p * _ceil4(e) + 6 * i32 * h * p
    v = h * p * _ceil4(e) + 3 * i32 * h * p  # wv, bv, v_mult, v_shift
    o = h * eo * _ceil4(p) + 3 * i32 * eo  # wo, bo, o_mult, o_shift
    return qk + v + o + 2 * i32 * h + 2 * 256  # score_mult/score_shift [H], softmax_lut


def rows_per_block_candidates_s8(seq: int) -> tuple[int, ...]:
    """Block sizes of the int8 kernel for S rows: the float candidates as the kernel runs them
    (rounded up to even, at most S; ``block_rows_s8``), each once."""
    return tuple(sorted({min(seq, x + (x & 1)) for x in rows_per_block_candidates(seq)}))


def rows_per_block_candidates(seq: int) -> tuple[int, ...]:
    """Block sizes worth trying for S rows: 1 .. SMALL_BLOCKS, and ceil(S / n) for every block
    count n (the smallest block giving n blocks), ascending."""
    values = set(range(1, min(seq, SMALL_BLOCKS) + 1))
    values.update(-(-seq // n) for n in range(1, seq + 1))
    return tuple(sorted(values))


def config_space(workload: Workload | TuningTask, board: Board | str | None = None
                 ) -> ConfigSpace:
    """The config space of ``workload`` on ``board`` (a task carries its own board)."""
    if isinstance(workload, TuningTask):
        board = board or workload.board
        workload = workload.workload
    if board is None:
        raise ValueError("config_space needs a board")
    board = get_board(board) if isinstance(board, str) else board
    shape: MhsaShape = workload.shape
    if workload.dtype == DType.INT8:
        knobs = (
            Knob("rows_per_block", KnobType.SPLIT, rows_per_block_candidates_s8(shape.seq)),
            Knob("fuse_qk", KnobType.OTHER, (False, True)),
        )
        return ConfigSpace(workload, board, knobs)
    knobs = (
        Knob("rows_per_block", KnobType.SPLIT, rows_per_block_candidates(shape.seq)),
        Knob("fuse_qk", KnobType.OTHER, (False, True)),
        Knob("tile", KnobType.OTHER, tuple(t.name for t in TILES)),
        Knob("fma", KnobType.OTHER, (False, True)),
    )
    if workload.nnz is not None:
        knobs += (Knob("sparse", KnobType.OTHER, (False, True)),)
    return ConfigSpace(workload, board, knobs)
