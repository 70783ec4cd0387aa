"""``tvm_tiny.build``: the whole data path of DESIGN.md §1 in order.

frontend → partition (MHSA → ``Codegen="tvm_tiny"``) → our code generator (``RunCodegen``) →
TVM lowering of the rest → TIR → C → AOT entry point → :class:`TinyModule`.

The model is compiled once. The layer-wise comparison (the same model with every MHSA left to
TVM) is a second compile, made only when asked for (``compare=True``, ``tvm-tiny report``, the
benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax

from tvm_tiny.codegen.variant import CONFIG_HEADER, config_header
from tvm_tiny.firmware.model import profiled_sources
from tvm_tiny.frontend.importer import ModelLike, to_relax
from tvm_tiny.ir.cformat import c_identifier
from tvm_tiny.ir.enums import StepKind
from tvm_tiny.ir.kernel_config import KernelChoice, KernelVariant
from tvm_tiny.ir.provenance import UNKNOWN, Provenance, build_call, initializer_names, model_sha256
from tvm_tiny.ir.version import __version__
from tvm_tiny.lower.aot import AotResult, ExternKernel, emit_aot
from tvm_tiny.lower.memory import DEFAULT_ALIGNMENT
from tvm_tiny.lower.relax_to_c import build_tir_to_c, fuse_and_plan
from tvm_tiny.module import TinyModule, metadata_json
from tvm_tiny.offload import OffloadResult, conv_s8_params_bytes, offload
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


@dataclass
class CompiledGraph:
    """One Relax module carried through offload, TVM lowering and the AOT plan."""

    aot: AotResult
    tir_c_source: str
    offload: OffloadResult | None = None
    # What the AOT was emitted from, so that it can be emitted again with a fixed arena size
    # without compiling the model again: (lowered main, TIR symbols, TIR workspace bytes).
    aot_inputs: tuple[relax.Function, dict[str, str], dict[str, int]] | None = None

    def with_arena(self, arena_bytes: int, name: str, provenance: Provenance) -> CompiledGraph:
        """The same compilation with the arena fixed at ``arena_bytes`` (the AOT refuses a size
        below the plan, naming the bytes short)."""
        assert self.aot_inputs is not None
        main, symbols, workspace = self.aot_inputs
        aot = emit_aot(main, name, self.externs, symbols, workspace, alignment=DEFAULT_ALIGNMENT,
                       arena_limit=arena_bytes, provenance=provenance)
        return CompiledGraph(aot, self.tir_c_source, self.offload, self.aot_inputs)

    @property
    def externs(self) -> dict[str, ExternKernel]:
        return self.offload.externs if self.offload else {}

    @property
    def params_bytes(self) -> int:
        """Every constant byte of the model: TIR constants plus the offloaded kernels' weights."""
        if self.offload is None:
            return self.aot.params_bytes
        return (self.aot.params_bytes + sum(e["params_bytes"] for e in self.offload.mhsa)
                + sum(e["params_bytes"] for e in self.offload.sparse_linear)
                + sum(e["params_bytes"] for e in self.offload.linear_s8)
                + conv_s8_params_bytes(self.offload.conv_s8))


def _lower(mod: tvm.IRModule, name: str, profile: Board, externs: dict[str, ExternKernel],
           provenance: Provenance = UNKNOWN, inline: bool = False) -> CompiledGraph:
    """TVM lowering of what is left, TIR to C, and the AOT plan with the arena the plan needs
    (``CompiledGraph.with_arena`` fixes another size); no offload result yet.
    ``inline``: tvm_tiny's own lowering (lower/inline.py); TVM alone runs without it."""
    lowered = fuse_and_plan(mod, inline_single_use=inline)
    tir = build_tir_to_c(lowered, profile.tvm_target(), f"tvmtiny_{name}", provenance)
    aot = emit_aot(tir.module["main"], name, externs, tir.tir_symbols, tir.workspace_bytes,
                   alignment=DEFAULT_ALIGNMENT, provenance=provenance)
    return CompiledGraph(aot, tir.tir_c_source, None,
                         (tir.module["main"], tir.tir_symbols, tir.workspace_bytes))


