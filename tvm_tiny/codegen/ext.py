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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tvm
import tvm_ffi
from tvm import relax

from tvm_tiny.codegen.conv_s8 import ConvS8Descriptor, describe_conv_s8, emit_conv_s8
from tvm_tiny.codegen.kernel import GeneratedKernel
from tvm_tiny.codegen.linear import LinearDescriptor, describe_linear, emit_linear_sparse_f32
from tvm_tiny.codegen.linear_s8 import LinearS8Descriptor, describe_linear_s8, emit_linear_s8
from tvm_tiny.codegen.mhsa_f32 import emit_mhsa_f32
from tvm_tiny.codegen.mhsa_s8 import emit_mhsa_s8
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.errors import CodegenError, TinyError
from tvm_tiny.ir.kernel_config import KernelChoice
from tvm_tiny.ir.mhsa import KernelConfig
from tvm_tiny.ir.provenance import UNKNOWN, Provenance
from tvm_tiny.partition.describe import MhsaDescriptor, describe_mhsa, offloaded_symbol
from tvm_tiny.partition.partitioner import composite_name
from tvm_tiny.partition.patterns import (
    CONV_S8_COMPOSITE,
    LINEAR_S8_COMPOSITE,
    LINEAR_SPARSE_COMPOSITE,
    MHSA_COMPOSITE,
    MHSA_S8_COMPOSITE,
)

# (descriptor, kernel config or None, model, config source, cores, provenance) -> kernel
Emitter = Callable[[Any, Any, str, str, int, Provenance], GeneratedKernel]
EMITTERS: dict[tuple[str, str], Emitter] = {
    (MHSA_COMPOSITE, "float32"): emit_mhsa_f32,
    (MHSA_S8_COMPOSITE, "int8"): emit_mhsa_s8,
    (LINEAR_SPARSE_COMPOSITE, "float32"): emit_linear_sparse_f32,
    (LINEAR_S8_COMPOSITE, "int8"): emit_linear_s8,
    (CONV_S8_COMPOSITE, "int8"): emit_conv_s8,
}
"""(composite, dtype) → emitter; every pattern in ``patterns.tiny_patterns`` has an entry."""

Descriptor = MhsaDescriptor | LinearDescriptor | LinearS8Descriptor | ConvS8Descriptor
"""What the code generator reads of one offloaded function."""


@dataclass
class CodegenSession:
    """One build's conversation with ``relax.ext.tvm_tiny``, passed through ``RunCodegen``.

    The build fills ``choices`` (the kernel config of every MHSA, from ``tuning.apply``) and
    ``descriptors`` (what the planner already read of each offloaded function, so the code
    generator does not read it again) and hands the session itself to ``RunCodegen`` as its
    options (``{"tvm_tiny": session.options()}``; TVM's FFI carries the Python object through
    unchanged). The code generator answers in ``generated``: each kernel it emitted, with the
    facts the build reports. Nothing is serialized on the way in or out.

    Run without a session (a user's own ``RunCodegen`` after :func:`partition_for_tiny`), the
    code generator reads every function itself and uses the default configs.
    """

    model: str = "model"
    cores: int = 1  # cores the MHSA heads are split across (the board's cluster)
    choices: dict[str, KernelChoice] = field(default_factory=dict)
    descriptors: dict[str, Descriptor] = field(default_factory=dict)
    generated: dict[str, GeneratedKernel] = field(default_factory=dict)
    # The error the code generator raised, kept with its type: TVM's FFI re-raises it across
    # RunCodegen as a plain RuntimeError, and the build re-raises this one instead.
    failure: TinyError | None = None
    # Stated in the header of every kernel source (tvm_tiny.ir.provenance).
    provenance: Provenance = UNKNOWN

    def options(self) -> dict[str, CodegenSession]:
        """The ``RunCodegen`` options entry of ``tvm_tiny``."""
        return {"session": self}

    def describe(self, func: relax.Function) -> Descriptor:
        """The descriptor of one offloaded function (read once per session)."""
        symbol = offloaded_symbol(func)
        if symbol not in self.descriptors:
            self.descriptors[symbol] = describe_function(func, symbol)
        return self.descriptors[symbol]


def describe_function(func: relax.Function, symbol: str) -> Descriptor:
    """Read an offloaded function back into the descriptor of its kernel family."""
    composite = composite_name(func)
    if composite == LINEAR_SPARSE_COMPOSITE:
        return describe_linear(func, symbol)
    if composite == LINEAR_S8_COMPOSITE:
        return describe_linear_s8(func, symbol)
    if composite == CONV_S8_COMPOSITE:
        return describe_conv_s8(func, symbol)
    if composite in (MHSA_COMPOSITE, MHSA_S8_COMPOSITE):
        return describe_mhsa(func, symbol)
    raise CodegenError(f"'{symbol}': no tvm_tiny emitter for composite {composite!r}")


def default_choice(desc: MhsaDescriptor) -> KernelChoice:
    """The board-independent default of an MHSA nobody chose a config for."""
    weights = desc.weights if desc.dtype == DType.FLOAT32 else None
    return KernelChoice(KernelConfig.default_for(desc.shape, weights, desc.dtype))


def generate_kernel(func: relax.Function, session: CodegenSession) -> GeneratedKernel:
    """Emit the C instance of one offloaded function (pure: same inputs, same bytes)."""
    desc = session.describe(func)
    if isinstance(desc, LinearS8Descriptor):
        return EMITTERS[(LINEAR_S8_COMPOSITE, desc.dtype)](desc, None, session.model, "n/a",
                                                           session.cores, session.provenance)
    if isinstance(desc, ConvS8Descriptor):
        return EMITTERS[(CONV_S8_COMPOSITE, desc.dtype)](desc, None, session.model, "n/a",
                                                         session.cores, session.provenance)
    if isinstance(desc, LinearDescriptor):
        return EMITTERS[(LINEAR_SPARSE_COMPOSITE, desc.dtype)](desc, None, session.model, "n/a",
                                                               session.cores,
                                                               session.provenance)
    composite = composite_name(func)
    key = (composite, desc.dtype)
    if key not in EMITTERS:
        raise CodegenError(f"'{desc.symbol}': no tvm_tiny emitter for {composite} {desc.dtype}")
    choice = session.choices.get(desc.symbol) or default_choice(desc)
    return EMITTERS[key](desc, choice.config, session.model, str(choice.origin), session.cores,
                         session.provenance)


@tvm_ffi.register_global_func("relax.ext.tvm_tiny")
def _relax_ext_tvm_tiny(funcs: list, options: dict, constant_names: dict) -> list:
    """BYOC entry: one C source module per offloaded function (``CSourceModuleCreate``)."""
    del constant_names  # weights are emitted into the kernel source itself
    session = options["session"] if "session" in options else CodegenSession()
    if not isinstance(session, CodegenSession):
        raise CodegenError(f"relax.ext.tvm_tiny: option 'session' is a "
                           f"{type(session).__name__}, expected a CodegenSession")
    create = tvm.get_global_func("runtime.CSourceModuleCreate")
    modules = []
    for func in funcs:
        try:
            kernel = generate_kernel(func, session)
        except TinyError as err:
            session.failure = err
            raise
        session.generated[kernel.symbol] = kernel
        modules.append(create(kernel.source, "c", [kernel.symbol], []))
    return modules
