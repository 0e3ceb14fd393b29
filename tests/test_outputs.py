"""Outputs never replace what they name: /dev/null and /dev/stdout (a device, a link into /proc)
are written through, a pipe is streamed to its reader, and anything else that is not a regular
file, or is one of the command's own inputs, is refused in one line before the work."""

import json
import os
import socket
import stat
import threading

import pytest

from cli_output import one_line_error
from resnet_edge.cli import cli
from resnet_edge.outputs import OutputRefused, output_target, written


@pytest.fixture
def bench_json(measured, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(measured))
    return path


def _null_link(tmp_path, name):
    """A link to /dev/null, as /dev/stdout is a link: a rename onto it would replace the link
    (and, named directly as root, the device itself)."""
    link = tmp_path / name
    link.symlink_to(os.devnull)
    return link


def _still_null(*links):
    for link in links:
        assert link.is_symlink() and os.readlink(link) == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


class _Reader(threading.Thread):
    """The reading end of a FIFO (what `--json >(jq .)` gives a command)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.data = path, b""
        os.mkfifo(path)
        self.start()

    def run(self):
        with open(self.path, "rb") as fifo:
            self.data = fifo.read()


def test_report_writes_through_links_to_devices_and_into_pipes(bench_json, tmp_path, run_cli):
    links = [_null_link(tmp_path, name) for name in ("page.html", "matrix.md")]
    reader = _Reader(tmp_path / "fifo")
    result = run_cli("report", bench_json, "--html", links[0], "--markdown", links[1],
                     "--json", reader.path)
    assert result.exit_code == 0, result.output
    reader.join(10)
    _still_null(*links)
    assert stat.S_ISFIFO(os.lstat(reader.path).st_mode)
    assert json.loads(reader.data)["rows"][0]["backend"] == "ort"


def test_parity_and_bench_write_every_report_through_a_device(digits_workdir, tmp_path, run_cli):
    links = {option: _null_link(tmp_path, option) for option in ("--json", "--markdown", "--junit", "--html")}
    parity = run_cli("parity", digits_workdir, "--backends", "ort", "--precisions", "fp32", "--limit", "16",
                     *[arg for option, link in links.items() for arg in (option, link)])
    assert parity.exit_code == 0, parity.output
    assert not list(tmp_path.glob("*.png"))  # a picture beside /dev/null would land in /dev
    bench = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                    "--batch-sizes", "1", "--iterations", "2", "--warmup", "0", "--json", links["--json"])
    assert bench.exit_code == 0, bench.output
    _still_null(*links.values())


def test_verify_py_writes_its_report_through_a_device(tmp_path):
    from resnet_edge.deploy.verify_bundle import BundleError, _write_report
    link = _null_link(tmp_path, "verify.json")
    _write_report({"passed": True}, link)
    _still_null(link)
    with pytest.raises(BundleError, match="is a folder"):
        _write_report({"passed": True}, tmp_path)


def test_a_regular_file_behind_a_link_is_replaced_whole_and_the_link_kept(tmp_path):
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("old")
    link.symlink_to(real)
    with written(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_pipe_nobody_reads_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputRefused, match="a pipe that nothing reads"):
        with written(tmp_path / "fifo") as tmp:
            tmp.write_text("{}")


@pytest.mark.parametrize("target,said", [
    ("/dev/no-such-node", "no file is made under /dev or /proc"),
    ("/proc/self/no-such-file", "no file is made under /dev or /proc"),
])
def test_no_new_file_is_made_where_devices_live(target, said):
    with pytest.raises(OutputRefused, match=said):
        output_target(target)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")
def test_dev_shm_holds_ordinary_files_replaced_whole(tmp_path):
    """/dev/shm is a CI job's scratch, a file system of ordinary files, not of devices."""
    import uuid
    path = f"/dev/shm/resnet-edge-{uuid.uuid4().hex}.json"
    try:
        assert output_target(path) == (False, output_target(path)[1])
        for text in ("first", "second"):
            with written(path) as tmp:
                tmp.write_text(text)
        assert open(path).read() == "second"  # replaced, not appended to
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_dev_stdout_is_a_stream_even_when_the_shell_sent_it_to_a_file():
    # the test process's own stdout may be a file pytest captured into: a rename would cut it off
    assert output_target("/dev/stdout")[0] and output_target(os.devnull)[0]


