"""Every bad input: exit 2, one line naming the problem and the fix, nothing written."""

import pickle

import pytest
import torch

from cli_output import one_line_error
from resnet_edge import zoo


class Unsafe:
    pass


@pytest.fixture
def files(tmp_path):
    r20, _ = zoo.load_model("resnet20")
    torch.save(r20.state_dict(), tmp_path / "r20.pth")
    data = (tmp_path / "r20.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    (tmp_path / "raw.pth").write_bytes(pickle.dumps([1, 2]))
    torch.save([1, 2], tmp_path / "list.pth")
    torch.save({"fc.weight": torch.zeros(1), "obj": Unsafe()}, tmp_path / "unsafe.pth")
    (tmp_path / "a_file").write_text("")
    return tmp_path


CASES = [
    (["export", "resnet05"], "unknown model 'resnet05'; did you mean"),
    (["export", "resnet50", "--weights", "IMAGENET1K_V7"], "has no weights named 'IMAGENET1K_V7'"),
    (["export", "resnet20", "--weights", "DEFAULT"], "no published weights"),
    (["export", "{d}/missing.pth", "--arch", "resnet18"], "not found"),
    (["export", "{d}/trunc.pth", "--arch", "resnet20"], "truncated or not a PyTorch checkpoint"),
    (["export", "{d}/notes.pth", "--arch", "resnet20"], "not a PyTorch checkpoint"),
    (["export", "{d}/list.pth", "--arch", "resnet20"], "holds a list, not a state dict"),
    (["export", "{d}/raw.pth", "--arch", "resnet20"], "not a PyTorch checkpoint"),
    (["export", "{d}/unsafe.pth", "--arch", "resnet20"], "refused as unsafe"),
    (["export", "{d}/r20.pth"], "--arch"),
    (["export", "{d}/r20.pth", "--arch", "resnet18"], "does not fit resnet18 with 10 classes: missing keys"),
    (["export", "{d}/r20.pth", "--arch", "resnet32"], "does not fit resnet32"),
    (["export", "{d}/r20.pth", "--arch", "resnet20", "--num-classes", "5"],
     "has 10 classes (fc.weight (10, 64)), not --num-classes 5"),
    (["export", "resnet20", "--out", "{d}/a_file/sub"], "is not writable"),
    (["export", "resnet20", "--max-batch", "0"], "need 1 <= --min-batch (1) <= --opt-batch (1) <= --max-batch (0)"),
    (["export", "resnet20", "--opt-batch", "64", "--max-batch", "8"], "--opt-batch (64) <= --max-batch (8)"),
    (["export", "resnet20", "--min-batch", "4", "--max-batch", "4"], "export with --batch 4"),
    (["export", "resnet20", "--batch", "0"], "--batch must be 1..4096"),
    (["export", "resnet20", "--mean", "0.5,0.5"], "--mean takes three finite numbers"),
    (["export", "resnet20", "--std", "0.2,nan,0.2"], "--std takes three finite numbers"),
    (["export", "resnet20", "--std", "0.2,-0.2,0.2"], "std [0.2, -0.2, 0.2] must be positive"),
    (["export", "resnet20", "--input-size", "5000"], "input_size 5000 is not a whole number in 8..2048"),
    (["export", "resnet20", "--opset", "17"], "cannot emit opset 17"),
    (["export", "resnet20", "--exporter", "torchscript", "--opset", "30"], "cannot emit opset 30"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(c[0])[:50] for c in CASES])
def test_bad_input_exits_2_with_one_line(files, run_cli, args, message, monkeypatch):
    monkeypatch.chdir(files)
    out = files / "out"
    args = [a.format(d=files) for a in args]
    if "--out" not in args:
        args += ["--out", str(out)]
    one_line_error(run_cli(*args), 2, message)
    assert not list(files.rglob("model.onnx"))


def test_no_network_says_so_and_offers_alternatives(tmp_path, run_cli, offline, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = run_cli("export", "resnet18", "--weights", "IMAGENET1K_V1", "--out", tmp_path / "o")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "cannot download resnet18 IMAGENET1K_V1" in line and "--weights none" in line
    assert "resnet18-f37072fd.pth" in line and str(tmp_path / "torch-home") in line
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_debug_shows_the_traceback(run_cli):
    with pytest.raises(Exception, match="unknown model"):
        run_cli("--debug", "export", "nonet")


@pytest.mark.parametrize("command", [["export", "resnet20", "--weights", "none"], ["calibrate", "w"],
                                     ["debug", "w"], ["verify", "b", "--allow-unsigned"], ["models"]])
def test_a_mistyped_device_variable_is_refused_by_every_command(command, run_cli, monkeypatch, tmp_path):
    """RESNET_EDGE_DEVICE=gpu7 was refused by parity, bench, eval and train but silently ignored
    by export, calibrate, debug, verify and verify.py."""
    monkeypatch.setenv("RESNET_EDGE_DEVICE", "gpu7")
    monkeypatch.chdir(tmp_path)
    one_line_error(run_cli(*command), 2, "$RESNET_EDGE_DEVICE='gpu7' is not one of auto, cpu, cuda")
    assert not (tmp_path / "artifacts").exists()


def test_verify_py_refuses_a_mistyped_device_variable(monkeypatch, tmp_path, capsys):
    from resnet_edge.deploy import verify_bundle
    monkeypatch.setenv("RESNET_EDGE_DEVICE", "gpu7")
    assert verify_bundle.main(["--bundle", str(tmp_path), "--allow-unsigned"]) == 2
    assert "$RESNET_EDGE_DEVICE='gpu7' is not one of auto, cpu, cuda" in capsys.readouterr().err


def test_keygen_loads_no_torch(tmp_path):
    """keygen imported torch (20 s on a loaded runner) to write two small key files."""
    import subprocess
    import sys
    code = ("import sys; from resnet_edge.cli import main; sys.argv = ['resnet-edge', 'keygen', '--out', "
            f"{str(tmp_path)!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False False", done.stdout + done.stderr
    assert (tmp_path / "signing.pub").is_file()


@pytest.mark.parametrize("command", ["parity", "bench"])
def test_an_unknown_precision_is_refused_before_the_data_is_read(command, tmp_path, run_cli, digits_workdir):
    """parity --precisions fp61 was refused only after the data folder was listed."""
    from PIL import Image
    (tmp_path / "data" / "0").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "0" / "a.png")
    (tmp_path / "data" / "0" / "broken.png").write_bytes(b"not an image")  # listing it would warn
    args = ["--data", f"imagefolder:{tmp_path / 'data'}"] if command == "parity" else []
    result = run_cli(command, digits_workdir, *args, "--precisions", "fp61")
    one_line_error(result, 2, "unknown precision 'fp61'")
    assert "skipped" not in result.stderr
