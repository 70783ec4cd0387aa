"""Tuning tasks: one per distinct (board, MHSA workload, dtype) of a model (DESIGN.md §6).

A workload is what the kernel's instruction count depends on: the layer shape (S, E, H, P,
E_out) and the dtype. Two MHSAs of a model with the same workload share one task (and, at build
time, one best record); the weights of the first one are the ones measured with (the count does
not depend on their values beyond a few instructions of ``expf``, or for int8 of the rare
two-step requantizations and saturations).

Two kernels are tunable: ``tt_mhsa_f32`` (float32) and ``tt_mhsa_s8`` (int8 QDQ attention,
composite ``tvm_tiny.mhsa_s8``); an int8 task also carries the layer's quantization
(``MhsaInt8Params``), which the measured instances are emitted from.

The record key follows AutoTVM (``python/tvm/autotvm/task/task.py``): ``input`` is
``[target, task name, args, kwargs]`` with tensors as ``["TENSOR", shape, dtype]``; our args are
``[["TENSOR", [S, E], dtype], H, P, E_out]`` and the target string ends in ``-model=<board>``
(AutoTVM's ``-model`` names the device, which is what apply-best keys on).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, MhsaWeights, is_pruned
from tvm_tiny.ir.quant import MhsaInt8Params
from tvm_tiny.partition.describe import describe_mhsa, offloaded_symbol
from tvm_tiny.partition.partitioner import mhsa_functions, partition_for_tiny
from tvm_tiny.targets.boards import Board, get_board

#: Task name per dtype: the library kernel measured (``kernels/mhsa/tt_mhsa_<type>.c``).
TASK_NAMES = {DType.FLOAT32: "tt_mhsa_f32", DType.INT8: "tt_mhsa_s8"}


@dataclass(frozen=True)
class Workload:
    """An MHSA layer as the kernel sees it: shape, dtype and, for a pruned layer, the nonzero
    counts of Wq, Wk, Wv and Wo (the instruction count of a row-compressed matrix follows its
    nonzeros). Dense layers carry ``nnz=None``, so their keys are those of earlier logs."""

    shape: MhsaShape
    dtype: DType = DType.FLOAT32
    nnz: tuple[int, int, int, int] | None = None

    @staticmethod
    def of_layer(shape: MhsaShape, dtype: DType, weights: MhsaWeights | None) -> Workload:
        """The workload of one layer: ``nnz`` set only when float32 ``weights`` are pruned
        enough for a matrix to be stored row-compressed (``mhsa_weights.is_pruned``)."""
        if dtype != DType.FLOAT32 or weights is None or not is_pruned(weights, shape):
            return Workload(shape, dtype)
        counts = tuple(int(np.count_nonzero(w))
                       for w in (weights.wq, weights.wk, weights.wv, weights.wo))
        return Workload(shape, dtype, counts)  # type: ignore[arg-type]

    def kwargs(self) -> dict[str, Any]:
        """AutoTVM-style task kwargs: ``{"nnz": [Wq, Wk, Wv, Wo]}`` for a pruned layer."""
        return {} if self.nnz is None else {"nnz": list(self.nnz)}

    @property
    def task_name(self) -> str:
        try:
            return TASK_NAMES[self.dtype]
        except KeyError:
            raise ValueError(f"no tunable MHSA kernel for dtype {self.dtype}; tunable: "
                             f"{', '.join(TASK_NAMES)}") from None

    def args(self) -> list[Any]:
        """AutoTVM-style task args: ``[["TENSOR", [S, E], dtype], H, P, E_out]``."""
        s = self.shape
        return [["TENSOR", [s.seq, s.embed], self.dtype], s.heads, s.proj, s.out_features]

    def key(self) -> tuple[str, str]:
        """Hashable identity used by logs and apply-best: (task name, canonical args)."""
        key = json.dumps(self.args(), separators=(",", ":"))
        if self.nnz is not None:
            key += json.dumps(self.kwargs(), separators=(",", ":"))
        return self.task_name, key

    @staticmethod
    def from_args(task_name: str, args: list[Any],
                  kwargs: dict[str, Any] | None = None) -> Workload:
        """Inverse of :meth:`args` and :meth:`kwargs` (``ValueError`` on a malformed record)."""
        dtypes = {name: dtype for dtype, name in TASK_NAMES.items()}
        try:
            (tag, (seq, embed), dtype), heads, proj, out_features = args
        except (TypeError, ValueError):
            raise ValueError(f"malformed MHSA task args {args!r}") from None
        if tag != "TENSOR" or dtypes.get(task_name) != dtype:
            raise ValueError(f"task {task_name!r} does not take args {args!r}")
        dims = (seq, embed, heads, proj, out_features)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise ValueError(f"MHSA task args {args!r} hold a non-integer dimension")
        nnz = (kwargs or {}).get("nnz")
        if nnz is not None and not (isinstance(nnz, list) and len(nnz) == 4 and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in nnz)):
            raise ValueError(f"MHSA task kwargs nnz {nnz!r} is not four non-negative counts")
        return Workload(MhsaShape(*dims), DType(dtype), None if nnz is None else tuple(nnz))

    def describe(self) -> str:
        s = self.shape
        text = f"S={s.seq} E={s.embed} H={s.heads} P={s.proj} E_out={s.out_features} {self.dtype}"
        if self.nnz is not None:
            full = (s.embed * s.heads * s.proj,) * 3 + (s.heads * s.proj * s.out_features,)
            text += " density " + "/".join(f"{n / f:.2f}" for n, f in zip(self.nnz, full))
        return text


def target_string(board: Board) -> str:
    """AutoTVM-style target string of a board: TVM ``c`` target attributes plus ``-model``."""
    attrs = dict(board.tvm_target_attrs)
    kind = attrs.pop("kind", "c")
    parts = [kind] + [f"-{k}={v}" for k, v in sorted(attrs.items())] + [f"-model={board.name}"]
    return " ".join(parts)


def board_of_target(target: str) -> str | None:
    """The board named by a target string's ``-model=`` (None when absent)."""
    for part in target.split():
        if part.startswith("-model="):
            return part[len("-model="):]
    return None


