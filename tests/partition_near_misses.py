"""Near misses of self-attention, one per rejection reason of the partitioner (``onnx.helper``).

Every model is the same small MHSA (S=8, E=16, H=2, P=8) with exactly one thing changed, so
that ``attention_match.find_attention`` rejects it for one reason. :func:`mhsa` builds it step
by step; a case replaces the steps it changes (``Steps``). The float steps follow
``tvm_tiny.testing.models.mhsa_helper``; ``qdq=True`` puts a QuantizeLinear/DequantizeLinear pair
on every tensor the int8 kernel materializes and stores the weights as int8 initializers behind
DequantizeLinear, as onnxruntime's static quantization writes them.

:data:`CASES` maps a test id to (model builder, the words the rejection must contain). The
positive controls :func:`mhsa` and ``mhsa(qdq=True)`` are offloaded (the tests check that too),
so each near miss differs from an offloadable model by its one change. Weights are seeded
(``numpy.random.default_rng(SEED)``): every call builds the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQ, EMBED, HEADS, PROJ = 8, 16, 2, 8
HP = HEADS * PROJ
SEED = 0
OPSET, IR_VERSION = 17, 8


class Graph:
    """Nodes, initializers and inputs of one model, with unique readable names."""

    def __init__(self, qdq: bool) -> None:
        self.qdq = qdq
        self.rng = np.random.default_rng(SEED)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def input(self, name: str, shape: list[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def output(self, tensor: str, shape: list[int]) -> None:
        self.outputs.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, shape))

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type),
                                           **attrs))
        return out

    def weight(self, shape: tuple[int, ...]) -> str:
        """A random weight scaled by 1/sqrt(fan in); int8 behind DequantizeLinear if ``qdq``."""
        value = (self.rng.standard_normal(shape) / math.sqrt(shape[-2])).astype(np.float32)
        if not self.qdq or len(shape) != 2:
            return self.const("w", value)
        scale = np.float32(np.abs(value).max() / 127)
        values = np.clip(np.rint(value / scale), -127, 127).astype(np.int8)
        return self.op("DequantizeLinear", [self.const("w_q", values),
                                            self.const("w_scale", np.asarray(scale)),
                                            self.const("w_zero", np.asarray(0, np.int8))])

    def bias(self, size: int) -> str:
        return self.const("b", (0.1 * self.rng.standard_normal(size)).astype(np.float32))

    def rounded(self, tensor: str, scale: float, zero_point: int = 0) -> str:
        """``tensor`` through QuantizeLinear → DequantizeLinear (int8), if ``qdq``."""
        if not self.qdq:
            return tensor
        s, z = self.const("s", np.asarray(scale, np.float32)), self.const(
            "z", np.asarray(zero_point, np.int8))
        return self.op("DequantizeLinear", [self.op("QuantizeLinear", [tensor, s, z]), s, z])

    def shape(self, dims: list[int]) -> str:
        return self.const("shape", np.asarray(dims, dtype=np.int64))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "near_miss", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=IR_VERSION, producer_name="tests.near_misses")
        onnx.checker.check_model(model, full_check=True)
        return model


# Activation scales of the QDQ steps: wide enough for the values this model produces.
_SCALE = 4.0 / 127


def _inputs(g: Graph) -> str:
    return g.rounded(g.input("x", [1, SEQ, EMBED]), _SCALE)


def _project(g: Graph, x: str, which: str) -> str:
    """``MatMul(x, W) + b`` of the Q, K or V projection, rounded."""
    return g.rounded(g.op("Add", [g.op("MatMul", [x, g.weight((EMBED, HP))]), g.bias(HP)]),
                     _SCALE)


def _split_heads(g: Graph, t: str, which: str) -> str:
    """[1, S, H·P] → [1, H, S, P] (K: [1, H, P, S], already transposed), each step rounded as
    onnxruntime rounds every output (the matcher reads the rounding nearest the matmul)."""
    perm = [0, 2, 3, 1] if which == "k" else [0, 2, 1, 3]
    heads = g.rounded(g.op("Reshape", [t, g.shape([1, SEQ, HEADS, PROJ])]), _SCALE)
    return g.rounded(g.op("Transpose", [heads], perm=perm), _SCALE)


def _scores(g: Graph, q: str, kt: str) -> str:
    scale = g.const("scale", np.asarray(1 / math.sqrt(PROJ), np.float32))
    return g.rounded(g.op("Mul", [g.op("MatMul", [q, kt]), scale]), _SCALE)


def _softmax(g: Graph, scores: str) -> str:
    return g.rounded(g.op("Softmax", [scores], axis=-1), 1.0 / 255, -128)


def _context(g: Graph, probs: str, v: str) -> str:
    return g.rounded(g.op("MatMul", [probs, v]), _SCALE)


def _merge_heads(g: Graph, ctx: str) -> str:
    merged = g.rounded(g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), _SCALE)
    return g.rounded(g.op("Reshape", [merged, g.shape([1, SEQ, HP])]), _SCALE)


def _out_project(g: Graph, merged: str) -> str:
    return g.rounded(g.op("Add", [g.op("MatMul", [merged, g.weight((HP, EMBED))]),
                                  g.bias(EMBED)]), _SCALE)


def _outputs(g: Graph, y: str, graph_inputs: list[str]) -> None:
    g.output(y, [1, SEQ, EMBED])


@dataclass(frozen=True)
class Steps:
    """The MHSA, step by step; a near miss replaces one or two steps."""

    inputs: Callable[[Graph], str] = _inputs
    project: Callable[[Graph, str, str], str] = _project
    split_heads: Callable[[Graph, str, str], str] = _split_heads
    scores: Callable[[Graph, str, str], str] = _scores
    softmax: Callable[[Graph, str], str] = _softmax
    context: Callable[[Graph, str, str], str] = _context
    merge_heads: Callable[[Graph, str], str] = _merge_heads
    out_project: Callable[[Graph, str], str] = _out_project
    outputs: Callable[[Graph, str, list[str]], None] = _outputs


def mhsa(steps: Steps = Steps(), qdq: bool = False) -> onnx.ModelProto:
    """``y = MHSA(x)``, x [1, S, E] (float, or QDQ int8 with ``qdq``), through ``steps``."""
    g = Graph(qdq)
    x = steps.inputs(g)
    q, k, v = (steps.split_heads(g, steps.project(g, x, n), n) for n in ("q", "k", "v"))
    probs = steps.softmax(g, steps.scores(g, q, k))
    ctx = steps.context(g, probs, v)
    y = steps.out_project(g, steps.merge_heads(g, ctx))
    steps.outputs(g, y, [i.name for i in g.inputs])
    return g.model()


def _variant(qdq: bool = False, **changed: Callable) -> Callable[[], onnx.ModelProto]:
    return lambda: mhsa(replace(Steps(), **changed), qdq=qdq)


# --- the changed steps ------------------------------------------------------------------------


def _softmax_over_queries(g: Graph, scores: str) -> str:
    return g.op("Softmax", [scores], axis=2)


def _softmax_rounded_twice(g: Graph, scores: str) -> str:
    """QuantizeLinear and DequantizeLinear with different scales: not one rounding."""
    probs = g.op("Softmax", [scores], axis=-1)
    z = g.const("z", np.asarray(0, np.int8))
    q = g.op("QuantizeLinear", [probs, g.const("s", np.asarray(1 / 127, np.float32)), z])
    return g.op("DequantizeLinear", [q, g.const("s", np.asarray(1 / 100, np.float32)), z])


def _single_head_inputs(g: Graph) -> str:
    return g.input("x", [SEQ, EMBED])


def _single_head(g: Graph, t: str, which: str) -> str:
    """Rank-2 single-head attention: [S, H·P] as it is, K transposed."""
    return g.op("Transpose", [t], perm=[1, 0]) if which == "k" else t


def _single_head_merge(g: Graph, ctx: str) -> str:
    return ctx


def _single_head_out(g: Graph, merged: str) -> str:
    return g.op("Add", [g.op("MatMul", [merged, g.weight((HP, EMBED))]), g.bias(EMBED)])


def _single_head_outputs(g: Graph, y: str, graph_inputs: list[str]) -> None:
    g.output(y, [SEQ, EMBED])


def _wide_values(g: Graph, x: str, which: str) -> str:
    width = 2 * HP if which == "v" else HP
    return g.op("Add", [g.op("MatMul", [x, g.weight((EMBED, width))]), g.bias(width)])


def _wide_value_heads(g: Graph, t: str, which: str) -> str:
    proj = 2 * PROJ if which == "v" else PROJ
    perm = [0, 2, 3, 1] if which == "k" else [0, 2, 1, 3]
    return g.op("Transpose", [g.op("Reshape", [t, g.shape([1, SEQ, HEADS, proj])])], perm=perm)


def _wide_value_merge(g: Graph, ctx: str) -> str:
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                            g.shape([1, SEQ, 2 * HP])])


def _wide_value_out(g: Graph, merged: str) -> str:
    return g.op("Add", [g.op("MatMul", [merged, g.weight((2 * HP, EMBED))]), g.bias(EMBED)])


def _memory_inputs(g: Graph) -> str:
    g.input("m", [1, SEQ, EMBED])
    return g.input("x", [1, SEQ, EMBED])


def _keys_from_memory(g: Graph, x: str, which: str) -> str:
    return _project(g, "m" if which in ("k", "v") else x, which)


def _bias_input_inputs(g: Graph) -> str:
    g.input("bq", [HP])
    return g.input("x", [1, SEQ, EMBED])


def _query_bias_input(g: Graph, x: str, which: str) -> str:
    matmul = g.op("MatMul", [x, g.weight((EMBED, HP))])
    return g.op("Add", [matmul, "bq" if which == "q" else g.bias(HP)])


def _weight_input_inputs(g: Graph) -> str:
    g.input("wq", [EMBED, HP])
    return g.input("x", [1, SEQ, EMBED])


def _query_weight_input(g: Graph, x: str, which: str) -> str:
    weight = "wq" if which == "q" else g.weight((EMBED, HP))
    return g.op("Add", [g.op("MatMul", [x, weight]), g.bias(HP)])


def _query_without_projection(g: Graph, x: str, which: str) -> str:
    return x if which == "q" else _project(g, x, which)


def _query_weight_rank3(g: Graph, x: str, which: str) -> str:
    shape = (1, EMBED, HP) if which == "q" else (EMBED, HP)
    return g.op("Add", [g.op("MatMul", [x, g.weight(shape)]), g.bias(HP)])


def _query_scalar_bias(g: Graph, x: str, which: str) -> str:
    bias = g.bias(1) if which == "q" else g.bias(HP)
    return g.op("Add", [g.op("MatMul", [x, g.weight((EMBED, HP))]), bias])


def _heads_without_transpose(g: Graph, t: str, which: str) -> str:
    """The classic bug: [1, S, H·P] reshaped straight to [1, H, S, P]."""
    heads = g.op("Reshape", [t, g.shape([1, HEADS, SEQ, PROJ])])
    return g.op("Transpose", [heads], perm=[0, 1, 3, 2]) if which == "k" else heads


def _two_rows_per_position(g: Graph, t: str, which: str) -> str:
    """One head over [S/2, 2·H·P]: each "position" spans two sequence rows."""
    folded = g.op("Reshape", [t, g.shape([1, 1, SEQ // 2, 2 * HP])])
    return g.op("Transpose", [folded], perm=[0, 1, 3, 2]) if which == "k" else folded


def _two_rows_merge(g: Graph, ctx: str) -> str:
    return g.op("Reshape", [ctx, g.shape([1, SEQ, HP])])


def _narrow_keys(g: Graph, x: str, which: str) -> str:
    """K projects the first half of the features only."""
    if which != "k":
        return _project(g, x, which)
    half = g.op("Slice", [x, g.const("starts", np.asarray([0], np.int64)),
                          g.const("ends", np.asarray([EMBED // 2], np.int64)),
                          g.const("axes", np.asarray([2], np.int64))])
    return g.op("Add", [g.op("MatMul", [half, g.weight((EMBED // 2, HP))]), g.bias(HP)])


def _query_input_rounded(g: Graph, x: str, which: str) -> str:
    """Only Q's projection reads x through a Q/DQ pair."""
    if which == "q":
        s, z = g.const("s", np.asarray(_SCALE, np.float32)), g.const("z", np.asarray(0, np.int8))
        x = g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, s, z]), s, z])
    return _project(g, x, which)


