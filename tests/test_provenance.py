"""Provenance of generated C: the model's SHA-256, the call, initializer names by value."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.ir.provenance import (
    InitializerNames,
    Provenance,
    build_call,
    c_block_comment,
    initializer_names,
    model_sha256,
)


def _model_with(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_model_sha256_is_the_full_hash_of_the_model_as_given(data_dir: Path):
    path = data_dir / "mha_torch.onnx"
    assert model_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_sha256(str(path)) == model_sha256(path)
    proto = onnx.load(str(path))
    assert len(model_sha256(proto)) == 64 and model_sha256(proto) == model_sha256(proto)
    mod, _ = to_relax(path)
    assert model_sha256(mod) == hashlib.sha256(mod.script(show_meta=True).encode()).hexdigest()
    with pytest.raises(TypeError):
        model_sha256(3)


def test_build_call_reads_as_the_python_call():
    assert build_call("tvm_tiny.build", Path("m.onnx"), target="stm32l4", offload=False) == \
        'tvm_tiny.build("m.onnx", target="stm32l4", offload=False)'
    assert build_call("tvm_tiny.build", _model_with({})) == \
        'tvm_tiny.build(<onnx.ModelProto graph "g">)'


def test_initializer_names_by_value_exact_or_transposed_never_invented():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    names = InitializerNames.of_onnx(_model_with({"w": w, "w_copy": w.copy(),
                                                  "b": np.ones(3, np.float32)}))
    assert names.describe(w) == "ONNX initializer 'w' = 'w_copy'"
    assert names.describe(w.T) == "ONNX initializer 'w' = 'w_copy' transposed"
    assert names.describe(np.ones(3, np.float32)) == "ONNX initializer 'b'"
    # Same bytes, other dtype or shape: not the same initializer.
    assert "no ONNX initializer" in names.describe(np.ones(3, np.float64))
    assert "no ONNX initializer" in names.describe(w.reshape(3, 2) + 1)
    assert "not recoverable" in initializer_names(to_relax(_model_with({}))[0]).describe(w)


def test_header_is_deterministic_comment_without_closing_marker():
    p = Provenance("1.0", "0.27", "ab" * 32, "stm32l4", 'f("a*/b.onnx")')
    text = p.c_comment("title", ["x " * 80])
    assert text == p.c_comment("title", ["x " * 80])
    assert text.startswith("/*\n * title\n") and text.endswith(" */\n")
    assert text.count("*/") == 1
    assert all(len(line) <= 100 for line in text.splitlines())
    assert c_block_comment(["", "a"]) == "/*\n *\n * a\n */\n"
