"""A new user's first hour, as a transcript: README's offline quick start (a random-init
ResNet-18, no downloads) with a folder of real photographs (scikit-learn's sample images,
cropped into a small calibration set and a two-class evaluation set), end to end."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from cli_output import one_line_error

pytestmark = pytest.mark.slow  # a 224 px ResNet-18 through every step: make test-all


def _photos(root):
    """calib/: 12 crops of the two photographs, flat; val/0 and val/1: 4 crops of each photograph."""
    rng = np.random.default_rng(0)
    for index, photo in enumerate(load_sample_images().images):
        h, w, _ = photo.shape
        for k in range(8):
            top, left = int(rng.integers(0, h - 256)), int(rng.integers(0, w - 256))
            crop = Image.fromarray(photo[top:top + 256, left:left + 256])
            folder = root / ("calib" if k < 6 else f"val/{index}")
            folder.mkdir(parents=True, exist_ok=True)
            crop.save(folder / f"{index}-{k}.jpg")
        for k in range(2):  # the evaluation set gets its own crops as well
            crop = Image.fromarray(photo[k * 100:k * 100 + 256, k * 150:k * 150 + 256])
            crop.save(root / f"val/{index}" / f"{index}-v{k}.jpg")
        for k in range(32):  # golden/: 64 more crops, flat, for a bundle verify can pass
            top, left = int(rng.integers(0, h - 200)), int(rng.integers(0, w - 200))
            (root / "golden").mkdir(exist_ok=True)
            Image.fromarray(photo[top:top + 200, left:left + 200]).save(root / "golden" / f"{index}-{k}.jpg")


def test_a_new_user_goes_from_photographs_to_a_verified_bundle(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _photos(tmp_path)
    work = "artifacts/resnet18"
    assert run_cli("export", "resnet18", "--weights", "none", "--out", work).exit_code == 0
    # no silent digits: a model not trained here needs its data named
    one_line_error(run_cli("calibrate", work), 2, "--data is needed")
    calibrated = run_cli("calibrate", work, "--data", "images:calib", "--samples", "12")
    assert calibrated.exit_code == 0, calibrated.output
    assert "12 images" in calibrated.stdout
    parity = run_cli("parity", work, "--data", "imagefolder:val", "--precisions", "fp32,fp16",
                     "--backends", "torch,ort", "--json", "reports/parity.json", "--html",
                     "reports/parity.html")
    assert parity.exit_code == 0, parity.output
    report = json.loads((tmp_path / "reports/parity.json").read_text())
    assert report["data"]["images"] == 8 and "2 of the model's 1000 classes" in report["data"]["accuracy_note"]
    bench = run_cli("bench", work, "--iterations", "3", "--batch-sizes", "1,8")
    assert bench.exit_code == 0, bench.output
    # 8 evaluation images cannot make a golden set verify could pass: said now, not by verify
    one_line_error(run_cli("bundle", work, "--data", "imagefolder:val", "--out", "dist"), 2,
                   "imagefolder:val has only 8 images, and verify's agreement gate needs at least 30")
    made = run_cli("bundle", work, "--data", "images:golden", "--golden", "64", "--out", "dist")
    assert made.exit_code == 0, made.output
    verified = run_cli("verify", "dist/resnet18-jetpack6.tar.gz", "--allow-unsigned", "--iterations", "2",
                       "--precisions", "fp32,fp16")
    assert verified.exit_code in (0, 1), verified.output  # a random-init model: a gate may fail, never crash
    assert "NOT AUTHENTICATED" in verified.stderr and "files match manifest.json" in verified.stdout
