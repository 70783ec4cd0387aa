"""The tvm_tiny code generator, registered with TVM as ``relax.ext.tvm_tiny``.

``RunCodegen`` hands it the offloaded functions; for each it writes one C translation unit: the
kernel's weights (re-arranged offline, fused for FWSA when chosen) as aligned ``static const``
arrays, the parameter structs, and a thin entry ``tvmtiny_<model>_<symbol>`` that the AOT entry
point calls with input/output pointers and a scratch region of the arena. Kernel bodies are never
copied per model: the instance calls the library kernel (``kernels/mhsa/tt_mhsa_f32.c``).

Composite → emitter table: one entry per ``tvm_tiny.<op>`` composite (naming contract of
``patterns.py``; a test checks the two agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import tvm
import tvm_ffi

from tvm_tiny.codegen.kernel import GeneratedKernel
from tvm_tiny.codegen.linear import describe_linear, emit_linear_sparse_f32
from tvm_tiny.codegen.mhsa_f32 import emit_mhsa_f32
from tvm_tiny.codegen.mhsa_s8 import emit_mhsa_s8
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.mhsa import KernelConfig
from tvm_tiny.partition.describe import describe_mhsa, offloaded_symbol
from tvm_tiny.partition.partitioner import composite_name
from tvm_tiny.partition.patterns import LINEAR_SPARSE_COMPOSITE, MHSA_COMPOSITE, MHSA_S8_COMPOSITE

# (descriptor, kernel config or None, model, config source, cores) -> kernel
Emitter = Callable[[Any, Any, str, str, int], GeneratedKernel]
EMITTERS: dict[tuple[str, str], Emitter] = {
    (MHSA_COMPOSITE, "float32"): emit_mhsa_f32,
    (MHSA_S8_COMPOSITE, "int8"): emit_mhsa_s8,
    (LINEAR_SPARSE_COMPOSITE, "float32"): emit_linear_sparse_f32,
}
"""(composite, dtype) → emitter; every pattern in ``patterns.tiny_patterns`` has an entry."""


@dataclass(frozen=True)
class CodegenOptions:
    """Options ``RunCodegen`` passes to ``relax.ext.tvm_tiny`` (as one JSON string)."""

    model: str
    configs: dict[str, dict[str, object]]  # symbol -> {"rows_per_block", "fuse_qk", "source"}
    cores: int = 1  # cores the MHSA heads are split across (the board's cluster)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> CodegenOptions:
        data = json.loads(text)
        return CodegenOptions(data["model"], data["configs"], int(data.get("cores", 1)))


def generate_kernel(func: tvm.relax.Function, options: CodegenOptions) -> GeneratedKernel:
    """Emit the C instance of one offloaded function (pure: same inputs, same bytes)."""
    symbol = offloaded_symbol(func)
    composite = composite_name(func)
    if composite == LINEAR_SPARSE_COMPOSITE:
        linear = describe_linear(func, symbol)
        return EMITTERS[(composite, linear.dtype)](linear, None, options.model, "n/a",
                                                   options.cores)
    if composite not in (MHSA_COMPOSITE, MHSA_S8_COMPOSITE):
        raise CodegenError(f"'{symbol}': no tvm_tiny emitter for composite {composite!r}")
    desc = describe_mhsa(func, symbol)
    chosen = options.configs.get(symbol)
    if chosen is None:
        weights = desc.weights if desc.dtype == "float32" else None
        config, source = KernelConfig.default_for(desc.shape, weights), "default"
    else:
        config = KernelConfig(int(chosen["rows_per_block"]), bool(chosen["fuse_qk"]),
                              bool(chosen.get("sparse", True)))
        source = str(chosen.get("source", "options"))
    key = (composite, desc.dtype)
    if key not in EMITTERS:
        raise CodegenError(f"'{symbol}': no tvm_tiny emitter for {composite} {desc.dtype}")
    emitter = EMITTERS[key]
    return emitter(desc, config, options.model, source, options.cores)


@tvm_ffi.register_global_func("relax.ext.tvm_tiny")
def _relax_ext_tvm_tiny(funcs: list, options: dict, constant_names: dict) -> list:
    """BYOC entry: one C source module per offloaded function (``CSourceModuleCreate``)."""
    del constant_names  # weights are emitted into the kernel source itself
    parsed = CodegenOptions.from_json(str(options["options"])) if "options" in options else \
        CodegenOptions("model", {})
    create = tvm.get_global_func("runtime.CSourceModuleCreate")
    modules = []
    for func in funcs:
        kernel = generate_kernel(func, parsed)
        modules.append(create(kernel.source, "c", [kernel.symbol], []))
    return modules
