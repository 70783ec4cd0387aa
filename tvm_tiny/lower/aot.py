"""AOT emitter: the lowered Relax ``main`` → one static, heap-free C entry point.

TVM 0.27 has no AOT executor for C. After ``default_build_pipeline`` (StaticPlanBlockMemory,
VMShapeLower) ``main`` is a flat list of bindings: ``vm.alloc_storage`` (static size),
``vm.alloc_tensor`` (a view into a storage), calls of PrimFuncs (destination-passing),
``call_packed`` of our offloaded kernels, ``vm.builtin.reshape`` views and ``kill_object``. This
module turns it into

* one arena: every storage token and every kernel's scratch/workspace is a buffer whose lifetime
  is the steps that use it; the greedy planner packs them (``memory.py``);
* constants as aligned ``static const`` arrays;
* ``int32_t tvmtiny_<model>_run(inputs, outputs)`` calling the kernels in order, in the spirit of
  microTVM's ``tvmgen_default_run``, plus ``..._run_with_arena`` for a caller-owned arena;
* around every kernel call ``TT_STEP_BEGIN(i)``/``TT_STEP_END(i)`` (``tvm_tiny/tt_profile.h``):
  nothing unless the firmware is built with ``TT_PROFILE_STEPS``, then calls of the marker
  functions the emulator's instruction counter watches (one window per step);
* for a board engineer: the provenance header (``ir/provenance.py``), the arena plan as a table
  with one ``<PREFIX>_BUF<k>_OFFSET``/``_BYTES`` macro pair per buffer (the code uses the macros,
  never bare offsets), each constant's ONNX initializer name where it is recoverable, and
  clang-format's layout (``ir/cformat.py``);
* the model's runtime state in one static ``tt_context`` of its own (TIR workspace, last error)
  and the TVM backend functions its TIR source calls, renamed to ``<prefix>_TVMBackend...``, so
  any number of models link into one firmware without sharing mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvm_tiny.ir.cformat import (
    COLUMN_LIMIT,
    c_comment,
    c_declaration,
    c_identifier,
    c_type,
    const_array,
    dl_type,
    format_call,
    format_signature,
)
from tvm_tiny.ir.enums import StepKind, TensorKind
from tvm_tiny.ir.errors import LoweringError, MemoryPlanError
from tvm_tiny.ir.provenance import UNKNOWN, Provenance, c_block_comment
from tvm_tiny.ir.relax_compat import constant_value, is_constant, shape_expr_values, static_shape
from tvm_tiny.lower.memory import DEFAULT_ALIGNMENT, PlannerKind, make_planner

MAX_PACKED_ARGS = 32  # mirrors TT_MAX_PACKED_ARGS in runtime_c/include/tvm_tiny/tt_runtime.h
# Generated offsets, scratch sizes and kernel arguments are 32-bit (as are MCU address spaces).
MAX_BYTES = 2**31 - 1
_SKIPPED_BUILTINS = ("vm.builtin.check_tensor_info", "vm.builtin.match_shape")


def tensor_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class ExternKernel:
    """An offloaded kernel as the AOT needs it: its C function and its scratch need in bytes."""

    symbol: str
    c_function: str
    scratch_bytes: int
    source: str


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor's bytes live: a model input/output, an arena storage or a constant."""

    kind: TensorKind
    index: int
    byte_offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.dtype)


@dataclass
class Step:
    """One kernel call of the entry point."""

    kind: StepKind
    name: str
    c_function: str
    args: list[TensorRef]
    scratch_bytes: int = 0
    scratch_buffer: int = -1  # planner buffer index of the scratch/workspace


