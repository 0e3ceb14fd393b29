"""Bundles: contents per target, verify, build_engine.sh, and every hostile archive an attacker or
a damaged transfer can produce (exit code, one line, nothing written outside the target)."""

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from resnet_edge.calibration import calibrate
from resnet_edge.deploy import make_bundle, safe_extract
from resnet_edge.deploy.archive import BundleError
from resnet_edge.errors import BadInput
from resnet_edge.runtime.trt_plan import build_plan, trtexec_command
from resnet_edge.runtime.trt_rules import cache_header
from cli_output import one_line_error, problem_lines
from trt_standin import write_site

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from resnet_edge.deploy import signing
    folder = tmp_path_factory.mktemp("keys")
    ci = signing.keygen(folder / "ci")
    other = signing.keygen(folder / "attacker")
    return {"ci": ci, "attacker": other}


@pytest.fixture(scope="module")
def bundle(calibrated_workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "r20-jetpack6.tar.gz"
    return make_bundle(calibrated_workdir, "jetpack6", out, golden=64).path


@pytest.fixture(scope="module")
def signed(calibrated_workdir, tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("signed") / "r20-jetpack6.tar.gz"
    return make_bundle(calibrated_workdir, "jetpack6", out, golden=64, sign=keys["ci"][0])


def _extract(bundle, tmp_path):
    return safe_extract(bundle, tmp_path)


def _tree(path):
    """Every path under `path` with its size: what 'nothing was written' compares."""
    return sorted((str(p.relative_to(path)), p.lstat().st_size if not p.is_dir() else 0)
                  for p in path.rglob("*"))


def _manifest_for(root):
    files = {p.relative_to(root).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                              "bytes": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("manifest.json", "manifest.sig")}
    return (json.dumps({"schema": "resnet-edge.manifest/1", "files": files}, indent=2) + "\n").encode()


def _pack(root, out, *, manifest=None, signature=None, extra=()):
    """Repack a bundle folder the way `bundle` does (manifest first), optionally with a new
    manifest, a signature, and extra raw members appended."""
    manifest = manifest if manifest is not None else (root / "manifest.json").read_bytes()
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        def add(name, data):
            info = tarfile.TarInfo(f"{root.name}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("manifest.json", manifest)
        if signature is not None:
            add("manifest.sig", signature)
        for name in json.loads(manifest)["files"]:
            if (root / name).is_file():
                add(name, (root / name).read_bytes())
        for member, data in extra:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def _member(name, kind=tarfile.REGTYPE, *, link="", size=None, data=b""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if size is None else size
    return info, (data if kind == tarfile.REGTYPE else None)


# ---- contents ---------------------------------------------------------------------------------

def test_bundle_contents(bundle, tmp_path):
    root = _extract(bundle, tmp_path)
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "calibration.cache", "labels.txt",
            "preprocess.json", "thresholds.json", "bundle.json", "manifest.json", "README.md",
            "build_engine.sh", "verify.py", "golden/inputs.npy", "golden/labels.npy",
            "golden/reference.npy", "lib/trt_engine.py", "lib/timing.py", "lib/gates.py",
            "lib/metrics.py", "lib/ort.py", "lib/archive.py", "lib/signing.py"} <= names
    manifest = json.loads((root / "manifest.json").read_text())["files"]
    assert set(manifest) == names - {"manifest.json"}  # every file listed, no exemptions
    assert (root / "calibration.cache").read_text().startswith("TRT-100300-")  # JetPack 6: 10.3
    info = json.loads((root / "bundle.json").read_text())
    assert info["precisions"] == ["fp32", "fp16", "int8"] and info["input_shape"] == [3, 32, 32]
    assert info["cuda_python"] == ">=12.6.1,<13"
    assert "pip install 'cuda-python>=12.6.1,<13'" in (root / "README.md").read_text()
    # the README states each model's size, as manifest.json counts its bytes
    for name in ("model.onnx", "model.int8.onnx"):
        assert f"{name} {manifest[name]['bytes'] / 1e6:.1f} MB" in (root / "README.md").read_text()
    assert (root / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    with tarfile.open(bundle) as tar:  # the archive stores manifest.json first
        assert [m.name for m in tar.getmembers()[:2]] == ["r20-jetpack6", "r20-jetpack6/manifest.json"]
    # the bundled runtime files are the package's own, not second implementations
    import resnet_edge.runtime.trt_engine as te
    assert (root / "lib" / "trt_engine.py").read_text() == open(te.__file__).read()


@pytest.mark.parametrize("target,cache,int8_files,pip,cache_hint", [
    ("jetpack5", True, {"model.int8.onnx"}, "cuda-python>=11.4,<12", "--int8-source cache\n"),
    ("x86-trt10", True, {"model.int8.onnx", "model.int8-fp16.onnx"}, "cuda-python>=12,<13",
     "--int8-source cache --typing weak"),
    ("x86-trt11", False, {"model.int8.onnx", "model.int8-fp16.onnx"}, "cuda-python>=13,<14", None),
])
def test_each_target_carries_what_its_tensorrt_reads(target, cache, int8_files, pip, cache_hint,
                                                      calibrated_workdir, tmp_path, monkeypatch):
    from resnet_edge.deploy import bundle_files
    if target == "jetpack5":  # opset 17 is checked separately; here only the file choice
        files, precisions, notes = bundle_files(calibrated_workdir, target)
        assert ("calibration.cache" in files) == cache and int8_files <= set(files)
        return
    result = make_bundle(calibrated_workdir, target, tmp_path / f"{target}.tar.gz", golden=40)
    root = _extract(result.path, tmp_path / "x")
    assert (root / "calibration.cache").exists() == cache
    assert int8_files <= {p.name for p in root.iterdir()}
    readme = (root / "README.md").read_text()
    assert pip in readme
    if cache_hint:
        assert cache_hint in readme  # and the plan accepts exactly what README suggests:
        build_plan(json.loads((root / "bundle.json").read_text())["tensorrt"], "int8",
                   int8_source="cache", typing="weak" if "weak" in cache_hint else "auto")
    else:
        assert "int8-source cache" not in readme


def test_a_cpu_recipe_int8_model_never_reaches_a_bundle(digits_workdir, tmp_path, run_cli):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    calibrate(work, "digits:train", samples=64, method="minmax", recipe="cpu", holdout=20)
    result = run_cli("bundle", work, "--golden", "40", "--out", tmp_path / "dist")
    assert result.exit_code == 0, result.output
    assert "int8 left out" in result.stderr and "--recipe tensorrt" in result.stderr
    made = tmp_path / "dist" / "work-jetpack6.tar.gz"  # <work dir name>-<target>
    assert f"wrote {made} (" in result.stdout
    root = _extract(made, tmp_path / "x")
    info = json.loads((root / "bundle.json").read_text())
    assert info["precisions"] == ["fp32", "fp16"] and not (root / "model.int8.onnx").exists()


def test_build_refuses_a_cpu_recipe_int8_model(digits_workdir, tmp_path, run_cli, monkeypatch):
    from trt_standin import StandIn
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    calibrate(work, "digits:train", samples=64, method="minmax", recipe="cpu", holdout=20)
    StandIn("10.3.0").install(monkeypatch)
    result = run_cli("build", work, "--precision", "int8")
    assert result.exit_code == 2 and "--recipe cpu" in result.stderr
    assert len(problem_lines(result.stderr)) == 1 and not (work / "engines").exists()


def test_jetpack5_needs_opset_17(digits_workdir, tmp_path):
    with pytest.raises(BadInput, match="opset <= 17.*--exporter torchscript"):
        make_bundle(digits_workdir, "jetpack5", tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


# ---- verify -------------------------------------------------------------------------------------

def test_verify_passes_with_onnxruntime_and_says_no_engine_was_tested(bundle, run_cli, tmp_path):
    result = run_cli("verify", bundle, "--allow-unsigned", "--iterations", "2", "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    assert "warning: ONNX Runtime ran the bundle's ONNX files instead of TensorRT" in result.stderr
    assert "NOT AUTHENTICATED (--allow-unsigned; unsigned)" in result.stderr
    assert "PASS (ONNX Runtime only: no engine tested)" in result.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["backend"] == "ort" and report["golden_images"] == 64
    assert not report["engine_tested"] and report["integrity"]["signed"] is False
    assert [r["precision"] for r in report["results"]] == ["fp32", "fp16", "int8"]
    assert all(g["passed"] for r in report["results"] for g in r["gates"] if g["passed"] is not None)
    required = run_cli("verify", bundle, "--allow-unsigned", "--require-tensorrt")
    assert required.exit_code == 3 and "no engine can be tested" in required.stderr


def test_one_flipped_byte_is_named(bundle, run_cli, tmp_path):
    for victim in ("model.int8.onnx", "golden/reference.npy", "lib/gates.py", "thresholds.json",
                   "verify.py", "build_engine.sh"):
        root = _extract(bundle, tmp_path / victim.replace("/", "_"))
        path = root / victim
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        for target in (root, _pack(root, tmp_path / f"{path.name}.tar.gz")):  # folder and archive
            result = run_cli("verify", target, "--allow-unsigned")
            assert result.exit_code == 2, (victim, result.output)
            assert f"bundle file {victim} does not match its sha256" in result.stderr


def test_missing_file_is_named(bundle, run_cli, tmp_path):
    root = _extract(bundle, tmp_path)
    (root / "calibration.cache").unlink()
    result = run_cli("verify", root, "--allow-unsigned")
    assert result.exit_code == 2 and "bundle file calibration.cache is missing" in result.stderr


def test_verify_py_runs_standalone_without_torch_and_writes_beside_the_bundle(bundle, tmp_path):
    root = _extract(bundle, tmp_path)
    before = _tree(root)
    probe = ("import runpy, sys; sys.argv = ['verify.py', '--iterations', '2', '--allow-unsigned'];\n"
             "try:\n    runpy.run_path('verify.py', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('torch loaded:', 'torch' in sys.modules, 'resnet_edge loaded:', 'resnet_edge' in sys.modules)\n"
             "sys.exit(code)")
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    # ONNX Runtime's telemetry is off, so it kept no session file (.ses) in TMPDIR
    assert not list(scratch.iterdir())
    assert "torch loaded: False resnet_edge loaded: False" in result.stdout
    assert "so no engine was tested" in result.stdout
    assert "PASS (ONNX Runtime only: no engine tested)" in result.stdout
    report = json.loads((tmp_path / f"{root.name}.device" / "verify.json").read_text())
    assert report["device"]["onnxruntime"] and report["passed"]
    assert _tree(root) == before  # the device wrote nothing into the bundle
    again = subprocess.run([sys.executable, "verify.py", "--iterations", "2", "--allow-unsigned"], cwd=root,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr  # and so a second run still finds it intact


def test_verify_says_what_it_does_as_it_goes_and_times_few_iterations_off_the_device(bundle, tmp_path,
                                                                                     run_cli):
    """A ResNet-18 bundle on a CPU printed nothing for 312 s (100 timed iterations per precision
    of ONNX Runtime, whose latency says little about the device)."""
    root = _extract(bundle, tmp_path)
    run = subprocess.run([sys.executable, "verify.py", "--allow-unsigned"], cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert any("timing 10 iterations per precision on ONNX Runtime, not the device's engine" in l for l in lines)
    precisions = json.loads((root / "bundle.json").read_text())["precisions"]
    for i, precision in enumerate(precisions, 1):
        assert any(f"] {precision} ({i} of {len(precisions)}): " in l for l in lines), lines
        assert any(re.search(rf"\] {precision}: timing 10 iterations at batch \d+, about \d+\.\d s", l) for l in lines)
    report = json.loads((tmp_path / f"{root.name}.device" / "verify.json").read_text())
    assert {r["latency"]["host_to_host"]["iterations"] for r in report["results"]} == {10}
    cli = run_cli("verify", bundle, "--allow-unsigned", "--precisions", "fp32")
    assert cli.exit_code == 0 and "fp32: timing 10 iterations at batch" in cli.stderr, cli.output


def test_a_trusted_verify_py_checks_another_bundle_archive(signed, bundle, tmp_path, keys):
    trusted = _extract(bundle, tmp_path / "trusted")
    run = subprocess.run([sys.executable, str(trusted / "verify.py"), "--bundle", str(signed.path),
                          "--key", str(keys["ci"][1]), "--iterations", "2",
                          "--json", str(tmp_path / "v.json")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"signature: valid, made by key {keys['ci'][2]}" in run.stdout
    forged = subprocess.run([sys.executable, str(trusted / "verify.py"), "--bundle", str(signed.path),
                             "--key", str(keys["attacker"][1])], capture_output=True, text=True)
    assert forged.returncode == 2 and "signed by another key" in forged.stderr


# ---- signatures --------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path, run_cli):
    result = run_cli("keygen", "--out", tmp_path / "keys", "--name", "ci")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "keys" / "ci.key").stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "ci.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = run_cli("keygen", "--out", tmp_path / "keys", "--name", "ci")
    assert again.exit_code == 2 and "choose another --name, or pass --force" in again.stderr
    assert run_cli("keygen", "--out", tmp_path, "--name", "../ci").exit_code == 2


@pytest.mark.parametrize("which", ["key", "pub"])
@pytest.mark.parametrize("force", [False, True])
def test_keygen_never_writes_through_a_symbolic_link(which, force, tmp_path, run_cli):
    keys = tmp_path / "keys"
    keys.mkdir()
    victim, dangling = tmp_path / "victim.txt", tmp_path / "planted"
    victim.write_text("precious\n")
    for target in (dangling, victim):  # a link to nothing yet, and one to a file that exists
        link = keys / f"ci.{which}"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        result = run_cli("keygen", "--out", keys, "--name", "ci", *(["--force"] if force else []))
        one_line_error(result, 2, f"ci.{which} is a symbolic link; keys are written only as plain files")
        assert not dangling.exists() and victim.read_text() == "precious\n"
        assert link.is_symlink() and not (keys / f"ci.{'pub' if which == 'key' else 'key'}").exists()


def test_signed_bundle_verifies_with_its_key_and_prints_the_digest(signed, run_cli, keys):
    result = run_cli("verify", signed.path, "--key", keys["ci"][1], "--iterations", "2")
    assert result.exit_code == 0, result.output
    assert f"signature: valid, made by key {keys['ci'][2]}" in result.stdout
    assert signed.manifest_sha256 in result.stdout and signed.key_id == keys["ci"][2]
    # without a key nothing passes, unless asked for, and then it says nothing was authenticated
    one_line_error(run_cli("verify", signed.path, "--iterations", "2"), 2,
                   "verify needs the signer's public key")
    unkeyed = run_cli("verify", signed.path, "--iterations", "2", "--allow-unsigned")
    assert unkeyed.exit_code == 0, unkeyed.output
    assert f"NOT AUTHENTICATED (--allow-unsigned; signed by key {keys['ci'][2]}, not checked)" in unkeyed.stderr


def test_a_key_set_once_on_the_device_is_used(signed, run_cli, keys, monkeypatch, tmp_path):
    monkeypatch.setenv("RESNET_EDGE_VERIFY_KEY", str(keys["ci"][1]))
    result = run_cli("verify", signed.path, "--iterations", "2")
    assert result.exit_code == 0 and "signature: valid" in result.stdout, result.output
    root = _extract(signed.path, tmp_path)
    env = {**os.environ, "RESNET_EDGE_VERIFY_KEY": str(keys["attacker"][1])}
    run = subprocess.run([sys.executable, "verify.py", "--iterations", "2"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "signed by another key" in run.stderr


def test_a_forged_unsigned_bundle_no_longer_passes_by_default(bundle, tmp_path, run_cli):
    """The model swapped and manifest.json re-hashed: integrity holds, and before, so did verify."""
    root = _extract(bundle, tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "model.onnx").write_bytes((root / "model.fp16.onnx").read_bytes())
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256((root / "model.onnx").read_bytes()).hexdigest(),
                                       "bytes": (root / "model.onnx").stat().st_size}
    (root / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(run_cli("verify", root), 2, "verify needs the signer's public key")
    run = subprocess.run([sys.executable, "verify.py"], cwd=root, capture_output=True, text=True)
    assert run.returncode == 2 and "verify needs the signer's public key" in run.stderr


def test_the_signature_covers_the_bundles_name_target_release_and_time(calibrated_workdir, tmp_path,
                                                                       run_cli, keys, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764000000")  # 2025-11-24T16:00:00Z
    made = make_bundle(calibrated_workdir, "jetpack6", tmp_path / "r20-jetpack6.tar.gz", golden=64,
                       sign=keys["ci"][0], release="v8")
    key = ("--key", keys["ci"][1], "--iterations", "2")
    result = run_cli("verify", made.path, *key, "--min-created", "2025-11-01")
    assert result.exit_code == 0, result.output
    assert "bundle: r20-jetpack6, target jetpack6, release v8, made 2025-11-24T16:00:00Z" in result.stdout
    # repacked under another name: the signature still matches, the name it signed does not
    root = _extract(made.path, tmp_path / "x")
    renamed = root.rename(root.parent / "resnet50-v9-jetpack6")
    repacked = tmp_path / "resnet50-v9-jetpack6.tar.gz"
    from resnet_edge.deploy.archive import write_archive
    write_archive(renamed, repacked, renamed.name, (renamed / "manifest.json").read_bytes(),
                  (renamed / "manifest.sig").read_bytes(), 0)
    one_line_error(run_cli("verify", repacked, *key), 2,
                   "the bundle was made as 'r20-jetpack6' but is named 'resnet50-v9-jetpack6'")
    # an older signed bundle replayed to a device that runs a newer one
    one_line_error(run_cli("verify", made.path, *key, "--min-created", "2026-01-01"), 2,
                   "the bundle was made 2025-11-24T16:00:00Z, before --min-created 2026-01-01T00:00:00Z")
    one_line_error(run_cli("verify", made.path, *key, "--min-created", "last week"), 2,
                   "--min-created 'last week' is not a date")
    # full-width digits were taken as a date, then compared as text
    one_line_error(run_cli("verify", made.path, *key, "--min-created", "\uff12\uff10\uff12\uff10-01-01"), 2,
                   "is not a date")
    one_line_error(run_cli("bundle", calibrated_workdir, "--release", "v9\nx"), 2, "--release 'v9\\nx' is not a plain name")


@pytest.mark.parametrize("args,said", [
    (("--golden", "16"), "--golden 16, and verify's agreement gate needs at least 30 decisive golden images"),
    (("--data", "digits:test", "--golden", "100"), None),
])
def test_bundle_refuses_a_golden_set_verify_could_never_pass(args, said, calibrated_workdir, tmp_path, run_cli):
    """--golden 16 only warned, then verify failed with 16/16 agreeing ("fewer than 30 decisive
    images"); a folder of fewer images than asked for said nothing at all."""
    if said is None:  # a folder of 24 images and the default --golden 100: what is really packed
        from PIL import Image
        rng = np.random.default_rng(0)
        for i in range(24):
            (tmp_path / "few" / str(i % 10)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "few" / str(i % 10) / f"{i}.png")
        args, said = ("--data", f"imagefolder:{tmp_path / 'few'}"), f"imagefolder:{tmp_path / 'few'} has only 24 images"
    one_line_error(run_cli("bundle", calibrated_workdir, "--out", tmp_path / "b", *args), 2, said)
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())


def test_bundle_prints_the_manifest_digest_and_refuses_a_bad_key(calibrated_workdir, tmp_path, run_cli, keys):
    result = run_cli("bundle", calibrated_workdir, "--golden", "40", "--out", tmp_path / "b",
                     "--sign", keys["ci"][0])
    assert result.exit_code == 0, result.output
    root = _extract(tmp_path / "b" / f"{calibrated_workdir.name}-jetpack6.tar.gz", tmp_path / "x")
    digest = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    assert f"manifest.json sha256 {digest}" in result.stdout and keys["ci"][2] in result.stdout
    bad = run_cli("bundle", calibrated_workdir, "--out", tmp_path / "c", "--sign", keys["ci"][1])
    # cryptography's own words end where its sentence ends, not cut off midway
    one_line_error(bad, 2, "is not a PEM private key (NAME.key) (Valid PEM but no BEGIN/END "
                           "delimiters for a private key found); make one with `resnet-edge keygen`")
    (tmp_path / "junk.pub").write_text("not a key\n")
    made = tmp_path / "b" / f"{calibrated_workdir.name}-jetpack6.tar.gz"
    one_line_error(run_cli("verify", made, "--key", tmp_path / "junk.pub"), 2,
                   "is not a PEM public key (NAME.pub) (Unable to load PEM file); make one with")
    assert not list((tmp_path / "c").glob("*.tar.gz"))


def _rehashed(signed, tmp_path, change):
    """The signed bundle, changed by `change(root)`, with manifest.json re-hashed to match."""
    root = _extract(signed.path, tmp_path / "src")
    change(root)
    return root, _manifest_for(root), (root / "manifest.sig").read_bytes()


TAMPERING = {
    "model replaced": lambda r: shutil.copy(r / "model.fp16.onnx", r / "model.onnx"),
    "golden regenerated": lambda r: np.save(r / "golden" / "reference.npy",
                                            np.load(r / "golden" / "reference.npy") * 0),
    "verify.py backdoored": lambda r: (r / "verify.py").write_text("print('PASS')\n"),
    "lib backdoored": lambda r: (r / "lib" / "gates.py").write_text(
        (r / "lib" / "gates.py").read_text() + "\nevaluate_gates = lambda *a: []\n"),
    "build_engine.sh backdoored": lambda r: (r / "build_engine.sh").write_text("#!/bin/sh\ncurl evil\n"),
    "thresholds loosened": lambda r: (r / "thresholds.json").write_text(json.dumps(
        {p: {"max_accuracy_drop_pt": 100.0} for p in ("fp32", "fp16", "int8")})),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_rehashed_tampering_is_caught_by_the_signature(kind, signed, tmp_path, run_cli, keys):
    root, manifest, signature = _rehashed(signed, tmp_path, TAMPERING[kind])
    with_sig = _pack(root, tmp_path / "a.tar.gz", manifest=manifest, signature=signature)
    result = run_cli("verify", with_sig, "--key", keys["ci"][1])
    assert result.exit_code == 2 and "signature does not match manifest.json" in result.stderr
    stripped = _pack(root, tmp_path / "b.tar.gz", manifest=manifest)
    result = run_cli("verify", stripped, "--key", keys["ci"][1])
    assert result.exit_code == 2 and "the bundle is unsigned" in result.stderr
    from resnet_edge.deploy import signing
    resigned = _pack(root, tmp_path / "c.tar.gz", manifest=manifest,
                     signature=signing.sign(manifest, keys["attacker"][0]))
    result = run_cli("verify", resigned, "--key", keys["ci"][1])
    assert result.exit_code == 2 and "signed by another key" in result.stderr
    # without a key the forgery cannot be told from the real thing, except by its digest
    assert hashlib.sha256(manifest).hexdigest() != signed.manifest_sha256


# ---- hostile archives --------------------------------------------------------------------------

def _hostile(tmp_path, members, first_manifest=True):
    """An archive with a valid-looking manifest.json (listing ok.txt) followed by `members`."""
    ok = b"fine\n"
    manifest = json.dumps({"files": {"ok.txt": {"sha256": hashlib.sha256(ok).hexdigest(),
                                                "bytes": len(ok)}}}).encode()
    path = tmp_path / "evil.tar.gz"
    head = [_member("b/manifest.json", data=manifest)] if first_manifest else []
    raw = b""  # written block by block: a header may declare more data than follows it
    for info, data in [*head, *members, _member("b/ok.txt", data=ok)]:
        raw += info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        if data:
            raw += data + bytes(-len(data) % 512)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    path.write_bytes(compressor.compress(raw + bytes(1024)) + compressor.flush())
    return path


def test_a_second_copy_is_stored_as_a_link_and_extracted_as_a_copy(calibrated_workdir, tmp_path):
    """The Triton bundle packed model.onnx twice (168.6 MB for a ResNet-18): the archive now
    stores the second copy as a hard link to the first, which safe_extract writes out as a copy
    of the checked file, never as a link; a link to anything else is still refused."""
    made = make_bundle(calibrated_workdir, "triton", tmp_path / "t.tar.gz", golden=40)
    with tarfile.open(made.path) as tar:
        members = {m.name.partition("/")[2]: m for m in tar.getmembers()}
    served = next(n for n in members if n.startswith("triton/") and n.endswith("/1/model.onnx"))
    assert members[served].islnk() and members[served].linkname.endswith("/model.onnx")
    assert members[served].size == 0  # the bytes are stored once, as model.onnx
    root = safe_extract(made.path, tmp_path / "x")
    assert not (root / served).is_symlink() and os.stat(root / served).st_nlink == 1
    assert (root / served).read_bytes() == (root / "model.onnx").read_bytes()
    # the same file with other bytes listed for it: refused, not copied
    ok = b"fine\n"
    manifest = json.dumps({"files": {"ok.txt": {"sha256": hashlib.sha256(ok).hexdigest(), "bytes": 5},
                                     "twin.txt": {"sha256": "0" * 64, "bytes": 5}}}).encode()
    raw = b""
    for info, data in [_member("b/manifest.json", data=manifest), _member("b/ok.txt", data=ok),
                       _member("b/twin.txt", tarfile.LNKTYPE, link="b/ok.txt")]:
        raw += info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape") + (data + bytes(-len(data) % 512) if data else b"")
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    (tmp_path / "twin.tar.gz").write_bytes(compressor.compress(raw + bytes(1024)) + compressor.flush())
    with pytest.raises(BundleError, match="is a link"):
        safe_extract(tmp_path / "twin.tar.gz", tmp_path / "y")


def test_hard_links_count_against_the_byte_limits(tmp_path, monkeypatch):
    """521 KiB listing one 512 KiB file and 1,000 hard links to it unpacked to 500 MiB (983x)
    with no refusal: a copy of an earlier member was not counted. Here one file of 256 KiB and
    64 links, each a listed copy, against a 4 MiB limit and a ratio limit past its floor."""
    body = os.urandom(256 << 10)  # incompressible: only the copies inflate the archive
    entry = {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}
    names = [f"c{i:02d}" for i in range(64)]
    manifest = json.dumps({"files": {"a": entry, **{n: entry for n in names}}}).encode()
    raw = b""
    for info, data in [_member("b/manifest.json", data=manifest), _member("b/a", data=body),
                       *(_member(f"b/{n}", tarfile.LNKTYPE, link="b/a") for n in names)]:
        raw += info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape") + (data + bytes(-len(data) % 512) if data else b"")
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(compressor.compress(raw + bytes(1024)) + compressor.flush())
    with pytest.raises(BundleError, match="unpacks to more than 4 MiB"):
        safe_extract(bomb, tmp_path / "x", max_bytes=4 << 20)
    assert not (tmp_path / "x" / "b").exists()
    # the ratio limit, past a floor this small archive can reach
    monkeypatch.setattr("resnet_edge.deploy.archive.RATIO_FLOOR", 1 << 20)
    with pytest.raises(BundleError, match="expands more than 10x"):
        safe_extract(bomb, tmp_path / "y", max_ratio=10)
    monkeypatch.undo()
    assert safe_extract(bomb, tmp_path / "z").joinpath("c63").read_bytes() == body  # within limits


def _symlink_chain(depth=16):
    """The CVE-2025-4517 shape: links whose resolved path grows past PATH_MAX, then a link
    through them to a file outside, then a write through that link."""
    members, step = [], "d" * 247
    path = "b"
    for _ in range(depth):
        members.append(_member(f"{path}/{step}", tarfile.DIRTYPE))
        members.append(_member(f"{path}/l", tarfile.SYMTYPE, link=step))
        path = f"{path}/l"
    members.append(_member(f"{path}/escape", tarfile.SYMTYPE, link="../" * depth + "../../outside"))
    members.append(_member("b/escape-write", tarfile.SYMTYPE, link=f"{path}/escape"))
    members.append(_member("b/escape-write", data=b"pwned"))
    return members


HOSTILE = {
    "symlink chain past PATH_MAX": (lambda: _symlink_chain(), "is a link"),
    "hardlink inside": (lambda: [_member("b/hard", tarfile.LNKTYPE, link="b/ok.txt")], "is a link"),
    "hardlink outside": (lambda: [_member("b/hard", tarfile.LNKTYPE, link="../etc/passwd")], "is a link"),
    "hardlink to a missing member": (lambda: [_member("b/hard", tarfile.LNKTYPE, link="b/nope")], "is a link"),
    "fifo": (lambda: [_member("b/fifo", tarfile.FIFOTYPE)], "special file"),
    "character device": (lambda: [_member("b/tty", tarfile.CHRTYPE)], "special file"),
    "block device": (lambda: [_member("b/sda", tarfile.BLKTYPE)], "special file"),
    "header declaring 100 GiB": (lambda: [_member("b/ok.txt", size=100 << 30, data=b"x")], "declares"),
    "traversal": (lambda: [_member("b/../../escaped.txt", data=b"x")], "points outside the bundle"),
    "absolute": (lambda: [_member("/tmp/absolute-escape.txt", data=b"x")], "points outside the bundle"),
    "unlisted engine": (lambda: [_member("b/engines/orin-trt10.3/model.int8.engine", data=b"x")],
                        "not in manifest.json"),
    "unlisted verify.json": (lambda: [_member("b/verify.json.d/x", data=b"x")], "not in manifest.json"),
    "second top-level folder": (lambda: [_member("c/x.txt", data=b"x")], "one bundle folder"),
    "duplicate member": (lambda: [_member("b/ok.txt", data=b"fine\n"), _member("b/ok.txt", data=b"evil\n")],
                         "twice"),
}


def _refused(evil, tmp_path, run_cli, message):
    """Extraction refuses `evil` with `message`, the folders around the target are as they were,
    and `verify` exits 2 with that one line."""
    sandbox = tmp_path / "sandbox"
    target = sandbox / "target"
    target.mkdir(parents=True)
    (sandbox / "outside").write_text("keep me\n")
    before = _tree(tmp_path)
    with pytest.raises(BundleError, match=message):
        safe_extract(evil, target)
    assert _tree(tmp_path) == before  # target still empty, nothing beside it touched
    assert (sandbox / "outside").read_text() == "keep me\n"
    assert not os.path.exists("/tmp/absolute-escape.txt")
    result = run_cli("verify", evil, "--allow-unsigned")
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(problem_lines(result.stderr)) == 1


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_is_written_outside(kind, tmp_path, run_cli):
    make, message = HOSTILE[kind]
    _refused(_hostile(tmp_path, make()), tmp_path, run_cli, message)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar makes the sparse archive")
def test_a_sparse_huge_member_is_refused(tmp_path, run_cli):
    folder = tmp_path / "src" / "b"
    folder.mkdir(parents=True)
    with open(folder / "huge", "wb") as handle:
        handle.truncate(100 << 30)  # 100 GiB apparent, nothing on disk
    (folder / "manifest.json").write_text('{"files": {"huge": {"sha256": "' + "0" * 64 + '", "bytes": 1}}}')
    evil = tmp_path / "sparse.tar.gz"
    subprocess.run(["tar", "-cSzf", str(evil), "-C", str(tmp_path / "src"), "b/manifest.json", "b/huge"],
                   check=True)
    shutil.rmtree(tmp_path / "src")
    _refused(evil, tmp_path, run_cli, "special file")


def test_a_gzip_bomb_stops_at_the_ratio_limit(tmp_path, run_cli):
    size = 256 << 20  # listed in the manifest, so extraction starts writing it
    zeros = bytes(1 << 20)
    digest = hashlib.sha256()
    for _ in range(size >> 20):
        digest.update(zeros)
    manifest = json.dumps({"files": {"bomb": {"sha256": digest.hexdigest(), "bytes": size}}}).encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info, data = _member("b/manifest.json", data=manifest)
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("b/bomb")
        info.size = size

        class Zeros(io.RawIOBase):
            left = size

            def read(self, n=-1):
                n = min(n if n >= 0 else self.left, self.left)
                self.left -= n
                return bytes(n)
        tar.addfile(info, Zeros())
    evil = tmp_path / "bomb.tar.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    evil.write_bytes(compressor.compress(raw.getvalue()) + compressor.flush())
    assert evil.stat().st_size < size / 500
    _refused(evil, tmp_path, run_cli, "expands more than 200x")  # the partial file went too


@pytest.mark.parametrize("kind,content,message", [
    ("empty", b"", "not a readable tar archive"),
    ("not a tar", b"just some text, not an archive\n" * 40, "not a readable tar archive"),
    ("no manifest first", None, "not manifest.json"),
    ("manifest not JSON", b"{not json", "is not JSON"),
    ("manifest {}", b"{}", "lists no files"),
    ("manifest with ..", json.dumps({"files": {"../x": {"sha256": "0" * 64, "bytes": 1}}}).encode(),
     "points outside the bundle"),
    ("manifest with /", json.dumps({"files": {"/etc/passwd": {"sha256": "0" * 64, "bytes": 1}}}).encode(),
     "points outside the bundle"),
])
def test_malformed_archives_exit_2_with_one_line(kind, content, message, tmp_path, run_cli):
    path = tmp_path / "bad.tar.gz"
    if kind in ("empty", "not a tar"):
        path.write_bytes(content)
    elif content is None:
        path = _hostile(tmp_path, [], first_manifest=False)
    else:
        with tarfile.open(path, "w:gz") as tar:
            info, data = _member("b/manifest.json", data=content)
            tar.addfile(info, io.BytesIO(data))
    _refused(path, tmp_path, run_cli, message)


def test_a_truncated_archive_exits_2(bundle, tmp_path, run_cli):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    _refused(cut, tmp_path, run_cli, "truncated")


def test_unlisted_files_in_a_folder_are_refused_everywhere(bundle, tmp_path, run_cli):
    for planted in ("engines/orin-trt10.3/model.int8.engine", "verify.json", "lib/extra.py"):
        root = _extract(bundle, tmp_path / planted.replace("/", "_"))
        (root / planted).parent.mkdir(parents=True, exist_ok=True)
        (root / planted).write_bytes(b"planted")
        result = run_cli("verify", root, "--allow-unsigned")
        assert result.exit_code == 2 and f"bundle file {planted} is not in manifest.json" in result.stderr
    root = _extract(bundle, tmp_path / "link")
    (root / "lib" / "link.py").symlink_to("/etc/passwd")
    result = run_cli("verify", root, "--allow-unsigned")
    assert result.exit_code == 2 and "is a link" in result.stderr


def _declared(bundle, tmp_path, name, change):
    """The bundle folder with one declared file changed and the manifest re-hashed."""
    root = _extract(bundle, tmp_path)
    change(root / name)
    (root / "manifest.json").write_bytes(_manifest_for(root))
    return root


@pytest.mark.parametrize("name,change,message", [
    ("bundle.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "max_batch": 0})),
     "invalid max_batch 0"),
    ("bundle.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "precisions": ["int4"]})),
     "invalid precisions"),
    ("bundle.json", lambda p: p.write_text("[1, 2"), "is not JSON"),
    ("bundle.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "near_tie": {"fp32": float("nan")}})),
     "invalid near_tie"),
    ("bundle.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "near_tie": {"fp16": -1}})),
     "invalid near_tie"),
    ("bundle.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "near_tie": {"int4": 0.1}})),
     "invalid near_tie"),
    ("bundle.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "opsets": {"model.onnx": "20"}})),
     "invalid opsets"),
    ("golden/inputs.npy", lambda p: np.save(p, np.zeros((0, 3, 32, 32), np.float32)), "with N >= 1"),
    ("golden/reference.npy", lambda p: np.save(p, np.array([{"evil": 1}], dtype=object), allow_pickle=True),
     "not a plain numeric .npy"),
    ("golden/reference.npy", lambda p: np.save(p, np.full((64, 10), np.nan, np.float32)), "non-finite"),
    ("golden/labels.npy", lambda p: np.save(p, np.full(64, 11)), "integer labels in [0, 10)"),
    ("thresholds.json", lambda p: p.write_text(json.dumps({"fp32": {"max_abs": -1}, "fp16": {},
                                                           "int8": {}})), "outside"),
])
def test_declarations_are_checked_before_use(name, change, message, bundle, tmp_path, run_cli):
    root = _declared(bundle, tmp_path, name, change)
    result = run_cli("verify", root, "--allow-unsigned")
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(problem_lines(result.stderr)) == 1


# ---- on a device: build_engine.sh and verify.py against stand-ins --------------------------------

def test_build_engine_sh_runs_trtexec_with_the_build_plan_flags(bundle, tmp_path):
    root = _extract(bundle, tmp_path)
    assert subprocess.run(["bash", "-n", str(root / "build_engine.sh")]).returncode == 0
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "trtexec").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$TRTEXEC_ARGS"\n')
    (stub / "trtexec").chmod(0o755)
    python_dir = os.path.dirname(sys.executable)
    # a JetPack 6 bundle (opset 20) on JetPack 5 and 6.0 (TensorRT 8.5/8.6 parse opset <= 17):
    # refused before trtexec runs, in one line
    for version in ("8.5.2", "8.6.2"):
        env = {**os.environ, "PATH": f"{stub}:{python_dir}:/usr/bin:/bin", "TRT_VERSION": version,
               "ENGINE": str(tmp_path / "never.engine"), "TRTEXEC_ARGS": str(tmp_path / "never")}
        run = subprocess.run(["bash", str(root / "build_engine.sh"), "int8", "--int8-source", "cache"],
                             env=env, capture_output=True, text=True)
        assert run.returncode == 2 and not (tmp_path / "never").exists(), run.stderr
        assert [line for line in run.stderr.splitlines() if line.startswith("error:")] == [
            f"error: model.onnx is ONNX opset 20, and TensorRT {version} reads opset <= 17; export "
            "with --exporter torchscript (opset 17) and bundle that (JetPack 5: --target jetpack5; "
            "JetPack 6.0: --target jetpack6)"]
    # on JetPack 6.1 (10.3, the cache headed for it) and x86 TensorRT 11
    for version, precision, extra in [("10.3.0", "int8", ["--int8-source", "cache"]),
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
                                   static_model=False,
                                   timing_cache=str(engine.parent / "timing.cache"),
                                   calibration_cache=str(calib) if plan.calibration_cache else None)
        assert args_file.read_text().splitlines() == expected[1:]
        if plan.calibration_cache:  # the copy trtexec reads is headed for the TensorRT it runs
            assert calib.read_text().splitlines()[0] == cache_header(version)
            assert (root / "calibration.cache").read_text().startswith("TRT-100300-")
        assert ("this bundle targets TensorRT 10.3.0" in run.stderr) == (version != "10.3.0")


def _device_env(tmp_path, version, **site):
    folder = write_site(tmp_path / f"site-{version}-{site.get('cuda_python')}", version, **site)
    return {**os.environ, "PYTHONPATH": str(folder), "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"}


@pytest.mark.parametrize("cuda_python,message", [
    ("13.0.1", "cuda-python 13.0.1 needs a CUDA 13 driver"),
    ("12.2.0", "does not match this bundle's CUDA (>=12.6.1,<13)"),
    (None, "cuda-python is not installed; pip install 'cuda-python>=12.6.1,<13'"),
])
def test_a_mismatched_cuda_python_exits_3_on_the_device(cuda_python, message, bundle, tmp_path):
    root = _extract(bundle, tmp_path / "b")
    env = _device_env(tmp_path, "10.3.0", cuda_python=cuda_python)
    for command in (["bash", "build_engine.sh", "fp16"], [sys.executable, "verify.py", "--allow-unsigned"]):
        run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert run.returncode == 3, (command, run.stdout, run.stderr)
        assert message in run.stderr and len(problem_lines(run.stderr)) == 1  # past the progress lines


def test_verify_py_builds_into_the_device_folder_and_trusts_only_its_own_engines(bundle, tmp_path):
    root = _extract(bundle, tmp_path / "b")
    before = _tree(root)
    env = _device_env(tmp_path, "10.3.0")
    run = subprocess.run([sys.executable, "verify.py", "--precisions", "fp16", "--iterations", "2",
                          "--allow-unsigned"],
                         cwd=root, env=env, capture_output=True, text=True)
    # the stand-in engine computes no ResNet, so the gates fail; what matters is where it ran
    assert run.returncode == 1, run.stderr
    assert "trt fp16 (TensorRT 10.3.0, Orin)" in run.stdout and "no engine was tested" not in run.stdout
    device = tmp_path / "b" / f"{root.name}.device"
    engine = device / "engines" / "orin-trt10.3" / "model.fp16.engine"
    assert engine.exists() and (device / "verify.json").exists()
    assert _tree(root) == before
    record = engine.with_suffix(".json")
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "onnx_sha256": "0" * 64}))
    run = subprocess.run([sys.executable, "verify.py", "--precisions", "fp16", "--allow-unsigned"],
                         cwd=root, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "was not built from this bundle's model.onnx" in run.stderr


def test_a_precision_that_gives_nan_on_the_golden_inputs_is_not_bundled(tmp_path):
    """The near-tie margin is measured on the golden inputs: a file whose logits are not finite
    there stops the bundle instead of recording an infinite margin."""
    from onnx import TensorProto, helper
    from resnet_edge.deploy import near_tie_margins
    from resnet_edge.errors import GateFailed
    graph = helper.make_graph([helper.make_node("Log", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "model.onnx"))
    inputs = np.ones((4, 10), np.float32)
    inputs[2, 3] = 0.0  # log(0) = -inf in one image
    with pytest.raises(GateFailed, match="model.onnx gives 1 NaN or inf logits"):
        near_tie_margins(tmp_path, "10.3.0", ["fp32"], inputs, np.zeros((4, 10), np.float32), (1, 4))
    inputs[2, 3] = 1.0
    # no error, and zero reference margins: every image is a near-tie, none decides the gate
    assert near_tie_margins(tmp_path, "10.3.0", ["fp32"], inputs, np.zeros((4, 10), np.float32),
                            (1, 4)) == ({"fp32": 0.0}, {"fp32": 0})



# ---- reproducible bundles ---------------------------------------------------------------------

def test_the_same_inputs_give_the_same_bundle_bytes(digits_workdir, tmp_path, monkeypatch):
    """Two calibrations of the same model on the same images, each bundled (and one bundled
    twice): one digest. Entries in calibration.cache and calibration.ranges.json came in the
    calibrator's order of the moment, and the archive carried the clock and a temporary name."""
    digests = []
    for run in ("a", "b"):
        work = tmp_path / run / "work"
        shutil.copytree(digits_workdir, work)
        calibrate(work, "digits:train", samples=32, method="minmax")
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764000000")  # the calibrations ran at other times
        for again in range(2 if run == "a" else 1):
            made = make_bundle(work, "jetpack6", tmp_path / run / f"{again}" / "work-jetpack6.tar.gz",
                               golden=40)
            digests.append(hashlib.sha256(made.path.read_bytes()).hexdigest())
        monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert len(set(digests)) == 1, digests
    info = json.loads(tarfile.open(made.path).extractfile("work-jetpack6/bundle.json").read())
    assert info["created"] == "2025-11-24T16:00:00Z"
    # the calibrator's order is fixed within one process (string hashing is seeded per process),
    # so what makes two processes agree is that the entries are written sorted
    ranges = list(json.loads((work / "calibration.ranges.json").read_text())["data"])
    cached = [line.rpartition(":")[0] for line in (work / "calibration.cache").read_text().splitlines()[1:]]
    assert ranges == sorted(ranges) and cached == sorted(cached) and len(cached) > 20


def test_without_source_date_epoch_a_bundle_is_dated_by_its_newest_input(digits_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    first = make_bundle(work, "jetpack6", tmp_path / "1" / "w.tar.gz", golden=40)
    second = make_bundle(work, "jetpack6", tmp_path / "2" / "w.tar.gz", golden=40)
    assert first.path.read_bytes() == second.path.read_bytes()
    records = json.loads((work / "manifest.json").read_text())["files"]
    info = json.loads(tarfile.open(first.path).extractfile("w/bundle.json").read())
    newest = max(records[n]["created"] for n in ("model.onnx", "model.fp16.onnx"))
    assert info["created"] == newest.replace("+00:00", "Z")


# ---- ONNX external data -------------------------------------------------------------------------

def _with_external_data(digits_workdir, tmp_path, location):
    """The digits work dir with model.onnx's weights in a side file at `location` (relative to
    the work dir, or absolute), and the work dir's records re-hashed as a forger would."""
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    before = hashlib.sha256((work / "model.onnx").read_bytes()).hexdigest()
    model = onnx.load(str(work / "model.onnx"))
    onnx.save(model, str(work / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin")
    if location != "weights.bin":
        target = Path(location) if Path(location).is_absolute() else work / location
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(work / "weights.bin", target)
        model = onnx.load(str(work / "model.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, str(work / "model.onnx"))
    after = hashlib.sha256((work / "model.onnx").read_bytes()).hexdigest()
    manifest = work / "manifest.json"
    manifest.write_text(manifest.read_text().replace(before, after))
    return work


def test_a_model_with_external_data_is_bundled_with_it(digits_workdir, tmp_path, run_cli):
    work = _with_external_data(digits_workdir, tmp_path, "weights.bin")
    made = make_bundle(work, "triton", tmp_path / "b.tar.gz", golden=64)
    root = safe_extract(made.path, tmp_path / "x")
    listed = json.loads((root / "manifest.json").read_text())["files"]
    assert "weights.bin" in listed and (root / "weights.bin").stat().st_size > 1_000_000
    repo = next((root / "triton").iterdir())
    assert (repo / "1" / "weights.bin").exists()  # Triton's copy finds its weights beside it
    assert run_cli("verify", made.path, "--allow-unsigned", "--iterations", "2").exit_code == 0


@pytest.mark.parametrize("location,said", [
    ("../outside.bin", "keeps weights in '../outside.bin', outside"),
    ("{abs}", "outside"),
    ("sub/../../outside.bin", "outside"),
])
def test_external_data_outside_the_work_dir_is_refused(location, said, digits_workdir, tmp_path, run_cli):
    location = location.format(abs=tmp_path / "elsewhere" / "secret.bin")
    work = _with_external_data(digits_workdir, tmp_path, location)
    result = run_cli("bundle", work, "--out", tmp_path / "out")
    one_line_error(result, 2, said)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_external_data_through_a_link_that_leaves_is_refused(digits_workdir, tmp_path, run_cli):
    work = _with_external_data(digits_workdir, tmp_path, "weights.bin")
    (tmp_path / "outside.bin").write_bytes((work / "weights.bin").read_bytes())
    (work / "weights.bin").unlink()
    (work / "weights.bin").symlink_to(tmp_path / "outside.bin")
    one_line_error(run_cli("bundle", work), 2, "keeps weights in 'weights.bin', outside")


def test_an_uncalibrated_work_dir_is_bundled_without_int8_and_says_so(digits_workdir, tmp_path, run_cli):
    result = run_cli("bundle", digits_workdir, "--golden", "40", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "bundle for jetpack6: fp32, fp16;" in result.stdout
    assert (f"warning: int8 left out: {digits_workdir} is not calibrated; run `resnet-edge calibrate "
            f"{digits_workdir} --data <calibration images>` first") in result.stderr


def test_a_bundle_opens_its_work_dir_once_and_hashes_each_file_once(calibrated_workdir, tmp_path,
                                                                    monkeypatch):
    """make_bundle opened the work dir four times (itself, export_profile, bundle_files, and
    each vouch through remake_command's callers) and hashed files again for bundle.json: one
    WorkDir is opened and handed down, and its hashes are kept."""
    from resnet_edge import artifacts
    opened, hashed = [], []
    real_init, real_hash = artifacts.WorkDir.__init__, artifacts.sha256_file

    def init(self, path):
        opened.append(Path(path))
        real_init(self, path)

    def hash_file(path):
        hashed.append(Path(path))
        return real_hash(path)
    monkeypatch.setattr(artifacts.WorkDir, "__init__", init)
    monkeypatch.setattr(artifacts, "sha256_file", hash_file)
    made = make_bundle(calibrated_workdir, "jetpack6", tmp_path / "b.tar.gz", golden=40)
    assert opened == [Path(calibrated_workdir)]
    in_workdir = [p.name for p in hashed if p.parent == Path(calibrated_workdir)]
    assert in_workdir and len(in_workdir) == len(set(in_workdir)), in_workdir
    assert "model.int8.onnx" in in_workdir and made.precisions == ["fp32", "fp16", "int8"]


def test_a_golden_set_smaller_than_asked_or_under_64_is_said(calibrated_workdir, tmp_path, run_cli):
    """bundle packed 52 of the default 100 golden images with no word (README: it warns under 64)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()  # real digits: random pixels are near-ties the gate sets aside
    for i, (image, label) in enumerate(zip(digits.images[-52:], digits.target[-52:])):
        (tmp_path / "few" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).convert("RGB").save(
            tmp_path / "few" / str(label) / f"{i}.png")
    result = run_cli("bundle", calibrated_workdir, "--out", tmp_path / "b", "--data", f"imagefolder:{tmp_path / 'few'}")
    assert result.exit_code == 0, result.output
    assert (f"warning: imagefolder:{tmp_path / 'few'} has only 52 images: the bundle holds 52 golden "
            "images, not --golden 100; under 64") in result.stderr
    quiet = run_cli("bundle", calibrated_workdir, "--out", tmp_path / "c", "--golden", "64")
    assert quiet.exit_code == 0 and "warning:" not in quiet.stderr, quiet.stderr