def _batch2_inputs(g: Graph) -> str:
    return g.input("x", [2, SEQ, EMBED])


def _batch2_heads(g: Graph, t: str, which: str) -> str:
    perm = [0, 2, 3, 1] if which == "k" else [0, 2, 1, 3]
    return g.op("Transpose", [g.op("Reshape", [t, g.shape([2, SEQ, HEADS, PROJ])])], perm=perm)


def _batch2_merge(g: Graph, ctx: str) -> str:
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.shape([2, SEQ, HP])])


def _batch2_outputs(g: Graph, y: str, graph_inputs: list[str]) -> None:
    g.output(y, [2, SEQ, EMBED])


def _query_features_permuted(g: Graph, x: str, which: str) -> str:
    if which == "q":
        order = g.const("order", np.arange(EMBED, dtype=np.int64)[::-1].copy())
        x = g.op("Gather", [x, order], axis=2)
    return _project(g, x, which)


def _channels_first_inputs(g: Graph) -> str:
    return g.input("x", [1, EMBED, SEQ])


def _own_transpose_each(g: Graph, x: str, which: str) -> str:
    """Every projection transposes the channels-first input itself (three Transposes)."""
    return _project(g, g.op("Transpose", [x], perm=[0, 2, 1]), which)


def _context_also_output(g: Graph, probs: str, v: str) -> str:
    ctx = g.op("MatMul", [probs, v])
    g.output(ctx, [1, HEADS, SEQ, PROJ])
    return ctx