# every output option of every command, refused before the work when it names a socket
COMMANDS = {
    "bench": lambda w, c, b: [w], "build": lambda w, c, b: [w], "bundle": lambda w, c, b: [w],
    "calibrate": lambda w, c, b: [w, "--data", "digits"], "debug": lambda w, c, b: [w],
    "qat": lambda w, c, b: [w],
    "eval": lambda w, c, b: [c, "--data", "digits"], "export": lambda w, c, b: [c, "--out", w.parent / "x"],
    "models": lambda w, c, b: [], "parity": lambda w, c, b: [w], "pipeline": lambda w, c, b: [c],
    "report": lambda w, c, b: [b], "train": lambda w, c, b: ["resnet20", "--data", "digits"],
    "verify": lambda w, c, b: [b, "--allow-unsigned"], "deploy": lambda w, c, b: [b, "-i", b, "--allow-unsigned"],
}
OUTPUT_OPTIONS = sorted((name, param.opts[0]) for name, command in cli.commands.items()
                        for param in command.params if param.name in ("json_path", "html", "markdown", "junit"))


def test_the_table_below_covers_every_output_option():
    assert {name for name, _ in OUTPUT_OPTIONS} == set(COMMANDS)


@pytest.mark.parametrize("command,option", OUTPUT_OPTIONS)
def test_every_output_option_refuses_a_socket_before_the_work(command, option, digits_workdir,
                                                              trained_digits, bench_json, tmp_path, run_cli):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    try:
        args = COMMANDS[command](digits_workdir, trained_digits.model_path, bench_json)
        one_line_error(run_cli(command, *args, option, tmp_path / "sock"), 2, "sock is a socket; give a file name")
    finally:
        sock.close()


@pytest.mark.parametrize("option", ["--json", "--html", "--markdown"])
def test_report_refuses_to_overwrite_one_of_its_inputs(option, bench_json, tmp_path, run_cli):
    before = bench_json.read_bytes()
    link = tmp_path / "same.json"
    link.symlink_to(bench_json)
    for target in (bench_json, link):
        one_line_error(run_cli("report", bench_json, option, target), 2,
                       "which this command reads and would overwrite; write elsewhere")
    assert bench_json.read_bytes() == before


def test_bench_refuses_to_overwrite_its_baseline(digits_workdir, bench_json, run_cli):
    one_line_error(run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                           "--baseline", bench_json, "--json", bench_json), 2,
                   "--json " + str(bench_json) + " is " + str(bench_json) + ", which this command reads")


def _copy_workdir(source, tmp_path):
    import shutil
    work = tmp_path / "work"
    shutil.copytree(source, work)
    return work


# (command line, the file it must not destroy) for each output that named an input or an
# artifact and replaced it with exit 0 at 6e4aef4; `w` a calibrated work dir, `c` a checkpoint,
# `t` a TOML file, `k` a key, `b` a bundle archive (outputs are refused before any file is read)
CLOBBERS = {
    "verify --json <bundle>": (lambda w, c, t, k, b: ["verify", b, "--key", k, "--json", b], "b"),
    "verify --json <key>": (lambda w, c, t, k, b: ["verify", b, "--key", k, "--json", k], "k"),
    "parity --json <model>": (lambda w, c, t, k, b: ["parity", w, "--json", w / "model.onnx"], "model.onnx"),
    "parity --html <manifest>": (lambda w, c, t, k, b: ["parity", w, "--html", w / "manifest.json"],
                                 "manifest.json"),
    "bench --json <int8>": (lambda w, c, t, k, b: ["bench", w, "--json", w / "model.int8.onnx"],
                            "model.int8.onnx"),
    "calibrate --json <int8>": (lambda w, c, t, k, b: ["calibrate", w, "--data", "digits",
                                                       "--json", w / "model.int8.onnx"], "model.int8.onnx"),
    "eval --json <checkpoint>": (lambda w, c, t, k, b: ["eval", c, "--data", "digits", "--json", c], "c"),
    "export --json <checkpoint>": (lambda w, c, t, k, b: ["export", c, "--out", w.parent / "x", "--json", c],
                                   "c"),
    "train --json <its model.pt>": (lambda w, c, t, k, b: ["train", "resnet20", "--out", c.parent,
                                                           "--json", c], "c"),
    "debug --json <candidate>": (lambda w, c, t, k, b: ["debug", w, "--candidate", w / "model.fp16.onnx",
                                                        "--json", w / "model.fp16.onnx"], "model.fp16.onnx"),
    "bundle --json <thresholds>": (lambda w, c, t, k, b: ["bundle", w, "--thresholds", t, "--json", t], "t"),
    "bundle --json <its archive>": (lambda w, c, t, k, b: ["bundle", w, "--out", b.parent, "--json",
                                                           b.parent / f"{w.name}-jetpack6.tar.gz"], "b"),
    "parity --json <model> through a linked folder": (
        lambda w, c, t, k, b: ["parity", w, "--json", w.parent / "link" / "model.onnx"], "model.onnx"),
    "parity --json <a hard link to the model>": (
        lambda w, c, t, k, b: ["parity", w, "--json", w.parent / "hard.onnx"], "model.onnx"),
}


