"""Numbers that cannot lie: non-finite values, stale or half-written artifacts, malformed model
cards, and dependencies' errors. Each case: the exit code, one line on stderr, and no leftover
or stale artifact."""

import errno
import io
import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cli_output import one_line_error
from resnet_edge import zoo
from resnet_edge.calibration import calibrate
from resnet_edge.errors import BadInput
from resnet_edge.export import ExportOptions, export_model
from resnet_edge.export.metadata import CARD_KEY, load_onnx, read_card




def _strict(path):
    """The file parses as JSON that has no bare NaN or Infinity."""
    def refuse(token):
        raise AssertionError(f"{path} holds {token}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def _checkpoint(path, **edits):
    model, card = zoo.load_model("resnet20")
    state = model.state_dict()
    for key, change in edits.items():
        change(state[key])
    zoo.save_checkpoint(path, model, card)
    return path


# ---- NaN and inf -------------------------------------------------------------------------------

def test_a_nan_weight_is_refused_at_load(tmp_path, run_cli):
    ckpt = _checkpoint(tmp_path / "nan.pt", **{"fc.bias": lambda t: t.__setitem__(3, float("nan"))})
    result = run_cli("export", ckpt, "--out", tmp_path / "out")
    one_line_error(result, 2, "holds 1 NaN or inf values in fc.bias")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_logits_that_overflow_fail_their_row_and_reports_stay_json(tmp_path, run_cli):
    # finite in fp32, beyond fp16's 65504 in torch fp16: every fp16 logit of class 0 is inf
    ckpt = _checkpoint(tmp_path / "big.pt", **{"fc.bias": lambda t: t.__setitem__(0, 7e4)})
    assert run_cli("export", ckpt, "--out", tmp_path / "w", "--exporter", "torchscript").exit_code == 0
    out = tmp_path / "reports"
    result = run_cli("parity", tmp_path / "w", "--data", "digits:test", "--backends", "torch", "--precisions", "fp16",
                     "--limit", "40", "--json", out / "p.json", "--markdown", out / "p.md",
                     "--junit", out / "j.xml")
    one_line_error(result, 1, "parity gates failed: torch fp16 finite_logits")
    report = _strict(out / "p.json")
    row = report["candidates"][0]
    assert row["metrics"]["nonfinite"] == 40 and row["metrics"]["max_abs"] is None
    gate = next(g for g in row["gates"] if g["gate"] == "finite_logits")
    assert gate["value"] == 40 and gate["passed"] is False
    assert row["metrics"]["top1_agreement"] == 0.0  # a row with inf agrees with nothing
    assert "finite_logits" in (out / "p.md").read_text() and "finite_logits" in (out / "j.xml").read_text()


def test_a_model_whose_reference_is_not_finite_exports_nothing(tmp_path, run_cli):
    ckpt = _checkpoint(tmp_path / "inf.pt", **{"fc.bias": lambda t: t.__setitem__(0, 3e38),
                                               "fc.weight": lambda t: t.fill_(3e38)})
    result = run_cli("export", ckpt, "--out", tmp_path / "w", "--exporter", "torchscript")
    one_line_error(result, 1, "PyTorch itself gives NaN or inf logits")
    assert not (tmp_path / "w" / "model.onnx").exists()


def test_non_finite_input_data_is_refused_naming_file_and_image(digits_workdir, tmp_path, run_cli):
    x = np.zeros((5, 3, 32, 32), np.float32)
    x[3, 1, 2, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    result = run_cli("parity", digits_workdir, "--data", f"npy:{tmp_path / 'x.npy'}")
    one_line_error(result, 2, f"{tmp_path / 'x.npy'} image 3 holds NaN or inf values")


# ---- stale and half-written artifacts ---------------------------------------------------------

@pytest.fixture
def two_models(calibrated_workdir, tmp_path):
    """A calibrated work dir into which a different model was then exported."""
    work = tmp_path / "work"
    shutil.copytree(calibrated_workdir, work)
    other, card = zoo.load_model("resnet20")  # random init: not the trained digits model
    export_model(other, card, work, ExportOptions(exporter="torchscript"))
    return work


def test_stale_int8_is_refused_by_every_consumer(two_models, run_cli, tmp_path, monkeypatch):
    stale = "model.int8.onnx is stale: it was made from an earlier model.onnx; remake it with `resnet-edge calibrate"
    one_line_error(run_cli("parity", two_models, "--data", "digits:test", "--precisions", "int8",
                           "--backends", "ort"), 2, stale)
    result = run_cli("bundle", two_models, "--data", "digits:test", "--out", tmp_path / "b.tar.gz")
    one_line_error(result, 2, "is stale: it was made from an earlier model.onnx")
    assert not (tmp_path / "b.tar.gz").exists()
    from trt_standin import StandIn
    StandIn("10.3.0").install(monkeypatch)
    one_line_error(run_cli("build", two_models, "--precision", "int8"), 2, "is stale")
    assert not (two_models / "engines").exists()


def test_int8_gates_hold_on_unlabelled_data(calibrated_workdir):
    from resnet_edge.parity.gates import load_thresholds
    from resnet_edge.parity.run import run_parity
    report = run_parity(calibrated_workdir, "random:32", backends=["ort"], precisions=["int8"],
                        thresholds=load_thresholds())
    gates = {g["gate"]: g for g in report["candidates"][0]["gates"]}
    assert gates["top1_agreement_pct"]["passed"] is not None and gates["cosine"]["passed"] is not None
    assert gates["accuracy_drop_pt"]["status"] == "not measured"


def test_an_interrupted_calibration_is_never_trusted(digits_workdir, tmp_path, run_cli):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    leftover = work / ".model.int8.onnx.abc123.tmp"  # what a kill -9 leaves behind

    def kill(message):
        if message.startswith("writing model.int8.onnx"):
            leftover.write_bytes(b"half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        calibrate(work, "digits:train", samples=64, method="entropy", holdout=20, step=kill)
    result = run_cli("parity", work, "--backends", "ort", "--precisions", "int8")
    one_line_error(result, 3, "model.int8.onnx not found (made by calibrate)")
    again = calibrate(work, "digits:train", samples=64, method="entropy", holdout=20)
    assert again.path.exists() and not leftover.exists()  # the next run sweeps the leftover
    assert run_cli("parity", work, "--backends", "ort", "--precisions", "int8").exit_code == 0


def test_an_interrupted_recalibration_keeps_the_last_good_int8(calibrated_workdir, tmp_path, run_cli):
    """Ctrl-C 15 s into a re-calibration left the untouched, byte-identical model.int8.onnx
    untrusted (manifest.json was rewritten at the start): hours to redo on a ResNet-50. The
    last completed set now stays trusted until a new one completes; a file the interrupted
    run did replace is refused, saying so, with a remake line that keeps the run's --data."""
    work = tmp_path / "work"
    shutil.copytree(calibrated_workdir, work)
    before = (work / "model.int8.onnx").read_bytes()

    def stop_at(prefix):
        def step(message):
            if message.startswith(prefix):
                raise KeyboardInterrupt
        return step
    with pytest.raises(KeyboardInterrupt):
        calibrate(work, "digits:train", samples=64, method="minmax", step=stop_at("writing model.int8.onnx"))
    assert (work / "model.int8.onnx").read_bytes() == before
    assert run_cli("parity", work, "--backends", "ort", "--precisions", "int8", "--limit", "32").exit_code == 0
    assert run_cli("bundle", work, "--out", tmp_path / "b", "--golden", "40").exit_code == 0
    # stopped after model.int8.onnx was replaced: that file is the interrupted run's, and said so
    with pytest.raises(KeyboardInterrupt):
        calibrate(work, "digits:train", samples=48, method="minmax", step=stop_at("writing model.int8-fp16"))
    assert (work / "model.int8.onnx").read_bytes() != before
    result = run_cli("parity", work, "--backends", "ort", "--precisions", "int8")
    said = one_line_error(result, 2, "model.int8.onnx was rewritten by a run that did not complete")
    assert "resnet-edge calibrate " in said and "--data digits:train --samples 128 --method minmax" in said


def test_a_command_finding_another_writing_the_work_dir_names_it(calibrated_workdir, tmp_path, run_cli):
    """parity started while calibrate ran said the int8 file "was not made by a completed
    resnet-edge run (interrupted...)" and told the user to calibrate into the same dir."""
    import subprocess
    import sys
    work = tmp_path / "work"
    shutil.copytree(calibrated_workdir, work)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from resnet_edge.artifacts import WorkDir; "
         "WorkDir(sys.argv[1]).hold('calibrate'); print('held', flush=True); time.sleep(60)", str(work)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "held"
        result = run_cli("parity", work, "--backends", "ort", "--precisions", "int8")
        said = one_line_error(result, 2, f"is writing {work} now; run this again when it has finished")
        assert f"pid {writer.pid}" in said and "calibrate" in said
        result = run_cli("calibrate", work, "--data", "digits:train", "--samples", "16")
        one_line_error(result, 2, f"is writing {work} now")
    finally:
        writer.kill()
        writer.wait()
    # killed, its lock went with it: nothing to clean up by hand
    assert run_cli("parity", work, "--backends", "ort", "--precisions", "int8", "--limit", "16").exit_code == 0


def test_a_manifest_left_half_renamed_by_a_kill_is_swept_by_the_next_step(digits_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    leftover = work / ".manifest.json.k1ll3d.tmp"  # SIGKILL between write and rename
    leftover.write_text('{"half": ')
    calibrate(work, "digits:train", samples=16, method="minmax")
    assert not leftover.exists() and not list(work.glob(".*.tmp"))


def test_a_damaged_calibration_cache_is_not_bundled(calibrated_workdir, tmp_path, run_cli):
    work = tmp_path / "work"
    shutil.copytree(calibrated_workdir, work)
    cache = work / "calibration.cache"
    cache.write_text(cache.read_text()[:40])  # half-written
    result = run_cli("bundle", work, "--out", tmp_path / "b.tar.gz")
    one_line_error(result, 2, "calibration.cache changed after resnet-edge wrote it")
    assert not (tmp_path / "b.tar.gz").exists()


def test_pipeline_skips_what_is_unchanged_remakes_stale_steps_and_never_leaves_an_old_bundle(trained_digits, run_cli, tmp_path):
    out = tmp_path / "pipe"
    args = ("pipeline", trained_digits.model_path, "--out", out, "--samples", "64", "--limit", "64",
            "--bench-iterations", "2", "--golden", "64", "--exporter", "torchscript")
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    # progress names each step, k of n, and no rate: steps are too unlike for one
    assert "pipeline: 1/6 steps, export: " in first.stderr and "pipeline: 2/6 steps, calibrate: " in first.stderr
    assert "steps/s" not in first.stderr
    bundle = out / "pipe-jetpack6.tar.gz"
    listed = {line.split(" (")[0].removeprefix("wrote ") for line in first.stdout.splitlines()
              if line.startswith("wrote ")}
    assert {str(out / n) for n in ("model.onnx", "model.int8.onnx", "reports/parity.html",
                                   "reports/parity.png", "reports/bench.json")} | {str(bundle)} <= listed
    report = json.loads((out / "reports" / "parity.json").read_text())
    # a trained checkpoint's card says where its weights came from, in every report
    assert report["model"]["weights"].startswith("trained with resnet-edge on digits")
    assert (out / "reports" / "junit.xml").exists()
    idle = run_cli(*args)
    assert idle.exit_code == 0 and "wrote nothing: every step was up to date" in idle.stdout
    for step in ("export", "calibrate", "parity", "bench", "bundle"):
        assert any(line.split("│")[1:3] and step in line.split("│")[1] and "skipped" in line.split("│")[2]
                   for line in idle.stdout.splitlines() if "│" in line), (step, idle.stdout)
    (out / "calibration.cache").write_text("TRT-100300-EntropyCalibration2\n")  # damaged
    strict = tmp_path / "strict.toml"
    strict.write_text("[fp16]\nmin_top1_agreement_pct = 99.5\n[int8]\nmin_cosine = 0.9\n")
    second = run_cli(*args, "--thresholds", strict)
    assert second.exit_code == 0, second.output
    steps = {line.split("│")[1].strip(): line.split("│")[2].strip()
             for line in second.stdout.splitlines() if line.count("│") >= 4}
    assert steps["calibrate"] == "ran" and steps["bundle"] == "ran"  # thresholds changed too
    failing = tmp_path / "failing.toml"
    failing.write_text("[fp32]\nmax_abs = 1e-12\n")
    third = run_cli(*args, "--thresholds", failing)
    assert third.exit_code == 1 and "pipeline stopped" in third.stderr
    assert not bundle.exists()  # the previous model's bundle is not left to look like this one's


# ---- model cards ------------------------------------------------------------------------------

CARD_CASES = [
    (lambda c: c["preprocess"].update(resize=100000), "resize 100000 is not a whole number in"),
    (lambda c: c["preprocess"].update(std=[0.2, -0.2, 0.2]), "std [0.2, -0.2, 0.2] must be positive"),
    (lambda c: c["preprocess"].update(mean=[0.5, 0.5]), "mean [0.5, 0.5] must be 3 finite numbers"),
    (lambda c: c["preprocess"].update(interpolation="lanczos9"), "interpolation 'lanczos9' is not one of"),
    (lambda c: c["preprocess"].pop("antialias"), "preprocess must have exactly"),
    (lambda c: c.update(surprise=1), "has unknown key 'surprise'"),
    (lambda c: c.pop("num_classes"), "misses 'num_classes'"),
    (lambda c: c.update(arch="resnet9000"), "arch 'resnet9000' is not a known ResNet"),
    (lambda c: c.update(class_names=["a"]), "class_names must be 10 strings"),
    (lambda c: c.update(folded_normalization={"mean": [0, 0, 0]}), "must have exactly mean and std"),
    (lambda c: c.update(folded_normalization={"mean": [0, 0, float("nan")], "std": [1, 1, 1]}),
     "folded_normalization mean must be 3 finite numbers"),
    (lambda c: c.update(folded_normalization={"mean": [0, 0, 0], "std": [1, 0, 1]}),
     "folded_normalization std must be positive"),
    # folded, yet the card still normalizes: the model would be normalized twice
    (lambda c: c.update(folded_normalization={"mean": [0.5] * 3, "std": [0.25] * 3}),
     "a folded model takes RGB in 0..255"),
]


@pytest.mark.parametrize("change,message", CARD_CASES, ids=[m[:30] for _, m in CARD_CASES])
def test_a_malformed_card_in_a_checkpoint_exits_2(change, message, tmp_path, run_cli):
    model, card = zoo.load_model("resnet20")
    data = card.to_dict()
    change(data)
    torch.save({"format": zoo.CHECKPOINT_FORMAT, "state_dict": model.state_dict(), "card": data},
               tmp_path / "bad.pt")
    one_line_error(run_cli("export", tmp_path / "bad.pt", "--out", tmp_path / "o"), 2, message)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("change,message", CARD_CASES[:4], ids=[m[:30] for _, m in CARD_CASES[:4]])
def test_a_malformed_card_in_onnx_metadata_is_refused(change, message, digits_workdir):
    model = onnx.load(str(digits_workdir / "model.onnx"), load_external_data=False)
    prop = next(p for p in model.metadata_props if p.key == CARD_KEY)
    data = json.loads(prop.value)
    change(data)
    prop.value = json.dumps(data)
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_card(model)


# ---- dependencies' errors, in one line --------------------------------------------------------

def test_garbage_onnx_and_manifests_say_what_they_are(tmp_path, digits_workdir, run_cli):
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x99 not protobuf at all" * 10)
    with pytest.raises(BadInput, match="is not a readable ONNX file"):
        load_onnx(tmp_path / "garbage.onnx")
    for content, message in ((b"{not json", "manifest.json is damaged"),
                             (b"[1, 2]", "not a resnet-edge work directory manifest")):
        work = tmp_path / f"w{len(content)}"
        shutil.copytree(digits_workdir, work)
        (work / "manifest.json").write_bytes(content)
        one_line_error(run_cli("parity", work), 2, message)


def test_onnxruntime_refusing_a_batch_names_the_file(tmp_path):
    from onnx import TensorProto, helper
    from resnet_edge.backends import OrtBackend
    fixed = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])]),
        # IR 8 (opset 17's): a newer onnx writes an IR its onnxruntime may not read yet
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    backend = OrtBackend(tmp_path / "fixed.onnx")
    with pytest.raises(BadInput, match=r"refused a batch of shape \(2, 3, 8, 8\) for .*fixed.onnx"):
        backend.run(np.zeros((2, 3, 8, 8), np.float32))
    (tmp_path / "broken.onnx").write_bytes(b"nope")
    with pytest.raises(BadInput, match="ONNX Runtime cannot load .*broken.onnx"):
        OrtBackend(tmp_path / "broken.onnx")


