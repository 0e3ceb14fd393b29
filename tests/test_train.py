import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cli_output import one_line_error, problem_lines
from resnet_edge.data import batches, open_data
from resnet_edge.errors import BadInput
from resnet_edge.metrics import LogitComparison
from resnet_edge.export import read_card
from resnet_edge.train import TrainConfig, train
from resnet_edge.zoo import load_model, read_checkpoint


SMOKE = 192  # training images per epoch in the tests of training mechanics: what they test
# (seeding, resume, schedules, the files a run writes) does not need the whole split


def test_same_seed_same_run(tmp_path):
    a = train(TrainConfig("resnet20", "digits", tmp_path / "a", epochs=1, seed=3, limit=SMOKE, batch_size=128))
    b = train(TrainConfig("resnet20", "digits", tmp_path / "b", epochs=1, seed=3, limit=SMOKE, batch_size=128))
    c = train(TrainConfig("resnet20", "digits", tmp_path / "c", epochs=1, seed=4, limit=SMOKE, batch_size=128))
    assert a.history[0]["loss"] == b.history[0]["loss"]
    assert a.card.metrics["test_top1"] == b.card.metrics["test_top1"]
    assert a.history[0]["loss"] != c.history[0]["loss"]


def test_resume_continues_the_run_and_writes_card_metrics_and_history(tmp_path):
    steps = []
    train(TrainConfig("resnet20", "digits", tmp_path, epochs=1, limit=SMOKE, batch_size=64),
          progress=lambda done, total, stats: steps.append(total))
    assert set(steps) == {SMOKE // 64}  # --limit: the first SMOKE images, in batches of 64
    resumed = train(TrainConfig("resnet20", "digits", tmp_path, epochs=2, limit=SMOKE, batch_size=64,
                                resume=tmp_path / "last.pt"))
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    _, card = read_checkpoint(tmp_path / "model.pt")
    assert card["class_names"] == [str(i) for i in range(10)]
    assert {"val_top1", "test_top1", "test_top5", "best_epoch"} <= set(card["metrics"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["epochs"]) == 2
    first = history["epochs"][0]
    assert set(first["grad_norm"]) == {"stem", "layer1", "layer2", "layer3", "fc"}
    assert all(v > 0 for v in first["grad_norm"].values())
    assert history["epochs"][-1]["loss"] < history["epochs"][0]["loss"]  # it learns
    assert (tmp_path / "last.pt").exists()


def _lrs(history):
    return [row["lr"] for row in history]


def test_extending_a_finished_schedule_is_a_warm_restart_that_says_so(tmp_path):
    first = train(TrainConfig("resnet20", "digits", tmp_path, epochs=2, batch_size=64, limit=SMOKE))
    assert first.history[-1]["lr"] < 0.02  # the cosine ran down
    notes = []
    resumed = train(TrainConfig("resnet20", "digits", tmp_path, epochs=4, batch_size=64, limit=SMOKE,
                                resume=tmp_path / "last.pt"), notice=notes.append)
    restarts = [n for n in notes if "warm restart" in n]  # beside the note on 3 steps an epoch
    assert len(restarts) == 1 and "restart the learning rate at 0.01" in restarts[0]
    added = resumed.history[2:]
    assert added[0]["lr"] <= 0.01 + 1e-9 and added[0]["lr"] > added[1]["lr"]  # down from 0.01
    with pytest.raises(BadInput, match="already trained 4 epochs"):
        train(TrainConfig("resnet20", "digits", tmp_path, epochs=4, limit=SMOKE, resume=tmp_path / "last.pt"))


def test_preprocess_round_trips_checkpoint_and_onnx_and_ort_agrees(trained_digits, digits_workdir):
    model, card = load_model(str(trained_digits.model_path))
    onnx_path = digits_workdir / "model.onnx"  # the same checkpoint, exported
    assert read_card(onnx_path).preprocess == card.preprocess == trained_digits.card.preprocess
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    torch_top1, n = 0, 0
    comparison = LogitComparison()
    for x, y in batches(open_data("digits:test"), read_card(onnx_path).preprocess, 128):
        with torch.inference_mode():
            logits = model(x).numpy()
        torch_top1 += int((logits.argmax(1) == y.numpy()).sum())
        comparison.update(logits, session.run(None, {"input": x.numpy()})[0])
        n += len(y)
    # ORT and torch add in other orders on other CPUs: only a near-tie may differ
    decisive = comparison.decisive(near_tie=1e-4)
    assert n == 397 and decisive["agree"] == decisive["images"] >= 390, decisive
    # the card's accuracy was measured on the machine that trained: one image is 0.25 points
    assert torch_top1 / n == pytest.approx(card.metrics["test_top1"], abs=2 / n)


def test_cli_eval_and_plot(trained_digits, run_cli, tmp_path):
    result = run_cli("eval", trained_digits.model_path, "--data", "digits:test", "--json", "-")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["images"] == 397
    assert measured["top1"] == pytest.approx(trained_digits.card.metrics["test_top1"], abs=2 / 397)
    out = tmp_path / "plot"
    assert run_cli("train", "resnet20", "--epochs", "1", "--limit", SMOKE, "--out", out, "--plot").exit_code == 0
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_train_on_an_image_folder(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "data" / cls / f"{i}.png")
    result = run_cli("train", "resnet20", "--data", f"imagefolder:{tmp_path / 'data'}",
                     "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    _, card = read_checkpoint(tmp_path / "run" / "model.pt")
    assert card["class_names"] == ["a", "b"] and card["num_classes"] == 2


@pytest.mark.parametrize("args,message", [
    (["train", "resnet20", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "resnet20", "--data", "mnist"], "unknown data spec"),
    (["train", "resnet20", "--data", "digits:test"], "not a split"),
    (["train", "resnet20", "--data", "imagefolder:/no/such/dir"], "not found"),
    (["train", "resnet20", "--data", "random:10"], "has no labels"),
    (["train", "resnet32", "--resume", "{ckpt}"], "is a resnet20 run, not resnet32"),
    (["eval", "{ckpt}", "--data", "cifar10:val"], "cifar10 has no split 'val'"),
    (["eval", "{ckpt}", "--data", "imagefolder:{folder}"], "has 2 classes (x, y) that match neither"),
    pytest.param(["eval", "{ckpt}", "--device", "cuda"], "no CUDA GPU is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")),
])
def test_bad_training_input(args, message, run_cli, trained_digits, tmp_path):
    folder = tmp_path / "folder"
    for cls in ("x", "y"):
        (folder / cls).mkdir(parents=True)
        from PIL import Image
        Image.new("RGB", (8, 8)).save(folder / cls / "i.png")
    ckpt = trained_digits.model_path
    args = [a.format(ckpt=ckpt, ckpt_dir=ckpt.parent, folder=folder) for a in args]
    out = tmp_path / "never"
    if args[0] == "train":
        args += ["--out", str(out)]
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(problem_lines(result.stderr)) == 1
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    """DistributedDataParallel through torchrun (gloo on CPU): one checkpoint, from rank 0."""
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    result = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "resnet_edge.cli", "train",
                             "resnet20", "--epochs", "1", "--out", str(tmp_path / "ddp")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("best epoch 1") == 1
    assert (tmp_path / "ddp" / "model.pt").exists()


def _digit_photos(root, classes=4, train=15, val=10):
    """A few dozen small photos in train/ and val/ folders, one folder per class: the embedded
    digits, as a newcomer's own photos would be laid out."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits, counts = load_digits(), {}
    for image, label in zip(digits.images, digits.target):
        n = counts[label] = counts.get(label, 0) + 1
        if label >= classes or n > train + val:
            continue
        folder = root / ("train" if n <= train else "val") / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).resize((32, 32)).convert("RGB").save(
            folder / f"{n}.png")
    return root


def test_training_on_a_few_dozen_photos_learns(tmp_path, run_cli):
    """With the default --batch-size 128, a few hundred photos were one SGD step an epoch and 3
    epochs ended at chance with nothing said. The batch is now fitted to the set, and said."""
    photos = _digit_photos(tmp_path / "photos")
    result = run_cli("train", "resnet20", "--data", f"imagefolder:{photos}", "--epochs", "10",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "note: 60 training images: batch size 8, 8 SGD steps an epoch (128 would be 1)" in result.stderr
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["config"]["batch_size"] == 8
    # 40 validation images of 4 classes: 17 or more right is past chance (25 %) at p < 0.01
    assert history["final"]["val_top1"] >= 17 / 40, history["final"]
    assert history["epochs"][-1]["loss"] < history["epochs"][0]["loss"]
    refused = run_cli("train", "resnet20", "--data", f"imagefolder:{photos}", "--batch-size", "128",
                      "--out", tmp_path / "never")
    assert refused.exit_code == 2 and "--batch-size 128 is more than the 60 training images" in refused.stderr
    assert "give --batch-size 8" in refused.stderr and not (tmp_path / "never" / "model.pt").exists()
    # a default for the data is said, and the recorded folder missing is a refusal, not a guess
    scored = run_cli("eval", tmp_path / "run" / "model.pt")
    assert scored.exit_code == 0, scored.output
    assert f"note: --data not given: imagefolder:{photos / 'val'}, the images training held out" in scored.stderr
    photos.rename(tmp_path / "moved")
    one_line_error(run_cli("eval", tmp_path / "run" / "model.pt"), 2,
                   f"--data is needed: the model was trained here on imagefolder:{photos}, and "
                   f"{photos / 'test'} or {photos / 'val'} is not on this machine")


@pytest.mark.parametrize("given,images,batch,said", [
    (None, 1290, 128, None),  # digits' training split: the default, unsaid
    (None, 300, 32, "batch size 32, 10 SGD steps an epoch"),
    (None, 5, 8, "batch size 8, 1 SGD step an epoch"),
    (64, 192, 64, "3 SGD steps an epoch: too few"),
    (16, 192, 16, None),
])
def test_the_batch_is_fitted_to_the_training_set(given, images, batch, said):
    from resnet_edge.train import fit_batch
    size, note = fit_batch(given, images)
    assert size == batch and (note is None if said is None else said in note), note


@pytest.mark.parametrize("cores,workers", [(1, 0), (2, 1), (4, 3), (16, 4)])
def test_loader_workers_leave_a_core_to_the_training(cores, workers, monkeypatch):
    """--workers 4 was the default on a 2-core runner."""
    import os
    from resnet_edge.data import default_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_workers() == workers


def test_progress_says_something_while_one_unit_takes_long(monkeypatch, capsys):
    import time
    from resnet_edge import console
    monkeypatch.setattr(console, "PROGRESS_EVERY_S", 0.2)
    with console.Progress("train", "batches") as bar:
        bar.update(0, 1)
        time.sleep(0.8)  # one batch, longer than the progress period
    assert "train: 0/1 batches, still working on the next" in capsys.readouterr().err
    assert console.rate(0.37) == "0.37" and console.rate(4.2) == "4.2" and console.rate(118.4) == "118"


def test_progress_adds_no_heartbeat_while_updates_flow(monkeypatch, capsys):
    import time
    from resnet_edge import console
    monkeypatch.setattr(console, "PROGRESS_EVERY_S", 0.3)
    with console.Progress("parity", "images") as bar:
        for done in range(20):
            bar.update(done, 20)
            time.sleep(0.05)
    assert "still working" not in capsys.readouterr().err
