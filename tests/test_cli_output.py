"""The command line as CI sees it: output piped (no terminal), so nothing may be cut short,
long work must log progress, every written file is listed, and one vocabulary holds."""

import json
import re
import shutil
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli_output import PROGRESS, one_line_error
from resnet_edge.cli import GLOBAL_FLAGS, cli
from resnet_edge.parity.run import PRECISIONS

ROOT = Path(__file__).resolve().parent.parent
WROTE = re.compile(r"^wrote (.+) \((\d+(?:\.\d)? (?:B|kB|MB))\)$")


def run(*args, env=None):
    # COLUMNS=80 is what cut tables short before: off a terminal it must not matter
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False,
                                env={"COLUMNS": "80", **(env or {})})
    assert "…" not in result.stdout + result.stderr, result.output
    return result


def written(result) -> set[Path]:
    """The files a command says it wrote; each must exist."""
    paths = {Path(m.group(1)) for m in map(WROTE.match, result.stdout.splitlines()) if m}
    assert all(p.is_file() for p in paths), paths
    return paths


def changed_since(folder: Path, start: float) -> set[Path]:
    """Files changed in `folder`: its outputs, not the lock a writing command holds there."""
    return {p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= start
            and p.name != ".resnet-edge.lock"}


def progress_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if PROGRESS.match(line)]


