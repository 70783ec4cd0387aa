"""AutoTVM-style tuning of tvm_tiny's MHSA kernels (DESIGN.md §6).

``task`` (one task per (board, MHSA workload, dtype) of a model), ``space`` (declarative knobs,
validity rules, index <-> config, features), ``codegen.variant`` (the kernel's compile-time tile/FMA
variants), ``measure`` + ``firmware`` (a batch of configs in one firmware on the board's
emulator: instruction counts, outputs checked), ``cost_model`` (XGBoost ranking), ``tuner``
(XGBoost + simulated annealing, random, grid; :func:`tune`), ``log`` (append-only AutoTVM-layout
JSON lines), ``apply`` (the best record per (board, workload) for ``build``), ``report``
(progress bar, summary, convergence plot).

Nothing heavy is imported here: TVM, XGBoost and the toolchains load when used.
"""

from __future__ import annotations

from tvm_tiny.tuning.log import TuningLogWarning, TuningRecord, best_records, load_records
from tvm_tiny.tuning.measure import (
    COST_UNIT,
    BatchResult,
    MeasureErrorNo,
    MeasureOptions,
    MeasureResult,
)
from tvm_tiny.tuning.space import ConfigEntity, ConfigSpace, Knob, KnobType, config_space
from tvm_tiny.tuning.task import TuningTask, Workload, extract_tasks
from tvm_tiny.tuning.tuner import (
    ExecutorMeasurer,
    GridTuner,
    Progress,
    RandomTuner,
    TaskResult,
    Tuner,
    XGBTuner,
    tune,
)

__all__ = [
    "COST_UNIT",
    "BatchResult",
    "ConfigEntity",
    "ConfigSpace",
    "ExecutorMeasurer",
    "GridTuner",
    "Knob",
    "KnobType",
    "MeasureErrorNo",
    "MeasureOptions",
    "MeasureResult",
    "Progress",
    "RandomTuner",
    "TaskResult",
    "Tuner",
    "TuningLogWarning",
    "TuningRecord",
    "TuningTask",
    "Workload",
    "XGBTuner",
    "best_records",
    "config_space",
    "extract_tasks",
    "load_records",
    "tune",
]
