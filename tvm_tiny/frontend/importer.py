"""Frontend: ONNX model (object or file) or Relax IRModule → a static-shape Relax IRModule.

The checks here run before TVM's importer so that a user gets an error that names the input,
node or operator at fault instead of a traceback from deep inside the importer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
import tvm
from onnx import numpy_helper
from tvm.relax.frontend.onnx import from_onnx
from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

from tvm_tiny.ir.cformat import warn_non_finite
from tvm_tiny.ir.errors import ModelError, UnsupportedOperatorError
from tvm_tiny.ir.relax_compat import constant_value, is_constant, shape_dims, tensor_type

ModelLike = Union[onnx.ModelProto, str, os.PathLike, tvm.IRModule]


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and validate an ONNX file; a corrupt or truncated file raises :class:`ModelError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}")
    size = path.stat().st_size
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError/RuntimeWarning subclasses; keep message
        raise ModelError(
            f"{path} ({size} bytes) is not a readable ONNX model (corrupt or truncated?): {err}"
        ) from err
    if not model.graph.node:
        raise ModelError(f"{path} ({size} bytes) holds no graph nodes (corrupt or truncated?)")
    return model


def _graph_input_names(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [inp for inp in model.graph.input if inp.name not in initializers]


def check_onnx_static_shapes(model: onnx.ModelProto) -> None:
    """Reject graph inputs whose shapes are dynamic, symbolic or zero-sized, naming the input."""
    for inp in _graph_input_names(model):
        ttype = inp.type.tensor_type
        if not ttype.HasField("shape"):
            raise ModelError(f"model input '{inp.name}' has no shape; tvm_tiny needs static shapes")
        dims = []
        for axis, dim in enumerate(ttype.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
                continue
            if dim.HasField("dim_value"):
                raise ModelError(
                    f"model input '{inp.name}' has a zero-size dimension at axis {axis}"
                )
            name = dim.dim_param or "?"
            raise ModelError(
                f"model input '{inp.name}' has a dynamic dimension '{name}' at axis {axis}; "
                "tvm_tiny compiles static shapes only (fix it when exporting, e.g. "
                "onnx.tools.update_model_dims, or export without dynamic_axes)"
            )


def check_onnx_operators(model: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedOperatorError` naming every node TVM's importer cannot convert."""
    known = set(_get_convert_map()) | {"If"}
    missing: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in known:
            missing.setdefault(node.op_type, []).append(node.name or node.output[0])
    if missing:
        detail = "; ".join(f"{op} (nodes: {', '.join(names[:3])})" for op, names in missing.items())
        raise UnsupportedOperatorError(
            f"operators not supported by tvm_tiny or TVM's ONNX frontend: {detail}"
        )


def warn_non_finite_onnx_weights(model: onnx.ModelProto) -> None:
    """Warn once per ONNX initializer holding NaN/Inf, naming the initializer."""
    for init in model.graph.initializer:
        warn_non_finite(init.name, numpy_helper.to_array(init))


def warn_non_finite_relax_weights(mod: tvm.IRModule) -> None:
    """Warn once per Relax constant of ``main`` holding NaN/Inf, naming the var that uses it."""
    seen: list[object] = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            args = getattr(binding.value, "args", [])
            for arg in args:
                if is_constant(arg) and not any(arg.same_as(c) for c in seen):
                    seen.append(arg)
                    warn_non_finite(f"constant used by '{binding.var.name}'", constant_value(arg))


def check_relax_static_shapes(mod: tvm.IRModule) -> None:
    """Every parameter of ``main`` must have a fully static, non-empty tensor shape."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise ModelError("the IRModule has no 'main' function")
    for param in mod["main"].params:
        ty = tensor_type(param)
        if ty is None:
            raise ModelError(f"main parameter '{param.name}' is not a tensor ({param.ty})")
        dims = shape_dims(ty)
        if not dims and ty.ndim != 0:
            raise ModelError(f"main parameter '{param.name}' has an unknown shape")
        for axis, dim in enumerate(dims):
            if not isinstance(dim, tvm.tirx.IntImm):
                raise ModelError(
                    f"main parameter '{param.name}' has a symbolic dimension '{dim}' at "
                    f"axis {axis}; tvm_tiny compiles static shapes only"
                )
            if int(dim) <= 0:
                raise ModelError(
                    f"main parameter '{param.name}' has a zero-size dimension at axis {axis}"
                )


def to_relax(model: ModelLike) -> tuple[tvm.IRModule, str]:
    """Import ``model`` into Relax and return (module, model name).

    ONNX weights become Relax constants (``keep_params_in_input=False``), which is what the
    partitioner needs to bind them into the offloaded functions.
    """
    if isinstance(model, tvm.IRModule):
        check_relax_static_shapes(model)
        warn_non_finite_relax_weights(model)
        return model, "model"
    if isinstance(model, (str, os.PathLike)):
        name = Path(model).stem
        model = load_onnx(model)
    elif isinstance(model, onnx.ModelProto):
        name = model.graph.name or "model"
    else:
        raise ModelError(
            f"unsupported model type {type(model).__name__}: pass an onnx.ModelProto, a path to "
            "an .onnx file or a Relax tvm.IRModule"
        )
    check_onnx_static_shapes(model)
    check_onnx_operators(model)
    warn_non_finite_onnx_weights(model)
    try:
        mod = from_onnx(model, keep_params_in_input=False)
    except Exception as err:  # the importer raises many types; re-raise with the model named
        raise ModelError(f"TVM's ONNX importer failed on model '{name}': {err}") from err
    check_relax_static_shapes(mod)
    return mod, name
