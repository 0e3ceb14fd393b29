"""Triton and DeepStream bundles: configs read back with the servers' own schema and rules,
cross-checked against the ONNX file, and preprocessing as nvinfer does it compared with the
model card's on real photographs."""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from cli_output import one_line_error
from oracles import nvinfer as nvinfer_rules
from oracles import triton as triton_rules
from resnet_edge.calibration import calibrate
from resnet_edge.deploy import TARGETS, make_bundle, safe_extract
from resnet_edge.deploy import serving
from resnet_edge.deploy.serving import install_plan, nvinfer_scaling
from resnet_edge.export import export_model, prepare_export
from resnet_edge.export.metadata import read_card
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import run_parity

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="Triton's ModelConfig schema comes with tritonclient[grpc] (the dev extra)")


def _export(source, out, **request):
    model, card, options = prepare_export(source, request)
    export_model(model, card, out, options)
    return out


@pytest.fixture(scope="module")
def folded_digits(trained_digits, tmp_path_factory):
    """The trained digits ResNet-20 with its normalization folded in and a Softmax at the end
    (what nvinfer reads), calibrated."""
    out = _export(str(trained_digits.model_path), tmp_path_factory.mktemp("fold") / "digits-folded",
                  fold_normalization=True, softmax=True)
    calibrate(out, "digits:train", samples=64, method="minmax")
    return out


@pytest.fixture(scope="module")
def resnet18_folded(tmp_path_factory):
    """A ResNet-18 (random init, 10 classes) at 64 px, one static batch, folded, Softmax
    (TorchScript's exporter, so the serving configs are checked on both exporters' graphs)."""
    return _export("resnet18", tmp_path_factory.mktemp("r18") / "r18-folded", weights="none",
                   num_classes=10, input_size=64, batch=1, fold_normalization=True, softmax=True,
                   exporter="torchscript")


@pytest.fixture(scope="module")
def equal_std(tmp_path_factory):
    """Not folded, but one std for every channel: nvinfer can say this one as it is."""
    return _export("resnet20", tmp_path_factory.mktemp("eq") / "r20-equal-std", weights="none",
                   mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], softmax=True, exporter="torchscript")


def _bundle(workdir, target, tmp_path, **kwargs):
    kwargs.setdefault("eval_spec", "digits:test")  # random-init models have no data of their own
    made = make_bundle(workdir, target, tmp_path / f"{workdir.name}-{target}.tar.gz", golden=40,
                       **kwargs)
    return safe_extract(made.path, tmp_path / "x")


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_io(path):
    graph = onnx.load(path).graph
    weights = {i.name for i in graph.initializer}
    tensor_in = next(i for i in graph.input if i.name not in weights)

    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return tensor_in.name, dims(tensor_in), graph.output[0].name, dims(graph.output[0])


# ---- Triton ---------------------------------------------------------------------------------

