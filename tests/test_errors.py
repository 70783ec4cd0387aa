"""Clear errors: each names the thing at fault (input and axis, operator, file, tensor, constant)
so a user can fix the model without reading tvm_tiny's source."""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_tiny
from tvm_tiny.ir.errors import ModelError, RunError, TinyError, UnsupportedOperatorError

OPSET = 17


def _single_op_model(op_type: str, dims: list[int | str | None], *, input_name: str = "x",
                     node_name: str = "the_node") -> onnx.ModelProto:
    """``y = <op_type>(x)`` built with onnx.helper (dims: int, dim_param string, or None)."""
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    node = helper.make_node(op_type, [input_name], ["y"], name=node_name)
    graph = helper.make_graph([node], "single_op", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=8)


def test_errors_share_a_base_class():
    for error in (ModelError, UnsupportedOperatorError, RunError, tvm_tiny.MemoryPlanError,
                  tvm_tiny.ToolchainError):
        assert issubclass(error, TinyError)
    assert issubclass(UnsupportedOperatorError, ModelError)


@pytest.mark.parametrize(
    ("dims", "axis", "dim"),
    [(["batch", 8, 16], 0, "batch"), ([1, "seq", 16], 1, "seq"), ([1, 8, None], 2, "?")],
    ids=["batch", "seq", "unnamed"],
)
def test_dynamic_input_dimension(dims, axis, dim):
    model = _single_op_model("Relu", dims, input_name="tokens")
    with pytest.raises(ModelError) as err:
        tvm_tiny.build(model)
    message = str(err.value)
    assert "'tokens'" in message
    assert f"axis {axis}" in message
    assert f"'{dim}'" in message


def test_zero_size_input_dimension():
    with pytest.raises(ModelError) as err:
        tvm_tiny.build(_single_op_model("Relu", [1, 0, 16], input_name="tokens"))
    message = str(err.value)
    assert "'tokens'" in message and "zero-size" in message and "axis 1" in message


def test_unsupported_operator():
    model = _single_op_model("FooBar", [1, 8], node_name="my_foobar")
    with pytest.raises(UnsupportedOperatorError) as err:
        tvm_tiny.build(model)
    message = str(err.value)
    assert "FooBar" in message
    assert "my_foobar" in message


def test_unsupported_model_type():
    with pytest.raises(ModelError, match="int"):
        tvm_tiny.build(42)


def test_unknown_target(data_dir):
    with pytest.raises(ValueError, match="no_such_board"):
        tvm_tiny.build(data_dir / "mhsa_helper_mul.onnx", target="no_such_board")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelError) as err:
        tvm_tiny.build(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9], ids=["empty", "half", "most"])
def test_truncated_file(fraction, data_dir, tmp_path):
    data = (data_dir / "mhsa_helper_mul.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ModelError) as err:
        tvm_tiny.build(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("as_str", [False, True], ids=["path", "str"])
def test_nonexistent_path(as_str, tmp_path):
    path = tmp_path / "no_such_model.onnx"
    with pytest.raises(ModelError) as err:
        tvm_tiny.build(str(path) if as_str else path)
    assert str(path) in str(err.value)


# -- run-time input checks -----------------------------------------------------------------------

NAME = "near_miss_cross_attention"  # two inputs: x [1, 8, 16] and m [1, 12, 16]


def test_run_wrong_input_count(built, model_inputs):
    lib = built(NAME)
    x, _ = model_inputs(NAME).values()
    for args in ((), (x,), (x, x, x)):
        with pytest.raises(RunError) as err:
            lib.run(*args)
        message = str(err.value)
        assert re.search(r"\bx\b", message) and re.search(r"\bm\b", message), message
        assert f"got {len(args)}" in message


def test_run_wrong_shape(built, model_inputs):
    x, m = model_inputs(NAME).values()
    with pytest.raises(RunError) as err:
        built(NAME).run(x, m[:, :8])
    message = str(err.value)
    assert "'m'" in message and "[1, 12, 16]" in message and "[1, 8, 16]" in message


def test_run_wrong_dtype(built, model_inputs):
    x, m = model_inputs(NAME).values()
    with pytest.raises(RunError) as err:
        built(NAME).run(x.astype(np.float64), m)
    message = str(err.value)
    assert "'x'" in message and "float32" in message and "float64" in message


def _with_nan(model: onnx.ModelProto, initializer: str, value: float = np.nan
              ) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for init in model.graph.initializer:
        if init.name == initializer:
            array = numpy_helper.to_array(init).copy()
            array.flat[3] = value
            init.CopyFrom(numpy_helper.from_array(array, initializer))
            return model
    raise KeyError(initializer)


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "tvm"])
def test_nan_weight_warns(offload, onnx_model):
    model = _with_nan(onnx_model("mhsa_helper_mul"), "attn.q.weight")
    expected = r"weight 'attn.q.weight' \(shape \[16, 16\]\) holds 1 NaN"
    with pytest.warns(RuntimeWarning, match=expected):
        tvm_tiny.build(model, offload=offload, name="nan_weight")


def test_nan_weight_warning_names_the_onnx_initializer(onnx_model):
    model = _with_nan(onnx_model("mhsa_helper_mul"), "attn.q.weight")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tvm_tiny.build(model, offload=False, name="nan_weight")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert messages, "no RuntimeWarning"
    assert any("attn.q.weight" in m for m in messages), messages


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_weight_in_offloaded_mhsa_still_runs(value, onnx_model, model_inputs):
    model = _with_nan(onnx_model("mhsa_helper_mul"), "attn.q.weight", value)
    with pytest.warns(RuntimeWarning):
        lib = tvm_tiny.build(model, name="non_finite_weight")
    assert len(lib.metadata["offloaded"]) == 1
    (y,) = lib.run(*model_inputs("mhsa_helper_mul").values())
    assert np.isnan(y).any()  # like onnxruntime, the NaN propagates
