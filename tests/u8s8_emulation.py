"""ONNX Runtime's U8S8 convolution arithmetic on x86 without VNNI, in numpy.

MLAS runs QLinearConv as an NHWC im2col GEMM (K ordered kernel row, kernel column, channel)
and, on AVX2 and AVX-512BW without VNNI, multiplies u8 activations by s8 weights with
VPMADDUBSW: each adjacent pair of products is added in int16 with signed saturation, then
VPMADDWD widens pairs of those into int32 exactly. Padding holds the activation zero point.
`pair_sums` returns the int32 accumulators both ways, exact and saturating, so a test sees
which outputs a CPU without VNNI would get wrong.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

INT16 = (-32768, 32767)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.i
    return default


def im2col_nhwc(x: np.ndarray, kernel: tuple[int, int], pads, strides, pad_value: int) -> np.ndarray:
    """N x C x H x W -> (N * OH * OW) x (KH * KW * C), channel fastest."""
    n, c, h, w = x.shape
    kh, kw = kernel
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    oh = (h + top + bottom - kh) // strides[0] + 1
    ow = (w + left + right - kw) // strides[1] + 1
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=np.int32)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + strides[0] * oh:strides[0], j:j + strides[1] * ow:strides[1]]
            cols[:, :, :, i, j, :] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, kh * kw * c)


def pair_sums(a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact, saturating) int32 dot products of rows of `a` (u8) with rows of `w` (s8)."""
    if a.shape[1] % 2:  # MLAS pads K to a whole pair with zeros
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 0), (0, 1)))
    a, w = a.astype(np.int32), w.astype(np.int32)
    exact = np.zeros((len(a), len(w)), np.int64)
    saturating = np.zeros_like(exact)
    for k in range(0, a.shape[1], 2):
        pair = np.outer(a[:, k], w[:, k]) + np.outer(a[:, k + 1], w[:, k + 1])
        exact += pair
        saturating += np.clip(pair, *INT16)
    return exact, saturating


def quantized_convs(model: onnx.ModelProto):
    """For each Conv of a Q/DQ model: (conv node, name of its u8 input tensor, s8 weights,
    activation zero point)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if x_dq is None or w_dq is None or "DequantizeLinear" not in (x_dq.op_type, w_dq.op_type):
            continue
        weights = inits.get(w_dq.input[0])
        if weights is None:  # weights behind a QuantizeLinear node
            weights = inits[producers[w_dq.input[0]].input[0]]
        found.append((node, x_dq.input[0], weights, int(inits[x_dq.input[2]])))
    return found


def saturated_outputs(model: onnx.ModelProto, activations: dict[str, np.ndarray]) -> dict[str, float]:
    """Per Conv, the fraction of its int32 accumulators that VPMADDUBSW gets wrong."""
    wrong = {}
    for node, x_name, weights, zero_point in quantized_convs(model):
        kh, kw = weights.shape[2:]
        pads = _attr(node, "pads", [0, 0, 0, 0])
        pads = (pads[0], pads[1], pads[2], pads[3])
        cols = im2col_nhwc(activations[x_name], (kh, kw), pads, _attr(node, "strides", [1, 1]),
                           zero_point)
        exact, saturating = pair_sums(cols, weights.transpose(0, 2, 3, 1).reshape(len(weights), -1))
        wrong[node.name] = float((exact != saturating).mean())
    return wrong


def u8_activations(model: onnx.ModelProto, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Every Conv's u8 input, read from the model run with Q/DQ as written (exact arithmetic)."""
    from onnx import TensorProto, helper

    from resnet_edge.runtime.ort import make_session
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted({x for _, x, _, _ in quantized_convs(model)})
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.UINT8, None) for n in names)
    session = make_session(probe.SerializeToString(), disable_qdq_fusion=True)
    return dict(zip(names, session.run(names, {"input": inputs})))
