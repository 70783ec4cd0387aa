"""Where a generated C file came from: the facts its header comment states.

Every generated file (model ``.c``/``.h``, the TIR ``.c``, each kernel instance ``.c``) opens with
the block :meth:`Provenance.c_comment` renders: tvm_tiny and TVM versions, the SHA-256 of the
model as it was given to ``build``, the board, and the call that made it. Nothing in it depends on
the time or the machine beyond that call, so a build stays byte-for-byte reproducible.

ONNX initializer names: TVM 0.27's ONNX importer (``from_onnx(keep_params_in_input=False)``, what
the frontend uses) turns every initializer into an anonymous ``relax.const`` (no name, no span),
and ``keep_params_in_input=True`` names parameters only until ``BindParams`` turns them into the
same anonymous constants; folded constants (transposes, slices, fused weights) are new arrays
either way. So the graph keeps no names, and :class:`InitializerNames` recovers them by value: a
constant whose dtype, shape and bytes equal an initializer's (or its 2-D transpose's) carries
that initializer's name; any other constant is said to have no recoverable name, never given an
invented one.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import numpy_helper


def model_sha256(model: onnx.ModelProto | str | os.PathLike | tvm.IRModule) -> str:
    """Full SHA-256 (hex) of the model as given: the file's bytes, the ModelProto's
    (deterministic) serialization, or an IRModule's TVMScript with its constants."""
    if isinstance(model, (str, os.PathLike)):
        return hashlib.sha256(Path(model).read_bytes()).hexdigest()
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    if isinstance(model, tvm.IRModule):
        return hashlib.sha256(model.script(show_meta=True).encode()).hexdigest()
    raise TypeError(f"cannot hash a model of type {type(model).__name__}")


def _python_literal(value: object) -> str:
    """A value as it reads in a Python call (strings double-quoted, as a user types them)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, onnx.ModelProto):
        return f"<onnx.ModelProto graph {json.dumps(value.graph.name)}>"
    if isinstance(value, tvm.IRModule):
        return "<tvm.IRModule>"
    return str(value)


def build_call(function: str, model: object, **options: object) -> str:
    """The call that made a build, e.g. ``tvm_tiny.build("model.onnx", target="stm32l4")``.

    Pass only the options the caller set (the defaults add noise, not facts)."""
    args = [_python_literal(model)] + [f"{k}={_python_literal(v)}" for k, v in options.items()]
    return f"{function}({', '.join(args)})"


def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    key = f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()
    return hashlib.sha256(key).hexdigest()


@dataclass(frozen=True)
class InitializerNames:
    """ONNX initializer names by value (see the module docstring for why by value)."""

    by_digest: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "onnx"  # "onnx" or what the model was instead (no initializers to name)

    @staticmethod
    def of_onnx(model: onnx.ModelProto) -> InitializerNames:
        names: dict[str, list[str]] = {}
        for init in model.graph.initializer:
            names.setdefault(_digest(numpy_helper.to_array(init)), []).append(init.name)
        return InitializerNames({k: tuple(v) for k, v in names.items()})

    def names_of(self, array: np.ndarray) -> tuple[tuple[str, ...], bool]:
        """(initializer names holding exactly ``array``, transposed?): ``((), False)`` if none."""
        names = self.by_digest.get(_digest(array), ())
        if names or array.ndim != 2:
            return names, False
        return self.by_digest.get(_digest(array.T), ()), True

    def describe(self, array: np.ndarray) -> str:
        """Where ``array`` came from, for a C comment: the initializer's name or why none."""
        if self.source != "onnx":
            return f"name not recoverable (the model was given as {self.source})"
        names, transposed = self.names_of(array)
        if not names:
            return "no ONNX initializer holds these values (computed at build time)"
        quoted = " = ".join(f"'{n}'" for n in names)
        return f"ONNX initializer {quoted}" + (" transposed" if transposed else "")


def initializer_names(model: onnx.ModelProto | str | os.PathLike | tvm.IRModule
                      ) -> InitializerNames:
    """The :class:`InitializerNames` of a model as ``build`` accepts it."""
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    if isinstance(model, onnx.ModelProto):
        return InitializerNames.of_onnx(model)
    return InitializerNames({}, source="a Relax IRModule")


def _comment_safe(text: str) -> str:
    return text.replace("*/", "* /")


@dataclass(frozen=True)
class Provenance:
    """The facts stated at the top of every generated C file of one build."""

    version: str  # tvm_tiny.__version__
    tvm_version: str
    model_sha256: str  # model_sha256() of the model as given
    target: str  # board profile name
    call: str  # build_call(), the Python call or CLI command that made the build
    initializers: InitializerNames = field(default_factory=InitializerNames)

    def c_comment(self, title: str, details: Sequence[str] = ()) -> str:
        """The file header: ``title``, the provenance lines, then ``details`` (one per line)."""
        lines = [title, "", f"Generated by tvm_tiny {self.version} (Apache TVM "
                 f"{self.tvm_version}); do not edit.",
                 f"Model SHA-256: {self.model_sha256}", f"Target: {self.target}",
                 f"Made by: {self.call}"]
        return c_block_comment(lines + (["", *details] if details else []))

    def describe_constant(self, array: np.ndarray) -> str:
        """``InitializerNames.describe`` of this build's model."""
        return self.initializers.describe(array)


UNKNOWN = Provenance("unknown", "unknown", "unknown", "unknown",
                     "outside tvm_tiny.build (no provenance given)",
                     InitializerNames({}, source="an unknown model"))
"""What a file generated without a build (a user's own ``RunCodegen``) states."""


COMMENT_WIDTH = 100
"""Column limit of generated C (``.clang-format`` at the repository root says the same)."""


def c_block_comment(lines: Iterable[str]) -> str:
    """A ``/* ... */`` block, one `` * `` line per entry (wrapped at spaces to the column
    limit, as clang-format would), so clang-format leaves it as it is."""
    out = []
    for line in lines:
        wrapped = textwrap.wrap(_comment_safe(line), COMMENT_WIDTH - 3, break_long_words=False,
                                break_on_hyphens=False, subsequent_indent="  ")
        out.extend(f" * {w}" for w in wrapped or [""])
    return "/*\n" + "\n".join(line.rstrip() for line in out) + "\n */\n"
