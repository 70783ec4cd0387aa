"""What every emitter returns, and the C names of kernel instances.

The emitters (``mhsa_f32``, ``mhsa_s8``, ``linear``) and the BYOC entry (``ext``) all import this
module and nothing imports them back, so the package has no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tvm_tiny.ir.cformat import c_identifier

CONST_ALIGNMENT = 16
"""Alignment of every weight array (``static const`` in flash): 16 B suits SIMD loads."""


@dataclass(frozen=True)
class GeneratedKernel:
    """One emitted kernel instance and the facts the build reports about it."""

    symbol: str
    c_function: str
    source: str
    scratch_bytes: int
    params_bytes: int
    library_sources: tuple[str, ...]
    cluster_forks: int = 0  # forks per call on a multi-core cluster (0: single core)
    # Storage of each weight matrix (MHSA float32): field -> format, nnz, dense and stored bytes.
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)


def kernel_function_name(model: str, symbol: str) -> str:
    """C name of the instance entry (model-prefixed so models can share a firmware)."""
    return f"tvmtiny_{c_identifier(model)}_{symbol}"