@dataclass
class TensorSpec:
    """A model input or output as the C API exposes it."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.dtype)


@dataclass
class AotResult:
    """Generated sources and the facts about them the build reports."""

    model_c: str
    model_h: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    arena_bytes: int
    linear_arena_bytes: int
    params_bytes: int
    steps: list[Step]
    buffers: list[dict[str, object]] = field(default_factory=list)
    usage_by_step: list[int] = field(default_factory=list)
    constant_bytes: list[int] = field(default_factory=list)  # per constant index (TensorRef)

    def constants_by_step(self) -> list[tuple[Step, int]]:
        """(step, bytes of the constants it is the first to read), for the TIR steps that read
        any: the per-layer view of ``params_bytes`` (a constant shared by layers counts once,
        with the first)."""
        seen: set[int] = set()
        found = []
        for step in self.steps:
            own = {a.index for a in step.args if a.kind == TensorKind.CONST} - seen
            seen |= own
            if own:
                found.append((step, sum(self.constant_bytes[i] for i in own)))
        return found


class _MainWalker:
    """Collect steps, storages, tensor locations and constants from the lowered main."""

    def __init__(self, func: relax.Function, externs: dict[str, ExternKernel],
                 tir_symbols: dict[str, str], workspace: dict[str, int]) -> None:
        self.externs = externs
        self.tir_symbols = tir_symbols
        self.workspace = workspace
        self.storage_sizes: list[int] = []
        self.storage_of: dict[relax.Var, int] = {}
        self.tensors: dict[relax.Var, TensorRef] = {}
        self.constants: list[tuple[relax.Expr, np.ndarray]] = []
        self._const_by_value: dict[tuple[str, tuple[int, ...], bytes], int] = {}
        self.steps: list[Step] = []
        self.tuples: dict[relax.Var, list[relax.Expr]] = {}
        self.inputs: list[TensorSpec] = []
        for i, param in enumerate(func.params):
            shape = static_shape(param)
            if shape is None:
                raise LoweringError(f"main parameter '{param.name}' has no static shape")
            dtype = str(param.ty.dtype)
            self.inputs.append(TensorSpec(c_identifier(param.name), shape, dtype))
            self.tensors[param] = TensorRef(TensorKind.INPUT, i, 0, shape, dtype)
        body = func.body
        for block in body.blocks:
            for binding in block.bindings:
                self._visit(binding.var, binding.value)
        self.result = body.body
        if isinstance(self.result, relax.Var) and self.result in self.tuples:
            self.result = relax.Tuple(self.tuples[self.result])

    def _const_ref(self, expr: relax.Expr) -> TensorRef:
        """The constant's index, shared by every use of the same constant object, and by every
        constant with the same dtype, shape and bytes: weights a model shares between layers
        (a Neural-ODE backbone reuses one set per step) come out of the passes as separate
        objects, and are stored once."""
        index = next((k for k, (c, _) in enumerate(self.constants) if c.same_as(expr)), None)
        if index is None:
            value = constant_value(expr)
            key = (str(value.dtype), tuple(value.shape), value.tobytes())
            index = self._const_by_value.get(key)
            if index is None:
                self.constants.append((expr, value))
                index = len(self.constants) - 1
                self._const_by_value[key] = index
        i = index
        value = self.constants[i][1]
        return TensorRef(TensorKind.CONST, i, 0, tuple(value.shape), str(value.dtype))

    def _tensor_arg(self, arg: relax.Expr, where: str) -> TensorRef:
        if is_constant(arg):
            return self._const_ref(arg)
        if isinstance(arg, relax.Var) and arg in self.tensors:
            return self.tensors[arg]
        raise LoweringError(f"{where}: argument {arg} is not a tensor the AOT emitter tracks")

    def _visit(self, var: relax.Var, value: relax.Expr) -> None:
        if not isinstance(value, relax.Call):
            if isinstance(value, relax.Var) and value in self.tensors:
                self.tensors[var] = self.tensors[value]
                return
            if is_constant(value):
                self.tensors[var] = self._const_ref(value)
                return
            if isinstance(value, relax.Tuple):
                self.tuples[var] = list(value.fields)
                return
            raise LoweringError(f"unsupported binding in lowered main: {var} = {value}")
        op = value.op
        if isinstance(op, tvm.ir.Op):
            self._visit_op(var, op.name, value)
        elif isinstance(op, relax.ExternFunc):
            self._visit_packed(var, str(op.global_symbol), value)
        elif isinstance(op, tvm.ir.GlobalVar):
            name = op.name_hint
            if name not in self.tir_symbols:
                raise LoweringError(f"main calls '{name}', which is not a compiled PrimFunc")
            args = [self._tensor_arg(a, f"call of {name}") for a in value.args]
            self.steps.append(Step(StepKind.TIR, name, f"__tvm_ffi_{self.tir_symbols[name]}", args,
                                   self.workspace.get(name, 0)))
        else:
            raise LoweringError(f"unsupported callee in lowered main: {op}")

    def _visit_op(self, var: relax.Var, name: str, call: relax.Call) -> None:
        if name == "relax.vm.alloc_storage":
            (size,) = shape_expr_values(call.args[0])
            self.storage_of[var] = len(self.storage_sizes)
            self.storage_sizes.append(size)
        elif name == "relax.vm.alloc_tensor":
            storage = self.storage_of[call.args[0]]
            offset = int(call.args[1].value)
            shape = shape_expr_values(call.args[2])
            dtype = str(call.args[3].value)
            if offset == 0:
                # Relax's StaticPlanBlockMemory hands one storage token to every tensor of its
                # size in turn, so a token lives from its first tensor to its last: planned as
                # one buffer it would stay allocated across every kernel in between (int8
                # EEGFormer: two 10 KB tokens alive beside each MHSA's scratch). Each tensor
                # becomes a storage of its own, planned on its own lifetime.
                storage = len(self.storage_sizes)
                self.storage_sizes.append(tensor_bytes(shape, dtype))
            self.tensors[var] = TensorRef(TensorKind.STORAGE, storage, offset, shape, dtype)
        elif name in ("relax.vm.kill_object", "relax.null_value"):
            return
        elif name == "relax.call_packed":
            raise LoweringError("unexpected relax.call_packed op form in lowered main")
        else:
            raise LoweringError(f"operator '{name}' survived lowering; the AOT cannot emit it")

    def _visit_packed(self, var: relax.Var, symbol: str, call: relax.Call) -> None:
        if symbol in _SKIPPED_BUILTINS:
            return  # shapes are static and checked by the caller of the entry point
        if symbol == "vm.builtin.reshape":
            src = self._tensor_arg(call.args[0], "reshape")
            shape = static_shape(var) or shape_expr_values(call.args[1])
            self.tensors[var] = TensorRef(src.kind, src.index, src.byte_offset, shape, src.dtype)
            return
        if symbol in self.externs:
            kernel = self.externs[symbol]
            args = [self._tensor_arg(a, f"call of {symbol}") for a in call.args]
            self.steps.append(Step(StepKind.EXTERN, symbol, kernel.c_function, args,
                                   kernel.scratch_bytes))
            return
        raise LoweringError(f"packed function '{symbol}' has no implementation in tvm_tiny")


def _status_text(kind: str) -> str:
    """How the error message of a failed step names its kernel."""
    return "TIR kernel" if kind == StepKind.TIR else "offloaded kernel"


def _result_vars(result: relax.Expr) -> list[relax.Expr]:
    if isinstance(result, relax.Tuple):
        return list(result.fields)
    return [result]


class AotEmitter:
    """Plan and print the entry point of one model. Use :func:`emit_aot`."""

    def __init__(self, model: str, walker: _MainWalker, alignment: int,
                 provenance: Provenance = UNKNOWN) -> None:
        self.model = model
        self.prefix = f"tvmtiny_{model}"
        self.upper = self.prefix.upper()
        self.provenance = provenance
        self.w = walker
        self.alignment = alignment
        self.outputs: list[TensorSpec] = []
        self.output_storage: dict[int, int] = {}  # storage index -> output index
        self._bind_outputs()

    def _bind_outputs(self) -> None:
        """Map each returned tensor onto the caller's output buffer when its storage allows it."""
        uses: dict[int, int] = {}
        for ref in self.w.tensors.values():
            if ref.kind == TensorKind.STORAGE:
                uses[ref.index] = uses.get(ref.index, 0) + 1
        for i, expr in enumerate(_result_vars(self.w.result)):
            if not isinstance(expr, relax.Var) or expr not in self.w.tensors:
                raise LoweringError(f"model output {i} ({expr}) is not a computed tensor")
            ref = self.w.tensors[expr]
            name = "output" if len(_result_vars(self.w.result)) == 1 else f"output{i}"
            self.outputs.append(TensorSpec(name, ref.shape, ref.dtype))
            if ref.kind != TensorKind.STORAGE:
                raise LoweringError(
                    f"model output {i} is a model {ref.kind} passed through unchanged; "
                    "tvm_tiny needs every output to be computed by a kernel"
                )
            exclusive = ref.byte_offset == 0 and self.w.storage_sizes[ref.index] == ref.nbytes
            if exclusive and ref.index not in self.output_storage:
                self.output_storage[ref.index] = i

    # -- planning ------------------------------------------------------------------------------
    def plan(self, planner_kind: PlannerKind) -> tuple[list[int], list[int], object]:
        """Lifetimes of storages (steps that touch them) and per-step scratch → offsets."""
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for step_index, step in enumerate(self.w.steps):
            for ref in step.args:
                if ref.kind == TensorKind.STORAGE:
                    first.setdefault(ref.index, step_index)
                    last[ref.index] = step_index
        # Outputs copied out at the end stay alive until then.
        end = len(self.w.steps)
        for i, expr in enumerate(_result_vars(self.w.result)):
            ref = self.w.tensors[expr]
            if ref.index not in self.output_storage or self.output_storage[ref.index] != i:
                first.setdefault(ref.index, end)
                last[ref.index] = end
        planner = make_planner(planner_kind, self.alignment)
        storage_buffer = [-1] * len(self.w.storage_sizes)
        for storage, size in enumerate(self.w.storage_sizes):
            if storage in self.output_storage or storage not in first:
                continue
            storage_buffer[storage] = planner.add_buffer(
                f"storage{storage}", size, first[storage], last[storage]
            )
        scratch_buffer = []
        for step_index, step in enumerate(self.w.steps):
            if step.scratch_bytes > 0:
                label = "scratch" if step.kind == StepKind.EXTERN else "workspace"
                scratch_buffer.append(planner.add_buffer(
                    f"{step.name}.{label}", step.scratch_bytes, step_index, step_index))
            else:
                scratch_buffer.append(-1)
        return storage_buffer, scratch_buffer, planner

    # -- printing ------------------------------------------------------------------------------
    def _offset_macro(self, buffer: int) -> str:
        return f"{self.upper}_BUF{buffer}_OFFSET"

    def _bytes_macro(self, buffer: int) -> str:
        return f"{self.upper}_BUF{buffer}_BYTES"

    def _data_expr(self, ref: TensorRef, storage_buffer: list[int]) -> str:
        if ref.kind == TensorKind.INPUT:
            return f"(void *)(uintptr_t)inputs->{self.w.inputs[ref.index].name}"
        if ref.kind == TensorKind.CONST:
            return f"(void *)(uintptr_t){self.prefix}_const_{ref.index}"
        if ref.index in self.output_storage:
            out = self.outputs[self.output_storage[ref.index]].name
            return f"(void *)((uint8_t *)outputs->{out} + {ref.byte_offset})"
        at = self._offset_macro(storage_buffer[ref.index])
        if ref.byte_offset:
            at += f" + {ref.byte_offset}"
        return f"(void *)(arena + {at})"

    def _check_32bit(self) -> None:
        """Refuse tensors or scratch that 32-bit offsets cannot address, naming them."""
        named = [(f"input '{t.name}'", t) for t in self.w.inputs]
        named += [(f"output '{t.name}'", t) for t in self.outputs]
        for label, t in named:
            if t.nbytes > MAX_BYTES:
                raise MemoryPlanError(
                    f"{label} {t.dtype}{list(t.shape)} is {t.nbytes} bytes; tvm_tiny's generated "
                    f"C uses 32-bit offsets (at most {MAX_BYTES} bytes per buffer)")
        for storage, size in enumerate(self.w.storage_sizes):
            shapes = [list(r.shape) for r in self.w.tensors.values()
                      if r.kind == TensorKind.STORAGE and r.index == storage]
            if size > MAX_BYTES and shapes:  # a token whose tensors all got their own: unused
                raise MemoryPlanError(
                    f"intermediate storage {storage} (tensors {shapes[:2]}) is {size} bytes; "
                    f"tvm_tiny's generated C uses 32-bit offsets (at most {MAX_BYTES} bytes)")
        for step in self.w.steps:
            if step.scratch_bytes > MAX_BYTES:
                raise MemoryPlanError(f"{step.name} needs {step.scratch_bytes} bytes of scratch; "
                                      f"at most {MAX_BYTES} are addressable")

    def emit(self, arena_limit: int | None) -> AotResult:
        self._check_32bit()
        storage_buffer, scratch_buffer, planner = self.plan(PlannerKind.GREEDY)
        offsets = planner.offsets()
        arena_bytes = max(planner.peak(), self.alignment)
        planner.check_no_overlap()
        linear = self.plan(PlannerKind.LINEAR)[2].peak()
        if arena_bytes > MAX_BYTES:
            raise MemoryPlanError(
                f"model '{self.model}' needs an arena of {arena_bytes} bytes; tvm_tiny's "
                f"generated C uses 32-bit offsets (at most {MAX_BYTES} bytes)")
        if arena_limit is not None and arena_limit < arena_bytes:
            raise MemoryPlanError(
                f"model '{self.model}' needs an arena of {arena_bytes} bytes; the requested "
                f"arena of {arena_limit} bytes is {arena_bytes - arena_limit} bytes short"
            )
        if arena_limit is not None:
            arena_bytes = arena_limit
        shapes: dict[tuple[int, ...], str] = {}

        def shape_name(shape: tuple[int, ...]) -> str:
            if shape not in shapes:
                shapes[shape] = f"{self.prefix}_shape_{len(shapes)}"
            return shapes[shape]

        body: list[str] = []
        for i, step in enumerate(self.w.steps):
            body.append(self._emit_step(i, step, storage_buffer, scratch_buffer[i], shape_name))
        body.extend(self._emit_output_copies(storage_buffer))

        consts = []
        params_bytes = 0
        for i, (_, value) in enumerate(self.w.constants):
            params_bytes += value.nbytes
            origin = self.provenance.describe_constant(value)
            consts.append(const_array(f"{self.prefix}_const_{i}", value, self.alignment,
                                      f"constant {i}: {value.dtype}{list(value.shape)}, "
                                      f"{origin}"))
        shape_defs = [
            format_call(f"static const int64_t {name}[{max(len(s), 1)}] = ",
                        [f"INT64_C({d})" for d in s] or ["INT64_C(0)"], open_="{", close="}")
            for s, name in shapes.items()
        ]
        model_c = _MODEL_C.format(
            header=self.provenance.c_comment(
                f"tvm_tiny model '{self.model}': AOT entry point, constants, arena plan and "
                "runtime state.",
                ["Every kernel call below is one step; the arena plan says which bytes of the "
                 "arena each step uses."]),
            prefix=self.prefix, upper=self.upper, decls=self._emit_decls(),
            plan=self._emit_plan(planner, offsets, storage_buffer, arena_bytes),
            data="".join(f"{part}\n" for part in ("\n".join(consts), "\n".join(shape_defs))
                         if part),
            backend=self._emit_backend(), body="\n".join(body), alignment=self.alignment,
            arena_bytes=arena_bytes, io_check=self._emit_io_check(),
            run_with_arena=format_signature(
                f"int32_t {self.prefix}_run_with_arena",
                [f"const struct {self.prefix}_inputs *inputs",
                 f"struct {self.prefix}_outputs *outputs", "uint8_t *arena",
                 "size_t arena_bytes"], " {"),
            run=format_signature(f"int32_t {self.prefix}_run",
                            [f"const struct {self.prefix}_inputs *inputs",
                             f"struct {self.prefix}_outputs *outputs"], " {"),
            run_call=format_call(f"return {self.prefix}_run_with_arena",
                                 ["inputs", "outputs", f"{self.prefix}_arena",
                                  f"sizeof({self.prefix}_arena)"], indent=2),
            arena_decl=c_declaration(
                "static uint8_t",
                f"{self.prefix}_arena[{self.upper}_ARENA_BYTES] TT_ALIGNED({self.alignment});"),
        )
        model_h = self._emit_header(arena_bytes, params_bytes)
        buffers = [
            {"name": b.name, "bytes": b.size, "offset": off, "first_step": b.first_use,
             "last_step": b.last_use}
            for b, off in zip(planner.buffers, offsets)
        ]
        return AotResult(model_c, model_h, self.w.inputs, self.outputs, arena_bytes, linear,
                         params_bytes, self.w.steps, buffers, planner.usage_by_step(),
                         [value.nbytes for _, value in self.w.constants])

    def _emit_decls(self) -> str:
        externs = sorted({s.c_function for s in self.w.steps if s.kind == StepKind.EXTERN})
        tirs = sorted({s.c_function for s in self.w.steps if s.kind == StepKind.TIR})
        decls = [format_signature(f"int32_t {fn}", ["const void *const *args", "void *const *outs",
                                               "uint8_t *scratch", "int32_t scratch_bytes"])
                 for fn in externs]
        decls += [format_signature(f"int32_t {fn}", ["void *self", "void *args", "int32_t num_args",
                                                "void *result"]) for fn in tirs]
        return "\n".join(decls)

    def _holds(self, storage: int) -> str:
        """What a storage holds, for the plan table: its tensors' types (first three)."""
        seen: list[str] = []
        for ref in self.w.tensors.values():
            if ref.kind == TensorKind.STORAGE and ref.index == storage:
                text = f"{ref.dtype}{list(ref.shape)}".replace(" ", "")
                if text not in seen:
                    seen.append(text)
        return ", ".join(seen[:3]) + (", ..." if len(seen) > 3 else "")

    def _emit_plan(self, planner: object, offsets: list[int], storage_buffer: list[int],
                   arena_bytes: int) -> str:
        """The arena plan as a table (as TFLite Micro's PrintMemoryPlan lists it) and the offset
        and size macros the entry point uses."""
        holds = {buf: self._holds(storage) for storage, buf in enumerate(storage_buffer)
                 if buf >= 0}
        # The numbers come first and the (possibly long) buffer name last, so that a name cut
        # to the comment's width never hides an offset or a size.
        rows = [("buffer", "offset", "bytes", "first", "last", "name: holds")]
        for k, (b, off) in enumerate(zip(planner.buffers, offsets)):
            what = holds.get(k, "TIR workspace" if b.name.endswith(".workspace") else "scratch")
            rows.append((f"BUF{k}", str(off), str(b.size), str(b.first_use),
                         str(b.last_use), f"{b.name}: {what}"))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        table = ["  ".join(r[c].ljust(widths[c]) if c == 0 else r[c].rjust(widths[c])
                           for c in range(5)) + "  " + r[5] for r in rows]
        lines = [f"Arena plan: {arena_bytes} bytes ({self.upper}_ARENA_BYTES), greedy by size, "
                 f"every buffer aligned to {self.alignment} bytes. A buffer is live from its "
                 "first to its last step (kernel call, numbered from 0); buffers whose "
                 "lifetimes do not overlap share bytes.", ""]
        width = COLUMN_LIMIT - 3  # " * " of the comment
        lines += [row.rstrip() if len(row) <= width else row[:width - 3].rstrip() + "..."
                  for row in table]
        bound = [f"storage{s} -> outputs->{self.outputs[o].name}"
                 for s, o in sorted(self.output_storage.items())]
        if bound:
            lines += ["", "Written straight into the caller's output buffer (not in the arena): "
                      + ", ".join(bound) + "."]
        macros = []
        for k, off in enumerate(offsets):
            macros.append(f"#define {self._offset_macro(k)} {off}u")
            macros.append(f"#define {self._bytes_macro(k)} {planner.buffers[k].size}u")
        return c_block_comment(lines) + "\n".join(macros)

    def _emit_backend(self) -> str:
        """The TVM backend functions of this model (renamed in its TIR source, see
        ``relax_to_c.BACKEND_FUNCTIONS``), each using this model's context."""
        if not any(s.kind == StepKind.TIR for s in self.w.steps):
            return ""
        comment = c_block_comment([
            "TVM's TIR kernels call these TVM backend functions, which take no context "
            f"argument. This model's TIR source renames them to the {self.prefix}_ ones below (a "
            "#define before TVM's headers), so they use this model's context and never another "
            "model's."])
        return _BACKEND_C.format(prefix=self.prefix, comment=comment, **{
            name: format_signature(f"{ret}{'' if ret.endswith('*') else ' '}{self.prefix}_{name}",
                              params, " {")
            for name, (ret, params) in _BACKEND_SIGNATURES.items()})

    def _emit_step(self, i: int, step: Step, storage_buffer: list[int], scratch: int,
                   shape_name: object) -> str:
        lines = [c_comment(f"step {i}: {step.name}", 2), f"  TT_STEP_BEGIN({i});", "  {"]
        if step.kind == StepKind.TIR:
            if len(step.args) > MAX_PACKED_ARGS:
                raise LoweringError(f"{step.name} takes {len(step.args)} tensors; the runtime "
                                    f"passes at most {MAX_PACKED_ARGS}")
            for j, ref in enumerate(step.args):
                code, bits = dl_type(ref.dtype)
                data = self._data_expr(ref, storage_buffer)
                lines.append(format_call("tt_make_tensor", [
                    data, str(len(ref.shape)), shape_name(ref.shape), code, str(bits)],
                    indent=4, assign=f"DLTensor t{j} ="))
            ptrs = [f"&t{j}" for j in range(len(step.args))]
            lines.append(format_call(f"DLTensor *const args[{len(step.args)}] = ", ptrs,
                                     indent=4, open_="{", close="}"))
            if scratch >= 0:
                lines.append(format_call("tt_workspace_bind", [
                    "ctx", f"arena + {self._offset_macro(scratch)}", self._bytes_macro(scratch)],
                    indent=4))
            else:
                lines.append("    tt_workspace_unbind(ctx);")
            lines.append(format_call("tt_call_packed", [
                step.c_function, "args", str(len(step.args))], indent=4, assign="rc ="))
            lines.append("    if (rc != 0) {")
            lines.append(format_call("tt_set_error", [
                "ctx", f'"{_status_text(step.kind)} failed: {step.name}"'], indent=6))
            lines.append("    }")
        else:
            *ins, out = step.args
            lines.append(format_call(f"const void *const in[{len(ins)}] = ",
                                     [self._data_expr(r, storage_buffer) for r in ins],
                                     indent=4, open_="{", close="}"))
            lines.append(format_call("void *const out[1] = ",
                                     [self._data_expr(out, storage_buffer)], indent=4,
                                     open_="{", close="}"))
            if scratch >= 0:
                scratch_args = [f"arena + {self._offset_macro(scratch)}",
                                self._bytes_macro(scratch)]
            else:
                scratch_args = ["NULL", "0"]
            lines.append(format_call(step.c_function, ["in", "out", *scratch_args], indent=4,
                                     assign="rc ="))
            lines.append("    if (rc != 0) {")
            lines.append(format_call("tt_set_error", [
                "ctx", f'"{_status_text(step.kind)} failed: {step.name}"'], indent=6))
            lines.append("    }")
        lines.append("  }")
        lines.append(f"  TT_STEP_END({i});")
        lines.append("  if (rc != 0) return rc;")
        return "\n".join(lines)

    def _emit_output_copies(self, storage_buffer: list[int]) -> list[str]:
        lines = []
        for i, expr in enumerate(_result_vars(self.w.result)):
            ref = self.w.tensors[expr]
            if self.output_storage.get(ref.index) == i:
                continue
            src = self._data_expr(ref, storage_buffer)
            name = self.outputs[i].name
            lines.append(format_call("memcpy", [f"outputs->{name}", src,
                                                f"{self.upper}_{name.upper()}_SIZE"], indent=2))
        return lines

    def _emit_io_check(self) -> str:
        names = ["inputs", "outputs"] + [f"inputs->{t.name}" for t in self.w.inputs]
        names += [f"outputs->{t.name}" for t in self.outputs]
        cond = format_call("if ", [f"{n} == NULL" for n in names], " {", indent=2, sep=" ||")
        return f"{cond}\n    return TT_RUNTIME_NULL_ARGUMENT;\n  }}"

    def _emit_header(self, arena_bytes: int, params_bytes: int) -> str:
        size_macros, in_fields, out_fields = [], [], []
        for t in self.w.inputs:
            size_macros.append(f"/** Input '{t.name}': {t.dtype}{list(t.shape)}. */\n"
                               f"#define {self.upper}_{t.name.upper()}_SIZE {t.nbytes}")
            in_fields.append(f"  /** {t.dtype}{list(t.shape)} */\n"
                             f"  const {c_type(t.dtype)} *{t.name};")
        for t in self.outputs:
            size_macros.append(f"/** Output '{t.name}': {t.dtype}{list(t.shape)}. */\n"
                               f"#define {self.upper}_{t.name.upper()}_SIZE {t.nbytes}")
            out_fields.append(f"  /** {t.dtype}{list(t.shape)} */\n"
                              f"  {c_type(t.dtype)} *{t.name};")
        return _MODEL_H.format(
            header=self.provenance.c_comment(
                f"tvm_tiny model '{self.model}': AOT entry point.",
                [f"All working memory lives in one arena of {self.upper}_ARENA_BYTES bytes; no "
                 "heap is used. The model's runtime state (TIR workspace, last error) is one "
                 "static context of its own, so several models can share a firmware; one model "
                 "runs one call at a time."]),
            prefix=self.prefix, upper=self.upper, arena=arena_bytes,
            params=params_bytes, alignment=self.alignment, sizes="\n".join(size_macros),
            in_fields="\n".join(in_fields), out_fields="\n".join(out_fields),
            run=format_signature(f"int32_t {self.prefix}_run",
                            [f"const struct {self.prefix}_inputs *inputs",
                             f"struct {self.prefix}_outputs *outputs"]),
            run_with_arena=format_signature(
                f"int32_t {self.prefix}_run_with_arena",
                [f"const struct {self.prefix}_inputs *inputs",
                 f"struct {self.prefix}_outputs *outputs", "uint8_t *arena",
                 "size_t arena_bytes"]),
            arena_doc=c_comment(
                f"Run the model in a caller-owned arena of at least {self.upper}_ARENA_BYTES "
                f"bytes, aligned to {self.upper}_ARENA_ALIGNMENT. A smaller arena returns "
                "TT_RUNTIME_ARENA_TOO_SMALL."),
        )


