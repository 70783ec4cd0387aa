"""The int8 convolution ``tt_conv_s8``: its integer program and a numpy golden model of it.

A convolution is a linear layer on its receptive fields, and the kernel computes it as one
(``kernels/conv/tt_conv_s8.c``: im2col blocks through ``tt_linear_s8``), so its integer program
*is* :class:`~tvm_tiny.reference.linear_s8.LoweredLinearS8` of the weight as a matrix:

- standard (groups 1): column ``o`` is ``W[o]`` flattened in (c, i, j) order, K = C*KH*KW;
- depthwise (groups = C = O): column ``c`` is ``W[c, 0]`` flattened, K = KH*KW, and channel
  ``c``'s rows are its own receptive fields only.

The input is padded with its zero point (the real 0 of the float graph's padding), so the
kernel bias ``b32 - zp_x colsum(W)`` stays exact at the borders. :func:`reference_conv_s8` runs
that program in numpy int64; for one-step layers it equals the integer Relax rule's golden
model :func:`tvm_tiny.reference.integer_norm.conv2d_s8` (a test checks it), the same
arithmetic TVM runs for the convolutions left to it. No TVM import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvm_tiny.reference.linear_s8 import (
    LinearS8Quant,
    LoweredLinearS8,
    lower_linear_s8,
    output_stage_s8,
    reference_linear_s8,
)

__all__ = [
    "ConvGeometry",
    "ConvS8Quant",
    "LoweredConvS8",
    "lower_conv_s8",
    "reference_conv_s8",
]


@dataclass(frozen=True)
class ConvGeometry:
    """Shape of one NCHW/OIHW convolution (dilation 1): input [N, C, H, W], kernel KH x KW."""

    batch: int
    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1

    def __post_init__(self) -> None:
        dims = (self.batch, self.in_channels, self.in_height, self.in_width, self.out_channels,
                *self.kernel, *self.strides)
        if min(dims) < 1 or min(self.padding) < 0:
            raise ValueError(f"int8 conv: invalid geometry {self}")
        if self.groups != 1 and not self.depthwise:
            raise ValueError(f"int8 conv: groups = {self.groups} with C = {self.in_channels}, "
                             f"O = {self.out_channels}; only 1 or depthwise (groups = C = O)")
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"int8 conv: kernel {self.kernel} larger than the padded input "
                             f"{self.in_height}x{self.in_width} (padding {self.padding})")

    @property
    def depthwise(self) -> bool:
        return self.groups != 1 and self.groups == self.in_channels == self.out_channels

    @property
    def pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.padding)

    @property
    def out_height(self) -> int:
        pt, _, pb, _ = self.padding
        return (self.in_height + pt + pb - self.kernel[0]) // self.strides[0] + 1

    @property
    def out_width(self) -> int:
        _, pl, _, pr = self.padding
        return (self.in_width + pl + pr - self.kernel[1]) // self.strides[1] + 1

    @property
    def reduction(self) -> int:
        """K: products summed per output."""
        per_group = 1 if self.depthwise else self.in_channels
        return per_group * self.kernel[0] * self.kernel[1]

    @property
    def macs(self) -> int:
        return (self.batch * self.out_channels * self.out_height * self.out_width
                * self.reduction)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.in_height, self.in_width)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)


@dataclass(frozen=True)
class ConvS8Quant:
    """One int8 conv of a QDQ graph: ``linear`` is its quantization with the weight as the
    [K, O] matrix described in the module docstring (``LinearS8Quant``: x, weight, bias, y,
    optional rounding point ``acc`` after the conv, ReLU/Clip bounds)."""

    geometry: ConvGeometry
    linear: LinearS8Quant


@dataclass(frozen=True)
class LoweredConvS8:
    """The integer program of one ``tt_conv_s8``: geometry and the lowered linear layer."""

    geometry: ConvGeometry
    linear: LoweredLinearS8


def weight_matrix(w_oihw: np.ndarray, groups: int) -> np.ndarray:
    """int8 OIHW weight → the [K, O] matrix of the module docstring (both forms)."""
    w = np.asarray(w_oihw)
    if w.ndim != 4:
        raise ValueError(f"int8 conv: weight of rank {w.ndim}, expected OIHW")
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def lower_conv_s8(q: ConvS8Quant) -> LoweredConvS8:
    """Derive the integer program; ValueError when the kernel cannot take the conv (K or the
    weight matrix not matching the geometry, and every reason of ``lower_linear_s8``)."""
    g = q.geometry
    k, n = q.linear.weight.values.shape
    if (k, n) != (g.reduction, g.out_channels):
        raise ValueError(f"int8 conv: weight matrix [{k}, {n}] does not match the geometry "
                         f"(K = {g.reduction}, O = {g.out_channels})")
    return LoweredConvS8(g, lower_linear_s8(q.linear))


def im2col(x_q: np.ndarray, g: ConvGeometry, zero_point: int) -> np.ndarray:
    """int64 receptive fields of ``x_q`` [N, C, H, W] padded with ``zero_point``: standard
    [N, P, C*KH*KW]; depthwise [N, C, P, KH*KW] (P = OH*OW, taps in (c, i, j) order)."""
    pt, pl, pb, pr = g.padding
    xp = np.pad(np.asarray(x_q, np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)),
                constant_values=zero_point)
    (kh, kw), (sh, sw) = g.kernel, g.strides
    oh, ow = g.out_height, g.out_width
    taps = [xp[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]
    stacked = np.stack(taps, axis=-1)  # [N, C, OH, OW, KH*KW]
    n, c = stacked.shape[:2]
    if g.depthwise:
        return stacked.reshape(n, c, oh * ow, kh * kw)
    return stacked.transpose(0, 2, 3, 1, 4).reshape(n, oh * ow, c * kh * kw)


def reference_conv_s8(x_q: np.ndarray, low: LoweredConvS8) -> np.ndarray:
    """What ``tt_conv_s8`` returns, bit for bit: int8 [N, O, OH, OW] of int8 ``x_q``."""
    x_q = np.asarray(x_q)
    g, lin = low.geometry, low.linear
    if x_q.dtype != np.int8 or x_q.shape != g.input_shape:
        raise TypeError(f"x_q must be int8 {g.input_shape}, got {x_q.dtype} {x_q.shape}")
    cols = im2col(x_q, g, lin.zp_x)
    if not g.depthwise:
        y = reference_linear_s8(cols.astype(np.int8), lin)  # [N, P, O]
        return np.ascontiguousarray(y.transpose(0, 2, 1).reshape(g.output_shape))
    acc = np.einsum("ncpk,kc->npc", cols - lin.zp_x, lin.weight.astype(np.int64))
    y = output_stage_s8(acc, lin)  # [N, P, C]
    return np.ascontiguousarray(y.transpose(0, 2, 1).reshape(g.output_shape))
