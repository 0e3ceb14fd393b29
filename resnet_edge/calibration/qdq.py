"""INT8 Q/DQ ONNX with onnxruntime.quantization, in two recipes:

- `tensorrt`: int8 symmetric activations and weights (zero points 0), per-channel weights on
  axis 0, no int32 bias, Q/DQ on Conv/Gemm inputs and weights and on the identity input of
  each residual Add, nothing between a Conv and its Add, so TensorRT fuses Conv+Add+ReLU
  (placement per NVIDIA's Q/DQ guidance for ResNets; see shared/reference/tensorrt-api.md).
- `cpu`: uint8 asymmetric activations with int8 per-channel weights, which ORT's CPU provider
  fuses into QLinearConv & co.: the fast int8 model for ONNX Runtime on CPUs. Weights use 7 bits
  (-64..64): on x86 without VNNI, ORT's U8S8 kernels sum pairs of u8 x s8 products in int16
  with VPMADDUBSW, which saturates (ONNX Runtime's quantization docs: "hence reduce_range").
  255 x 64 x 2 = 32,640 cannot overflow, so the model computes the same on every CPU family;
  a model file is built once and runs elsewhere, so the choice cannot follow the calibrating CPU.

Calibration runs once over every tensor and its ranges are kept (calibration.ranges.json);
quantizing, sensitivity and the TensorRT cache all reuse those ranges.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import MissingBackend
from ..runtime.ort import import_ort
from .trt_cache import scale_from_range

RECIPES = ("tensorrt", "cpu")
CPU_WEIGHT_BITS = 7  # see the module docstring: no int16 pair sum can saturate
METHODS = ("minmax", "entropy", "percentile")
MIN_ORT = (1, 27)  # quantize_static(calibration_cache_path=...) arrived in onnxruntime 1.27


def _quantization():
    ort = import_ort()
    version = ort.__version__
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_ORT:
        raise MissingBackend(f"calibrate needs onnxruntime >= 1.27 (this is {version}); "
                             "pip install -U onnxruntime")
    from onnxruntime import quantization

    from .. import quiet
    # the calibrator opens its own sessions on the process-wide logger, whose warnings (an
    # unused initializer of a static-batch export) came out raw, colour codes and all; errors
    # still show, and --verbose shows everything
    ort.set_default_logger_severity(2 if quiet.Settings.verbose else 3)
    return quantization


READER_BATCH = 8  # images per inference while calibrating: what bounds its memory (compute_ranges)
# the calibrated tensors of every image kept from the first pass when all of them fit this (a
# 32 px ResNet-20: 1.5 MB an image), so the second pass needs no inference
KEEP_BUDGET = 512 << 20


class ArrayReader:
    """CalibrationDataReader over an N x C x H x W array, in batches."""

    def __init__(self, inputs: np.ndarray, input_name: str = "input", batch_size: int = READER_BATCH):
        self.inputs, self.input_name, self.batch_size = inputs, input_name, batch_size
        self._start = 0

    def get_next(self):
        if self._start >= len(self.inputs):
            return None
        batch = self.inputs[self._start:self._start + self.batch_size]
        self._start += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch)}

    def rewind(self):
        self._start = 0

    def __len__(self):
        return len(self.inputs)


def _method(name: str):
    q = _quantization()
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[name]


def compute_ranges(onnx_path: str | os.PathLike, inputs: np.ndarray, method: str,
                   ranges_path: str | os.PathLike, scratch: str | os.PathLike,
                   input_name: str = "input", progress=lambda done, total: None) -> dict[str, tuple[float, float]]:
    """Calibrate, once, every activation tensor and save ORT's range cache to `ranges_path`.

    Every one: the Q/DQ models quantize what Conv and Gemm read and write (and the cpu recipe
    more op types), and calibration.cache, like the caches TensorRT's own calibrators write,
    needs a scale for every tensor TensorRT may run in int8 (residual Add, pooling and flatten
    outputs too), or TensorRT keeps those layers in higher precision.

    In bounded memory, whatever the number of images: ORT's calibrators keep every calibrated
    tensor of every image they are given until they update their statistics (about 115 MB per
    224 px ResNet-50 image), so its model and tensor choice are used here, with one batch of
    READER_BATCH images in memory at a time. minmax folds each batch's extremes (exact). The
    histogram methods take two passes: each tensor's extremes first, then histograms over
    those fixed ranges, summed batch by batch; that is bin for bin the histogram ORT builds
    when it is given every image at once (quantize_static's own way), so the scales are that
    call's, exactly (tests/test_calibration.py), and ORT's HistogramCollector picks the
    thresholds from it. Where every image's tensors fit KEEP_BUDGET, the first pass keeps them
    and the second reads them back instead of running the model again. `progress(done, total)`
    hears each batch.
    """
    _quantization()
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data
    # histogram methods: symmetric ranges, as TensorRT's int8 (zero point 0) needs
    extra = {"symmetric": True} if method != "minmax" else {}
    calibrator = create_calibrator(Path(onnx_path), None,
                                   augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                   calibrate_method=_method(method), extra_options=extra)
    batches = len(range(0, len(inputs), READER_BATCH))
    total, done = (1 if method == "minmax" else 2) * batches, 0

    def each_batch():
        nonlocal done
        for start in range(0, len(inputs), READER_BATCH):
            yield np.ascontiguousarray(inputs[start:start + READER_BATCH])
            done += 1
            progress(done, total)

    if method == "minmax":  # ORT keeps only each batch's reduced extremes: exact, and small
        for batch in each_batch():
            calibrator.collect_data(ArrayReader(batch, input_name))
        tensors = calibrator.compute_data()
    else:
        kept: list = []
        keep = None  # decided on the first batch's tensors: do every image's fit KEEP_BUDGET?

        def outputs():  # each batch's calibrated tensors: from the model, or kept from pass 1
            nonlocal keep, total
            if kept:
                yield from kept
                return
            for batch in each_batch():
                ran = calibrator.infer_session.run(None, {input_name: batch})
                if keep is None:
                    keep = sum(out.nbytes for out in ran) / len(batch) * len(inputs) <= KEEP_BUDGET
                    total = batches if keep else total
                if keep:
                    kept.append(ran)
                yield ran
                del ran  # before the next batch runs: one batch's tensors in memory, not two
        tensors = TensorsData(_method(method), _histogram_thresholds(calibrator, outputs))
        kept.clear()
    # sorted: the same inputs give the same bytes (and the same bundle digest)
    save_tensors_data(TensorsData(tensors.calibration_method, dict(sorted(tensors.data.items()))),
                      ranges_path)
    return load_ranges(ranges_path)


def _histogram_thresholds(calibrator, outputs) -> dict:
    """ORT's HistogramCollector thresholds over histograms built in two passes over
    `outputs()`, each batch's calibrated tensors (see compute_ranges): the histogram it builds from all the data in one collect() call, for the
    percentile method over |x| (collect_absolute_value: num_bins from min |x| to max |x|) and
    for entropy over x (collect_value: num_bins over +-max |x|)."""
    from onnxruntime.quantization.calibrate import HistogramCollector
    names = [o.name for o in calibrator.infer_session.get_outputs()]
    wanted = [(i, n) for i, n in enumerate(names) if n in calibrator.tensors_to_calibrate]
    absolute = calibrator.method == "percentile" and calibrator.symmetric
    low, high, abs_low = {}, {}, {}
    for ran in outputs():  # pass 1: each tensor's extremes
        for i, name in wanted:
            x = ran[i]
            lo, hi = np.nanmin(x), np.nanmax(x)
            low[name] = lo if name not in low else min(low[name], lo)
            high[name] = hi if name not in high else max(high[name], hi)
            if absolute:
                smallest = np.nanmin(np.absolute(x))
                abs_low[name] = smallest if name not in abs_low else min(abs_low[name], smallest)
        del ran
    edges, counts = {}, {}
    for ran in outputs():  # pass 2: histograms over those fixed ranges
        for i, name in wanted:
            x = ran[i].ravel()
            if absolute:
                span = (abs_low[name], np.maximum(np.absolute(low[name]), np.absolute(high[name])))
                hist, edges[name] = np.histogram(np.absolute(x), bins=calibrator.num_bins, range=span)
            else:
                limit = np.array(max(abs(low[name]), abs(high[name])), dtype=x.dtype)
                hist, edges[name] = np.histogram(x, calibrator.num_bins, range=(-limit, limit))
            counts[name] = hist if name not in counts else counts[name] + hist
        del ran
    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins,
                                   num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    for _, name in wanted:
        dtype = edges[name].dtype if absolute else low[name].dtype
        entry = (counts[name], edges[name].astype(dtype), low[name], high[name])
        if not absolute:
            entry += (np.array(max(abs(low[name]), abs(high[name])), dtype=low[name].dtype),)
        collector.histogram_dict[name] = entry
    return collector.compute_collection_result()


def any_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A static-batch model (`export --batch N`, what DLA takes) as one that takes any batch,
    for calibration only: its batch dimensions named instead of fixed, and each Reshape to a
    shape led by N led by 0 instead (copy the input's batch), or by -1 (infer it) where the
    Reshape reads 0 literally (allowzero, as the dynamo exporter writes it). Tensor names and weights are the
    model's own, so the ranges it gives are the model's, measured on exactly the calibration
    images: no batch padded with images that are not in the set, and none left out. A model
    that already takes any batch is returned as it is."""
    dim = model.graph.input[0].type.tensor_type.shape.dim
    if not dim or not dim[0].HasField("dim_value"):
        return model
    batch = dim[0].dim_value
    free = onnx.ModelProto()
    free.CopyFrom(model)
    for value in (*free.graph.input, *free.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del free.graph.value_info[:]  # shapes inferred afresh, from the named batch
    initializers = {i.name: i for i in free.graph.initializer}
    for node in free.graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers:
            continue
        shape = numpy_helper.to_array(initializers[node.input[1]])
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if shape.size and shape[0] == batch and not (allowzero and -1 in shape):
            led = shape.copy()
            # 0: as the input has it; where 0 is read literally (allowzero, as the dynamo
            # exporter writes it), -1: inferred
            led[0] = -1 if allowzero else 0
            name = f"{node.input[1]}_any_batch"
            if name not in initializers:
                initializers[name] = numpy_helper.from_array(led, name)
                free.graph.initializer.append(initializers[name])
            node.input[1] = name
    return free


def load_ranges(ranges_path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import load_tensors_data
    tensors = load_tensors_data(ranges_path)
    return {name: (float(np.asarray(t.range_value[0]).min()), float(np.asarray(t.range_value[1]).max()))
            for name, t in tensors.data.items()}


def save_ranges(base: str | os.PathLike, changed: dict[str, tuple[float, float]],
                out: str | os.PathLike) -> None:
    """ORT's range cache `base` with the tensors in `changed` given new (lowest, highest)
    ranges, written to `out`: what quantize and the TensorRT cache read."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, load_tensors_data, save_tensors_data
    tensors = load_tensors_data(base)
    data = dict(tensors.data)
    for name, (low, high) in changed.items():
        data[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
    save_tensors_data(TensorsData(tensors.calibration_method, dict(sorted(data.items()))), out)


def quantize(onnx_path: str | os.PathLike, out_path: str | os.PathLike, *, recipe: str, method: str,
             ranges_path: str | os.PathLike, nodes_to_exclude: list[str] | None = None,
             ranges: dict[str, tuple[float, float]] | None = None) -> onnx.ModelProto:
    """The int8 model, in memory: onnxruntime.quantization writes `out_path` (a scratch file),
    which is read once; the tensorrt recipe's residual Q/DQ pairs are added to it there."""
    q = _quantization()
    common = dict(quant_format=q.QuantFormat.QDQ, per_channel=True, calibrate_method=_method(method),
                  calibration_cache_path=str(ranges_path), calibration_data_reader=None,
                  nodes_to_exclude=nodes_to_exclude or [])
    if recipe == "tensorrt":
        q.quantize_static(str(onnx_path), str(out_path), activation_type=q.QuantType.QInt8,
                          weight_type=q.QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm"],
                          extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                         "QuantizeBias": False, "AddQDQPairToWeight": False,
                                         "DedicatedQDQPair": False,
                                         "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm"],
                                         "QDQOpTypePerChannelSupportToAxis": {"Gemm": 0}},
                          **common)
        model = onnx.load(str(out_path))
        add_residual_qdq(model, ranges if ranges is not None else load_ranges(ranges_path),
                         skip=set(nodes_to_exclude or []))
        return model
    if recipe == "cpu":
        q.quantize_static(str(onnx_path), str(out_path), activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, reduce_range=True, **common)
        return onnx.load(str(out_path))
    raise ValueError(recipe)


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _through_qdq(name: str, producers) -> str:
    """The float tensor behind a chain of DequantizeLinear/QuantizeLinear nodes."""
    while name in producers and producers[name].op_type in ("DequantizeLinear", "QuantizeLinear"):
        name = producers[name].input[0]
    return name


def residual_identity_inputs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, int]]:
    """(Add node, input index) of each residual Add's identity (skip) input.

    The conv branch is the input produced by a Conv whose own input feeds only that branch; the
    identity is the other one: the block input itself, or the downsample Conv, whose input is
    shared with the first Conv of the block.
    """
    producers, consumers = _producers(model), _consumers(model)

    def fan_out(tensor: str) -> int:
        return len({id(n) for n in consumers.get(tensor, [])
                    if n.op_type not in ("QuantizeLinear", "DequantizeLinear")} |
                   {id(n) for q in consumers.get(tensor, []) if q.op_type == "QuantizeLinear"
                    for dq in consumers.get(q.output[0], []) for n in consumers.get(dq.output[0], [])})

    found = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        sources = [producers.get(_through_qdq(i, producers)) for i in node.input]
        if not all(s is not None for s in sources):
            continue
        is_conv = [s.op_type == "Conv" for s in sources]
        if not any(is_conv):
            continue
        if all(is_conv):
            shared = [fan_out(_through_qdq(s.input[0], producers)) > 1 for s in sources]
            if shared.count(True) != 1:
                continue
            identity = shared.index(True)
        else:
            identity = is_conv.index(False)
        found.append((node, identity))
    return found


