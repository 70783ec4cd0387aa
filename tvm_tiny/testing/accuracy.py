"""How far a built int8 model is from onnxruntime's reference QDQ semantics, in output steps.

The reference is onnxruntime with every graph optimization off (``ORT_DISABLE_ALL``): each
QuantizeLinear / DequantizeLinear then runs as written, which is the semantics the integer
rules replicate (its optimized path fuses QDQ pairs into its own integer kernels and differs
from the reference by a few steps itself). A step is the output's quantization scale, read from
the DequantizeLinear that produces each graph output: a difference of one step is one int8 code.

Classifiers also report top-1 agreement: the fraction of inputs on which the built model and
the reference pick the same class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


@dataclass(frozen=True)
class StepStats:
    """Differences in output steps over every output element of every input."""

    max_steps: float
    mean_steps: float
    exact_fraction: float  # differences below half a step (the same int8 code)
    samples: int
    top1_agreement: float | None = None  # classifiers: same argmax, over the inputs

    def summary(self) -> str:
        top1 = "" if self.top1_agreement is None else f", top-1 {100 * self.top1_agreement:.1f}%"
        return (f"max {self.max_steps:.0f} / mean {self.mean_steps:.3f} steps, "
                f"{100 * self.exact_fraction:.1f}% exact{top1} ({self.samples} inputs)")


def reference_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """onnxruntime on the CPU with its graph optimizations off (the QDQ reference)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def output_scales(model: onnx.ModelProto) -> list[float]:
    """The quantization scale of each graph output (the DequantizeLinear producing it)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    scales = []
    for output in model.graph.output:
        node = producers.get(output.name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in inits:
            raise ValueError(f"output '{output.name}' is not produced by a DequantizeLinear "
                             "with a constant scale: no output step to count in")
        scale = np.asarray(inits[node.input[1]], np.float64)
        if scale.size != 1:
            raise ValueError(f"output '{output.name}' is dequantized per channel "
                             f"({scale.size} scales): no single output step")
        scales.append(float(scale.reshape(-1)[0]))
    return scales


def compare_with_onnxruntime(model: onnx.ModelProto,
                             run: Callable[..., Sequence[np.ndarray]],
                             inputs: Sequence[Sequence[np.ndarray]],
                             classifier: bool = False) -> StepStats:
    """``run(*x)`` (a built model's float outputs) against the reference, for each input set
    ``x`` of ``inputs``; ``classifier``: also the top-1 agreement of the first output."""
    session = reference_session(model)
    names = [i.name for i in session.get_inputs()]
    scales = output_scales(model)
    diffs, agree = [], []
    for xs in inputs:
        want = session.run(None, dict(zip(names, xs, strict=True)))
        got = run(*xs)
        for g, w, scale in zip(got, want, scales, strict=True):
            diffs.append(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)).ravel()
                         / scale)
        if classifier:
            agree.append(int(np.argmax(got[0])) == int(np.argmax(want[0])))
    d = np.concatenate(diffs)
    return StepStats(float(np.round(d.max(), 6)), float(d.mean()), float(np.mean(d < 0.5)),
                     len(inputs), float(np.mean(agree)) if classifier else None)


def model_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of the model's MatMul, Gemm and Conv nodes (shape inference on the
    graph; activation × activation matmuls such as attention's included)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        shapes[info.name] = [d.dim_value for d in info.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    # A weight behind a DequantizeLinear has the int8 initializer's shape.
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type in ("MatMul", "Gemm") and out:
            a = shapes.get(node.input[0])
            k = a[-1] if a and not (node.op_type == "Gemm" and _attr(node, "transA")) else \
                (a[-2] if a else 0)
            total += int(np.prod(out)) * int(k)
        elif node.op_type == "Conv" and out:
            w = shapes.get(node.input[1])
            if w:
                total += int(np.prod(out)) * int(np.prod(w[1:]))
    return total


def _attr(node: onnx.NodeProto, name: str) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return 0
