import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from resnet_edge.calibration import calibrate
from resnet_edge.deploy import make_bundle, safe_extract
from resnet_edge.errors import BadInput
from resnet_edge.runtime.trt_engine import build_plan, cache_header, trtexec_command


@pytest.fixture(scope="module")
def bundle(digits_workdir, tmp_path_factory):
    work = tmp_path_factory.mktemp("bundle") / "work"
    shutil.copytree(digits_workdir, work)
    calibrate(work, "digits:train", samples=128, method="minmax", holdout=50)
    return make_bundle(work, "jetpack6", work / "r20-jetpack6.tar.gz", golden=40)


def _extract(bundle, tmp_path):
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "r20-jetpack6"


def test_bundle_contents(bundle, tmp_path):
    root = _extract(bundle, tmp_path)
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "calibration.cache", "labels.txt",
            "preprocess.json", "thresholds.json", "bundle.json", "manifest.json", "README.md",
            "build_engine.sh", "verify.py", "golden/inputs.npy", "golden/labels.npy",
            "golden/reference.npy", "lib/trt_engine.py", "lib/timing.py", "lib/gates.py",
            "lib/metrics.py", "lib/ort.py"} <= names
    manifest = json.loads((root / "manifest.json").read_text())["files"]
    assert set(manifest) == names - {"manifest.json"}
    assert (root / "calibration.cache").read_text().startswith("TRT-100300-")  # JetPack 6: 10.3
    info = json.loads((root / "bundle.json").read_text())
    assert info["precisions"] == ["fp32", "fp16", "int8"] and info["input_shape"] == [3, 32, 32]
    assert (root / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    # the bundled runtime files are the package's own, not second implementations
    import resnet_edge.runtime.trt_engine as te
    assert (root / "lib" / "trt_engine.py").read_text() == open(te.__file__).read()


def test_verify_passes_with_onnxruntime(bundle, run_cli, tmp_path):
    result = run_cli("verify", bundle, "--iterations", "2", "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["backend"] == "onnxruntime" and report["golden_images"] == 40
    assert [r["precision"] for r in report["results"]] == ["fp32", "fp16", "int8"]
    assert all(g["passed"] for r in report["results"] for g in r["gates"] if g["passed"] is not None)


@pytest.mark.parametrize("victim", ["model.int8.onnx", "golden/reference.npy", "lib/gates.py",
                                    "thresholds.json", "verify.py"])
def test_one_flipped_byte_is_named(bundle, run_cli, tmp_path, victim):
    root = _extract(bundle, tmp_path / "x")
    path = root / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    tampered = tmp_path / "r20-jetpack6.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    result = run_cli("verify", tampered)
    assert result.exit_code == 2
    assert f"bundle file {victim} does not match its sha256" in result.stderr


def test_missing_file_is_named(bundle, run_cli, tmp_path):
    root = _extract(bundle, tmp_path)
    (root / "calibration.cache").unlink()
    result = run_cli("verify", root)
    assert result.exit_code == 2 and "bundle file calibration.cache is missing" in result.stderr


def _tar_with(tmp_path, member: tarfile.TarInfo, data: bytes = b"x"):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("bundle/ok.txt")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name,kind,link", [
    ("bundle/../../escaped.txt", tarfile.REGTYPE, ""),
    ("/tmp/absolute-escape.txt", tarfile.REGTYPE, ""),
    ("bundle/link", tarfile.SYMTYPE, "../../outside"),
    ("bundle/abslink", tarfile.SYMTYPE, "/etc/passwd"),
])
def test_unsafe_archives_are_refused_before_writing(tmp_path, name, kind, link):
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, link
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "dest" / "inner"
    dest.mkdir(parents=True)
    with pytest.raises(BadInput, match="outside the target"):
        safe_extract(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists() and not os.path.exists("/tmp/absolute-escape.txt")


def test_cli_refuses_a_traversal_archive(tmp_path, run_cli):
    member = tarfile.TarInfo("bundle/../../escaped.txt")
    archive = _tar_with(tmp_path, member)
    result = run_cli("verify", archive)
    assert result.exit_code == 2 and "points outside the target" in result.stderr


def test_verify_py_runs_standalone_without_torch(bundle, tmp_path):
    root = _extract(bundle, tmp_path)
    probe = ("import runpy, sys; sys.argv = ['verify.py', '--iterations', '2'];\n"
             "try:\n    runpy.run_path('verify.py', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('torch loaded:', 'torch' in sys.modules, 'resnet_edge loaded:', 'resnet_edge' in sys.modules)\n"
             "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False resnet_edge loaded: False" in result.stdout
    assert "PASS" in result.stdout
    report = json.loads((root / "verify.json").read_text())
    assert report["device"]["onnxruntime"] and report["passed"]


def test_build_engine_sh_runs_trtexec_with_the_build_plan_flags(bundle, tmp_path):
    root = _extract(bundle, tmp_path)
    assert subprocess.run(["bash", "-n", str(root / "build_engine.sh")]).returncode == 0
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "trtexec").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$TRTEXEC_ARGS"\n')
    (stub / "trtexec").chmod(0o755)
    python_dir = os.path.dirname(sys.executable)
    # a JetPack 6 bundle (cache headed for 10.3) on JetPack 5, JetPack 6.0 (8.6.2), 6.1 and x86 11
    for version, precision, extra in [("8.5.2", "int8", ["--int8-source", "cache"]),
                                      ("8.6.2", "int8", ["--int8-source", "cache"]),
                                      ("10.3.0", "fp16", []), ("11.4.0", "int8", [])]:
        args_file = tmp_path / f"args-{version}-{precision}"
        engine = tmp_path / "device" / version / "model.engine"
        env = {**os.environ, "PATH": f"{stub}:{python_dir}:/usr/bin:/bin", "TRT_VERSION": version,
               "ENGINE": str(engine), "TRTEXEC_ARGS": str(args_file)}
        run = subprocess.run(["bash", str(root / "build_engine.sh"), precision, *extra], env=env,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        plan = build_plan(version, precision, int8_source=extra[1] if extra else "auto")
        calib = engine.parent / "calibration.cache"
        expected = trtexec_command(plan, engine=str(engine), input_name="input",
                                   input_shape=(3, 32, 32), profile=(1, 8, 32), workspace_mib=2048,
                                   timing_cache=str(engine.parent / "timing.cache"),
                                   calibration_cache=str(calib) if plan.calibration_cache else None)
        assert args_file.read_text().splitlines() == expected[1:]
        if plan.calibration_cache:  # the copy trtexec reads is headed for the TensorRT it runs
            assert calib.read_text().splitlines()[0] == cache_header(version)
            assert (root / "calibration.cache").read_text().startswith("TRT-100300-")
        assert ("this bundle targets TensorRT 10.3.0" in run.stderr) == (version != "10.3.0")


def test_jetpack5_needs_opset_17(digits_workdir, tmp_path):
    with pytest.raises(BadInput, match="opset <= 17.*--exporter torchscript"):
        make_bundle(digits_workdir, "jetpack5", tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_pipeline_skips_unchanged_steps(trained_digits, run_cli, tmp_path):
    out = tmp_path / "pipe"
    args = ("pipeline", trained_digits.model_path, "--out", out, "--samples", "64", "--limit", "64")
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert (out / "pipe-jetpack6.tar.gz").exists() and (out / "reports" / "junit.xml").exists()
    second = run_cli(*args)
    assert second.exit_code == 0
    for step in ("export", "calibrate", "parity", "bench", "bundle"):
        assert any(line.split("│")[1:3] and step in line.split("│")[1] and "skipped" in line.split("│")[2]
                   for line in second.stdout.splitlines() if "│" in line), (step, second.stdout)
