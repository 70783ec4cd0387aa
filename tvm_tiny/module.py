"""TinyModule: the result of :func:`tvm_tiny.build` — C sources, metadata, and ways to run them.

The sources are kept as an in-memory tree laid out like microTVM's Model Library Format
(``codegen/host/src``, ``codegen/host/include``, ``runtime/``, ``metadata.json``,
``src/relax.txt``), so running on the host, exporting a tar and exporting a project all start from
the same files.
"""

from __future__ import annotations

import ctypes
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvm_tiny.firmware.runner import BoardRun, run_on_board
from tvm_tiny.ir.errors import RunError
from tvm_tiny.lower.aot import TensorSpec
from tvm_tiny.targets.toolchain import compile_host_library

_HOST_DEFINES = ()


@dataclass
class TinyModule:
    """A compiled model: generated C sources plus what the build found out about them."""

    name: str
    prefix: str
    target: str
    files: dict[str, str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, Any]
    #: Translation units whose code opens instruction windows under TT_PROFILE_STEPS (the AOT
    #: entry point, the cluster port): the board's profiled firmware compiles them again.
    profiled_sources: tuple[str, ...]
    _library: ctypes.CDLL | None = field(default=None, repr=False)

    # -- files -------------------------------------------------------------------------------------
    def source_files(self) -> list[str]:
        """Relative paths of every C translation unit of the model (generated + runtime)."""
        return sorted(p for p in self.files if p.endswith(".c"))

    def include_dirs(self) -> list[str]:
        return ["codegen/host/include", "runtime/include"]

    def export_library_format(self, path: str | Path) -> Path:
        """Write a Model Library Format-like tar (``.tar``) of the sources and metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for rel in sorted(self.files):
                data = self.files[rel].encode()
                info = tarfile.TarInfo(f"./{rel}")
                info.size = len(data)
                info.mtime = 0  # deterministic archives
                tar.addfile(info, io.BytesIO(data))
        return path

    def write_sources(self, directory: str | Path) -> Path:
        """Write the source tree (the tar's content) into ``directory``."""
        directory = Path(directory)
        for rel, content in self.files.items():
            out = directory / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(content)
        return directory

    # -- running on the host ----------------------------------------------------------------
    def _load(self) -> ctypes.CDLL:
        if self._library is None:
            lib_path = compile_host_library(
                dict(self.files), self.source_files(), self.include_dirs(), self.prefix,
                _HOST_DEFINES,
            )
            lib = ctypes.CDLL(str(lib_path))
            for fn in ("run", "run_with_arena"):
                getattr(lib, f"{self.prefix}_{fn}").restype = ctypes.c_int32
            getattr(lib, f"{self.prefix}_last_error").restype = ctypes.c_char_p
            self._library = lib
        return self._library

    def _check_inputs(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            names = ", ".join(t.name for t in self.inputs)
            raise RunError(
                f"model '{self.name}' takes {len(self.inputs)} input(s) ({names}); "
                f"got {len(inputs)}"
            )
        arrays = []
        for spec, value in zip(self.inputs, inputs):
            array = np.asarray(value)
            if array.dtype != np.dtype(spec.dtype):
                raise RunError(
                    f"input '{spec.name}' must have dtype {spec.dtype}; got {array.dtype}"
                )
            if tuple(array.shape) != spec.shape:
                raise RunError(
                    f"input '{spec.name}' must have shape {list(spec.shape)}; "
                    f"got {list(array.shape)}"
                )
            arrays.append(np.ascontiguousarray(array))
        return arrays

    def run(self, *inputs: np.ndarray, arena: np.ndarray | None = None) -> list[np.ndarray]:
        """Run the generated C on the host (gcc + ctypes; no TVM at run time).

        ``arena`` (a uint8 array) runs the model in caller memory instead of its static arena;
        tests use it to check that nothing beyond ``metadata["arena_bytes"]`` is touched.
        """
        arrays = self._check_inputs(inputs)
        outputs = [np.empty(t.shape, dtype=t.dtype) for t in self.outputs]
        lib = self._load()
        in_struct = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        out_struct = (ctypes.c_void_p * len(outputs))(*[o.ctypes.data for o in outputs])
        if arena is None:
            rc = getattr(lib, f"{self.prefix}_run")(in_struct, out_struct)
        else:
            if arena.dtype != np.uint8 or not arena.flags.c_contiguous:
                raise RunError("arena must be a contiguous uint8 array")
            rc = getattr(lib, f"{self.prefix}_run_with_arena")(
                in_struct, out_struct, ctypes.c_void_p(arena.ctypes.data),
                ctypes.c_size_t(arena.nbytes),
            )
        if rc != 0:
            message = getattr(lib, f"{self.prefix}_last_error")().decode(errors="replace")
            raise RunError(f"model '{self.name}' returned status {rc}: {message}")
        return outputs

    # -- running on a board -------------------------------------------------------------------
    def run_on_board(self, *inputs: np.ndarray) -> BoardRun:
        """Cross-compile for the board this module was built for, run it in the board's
        emulator (QEMU) and count instructions: see :func:`tvm_tiny.firmware.runner.run_on_board`.

        Returns a :class:`tvm_tiny.firmware.runner.BoardRun` with ``.outputs`` (equal to
        :meth:`run` within float tolerance), ``.instructions`` (one run), ``.per_kernel`` and, on
        RISC-V, ``.minstret``.
        """
        return run_on_board(self, self._check_inputs(inputs))

    def __repr__(self) -> str:
        offloaded = len(self.metadata.get("offloaded", []))
        return (
            f"TinyModule(name={self.name!r}, target={self.target!r}, "
            f"arena_bytes={self.metadata.get('arena_bytes')}, offloaded={offloaded})"
        )


def metadata_json(metadata: dict[str, Any]) -> str:
    """Deterministic JSON text of the metadata (sorted keys, trailing newline)."""
    return json.dumps(metadata, indent=2, sort_keys=True) + "\n"
