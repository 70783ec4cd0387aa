"""Hybrid Neural-ODE + attention networks (issue #8): deterministic ONNX builders.

Where the design comes from: the FPGA Neural-ODE paper behind issue #8 builds a small image
classifier from a convolutional backbone that is *applied repeatedly with shared weights* (an
ODE block integrated with explicit Euler steps, so depth costs compute but no extra parameters),
followed by multi-head self-attention over the feature map and a classifier, trained with int8
quantization-aware training.

What is chosen here (weights are random and seeded, so these models measure cost, not accuracy;
int8 is post-training static QDQ through :func:`tvm_tiny.quantize`, not QAT):

* **stem**: Conv3x3 + ReLU stages (stride 2) taking the image to a ``grid x grid`` feature map
  of ``channels`` channels;
* **ODE block**: ``steps`` explicit Euler steps ``x <- x + h * f(x)`` with ``h = 1/steps``
  (integration over t in [0, 1]) and ``f = Conv3x3 -> per-channel affine (inference-form
  BatchNorm as Mul/Add) -> ReLU -> Conv3x3``. Every step uses the SAME initializers (one set of
  weight tensors referenced by every step's nodes): the shared-weight backbone;
* **attention**: the feature map flattened to ``grid*grid`` tokens of ``channels`` channels, then
  post-LN encoder layers (:func:`tvm_tiny.testing.networks._encoder_layers`: MHSA, LayerNorm,
  GELU FFN);
  each MHSA is offloaded to tvm_tiny's kernels, the convolutions go through TVM;
* **classifier**: mean pooling over tokens and a linear layer (MatMul + Add).

Sizes (:data:`SIZES`): ``"small"`` is the test model, [1, 3, 16, 16] -> 8x8 = 64 tokens x 32
channels, H=4 (P=8), 3 Euler steps, one encoder layer with FFN 64 (~29 K parameters).
``"tinyformer"`` is TinyFormer-sized (about 0.7 M parameters, the scale TinyFormer deploys on an
STM32F746 with 320 KiB SRAM and 1 MiB flash): [1, 3, 32, 32] -> two stride-2 stems (64, 128
channels) -> 8x8 = 64 tokens x 128 channels, 3 Euler steps, two encoder layers with H=4 (P=32)
and FFN 384 (~0.70 M parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from tvm_tiny.frontend.quantize import quantize
from tvm_tiny.testing.models import _Graph, _linear, _tensor
from tvm_tiny.testing.networks import _conv, _encoder_layers, _tokens

__all__ = ["SIZES", "HybridSize", "calibration_inputs", "hybrid_ode", "hybrid_ode_int8",
           "parameter_count"]


@dataclass(frozen=True)
class HybridSize:
    """Shape of one hybrid Neural-ODE + attention model."""

    image: int  # input is [1, 3, image, image]
    stem: tuple[int, ...]  # output channels of each stride-2 Conv3x3 + ReLU stage
    heads: int
    ffn: int
    layers: int  # encoder layers after the ODE block
    steps: int  # Euler steps of the shared-weight ODE block

    @property
    def channels(self) -> int:
        return self.stem[-1]

    @property
    def grid(self) -> int:
        return self.image // 2 ** len(self.stem)

    @property
    def tokens(self) -> int:
        return self.grid * self.grid


SIZES: dict[str, HybridSize] = {
    "small": HybridSize(image=16, stem=(32,), heads=4, ffn=64, layers=1, steps=3),
    "tinyformer": HybridSize(image=32, stem=(64, 128), heads=4, ffn=384, layers=2, steps=3),
}


def _ode_function(g: _Graph, x: str, channels: int, w1: str, b1: str, scale: str, shift: str,
                  w2: str, b2: str, base: str) -> str:
    """f(x) = Conv3x3 -> per-channel affine (inference BatchNorm) -> ReLU -> Conv3x3, on the
    shared initializers ``w1 .. b2``."""
    conv = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}
    t = g.op("Conv", [x, w1, b1], f"{base}.conv1", **conv)
    t = g.op("Add", [g.op("Mul", [t, scale], f"{base}.norm.mul"), shift], f"{base}.norm")
    t = g.op("Relu", [t], f"{base}.relu")
    return g.op("Conv", [t, w2, b2], f"{base}.conv2", **conv)


def hybrid_ode(seed: int = 0, size: str | HybridSize = "small", classes: int = 10,
               steps: int | None = None) -> onnx.ModelProto:
    """The float32 hybrid Neural-ODE + MHSA classifier (module docstring): input ``x``
    [1, 3, image, image], output ``y`` [1, classes]. ``steps`` overrides the size's Euler steps."""
    spec = SIZES[size] if isinstance(size, str) else size
    n_steps = spec.steps if steps is None else steps
    if n_steps < 1:
        raise ValueError(f"steps must be >= 1, got {n_steps}")
    c = spec.channels
    if c % spec.heads:
        raise ValueError(f"channels {c} not divisible by heads {spec.heads}")
    g = _Graph(seed)

    t, c_in = "x", 3
    for i, c_out in enumerate(spec.stem):
        t = g.op("Relu", [_conv(g, t, c_in, c_out, 3, 2, 1, f"stem.{i}")], f"stem.{i}.relu")
        c_in = c_out

    # One set of initializers for every Euler step: the shared-weight backbone.
    w1 = g.weight("ode.conv1.weight", (c, c, 3, 3), 9 * c)
    b1 = g.const("ode.conv1.bias", (0.1 * g.rng.standard_normal(c)).astype(np.float32))
    gamma = 1.0 + 0.1 * g.rng.standard_normal(c)
    beta = 0.1 * g.rng.standard_normal(c)
    mean = 0.1 * g.rng.standard_normal(c)
    var = 1.0 + 0.1 * np.abs(g.rng.standard_normal(c))
    inv = gamma / np.sqrt(var + 1e-5)  # BatchNorm folded to its inference-form affine
    scale = g.const("ode.norm.scale", inv.reshape(c, 1, 1).astype(np.float32))
    shift = g.const("ode.norm.shift", (beta - mean * inv).reshape(c, 1, 1).astype(np.float32))
    w2 = g.weight("ode.conv2.weight", (c, c, 3, 3), 9 * c)
    b2 = g.const("ode.conv2.bias", (0.1 * g.rng.standard_normal(c)).astype(np.float32))
    h = g.const("ode.h", np.asarray(1.0 / n_steps, dtype=np.float32))
    for k in range(n_steps):
        f = _ode_function(g, t, c, w1, b1, scale, shift, w2, b2, f"ode.step{k}")
        t = g.op("Add", [t, g.op("Mul", [f, h], f"ode.step{k}.hf")], f"ode.step{k}.x")

    x = _tokens(g, t, c, spec.tokens, "tok")
    x = _encoder_layers(g, x, spec.tokens, c, spec.heads, c // spec.heads, spec.ffn,
                        spec.layers)
    pooled = g.op("ReduceMean", [x], "pool", axes=[1], keepdims=0)
    logits, _ = _linear(g, pooled, c, classes, "head", True)
    g.rename(logits, "y")
    name = f"hybrid_ode_{size}" if isinstance(size, str) else "hybrid_ode"
    return g.model([_tensor("x", [1, 3, spec.image, spec.image])], [_tensor("y", [1, classes])],
                   name)


def calibration_inputs(model: onnx.ModelProto, count: int = 16, seed: int = 1000
                       ) -> list[np.ndarray]:
    """``count`` seeded standard-normal inputs shaped like the model's input."""
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return [np.random.default_rng(seed + i).standard_normal(shape).astype(np.float32)
            for i in range(count)]


def hybrid_ode_int8(seed: int = 0, size: str | HybridSize = "small", classes: int = 10,
                    steps: int | None = None, calibration: int = 16) -> onnx.ModelProto:
    """:func:`hybrid_ode` quantized to int8 QDQ by :func:`tvm_tiny.quantize` (onnxruntime static
    QDQ, MinMax, per-tensor) on ``calibration`` seeded inputs."""
    model = hybrid_ode(seed, size, classes, steps)
    return quantize(model, calibration_inputs(model, calibration))


def parameter_count(model: onnx.ModelProto) -> int:
    """Number of float weight elements (shape initializers excluded); a shared initializer
    counts once."""
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT)