def emit_aot(lowered_main: relax.Function, model: str, externs: dict[str, ExternKernel],
             tir_symbols: dict[str, str], workspace: dict[str, int], *,
             alignment: int = DEFAULT_ALIGNMENT, arena_limit: int | None = None,
             provenance: Provenance = UNKNOWN) -> AotResult:
    """Plan the arena and print the model's C entry point and header.

    ``workspace`` is the TVMBackendAllocWorkspace bytes of each PrimFunc
    (``LoweredModel.workspace_bytes``, read from the TIR). ``arena_limit`` fixes the arena
    size; a limit below the plan's need is refused with the number of bytes missing.
    ``provenance`` is stated in the header of both files and names the constants.
    """
    walker = _MainWalker(lowered_main, externs, tir_symbols, workspace)
    return AotEmitter(c_identifier(model), walker, alignment, provenance).emit(arena_limit)


# name -> (return type, parameters) of the TVM backend functions a model's TIR source calls
_BACKEND_SIGNATURES = {
    "TVMBackendAllocWorkspace": ("void *", ["int device_type", "int device_id", "uint64_t nbytes",
                                            "int dtype_code_hint", "int dtype_bits_hint"]),
    "TVMBackendFreeWorkspace": ("int", ["int device_type", "int device_id", "void *ptr"]),
    "TVMFFIErrorSetRaisedFromCStr": ("void", ["const char *kind", "const char *message"]),
    "TVMFFIErrorSetRaisedFromCStrParts": ("void", ["const char *kind",
                                                   "const char **message_parts",
                                                   "int32_t num_parts"]),
}

