"""The repair loop (calibrate --max-accuracy-drop-pt) and quantization-aware fine-tuning, on a
model where post-training quantization fails.

The fixture is the committed digits ResNet-20 changed without changing what it computes: one
channel of layer1.0's first batch norm scaled up by OUTLIER and layer1.0.conv2's weights that
read it scaled down by the same factor (ReLU commutes with a positive scale). OUTLIER is a power
of two, so both scalings are exact in float and the fp32 logits are bit for bit the same; but
that channel now stretches the per-tensor int8 range of conv2's input 128-fold, and its conv2
weights fall below their channel's int8 step, so post-training quantization loses tens of
points (24 on the held-out images, by every calibration method).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from resnet_edge.calibration import calibrate, fine_tune_onnx, qat
from resnet_edge.calibration.qdq import load_ranges, quantize, save_ranges
from resnet_edge.export import export_model
from resnet_edge.export.metadata import quantization_info
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import run_parity
from resnet_edge.runtime.ort import make_session
from resnet_edge.zoo import load_model

CHECKPOINT = Path(__file__).parent / "data" / "resnet20-digits.pt"
OUTLIER, CHANNEL = 128.0, 3
BUDGET = 1.0


@pytest.fixture(scope="module")
def outlier_workdir(tmp_path_factory):
    model, card = load_model(str(CHECKPOINT))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32))
    with torch.no_grad():
        before = model(x)
        block = model.layer1[0]
        block.bn1.weight[CHANNEL] *= OUTLIER
        block.bn1.bias[CHANNEL] *= OUTLIER
        block.conv2.weight[:, CHANNEL] /= OUTLIER
        assert torch.equal(model(x), before)  # function-preserving, exactly
    out = tmp_path_factory.mktemp("outlier") / "resnet20"
    export_model(model, card, out)
    return out


def _copy(workdir: Path, where: Path) -> Path:
    shutil.copytree(workdir, where)
    return where


def test_ptq_fails_and_the_loop_leaves_the_outlier_layer_in_float(outlier_workdir, tmp_path):
    work = _copy(outlier_workdir, tmp_path / "w")
    result = calibrate(work, "digits:train", samples=128, holdout=300, max_accuracy_drop_pt=BUDGET)
    steps = result.repair["steps"]
    # every method first, each losing tens of points with every layer in int8
    assert [s["step"] for s in steps[:3]] == ["entropy calibration", "minmax calibration",
                                              "percentile calibration"]
    assert all(s["drop_pt"] > 10 and not s["holds"] and not s["float_layers"] for s in steps[:3]), steps
    # then the most sensitive layer in float: the one reading the stretched tensor, and it holds
    last = steps[-1]
    assert last["holds"] and last["float_modules"] == ["layer1.0.conv2"], steps
    assert result.repair["met"] is True and result.repair["kept"] == last["step"]
    assert result.excluded == last["float_layers"] and result.method == last["method"]
    # recorded in the int8 model, the work dir's record and the parity report
    assert quantization_info(work / "model.int8.onnx")["repair"] == json.loads(json.dumps(result.repair))
    record = json.loads((work / "manifest.json").read_text())
    assert "repair" in json.dumps(record)
    report = run_parity(work, "digits:test", backends=["ort"], precisions=["int8"],
                        thresholds=load_thresholds(), device="cpu")
    assert report["calibration"]["repair"]["kept"] == last["step"]
    assert report["candidates"][0]["accuracy"]["drop_pt"] <= BUDGET


def test_without_labels_the_loop_says_it_cannot_judge(outlier_workdir, tmp_path):
    from resnet_edge.calibration.dataset import calibration_inputs
    from resnet_edge.data import open_data
    from resnet_edge.export import read_card
    work = _copy(outlier_workdir, tmp_path / "w")
    card = read_card(onnx.load(str(work / "model.onnx"), load_external_data=False))
    images, _ = calibration_inputs(open_data("digits:train"), card.preprocess, 96)
    np.save(tmp_path / "images.npy", images)  # no labels file: nothing to judge by
    result = calibrate(work, f"npy:{tmp_path / 'images.npy'}", samples=64, holdout=32,
                       max_accuracy_drop_pt=BUDGET)
    assert result.repair["met"] is None and result.repair["steps"] == []
    assert "not judged: the held-out images have no labels" in result.repair["kept"]
    assert result.excluded == [] and result.method == "entropy"


def test_the_fake_quantized_model_computes_what_the_qdq_model_does(calibrated_workdir, tmp_path):
    """What fine-tuning trains (PyTorch's fake quantization, as FakeQuantized places it) and
    what is written (the tuned weights in model.onnx's graph, quantized with the learned scales
    by the same call as post-training quantization, run by ONNX Runtime with Q/DQ as written)
    give the same logits."""
    from resnet_edge.calibration.heldout import Held
    from resnet_edge.data import batches, open_data
    from resnet_edge.export import read_card
    from resnet_edge.export.metadata import module_of
    fp32 = onnx.load(str(calibrated_workdir / "model.onnx"))
    card = read_card(fp32)
    source = open_data("digits:train")
    held_x = np.concatenate([x.numpy() for x, _ in batches(source, card.preprocess, 128,
                                                            indices=list(range(256, 384)))])
    held = Held(held_x, source.labels[256:384], list(range(256, 384)))
    ranges = load_ranges(calibrated_workdir / "calibration.ranges.json")
    tuned, learned, record = fine_tune_onnx(calibrated_workdir, fp32, ranges, source, card,
                                            list(range(0, 256)), held, epochs=1)
    assert record["epochs"] == 1 and record["train_images"] == 256 and learned
    onnx.save(tuned, str(tmp_path / "tuned.onnx"))
    save_ranges(calibrated_workdir / "calibration.ranges.json", learned, tmp_path / "ranges.json")
    written = quantize(tmp_path / "tuned.onnx", tmp_path / "scratch.onnx", recipe="tensorrt",
                       method="minmax", ranges_path=tmp_path / "ranges.json")
    session = make_session(written.SerializeToString(), disable_qdq_fusion=True)
    ours = session.run(None, {session.get_inputs()[0].name: held_x})[0]
    # the same weights in PyTorch, quantized by FakeQuantized with the learned scales
    model, _ = load_model(str(calibrated_workdir / "model.pt"))
    qat.fold_batchnorm(model)
    onnx_weights = {i.name: i for i in tuned.graph.initializer}
    with torch.no_grad():
        for node in tuned.graph.node:
            if node.op_type in ("Conv", "Gemm"):
                layer = dict(model.named_modules())[module_of(node)]
                layer.weight.copy_(torch.from_numpy(onnx.numpy_helper.to_array(onnx_weights[node.input[1]])))
                layer.bias.copy_(torch.from_numpy(onnx.numpy_helper.to_array(onnx_weights[node.input[2]])))
    fake = qat.FakeQuantized(model.eval(), fp32, load_ranges(tmp_path / "ranges.json"))
    with torch.no_grad():
        theirs = model(torch.from_numpy(held_x)).numpy()
    fake.remove()
    assert (ours.argmax(1) == theirs.argmax(1)).mean() == 1.0
    # the same arithmetic: equal to float rounding, but where an activation sits on a rounding
    # boundary and float summation order tips it into the next int8 step
    diff = np.abs(ours - theirs)
    assert np.median(diff) < 1e-5 and (diff < 1e-4).mean() > 0.8, np.percentile(diff, [50, 90])
    assert diff.max() < 0.02 * np.abs(theirs).max(), diff.max()


@pytest.mark.slow
def test_qat_with_every_layer_in_int8_brings_it_back(outlier_workdir, tmp_path):
    """--max-float-layers 0: from the methods straight to quantization-aware fine-tuning, which
    holds with no layer in float. About 25 s: make test-all."""
    work = _copy(outlier_workdir, tmp_path / "w")
    result = calibrate(work, "digits:train", samples=256, holdout=300, max_accuracy_drop_pt=BUDGET,
                       max_float_layers=0)
    steps = result.repair["steps"]
    assert len(steps) == 4 and not any(s["float_layers"] for s in steps)
    last = steps[-1]
    assert last["qat"]["epochs"] == qat.DEFAULT_EPOCHS and last["holds"], steps
    assert result.excluded == []
    model = onnx.load(str(work / "model.int8.onnx"))
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.op_type in ("Conv", "Gemm")):
        assert produced[node.input[0]] == produced[node.input[1]] == "DequantizeLinear", node.name


@pytest.mark.slow
def test_a_qat_model_goes_through_parity_bundle_and_verify(calibrated_workdir, tmp_path, run_cli):
    """resnet-edge qat on the clean digits model: the int8 files it writes pass parity's default
    gates, and a bundle of them verifies."""
    work = _copy(calibrated_workdir, tmp_path / "w")
    done = run_cli("qat", work, "--epochs", "2", "--samples", "128", "--holdout", "200",
                   "--json", tmp_path / "q.json")
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "q.json").read_text())["repair"]["steps"][0]["qat"]["epochs"] == 2
    parity = run_cli("parity", work, "--data", "digits:test", "--backends", "ort", "--precisions", "int8")
    assert parity.exit_code == 0, parity.output
    bundled = run_cli("bundle", work, "--target", "jetpack6", "--out", tmp_path / "dist")
    assert bundled.exit_code == 0, bundled.output
    archive = next((tmp_path / "dist").glob("*.tar.gz"))
    verified = run_cli("verify", archive, "--allow-unsigned", "--iterations", "2")
    assert verified.exit_code == 0, verified.output


def test_qat_without_a_pytorch_model_says_so_before_any_work(outlier_workdir, tmp_path, run_cli):
    work = _copy(outlier_workdir, tmp_path / "w")
    (work / "model.pt").unlink()
    before = sorted(p.name for p in work.iterdir())
    done = run_cli("qat", work, "--epochs", "1")
    assert done.exit_code == 2 and "no PyTorch model (model.pt)" in done.stderr
    assert sorted(p.name for p in work.iterdir()) == before  # nothing calibrated, nothing written


@pytest.mark.parametrize("args,said", [
    (["--max-float-layers", "2"], "--max-float-layers caps the repair loop: give it with --max-accuracy-drop-pt"),
    (["--max-accuracy-drop-pt", "nan"], "--max-accuracy-drop-pt"),
    (["--max-accuracy-drop-pt", "1", "--exclude", "auto"], "drop --exclude"),
    (["--max-accuracy-drop-pt", "1", "--qat-epochs", "0"], "--epochs must be at least 1, got 0"),
])
def test_repair_options_refused_in_one_line_before_any_work(args, said, outlier_workdir, tmp_path, run_cli):
    work = _copy(outlier_workdir, tmp_path / "w")
    before = sorted(p.name for p in work.iterdir())
    done = run_cli("calibrate", work, "--data", "digits:train", *args)
    assert done.exit_code == 2 and said in done.stderr, done.output
    assert sorted(p.name for p in work.iterdir()) == before