def _context_activated(g: Graph, probs: str, v: str) -> str:
    return g.op("Relu", [g.op("MatMul", [probs, v])])


def _context_doubled(g: Graph, probs: str, v: str) -> str:
    return g.op("Mul", [g.op("MatMul", [probs, v]), g.const("two", np.asarray(2, np.float32))])


def _merge_two_positions_per_row(g: Graph, ctx: str) -> str:
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                            g.shape([1, SEQ // 2, 2 * HP])])


def _out_project_two_positions(g: Graph, merged: str) -> str:
    return g.op("Add", [g.op("MatMul", [merged, g.weight((2 * HP, EMBED))]), g.bias(EMBED)])


def _outputs_two_positions(g: Graph, y: str, graph_inputs: list[str]) -> None:
    g.output(y, [1, SEQ // 2, EMBED])


def _merge_without_transpose(g: Graph, ctx: str) -> str:
    """The classic bug again: [1, H, S, P] reshaped straight to [1, S, H·P]."""
    return g.op("Reshape", [ctx, g.shape([1, SEQ, HP])])


def _wo_input_inputs(g: Graph) -> str:
    g.input("wo", [HP, EMBED])
    return g.input("x", [1, SEQ, EMBED])


def _out_project_weight_input(g: Graph, merged: str) -> str:
    return g.op("Add", [g.op("MatMul", [merged, "wo"]), g.bias(EMBED)])


def _out_project_shared(g: Graph, merged: str) -> str:
    """Wo also projects the model input (E = H·P), outside the attention: a tied weight."""
    wo = g.weight((HP, EMBED))
    y = g.op("Add", [g.op("MatMul", [merged, wo]), g.bias(EMBED)])
    return g.op("Add", [y, g.op("MatMul", ["x", wo])])


def _keys_not_rounded(g: Graph, x: str, which: str) -> str:
    out = g.op("Add", [g.op("MatMul", [x, g.weight((EMBED, HP))]), g.bias(HP)])
    return out if which == "k" else g.rounded(out, _SCALE)


def _key_heads_not_rounded(g: Graph, t: str, which: str) -> str:
    if which != "k":
        return _split_heads(g, t, which)
    heads = g.op("Reshape", [t, g.shape([1, SEQ, HEADS, PROJ])])
    return g.op("Transpose", [heads], perm=[0, 2, 3, 1])


def _queries_rounded_twice(g: Graph, t: str, which: str) -> str:
    """Q re-quantized right after its head split, with another scale (1.5 times the first,
    so that no value falls on a rounding tie, where TVM and onnxruntime round differently)."""
    heads = _split_heads(g, t, which)
    return g.rounded(heads, 1.5 * _SCALE) if which == "q" else heads


def _values_doubled(g: Graph, t: str, which: str) -> str:
    heads = _split_heads(g, t, which)
    if which != "v":
        return heads
    return g.op("Mul", [heads, g.const("two", np.asarray(2, np.float32))])


def _query_weight_float(g: Graph, x: str, which: str) -> str:
    """A float32 Q weight in an otherwise quantized attention."""
    if which != "q":
        return _project(g, x, which)
    weight = g.const("w", (g.rng.standard_normal((EMBED, HP)) / 4).astype(np.float32))
    return g.rounded(g.op("Add", [g.op("MatMul", [x, weight]), g.bias(HP)]), _SCALE)


def _only_input_rounded(g: Graph) -> str:
    """A float attention whose input alone passes a Q/DQ pair."""
    x = g.input("x", [1, SEQ, EMBED])
    s, z = g.const("s", np.asarray(_SCALE, np.float32)), g.const("z", np.asarray(0, np.int8))
    return g.op("DequantizeLinear", [g.op("QuantizeLinear", [x, s, z]), s, z])


#: Test id -> (model builder, words the rejection reason must contain).
CASES: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "softmax_not_last_axis": (_variant(softmax=_softmax_over_queries),
                              "softmax is not over the last axis"),
    "weights_not_a_softmax": (_variant(softmax=_softmax_rounded_twice),
                              "attention weights do not come from a softmax"),
    "rank2_operands": (_variant(inputs=_single_head_inputs, split_heads=_single_head,
                                merge_heads=_single_head_merge, out_project=_single_head_out,
                                outputs=_single_head_outputs),
                       "Q operand has no static [.., S, P] shape"),
    "value_head_layout": (_variant(project=_wide_values, split_heads=_wide_value_heads,
                                   merge_heads=_wide_value_merge, out_project=_wide_value_out),
                          "V has head layout"),
    "cross_attention_same_length": (_variant(inputs=_memory_inputs, project=_keys_from_memory),
                                    "K is projected from a different tensor than Q"),
    "bias_not_constant": (_variant(inputs=_bias_input_inputs, project=_query_bias_input),
                          "projection bias is not a constant"),
    "weight_not_constant": (_variant(inputs=_weight_input_inputs, project=_query_weight_input),
                            "projection weight is not a constant"),
    "no_projection": (_variant(project=_query_without_projection),
                      "Q/K/V do not come from a matmul projection"),
    "weight_rank3": (_variant(project=_query_weight_rank3),
                     "projection weight has rank 3, expected 2"),
    "bias_size": (_variant(project=_query_scalar_bias),
                  "projection bias has 1 values for 16 outputs"),
    "head_columns_vary": (_variant(split_heads=_heads_without_transpose),
                          "Q: head columns vary along the sequence"),
    "rows_vary_in_head": (_variant(split_heads=_two_rows_per_position,
                                   merge_heads=_two_rows_merge),
                          "Q: sequence rows vary inside a head"),
    "key_features": (_variant(project=_narrow_keys), "K weight expects 8 features, Q 16"),
    "input_quantized_differently": (_variant(project=_query_input_rounded),
                                    "Q, K and V read differently quantized copies of the input"),
    "batch2": (_variant(inputs=_batch2_inputs, split_heads=_batch2_heads,
                        merge_heads=_batch2_merge, outputs=_batch2_outputs),
               "rows are not the input sequence in order (batch > 1?)"),
    "input_features_permuted": (_variant(project=_query_features_permuted),
                                "projection input permutes the embedding axis"),
    "input_not_embedding_last": (_variant(inputs=_channels_first_inputs,
                                          project=_own_transpose_each),
                                 "does not end in the embedding size 16"),
    "context_escapes": (_variant(context=_context_also_output),
                        "attention output is used outside the attention"),
    "context_not_projected": (_variant(context=_context_activated),
                              "attention output does not reach an output projection"),
    "output_weight_not_constant": (_variant(inputs=_wo_input_inputs,
                                            out_project=_out_project_weight_input),
                                   "output projection weight is not a constant"),
    "context_rescaled": (_variant(context=_context_doubled),
                         "output projection input is not a re-layout of the attention output"),
    "output_rows_not_positions": (_variant(merge_heads=_merge_two_positions_per_row,
                                           out_project=_out_project_two_positions,
                                           outputs=_outputs_two_positions),
                                  "is not [S, H*P]"),
    "output_mixes_positions": (_variant(merge_heads=_merge_without_transpose),
                               "output projection input mixes sequence positions"),
    "output_weight_shared": (_variant(out_project=_out_project_shared),
                             "the output projection weight is shared outside the attention"),
    "partly_quantized": (_variant(inputs=_only_input_rounded),
                         "the attention is only partly quantized"),
    "int8_key_not_quantized": (_variant(qdq=True, project=_keys_not_rounded,
                                        split_heads=_key_heads_not_rounded),
                               "K is not quantized while the rest of the attention is"),
    "int8_query_requantized": (_variant(qdq=True, split_heads=_queries_rounded_twice),
                               "Q is re-quantized with different parameters along its layout"),
    "int8_value_rescaled": (_variant(qdq=True, split_heads=_values_doubled),
                            "V is rescaled between its quantization and the attention"),
    "int8_float_weight": (_variant(qdq=True, project=_query_weight_float),
                          "Q weight is not a symmetric int8 DequantizeLinear constant"),
}
