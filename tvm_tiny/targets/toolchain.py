"""Host C toolchain: compile generated sources into a shared library, cached by content hash.

Commands are argv lists (never shell strings); failures raise :class:`ToolchainError` carrying the
command and the compiler's stderr.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tvm_tiny.ir.errors import ToolchainError

# Flags every generated source must pass (C99, all warnings as errors).
WARNING_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")
# -Bsymbolic: the model's own TVMBackendAllocWorkspace (arena-backed) must win over the one in
# libtvm_runtime.so, which the Python process has already loaded into the global scope.
HOST_FLAGS = ("-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wl,-Bsymbolic")


def cache_dir() -> Path:
    """Where compiled host libraries are kept (``$TVM_TINY_CACHE`` or ``~/.cache/tvm_tiny``)."""
    root = os.environ.get("TVM_TINY_CACHE") or os.path.join(Path.home(), ".cache", "tvm_tiny")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_tool(tool: str, debian_package: str) -> str:
    """Absolute path of ``tool`` or an error naming the Debian package that provides it."""
    path = shutil.which(tool)
    if path is None:
        raise ToolchainError(
            f"'{tool}' not found on PATH; install it with: apt-get install {debian_package} "
            "(or run `make setup`)"
        )
    return path


def run_tool(command: list[str], what: str, cwd: Path | None = None) -> str:
    """Run a tool, returning stdout; raise :class:`ToolchainError` on a non-zero exit."""
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed (exit {proc.returncode})", command,
                             proc.stderr + proc.stdout)
    return proc.stdout


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    """Write ``{relative path: content}`` under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def tree_hash(files: dict[str, str | bytes], extra: tuple[str, ...] = ()) -> str:
    """Content hash of a source tree plus the build flags that affect it."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        content = files[rel]
        digest.update(rel.encode())
        digest.update(content if isinstance(content, bytes) else content.encode())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:20]


def compile_host_library(files: dict[str, str | bytes], sources: list[str],
                         include_dirs: list[str], name: str,
                         extra_flags: tuple[str, ...] = ()) -> Path:
    """Build ``files`` into ``lib<name>.so`` with host gcc, reusing a cached build of equal hash.

    A fresh file name per content hash also sidesteps ``dlopen`` caching by path.
    """
    gcc = require_tool("gcc", "gcc")
    flags = WARNING_FLAGS + HOST_FLAGS + extra_flags
    key = tree_hash(files, flags)
    build = cache_dir() / f"{name}-{key}"
    lib = build / f"lib{name}-{key}.so"
    if lib.exists():
        return lib
    tmp = build.with_name(build.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tree(tmp, files)
    command = [gcc, *flags, *(f"-I{d}" for d in include_dirs), *sources,
               "-o", str(tmp / lib.name), "-lm"]
    run_tool(command, f"host gcc build of '{name}'", cwd=tmp)
    if build.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(build)
    return lib