def _compile(mod: tvm.IRModule, name: str, profile: Board, offload_mhsa: bool,
             tuning_log: str | None = None,
             sparse: bool = True, provenance: Provenance = UNKNOWN, integer: bool = False,
             int8_io: bool = False, scratch_limit: int | None = None) -> CompiledGraph:
    """Partition (optionally), integerize, generate, lower and plan one Relax module."""
    result = offload(mod, name, profile, tuning_log, sparse, provenance, integer=integer,
                     int8_io=int8_io, scratch_limit=scratch_limit) if offload_mhsa else None
    lowered = _lower(result.module if result else mod, name, profile,
                     result.externs if result else {}, provenance, inline=result is not None)
    lowered.offload = result
    return lowered


MAX_BUDGET_RETRIES = 4
"""How many times ``build`` gives up a faster MHSA config for one with less scratch."""


def _needs(compiled: CompiledGraph, profile: Board) -> list[Any]:
    aot = compiled.aot
    return memory_needs(profile, arena_bytes=aot.arena_bytes, params_bytes=compiled.params_bytes,
                        io_bytes=sum(t.nbytes for t in aot.inputs + aot.outputs))


def _bytes_over(compiled: CompiledGraph, profile: Board, arena_bytes: int | None) -> int:
    """How many bytes the arena must shrink for the model to fit: the requested
    ``arena_bytes``, and the board memory that holds the arena (0 when both fit)."""
    over = 0 if arena_bytes is None else compiled.aot.arena_bytes - arena_bytes
    for need in _needs(compiled, profile):
        if any(what == "arena" for what, _ in need.parts):
            over = max(over, need.total - need.size)
    return max(over, 0)


def _mhsa_scratch(compiled: CompiledGraph) -> int | None:
    """The largest scratch of an offloaded MHSA, or None."""
    sizes = [int(e["scratch_bytes"]) for e in (compiled.offload.mhsa if compiled.offload else [])]
    return max(sizes) if sizes else None


def _compile_within_budget(mod: tvm.IRModule, name: str, profile: Board, offload_mhsa: bool,
                           arena_bytes: int | None, tuning_log: str | None, sparse: bool,
                           provenance: Provenance, integer: bool, int8_io: bool
                           ) -> tuple[CompiledGraph, int | None]:
    """``_compile``, and when the arena is too large for ``arena_bytes`` or the board, again
    with MHSA configs of less scratch: the best tuning records within it (AutoTVM's
    apply-best, within the memory budget), and the default with fewer query rows per block for
    an untuned MHSA: (compiled, the scratch limit applied or None). What still does not fit is
    refused by the caller."""
    compiled = _compile(mod, name, profile, offload_mhsa, tuning_log, sparse, provenance,
                        integer, int8_io)
    limit = None
    for _ in range(MAX_BUDGET_RETRIES):
        over, largest = _bytes_over(compiled, profile, arena_bytes), _mhsa_scratch(compiled)
        if over == 0 or largest is None:
            break
        limit = largest - over
        smaller = _compile(mod, name, profile, offload_mhsa, tuning_log, sparse, provenance,
                           integer, int8_io, scratch_limit=limit)
        if _mhsa_scratch(smaller) == largest:
            break  # nothing with less scratch to apply
        compiled = smaller
    if arena_bytes is not None:  # the arena at exactly the size asked for (or its refusal)
        compiled = compiled.with_arena(arena_bytes, name, provenance)
    return compiled, limit


def layerwise_peak_bytes(composite: relax.Function, model: str, profile: Board) -> int:
    """Peak working memory of one MHSA compiled layer-wise by TVM alone (same AOT planner).

    The offloaded composite is compiled as a model of its own, so the figure is measured the same
    way as ours: arena (planned intermediates + TIR workspace) plus the input and output tensors.
    """
    aot = _lower(tvm.IRModule({"main": composite}), f"{model}_layerwise", profile, {}).aot
    io_bytes = sum(t.nbytes for t in aot.inputs) + sum(t.nbytes for t in aot.outputs)
    return aot.arena_bytes + io_bytes


_BUILD_DEFAULTS = {"target": "host", "offload": True, "tuning_log": None, "arena_bytes": None,
                   "name": None, "sparse": True, "integer": True, "int8_io": False}
"""The defaults of :func:`build`'s arguments that shape the C: the provenance header names only
those set apart from them (``compare`` changes ``metadata.json`` alone, so the C omits it)."""


