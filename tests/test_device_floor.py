"""The code a bundle carries runs on the device's own software: JetPack 5's Python 3.8, numpy 1.17.4
and cryptography 2.8, JetPack 6's Python 3.10, numpy 1.21.5 and cryptography 3.4.8, with
bytecode on. First a static check of every file a bundle carries (and of the TensorRT stand-in,
which runs beside it in these tests); then verify.py and build_engine.sh run in place as the
bundle README says, under those Pythons (tests/device_pythons.py), through the TensorRT stand-in
for 8.5, 8.6 and 10.3 and through the oldest ONNX Runtime the Jetson wheels cover."""

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import device_pythons as floors
from resnet_edge.deploy import LIB, make_bundle, safe_extract
from resnet_edge.deploy import HERE as DEPLOY
from resnet_edge.runtime.trt_rules import family
from trt_standin import write_site

TESTS = Path(__file__).resolve().parent
DEVICE_CODE = sorted({*LIB.values(), DEPLOY / "verify_bundle.py", TESTS / "trt_standin.py",
                      DEPLOY / "ansible" / "roles" / "resnet_edge" / "files" / "release.py"})
FLOOR = (3, 8)

# methods and functions the standard library gained after 3.8, which no checker can tie to a
# receiver whose type it does not know (vermin misses `s.removesuffix(...)` on an untyped `s`)
NEWER_NAMES = {"removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9",
               "with_stem": "3.9", "waitstatus_to_exitcode": "3.9", "randbytes": "3.9",
               "bit_count": "3.10", "pairwise": "3.10", "file_digest": "3.11"}
BUILTIN_TYPES = {"int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set", "type"}


def _is_dict(node) -> bool:
    return (isinstance(node, (ast.Dict, ast.DictComp))
            or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("dict", "vars")))


def _is_type(node) -> bool:
    return ((isinstance(node, ast.Name) and node.id in BUILTIN_TYPES)
            or (isinstance(node, ast.Constant) and node.value is None))


def newer_than_floor(source: str) -> list[str]:
    """'line: what' for each use of something Python 3.8 lacks that vermin cannot see: the
    methods above, `|` on dicts (3.9) and `X | Y` on types outside annotations (3.10).
    Annotations count only where the module evaluates them (no `from __future__ import
    annotations`)."""
    tree = ast.parse(source)
    lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
               and any(a.name == "annotations" for a in n.names) for n in tree.body)
    skipped = set()
    if lazy:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs,
                            node.args.vararg, node.args.kwarg]:
                    if arg is not None and arg.annotation is not None:
                        skipped.update(map(id, ast.walk(arg.annotation)))
                if node.returns is not None:
                    skipped.update(map(id, ast.walk(node.returns)))
            elif isinstance(node, ast.AnnAssign):
                skipped.update(map(id, ast.walk(node.annotation)))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Attribute) and node.attr in NEWER_NAMES:
            found.append(f"{node.lineno}: .{node.attr} (Python {NEWER_NAMES[node.attr]})")
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.BitOr):
            left, right = ((node.left, node.right) if isinstance(node, ast.BinOp)
                           else (node.target, node.value))
            if _is_dict(left) or _is_dict(right):
                found.append(f"{node.lineno}: dict | dict (Python 3.9)")
            elif _is_type(left) and _is_type(right):
                found.append(f"{node.lineno}: X | Y on types (Python 3.10)")
    return found


def test_the_floor_check_catches_what_reached_devices():
    """Both constructs that crashed JetPack 5 (verify_bundle.py's removesuffix, the stand-in's
    dict union), and the other shapes, are found; annotations under the future import are not."""
    assert newer_than_floor("x = name.removesuffix('.tar.gz')\n") == ["1: .removesuffix (Python 3.9)"]
    assert newer_than_floor("m = dict(enumerate(a)) | {k: v for k, v in b}\n") == [
        "1: dict | dict (Python 3.9)"]
    assert newer_than_floor("d |= {'a': 1}\nok = isinstance(v, int | None)\n") == [
        "1: dict | dict (Python 3.9)", "2: X | Y on types (Python 3.10)"]
    assert newer_than_floor("flags = 1 | 2\n") == []
    lazy = "from __future__ import annotations\ndef f(a: int | None) -> dict[str, int] | None:\n    pass\n"
    assert newer_than_floor(lazy) == []
    assert newer_than_floor(lazy.split("\n", 1)[1]) == ["1: X | Y on types (Python 3.10)"]