@pytest.mark.parametrize("accelerator", ["none", "fp16", "int8"])
def test_triton_repository_parses_with_tritons_schema_and_matches_the_onnx(
        accelerator, calibrated_workdir, tmp_path):
    root = _bundle(calibrated_workdir, "triton", tmp_path, accelerator=accelerator)
    name = calibrated_workdir.name
    model_dir = root / "triton" / name
    config = _parse(model_dir / "config.pbtxt")
    model_file = "model.int8.onnx" if accelerator == "int8" else "model.onnx"
    assert (model_dir / "1" / "model.onnx").read_bytes() == (calibrated_workdir / model_file).read_bytes()
    input_name, input_dims, output_name, output_dims = _onnx_io(model_dir / "1" / "model.onnx")
    assert input_dims[0] == -1 and output_dims[0] == -1  # a dynamic batch: Triton batches it
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32 and list(config.dynamic_batching.preferred_batch_size) == [8]
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), inp.data_type) == (input_name, input_dims[1:], model_config_pb2.TYPE_FP32)
    assert (out.name, list(out.dims)) == (output_name, output_dims[1:]) == ("logits", [10])
    labels = (model_dir / out.label_filename).read_text().splitlines()
    assert labels == read_card(calibrated_workdir / "model.onnx").class_names
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    if accelerator == "none":
        assert not accelerators
    else:
        (trt,) = accelerators
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == accelerator.upper()
        # one TensorRT profile over the batch profile and a kept engine: no rebuild per batch
        # size or per model load
        assert [trt.parameters[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")] == [
            f"{input_name}:{b}x{'x'.join(map(str, input_dims[1:]))}" for b in (1, 8, 32)]
        assert trt.parameters["trt_engine_cache_enable"] == "true"
        assert trt.parameters["trt_engine_cache_path"] == f"/w/{root.name}.device/triton-trt-cache/{name}"
        # the timing cache beside the engines: a rebuild reuses the tactic timings
        assert trt.parameters["trt_timing_cache_enable"] == "true"
        assert trt.parameters["trt_timing_cache_path"] == trt.parameters["trt_engine_cache_path"]
    assert not triton_rules.check(config, onnx.load(str(model_dir / "1" / "model.onnx")), folder=model_dir.name)

    plan = _parse(root / "triton-plan" / "config.pbtxt")
    assert plan.name == f"{name}_trt" and plan.platform == "tensorrt_plan"
    assert (list(plan.input), list(plan.output)) == (list(config.input), list(config.output))


@pytest.fixture(scope="module")
def triton_static(resnet18_folded, tmp_path_factory):
    return _bundle(resnet18_folded, "triton", tmp_path_factory.mktemp("triton-static"))


@pytest.fixture(scope="module")
def triton_fp16(calibrated_workdir, tmp_path_factory):
    return (_bundle(calibrated_workdir, "triton", tmp_path_factory.mktemp("triton-fp16"), accelerator="fp16"),
            calibrated_workdir.name)


def test_a_static_batch_is_max_batch_size_0_with_the_batch_in_the_dims(resnet18_folded, triton_static):
    root = triton_static
    model_dir = root / "triton" / resnet18_folded.name
    config = _parse(model_dir / "config.pbtxt")
    _, input_dims, _, output_dims = _onnx_io(model_dir / "1" / "model.onnx")
    assert input_dims == [1, 3, 64, 64] and output_dims == [1, 10]
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == input_dims and list(config.output[0].dims) == output_dims
    assert not triton_rules.check(config, onnx.load(str(model_dir / "1" / "model.onnx")))
    assert not triton_rules.check(_parse(root / "triton-plan" / "config.pbtxt"))


@pytest.mark.parametrize("change,message", [
    (lambda c: c.dynamic_batching.preferred_batch_size.append(64),
     "preferred size must be <= max batch size"),
    (lambda c: c.dynamic_batching.preferred_batch_size.append(0), "preferred size must be positive"),
    (lambda c: c.input[0].dims.__setitem__(0, 0), "dimension must be integer >= 1, or -1"),
    (lambda c: c.input[0].dims.__setitem__(1, 31), "configuration expects dims"),
    (lambda c: c.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters.__setitem__(
        "trt_fp16_enable", "1"), "unknown parameter 'trt_fp16_enable'"),
    (lambda c: c.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters.__setitem__(
        "precision_mode", "HALF"), "unsupported precision mode 'HALF'"),
    (lambda c: setattr(c, "platform", "onnx"), "unexpected platform type 'onnx'"),
    (lambda c: c.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters.__setitem__(
        "trt_timing_cache_enable", "yes"), "failed to convert 'yes' to boolean"),
    (lambda c: c.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters.__setitem__(
        "trt_builder_optimization_level", "max"), "failed to convert 'max' to integral number"),
    (lambda c: c.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters.__setitem__(
        "max_workspace_size_bytes", "one GiB"), "failed to convert 'one GiB' to unsigned long long"),
])
def test_the_triton_oracle_refuses_what_triton_refuses(change, message, triton_fp16):
    root, name = triton_fp16
    model_dir = root / "triton" / name
    config, model = _parse(model_dir / "config.pbtxt"), onnx.load(str(model_dir / "1" / "model.onnx"))
    assert not triton_rules.check(config, model)
    change(config)
    found = triton_rules.check(config, model)
    assert any(message in f.message for f in found), found
    assert all(".cc:" in f.source for f in found)


def test_triton_takes_its_own_spellings_of_booleans(triton_fp16):
    root, name = triton_fp16
    config = _parse(root / "triton" / name / "config.pbtxt")
    parameters = config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
    for value in ("ON", "off", "True", "0"):  # ParseBoolValue lower-cases, and takes on/off
        parameters["trt_timing_cache_enable"] = value
        assert not triton_rules.check(config), value


def test_the_model_folder_is_named_as_the_model(triton_fp16, tmp_path):
    """Triton refuses a model whose folder is named otherwise (model_repository_manager.cc)."""
    import shutil
    root, name = triton_fp16
    assert not triton_rules.check(_parse(root / "triton" / name / "config.pbtxt"), folder=name)
    moved = shutil.copytree(root / "triton" / name, tmp_path / "repo" / "renamed")
    found = triton_rules.check(_parse(moved / "config.pbtxt"), folder=moved.name)
    assert [f.message for f in found] == [f"unexpected directory name 'renamed' for model '{name}', "
                                          "directory name must equal model name"]
    assert "model_repository_manager.cc:1703-1708" in found[0].source


def test_the_triton_readme_says_the_input_contract_the_build_image_and_what_int8_is(triton_fp16,
                                                                                   calibrated_workdir, tmp_path):
    readme = (triton_fp16[0] / "README.md").read_text()
    assert ("nvcr.io/nvidia/tensorrt:$TAG-py3 \\\n    sh -c \"pip install -q 'cuda-python>=12,<13' && "
            "./build_engine.sh fp16\"") in readme
    assert "Input `input`: FP32, the batch dimension first (max_batch_size), then NCHW [3, 32, 32], RGB" in readme
    assert "mean [" in readme and "std [" in readme and "Triton does no" in readme
    int8 = _bundle(calibrated_workdir, "triton", tmp_path / "i8", accelerator="int8")
    assert "TensorRT's INT8 alone" in (int8 / "README.md").read_text()


def test_a_static_onnx_with_a_batching_config_is_refused(triton_static, resnet18_folded):
    root = triton_static
    model_dir = root / "triton" / resnet18_folded.name
    config = _parse(model_dir / "config.pbtxt")
    config.max_batch_size = 8
    found = triton_rules.check(config, onnx.load(str(model_dir / "1" / "model.onnx")))
    assert "does not support batching while non-zero max_batch_size" in found[0].message


def test_a_plan_from_another_tensorrt_is_refused_before_triton_sees_it(tmp_path):
    from resnet_edge.deploy.serving import plan_mismatch, server_tensorrt
    libs = tmp_path / "lib"
    libs.mkdir()
    for name in ("libnvinfer.so.10", "libnvinfer.so.10.8.0", "libnvinfer_plugin.so.10.8.0"):
        (libs / name).write_bytes(b"")
    assert server_tensorrt([libs]) == "10.8.0" and server_tensorrt([tmp_path / "none"]) is None
    assert plan_mismatch("10.8.0", "10.8.0") is None and plan_mismatch("10.8.0", None) is None
    assert "pip install 'tensorrt==10.8.0'" in plan_mismatch("10.13.3", "10.8.0")
    bundle = tmp_path / "b"
    (bundle / "triton-plan").mkdir(parents=True)
    (bundle / "triton-plan" / "model.json").write_text('{"name": "m_trt"}')
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    engine.with_suffix(".json").write_text('{"tensorrt": "10.13.3"}')
    with pytest.raises(ValueError, match="built with TensorRT 10.13.3, but this machine's server loads"):
        install_plan(bundle, engine, tmp_path / "device", server="10.8.0")
    assert not (tmp_path / "device").exists()


def test_build_engine_sh_installs_the_plan_and_the_deepstream_engine(calibrated_workdir,
                                                                     folded_digits, tmp_path):
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "trtexec").write_text(  # writes the engine it is told to, as trtexec would
        '#!/bin/sh\nfor a in "$@"; do case "$a" in --saveEngine=*) printf plan > "${a#--saveEngine=}";; esac; done\n')
    (stub / "trtexec").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
           "TRT_VERSION": "10.3.0", "GPU_NAME": "Orin"}
    env.pop("RESNET_EDGE_DEVICE_DIR", None)
    triton = _bundle(calibrated_workdir, "triton", tmp_path / "t")
    run = subprocess.run(["bash", "build_engine.sh", "fp16"], cwd=triton, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    served = tmp_path / "t" / "x" / f"{triton.name}.device" / "triton" / f"{calibrated_workdir.name}_trt"
    assert (served / "1" / "model.plan").read_text() == "plan"
    assert _parse(served / "config.pbtxt").platform == "tensorrt_plan"
    assert (served / "labels.txt").read_text() == (triton / "labels.txt").read_text()

    deepstream = _bundle(folded_digits, "deepstream", tmp_path / "d")
    run = subprocess.run(["bash", "build_engine.sh", "int8"], cwd=deepstream, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    path = deepstream / "deepstream" / "config_infer_int8.txt"
    config = _nvinfer(path)
    engine = (deepstream / "deepstream" / config["model-engine-file"]).resolve()
    # where nvinfer loads it from on its first start: no build on the device at all
    assert engine.read_text() == "plan" and engine.parent == deepstream.resolve()
    assert engine.name.endswith("_gpu0_best.engine")
    dims = tuple(int(v) for v in config["infer-dims"].split(";"))
    assert _starts(path, {str(engine): nvinfer_rules.Engine(int(config["batch-size"]), dims)}).action == "reuse"
    readme = (deepstream / "README.md").read_text()
    assert f"`{engine.name}`" in readme and "model.fp16.engine" not in readme


# ---- DeepStream -----------------------------------------------------------------------------

def _nvinfer(path):
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    parser.read_string(path.read_text())
    return parser["property"]


def _frames(size):
    """The two photographs scikit-learn ships, center-cropped square and scaled to the model's
    input size upstream, as a DeepStream pipeline would crop before nvinfer scales."""
    frames = []
    for image in load_sample_images().images:
        h, w, _ = image.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = Image.fromarray(image[top:top + side, left:left + side])
        frames.append(np.asarray(square.resize((size, size), Image.BILINEAR)))
    return frames


@pytest.mark.parametrize("which", ["folded_digits", "resnet18_folded", "equal_std"])
def test_nvinfer_preprocessing_equals_the_model_cards(which, request, tmp_path):
    workdir = request.getfixturevalue(which)
    root = _bundle(workdir, "deepstream", tmp_path)
    card = read_card(workdir / "model.onnx")
    folder = root / "deepstream"
    configs = sorted(folder.glob("config_infer_*.txt"))
    assert {c.name for c in configs} >= {"config_infer_fp32.txt", "config_infer_fp16.txt"}
    session = ort.InferenceSession(str(workdir / "model.onnx"), providers=["CPUExecutionProvider"])
    profile = json.loads((root / "bundle.json").read_text())
    for path in configs:
        config = _nvinfer(path)
        assert not nvinfer_rules.check(path.read_text()), nvinfer_rules.check(path.read_text())
        precision, _, dla = path.stem.removeprefix("config_infer_").partition("_")
        assert (config.get("use-dla-core"), config.get("enable-dla")) == (("0", "1") if dla else (None, None))
        assert config["network-type"] == "1" and config["model-color-format"] == "0"
        # DeepStream 7.x: int8 is network-mode 3, INT8 with FP16 for what has no scales
        assert config["network-mode"] == {"fp32": "0", "int8": "3", "fp16": "2"}[precision]
        assert config["infer-dims"] == f"3;{card.preprocess.input_size};{card.preprocess.input_size}"
        assert (folder / config["onnx-file"]).is_file() and config["output-blob-names"] == "logits"
        assert (folder / config["labelfile-path"]).read_text().strip().split(";") == (
            card.class_names or [str(i) for i in range(card.num_classes)])
        # the batch the engines are tuned for, and the engine where nvinfer writes and reads it:
        # beside the ONNX, under the name nvinfer gives it
        assert int(config["batch-size"]) == profile["opt_batch"]
        assert config["model-engine-file"] == "../" + nvinfer_rules.engine_name(
            config["onnx-file"].removeprefix("../"), profile["opt_batch"],
            int(config["network-mode"]), dla_core=int(dla.removeprefix("dla")) if dla else None)
        # torchvision's antialiased resize of whole frames is super-sampling, not 4-tap bilinear
        assert config["scaling-filter"] == ("3" if card.preprocess.antialias else "1")
        # on the GPU: a Jetson's default scaler (scaling-compute-hw=0) is VIC, whose filter 3 is
        # its own 10-tap, not the GPU's super-sampling
        assert config["scaling-compute-hw"] == "1"
        scale = float(config["net-scale-factor"])
        offsets = np.array([float(v) for v in config["offsets"].split(";")], np.float32)
        for frame in _frames(card.preprocess.input_size):
            # nvinfer's documented preprocessing, y = net-scale-factor * (x - offsets), per channel
            nvinfer = (scale * (frame.astype(np.float32) - offsets)).transpose(2, 0, 1)
            ours = card.preprocess.transform()(Image.fromarray(frame)).numpy()
            assert np.abs(nvinfer - ours).max() < 1e-3 * max(1.0, np.abs(ours).max())
            logits = [session.run(None, {"input": x[None]})[0] for x in (nvinfer, ours)]
            assert np.abs(logits[0] - logits[1]).max() < 1e-3 and logits[0].argmax() == logits[1].argmax()
    app = configparser.ConfigParser(interpolation=None)
    app.read_string((folder / "deepstream_app_config.txt").read_text())
    assert (folder / app["primary-gie"]["config-file"]).is_file()
    assert app["primary-gie"]["batch-size"] == app["streammux"]["batch-size"] == str(profile["opt_batch"])
    # streammux keeps the source's own 16:9 (sample_720p.mp4): max(size, 640) x max(size, 480)
    # stretched every frame to 4:3 before nvinfer scaled it again
    assert "sample_720p.mp4" in app["source0"]["uri"]
    assert (app["streammux"]["width"], app["streammux"]["height"]) == ("1280", "720")


def test_network_mode_follows_the_deepstream_release():
    from resnet_edge.deploy.serving import network_mode, nvinfer_engine_name
    assert [network_mode(p, "6.3") for p in ("fp32", "fp16", "int8")] == [0, 2, 1]  # 6.x has no 3
    assert [network_mode(p, "7.1") for p in ("fp32", "fp16", "int8")] == [0, 2, 3]
    for release in ("6.3", "7.1"):
        mode = network_mode("int8", release)
        assert nvinfer_engine_name("model.int8.onnx", 8, mode) == nvinfer_rules.engine_name("model.int8.onnx", 8, mode)
        config = f"[property]\nonnx-file=model.int8.onnx\nnetwork-type=1\nnetwork-mode={mode}\nint8-calib-file=c\n"
        assert nvinfer_rules.check(config, release) == []


def test_a_per_channel_std_is_refused_for_deepstream_and_folding_fixes_it(digits_workdir, run_cli,
                                                                          tmp_path):
    # the digits model has neither one std nor a Softmax: both fixes in the one refusal
    one_line_error(run_cli("bundle", digits_workdir, "--target", "deepstream", "--out", tmp_path),
                   2, "differs per channel, and nvinfer applies one scale to all channels; the model "
                      "outputs logits, and nvinfer's classifier keeps only a class whose output is above "
                      "0 and classifier-threshold; export with --fold-normalization --softmax into a new work dir")
    assert not list(tmp_path.glob("*.tar.gz"))
    # the pipeline says so before its first step, not after calibrating and evaluating
    one_line_error(run_cli("pipeline", digits_workdir / "model.pt", "--target", "deepstream",
                           "--out", tmp_path / "p"), 2, "--fold-normalization")
    assert not (tmp_path / "p").exists()
    card = read_card(digits_workdir / "model.onnx")
    with pytest.raises(ValueError):
        nvinfer_scaling(card.preprocess.mean, card.preprocess.std)


def test_folded_and_unfolded_models_agree(digits_workdir, folded_digits):
    """Same weights, normalization in or out of the graph: each fed by its own card, the two
    ONNX files give the same answers on real photographs (the folded one, with its Softmax,
    as probabilities), and parity passes on the folded one."""
    cards = [read_card(w / "model.onnx") for w in (digits_workdir, folded_digits)]
    assert cards[1].folded_normalization == {"mean": list(cards[0].preprocess.mean),
                                             "std": list(cards[0].preprocess.std)}
    assert cards[1].preprocess.mean == (0.0, 0.0, 0.0) and cards[1].preprocess.resize == cards[0].preprocess.resize
    sessions = [ort.InferenceSession(str(w / "model.onnx"), providers=["CPUExecutionProvider"])
                for w in (digits_workdir, folded_digits)]
    for frame in _frames(32):
        logits = [s.run(None, {"input": c.preprocess.transform()(Image.fromarray(frame)).numpy()[None]})[0]
                  for s, c in zip(sessions, cards)]
        probabilities = np.exp(logits[0]) / np.exp(logits[0]).sum()
        assert np.abs(probabilities - logits[1]).max() < 1e-5 and logits[0].argmax() == logits[1].argmax()
    report = run_parity(folded_digits, "digits:test", backends=["ort"], precisions=["fp32", "int8"],
                        thresholds=load_thresholds(), limit=128)
    assert report["summary"]["passed"], report["summary"]
    assert report["model"]["folded_normalization"] is not None


def test_folding_twice_or_renormalizing_a_folded_model_is_refused(folded_digits, run_cli, tmp_path):
    one_line_error(run_cli("export", folded_digits / "model.pt", "--fold-normalization", "--out",
                           tmp_path / "again"), 2, "already in its graph")
    one_line_error(run_cli("export", folded_digits / "model.pt", "--mean", "0.5,0.5,0.5", "--out",
                           tmp_path / "again"), 2, "--mean and --std do not apply")


def test_serving_bundles_verify_like_any_other(folded_digits, calibrated_workdir, run_cli, tmp_path):
    for workdir, target in ((calibrated_workdir, "triton"), (folded_digits, "deepstream")):
        made = make_bundle(workdir, target, tmp_path / f"{target}.tar.gz", golden=64)
        result = run_cli("verify", made.path, "--allow-unsigned", "--iterations", "2")
        assert result.exit_code == 0, result.output
        assert "files match manifest.json" in result.stdout and "PASS" in result.stdout


def test_the_cli_offers_every_target():
    from resnet_edge.cli import TARGET_NAMES
    assert TARGET_NAMES == list(TARGETS)


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/abs", "", 7])
def test_a_plan_model_name_that_is_a_path_is_refused(name, tmp_path):
    bundle = tmp_path / "b"
    (bundle / "triton-plan").mkdir(parents=True)
    (bundle / "triton-plan" / "model.json").write_text(f'{{"name": {json.dumps(name)}}}')
    (tmp_path / "model.engine").write_text("plan")
    with pytest.raises(ValueError, match="not a plain folder name"):
        install_plan(bundle, tmp_path / "model.engine", tmp_path / "device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "model.engine"]


# ---- nvinfer's own rules (tests/oracles/nvinfer.py) -------------------------------------------

@pytest.fixture(scope="module")
def deepstream_bundle(folded_digits, tmp_path_factory):
    made = make_bundle(folded_digits, "deepstream", tmp_path_factory.mktemp("ds") / "ds.tar.gz", golden=64)
    return safe_extract(made.path, tmp_path_factory.mktemp("dsx"))


@pytest.mark.parametrize("change,message,release", [
    # what bundle wrote before: nvinfer refused to start on it
    (("classifier-threshold=0.0", "classifier-threshold=-1000000000"),
     "Negative value specified for classifier-threshold", "7.1"),
    (("network-mode=3", "network-mode=4"), "Invalid value for 'network-mode':'4'", "7.1"),
    (("network-mode=3", "network-mode=3"), "Invalid value for 'network-mode':'3'", "6.3"),  # 7.0 added 3
    (("batch-size=8", "batch-size=0"), "batch-size(0) should be in the range [1,1024]", "7.1"),
    (("batch-size=8", "batch-size=1.5"), "cannot be interpreted as a number", "7.1"),
    (("infer-dims=3;32;32", "infer-dims=3;32"), "Should be 3 as [c;h;w] order", "7.1"),
    (("scaling-filter=3", "scaling-filter=9"), "Invalid value for 'scaling-filter':'9'", "7.1"),
])
def test_the_nvinfer_oracle_refuses_what_nvinfer_refuses(change, message, release, deepstream_bundle):
    text = (deepstream_bundle / "deepstream" / "config_infer_int8.txt").read_text()
    assert change[0] in text and not nvinfer_rules.check(text, "7.1")
    found = nvinfer_rules.check(text.replace(change[0], change[1]), release)
    assert [f.kind for f in found] == ["error"] and message in found[0].message, found
    assert f"DeepStream {release} sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.cpp:" in found[0].source


@pytest.mark.parametrize("text,release,arch", [
    # nvinfer defaults what the config leaves out (NvDsInferContext_ResetInitParams): batch 1
    ("[property]\nonnx-file=m.onnx\nnetwork-type=1\n", "7.1", "aarch64"),
    # no range checks where nvinfer has none (gpu-id's device count check is `&& 0`)
    ("[property]\nonnx-file=m.onnx\nnetwork-type=1\ngpu-id=-1\nenable-dla=1\nuse-dla-core=7\n", "6.3", "x86_64"),
    # VIC (2) exists on Jetsons only (#ifdef __aarch64__)
    ("[property]\nonnx-file=m.onnx\nnetwork-type=1\nscaling-compute-hw=2\n", "7.1", "aarch64"),
    # keys 7.0 added
    ("[property]\nonnx-file=m.onnx\nnetwork-type=1\ndump-input-tensor=0\n", "7.1", "aarch64"),
])
def test_the_nvinfer_oracle_takes_what_nvinfer_takes(text, release, arch):
    assert nvinfer_rules.check(text, release, arch) == []


@pytest.mark.parametrize("text,release,arch,kind,said", [
    ("[property]\nonnx-file=m.onnx\nnetwork-type=1\nscaling-compute-hw=2\n", "7.1", "x86_64", "error",
     "Invalid value for 'scaling-compute-hw':'2'"),
    ("[property]\nonnx-file=m.onnx\nnetwork-type=1\ndump-input-tensor=0\n", "6.3", "aarch64", "degrade",
     "Unknown or legacy key specified 'dump-input-tensor'"),
    ("[property]\nonnx-file=m.onnx\n", "7.1", "aarch64", "degrade", "runs the model as a detector"),
])
def test_the_nvinfer_oracle_tells_release_and_platform_apart(text, release, arch, kind, said):
    found = nvinfer_rules.check(text, release, arch)
    assert [f.kind for f in found] == [kind] and said in found[0].message, found
    assert f"DeepStream {release} sources/" in found[0].source


def _starts(config, engines, writable=lambda folder: True):
    return nvinfer_rules.start(str(config), engines, writable)


def test_nvinfer_builds_once_and_every_later_start_loads_that_engine(deepstream_bundle, tmp_path):
    """nvinfer serializes the engine it builds beside the ONNX, never to model-engine-file, and
    loads model-engine-file on the next start: the configs name that file, so the second start
    reuses the first one's build (the configs used to name one in <bundle>.device/: every start
    built again, minutes on an Orin)."""
    import shutil
    root = tmp_path / deepstream_bundle.name
    shutil.copytree(deepstream_bundle, root)
    for config in sorted((root / "deepstream").glob("config_infer_*.txt")):
        values = _nvinfer(config)
        dims = tuple(int(v) for v in values["infer-dims"].split(";"))
        first = _starts(config, {})
        assert first.action == "build" and "try rebuild" in first.reason
        assert first.engine == str((config.parent / values["model-engine-file"]).resolve())
        second = _starts(config, {first.engine: nvinfer_rules.Engine(int(values["batch-size"]), dims)})
        assert (second.action, second.engine) == ("reuse", first.engine), second
        # a read-only bundle: nvinfer builds at every start and saves nothing
        assert _starts(config, {}, writable=lambda folder: False).engine == ""
    # the old config, shown failing the rule: its engine is never the one nvinfer wrote
    config = root / "deepstream" / "config_infer_fp16.txt"
    old = config.read_text().replace("model-engine-file=../", f"model-engine-file=../../{root.name}.device/deepstream/")
    config.write_text(old)
    built = _starts(config, {}).engine
    again = _starts(config, {built: nvinfer_rules.Engine(8, (3, 32, 32))})
    assert again.action == "build", again


def test_an_engine_nvinfer_cannot_use_is_rebuilt(deepstream_bundle):
    config = deepstream_bundle / "deepstream" / "config_infer_fp16.txt"
    values = _nvinfer(config)
    engine = str((config.parent / values["model-engine-file"]).resolve())
    batch = int(values["batch-size"])
    small = _starts(config, {engine: nvinfer_rules.Engine(batch - 1, (3, 32, 32))})
    assert small.action == "build" and f"Backend has maxBatchSize {batch - 1} whereas {batch}" in small.reason
    assert "nvdsinfer_context_impl.cpp:2026" in small.source
    other = _starts(config, {engine: nvinfer_rules.Engine(batch, (3, 64, 64))})
    assert other.action == "build" and "backend can not support dims:3x32x32" in other.reason


def test_nvinfer_reads_one_output_layer_of_the_models_classes(deepstream_bundle, folded_digits):
    names = read_card(folded_digits / "model.onnx").class_names or [str(i) for i in range(10)]
    assert nvinfer_rules.labels((deepstream_bundle / "deepstream" / "labels.txt").read_text()) == [names]


def test_int8_configs_keep_int8_when_nvinfer_builds_the_engine_itself(deepstream_bundle):
    """Without int8-calib-file nvinfer turns INT8 into FP16; every int8 config names the cache."""
    for path in (deepstream_bundle / "deepstream").glob("config_infer_int8*.txt"):
        config = _nvinfer(path)
        assert (path.parent / config["int8-calib-file"]).is_file()
        without = "".join(line for line in path.read_text().splitlines(keepends=True)
                          if not line.startswith("int8-calib-file"))
        assert [f.message for f in nvinfer_rules.check(without)] == [
            "INT8 calibration file not specified. Trying FP16 mode."]


def test_nvinfer_labels_every_frame_from_probabilities_but_not_from_logits(deepstream_bundle):
    """nvinfer's default classifier keeps a class only above 0 and the threshold: a frame whose
    logits are all <= 0 got no label; the Softmax output always names the top-1 class."""
    assert nvinfer_rules.classifier_label([-0.5, -2.0, -1.0], threshold=0.0) is None
    golden = np.load(deepstream_bundle / "golden" / "inputs.npy")
    session = ort.InferenceSession(str(deepstream_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"input": golden})[0]
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    threshold = float(_nvinfer(deepstream_bundle / "deepstream" / "config_infer_fp16.txt")["classifier-threshold"])
    labels = [nvinfer_rules.classifier_label(p, threshold) for p in probabilities]
    assert labels == list(probabilities.argmax(axis=1))


def test_verify_accepts_the_engine_nvinfer_builds_beside_the_onnx_and_nothing_else(deepstream_bundle,
                                                                                   run_cli, tmp_path):
    import shutil
    root = tmp_path / deepstream_bundle.name
    shutil.copytree(deepstream_bundle, root)
    config = _nvinfer(root / "deepstream" / "config_infer_fp16.txt")
    onnx_file = config["onnx-file"].removeprefix("../")
    built = root / nvinfer_rules.engine_name(onnx_file, int(config["batch-size"]), 2)
    built.write_bytes(b"engine nvinfer built")
    result = run_cli("verify", root, "--allow-unsigned", "--iterations", "2", "--precisions", "fp32")
    assert result.exit_code == 0, result.output
    # it passes, but never unseen: a random file planted there is what nvinfer loads next start
    assert f"warning: {built.name} (sha256 " in result.stderr and "no signature covers it" in result.stderr
    built.rename(root / nvinfer_rules.engine_name("other.onnx", 8, 2))  # not a model of the bundle
    one_line_error(run_cli("verify", root, "--allow-unsigned", "--iterations", "2"), 2, "is not in manifest.json")
    (root / nvinfer_rules.engine_name("other.onnx", 8, 2)).unlink()
    (root / f"{onnx_file}_b\u0663_gpu0_fp16.engine").write_bytes(b"x")  # an Arabic-Indic 3 is no batch size
    one_line_error(run_cli("verify", root, "--allow-unsigned", "--iterations", "2"), 2, "is not in manifest.json")


def test_a_logits_model_is_refused_for_deepstream(equal_std):
    import dataclasses
    from resnet_edge.errors import BadInput
    deepstream = TARGETS["deepstream"]
    card = read_card(equal_std / "model.onnx")
    deepstream.check_model(card, "equal")  # one std, probabilities: what nvinfer reads
    with pytest.raises(BadInput, match="the model outputs logits.*export with --softmax"):
        deepstream.check_model(dataclasses.replace(card, output="logits"), "equal")
    TARGETS["triton"].check_model(dataclasses.replace(card, output="logits"), "equal")  # Triton serves logits


# ---- names that would rewrite a config (hostile inputs) -----------------------------------------

def _named_workdir(tmp_path, trained_digits, class_names, name="work"):
    """The trained digits model under other class names, exported (TorchScript: fast) with one
    std for every channel and a Softmax, so that DeepStream takes it."""
    from resnet_edge import zoo
    model, card = zoo.load_model(str(trained_digits.model_path))
    card.class_names = class_names
    zoo.save_checkpoint(tmp_path / "named.pt", model, card)
    return _export(str(tmp_path / "named.pt"), tmp_path / name, exporter="torchscript",
                   mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], softmax=True)


@pytest.mark.parametrize("target,bad,said", [
    # a newline would give labels.txt 11 lines for 10 classes: every label after it shifts by one
    ("triton", "four\nfive", "class 4 name 'four\\nfive' holds '\\n', and a label file holds one class per line"),
    ("jetpack6", "tab\there", "class 4 name 'tab\\there' holds '\\t'"),
    # str.splitlines() breaks at these too: a consumer reading labels that way read 11
    ("jetpack6", "four\u2028five", "class 4 name 'four\\u2028five' holds '\\u2028'"),
    ("triton", "four\x85five", "class 4 name 'four\\x85five' holds '\\x85'"),
    # nvinfer's label file is one line, split at ';'
    ("deepstream", "4;5", "class 4 name '4;5' holds ';', and nvinfer's label file separates"),
])
def test_a_class_name_a_label_file_cannot_carry_is_refused(target, bad, said, trained_digits,
                                                            tmp_path, run_cli):
    names = [str(i) for i in range(10)]
    names[4] = bad
    work = _named_workdir(tmp_path, trained_digits, names)
    out = tmp_path / "b.tar.gz"
    one_line_error(run_cli("bundle", work, "--target", target, "--out", out), 2, said)
    assert not out.exists()
    # what the servers' own readers would have made of the file as it used to be written
    if target == "triton" and "\n" in bad:
        assert len(triton_rules.labels("\n".join(names) + "\n")) == 11  # a label per line
    assert len("\n".join(names).splitlines()) == 11 or "\t" in bad or ";" in bad
    if target == "deepstream":
        assert [len(layer) for layer in nvinfer_rules.labels(";".join(names) + "\n")] == [11]


def test_a_semicolon_is_an_ordinary_character_outside_deepstream(trained_digits, tmp_path):
    names = [f"class;{i}" for i in range(10)]
    root = _bundle(_named_workdir(tmp_path, trained_digits, names), "triton", tmp_path)
    repo = next((root / "triton").iterdir())
    assert triton_rules.labels((repo / "labels.txt").read_text()) == names


@pytest.mark.parametrize("name", [
    # the bundle is named after the work dir, and nvinfer configs name it: through a newline,
    # any key, and custom-lib-path makes DeepStream load a shared library
    "w\ncustom-lib-path=x.so\n",
    "w\nnetwork-mode=0",
    "-rf",
    "two words",
])
def test_a_work_dir_name_that_is_not_a_plain_file_name_makes_no_bundle(name, trained_digits, tmp_path,
                                                                       run_cli):
    work = _named_workdir(tmp_path, trained_digits, None, name=name)
    result = run_cli("bundle", work, "--target", "deepstream", "--out", tmp_path)
    one_line_error(result, 2, f"the bundle name {name + '-deepstream'!r} is not a plain file name")
    assert not list(tmp_path.glob("*.tar.gz"))


def test_tensor_names_are_escaped_in_config_pbtxt():
    """An ONNX input name that closes its string and opens a tensor of its own stays one name
    when Triton's parser reads the config back."""
    from resnet_edge.deploy.serving import triton_config
    hostile = 'x" dims: [ 1 ] } ] output [ { name: "evil\n\\é'
    text = triton_config("m", "onnxruntime_onnx", input_name=hostile, input_dims=[3, 32, 32],
                         output_name="logits", output_dims=[10],
                         profile={"min": 1, "opt": 8, "max": 32, "static": False})
    config = _parse_text(text)
    assert [i.name for i in config.input] == [hostile] and [o.name for o in config.output] == ["logits"]
    assert list(config.input[0].dims) == [3, 32, 32]
    # the same name written as it was before: the parser takes a second output from it
    naive = text.replace(serving_pbtxt(hostile), f'"{hostile}"')
    with pytest.raises(text_format.ParseError):
        _parse_text(naive)


def _parse_text(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def serving_pbtxt(value):
    from resnet_edge.deploy.serving import _pbtxt
    return _pbtxt(value)


@pytest.mark.parametrize("args,said", [
    (("--target", "jetpack6", "--triton-accelerator", "fp16"), "--triton-accelerator goes with --target triton"),
    (("--target", "triton", "--classifier-threshold", "0.5"), "--classifier-threshold goes with --target deepstream"),
])
def test_a_targets_own_option_given_with_another_target_is_refused_by_its_flag(args, said, digits_workdir,
                                                                             tmp_path, run_cli):
    """Options named as the command line names them, so the refusal names the flag the user typed."""
    one_line_error(run_cli("bundle", digits_workdir, "--out", tmp_path, *args), 2, said)
    assert not list(tmp_path.iterdir())


def test_a_classifier_threshold_outside_0_1_is_refused(equal_std, tmp_path, run_cli):
    one_line_error(run_cli("bundle", equal_std, "--out", tmp_path, "--target", "deepstream",
                           "--classifier-threshold", "1.5"), 2, "--classifier-threshold 1.5 is not a probability")
    assert not list(tmp_path.iterdir())


def _serve_lines(readme: str) -> list[str]:
    """The README's shell lines, continuation lines joined."""
    blocks = re.findall(r"```\n(.*?)```", readme, re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


@pytest.mark.parametrize("accelerator", ["none", "fp16", "int8"])
def test_the_readme_serve_line_finds_every_folder_it_and_the_config_name(accelerator, calibrated_workdir,
                                                                          tmp_path):
    """Run as the README says, from the bundle folder mounted with its parent at /w: its mkdir
    line (where there is one) makes the ONNX Runtime engine cache folder the config names (the
    TensorRT provider makes only its last level), and the ONNX-only serve line names only
    repositories that exist before any plan is built (Triton refuses one it cannot stat)."""
    root = _bundle(calibrated_workdir, "triton", tmp_path / accelerator, accelerator=accelerator)
    lines = _serve_lines((root / "README.md").read_text())
    for line in lines:
        if line.startswith("mkdir "):
            subprocess.run(["sh", "-c", line], cwd=root, check=True)
    mounted = lambda path: root.parent / path.removeprefix("/w/")  # noqa: E731
    onnx_only = next(line for line in lines if "tritonserver --model-repository" in line
                     and ".device/triton" not in line)
    for repository in re.findall(r"--model-repository (\S+)", onnx_only):
        assert mounted(repository).is_dir(), repository
    name = serving.model_name(calibrated_workdir.name)
    accelerators = _parse(root / "triton" / name / "config.pbtxt").optimization.execution_accelerators
    for trt in accelerators.gpu_execution_accelerator:
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            assert mounted(trt.parameters[key]).is_dir(), key
    assert bool(accelerators.gpu_execution_accelerator) is (accelerator != "none")


def test_nvinfers_fp32_engine_is_the_tf32_build_never_ieee_fp32_under_its_name(deepstream_bundle, tmp_path):
    """nvinfer builds network-mode=0 with TensorRT's TF32 on; build_engine.sh tf32 installs that
    engine under nvinfer's fp32 name, and fp32 (IEEE) leaves the name alone, saying why. Built
    through the TensorRT 10.3 stand-in, as on JetPack 6."""
    from trt_standin import write_site
    root = tmp_path / deepstream_bundle.name
    shutil.copytree(deepstream_bundle, root)
    config = (root / "deepstream" / "config_infer_fp32.txt").read_text()
    target = root / next(line.split("=", 1)[1] for line in config.splitlines()
                         if line.startswith("model-engine-file=")).removeprefix("../")
    env = {**os.environ, "PYTHONPATH": str(write_site(tmp_path / "site", "10.3.0")),
           "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    ieee = subprocess.run(["bash", "build_engine.sh", "fp32"], cwd=root, env=env, capture_output=True, text=True)
    assert ieee.returncode == 0, ieee.stderr
    assert "DeepStream: not installed: nvinfer builds its fp32 engine (network-mode=0) with TF32 on" in ieee.stdout
    assert not target.exists()
    tf32 = subprocess.run(["bash", "build_engine.sh", "tf32"], cwd=root, env=env, capture_output=True, text=True)
    assert tf32.returncode == 0, tf32.stderr
    built = Path(tf32.stdout.split("built ", 1)[1].split()[0])
    assert built.name == "model.tf32.engine" and target.read_bytes() == built.read_bytes()
    assert json.loads(built.with_suffix(".json").read_text())["tf32"] is True
    assert "./build_engine.sh tf32" in (root / "README.md").read_text()


def test_the_engine_installer_reads_the_config_as_nvinfer_does(deepstream_bundle, tmp_path, capsys):
    """lib/serving.py (run by build_engine.sh) was a KeyError traceback on a config without
    model-engine-file= or with spaces around '=' (a GLib key file ignores them)."""
    import shutil
    from resnet_edge.deploy import serving
    root = tmp_path / deepstream_bundle.name
    shutil.copytree(deepstream_bundle, root)
    engine = tmp_path / "built.engine"
    engine.write_bytes(b"an engine")
    config = root / "deepstream" / "config_infer_fp16.txt"
    config.write_text(config.read_text().replace("model-engine-file=", "model-engine-file = "))
    installed = serving.install_engine(root, engine, "fp16", None)
    assert installed.read_bytes() == b"an engine" and installed.parent == root.resolve()
    # a model-engine-file outside [property] is not nvinfer's: GKeyFile reads keys per group
    kept = "".join(line for line in config.read_text().splitlines(keepends=True)
                   if not line.startswith("model-engine-file"))
    config.write_text(kept + "\n[class-attrs-all]\nmodel-engine-file=../x.onnx_b1_gpu0_fp16.engine\n")
    assert serving.main(["--bundle", str(root), "--engine", str(engine), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "names no model-engine-file" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_the_deepstream_app_shows_the_class_on_screen():
    """[osd] enable=0: swapping the fakesink for a display showed video and no label."""
    from resnet_edge.deploy.serving import deepstream_app_config
    config = deepstream_app_config("config_infer_fp16.txt", 1, 224)
    osd = config.split("[osd]\n")[1].split("\n\n")[0].splitlines()
    assert "enable=1" in osd and any(line.startswith("text-size=") for line in osd)