def _png_header(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _labelled_folder(root):
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / str(c) / "a.png")


def test_a_truncated_image_decoded_in_a_worker_is_named(trained_digits, tmp_path, run_cli):
    _labelled_folder(tmp_path / "data")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    cut = tmp_path / "data" / "3" / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    result = run_cli("eval", trained_digits.model_path, "--data", f"imagefolder:{tmp_path / 'data'}")
    one_line_error(result, 2, f"{cut} cannot be decoded")
    # and its loader's workers are gone at once, not left for the garbage collector to join
    assert not multiprocessing.active_children()


def test_every_command_says_what_it_skipped_in_an_image_folder(trained_digits, tmp_path, run_cli):
    _labelled_folder(tmp_path / "data")
    (tmp_path / "data" / "3" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "README.md").write_text("beside the classes")
    result = run_cli("eval", trained_digits.model_path, "--data", f"imagefolder:{tmp_path / 'data'}")
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert said == [f"warning: {tmp_path / 'data'}: 1 file skipped as not images (first: "
                    f"{tmp_path / 'data' / '3' / 'notes.txt'}), 1 file beside the class folders ignored"]


def test_a_decompression_bomb_image_is_refused_by_name(trained_digits, tmp_path, run_cli):
    _labelled_folder(tmp_path / "data")
    bomb = tmp_path / "data" / "4" / "bomb.png"
    bomb.write_bytes(_png_header(40000, 40000))  # 1.6 gigapixels declared in 100 bytes
    result = run_cli("eval", trained_digits.model_path, "--data", f"imagefolder:{tmp_path / 'data'}")
    one_line_error(result, 2, f"{bomb} is refused")