@pytest.mark.parametrize("case", sorted(CLOBBERS))
def test_no_output_replaces_an_input_or_an_artifact(case, calibrated_workdir, trained_digits, tmp_path,
                                                    run_cli):
    import shutil
    work = _copy_workdir(calibrated_workdir, tmp_path)
    (tmp_path / "link").symlink_to(work)
    os.link(work / "model.onnx", tmp_path / "hard.onnx")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(trained_digits.model_path, run / "model.pt")
    files = {"c": run / "model.pt", "t": tmp_path / "t.toml", "k": tmp_path / "ci.pub",
             "b": tmp_path / "dist" / "work-jetpack6.tar.gz"}
    files["t"].write_text("[int8]\nmin_cosine = 0.99\n")
    files["k"].write_text("not read: refused before\n")
    files["b"].parent.mkdir()
    files["b"].write_bytes(b"an archive")
    args, kept = CLOBBERS[case]
    kept = files.get(kept) or work / kept
    before = kept.read_bytes()
    result = run_cli(*args(work, files["c"], files["t"], files["k"], files["b"]))
    one_line_error(result, 2, "write elsewhere")
    assert kept.read_bytes() == before


def test_two_outputs_through_a_link_are_one_file(digits_workdir, tmp_path, run_cli):
    (tmp_path / "b.html").symlink_to(tmp_path / "a.json")
    (tmp_path / "a.json").write_text("{}")
    one_line_error(run_cli("parity", digits_workdir, "--json", tmp_path / "a.json", "--html",
                           tmp_path / "b.html"), 2, "both name")
    # and through a linked folder, to a file that does not exist yet
    (tmp_path / "d").symlink_to(tmp_path)
    one_line_error(run_cli("parity", digits_workdir, "--json", tmp_path / "new.json", "--junit",
                           tmp_path / "d" / "new.json"), 2, "both name")


def test_a_report_beside_the_artifacts_is_fine(tmp_path):
    """A report may live in the work dir (report's examples read artifacts/*/parity.json); only
    what resnet-edge keeps there is refused."""
    from resnet_edge.outputs import refuse_clobbering
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"custom.bin": {}}}))
    refuse_clobbering({"--json": tmp_path / "parity.json"}, guards=(tmp_path,))
    for name in ("custom.bin", "manifest.json", "model.onnx", "engines/x/model.fp16.engine"):
        with pytest.raises(OutputRefused, match="a file resnet-edge keeps"):
            refuse_clobbering({"--json": tmp_path / name}, guards=(tmp_path,))


def test_verify_py_json_never_lands_in_the_bundle(tmp_path, capsys):
    from resnet_edge.deploy import verify_bundle
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    assert verify_bundle.main(["--bundle", str(bundle), "--allow-unsigned", "--json",
                               str(bundle / "manifest.json")]) == 2
    assert "lies inside" in capsys.readouterr().err
    assert (bundle / "manifest.json").read_text() == "{}"


@pytest.mark.parametrize("make", ["dev", "proc", "slashes"])
def test_no_new_file_under_dev_through_a_link_or_double_slash(make, tmp_path):
    if make == "slashes":
        target = "//dev/resnet-edge-new"
    else:
        (tmp_path / "d").symlink_to("/dev" if make == "dev" else "/proc/self")
        target = tmp_path / "d" / "resnet-edge-new"
    with pytest.raises(OutputRefused, match="no file is made under /dev or /proc"):
        output_target(target)


def test_a_pipe_nobody_reads_is_refused_before_the_work(digits_workdir, tmp_path, run_cli):
    """bench --json to an unread FIFO was refused only after the whole bench ran."""
    os.mkfifo(tmp_path / "fifo")
    result = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                     "--json", tmp_path / "fifo")
    one_line_error(result, 2, "is a pipe that nothing reads; start its reader first")
    assert "bench" not in result.stdout  # no table: nothing was measured


def test_a_pipes_reader_gets_the_report_after_the_check_held_it_open(digits_workdir, tmp_path, run_cli):
    reader = _Reader(tmp_path / "fifo")
    result = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                     "--batch-sizes", "1", "--iterations", "2", "--json", tmp_path / "fifo")
    assert result.exit_code == 0, result.output
    reader.join(timeout=30)
    assert json.loads(reader.data)["schema"] == "resnet-edge.bench/1"


def test_a_fifo_for_a_manifest_is_not_waited_on(tmp_path):
    from resnet_edge.outputs import refuse_clobbering
    os.mkfifo(tmp_path / "manifest.json")
    refuse_clobbering({"--json": tmp_path / "report.json"}, guards=(tmp_path,))  # returns at once
    with pytest.raises(OutputRefused, match="a file resnet-edge keeps"):
        refuse_clobbering({"--json": tmp_path / "model.onnx"}, guards=(tmp_path,))
