"""The data and models users really have: unlabelled calibration folders, class subsets, other
input sizes, static batches, offline weights, and finding the layer where a precision breaks."""

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from cli_output import one_line_error
from resnet_edge.calibration import calibrate
from resnet_edge.deploy import make_bundle, safe_extract
from resnet_edge.errors import BadInput
from resnet_edge.export import ExportOptions, export_model
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import run_parity
from resnet_edge.zoo import load_model




def _photos(folder, count, nested=False):
    rng = np.random.default_rng(0)
    for i in range(count):
        where = folder / (f"sub{i % 2}" if nested else "")
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(where / f"{i}.jpg")
    (folder / "README.txt").write_text("not an image")


def test_a_flat_unlabelled_folder_calibrates_a_1000_class_resnet18(tmp_path, run_cli):
    _photos(tmp_path / "calib", 6)
    model, card = load_model("resnet18", weights="none")
    assert card.num_classes == 1000
    export_model(model, card, tmp_path / "r18", ExportOptions(exporter="torchscript"), fp16=False)
    result = run_cli("calibrate", tmp_path / "r18", "--data", f"images:{tmp_path / 'calib'}",
                     "--samples", "6", "--method", "minmax")
    assert result.exit_code == 0, result.output
    assert "6 images" in result.stdout and (tmp_path / "r18" / "model.int8.onnx").exists()
    nested = tmp_path / "nested"
    _photos(nested, 4, nested=True)
    from resnet_edge.data import open_data
    source = open_data(f"images:{nested}")
    assert len(source) == 4 and not source.has_labels and "1 file skipped as not images" in source.summary