@pytest.mark.parametrize("code,message", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system")])
def test_full_or_read_only_disks_are_said_as_such(code, message, tmp_path, run_cli, monkeypatch):
    import tempfile
    real = tempfile.mkstemp

    def refuse(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".model.onnx"):
            raise OSError(code, "simulated", str(tmp_path / "o" / "model.onnx"))
        return real(*args, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    one_line_error(run_cli("export", "resnet20", "--out", tmp_path / "o", "--exporter", "torchscript"), 2, message)
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_a_run_leaves_nothing_in_tmpdir(tmp_path):
    """ONNX Runtime (1.29+) kept a telemetry session file (.ses) there, and exporting left
    TorchInductor's cache folder (torchinductor_<user>)."""
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    for name in ("ORT_DISABLE_TELEMETRY", "TORCHINDUCTOR_CACHE_DIR"):
        env.pop(name, None)
    run = subprocess.run([str(Path(sys.executable).parent / "resnet-edge"),
                          "export", "resnet20", "--out", str(tmp_path / "w")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in scratch.iterdir()) == []


def test_a_library_that_hides_a_full_disk_is_still_said_as_such(tmp_path, run_cli, monkeypatch):
    import shutil as shutil_module

    def unexpected_pos(*args, **kwargs):  # what torch.save says when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 2048 vs 1974")
    monkeypatch.setattr(zoo.torch, "save", unexpected_pos)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: shutil_module._ntuple_diskusage(1 << 30, 1 << 30, 0))
    one_line_error(run_cli("export", "resnet20", "--out", tmp_path / "o", "--exporter", "torchscript"), 2,
                   "no space left on the device")
    assert not (tmp_path / "o" / "model.pt").exists() and not list((tmp_path / "o").glob(".*.tmp"))


@pytest.mark.parametrize("labels,message", [
    (np.array([0, 1, -1, 2]), "label 2 is -1"),
    (np.array([0.0, 1.0, 2.0, 3.0]), "labels must be whole numbers"),
    (np.array([0, 1, np.nan, 2]), "labels must be whole numbers"),
    (np.array([0, 1, 2, 12]), "has labels outside 0..9"),
])
def test_labels_must_be_class_indices(labels, message, tmp_path, digits_workdir, run_cli):
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 32, 32), np.float32))
    np.save(tmp_path / "y.npy", labels)
    spec = f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}"
    one_line_error(run_cli("parity", digits_workdir, "--data", spec), 2, message)


