"""The closed vocabularies every stage shares, as enums instead of bare strings.

They are ``StrEnum``s on purpose: their values are the strings TVM, ONNX, the metadata JSON and
the tuning logs already use, so a member compares equal to that string and serializes as it
(``json.dumps(DType.INT8) == '"int8"'``). Code inside tvm_tiny compares members, never literals;
strings are turned into members once, where they enter (a TVM dtype, a JSON record).
"""

from __future__ import annotations

from enum import StrEnum


class DType(StrEnum):
    """Element types tvm_tiny's kernels and plans distinguish (TVM/numpy spelling)."""

    FLOAT32 = "float32"
    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"

    @property
    def nbytes(self) -> int:
        """Bytes per element."""
        return _NBYTES[self]


_NBYTES = {DType.FLOAT32: 4, DType.INT8: 1, DType.UINT8: 1, DType.INT16: 2, DType.INT32: 4,
           DType.INT64: 8, DType.BOOL: 1}


class TensorKind(StrEnum):
    """Where a tensor of the lowered ``main`` lives (``lower.aot``)."""

    INPUT = "input"  # a model input, owned by the caller
    OUTPUT = "output"  # a model output, owned by the caller
    STORAGE = "storage"  # an intermediate, placed in the arena by the memory planner
    CONST = "const"  # a weight, a ``static const`` array in flash


class StepKind(StrEnum):
    """What one step of the AOT entry point calls."""

    TIR = "tir"  # a PrimFunc TVM compiled to C
    EXTERN = "extern"  # a tvm_tiny kernel instance (``relax.ext.tvm_tiny``)


class ConfigSource(StrEnum):
    """Where an offloaded kernel's config came from (``tuning.apply``; DESIGN.md §6)."""

    TUNING_LOG = "tuning_log"  # the log the user passed to ``build(tuning_log=...)``
    SHIPPED_LOG = "shipped"  # ``tuning_logs/<board>.jsonl`` shipped with tvm_tiny
    DEFAULT = "default"  # the board default (no valid record)
    OPTIONS = "options"  # given explicitly (tests, the tuner's own measurements)
