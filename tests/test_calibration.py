import importlib.util
import json
import shutil
import struct

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from resnet_edge.calibration import calibrate
from resnet_edge.calibration.dataset import balanced_indices, overlaps
from resnet_edge.calibration.qdq import load_ranges
from resnet_edge.calibration.trt_cache import read_cache, scale_from_range
from resnet_edge.data import open_data
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import run_parity


@pytest.fixture(scope="module")
def calibrated(digits_workdir, tmp_path_factory):
    """Both recipes, 512 class-balanced digits:train images, minmax."""
    out = {}
    for recipe in ("tensorrt", "cpu"):
        work = tmp_path_factory.mktemp(recipe) / "work"
        shutil.copytree(digits_workdir, work)
        out[recipe] = (work, calibrate(work, "digits:train", samples=512, method="minmax", recipe=recipe))
    return out


def test_balanced_and_deterministic_draw():
    source = open_data("digits:train")
    a, b = balanced_indices(source, 100), balanced_indices(source, 100)
    assert a == b and len(set(a)) == 100
    counts = np.bincount(source.labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1


def test_overlap_with_the_parity_split_is_detected():
    assert overlaps("digits:test", "digits:test") and overlaps("digits", "digits:test")
    assert not overlaps("digits:train", "digits:test")


def _initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_tensorrt_recipe_qdq_rules(calibrated):
    work, result = calibrated["tensorrt"]
    model = onnx.load(str(result.path))
    inits = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name  # symmetric int8
        if node.op_type == "DequantizeLinear":  # an activation's Q, or a weight stored in int8
            source = producers.get(node.input[0])
            assert (source is not None and source.op_type == "QuantizeLinear") or (
                inits[node.input[0]].dtype == np.int8), node.name  # no int32 bias DQ
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            weight_dq = producers[node.input[1]]
            assert weight_dq.op_type == "DequantizeLinear"
            axis = next((a.i for a in weight_dq.attribute if a.name == "axis"), 1)
            weight = inits[weight_dq.input[0]]  # int8 initializer behind its DequantizeLinear
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 127
            assert axis == 0 and inits[weight_dq.input[1]].shape == (weight.shape[0],)
            assert producers[node.input[0]].op_type == "DequantizeLinear"  # activation quantized
            assert len(node.input) < 3 or node.input[2] in inits  # bias stays float
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 9  # resnet20: 3 stages x 3 blocks
    for add in adds:
        kinds = sorted(producers[i].op_type for i in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], kinds  # conv branch bare, identity Q/DQ
    # weights in int8: the file is about a quarter of the fp32 one, as OTA updates want
    assert result.path.stat().st_size < 0.35 * (work / "model.onnx").stat().st_size
    info = json.loads({p.key: p.value for p in model.metadata_props}["resnet_edge.quantization"])
    assert info["recipe"] == "tensorrt" and info["samples"] == 512
    assert result.per_class and sum(result.per_class.values()) == 512


def test_cpu_recipe_uses_uint8_activations(calibrated):
    _, result = calibrated["cpu"]
    model = onnx.load(str(result.path))
    inits = _initializers(model)
    dtypes = {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert np.dtype(np.uint8) in dtypes


@pytest.mark.parametrize("recipe", ["tensorrt", "cpu"])
def test_int8_keeps_digits_accuracy(calibrated, recipe):
    work, _ = calibrated[recipe]
    report = run_parity(work, "digits:test", backends=["ort"], precisions=["int8", "int8-fp16"],
                        thresholds=load_thresholds())
    row, fp16_float = report["candidates"]
    assert row["status"] == "ran"
    assert row["accuracy"]["drop_pt"] <= 0.5, row["accuracy"]
    assert ("Q/DQ as written" in row["device"]) == (recipe == "tensorrt")
    if recipe == "tensorrt":  # the model strongly typed TensorRT builds, in its own row
        assert fp16_float["status"] == "ran" and "Q/DQ as written" in fp16_float["device"]
        assert fp16_float["accuracy"]["drop_pt"] <= 0.5, fp16_float["accuracy"]
        assert all(g["passed"] for g in fp16_float["gates"]), fp16_float["gates"]
        model = onnx.load(str(work / "model.int8-fp16.onnx"))
        scales = {i.name: i.data_type for i in model.graph.initializer if i.name.endswith("_scale")}
        assert scales and set(scales.values()) == {onnx.TensorProto.FLOAT16}
        assert row["int8_path"] == {"path": "Q/DQ as written", "integer_ops": {}, "weight_bits": 8}
    else:
        assert fp16_float["status"] == "skipped" and "--recipe tensorrt" in fp16_float["reason"]
        # ORT fused it into integer kernels, and they agree with the exact arithmetic
        path = row["int8_path"]
        assert path["path"] == "fused integer kernels" and path["integer_ops"]["QLinearConv"] == 21
        assert path["weight_bits"] == 7
        assert path["fused_vs_as_written"]["top1_agreement"] >= 0.99, path
    assert report["machine"]["int8_arithmetic"]  # which CPU arithmetic made these numbers


def test_an_opset_17_int8_model_with_fp16_float_parts_feeds_every_conv_from_its_dequantize(trained_digits, tmp_path):
    """Left at opset 17 the Q/DQ pairs stayed fp32 behind Casts, and a Cast between
    DequantizeLinear and Conv keeps strongly typed TensorRT from running the Conv in int8; so
    the int8-fp16 model is raised to opset 19, where Q/DQ take fp16 scales. (The TorchScript
    exporter types only some intermediates; without the rest ONNX Runtime refused the file.)"""
    from resnet_edge.export import ExportOptions, export_model
    from resnet_edge.zoo import load_model
    export_model(*load_model(str(trained_digits.model_path)), tmp_path, ExportOptions(exporter="torchscript"))
    calibrate(tmp_path, "digits:train", samples=64, method="minmax")
    assert onnx.load(str(tmp_path / "model.int8.onnx")).opset_import[0].version == 17  # as exported
    model = onnx.load(str(tmp_path / "model.int8-fp16.onnx"))
    assert model.opset_import[0].version == 19
    made_by = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(made_by[n.input[i]].op_type == "DequantizeLinear" for n in convs for i in (0, 1))
    scales = {i.name: i for i in model.graph.initializer}
    dq_scales = [scales[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in scales]
    assert dq_scales and all(s.data_type == onnx.TensorProto.FLOAT16 for s in dq_scales)
    report = run_parity(tmp_path, "digits:test", backends=["ort"], precisions=["int8-fp16"],
                        thresholds=load_thresholds(), limit=128)
    row = report["candidates"][0]
    assert row["status"] == "ran" and all(g["passed"] for g in row["gates"]), row


def test_calibration_cache_parses_back_to_the_same_scales(calibrated):
    work, _ = calibrated["tensorrt"]
    header, scales = read_cache(work / "calibration.cache")
    assert header == "TRT-100300-EntropyCalibration2"
    ranges = load_ranges(work / "calibration.ranges.json")
    model_inputs = {i.name for i in onnx.load(str(work / "model.onnx")).graph.input}
    assert model_inputs <= set(scales)
    for name, scale in scales.items():
        expected = struct.unpack(">f", struct.pack(">f", scale_from_range(*ranges[name])))[0]
        assert scale == expected
    relu = next(n for n in scales if n.startswith("relu"))
    assert scales[relu] == pytest.approx(max(abs(v) for v in ranges[relu]) / 127, rel=1e-6)


def test_sensitivity_ranks_every_layer_and_exclusions_stay_float(digits_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    result = calibrate(work, "digits:train", samples=256, method="minmax", sensitivity=True,
                       holdout=100, exclude=None)
    assert len(result.sensitivity) == 22 and result.sensitivity[0]["module"]
    drops = [(r["drop_pt"], r["logit_rmse"]) for r in result.sensitivity]
    assert drops == sorted(drops, reverse=True)
    saved = json.loads((work / "calibration.sensitivity.json").read_text())  # kept, not only printed
    assert saved["layers"] == result.sensitivity and saved["held_out_images"] == 100
    assert work / "calibration.sensitivity.json" in result.written
    worst = result.sensitivity[0]["layer"]
    again = calibrate(work, "digits:train", samples=256, method="minmax", exclude=worst, holdout=100)
    # the ranges were up to date, so this run did not write them again, and does not say it did
    assert work / "calibration.ranges.json" not in again.written and again.path in again.written
    model = onnx.load(str(again.path))
    node = next(n for n in model.graph.node if n.name == worst)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers.get(node.input[1]) != "DequantizeLinear" and again.excluded == [worst]


def test_calibration_cache_leaves_excluded_layers_in_float(calibrated, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(calibrated["tensorrt"][0], work)
    model = onnx.load(str(work / "model.onnx"))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][3]
    calibrate(work, "digits:train", samples=512, method="minmax", exclude=conv.name, holdout=50)
    _, scales = read_cache(work / "calibration.cache")
    touching = set(conv.input) | set(conv.output)
    assert not touching & set(scales)  # no scale: TensorRT keeps the layer in float too
    assert "input" in scales  # the layers still in int8 keep theirs
    assert set(scales) and set(scales) < set(load_ranges(work / "calibration.ranges.json"))
    entry = json.loads((work / "manifest.json").read_text())["files"]["calibration.cache"]
    assert entry["options"]["excluded"] == [conv.name]


def test_calibrating_on_the_parity_split_warns(digits_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    result = calibrate(work, "digits:test", samples=64, method="minmax", holdout=50)
    assert any("optimistic" in w for w in result.warnings)


@pytest.mark.parametrize("args,code,message", [
    (["calibrate", "{work}", "--samples", "0"], 2, "--samples must be at least 1"),
    (["calibrate", "{work}", "--data", "nope"], 2, "unknown data spec"),
    (["calibrate", "{work}", "--exclude", "node_does_not_exist", "--samples", "64"], 2,
     "names no Conv/Gemm layer 'node_does_not_exist'"),
    (["calibrate", "{empty}"], 2, "has no model.onnx"),
    (["build", "{work}", "--gpu-fallback"], 2, "--gpu-fallback goes with --dla-core"),
])
def test_calibrate_and_build_bad_usage(args, code, message, run_cli, digits_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    (tmp_path / "empty").mkdir()
    before = sorted(p.name for p in work.iterdir())
    result = run_cli(*[a.format(work=work, empty=tmp_path / "empty") for a in args])
    assert result.exit_code == code and message in result.stderr, result.output
    assert sorted(p.name for p in work.iterdir()) == before


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_without_tensorrt_exits_3(run_cli, digits_workdir):
    result = run_cli("build", digits_workdir, "--precision", "fp16")
    assert result.exit_code == 3 and "TensorRT is not installed" in result.stderr


def test_cpu_recipe_cannot_saturate_avx2_pair_sums(calibrated, tmp_path):
    """The cpu recipe's 7-bit weights keep every u8 x s8 pair sum inside int16, so a CPU
    without VNNI computes what a VNNI or ARM CPU does; the same model with 8-bit weights is
    refused by the same emulation (the known-bad case that made this the default)."""
    from onnxruntime import quantization as q
    from u8s8_emulation import INT16, quantized_convs, saturated_outputs, u8_activations
    from resnet_edge.data import batches
    from resnet_edge.export import read_card
    work, result = calibrated["cpu"]
    model = onnx.load(str(result.path))
    info = json.loads({p.key: p.value for p in model.metadata_props}["resnet_edge.quantization"])
    assert info["weight_bits"] == 7
    convs = quantized_convs(model)
    assert len(convs) == 21
    # the proof: no pair of products can leave int16, whatever the u8 activations are
    for node, _, weights, _ in convs:
        assert weights.dtype == np.int8 and np.abs(weights.astype(int)).max() <= 64, node.name
        assert 2 * 255 * int(np.abs(weights.astype(int)).max()) <= INT16[1]
    card = read_card(work / "model.onnx")
    images = next(iter(batches(open_data("digits:test"), card.preprocess, 16)))[0].numpy()
    seven = saturated_outputs(model, u8_activations(model, images))
    assert max(seven.values()) == 0.0, seven
    # the same calibration with 8-bit weights (onnxruntime.quantization's default)
    eight_path = tmp_path / "eight.onnx"
    q.quantize_static(str(work / "model.onnx"), str(eight_path), calibration_data_reader=None,
                      calibration_cache_path=str(work / "calibration.ranges.json"),
                      quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    eight = onnx.load(str(eight_path))
    wrong = saturated_outputs(eight, u8_activations(eight, images))
    stem = quantized_convs(eight)[0][0].name
    assert wrong[stem] > 0.01, wrong  # the 3-channel stem saturates most


def test_calibration_cache_has_a_scale_for_every_tensor_tensorrt_can_run_in_int8(calibrated):
    """TensorRT's own calibrators write a scale for every activation; a tensor without one
    (a residual Add, the pooling, the flatten) keeps its layer out of int8."""
    work, _ = calibrated["tensorrt"]
    _, scales = read_cache(work / "calibration.cache")
    model = onnx.load(str(work / "model.onnx"))
    int8_able = ("Conv", "Relu", "Add", "MaxPool", "GlobalAveragePool", "AveragePool",
                 "ReduceMean", "Flatten", "Reshape", "Gemm")
    tensors = {o for n in model.graph.node if n.op_type in int8_able for o in n.output}
    kinds = {n.op_type for n in model.graph.node if n.op_type in int8_able}
    assert {"Conv", "Relu", "Add", "ReduceMean", "Reshape"} <= kinds  # the dynamo export's pooling
    missing = sorted(tensors - set(scales))
    assert not missing, missing
    assert "input" in scales


AVX2_SCRIPT = """
import json, sys, numpy as np, onnxruntime as ort
x, y = np.load(sys.argv[1]), np.load(sys.argv[2])
top1 = {}
for path in sys.argv[3:]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    top1[path] = float((session.run(None, {"input": x})[0].argmax(1) == y).mean())
print(json.dumps(top1))
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="needs qemu-x86_64 (make test-avx2 installs Debian's qemu-user)")
def test_the_cpu_recipe_keeps_its_accuracy_on_an_avx2_only_cpu(calibrated, tmp_path):
    """ONNX Runtime itself, under QEMU's user-mode emulation of a Haswell (AVX2, no AVX-512, no
    VNNI), picks its VPMADDUBSW kernels whatever CPU runs the test: the AVX2 case for real."""
    import subprocess
    import sys
    from onnxruntime import quantization as q
    from resnet_edge.data import batches, open_data
    from resnet_edge.export import read_card
    work, result = calibrated["cpu"]
    eight = tmp_path / "eight.onnx"  # the same calibration with onnxruntime's default 8 bits
    q.quantize_static(str(work / "model.onnx"), str(eight), calibration_data_reader=None,
                      calibration_cache_path=str(work / "calibration.ranges.json"),
                      quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    preprocess = read_card(work / "model.onnx").preprocess
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in batches(open_data("digits:test"), preprocess, 128)))
    np.save(tmp_path / "x.npy", np.concatenate(xs))
    np.save(tmp_path / "y.npy", np.concatenate(ys))
    files = [str(work / "model.onnx"), str(result.path), str(eight)]
    run = subprocess.run([shutil.which("qemu-x86_64"), "-cpu", "Haswell", sys.executable, "-c", AVX2_SCRIPT,
                          str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), *files],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    import json
    fp32, seven, eight_bit = (json.loads(run.stdout.strip().splitlines()[-1])[f] for f in files)
    assert abs(fp32 - seven) * 100 <= 1.0, (fp32, seven)  # the int8 gate, with 7-bit weights
    # the emulation really runs the saturating kernels: 8-bit weights lose accuracy there
    assert (fp32 - eight_bit) * 100 > 1.0, (fp32, eight_bit)


FULL_COUNTS = [pytest.param(n, marks=pytest.mark.slow) for n in (31, 60, 100, 500)]


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
@pytest.mark.parametrize("samples", [1, 33, *FULL_COUNTS])
def test_any_sample_count_calibrates_with_every_method(method, samples, digits_workdir, tmp_path):
    """ONNX Runtime's histogram collectors stack a call's batches into one array, so a short
    last batch (any count that is not a multiple of the batch) used to end in a traceback."""
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    result = calibrate(work, "digits:train", samples=samples, method=method)
    assert result.samples == samples and (work / "model.int8.onnx").exists()


@pytest.mark.parametrize("batch,method", [(1, "minmax"), (8, "entropy")])
def test_a_static_batch_export_calibrates_on_exactly_its_images(batch, method, trained_digits,
                                                                 digits_workdir, tmp_path, run_cli, capfd):
    """`export --batch N` (DLA's) fed 32 images to a model that takes N and failed; now its
    ranges are the model's own on exactly the calibration images: the same, to the bit, as the
    dynamic export's on the same 37 images (no padding counted, none left out)."""
    static = tmp_path / f"batch{batch}"
    assert run_cli("export", trained_digits.model_path, "--batch", str(batch), "--out", static).exit_code == 0
    dynamic = tmp_path / "dynamic"
    shutil.copytree(digits_workdir, dynamic)
    capfd.readouterr()
    for work in (static, dynamic):
        calibrate(work, "digits:train", samples=37, method=method, holdout=13, sensitivity=batch == 8)
    # ONNX Runtime's own warning (an unused initializer), colour codes and all, came through
    assert "onnxruntime" not in capfd.readouterr().err
    # the exports name 9 of the 53 tensors differently (add vs add_116): compared by value
    ranges = [sorted(load_ranges(work / "calibration.ranges.json").values()) for work in (static, dynamic)]
    assert ranges[0] == ranges[1]
    int8 = onnx.load(str(static / "model.int8.onnx"))
    assert int8.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch
    assert read_cache(static / "calibration.cache")  # what DLA's int8 comes from
    result = run_cli("parity", static, "--backends", "ort", "--precisions", "int8", "--limit", "40",
                     "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "p.json").read_text())["candidates"][0]
    assert row["status"] == "ran" and row["metrics"]["top1_agreement"] >= 0.95


@pytest.mark.parametrize("method", ["entropy", "percentile", "minmax"])
def test_streamed_calibration_gives_exactly_the_scales_of_one_call_over_every_image(method, digits_workdir,
                                                                                    tmp_path, monkeypatch):
    """compute_ranges holds one batch at a time; onnxruntime.quantization's calibrator, given
    every image in one collect_data call (what quantize_static does), holds them all. The
    ranges are the same, value for value, for every method, with a last batch that is short."""
    from onnxruntime.quantization.calibrate import create_calibrator
    from resnet_edge.calibration.dataset import calibration_inputs
    from resnet_edge.calibration import qdq
    from resnet_edge.calibration.qdq import ArrayReader, READER_BATCH, _method, compute_ranges
    from resnet_edge.export import read_card
    card = read_card(onnx.load(str(digits_workdir / "model.onnx"), load_external_data=False))
    inputs, _ = calibration_inputs(open_data("digits:train"), card.preprocess, 3 * READER_BATCH + 5)
    model = tmp_path / "model.onnx"
    shutil.copyfile(digits_workdir / "model.onnx", model)
    seen, kept = [], []
    for budget in (0, qdq.KEEP_BUDGET):  # two passes of the model; one, its tensors kept
        monkeypatch.setattr(qdq, "KEEP_BUDGET", budget)
        seen.append([])
        kept.append(compute_ranges(model, inputs, method, tmp_path / "ranges.json", tmp_path,
                                   progress=lambda done, total: seen[-1].append((done, total))))
    passes = [1, 1] if method == "minmax" else [2, 1]
    assert [s[-1] for s in seen] == [(p * 4, p * 4) for p in passes] and kept[0] == kept[1]
    ours = kept[0]
    extra = {"symmetric": True} if method != "minmax" else {}
    reference = create_calibrator(model, None, augmented_model_path=str(tmp_path / "one-call.onnx"),
                                  calibrate_method=_method(method), extra_options=extra)
    reference.collect_data(ArrayReader(inputs, batch_size=len(inputs)))  # every image at once
    theirs = {name: (float(np.asarray(t.range_value[0]).min()), float(np.asarray(t.range_value[1]).max()))
              for name, t in reference.compute_data().data.items()}
    assert ours.keys() == theirs.keys() and len(ours) > 40
    assert ours == theirs


def test_the_classifier_can_stay_in_float(digits_workdir, tmp_path):
    """--float-classifier: the final Gemm reads float input and weights (no DequantizeLinear in
    front of it) and calibration.cache carries no scale for its input, so TensorRT keeps it in
    float on either path; every convolution is still int8, and the held-out check holds."""
    from resnet_edge.calibration.trt_cache import read_cache
    work = tmp_path / "w"
    shutil.copytree(digits_workdir, work)
    result = calibrate(work, "digits:train", samples=128, method="minmax", holdout=200,
                       float_classifier=True)
    model = onnx.load(str(work / "model.int8.onnx"))
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert result.excluded == [gemm.name]
    assert produced.get(gemm.input[0]) != "DequantizeLinear" and gemm.input[1] not in produced
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        assert produced[conv.input[0]] == produced[conv.input[1]] == "DequantizeLinear", conv.name
    fp32 = onnx.load(str(work / "model.onnx"))
    fc_input = next(n for n in fp32.graph.node if n.op_type == "Gemm").input[0]
    assert fc_input not in read_cache(work / "calibration.cache")[1]
    assert result.holdout["drop_pt"] <= 1.0


MEASURE_PEAK = r"""
import resource, sys
import numpy as np
from resnet_edge.calibration.qdq import compute_ranges
inputs = np.random.default_rng(0).standard_normal((int(sys.argv[3]), 3, 224, 224), dtype=np.float32)
compute_ranges(sys.argv[1], inputs, "entropy", sys.argv[2] + "/ranges.json", sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.slow
def test_calibration_memory_does_not_grow_with_the_images(tmp_path):
    """A ResNet-50 at 224 px, entropy: peak memory with 64 images is that with 16 (it was 8.4 GB
    against 2.9, every image's activations held). About a minute: make test-all."""
    import subprocess
    import sys
    from resnet_edge.export import export_model
    from resnet_edge.zoo import load_model
    model, card = load_model("resnet50", weights="none")
    export_model(model, card, tmp_path / "r50", fp16=False)

    def peak_mib(images: int) -> int:
        scratch = tmp_path / f"s{images}"
        scratch.mkdir()
        done = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(tmp_path / "r50" / "model.onnx"),
                               str(scratch), str(images)], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])
    few, many = peak_mib(16), peak_mib(64)
    assert many < few * 1.15 and many < 3072, (few, many)


def test_one_qdq_pair_per_tensor_computes_what_a_pair_per_consumer_does(calibrated):
    """A tensor read by several int8 layers (a block's input: its first Conv, and the identity
    of its Add or the downsample Conv) gets one Q/DQ pair, as ModelOpt writes it; given a pair
    per consumer instead (what DedicatedQDQPair wrote), ONNX Runtime computes the same logits,
    bit for bit."""
    import copy
    from collections import Counter
    from resnet_edge.runtime.ort import make_session
    work, result = calibrated["tensorrt"]
    model = onnx.load(str(result.path))
    quantized = Counter(n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert quantized and max(quantized.values()) == 1
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dedicated = copy.deepcopy(model)
    nodes = list(dedicated.graph.node)
    by_name = {n.name: n for n in nodes}
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        dq = readers[q.output[0]][0]
        for k, reader in enumerate(readers[dq.output[0]][1:], 1):  # the second reader on gets its own
            nq = onnx.helper.make_node("QuantizeLinear", [q.input[0], q.input[1], q.input[2]], [f"{q.output[0]}_{k}"],
                                       name=f"{q.name}_{k}")
            ndq = onnx.helper.make_node("DequantizeLinear", [nq.output[0], dq.input[1], dq.input[2]],
                                        [f"{dq.output[0]}_{k}"], name=f"{dq.name}_{k}")
            target = by_name[reader.name]
            target.input[list(target.input).index(dq.output[0])] = ndq.output[0]
            nodes.insert(nodes.index(target), ndq)
            nodes.insert(nodes.index(ndq), nq)
    del dedicated.graph.node[:]
    dedicated.graph.node.extend(nodes)
    assert sum(n.op_type == "QuantizeLinear" for n in dedicated.graph.node) > len(quantized)
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    logits = [make_session(m.SerializeToString(), disable_qdq_fusion=True).run(None, {"input": x})[0]
              for m in (model, dedicated)]
    np.testing.assert_array_equal(*logits)


def test_what_calibration_warns_of_is_said_before_it_calibrates(digits_workdir, tmp_path, run_cli):
    """"fewer than --samples 512" came after the calibrating it was about."""
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    result = run_cli("calibrate", work, "--data", "digits:val", "--method", "minmax")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    warned = next(i for i, line in enumerate(lines) if "fewer than --samples 512" in line)
    began = next(i for i, line in enumerate(lines) if "preprocessing" in line)
    assert warned < began and sum("fewer than --samples" in line for line in lines) == 1
