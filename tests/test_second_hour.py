"""A new user's second hour: the smaller things that stopped or misled them, each as they met it."""

import json
import subprocess
from pathlib import Path

import pytest

from cli_output import one_line_error

ROOT = Path(__file__).parents[1]


def test_calibrate_names_the_data_it_defaulted_to(digits_workdir, tmp_path, run_cli):
    """It printed "512 images from None"."""
    import shutil
    work = tmp_path / "w"
    shutil.copytree(digits_workdir, work)
    result = run_cli("calibrate", work, "--samples", "32", "--method", "minmax")
    assert result.exit_code == 0, result.output
    assert "calibration: 32 images from digits:train (minmax)" in result.stdout


@pytest.mark.parametrize("args,said", [
    (("--samples", "1200", "--sensitivity"), "digits:train has 1200 images, all of them calibration's"),
    (("--samples", "32", "--sensitivity", "--holdout", "0"), "--sensitivity judges layers on held-out images"),
])
def test_calibrate_says_before_calibrating_that_nothing_is_left_to_judge_layers_on(
        args, said, digits_workdir, tmp_path, run_cli, monkeypatch):
    import shutil
    from resnet_edge import calibration
    work = tmp_path / "w"
    shutil.copytree(digits_workdir, work)
    monkeypatch.setattr(calibration, "compute_ranges", lambda *a, **k: pytest.fail("it calibrated first"))
    one_line_error(run_cli("calibrate", work, "--data", "digits:train", *args), 2, said)


def test_json_alone_means_standard_output(run_cli):
    """README showed `models --json`; the command wanted a file name."""
    result = run_cli("models", "--json")
    assert result.exit_code == 0, result.output
    assert {m["name"] for m in json.loads(result.stdout)} >= {"resnet18", "resnet20"}


def test_a_cosine_just_under_one_is_not_shown_as_one():
    from resnet_edge.parity.gates import describe
    gate = {"gate": "cosine", "value": 0.999959, "threshold": 0.99, "passed": True, "status": "pass"}
    assert describe(gate) == "cosine 0.999959 >= 0.99 (pass)"  # the threshold as it was given


def test_the_parity_bar_knows_its_total_from_the_start(digits_workdir):
    from resnet_edge.parity.gates import load_thresholds
    from resnet_edge.parity.run import run_parity
    calls = []
    run_parity(digits_workdir, "digits:test", backends=["ort"], precisions=["fp32"],
               thresholds=load_thresholds(), limit=64, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 64) and all(total == 64 for _, total in calls)


