import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resnet_edge import zoo
from resnet_edge.export import ExportOptions, export_model, read_card
from resnet_edge.export.metadata import read_export_options


def _ort_matches_torch(model, path, input_shape, batch):
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        ref = model(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    return np.abs(got - ref).max(), (got.argmax(1) == ref.argmax(1)).mean()


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow), "resnet20"])
def test_export_passes_checker_and_matches_torch(tmp_path, name, monkeypatch):
    model, card = zoo.load_model(name, weights="none")
    reads = []
    real = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    result = export_model(model, card, tmp_path)
    monkeypatch.undo()
    # export checks the model it holds in memory, and never reads back what it wrote
    assert not reads and (tmp_path / "model.fp16.onnx").exists()
    assert not result.skipped and result.path == tmp_path / "model.onnx"
    onnx.checker.check_model(str(result.path), full_check=True)
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert proto.opset_import[0].version == 20
    for batch in (1, 5):
        max_abs, agree = _ort_matches_torch(model, result.path, card.preprocess.input_shape, batch)
        assert max_abs <= 1e-3 and agree == 1.0
    assert [c.batch for c in result.checks] == [1, 5] and all(c.passed for c in result.checks)


def test_metadata_and_manifest_round_trip(tmp_path):
    model, card = zoo.load_model("resnet20", num_classes=4)
    card.class_names = ["a", "b", "c", "d"]
    # the exporter is beside the point here: TorchScript's takes a tenth of dynamo's time
    result = export_model(model, card, tmp_path, ExportOptions(exporter="torchscript", max_batch=16))
    assert read_card(result.path) == card
    assert read_export_options(result.path)["max_batch"] == 16
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["files"]["model.onnx"]
    from resnet_edge.artifacts import sha256_file
    assert entry["sha256"] == sha256_file(result.path)
    assert entry["options"] == {"exporter": "torchscript", "opset": 17, "max_batch": 16,
                                "min_batch": 1, "opt_batch": 8, "batch": None}
    from resnet_edge.export import export_profile
    assert export_profile(tmp_path) == {"min": 1, "opt": 8, "max": 16, "static": False}
    assert "torch" in manifest["versions"] and "onnxruntime" in manifest["versions"]


def test_unchanged_export_is_skipped_and_changed_one_is_not(tmp_path):
    model, card = zoo.load_model("resnet20")
    options = ExportOptions(exporter="torchscript")
    first = export_model(model, card, tmp_path, options)
    mtime = first.path.stat().st_mtime_ns
    assert export_model(model, card, tmp_path, options).skipped
    assert first.path.stat().st_mtime_ns == mtime
    assert not export_model(model, card, tmp_path, ExportOptions(exporter="torchscript", max_batch=8)).skipped


def test_torchscript_exporter_gives_opset_17(tmp_path):
    model, card = zoo.load_model("resnet20")
    result = export_model(model, card, tmp_path, ExportOptions(exporter="torchscript"))
    assert onnx.load(str(result.path)).opset_import[0].version == 17
    max_abs, agree = _ort_matches_torch(model, result.path, card.preprocess.input_shape, 5)
    assert max_abs <= 1e-3 and agree == 1.0


def test_interrupted_export_leaves_nothing_trusted(tmp_path):
    from resnet_edge.artifacts import WorkDir
    from resnet_edge.errors import BadInput
    model, card = zoo.load_model("resnet20")
    options = ExportOptions(exporter="torchscript")

    def interrupt_at(prefix):
        def step(message):
            if message.startswith(prefix):
                raise KeyboardInterrupt
        return step
    with pytest.raises(KeyboardInterrupt):  # checks run in memory: nothing is on disk yet
        export_model(model, card, tmp_path / "a", options, step=interrupt_at("checking"))
    assert [n for n in os.listdir(tmp_path / "a") if n != ".resnet-edge.lock"] == []
    with pytest.raises(KeyboardInterrupt):  # model.onnx written, the set not completed
        export_model(model, card, tmp_path / "b", options, step=interrupt_at("writing the FP16"))
    assert (tmp_path / "b" / "model.onnx").exists()
    with pytest.raises(BadInput, match="not made by a completed resnet-edge run"):
        WorkDir(tmp_path / "b").vouch("model.onnx", "resnet-edge export")


def test_cli_export_checkpoint_then_up_to_date(tmp_path, run_cli):
    model, card = zoo.load_model("resnet20", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    out = tmp_path / "work"
    result = run_cli("export", tmp_path / "plain.pth", "--arch", "resnet20", "--out", out,
                     "--exporter", "torchscript")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "100.0%" in result.stdout
    assert read_card(out / "model.onnx").num_classes == 3
    again = run_cli("export", tmp_path / "plain.pth", "--arch", "resnet20", "--out", out,
                    "--exporter", "torchscript")
    assert again.exit_code == 0 and "up to date" in again.stdout
    # another model's ONNX file and checkpoint, with a manifest forged to vouch for them: "up to
    # date" (exit 0) since turn 3; the files are now checked against the model, not the record
    import json
    import shutil
    from resnet_edge.artifacts import sha256_file
    other, other_card = zoo.load_model("resnet20", num_classes=3)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    assert run_cli("export", tmp_path / "other.pth", "--arch", "resnet20", "--out", tmp_path / "o",
                   "--exporter", "torchscript").exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("model.onnx", "model.pt"):
        shutil.copyfile(tmp_path / "o" / name, out / name)
        manifest["files"][name]["sha256"] = sha256_file(out / name)
        manifest["complete"]["export"]["outputs"][name] = sha256_file(out / name)
    (out / "manifest.json").write_text(json.dumps(manifest))
    forged = run_cli("export", tmp_path / "plain.pth", "--arch", "resnet20", "--out", out,
                     "--exporter", "torchscript")
    assert forged.exit_code == 0 and "up to date" not in forged.stdout, forged.output
    assert "does not compute it; exporting again" in forged.output
    assert sha256_file(out / "model.onnx") != sha256_file(tmp_path / "o" / "model.onnx")
    assert sha256_file(out / "model.pt") != sha256_file(tmp_path / "o" / "model.pt")


def test_export_that_disagrees_with_torch_exits_1_and_writes_nothing(tmp_path, run_cli):
    # Logits around 1e7: float32 rounding alone puts ORT and PyTorch more than 1e-3 apart, which
    # the absolute logit gate must catch.
    model, card = zoo.load_model("resnet20")
    with torch.no_grad():
        model.fc.weight.mul_(1e7)
    zoo.save_checkpoint(tmp_path / "huge.pt", model, card)
    result = run_cli("export", tmp_path / "huge.pt", "--out", tmp_path / "out", "--exporter", "torchscript")
    assert result.exit_code == 1, result.output
    assert "ONNX Runtime disagrees with PyTorch" in result.stderr and "(limit 1e-3)" in result.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()