def test_noise_calibration_is_warned_about(digits_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    result = calibrate(work, "random:32", samples=32, method="minmax")
    assert any("random noise" in note for note in result.warnings)


def test_a_5_of_10_class_evaluation_set_is_accepted_and_said(digits_workdir, tmp_path, run_cli):
    from resnet_edge.data import open_data
    digits = open_data("digits:test")
    keep = np.flatnonzero(digits.labels < 5)[:60]
    from resnet_edge.data import batches
    x = np.concatenate([b.numpy() for b, _ in batches(digits, load_model("resnet20")[1].preprocess,
                                                      64, indices=keep)])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", digits.labels[keep])
    report = run_parity(digits_workdir, f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}",
                        backends=["ort"], precisions=["fp32"], thresholds=load_thresholds())
    assert report["data"]["classes_present"] == 5
    assert "labels cover 5 of the model's 10 classes" in report["data"]["accuracy_note"]
    assert report["reference"]["accuracy"]["top1"] > 0.5
    folder = tmp_path / "folder"  # class folders named as the model's classes: a subset by name
    for label in (2, 7):
        (folder / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(digits.labels == label)[:3]:
            img = (digits.images[i][0].numpy() * 255).astype(np.uint8)
            Image.fromarray(img).resize((32, 32)).save(folder / str(label) / f"{i}.png")
    result = run_cli("eval", digits_workdir / "model.pt", "--data", f"imagefolder:{folder}", "--json", "-")
    assert result.exit_code == 0, result.output and json.loads(result.stdout)["images"] == 6


def test_a_64px_model_goes_through_export_calibrate_parity_and_bundle(trained_digits, tmp_path, run_cli):
    out = tmp_path / "r20-64"
    result = run_cli("export", trained_digits.model_path, "--input-size", "64", "--out", out,
                     "--exporter", "torchscript")  # the input size is tested, not the exporter
    assert result.exit_code == 0, result.output
    assert "64 px" in result.stdout
    from resnet_edge.export import read_card
    card = read_card(out / "model.onnx")
    assert card.preprocess.input_size == 64 and card.preprocess.resize == 64
    assert [d.dim_value for d in onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim][1:] == [3, 64, 64]
    assert run_cli("calibrate", out, "--samples", "64", "--method", "minmax").exit_code == 0
    parity = run_cli("parity", out, "--limit", "64", "--json", tmp_path / "p.json")
    assert parity.exit_code == 0, parity.output
    rows = json.loads((tmp_path / "p.json").read_text())["candidates"]
    assert {r["precision"] for r in rows if r["status"] == "ran"} == {"fp32", "fp16", "int8", "int8-fp16"}
    made = make_bundle(out, "jetpack6", tmp_path / "b.tar.gz", golden=64)
    root = safe_extract(made.path, tmp_path / "x")
    assert json.loads((root / "bundle.json").read_text())["input_shape"] == [3, 64, 64]
    assert np.load(root / "golden" / "inputs.npy").shape == (64, 3, 64, 64)
    assert run_cli("verify", made.path, "--allow-unsigned", "--iterations", "2").exit_code == 0


def test_a_plain_state_dict_says_which_preprocessing_it_gets(tmp_path, run_cli):
    model, _ = load_model("resnet20")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    result = run_cli("export", tmp_path / "plain.pth", "--arch", "resnet20", "--out", tmp_path / "o",
                     "--exporter", "torchscript")
    assert result.exit_code == 0, result.output
    assert "has no model card, so it gets resnet20's default preprocessing" in result.stderr
    quiet = run_cli("export", tmp_path / "plain.pth", "--arch", "resnet20", "--out", tmp_path / "q",
                    "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--exporter", "torchscript")
    assert quiet.exit_code == 0 and "default preprocessing" not in quiet.stderr


@pytest.fixture(scope="module")
def static_batch1(trained_digits, tmp_path_factory):
    model, card = load_model(str(trained_digits.model_path))
    out = tmp_path_factory.mktemp("static") / "b1"
    export_model(model, card, out, ExportOptions(batch=1))
    return out


def test_a_static_batch_1_export_refuses_batch_2_in_every_runtime(static_batch1, tmp_path, run_cli,
                                                                  monkeypatch):
    dims = onnx.load(str(static_batch1 / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1  # static in the file itself
    one_line_error(run_cli("parity", static_batch1, "--batch-size", "2"), 2,
              "--batch-size 2 is outside the model's batch profile: it takes only 1")
    one_line_error(run_cli("bench", static_batch1, "--batch-sizes", "1,2"), 2, "--batch-sizes 2 is outside")
    ok = run_cli("parity", static_batch1, "--backends", "ort", "--precisions", "fp32,fp16", "--limit", "5")
    assert ok.exit_code == 0, ok.output  # the default batch follows the profile
    from resnet_edge.backends import OrtBackend
    with pytest.raises(BadInput, match="a batch of 2 is outside the model's batch profile 1..1"):
        OrtBackend(static_batch1 / "model.onnx", batch_range=(1, 1)).run(np.zeros((2, 3, 32, 32), np.float32))
    from trt_standin import StandIn
    from resnet_edge.runtime import trt_engine, trt_rules, trt_runner
    StandIn("10.3.0").install(monkeypatch)
    engine = trt_engine.build_engine(static_batch1, "fp16", out_dir=tmp_path / "e", max_batch=1,
                                     opt_batch=1, min_batch=1)
    runner = trt_runner.TrtRunner(engine)
    assert runner.run(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
    with pytest.raises(trt_rules.EngineError, match="batch 2 exceeds the engine's max batch 1"):
        runner.run(np.zeros((2, 3, 32, 32), np.float32))
    made = make_bundle(static_batch1, "jetpack6", tmp_path / "b.tar.gz", golden=64)
    info = json.loads((safe_extract(made.path, tmp_path / "x") / "bundle.json").read_text())
    assert (info["min_batch"], info["opt_batch"], info["max_batch"], info["static_batch"]) == (1, 1, 1, True)
    verified = run_cli("verify", made.path, "--allow-unsigned", "--iterations", "2", "--backend", "ort")
    assert verified.exit_code == 0, verified.output  # golden inputs run one by one


def test_debug_finds_the_layer_whose_weights_were_perturbed(digits_workdir, tmp_path, run_cli):
    model = onnx.load(str(digits_workdir / "model.fp16.onnx"))
    from resnet_edge.export.metadata import module_of
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and module_of(n) == "layer2.1.conv1")
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    values = numpy_helper.to_array(weight).copy()
    values[0] *= -3  # one output channel broken
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(tmp_path / "broken.fp16.onnx"))
    result = run_cli("debug", digits_workdir, "--candidate", tmp_path / "broken.fp16.onnx",
                     "--images", "4", "--json", tmp_path / "d.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["first_exceeding"]["module"] == "layer2.1.conv1"
    before = [r for r in report["layers"] if r["index"] < report["first_exceeding"]["index"]]
    assert before and all(r["rel_error"] < 0.01 for r in before)  # fp16 alone stays small
    assert "first layer past the tolerance: #" in result.stdout and "layer2.1.conv1" in result.stdout
    clean = run_cli("debug", digits_workdir, "--precision", "fp16", "--images", "4")
    assert clean.exit_code == 0 and "every layer within the tolerance" in clean.stdout


def test_exclude_takes_module_names(digits_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    result = calibrate(work, "digits:train", samples=64, method="minmax", exclude="layer1.0.conv1,fc")
    from resnet_edge.calibration import conv_layers
    modules = {conv_layers(work / "model.onnx")[node] for node in result.excluded}
    assert modules == {"layer1.0.conv1", "fc"} and len(result.excluded) == 2
    with pytest.raises(BadInput, match="names no Conv/Gemm layer 'layer9.conv1'"):
        calibrate(work, "digits:train", samples=64, exclude="layer9.conv1")


def test_weights_come_from_a_folder_checked_against_torchvision_hashes(tmp_path, run_cli, monkeypatch):
    import torchvision
    member = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    model, _ = load_model("resnet18", weights="none")
    missing = run_cli("export", "resnet18", "--weights", "IMAGENET1K_V1", "--weights-dir", tmp_path,
                      "--out", tmp_path / "o")
    one_line_error(missing, 2, "resnet18-f37072fd.pth not found: --weights-dir holds torchvision weight files")
    torch.save(model.state_dict(), tmp_path / "resnet18-f37072fd.pth")  # right name, wrong bytes
    one_line_error(run_cli("export", "resnet18", "--weights", "IMAGENET1K_V1", "--weights-dir", tmp_path,
                      "--out", tmp_path / "o"), 2, "does not match the sha256 prefix f37072fd")
    digest = hashlib.sha256((tmp_path / "resnet18-f37072fd.pth").read_bytes()).hexdigest()[:8]
    (tmp_path / "resnet18-f37072fd.pth").rename(tmp_path / f"resnet18-{digest}.pth")
    monkeypatch.setattr(member.value, "url", f"https://download.pytorch.org/models/resnet18-{digest}.pth")
    monkeypatch.setenv("RESNET_EDGE_WEIGHTS", str(tmp_path))  # the environment variable works too
    result = run_cli("export", "resnet18", "--weights", "IMAGENET1K_V1", "--out", tmp_path / "o",
                     "--exporter", "torchscript")
    assert result.exit_code == 0, result.output
    from resnet_edge.export import read_card
    card = read_card(tmp_path / "o" / "model.onnx")
    assert card.weights_sha256 == hashlib.sha256((tmp_path / f"resnet18-{digest}.pth").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def not_digits(tmp_path_factory):
    """A model not trained here (random init stands for torchvision weights or a foreign
    checkpoint): its card names no data of its own."""
    model, card = load_model("resnet20")
    out = tmp_path_factory.mktemp("foreign") / "w"
    export_model(model, card, out, ExportOptions(exporter="torchscript"))
    zoo_ckpt = out / "model.pt"
    return out, zoo_ckpt


@pytest.mark.parametrize("command,option", [
    (("parity", "{work}"), "--data"),
    (("calibrate", "{work}"), "--data"),
    (("bundle", "{work}"), "--data"),
    (("debug", "{work}", "--precision", "fp16"), "--data"),
    (("eval", "{ckpt}"), "--data"),
])
def test_no_command_falls_back_to_digits_for_a_model_not_trained_on_it(command, option, not_digits,
                                                                       run_cli):
    """calibrate calibrated a 1000-class ResNet-18 on upscaled digits without a word, bundle
    packed digits as its golden images, and verify then passed at 0 % top-1."""
    work, ckpt = not_digits
    before = sorted(p.name for p in work.iterdir())
    result = run_cli(*[a.format(work=work, ckpt=ckpt) for a in command])
    one_line_error(result, 2, f"{option} is needed: resnet20's card says its weights are "
                              "'none (random init, seed 0)'")
    assert f"e.g. {option} " in result.stderr
    assert sorted(p.name for p in work.iterdir()) == before  # refused before any work


def test_a_pipeline_for_a_foreign_model_asks_for_its_data_before_exporting(tmp_path, run_cli):
    result = run_cli("pipeline", "resnet20", "--weights", "none", "--out", tmp_path / "p")
    one_line_error(result, 2, "--data-calib is needed")
    assert not (tmp_path / "p" / "model.onnx").exists()


def test_a_model_trained_here_defaults_to_its_own_dataset(trained_digits, digits_workdir):
    from resnet_edge.data import data_for
    assert data_for(trained_digits.card, "train", None, "--data") == "digits:train"
    assert data_for(trained_digits.card, "test", "npy:x.npy", "--data") == "npy:x.npy"
