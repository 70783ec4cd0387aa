"""``tvm_tiny.build``: the whole data path of DESIGN.md §1 in order.

frontend → partition (MHSA → ``Codegen="tvm_tiny"``) → our code generator (``RunCodegen``) →
TVM lowering of the rest → TIR → C → AOT entry point → :class:`TinyModule`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import tvm

from tvm_tiny import __version__
from tvm_tiny.frontend.importer import ModelLike, to_relax
from tvm_tiny.lower.aot import AotResult, ExternKernel, emit_aot
from tvm_tiny.lower.memory import DEFAULT_ALIGNMENT
from tvm_tiny.lower.relax_to_c import build_tir_to_c, fuse_and_plan
from tvm_tiny.module import TinyModule, metadata_json
from tvm_tiny.targets.boards import Board, check_fit, get_board, memory_needs
from tvm_tiny.targets.resources import TVM_HEADERS, kernels_dir, runtime_dir, tvm_header_dirs


def _read_tree(root: Any, prefix: str, patterns: tuple[str, ...]) -> dict[str, str]:
    files = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_file():
                files[f"{prefix}/{path.relative_to(root).as_posix()}"] = path.read_text()
    return files


def runtime_files(kernel_sources: list[str]) -> dict[str, str]:
    """The runtime tree of a model: tvm_tiny runtime, kernel library, TVM/DLPack headers.

    TVM's headers are copied from the installed wheels (never committed to our repository).
    """
    files = _read_tree(runtime_dir(), "runtime", ("include/**/*.h", "src/**/*.c"))
    files.update(_read_tree(kernels_dir() / "include", "runtime/include", ("*.h",)))
    for rel in kernel_sources:
        files[f"runtime/src/{rel}"] = (kernels_dir() / rel).read_text()
    for header in TVM_HEADERS:
        for root in tvm_header_dirs():
            candidate = root / header
            if candidate.is_file():
                files[f"runtime/include/{header}"] = candidate.read_text()
                break
        else:
            raise FileNotFoundError(f"TVM header {header} not found in {tvm_header_dirs()}")
    return files


def _model_hash(mod: tvm.IRModule) -> str:
    return hashlib.sha256(mod.script(show_meta=True).encode()).hexdigest()[:16]


@dataclass
class CompiledGraph:
    """One Relax module carried through offload, TVM lowering and the AOT plan."""

    aot: AotResult
    tir_c_source: str
    offloaded: list[dict[str, Any]] = field(default_factory=list)
    externs: dict[str, ExternKernel] = field(default_factory=dict)
    kernel_sources: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    sparse_linear: list[dict[str, Any]] = field(default_factory=list)

    @property
    def params_bytes(self) -> int:
        """Every constant byte of the model: TIR constants plus the offloaded kernels' weights."""
        return (self.aot.params_bytes + sum(e["params_bytes"] for e in self.offloaded)
                + sum(e["params_bytes"] for e in self.sparse_linear))


def _compile(mod: tvm.IRModule, name: str, profile: Board, offload: bool,
             arena_limit: int | None, tuning_log: str | None = None,
             sparse: bool = True) -> CompiledGraph:
    """Partition (optionally), generate, lower and plan one Relax module."""
    offloaded: list[dict[str, Any]] = []
    externs: dict[str, ExternKernel] = {}
    kernel_sources: list[str] = []
    rejected: list[str] = []
    sparse_linear: list[dict[str, Any]] = []
    if offload:
        from tvm_tiny.offload import offload_mhsa

        mod, offloaded, externs, kernel_sources, rejected, sparse_linear = offload_mhsa(
            mod, name, profile, tuning_log, sparse)
    lowered = fuse_and_plan(mod)
    prefix = f"tvmtiny_{name}"
    tir = build_tir_to_c(lowered, profile.tvm_target(), prefix)
    aot = emit_aot(tir.module["main"], name, externs, tir.tir_symbols, tir.tir_c_source,
                   alignment=DEFAULT_ALIGNMENT, arena_limit=arena_limit)
    return CompiledGraph(aot, tir.tir_c_source, offloaded, externs, kernel_sources, rejected,
                         sparse_linear)