def test_an_empty_npy_exits_2(tmp_path, digits_workdir, run_cli):
    np.save(tmp_path / "x.npy", np.zeros((0, 3, 32, 32), np.float32))
    one_line_error(run_cli("parity", digits_workdir, "--data", f"npy:{tmp_path / 'x.npy'}"), 2, "holds no images")


@pytest.mark.parametrize("toml,message", [
    ("[int8]\nmax_accuracy_drop_pt = -1\n", "outside 0..100"),
    ("[int8]\nmax_accuracy_drop_pt = nan\n", "outside 0..100"),
    ("[fp16]\nmin_top1_agreement_pct = \"99\"\n", "must be a number"),
    ("[fp16]\nmin_top1_agreement_pct = [99]\n", "must be a number"),
    ("[fp16]\nmin_top1_agreement_pct = 995\n", "outside 0..100"),
    # the old fraction-valued name is refused, never read as 0.995 %
    ("[fp16]\nmin_top1_agreement = 0.995\n", "unknown key 'min_top1_agreement'"),
])
def test_thresholds_are_checked_before_any_work(toml, message, tmp_path, digits_workdir, run_cli):
    (tmp_path / "t.toml").write_text(toml)
    one_line_error(run_cli("parity", digits_workdir, "--thresholds", tmp_path / "t.toml"), 2, message)
    (tmp_path / "latin1.toml").write_bytes("[int8]\n# caf\xe9\n".encode("latin-1"))
    one_line_error(run_cli("parity", digits_workdir, "--thresholds", tmp_path / "latin1.toml"), 2,
              "cannot read thresholds")
    one_line_error(run_cli("parity", digits_workdir, "--gate", "int8.max_abs=nan"), 2, "outside 0..inf")