@pytest.fixture(scope="module")
def work(digits_workdir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("piped") / "resnet20"
    shutil.copytree(digits_workdir, folder)
    return folder


def test_export_and_calibrate_list_every_file_they_write(trained_digits, tmp_path):
    out = tmp_path / "w"
    start = time.time() - 1
    exported = run("export", trained_digits.model_path, "--out", out)
    assert exported.exit_code == 0, exported.output
    assert written(exported) == changed_since(out, start) == {
        out / "model.onnx", out / "model.fp16.onnx", out / "model.pt", out / "manifest.json"}
    assert progress_lines(exported)
    start = time.time()
    time.sleep(0.01)
    calibrated = run("calibrate", out, "--samples", "32")
    assert calibrated.exit_code == 0, calibrated.output
    assert written(calibrated) == changed_since(out, start) == {
        out / n for n in ("model.int8.onnx", "model.int8-fp16.onnx", "calibration.cache",
                          "calibration.ranges.json", "manifest.json")}
    # the ranges are no secret: the same mode as every other file in the work directory
    assert (out / "calibration.ranges.json").stat().st_mode & 0o777 == (out / "model.onnx").stat().st_mode & 0o777
    assert progress_lines(calibrated)


def test_train_lists_checkpoints_history_and_plot(tmp_path):
    out = tmp_path / "run"
    result = run("train", "resnet20", "--data", "digits", "--epochs", "2", "--limit", "192", "--plot",
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert written(result) == {out / n for n in ("model.pt", "last.pt", "history.json", "training.png")}
    # each epoch says which of how many, and the run's time left at the pace so far
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[0].startswith("epoch   1/2") and epochs[1].startswith("epoch   2/2")
    assert re.search(r"about \d+\.\d min left$", epochs[0]) and "left" not in epochs[1]
    assert re.search(r"train: \d+/\d+ batches, .*epoch [12]/2, loss", result.stderr)


def test_parity_piped_is_whole_width_with_progress_and_reports(work, tmp_path):
    reports = tmp_path / "r"
    result = run("parity", work, "--backends", "ort,trt", "--precisions", "fp32,fp16",
                 "--json", reports / "p.json", "--markdown", reports / "p.md",
                 "--junit", reports / "j.xml", "--html", reports / "p.html")
    # TensorRT was named but is not here: exit 3, after every report was written
    assert result.exit_code == 3 and "asked for but cannot run here: trt fp32" in result.stderr
    # the full skip reason and every gate column survive an 80-column environment
    # an install line that works from where the user is: resnet-edge is not on the package
    # index, so `pip install 'resnet-edge[...]'` would fail (or install a stranger's package)
    assert ("TensorRT is not installed (x86: in the resnet-edge clone: pip install -e '.[cuda12]', "
            "or make venv, which picks the set (cuda13 for a CUDA 13 driver); JetPack ships it on "
            "Jetsons)") in result.stdout
    assert "'resnet-edge[" not in result.stdout + result.stderr
    assert re.search(r"ort fp32 \(CPU\) .* 100\.00% .* pass", result.stdout)
    assert any("parity:" in line and "images" in line for line in progress_lines(result))
    assert written(result) == {reports / n for n in ("p.json", "p.md", "p.png", "j.xml", "p.html")}
    report = json.loads((reports / "p.json").read_text())
    assert not any(key.startswith("_") for key in report)  # thumbnails stay out of the JSON


def test_bench_logs_each_measurement_as_it_goes(work, tmp_path):
    result = run("bench", work, "--backends", "ort", "--precisions", "fp32", "--batch-sizes", "1,4",
                 "--iterations", "3", "--warmup", "1", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    assert len(progress_lines(result)) >= 2
    assert written(result) == {tmp_path / "b.json"}


@pytest.mark.parametrize("command", [["models"], ["eval", "{model}"], ["parity", "{work}", "--backends", "ort", "--precisions", "fp32"]])
def test_json_dash_is_pure_json_on_stdout(command, work, trained_digits):
    args = [a.format(work=work, model=trained_digits.model_path) for a in command]
    result = run(*args, "--json", "-")
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # tables, notes and progress went to stderr
    assert result.stderr.strip()


def test_failing_gate_says_measured_against_threshold(work):
    one_line_error(run("parity", work, "--backends", "ort", "--precisions", "fp32",
                       "--gate", "fp32.max_abs=1e-12"),
                   1, "parity gates failed: ort fp32 max_abs ")
    result = run("parity", work, "--backends", "ort", "--precisions", "fp32", "--gate", "fp32.max_abs=1e-12")
    assert re.search(r"max_abs \d\.\d+e-\d+ > 1e-12", result.stderr), result.stderr
    # the unit is in the name; a fraction where a percentage goes is out of range, never 0.995 %
    one_line_error(run("parity", work, "--gate", "fp16.min_top1_agreement_pct=995"), 2, "outside 0..100")
    one_line_error(run("parity", work, "--gate", "fp16.min_top1_agreement=0.995"), 2,
                   "unknown key 'min_top1_agreement'")


def test_global_flags_work_anywhere_on_the_line(work):
    quiet = run("parity", work, "--backends", "ort", "--precisions", "fp32", "--quiet")
    assert quiet.exit_code == 0 and not progress_lines(quiet) and "note:" not in quiet.stderr
    loud = run("--quiet", "parity", work, "--backends", "ort", "--precisions", "fp32")
    assert loud.exit_code == 0 and not progress_lines(loud)
    both = run("parity", work, "--quiet", "--verbose")
    one_line_error(both, 2, "--quiet and --verbose contradict each other")


def test_verify_on_a_work_directory_says_what_it_is(work):
    one_line_error(run("verify", work), 2, f"{work} is a work directory, not a bundle; make one "
                                           f"with `resnet-edge bundle {work}`")


# ---- one vocabulary -------------------------------------------------------------------------

# where one option name rightly differs by command, and why
OWN_DEFAULT = {
    "--data": "each command's own input: train a dataset with splits, calibrate its train split, "
              "the rest an evaluation split",
    "--batch-size": "train's is the optimizer's batch; evaluation batches follow the model's profile",
    "--iterations": "bench times what it is asked; verify times fewer where it runs ONNX Runtime off the device",
    "--epochs": "train's depends on the dataset; qat's is a few epochs of fine-tuning",
    "--max-accuracy-drop-pt": "the most top-1 may fall in points, in each: parity's against a --baseline (0.5), "
                              "calibrate's turns the repair loop on (off unless given), qat's is the int8 gate's",
}


# options whose commands offer different subsets of one vocabulary
VOCABULARY = {"--precision": PRECISIONS, "--backend": ("auto", "trt", "ort")}


def _options():
    found = {}
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts + param.secondary_opts:
                    found.setdefault(opt, []).append((name, param))
    return found


def test_every_option_has_help_and_one_meaning():
    for opt, uses in _options().items():
        for command, param in uses:
            assert param.help, f"{command} {opt} has no help"
        kinds = {(type(p.type).__name__, p.is_flag, p.multiple, p.nargs) for _, p in uses}
        assert len(kinds) == 1, f"{opt} has different types across {[c for c, _ in uses]}: {kinds}"
        if opt not in OWN_DEFAULT:
            defaults = {repr(p.default) for _, p in uses}
            assert len(defaults) == 1, f"{opt} has different defaults: {defaults}"
        choices = {tuple(p.type.choices) for _, p in uses if isinstance(p.type, click.Choice)}
        if opt in VOCABULARY:  # each command offers what it can do, in the one set of words
            assert all(set(c) <= set(VOCABULARY[opt]) for c in choices), (opt, choices)
        else:
            assert len(choices) <= 1, f"{opt} offers different choices: {choices}"
    assert {"--json"} <= set(_options()) and all(
        any(o in ("--json",) for p in c.params for o in getattr(p, "opts", []))
        for n, c in cli.commands.items() if n not in ("keygen",)), "--json on every command with a result"


def test_global_flags_are_the_groups_own():
    group_flags = {o for p in cli.params for o in p.opts if o.startswith("--")}
    assert set(GLOBAL_FLAGS) <= group_flags


MENTION = re.compile(r"resnet-edge ([a-z]+)\b([^\n`'\"|&;#]*)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def test_every_command_line_the_tool_or_readme_shows_uses_real_options():
    """Help texts, error hints and README examples name only options their command has."""
    options = {name: {o for p in c.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
               for name, c in cli.commands.items()}
    common = set(GLOBAL_FLAGS) | {"--help", "--version"}
    texts = [*(ROOT / "resnet_edge").rglob("*.py"), ROOT / "README.md", ROOT / "Makefile"]
    wrong = []
    for path in texts:
        text = path.read_text().replace("\\\n", " ")  # shell line continuations
        for match in MENTION.finditer(text):
            command, rest = match.groups()
            if command not in options:
                continue
            for opt in OPTION.findall(rest):
                if opt not in options[command] | common:
                    wrong.append(f"{path.name}: resnet-edge {command} ... {opt}")
    assert not wrong, "options that do not exist:\n" + "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("args", [
    ["train", "resnet18", "--data", "cifar10", "--out", "{tmp}/r"],
    ["train", "resnet18", "--data", "digits", "--pretrained", "IMAGENET1K_V1", "--out", "{tmp}/r"],
    ["export", "resnet18", "--out", "{tmp}/e"],
    ["pipeline", "resnet18", "--out", "{tmp}/p"],
])
def test_offline_errors_suggest_only_options_the_command_has(args, offline, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    result = run(*args)
    assert result.exit_code == 2, result.output
    line = one_line_error(result, 2, "")
    command = cli.commands[args[0]]
    have = {o for p in command.params for o in getattr(p, "opts", [])}
    suggested = set(OPTION.findall(line))
    assert suggested and suggested <= have, (line, suggested - have)