def test_make_calibrate_names_its_own_knob(tmp_path):
    """`make calibrate` without data passed on the tool's hint to use --data; make's is CALIB=."""
    run = subprocess.run(["make", "-n", "-C", str(ROOT), "calibrate", "MODEL=resnet50",
                          f"VENV={tmp_path / 'venv'}", "-o", "venv"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "CALIB=" in run.stdout and "make calibrate MODEL=resnet50 CALIB=" in run.stdout


def test_help_examples_name_work_dirs_the_tool_makes(run_cli):
    """Examples said artifacts/resnet20, which no command makes (a checkpoint's work dir is named
    after its run folder: runs/resnet20-digits/model.pt exports to artifacts/resnet20-digits)."""
    from resnet_edge.cli.common import default_out
    assert default_out("runs/resnet20-digits/model.pt") == Path("artifacts/resnet20-digits")
    for command in ("parity", "calibrate", "debug", "pipeline"):
        text = run_cli(command, "--help").stdout
        assert "artifacts/resnet20 " not in text and "artifacts/resnet20\n" not in text, command


def test_a_model_trained_on_an_image_folder_defaults_to_its_held_out_split(trained_digits, tmp_path):
    """A model trained on imagefolder:X had no default data; X/val (or X/test) is its own."""
    import dataclasses
    from resnet_edge.data import data_for
    card = trained_digits.card
    flowers = tmp_path / "flowers"
    card = dataclasses.replace(card, weights=f"trained with resnet-edge on imagefolder:{flowers} from none")
    with pytest.raises(Exception, match="--data is needed"):
        data_for(card, "test", None, "--data")  # not on this machine
    for split in ("train", "val"):
        (flowers / split).mkdir(parents=True)
    assert data_for(card, "test", None, "--data") == f"imagefolder:{flowers / 'val'}"
    assert data_for(card, "train", None, "--data") == f"imagefolder:{flowers / 'train'}"
    (flowers / "test").mkdir()
    assert data_for(card, "test", None, "--data") == f"imagefolder:{flowers / 'test'}"


def test_exporting_a_trained_model_at_another_input_size_warns(trained_digits, tmp_path, run_cli):
    """`export ... --input-size 64` of a 32 px model said nothing."""
    fast = ("--exporter", "torchscript")  # what is tested is the warning, not the exporter
    result = run_cli("export", trained_digits.model_path, "--input-size", "64", "--out", tmp_path / "w64", *fast)
    assert result.exit_code == 0, result.output
    assert "was trained at 32 px" in result.stderr and "at 64 px" in result.stderr
    same = run_cli("export", trained_digits.model_path, "--input-size", "32", "--out", tmp_path / "w32", *fast)
    assert same.exit_code == 0 and "was trained at" not in same.stderr
    untrained = run_cli("export", "resnet20", "--input-size", "64", "--out", tmp_path / "r64", *fast)  # random init
    assert untrained.exit_code == 0 and "was trained at" not in untrained.stderr


def test_pip_args_reach_pip_so_a_cpu_machine_can_take_cpu_wheels(tmp_path):
    run = subprocess.run(["make", "-n", "-C", str(ROOT), "venv", f"VENV={tmp_path / 'venv'}",
                          "PIP_ARGS=--extra-index-url https://download.pytorch.org/whl/cpu"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "pip install --disable-pip-version-check -q --extra-index-url https://download.pytorch.org/whl/cpu -e" in run.stdout
    readme = (ROOT / "README.md").read_text()
    assert "tensorrt-cu12" in readme and "tensorrt-cu13" in readme and "https://pypi.nvidia.com" in readme


def test_the_workflows_job_summary_has_no_broken_image(digits_workdir, tmp_path, run_cli):
    """The step summary showed parity.md's picture as a broken relative image."""
    text = (ROOT / "examples" / "github-gpu-parity.yml").read_text()
    publish = text[text.index("name: Publish the report in the job summary"):]
    command = next(line.split("run:", 1)[1].strip() for line in publish.splitlines() if "run:" in line)
    (tmp_path / "out").mkdir()
    assert run_cli("parity", digits_workdir, "--backends", "ort", "--precisions", "fp32", "--limit", "16",
                   "--markdown", tmp_path / "out" / "parity.md").exit_code == 0
    assert "![parity summary](parity.png)" in (tmp_path / "out" / "parity.md").read_text()
    summary = tmp_path / "summary.md"
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True,
                   env={"GITHUB_STEP_SUMMARY": str(summary), "PATH": "/usr/bin:/bin"})
    text = summary.read_text()
    assert "# Parity" in text and "![" not in text


WIDEST = 160  # columns: a CI log or a laptop terminal reads it without scrolling sideways


def test_a_failing_verify_and_a_three_run_report_stay_readable_widths(calibrated_workdir, measured, parity_main,
                                                                      tmp_path, run_cli):
    """verify's failing table was 330 columns wide, report's 260."""
    from resnet_edge.deploy import make_bundle
    strict = tmp_path / "strict.toml"
    strict.write_text("[fp32]\nmax_abs = 1e-15\n[fp16]\nmax_abs = 1e-15\n[int8]\nmax_abs = 1e-15\n")
    from resnet_edge.parity.gates import load_thresholds
    made = make_bundle(calibrated_workdir, "jetpack6", tmp_path / "b.tar.gz", golden=40,
                       thresholds=load_thresholds(strict))
    failed = run_cli("verify", made.path, "--allow-unsigned", "--iterations", "2")
    assert failed.exit_code == 1, failed.output
    assert "failed " in failed.stdout and "max_abs" in failed.stdout
    assert max(map(len, failed.stdout.splitlines())) <= WIDEST, max(map(len, failed.stdout.splitlines()))
    paths = []
    for i, report in enumerate((measured, measured, parity_main)):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "r.json").write_text(json.dumps(report))
        paths.append(tmp_path / f"run{i}" / "r.json")
    merged = run_cli("report", *paths)
    assert merged.exit_code == 0, merged.output
    assert max(map(len, merged.stdout.splitlines())) <= WIDEST, max(map(len, merged.stdout.splitlines()))