def add_residual_qdq(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                     skip: set[str] = frozenset()) -> int:
    """Give each residual Add's identity input a symmetric int8 Q/DQ pair: the one the tensor
    already has (a block's input quantized for its first Conv, one pair per tensor, as ORT's
    shared pairs and ModelOpt write it) where its scale is this one, else a pair of its own."""
    added = 0
    new_nodes = []
    initializers = {i.name: i for i in model.graph.initializer}
    consumers = _consumers(model)
    for add, index in residual_identity_inputs(model):
        if add.name in skip:
            continue
        tensor = add.input[index]
        base = _through_qdq(tensor, _producers(model))
        if base not in ranges:
            continue
        scale = scale_from_range(*ranges[base])
        shared = next((dq.output[0] for q in consumers.get(base, []) if q.op_type == "QuantizeLinear"
                       and q.input[1] in initializers
                       and float(numpy_helper.to_array(initializers[q.input[1]])) == np.float32(scale)
                       for dq in consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"), None)
        if shared is not None:
            add.input[index] = shared
            added += 1
            continue
        stem = f"{add.name}_identity"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{stem}_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), f"{stem}_zero_point")])
        new_nodes.append(helper.make_node("QuantizeLinear", [base, f"{stem}_scale", f"{stem}_zero_point"],
                                          [f"{stem}_q"], name=f"{stem}_QuantizeLinear"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{stem}_q", f"{stem}_scale", f"{stem}_zero_point"],
                                          [f"{stem}_dq"], name=f"{stem}_DequantizeLinear"))
        add.input[index] = f"{stem}_dq"
        added += 1
    # ONNX wants nodes in topological order; the new pairs sit between existing nodes
    _insert_sorted(model, new_nodes)
    return added


def _insert_sorted(model: onnx.ModelProto, new_nodes: list[onnx.NodeProto]) -> None:
    nodes = list(model.graph.node) + new_nodes
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or a missing input")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
