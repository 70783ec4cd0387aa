"""``tvm_tiny.quantize``: a thin convenience over ``onnxruntime.quantization.quantize_static``.

Calibration is onnxruntime's (MinMax by default); nothing is re-implemented here. The result is
the QDQ format tvm_tiny's int8 path consumes: QInt8 activations (per-tensor) and QInt8 weights
(per-tensor, or per output channel with ``per_channel=True``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx

from tvm_tiny.ir.errors import ModelError


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over an iterable of input dicts (or arrays)."""

    def __init__(self, model: onnx.ModelProto,
                 samples: Iterable[Mapping[str, np.ndarray] | np.ndarray]) -> None:
        initializers = {init.name for init in model.graph.initializer}
        names = [i.name for i in model.graph.input if i.name not in initializers]
        feeds = []
        for sample in samples:
            if isinstance(sample, Mapping):
                feeds.append({k: np.asarray(v) for k, v in sample.items()})
            elif len(names) == 1:
                feeds.append({names[0]: np.asarray(sample)})
            else:
                raise ModelError(
                    f"model has {len(names)} inputs ({', '.join(names)}); pass each calibration "
                    "sample as a dict {input name: array}"
                )
        if not feeds:
            raise ModelError("quantize needs at least one calibration sample")
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize(model: onnx.ModelProto | str | os.PathLike,
             calibration_inputs: Iterable[Mapping[str, np.ndarray] | np.ndarray], *,
             per_channel: bool = False) -> onnx.ModelProto:
    """Quantize a float32 ONNX model to int8 QDQ with onnxruntime's static quantization.

    Parameters
    ----------
    model
        The float model (object or path).
    calibration_inputs
        Representative inputs: arrays (single-input models) or ``{name: array}`` dicts.
    per_channel
        Quantize weights per output channel instead of per tensor.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    reader = _Reader(model, calibration_inputs)
    with tempfile.TemporaryDirectory(prefix="tvm_tiny_quant_") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(model, str(src))
        quantize_static(
            str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return onnx.load(str(dst))
