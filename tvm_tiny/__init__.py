"""tvm_tiny: deploy tiny transformers onto microcontrollers through Apache TVM (BYOC).

Public API (DESIGN.md §3)::

    lib = tvm_tiny.build(model, target="host")      # ONNX model/path or Relax IRModule
    lib.run(x)                                      # generated C on the host
    lib.metadata                                    # arena/params bytes, what was offloaded
    lib.export_library_format("model.tar")
    res = lib.run_on_board(x)                       # emulated board: outputs, instructions
    tvm_tiny.export_project(lib, "out/")            # make -C out/ && make -C out/ run
    tvm_tiny.partition_for_tiny(mod)                # the partitioner alone
    tvm_tiny.tune(model, target="stm32h7", trials=64, log="tuning_logs/stm32h7.jsonl")
    tvm_tiny.build(model, target="stm32h7", tuning_log="tuning_logs/stm32h7.jsonl")
    tvm_tiny.boards()                               # names of the board profiles
"""

from __future__ import annotations

from tvm_tiny.build import build
from tvm_tiny.firmware.project import export_project
from tvm_tiny.frontend.quantize import quantize
from tvm_tiny.ir.errors import (
    CodegenError,
    LoweringError,
    MemoryPlanError,
    ModelError,
    RunError,
    TinyError,
    ToolchainError,
    UnsupportedOperatorError,
)
from tvm_tiny.ir.version import __version__
from tvm_tiny.module import TinyModule
from tvm_tiny.partition.partitioner import partition_for_tiny
from tvm_tiny.targets.boards import board_names as boards
from tvm_tiny.tuning import tune

__all__ = [
    "CodegenError",
    "LoweringError",
    "MemoryPlanError",
    "ModelError",
    "RunError",
    "TinyError",
    "TinyModule",
    "ToolchainError",
    "UnsupportedOperatorError",
    "__version__",
    "boards",
    "build",
    "export_project",
    "partition_for_tiny",
    "quantize",
    "tune",
]