def build(model: ModelLike, target: str = "host", offload: bool = True,
          tuning_log: str | None = None, *, arena_bytes: int | None = None,
          name: str | None = None, sparse: bool = True) -> TinyModule:
    """Compile ``model`` into a self-contained C program for ``target``.

    Parameters
    ----------
    model
        An ``onnx.ModelProto``, a path to an ``.onnx`` file, or a Relax ``IRModule`` with static
        shapes (weights as constants).
    target
        A board profile name (``tvm_tiny.boards()``). Its TVM ``c`` target attributes (mcpu,
        march) go to TVM's code generator, and a model whose parameters, arena, I/O buffers or
        stack cannot fit the board's memories is refused with :class:`MemoryPlanError` naming
        the memory and the bytes (the linker script enforces the same sizes, code included).
    offload
        Offload every matched MHSA to tvm_tiny's kernels. ``False`` compiles the same model with
        TVM alone through the same AOT path: the baseline of every comparison.
    tuning_log
        A tuning log (``tvm_tiny.tune``): each MHSA gets the best valid record for its
        (board, workload), else the shipped ``tuning_logs/<board>.jsonl`` applies, else the
        board default; ``metadata["offloaded"][i]["kernel"]["source"]`` says which.
    arena_bytes
        Fix the arena size. A size below what the plan needs is refused with the bytes missing.
    name
        C identifier prefix of the model (default: derived from the model).
    sparse
        Store pruned weights row-compressed wherever that is smaller: MHSA projections inside
        the offloaded kernels (a tuning record's ``sparse`` knob may keep an MHSA dense), and
        linear layers outside attention (offloaded as ``tvm_tiny.linear``). ``False`` keeps
        every weight dense and the linear layers with TVM: the dense baseline.
    """
    from tvm_tiny.ir.cformat import c_identifier

    profile = get_board(target)
    tuning_log = None if tuning_log is None else str(tuning_log)
    mod, model_name = to_relax(model)
    name = c_identifier(name or model_name)
    relax_text = mod.script()
    compiled = _compile(mod, name, profile, offload, arena_bytes, tuning_log, sparse)
    aot, offloaded = compiled.aot, compiled.offloaded
    prefix = f"tvmtiny_{name}"
    files: dict[str, str] = {
        f"codegen/host/src/{prefix}.c": aot.model_c,
        f"codegen/host/include/{prefix}.h": aot.model_h,
        "src/relax.txt": relax_text,
    }
    if compiled.tir_c_source:
        files[f"codegen/host/src/{prefix}_tir.c"] = compiled.tir_c_source
    for kernel in compiled.externs.values():
        files[f"codegen/host/src/{prefix}_{kernel.symbol}.c"] = kernel.source
    files.update(runtime_files(compiled.kernel_sources))
    files.update(_variant_header(offloaded))
    metadata = _metadata(compiled, profile, name, _model_hash(mod))
    needs = memory_needs(
        profile, arena_bytes=aot.arena_bytes, params_bytes=compiled.params_bytes,
        io_bytes=sum(t.nbytes for t in aot.inputs + aot.outputs))
    metadata["memory_needs"] = [
        {"memory": n.memory, "bytes": n.total, "size": n.size, "parts": dict(n.parts)}
        for n in needs]
    check_fit(profile, name, needs)
    # The same model with every MHSA left to TVM (layer-wise), planned by the same AOT planner.
    layerwise = _compile(mod, name, profile, False, None).aot if compiled.externs else aot
    metadata["layerwise_arena_bytes"] = layerwise.arena_bytes
    metadata["layerwise_arena_usage_by_step"] = layerwise.usage_by_step
    files["metadata.json"] = metadata_json(metadata)
    return TinyModule(name, prefix, profile.name, files, aot.inputs, aot.outputs, metadata)


def _variant_header(offloaded: list[dict[str, Any]]) -> dict[str, str]:
    """``runtime/include/tt_mhsa_f32_config.h`` when the tuned kernel variant is not the
    default (every MHSA of a firmware shares the one ``tt_mhsa_f32``; see tuning/apply.py)."""
    from tvm_tiny.tuning.variant import CONFIG_HEADER, KernelVariant

    kernels = [e["kernel"] for e in offloaded if e["dtype"] == "float32" and "tile" in e["kernel"]]
    variants = {KernelVariant(k["tile"], bool(k["fma"])) for k in kernels}
    if not variants or variants == {KernelVariant()}:
        return {}
    (variant,) = variants
    origin = ", ".join(sorted({k["source"] for k in kernels}))
    return {f"runtime/include/{CONFIG_HEADER}": variant.config_header(origin)}


def _metadata(compiled: CompiledGraph, profile: Board, name: str,
              model_hash: str) -> dict[str, Any]:
    aot = compiled.aot
    return {
        "tvm_tiny_version": __version__,
        "tvm_version": tvm.__version__,
        "model": name,
        "model_hash": model_hash,
        "target": profile.name,
        "entry_point": f"tvmtiny_{name}_run",
        "arena_bytes": aot.arena_bytes,
        "arena_bytes_without_reuse": aot.linear_arena_bytes,
        "params_bytes": compiled.params_bytes,
        "tvm_params_bytes": aot.params_bytes,
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in aot.inputs],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
                    for t in aot.outputs],
        "offloaded": compiled.offloaded,
        "not_offloaded": compiled.rejected,
        "sparse_linear": compiled.sparse_linear,
        "steps": [{"name": s.name, "kind": s.kind} for s in aot.steps],
        "tvm_functions": [
            {"name": s.name, "workspace_bytes": s.scratch_bytes}
            for s in aot.steps if s.kind == "tir"
        ],
        "memory_plan": aot.buffers,
        "arena_usage_by_step": aot.usage_by_step,
    }