def test_report_paths_are_checked_before_the_work(digits_workdir, tmp_path, run_cli):
    (tmp_path / "a_file").write_text("")
    one_line_error(run_cli("parity", digits_workdir, "--json", tmp_path / "a_file" / "p.json"), 2,
              "is not writable")
    one_line_error(run_cli("verify", digits_workdir, "--json", tmp_path), 2, "is a folder")


@pytest.mark.parametrize("option", ["--html", "--markdown", "--junit"])
def test_a_report_file_named_dash_is_refused_not_written(option, digits_workdir, tmp_path, run_cli,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("parity", digits_workdir, "--backends", "ort", "--limit", "8", option, "-")
    one_line_error(result, 2, f"{option} - would write a file named '-'")
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("command,said", [
    (("bundle", "{work}", "--sign", "/dev/zero"), "/dev/zero is over 64 KiB, which no key file is"),
    (("verify", "{bundle}", "--key", "/dev/zero"), "/dev/zero is over 64 KiB, which no key file is"),
    (("parity", "{work}", "--thresholds", "/dev/zero"), "thresholds /dev/zero is not a regular file"),
    (("bundle", "{work}", "--thresholds", "/dev/zero"), "thresholds /dev/zero is not a regular file"),
])
def test_an_endless_file_given_as_a_key_or_thresholds_is_refused(command, said, digits_workdir,
                                                                  tmp_path, run_cli):
    """/dev/zero read whole exhausted memory, then a MemoryError traceback (exit 1)."""
    bundle = tmp_path / "b.tar.gz"
    if "{bundle}" in command:
        from resnet_edge.deploy import make_bundle
        make_bundle(digits_workdir, "jetpack6", bundle, golden=40)
    args = [a.format(work=digits_workdir, bundle=bundle) for a in command]
    one_line_error(run_cli(*args), 2, said)


@pytest.mark.parametrize("plant", ["link", "fifo"])
def test_a_planted_lock_is_refused_never_followed_or_waited_on(plant, calibrated_workdir, tmp_path, run_cli):
    """The writer truncates its lock file: a link to another file must not be followed, and a
    FIFO in its place must not make a reader wait forever."""
    import os
    work = tmp_path / "work"
    shutil.copytree(calibrated_workdir, work)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (work / ".resnet-edge.lock").unlink(missing_ok=True)  # the calibration's own, copied
    if plant == "link":
        (work / ".resnet-edge.lock").symlink_to(victim)
    else:
        os.mkfifo(work / ".resnet-edge.lock")
    one_line_error(run_cli("parity", work, "--backends", "ort", "--precisions", "int8", "--limit", "8"), 2,
                   ".resnet-edge.lock")
    one_line_error(run_cli("calibrate", work, "--data", "digits:train", "--samples", "16"), 2,
                   ".resnet-edge.lock")
    assert victim.read_text() == "keep me\n"


def test_a_fifo_for_a_work_dirs_manifest_is_refused_not_waited_on(calibrated_workdir, tmp_path, run_cli):
    import os
    work = tmp_path / "work"
    shutil.copytree(calibrated_workdir, work)
    (work / "manifest.json").unlink()
    os.mkfifo(work / "manifest.json")
    one_line_error(run_cli("parity", work, "--backends", "ort", "--precisions", "fp32"), 2,
                   "manifest.json is damaged (work dir manifest")


def test_a_pipeline_holds_its_work_dir_between_its_steps(digits_workdir, tmp_path):
    """Each step let go of the lock at its completion, so another command could start writing
    between two steps of a pipeline."""
    from resnet_edge import artifacts
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    wd = artifacts.WorkDir(work)
    wd.hold("pipeline")
    try:
        wd.begin("calibrate", [])
        wd.complete("calibrate", [], made_from=[], remake="")
        assert os.path.realpath(work) in artifacts._HELD  # still the pipeline's
        (tmp_path / "alone").mkdir()
        alone = artifacts.WorkDir(tmp_path / "alone")
        alone.begin("calibrate", [])
        alone.complete("calibrate", [], made_from=[], remake="")
        assert os.path.realpath(tmp_path / "alone") not in artifacts._HELD  # a step alone lets go
    finally:
        artifacts.release(work)
    assert os.path.realpath(work) not in artifacts._HELD
