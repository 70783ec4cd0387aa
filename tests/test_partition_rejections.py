"""Every rejection reason of the partitioner, one parametrized case (its ``id``) each.

As TVM's ``test_backend_tensorrt.py`` does for its checks: each case asserts that no tvm_tiny
region is made and that the reason says why, then that TVM alone still builds and runs the model
and matches onnxruntime. The models (``partition_near_misses.py``) are one small MHSA with one
thing changed; the two unchanged controls are offloaded. The near misses of ``tests/data``
(masked scores, cross-attention of another length, a shared Q weight, leaked probabilities) are
the cases of ``test_partition.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_outputs_close, onnxruntime_outputs
from partition_near_misses import CASES, mhsa

import tvm_tiny
from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.partition import attention_match
from tvm_tiny.partition.partitioner import PartitionReport, mhsa_functions, partition_for_tiny
from tvm_tiny.testing.models import example_inputs

#: QDQ cases run their quantize/dequantize pairs in TVM, compared with onnxruntime's reference
#: QDQ semantics (no graph optimizations). On these models they agree to float32 rounding
#: (measured: at most 1e-5 output steps); a value landing within float32 summation error of a
#: rounding boundary could still round to the neighbouring step: one step either way.
QDQ_STEPS = 1


def _qdq_reference(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options).run(None, inputs)


def _is_qdq(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def _check_falls_back(model: onnx.ModelProto, reason: str, name: str) -> None:
    """No region, ``reason`` reported, and TVM alone computes what onnxruntime computes."""
    report = PartitionReport()
    partitioned = partition_for_tiny(to_relax(model)[0], report)
    # No attention region; the projections of a rejected int8 attention may still run as
    # int8 linear layers (tvm_tiny.linear_s8), like any QDQ MatMul outside attention.
    assert mhsa_functions(partitioned) == []
    assert all(name.startswith("tvm_tiny_linear_s8_") for name in report.offloaded)
    assert len(report.rejected) == 1 and reason in report.rejected[0], report.rejected
    lib = tvm_tiny.build(model, target="host", name=name)
    assert lib.metadata["offloaded"] == []
    assert len(lib.metadata["not_offloaded"]) == 1
    assert reason in lib.metadata["not_offloaded"][0]
    inputs = example_inputs(model, seed=0)
    outputs = lib.run(*inputs.values())
    if _is_qdq(model):
        step = 4.0 / 127  # the output's quantization step (partition_near_misses._SCALE)
        for got, want in zip(outputs, _qdq_reference(model, inputs), strict=True):
            assert np.abs(got - want).max() <= QDQ_STEPS * step + 1e-6
    else:
        assert_outputs_close(outputs, onnxruntime_outputs(model, inputs))


@pytest.mark.parametrize("qdq", [False, True], ids=["float", "int8"])
def test_unchanged_control_is_offloaded(qdq):
    report = PartitionReport()
    partition_for_tiny(to_relax(mhsa(qdq=qdq))[0], report)
    assert report.offloaded == ["tvm_tiny_mhsa_0"]
    assert report.rejected == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_and_left_to_tvm(case):
    build, reason = CASES[case]
    _check_falls_back(build(), reason, f"near_miss_{case}")


def test_rejected_beyond_the_analysis_bound(monkeypatch):
    """Scores larger than the tracer's bound are not analyzed (it holds one int64 per element);
    the bound is lowered below this model's 2·8·8 scores instead of building a huge model."""
    monkeypatch.setattr(attention_match, "MAX_TRACED_ELEMENTS", 64)
    _check_falls_back(mhsa(), "attention scores [1, 2, 8, 8] have more than 64 elements",
                      "near_miss_scores_bound")
