"""``tvm_tiny.quantize``: a thin convenience over ``onnxruntime.quantization.quantize_static``.

Calibration is onnxruntime's (MinMax by default); nothing is re-implemented here. The result is
the QDQ format tvm_tiny's int8 path consumes: QInt8 activations (per-tensor) and QInt8 weights
(per-tensor, or per output channel with ``per_channel=True``).

onnxruntime logs advice through the root logger that does not apply to this use; the few
messages in :data:`_IGNORED_ADVICE` are dropped for the duration of the call (each says why).
Every other onnxruntime warning still reaches the user.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx

from tvm_tiny.ir.errors import ModelError

# onnxruntime.quantization warns through ``logging.warning`` (the root logger). These messages
# concern nothing the caller did wrong and nothing tvm_tiny would do differently:
_IGNORED_ADVICE = (
    # Logged twice for every model not run through ``quant_pre_process``. That optional step
    # (symbolic shape inference, onnxruntime graph optimizations) rewrites the graph; quantize
    # quantizes the model as given, and quantize_static runs ONNX shape inference itself.
    re.compile(r"^Please consider (to run )?pre-processing before quantization\."),
    # per_channel=True: a 1-D weight (LayerNormalization's scale) has no output-channel axis, so
    # onnxruntime keeps one scale for the tensor, which is what a 1-D weight needs.
    re.compile(r"^Axis -?\d+ is out-of-range for weight '.*' with rank 1$"),
)


class _DropIgnoredAdvice(logging.Filter):
    """Root-logger filter dropping onnxruntime.quantization's :data:`_IGNORED_ADVICE` alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in Path(record.pathname).parts:
            return True
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in _IGNORED_ADVICE)


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
        root, advice = logging.getLogger(), _DropIgnoredAdvice()
        root.addFilter(advice)
        try:
            quantize_static(
                str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                per_channel=per_channel, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        finally:
            root.removeFilter(advice)
        return onnx.load(str(dst))
