"""int8 models as users export them: PyTorch's TorchScript and dynamo exporters, then
``tvm_tiny.quantize`` (onnxruntime static QDQ), then ``tvm_tiny.build``.

Each model must run in integers everywhere (no fake-quant region left), offload its attention,
fit the STM32L4, and stay within the int8 issue's bars against onnxruntime's reference QDQ
semantics: at most 4 output steps, a mean of at most 0.5, and for the classifier the same
class on every input.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import onnx
import pytest

import tvm_tiny
from tvm_tiny.testing.accuracy import compare_with_onnxruntime

torch = pytest.importorskip("torch")

EXPORTERS = ["torchscript", "dynamo"]


class Encoder(torch.nn.Module):
    """``nn.TransformerEncoderLayer`` (post-LN, GELU FFN), S=16 E=64 H=4."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True,
                                                      activation="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class HybridClassifier(torch.nn.Module):
    """Conv stem (BatchNorm, ReLU, depthwise, ReLU6, pointwise) → tokens → encoder → mean →
    linear head: the hybrid conv + attention classifier shape."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU6(),
                                  nn.Conv2d(16, 32, 1))
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(1))


MODELS = {"encoder": (Encoder, (1, 16, 64)), "hybrid": (HybridClassifier, (1, 3, 16, 16))}


def _export(name: str, exporter: str, path: str) -> onnx.ModelProto:
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the dynamo exporter needs onnxscript (the torch extra installs it)")
    torch.manual_seed(0)
    cls, shape = MODELS[name]
    module = cls().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*shape),), path, dynamo=exporter == "dynamo",
                          opset_version=18 if exporter == "dynamo" else 17, verbose=False)
    return onnx.load(path)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_int8_model_runs_in_integers_within_the_bars(name: str, exporter: str,
                                                              tmp_path: object) -> None:
    model = _export(name, exporter, str(tmp_path / f"{name}.onnx"))
    shape = MODELS[name][1]
    rng = np.random.default_rng(0)
    qdq = tvm_tiny.quantize(model, [rng.standard_normal(shape).astype(np.float32)
                                    for _ in range(16)])
    lib = tvm_tiny.build(qdq, target="host", name=f"{name}_{exporter}")
    meta = lib.metadata
    assert meta["not_integerized"] == [] and meta["not_offloaded"] == []
    assert len(meta["offloaded"]) == 1 and meta["linear_s8"]
    inputs = [[rng.standard_normal(shape).astype(np.float32)] for _ in range(20)]
    stats = compare_with_onnxruntime(qdq, lib.run, inputs, classifier=name == "hybrid")
    print(f"{name} ({exporter}): {stats.summary()}")
    assert stats.max_steps <= 4 and stats.mean_steps <= 0.5, stats.summary()
    assert stats.top1_agreement in (None, 1.0), stats.summary()
    tvm_tiny.build(qdq, target="stm32l4", name=f"{name}_{exporter}")  # fits, or raises
