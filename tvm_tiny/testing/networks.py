"""Reference networks of the benchmark suite: deterministic ONNX builders, float32 and int8 QDQ.

Each builder states where its shape comes from. Shapes (S, E, H, P) of the attention follow the
Deeploy tiny-transformer paper's benchmark table (pulp-transformer ``Test/testConfig.yml``,
Deeploy test models, COINS'21 TinyRadar); where a source gives no FFN width or depth, the choice is
stated in the docstring. Weights are random (seeded), so these measure cost, not accuracy.

``build_network(name, dtype="int8")`` quantizes with :func:`tvm_tiny.quantize` (onnxruntime static
QDQ, MinMax) on 16 seeded calibration inputs drawn like :func:`network_inputs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from tvm_tiny.frontend.quantize import quantize
from tvm_tiny.testing.models import _gelu_erf, _Graph, _layer_norm, _linear, _mhsa_block, _tensor


def _encoder_layers(g: _Graph, x: str, seq: int, embed: int, heads: int, proj: int, ffn: int,
                    layers: int, prefix: str = "layers") -> str:
    """Post-LN encoder layers (as ``nn.TransformerEncoderLayer``), GELU FFN."""
    for i in range(layers):
        pre = f"{prefix}.{i}"
        attn = _mhsa_block(g, x, seq, embed, heads, proj, prefix=f"{pre}.attn")
        h = _layer_norm(g, g.op("Add", [x, attn.out], f"{pre}.res1"), embed, f"{pre}.norm1")
        t, _ = _linear(g, h, embed, ffn, f"{pre}.ffn1", True)
        t, _ = _linear(g, _gelu_erf(g, t, f"{pre}.gelu"), ffn, embed, f"{pre}.ffn2", True)
        x = _layer_norm(g, g.op("Add", [h, t], f"{pre}.res2"), embed, f"{pre}.norm2")
    return x


def _sequence_encoder(name: str, seq: int, embed: int, heads: int, proj: int, ffn: int,
                      layers: int, seed: int) -> onnx.ModelProto:
    g = _Graph(seed)
    y = _encoder_layers(g, "x", seq, embed, heads, proj, ffn, layers)
    g.rename(y, "y")
    return g.model([_tensor("x", [1, seq, embed])], [_tensor("y", [1, seq, embed])], name)


def eegformer(seed: int = 0) -> onnx.ModelProto:
    """EEGFormer-like seizure detector: S=81, E=32, H=8, P=32 (pulp-transformer testConfig),
    2 layers, FFN 128 (4E; the source gives no FFN width)."""
    return _sequence_encoder("eegformer", 81, 32, 8, 32, 128, 2, seed)


def ecgformer(seed: int = 0) -> onnx.ModelProto:
    """ECGFormer-like arrhythmia classifier: S=66, E=16, H=8, P=2 (pulp-transformer testConfig;
    Deeploy's ``Tests/Models/EEGFormer`` has the same shape), 1 layer, FFN 64 (4E)."""
    return _sequence_encoder("ecgformer", 66, 16, 8, 2, 64, 1, seed)


def tinyradar(seed: int = 0) -> onnx.ModelProto:
    """TinyRadar-like gesture transformer: S=32, E=64, H=4 (P=16), 2 layers, FFN 256 (4E).
    (The COINS'21 layer uses H=16, P=64; the issue's network uses H=4.)"""
    return _sequence_encoder("tinyradar", 32, 64, 4, 16, 256, 2, seed)


def deeploy_attention(seed: int = 0) -> onnx.ModelProto:
    """Deeploy ``Kernels/Integer/Attention`` test shape: S=16, E=64, H=8, P=8, one layer with
    FFN 128."""
    return _sequence_encoder("deeploy_attention", 16, 64, 8, 8, 128, 1, seed)


def _conv(g: _Graph, x: str, c_in: int, c_out: int, kernel: int, stride: int, pad: int,
          base: str) -> str:
    w = g.weight(f"{base}.weight", (c_out, c_in, kernel, kernel), c_in * kernel * kernel)
    b = g.const(f"{base}.bias", np.zeros(c_out, dtype=np.float32))
    return g.op("Conv", [x, w, b], base, kernel_shape=[kernel, kernel],
                strides=[stride, stride], pads=[pad] * 4)


def _tokens(g: _Graph, feature_map: str, channels: int, tokens: int, base: str) -> str:
    """[1, C, h, w] feature map → [1, h·w, C] token sequence."""
    flat = g.op("Reshape", [feature_map, g.shape(f"{base}.shape", [1, channels, tokens])],
                f"{base}.flat")
    return g.op("Transpose", [flat], f"{base}.tokens", perm=[0, 2, 1])


def cct(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """CCT-like compact convolutional transformer (Deeploy ``Models/CCT``: S=64, E=128, H=1,
    P=192, FFN 512, 1 layer). Tokenizer: two conv3x3 + ReLU + maxpool(3, stride 2) stages take a
    [1, 3, 32, 32] image to 8x8 = 64 tokens of 128 channels; mean pooling over tokens (CCT uses
    attention pooling) and a linear classifier."""
    g = _Graph(seed)
    t = g.op("Relu", [_conv(g, "x", 3, 64, 3, 1, 1, "tok.conv1")], "tok.relu1")
    t = g.op("MaxPool", [t], "tok.pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    t = g.op("Relu", [_conv(g, t, 64, 128, 3, 1, 1, "tok.conv2")], "tok.relu2")
    t = g.op("MaxPool", [t], "tok.pool2", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    x = _tokens(g, t, 128, 64, "tok")
    x = _encoder_layers(g, x, 64, 128, 1, 192, 512, 1)
    pooled = g.op("ReduceMean", [x], "pool", axes=[1], keepdims=0)
    logits, _ = _linear(g, pooled, 128, classes, "head", True)
    g.rename(logits, "y")
    return g.model([_tensor("x", [1, 3, 32, 32])], [_tensor("y", [1, classes])], "cct")


def tiny_vit(seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    """A tiny ViT: [1, 3, 16, 16] image, 4x4 patch conv to E=48 (16 patches), a learned class
    token (S=17), positional embedding, 2 layers with H=3 (P=16), FFN 96, classifier on the class
    token. Shape chosen for the smallest boards; no published source."""
    g = _Graph(seed)
    patches = _tokens(g, _conv(g, "x", 3, 48, 4, 4, 0, "patch"), 48, 16, "patch")
    cls = g.const("cls_token", (0.02 * g.rng.standard_normal((1, 1, 48))).astype(np.float32))
    x = g.op("Concat", [cls, patches], "with_cls", axis=1)
    pos = g.const("pos_embed", (0.02 * g.rng.standard_normal((1, 17, 48))).astype(np.float32))
    x = g.op("Add", [x, pos], "embedded")
    x = _encoder_layers(g, x, 17, 48, 3, 16, 96, 2)
    cls_out = g.op("Gather", [x, g.const("cls_index", np.asarray(0, dtype=np.int64))],
                   "cls_out", axis=1)
    logits, _ = _linear(g, cls_out, 48, classes, "head", True)
    g.rename(logits, "y")
    return g.model([_tensor("x", [1, 3, 16, 16])], [_tensor("y", [1, classes])], "tiny_vit")


@dataclass(frozen=True)
class NetworkSpec:
    """A reference network: its builder and the attention shape it stands for."""

    builder: Callable[..., onnx.ModelProto]
    seq: int
    embed: int
    heads: int
    proj: int
    layers: int


NETWORKS: dict[str, NetworkSpec] = {
    "eegformer": NetworkSpec(eegformer, 81, 32, 8, 32, 2),
    "ecgformer": NetworkSpec(ecgformer, 66, 16, 8, 2, 1),
    "tinyradar": NetworkSpec(tinyradar, 32, 64, 4, 16, 2),
    "deeploy_attention": NetworkSpec(deeploy_attention, 16, 64, 8, 8, 1),
    "cct": NetworkSpec(cct, 64, 128, 1, 192, 1),
    "tiny_vit": NetworkSpec(tiny_vit, 17, 48, 3, 16, 2),
}


def network_inputs(model: onnx.ModelProto, seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal inputs matching the model's (static) input shapes."""
    rng = np.random.default_rng(seed)
    shapes = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def build_network(name: str, dtype: str = "float32", seed: int = 0) -> onnx.ModelProto:
    """The reference network ``name`` in float32 or int8 QDQ."""
    try:
        spec = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network '{name}'; known: {', '.join(NETWORKS)}") from None
    model = spec.builder(seed=seed)
    if dtype == "float32":
        return model
    if dtype != "int8":
        raise ValueError(f"dtype must be 'float32' or 'int8', got '{dtype}'")
    calibration = [network_inputs(model, seed=1000 + i)[0] for i in range(16)]
    return quantize(model, calibration)