def build(model: ModelLike, target: str = "host", offload: bool = True,
          tuning_log: str | None = None, *, arena_bytes: int | None = None,
          name: str | None = None, sparse: bool = True, compare: bool = False,
          integer: bool = True, int8_io: bool = False) -> TinyModule:
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
        board default; ``metadata["offloaded"][i]["kernel"]["source"]`` says which. When the
        arena would be too large for ``arena_bytes`` or the board, the best records with less
        scratch apply instead, and untuned MHSAs take fewer query rows per block
        (``metadata["tuning_scratch_limit"]``).
    arena_bytes
        Fix the arena size. A size below what the plan needs is refused with the bytes missing.
    name
        C identifier prefix of the model (default: derived from the model).
    sparse
        Store pruned weights row-compressed wherever that is smaller: MHSA projections inside
        the offloaded kernels (a tuning record's ``sparse`` knob may keep an MHSA dense), and
        linear layers outside attention (offloaded as ``tvm_tiny.linear``). ``False`` keeps
        every weight dense and the linear layers with TVM: the dense baseline.
    compare
        Also plan the model layer-wise (every MHSA left to TVM) and each MHSA on its own, for
        ``metadata["layerwise_arena_bytes"]``, ``["layerwise_arena_usage_by_step"]``,
        ``["layerwise_memory_plan"]`` and each
        offloaded entry's ``layerwise_peak_bytes``. Off by default: it compiles the model again
        (about twice the build time); without it those keys are ``None``.
    integer
        For int8 (QDQ) models: compute the rest of the graph in integers too
        (``integerize.IntegerizeQDQ``: int8 tensors between layers, lookup tables, integer
        LayerNorm, fixed-point requantization), beside the offloaded int8 MHSA and linear
        kernels. A region no rule proves integer stays fake-quant and
        ``metadata["not_integerized"]`` says why. ``False`` leaves every non-offloaded op to TVM
        as fake-quant float. Float models are unaffected by it.
    int8_io
        With ``integer``: the entry point takes and returns int8 (the graph's first quantize
        and last dequantize are left to the caller; their scales and zero points are in
        ``metadata["inputs"]`` and ``["outputs"]``), as TFLite Micro's int8 models do.
    """
    given = {"target": target, "offload": offload, "tuning_log": tuning_log,
             "arena_bytes": arena_bytes, "name": name, "sparse": sparse, "integer": integer,
             "int8_io": int8_io}
    profile = get_board(target)
    tuning_log = None if tuning_log is None else str(tuning_log)
    mod, model_name = to_relax(model)
    provenance = Provenance(
        __version__, tvm.__version__, model_sha256(model), profile.name,
        build_call("tvm_tiny.build", model,
                   **{k: v for k, v in given.items() if v != _BUILD_DEFAULTS[k]}),
        initializer_names(model))
    name = c_identifier(name or model_name)
    relax_text = mod.script()
    compiled, scratch_limit = _compile_within_budget(mod, name, profile, offload, arena_bytes,
                                                     tuning_log, sparse, provenance, integer,
                                                     int8_io)
    aot = compiled.aot
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
    result = compiled.offload
    files.update(runtime_files(result.library_sources if result else []))
    files.update(_variant_header(result.f32_choices if result else {}))
    metadata = _metadata(compiled, profile, name, provenance.model_sha256)
    # A tuned MHSA config passed over for one of less scratch, so that the model fits.
    metadata["tuning_scratch_limit"] = scratch_limit
    needs = _needs(compiled, profile)
    metadata["memory_needs"] = [
        {"memory": n.memory, "bytes": n.total, "size": n.size, "parts": dict(n.parts)}
        for n in needs]
    check_fit(profile, name, needs)
    if compare:
        _add_layerwise(metadata, compiled, mod, name, profile)
    files["metadata.json"] = metadata_json(metadata)
    return TinyModule(name, prefix, profile.name, files, aot.inputs, aot.outputs, metadata,
                      profiled_sources(prefix, result.library_sources if result else []))


def _add_layerwise(metadata: dict[str, Any], compiled: CompiledGraph, mod: tvm.IRModule,
                   name: str, profile: Board) -> None:
    """The layer-wise figures of ``compare=True``: the whole model and each MHSA alone."""
    layerwise = _compile(mod, name, profile, False).aot if compiled.externs else compiled.aot
    metadata["layerwise_arena_bytes"] = layerwise.arena_bytes
    metadata["layerwise_arena_usage_by_step"] = layerwise.usage_by_step
    metadata["layerwise_memory_plan"] = layerwise.buffers
    if compiled.offload is not None:
        for entry in metadata["offloaded"]:
            composite = compiled.offload.composites[entry["name"]]
            entry["layerwise_peak_bytes"] = layerwise_peak_bytes(composite, name, profile)


def _variant_header(f32_choices: dict[str, KernelChoice]) -> dict[str, str]:
    """``runtime/include/tt_mhsa_f32_config.h`` when the tuned kernel variant is not the
    default (every MHSA of a firmware shares the one ``tt_mhsa_f32``; see tuning/apply.py)."""
    variants = {c.variant for c in f32_choices.values()}
    if not variants or variants == {KernelVariant()}:
        return {}
    (variant,) = variants
    origin = ", ".join(sorted({str(c.origin) for c in f32_choices.values()}))
    return {f"runtime/include/{CONFIG_HEADER}": config_header(variant, origin)}


def _io_entries(tensors: list[Any], qparams: list[Any]) -> list[dict[str, Any]]:
    """``metadata["inputs"]`` / ``["outputs"]``: name, shape, dtype, and the scale and zero
    point of an int8 tensor of ``build(..., int8_io=True)``."""
    entries = []
    for i, t in enumerate(tensors):
        entry: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
        qp = qparams[i] if i < len(qparams) else None
        if qp is not None:
            entry.update(scale=float(qp.scale), zero_point=int(qp.zero_point))
        entries.append(entry)
    return entries


def _metadata(compiled: CompiledGraph, profile: Board, name: str,
              model_hash: str) -> dict[str, Any]:
    aot, result = compiled.aot, compiled.offload
    offloaded = [] if result is None else result.mhsa
    for entry in offloaded:
        entry.setdefault("layerwise_peak_bytes", None)
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
        "inputs": _io_entries(aot.inputs, result.io.inputs if result and result.io else []),
        "outputs": _io_entries(aot.outputs,
                               result.io.outputs if result and result.io else []),
        "offloaded": offloaded,
        "not_offloaded": [] if result is None else result.rejected,
        "not_integerized": [] if result is None else result.not_integerized,
        "sparse_linear": [] if result is None else result.sparse_linear,
        "linear_s8": [] if result is None else result.linear_s8,
        "conv_s8": [] if result is None else result.conv_s8,
        "layerwise_arena_bytes": None,
        "layerwise_arena_usage_by_step": None,
        "layerwise_memory_plan": None,
        "steps": [{"name": s.name, "kind": s.kind} for s in aot.steps],
        "tvm_functions": [
            {"name": s.name, "workspace_bytes": s.scratch_bytes}
            for s in aot.steps if s.kind == StepKind.TIR
        ],
        "memory_plan": aot.buffers,
        "arena_usage_by_step": aot.usage_by_step,
        "params_by_layer": params_by_layer(compiled),
    }


def params_by_layer(compiled: CompiledGraph) -> list[dict[str, Any]]:
    """Where ``params_bytes`` goes, a row per layer in call order: each offloaded kernel's own
    arrays (weights, biases, requantization tables), a weight array that several convolutions
    share once (a Neural-ODE block's steps), and the constants of each TVM function (a constant
    shared by functions counts with the first). The bytes add up to ``params_bytes``."""
    result = compiled.offload
    kernels: dict[str, tuple[str, int]] = {}
    if result is not None:
        for kind, entries in (("mhsa", result.mhsa), ("linear_s8", result.linear_s8),
                              ("conv_s8", result.conv_s8),
                              ("sparse_linear", result.sparse_linear)):
            for entry in entries:
                kernels[entry["name"]] = (kind, int(entry["params_bytes"]))
    rows: list[dict[str, Any]] = []
    shared_seen: set[str] = set()
    tir_bytes = {id(step): n for step, n in compiled.aot.constants_by_step()}
    for step in compiled.aot.steps:
        if step.name in kernels:
            kind, n = kernels.pop(step.name)
            rows.append({"layer": step.name, "kind": kind, "bytes": n})
        elif id(step) in tir_bytes:  # one PrimFunc may serve several steps (two GELU tables)
            rows.append({"layer": step.name, "kind": "tvm", "bytes": tir_bytes[id(step)]})
    for entry in [] if result is None else result.conv_s8:
        shared = entry["shared_weights"]
        if shared["symbol"] not in shared_seen:
            shared_seen.add(shared["symbol"])
            rows.append({"layer": shared["symbol"], "kind": "conv_s8 shared weights",
                         "bytes": int(shared["bytes"])})
    return rows