_BACKEND_C = """
{comment}{TVMBackendAllocWorkspace}
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  return tt_workspace_alloc(&{prefix}_context, nbytes);
}}

{TVMBackendFreeWorkspace}
  (void)device_type;
  (void)device_id;
  return tt_workspace_free(&{prefix}_context, ptr);
}}

{TVMFFIErrorSetRaisedFromCStr}
  tt_set_error_parts(&{prefix}_context, kind, &message, 1);
}}

{TVMFFIErrorSetRaisedFromCStrParts}
  tt_set_error_parts(&{prefix}_context, kind, message_parts, num_parts);
}}
"""

_MODEL_H = """\
{header}#ifndef {upper}_H_
#define {upper}_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

/** Peak working memory (static arena, including TIR workspace and kernel scratch). */
#define {upper}_ARENA_BYTES {arena}
/** Alignment of the arena and of every constant array. */
#define {upper}_ARENA_ALIGNMENT {alignment}
/** Bytes of constant parameters (weights, biases, tables) in flash. */
#define {upper}_PARAMS_BYTES {params}
{sizes}

struct {prefix}_inputs {{
{in_fields}
}};

struct {prefix}_outputs {{
{out_fields}
}};

/** Run the model with the built-in static arena. Returns 0 or a negative tt_runtime_status. */
{run}

{arena_doc}
{run_with_arena}

/** The message of this model's last failed run, or "" when none failed. */
const char *{prefix}_last_error(void);

#ifdef __cplusplus
}}
#endif

#endif /* {upper}_H_ */
"""

_MODEL_C = """\
{header}#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tvm_tiny/tt_profile.h"
#include "tvm_tiny/tt_runtime.h"
#include "{prefix}.h"

/* Kernels: offloaded (tvm_tiny codegen) and TIR (TVM's C codegen, packed ABI). */
{decls}

{plan}

{data}
/* This model's runtime state: the TIR workspace bound for the current step, the last error. */
static tt_context {prefix}_context;
{arena_decl}
{backend}
const char *{prefix}_last_error(void) {{
  return tt_last_error(&{prefix}_context);
}}

{run_with_arena}
  tt_context *const ctx = &{prefix}_context;
  int32_t rc = 0;
{io_check}
  if (arena == NULL || arena_bytes < {upper}_ARENA_BYTES) {{
    tt_set_error(ctx, "arena smaller than {upper}_ARENA_BYTES ({arena_bytes} bytes)");
    return TT_RUNTIME_ARENA_TOO_SMALL;
  }}
{body}
  tt_workspace_unbind(ctx);
  return rc;
}}

{run}
{run_call}
}}
"""
