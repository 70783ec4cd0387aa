"""What the firmware layer needs of a compiled model, as a typed interface.

:class:`tvm_tiny.TinyModule` satisfies :class:`FirmwareModel` structurally; this package never
imports it (``tvm_tiny.module`` sits above ``tvm_tiny.firmware`` in the layering), so tests and
other front ends can hand the firmware builder any object with these attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from tvm_tiny.targets.boards import Board, get_board

#: Kernel-library sources (relative to ``kernels/``) whose code opens instruction windows when
#: compiled with ``TT_PROFILE_STEPS``: the serial cluster port, one window per core task.
PROFILED_KERNEL_SOURCES = ("port/tt_cluster_serial.c",)


class TensorLike(Protocol):
    """A model input or output as the generated C API exposes it."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...

    @property
    def nbytes(self) -> int: ...


class FirmwareModel(Protocol):
    """A compiled model as the firmware builder sees it (``tvm_tiny.TinyModule`` is one).

    ``files`` is the Model Library Format-like tree (``codegen/host/{src,include}``,
    ``runtime/{src,include}``); ``profiled_sources`` are the translation units of that tree
    whose code opens instruction windows under ``TT_PROFILE_STEPS`` (the AOT entry point and,
    on a cluster board, the cluster port; see :func:`profiled_sources`); ``metadata`` is the
    build's report, of which the firmware reads ``steps`` (the kernel calls in order) and
    ``offloaded[i]["cluster"]`` (cores and forks of a cluster kernel).
    """

    @property
    def name(self) -> str: ...

    @property
    def prefix(self) -> str: ...

    @property
    def target(self) -> str: ...

    @property
    def files(self) -> Mapping[str, str]: ...

    @property
    def inputs(self) -> Sequence[TensorLike]: ...

    @property
    def outputs(self) -> Sequence[TensorLike]: ...

    @property
    def metadata(self) -> Mapping[str, Any]: ...

    @property
    def profiled_sources(self) -> Sequence[str]: ...

    def source_files(self) -> list[str]:
        """Every C translation unit of ``files``."""
        ...

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """The model's outputs computed on the host (the expected outputs of an export)."""
        ...


def profiled_sources(prefix: str, library_sources: Iterable[str]) -> tuple[str, ...]:
    """The ``profiled_sources`` of a model whose entry point is ``<prefix>.c`` and which links
    the kernel-library files ``library_sources`` (relative to ``kernels/``, as
    ``tvm_tiny.build`` copies them to ``runtime/src/``): the entry point (a window per kernel
    call) and the cluster port (a window per core task) when linked."""
    return (f"codegen/host/src/{prefix}.c",
            *(f"runtime/src/{rel}" for rel in library_sources if rel in PROFILED_KERNEL_SOURCES))


def board_for(model: FirmwareModel, board: Board | None = None) -> Board:
    """The board a firmware of ``model`` targets (``board`` overrides the model's target)."""
    board = board or get_board(model.target)
    if board.is_host or board.toolchain is None or board.placement is None:
        raise ValueError(
            f"model '{model.name}' was built for target '{model.target}', which is not a board; "
            "build it with target=<board> (see tvm_tiny.boards())")
    return board


def step_names(model: FirmwareModel) -> list[str]:
    """The kernel calls of one run, in order (one window each in a profiled firmware)."""
    return [step["name"] for step in model.metadata["steps"]]


def cluster_steps(model: FirmwareModel) -> dict[str, dict[str, int]]:
    """Offloaded kernels split across a cluster: name -> {"cores", "active_cores", "forks"}."""
    return {e["name"]: e["cluster"] for e in model.metadata["offloaded"] if "cluster" in e}


def window_labels(model: FirmwareModel, profiled: bool) -> list[str]:
    """Labels of the windows in the order they open: the run, then (profiled) each kernel call
    and, inside a cluster kernel, each core's task of each fork."""
    labels = ["run"]
    if profiled:
        clusters = cluster_steps(model)
        for name in step_names(model):
            labels.append(name)
            cluster = clusters.get(name)
            if cluster is not None:
                labels += [f"{name} fork{f} core{c}" for f in range(cluster["forks"])
                           for c in range(cluster["cores"])]
    return labels
