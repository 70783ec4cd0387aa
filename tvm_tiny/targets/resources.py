"""Locate the C sources shipped with tvm_tiny and the TVM headers the generated C includes.

In a source checkout (and an editable install) ``kernels/``, ``runtime_c/`` and ``tuning_logs/``
sit at the repository root; in a wheel they are data packages inside ``tvm_tiny``. The TVM and
DLPack headers are never vendored: they are copied from the installed wheels on demand.
"""

from __future__ import annotations

import functools
from pathlib import Path

import tvm
import tvm_ffi

# tvm_tiny/ itself: this module lives in tvm_tiny/targets/.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR.parent / name, _PACKAGE_DIR / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"tvm_tiny data directory '{name}' not found next to {_PACKAGE_DIR}")


def kernels_dir() -> Path:
    """Kernel library sources (``kernels/``)."""
    return _data_dir("kernels")


def runtime_dir() -> Path:
    """The tiny C runtime (``runtime_c/``)."""
    return _data_dir("runtime_c")


def tuning_logs_dir() -> Path:
    """Shipped tuning logs (``tuning_logs/``)."""
    return _data_dir("tuning_logs")


@functools.cache
def tvm_header_dirs() -> tuple[Path, ...]:
    """Include directories that hold the headers TVM's C code generator includes.

    ``tvm/runtime/c_backend_api.h`` comes with apache-tvm, ``tvm/ffi/c_api.h`` with apache-tvm-ffi
    and ``dlpack/dlpack.h`` with the latter's bundled DLPack.
    """
    tvm_inc = Path(tvm.__file__).resolve().parent / "include"
    ffi_root = Path(tvm_ffi.__file__).resolve().parent
    dirs = (tvm_inc, ffi_root / "include", ffi_root / "3rdparty" / "dlpack" / "include")
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"TVM header directory missing from the installed wheels: {d}")
    return dirs


# The headers the TIR C sources include, relative to one of tvm_header_dirs(); copied into exports.
TVM_HEADERS = (
    "tvm/runtime/c_backend_api.h",
    "tvm/runtime/base.h",
    "tvm/ffi/c_api.h",
    "tvm/ffi/extra/c_env_api.h",
    "tvm/ffi/extra/base.h",
    "dlpack/dlpack.h",
)