@dataclass(frozen=True)
class TuningTask:
    """One MHSA workload on one board, with the weights to measure it with (for int8, the
    dequantized weights and ``quant``, the integer side the kernel runs)."""

    board: str
    workload: Workload
    weights: MhsaWeights = field(repr=False, compare=False)
    symbols: tuple[str, ...] = ()  # the offloaded MHSAs of the model this task covers
    quant: MhsaInt8Params | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.workload.dtype == DType.INT8 and self.quant is None:
            raise ValueError(f"int8 task {self.workload.describe()} needs its quantization")

    @property
    def name(self) -> str:
        return self.workload.task_name

    @property
    def shape(self) -> MhsaShape:
        return self.workload.shape

    @property
    def target(self) -> str:
        return target_string(get_board(self.board))

    def default_config(self) -> KernelConfig:
        """The config a build without records uses (``codegen.ext.default_choice``: int8
        layers are never pruned, so their default is by shape alone)."""
        weights = self.weights if self.workload.dtype == DType.FLOAT32 else None
        return KernelConfig.default_for(self.shape, weights, self.workload.dtype)

    def describe(self) -> str:
        return f"{self.name} {self.workload.describe()} on {self.board}"


def extract_tasks(model: Any, target: str) -> list[TuningTask]:
    """Partition ``model`` (``tvm_tiny.partition_for_tiny``) and return one task per distinct
    (board, workload) of its offloaded MHSAs, in call order of their first occurrence.

    MHSAs whose dtype has no tunable kernel yet are skipped with a warning.
    """
    board = get_board(target)
    mod, _ = to_relax(model)
    mod = partition_for_tiny(mod)
    tasks: dict[Workload, TuningTask] = {}
    for gv in mhsa_functions(mod):
        symbol = offloaded_symbol(mod[gv])
        desc = describe_mhsa(mod[gv], symbol)
        if desc.dtype not in TASK_NAMES:
            warnings.warn(f"{symbol}: no tunable kernel for dtype {desc.dtype}; not tuned",
                          RuntimeWarning, stacklevel=2)
            continue
        workload = Workload.of_layer(desc.shape, desc.dtype, desc.weights)
        if workload in tasks:
            old = tasks[workload]
            tasks[workload] = TuningTask(old.board, workload, old.weights,
                                         (*old.symbols, symbol), old.quant)
        else:
            tasks[workload] = TuningTask(board.name, workload, desc.weights, (symbol,),
                                         desc.quant)
    return list(tasks.values())
