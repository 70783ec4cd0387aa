"""Tuning tasks: one per distinct (board, MHSA workload, dtype) of a model (DESIGN.md §6).

A workload is what the kernel's instruction count depends on: the layer shape (S, E, H, P,
E_out) and the dtype. Two MHSAs of a model with the same workload share one task (and, at build
time, one best record); the weights of the first one are the ones measured with (the count does
not depend on their values beyond a few instructions of ``expf``).

The record key follows AutoTVM (``python/tvm/autotvm/task/task.py``): ``input`` is
``[target, task name, args, kwargs]`` with tensors as ``["TENSOR", shape, dtype]``; our args are
``[["TENSOR", [S, E], dtype], H, P, E_out]`` and the target string ends in ``-model=<board>``
(AutoTVM's ``-model`` names the device, which is what apply-best keys on).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from ..boards import Board, get_board
from ..mhsa_weights import KernelConfig, MhsaShape, MhsaWeights

#: Task name per dtype: the library kernel measured (``codegen/mhsa/tt_mhsa_<type>.c``).
TASK_NAMES = {"float32": "tt_mhsa_f32"}


@dataclass(frozen=True)
class Workload:
    """An MHSA layer as the kernel sees it: shape and dtype (weights excluded)."""

    shape: MhsaShape
    dtype: str = "float32"

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
        import json

        return self.task_name, json.dumps(self.args(), separators=(",", ":"))

    @staticmethod
    def from_args(task_name: str, args: list[Any]) -> Workload:
        """Inverse of :meth:`args` (raises ``ValueError`` on a malformed record)."""
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
        return Workload(MhsaShape(*dims), dtype)

    def describe(self) -> str:
        s = self.shape
        return f"S={s.seq} E={s.embed} H={s.heads} P={s.proj} E_out={s.out_features} {self.dtype}"


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
    """One MHSA workload on one board, with the weights to measure it with."""

    board: str
    workload: Workload
    weights: MhsaWeights = field(repr=False, compare=False)
    symbols: tuple[str, ...] = ()  # the offloaded MHSAs of the model this task covers

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
        return KernelConfig.default_for(self.shape)

    def describe(self) -> str:
        return f"{self.name} {self.workload.describe()} on {self.board}"


def extract_tasks(model: Any, target: str) -> list[TuningTask]:
    """Partition ``model`` (``tvm_tiny.partition_for_tiny``) and return one task per distinct
    (board, workload) of its offloaded MHSAs, in call order of their first occurrence.

    MHSAs whose dtype has no tunable kernel yet are skipped with a warning.
    """
    from ..frontend import to_relax
    from ..mhsa import describe_mhsa, offloaded_symbol
    from ..partition import mhsa_functions, partition_for_tiny

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
        workload = Workload(desc.shape, desc.dtype)
        if workload in tasks:
            old = tasks[workload]
            tasks[workload] = TuningTask(old.board, workload, old.weights,
                                         (*old.symbols, symbol))
        else:
            tasks[workload] = TuningTask(board.name, workload, desc.weights, (symbol,))
    return list(tasks.values())