def test_bundle_code_uses_nothing_newer_than_python_3_8():
    found = {path.name: newer_than_floor(path.read_text()) for path in DEVICE_CODE}
    assert not {name: lines for name, lines in found.items() if lines}
    # vermin for what it knows (modules, keywords, syntax): tomllib is imported by gates.py
    # only on 3.11 and later (tomli before)
    vermin = Path(sys.executable).parent / "vermin"  # the dev extra's; it has no python -m
    run = subprocess.run([str(vermin), "-t=3.8-", "--violations", "--no-tips",
                          "--exclude", "tomllib", *map(str, DEVICE_CODE)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_bundle_code_compiles_under_the_oldest_python_it_targets(tmp_path):
    python = floors.find_python("3.8")
    if python is None:
        pytest.skip("needs Python 3.8 (pyenv install 3.8) to compile the bundle's code with it")
    probe = ("import sys\nfor path in sys.argv[1:]:\n"
             "    compile(open(path).read(), path, 'exec', dont_inherit=True)\n")
    run = subprocess.run([python, "-B", "-c", probe, *map(str, DEVICE_CODE)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


# ---- bundles run in place, as a device runs them ------------------------------------------------

def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from resnet_edge.deploy import signing
    folder = tmp_path_factory.mktemp("keys")
    return signing.keygen(folder / "ci")[:2]


@pytest.fixture(scope="module")
def jetpack5_workdir(trained_digits, tmp_path_factory):
    """The digits model as a JetPack 5 user exports it (torchscript, opset 17), calibrated."""
    from resnet_edge.calibration import calibrate
    from resnet_edge.export import ExportOptions, export_model
    from resnet_edge.zoo import load_model
    model, card = load_model(str(trained_digits.model_path))
    out = tmp_path_factory.mktemp("jp5") / "r20"
    export_model(model, card, out, ExportOptions(exporter="torchscript"))
    calibrate(out, "digits:train", samples=64, method="minmax", holdout=50)
    return out


@pytest.fixture(scope="module")
def bundles(jetpack5_workdir, calibrated_workdir, keys, tmp_path_factory):
    """Signed JetPack 5 and 6 bundles of the digits model (archives); for JetPack 6.0, a jetpack6
    bundle of the opset-17 export."""
    folder = tmp_path_factory.mktemp("bundles")
    return {"jetpack5": make_bundle(jetpack5_workdir, "jetpack5", folder / "r20-jetpack5.tar.gz",
                                    golden=40, sign=keys[0]).path,
            "jetpack6-opset17": make_bundle(jetpack5_workdir, "jetpack6", folder / "r20-jp60.tar.gz",
                                            golden=40, sign=keys[0]).path,
            "jetpack6": make_bundle(calibrated_workdir, "jetpack6", folder / "r20-jetpack6.tar.gz",
                                    golden=40, sign=keys[0]).path}


def on_device(archive: Path, where: Path) -> Path:
    """The bundle extracted as the README says, with build_engine.sh's exec bit lost on the way
    (a FAT stick), so the README's `./build_engine.sh` becomes `sh build_engine.sh`."""
    root = safe_extract(archive, where)
    (root / "build_engine.sh").chmod(0o644)
    return root


def run(command, root, env):
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_build_then_verify_in_place_writes_nothing_into_the_bundle(bundles, keys, tmp_path):
    """The README's order, twice, with bytecode on: before, lib/__pycache__ appeared and the
    manifest check refused it (exit 2) on every device. This Python, any machine."""
    root = on_device(bundles["jetpack6"], tmp_path)
    before = tree(root)
    env = floors.device_env(Path(sys.executable), write_site(tmp_path / "site", "10.3.0"))
    assert "PYTHONDONTWRITEBYTECODE" not in env
    for attempt in (1, 2):
        built = run(["bash", "build_engine.sh", "fp16"], root, env)
        assert built.returncode == 0, built.stderr
        checked = run([sys.executable, "verify.py", "--key", str(keys[1]), "--precisions", "fp16",
                       "--iterations", "2"], root, env)
        # the stand-in engine computes no ResNet, so its gates fail (1); never 2, never a traceback
        assert checked.returncode == 1 and "trt fp16 (TensorRT 10.3.0" in checked.stdout, checked.stderr
        assert "Traceback" not in checked.stderr and tree(root) == before, attempt


def test_sh_build_engine_sh_goes_on_in_bash(bundles, tmp_path):
    """dash (Ubuntu's sh) has no pipefail: the script re-runs itself in bash."""
    if shutil.which("dash") is None:
        pytest.skip("needs dash, the sh that Ubuntu (and so JetPack) has")
    root = on_device(bundles["jetpack6"], tmp_path)
    env = floors.device_env(Path(sys.executable), write_site(tmp_path / "site", "10.3.0"))
    built = run(["dash", "build_engine.sh", "fp16"], root, env)
    assert built.returncode == 0 and "built " in built.stderr + built.stdout, built.stderr


# ---- on each JetPack's Python and library floors -----------------------------------------------

# (floor, TensorRT, cuda-python, bundle), as README's table pairs them: JetPack 5.1; JetPack 6.0,
# whose TensorRT 8.6 parses opset <= 17, with a jetpack6 bundle from a torchscript export; 6.1+
JETSONS = {
    "jetpack5-trt8.5": (floors.JETPACK5, "8.5.3", "11.8.0", "jetpack5"),
    "jetpack6.0-trt8.6": (floors.JETPACK6, "8.6.1", "12.6.1", "jetpack6-opset17"),
    "jetpack6-trt10.3": (floors.JETPACK6, "10.3.0", "12.6.1", "jetpack6"),
}


@pytest.mark.parametrize("jetson", list(JETSONS))
def test_the_bundle_readme_runs_on_the_device_python(jetson, bundles, keys, tmp_path):
    """build_engine.sh for every precision, then verify.py with the key, in place and twice; and
    the README's trusted-verifier line (--bundle X.tar.gz) on the archive: on the device's
    Python, numpy and cryptography, through that TensorRT's stand-in."""
    floor, version, cuda_python, target = JETSONS[jetson]
    python = floors.venv(floor)
    root = on_device(bundles[target], tmp_path / "device")
    info = json.loads((root / "bundle.json").read_text())
    before = tree(root)
    env = floors.device_env(python, write_site(tmp_path / "site", version, cuda_python=cuda_python))
    for precision in info["precisions"]:
        built = run(["sh", "build_engine.sh", precision], root, env)
        assert built.returncode == 0, built.stderr
        # a JetPack 5 bundle on JetPack 6.0's TensorRT 8.6: said once a build, not twice
        said = 1 if family(version) != family(info["tensorrt"]) else 0
        assert built.stderr.count(f"this device has {version}") == said, built.stderr
    for attempt in (1, 2):
        checked = run(["python3", "verify.py", "--key", str(keys[1]), "--iterations", "2"], root, env)
        assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
        assert checked.stdout.count(f"(TensorRT {version}, ") == len(info["precisions"]), checked.stdout
        assert "signature: valid" in checked.stdout and tree(root) == before, attempt
    device = json.loads((root.parent / f"{root.name}.device" / "verify.json").read_text())
    assert device["device"]["python"].startswith(floor.python + ".")
    trusted = tmp_path / "trusted"
    shutil.copytree(root, trusted)
    checked = run(["python3", str(trusted / "verify.py"), "--bundle", str(bundles[target]), "--key",
                   str(keys[1]), "--iterations", "2"], tmp_path, env)
    assert checked.returncode == 1 and "signature: valid" in checked.stdout, checked.stderr


def test_a_bad_key_is_told_from_the_library_on_cryptography_2_8(bundles, tmp_path):
    python = floors.venv(floors.JETPACK5)
    root = on_device(bundles["jetpack5"], tmp_path / "device")
    (tmp_path / "bad.pub").write_text("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
    env = floors.device_env(python)
    checked = run(["python3", "verify.py", "--key", str(tmp_path / "bad.pub")], root, env)
    assert checked.returncode == 2 and "is not a PEM public key" in checked.stderr, checked.stderr


def test_the_readme_dla_line_builds_an_engine_verify_uses(bundles, keys, tmp_path):
    """A DLA engine has one batch size (the bundle's opt batch): verify runs it at that batch,
    where it asked for the bundle's max and told the user to rebuild with a larger one."""
    python = floors.venv(floors.JETPACK5)
    root = on_device(bundles["jetpack5"], tmp_path / "device")
    info = json.loads((root / "bundle.json").read_text())
    assert "./build_engine.sh int8 --dla-core 0 --gpu-fallback" in (root / "README.md").read_text()
    assert f"this bundle's opt batch ({info['opt_batch']})" in (root / "README.md").read_text()
    env = floors.device_env(python, write_site(tmp_path / "site", "8.5.3", cuda_python="11.8.0"))
    built = run(["sh", "build_engine.sh", "int8", "--dla-core", "0", "--gpu-fallback"], root, env)
    assert built.returncode == 0, built.stderr
    checked = run(["python3", "verify.py", "--key", str(keys[1]), "--precisions", "int8",
                   "--iterations", "2", "--dla-core", "0"], root, env)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr, checked.stderr
    assert f"(batch {info['opt_batch']}): FAIL" in checked.stdout, checked.stdout
    # the DLA engine is its own file: the GPU's int8 engine is neither it nor written over
    gpu = run(["python3", "verify.py", "--key", str(keys[1]), "--precisions", "int8", "--no-build"],
              root, env)
    assert gpu.returncode == 3 and "(model.int8.engine); run ./build_engine.sh int8" in gpu.stderr, gpu.stderr


@pytest.mark.parametrize("floor,target,needs,code,said", [
    (floors.JETPACK5_ORT, "jetpack5", "1.12 or newer (these files are ONNX IR 8, opset 17)", 0,
     "PASS (ONNX Runtime only: no engine tested)"),
    (floors.JETPACK6_ORT, "jetpack6", "1.18 or newer (these files are ONNX IR 10, opset 20)", 3,
     "error: model.onnx is ONNX IR 10, opset 20, and onnxruntime 1.16.3 reads IR <= 9, opset <= 19; "
     "install onnxruntime 1.18 or newer (pip install 'onnxruntime>=1.18')"),
], ids=["jetpack5", "jetpack6"])
def test_the_onnx_runtime_fallback_on_the_oldest_jetson_release(floor, target, needs, code, said,
                                                                bundles, keys, tmp_path):
    """Off TensorRT, verify.py runs the ONNX files on ONNX Runtime 1.16: a JetPack 5 bundle passes
    on Python 3.8; a JetPack 6 bundle (IR 10), which 1.16 cannot read, is one line naming the
    release that can, before any session is made (it was ONNX Runtime's traceback, exit 1). The
    bundle README states the release its files need."""
    python = floors.venv(floor)
    root = on_device(bundles[target], tmp_path / "device")
    assert f"onnxruntime {needs}" in " ".join((root / "README.md").read_text().split())
    before = tree(root)
    for attempt in (1, 2):
        checked = run(["python3", "verify.py", "--key", str(keys[1]), "--iterations", "2"], root,
                      floors.device_env(python))
        lines = [line for line in checked.stderr.splitlines() if not line.startswith("[")]
        assert checked.returncode == code, checked.stderr
        assert (said in checked.stdout) if code == 0 else (lines == [said]), checked.stderr
        assert tree(root) == before, attempt


# ---- installing the tool itself on a Jetson -----------------------------------------------------

RESOLVER = floors.Floor("resolver", "3.10", ("pip>=24.1",))  # pip that takes --dry-run with --platform
# JetPack 6 is Ubuntu 22.04 (glibc 2.35) on aarch64: the wheels pip may take there
JETSON_PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(17, 36)] + ["manylinux2014_aarch64"]
NVIDIA_TORCH = {"torch": "2.5.0a0+872d972e41.nv24.8", "numpy": "1.21.5"}  # JetPack 6.1's wheel


def jetson_python(folder: Path, installed: dict) -> Path:
    """A Python 3.10 environment in which `installed` ({name: version}) are installed
    distributions, as NVIDIA's wheels and apt's numpy are on JetPack 6."""
    python = floors.find_python("3.10")
    if python is None:
        pytest.skip("needs Python 3.10 (pyenv install 3.10), JetPack 6's")
    subprocess.run([python, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python3.10/site-packages"))
    for name, version in installed.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return folder / "bin" / "python"


def requirement_set(extras: list[str]) -> list[str]:
    import tomllib
    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]


def resolve(python: Path, tmp_path: Path, constraints: Path | None = None) -> dict:
    """{name: version} that pip would install into `python`'s environment for README's Jetson
    install (the cpu and dev extras) from aarch64 wheels, by pip's own resolver."""
    pip = floors.venv(RESOLVER)
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    platforms = [arg for p in JETSON_PLATFORMS for arg in ("--platform", p)]
    run = subprocess.run([str(pip), "-m", "pip", "--python", str(python), "install", "-q",
                          "--dry-run", "--report", str(report), "--only-binary=:all:", *platforms,
                          *(["-c", str(constraints)] if constraints else []),
                          *requirement_set(["cpu", "dev"])], capture_output=True, text=True)
    if run.returncode and any(s in run.stderr for s in ("NewConnectionError", "Network is unreachable",
                                                         "Temporary failure in name resolution")):
        pytest.skip("needs the package index to resolve against")
    assert run.returncode == 0, run.stderr
    return {i["metadata"]["name"].lower(): i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]}


def keep(python: Path):
    return subprocess.run([str(python), str(TESTS.parent / "tools" / "jetson_constraints.py")],
                          capture_output=True, text=True)


def test_make_venv_on_a_jetson_keeps_jetpack_torch(tmp_path):
    said = subprocess.run(["make", "-n", "-B", "venv", "IS_JETSON=yes", f"VENV={tmp_path}/v"],
                          cwd=TESTS.parent, capture_output=True, text=True).stdout
    assert f"tools/jetson_constraints.py > {tmp_path}/v/jetson-constraints.txt" in said
    assert f"-c {tmp_path}/v/jetson-constraints.txt -e \".[cpu,dev]\"" in said
    assert "--system-site-packages" in said


def test_without_nvidias_torchvision_make_venv_stops_in_one_line(tmp_path):
    refused = keep(jetson_python(tmp_path / "jp6", NVIDIA_TORCH))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "install the torchvision built for torch" in refused.stderr


@pytest.mark.slow
def test_without_nvidias_torchvision_pip_would_replace_jetpack_torch(tmp_path):
    """What happened to README's install on a Jetson: PyPI's torchvision pins PyPI's torch, which
    brings CUDA 13's libraries (and NumPy 2). About 20 s of resolving: make test-all."""
    pulled = resolve(jetson_python(tmp_path / "jp6", NVIDIA_TORCH), tmp_path)
    assert pulled["torch"] != NVIDIA_TORCH["torch"] and "nvidia-cudnn-cu13" in pulled, sorted(pulled)
    assert pulled["numpy"].startswith("2."), pulled["numpy"]


def test_with_nvidias_torch_and_torchvision_pip_keeps_them(tmp_path):
    python = jetson_python(tmp_path / "jp6", {**NVIDIA_TORCH, "torchvision": "0.20.0a0+afc54f7"})
    made = keep(python)
    assert made.returncode == 0, made.stderr
    constraints = tmp_path / "jetson-constraints.txt"
    constraints.write_text(made.stdout)
    pulled = resolve(python, tmp_path, constraints)
    assert not {"torch", "torchvision"} & set(pulled), sorted(pulled)
    assert not [name for name in pulled if name.startswith("nvidia-") or name.endswith("cu13")]
    assert pulled.get("numpy", "1").startswith("1."), pulled.get("numpy")
