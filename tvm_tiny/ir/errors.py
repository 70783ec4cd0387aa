"""Exceptions raised by tvm_tiny.

Every error names what is at fault (node, tensor, shape, dtype, byte count or tool) so a user can
fix the input without reading our source. They all derive from :class:`TinyError`.
"""

from __future__ import annotations


class TinyError(Exception):
    """Base class of every error tvm_tiny raises on purpose."""


class ModelError(TinyError):
    """The model cannot be loaded or has a property we cannot compile (dynamic shape, bad file)."""


class UnsupportedOperatorError(ModelError):
    """An operator that neither our code generator nor TVM's frontend/lowering supports."""


class CodegenError(TinyError):
    """The tvm_tiny code generator was handed a region it cannot emit."""


class LoweringError(TinyError):
    """The lowered Relax main contains a construct the AOT emitter does not understand."""


class MemoryPlanError(TinyError):
    """The static memory plan is inconsistent or does not fit the space it was given."""


class ToolchainError(TinyError):
    """A compiler or emulator failed or is missing; carries the command and its stderr."""

    def __init__(self, message: str, command: list[str] | None = None, stderr: str = "") -> None:
        detail = message
        if command:
            detail += "\n  command: " + " ".join(command)
        if stderr:
            detail += "\n  stderr:\n" + stderr.strip()[-4000:]
        super().__init__(detail)
        self.command = command or []
        self.stderr = stderr


class RunError(TinyError):
    """Wrong inputs handed to a compiled model, or the model returned an error status."""
