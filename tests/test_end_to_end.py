"""End to end: ONNX → ``tvm_tiny.build(target="host")`` → generated C run on the host, against
onnxruntime.

Every positive model of tests/data must have each of its MHSA blocks offloaded and match
onnxruntime; ``offload=False`` (TVM alone, same AOT path) must give the same outputs with nothing
offloaded. Fresh torch exports with other shapes check that nothing is tied to the committed
files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from conftest import (
    INPUT_SEED,
    OUTPUT_RTOL,
    POSITIVE_MODELS,
    assert_outputs_close,
    onnxruntime_outputs,
)

import tvm_tiny
from examples import models

POSITIVE = pytest.mark.parametrize("name", sorted(POSITIVE_MODELS))


def _input_shape(model: onnx.ModelProto) -> list[int]:
    (x,) = [i for i in model.graph.input if i.name == "x"]
    return [d.dim_value for d in x.type.tensor_type.shape.dim]


@POSITIVE
def test_every_mhsa_is_offloaded(name, built, onnx_model):
    meta = built(name).metadata
    expected = POSITIVE_MODELS[name]
    assert meta["target"] == "host"
    assert meta["not_offloaded"] == []
    offloaded = meta["offloaded"]
    assert [o["name"] for o in offloaded] == [f"tvm_tiny_mhsa_{i}" for i in range(expected)]
    _, seq, embed = _input_shape(onnx_model(name))
    for entry in offloaded:
        assert (entry["seq"], entry["embed"], entry["dtype"]) == (seq, embed, "float32")
        assert entry["heads"] >= 1 and entry["proj"] >= 1
        assert entry["scratch_bytes"] > 0
        assert entry["params_bytes"] > 0
        assert entry["peak_bytes"] >= entry["scratch_bytes"]


@POSITIVE
def test_matches_onnxruntime(name, built, model_inputs, reference):
    outputs = built(name).run(*model_inputs(name).values())
    assert_outputs_close(outputs, reference(name))


@POSITIVE
def test_repeated_runs_are_identical(name, built, model_inputs):
    """The entry point keeps no state between runs (caller arena, static arena or not)."""
    lib = built(name)
    inputs = list(model_inputs(name).values())
    first = lib.run(*inputs)
    second = lib.run(*inputs)
    arena = np.zeros(lib.metadata["arena_bytes"], np.uint8)
    third = lib.run(*inputs, arena=arena)
    for a, b, c in zip(first, second, third):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@POSITIVE
def test_without_offload_same_outputs(name, built, model_inputs, reference):
    baseline = built(name, offload=False)
    assert baseline.metadata["offloaded"] == []
    assert not any("tvm_tiny_mhsa" in path for path in baseline.files)
    inputs = list(model_inputs(name).values())
    outputs = baseline.run(*inputs)
    assert_outputs_close(outputs, built(name).run(*inputs))
    assert_outputs_close(outputs, reference(name))


FRESH_EXPORTS: dict[str, tuple[Callable[[], onnx.ModelProto], int]] = {
    # 3 heads of 8 (neither the committed 16x32x4 nor a power of two), one layer.
    "encoder_torch-s12-e24-h3": (lambda: models.encoder_torch(12, 24, 3, layers=1), 1),
    # seq not a multiple of the default 8-row block, 4 heads of 3.
    "mha_torch-s5-e12-h4": (lambda: models.mha_torch(5, 12, 4), 1),
    # proj (4) != embed/heads (8).
    "mhsa_torch_linear-s12-e24-h3-p4": (lambda: models.mhsa_torch_linear(12, 24, 3, 4), 1),
    # proj (6) > embed/heads (5), odd sizes.
    "mhsa_torch_linear-s7-e10-h2-p6": (lambda: models.mhsa_torch_linear(7, 10, 2, 6), 1),
}


# The legacy TorchScript exporter traces Python shape checks and warns that it is deprecated.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
@pytest.mark.parametrize("case", sorted(FRESH_EXPORTS))
def test_fresh_torch_export(case):
    make, expected = FRESH_EXPORTS[case]
    model = make()
    inputs = models.example_inputs(model, seed=INPUT_SEED)
    lib = tvm_tiny.build(model, target="host")
    meta = lib.metadata
    assert len(meta["offloaded"]) == expected, meta["not_offloaded"]
    assert meta["not_offloaded"] == []
    _, seq, embed = _input_shape(model)
    assert all((o["seq"], o["embed"]) == (seq, embed) for o in meta["offloaded"])
    assert_outputs_close(lib.run(*inputs.values()), onnxruntime_outputs(model, inputs))


def test_relax_module_input(relax_module, model_inputs, reference):
    """``build`` also takes the Relax IRModule the frontend produces."""
    lib = tvm_tiny.build(relax_module("mhsa_helper_proj"), name="proj_from_relax")
    assert lib.name == "proj_from_relax"
    assert len(lib.metadata["offloaded"]) == 1
    outputs = lib.run(*model_inputs("mhsa_helper_proj").values())
    assert_outputs_close(outputs, reference("mhsa_helper_proj"), OUTPUT_RTOL)
