"""The real onnxruntime-gpu wheels of the oldest and newest release the extras allow (pyproject's
cuda12 and cuda13), each in a venv of its own made once per machine (tests/device_pythons.py),
on this machine without a GPU: sessions through the tool's own make_session with the options
the tool builds, ONNX Runtime's fallback as each release really does it, and the oracle's tables
(tests/oracles/onnxruntime.py) read back from each wheel's binaries and wrapper.

A machine without CUDA reaches the TensorRT provider only as far as loading its library
(RegisterTensorRTPluginsAsCustomOps runs before the options are parsed), so the option parsing
itself is held to the oracle, whose messages and key tables are checked here against the
binary that prints them. About 250 MB per wheel: `make test-releases`, which .ci/run runs.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import device_pythons as floors
from oracles import onnxruntime as oracle
from resnet_edge.runtime import providers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
RUNTIME = Path(providers.__file__).parent
# numpy: the oldest each release was built for that has a wheel for this Python
RELEASES = {"1.19.0": "numpy==1.26.4", "1.31.1": "numpy==2.2.6"}

SCRIPT = r"""
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
import onnxruntime, ort
model, asked = sys.argv[2], json.loads(sys.argv[3])
asked = [tuple(p) for p in asked]
out = {"version": onnxruntime.__version__}
try:
    session = ort.make_session(model, asked)
    out["tool"] = ["opened", session.get_providers()]
except ort.ProviderFellBack as exc:
    out["tool"] = ["refused", str(exc)]
print("TOOL DONE", flush=True)
try:  # what the release itself does with enable_fallback=0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = onnxruntime.InferenceSession(model, providers=asked, enable_fallback=0)
    out["raw"] = ["opened", raw.get_providers()]
except Exception as exc:
    out["raw"] = ["raised", type(exc).__name__]
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module", params=sorted(RELEASES))
def release(request):
    version = request.param
    floor = floors.Floor(f"onnxruntime-gpu-{version}", "3.11",
                         (f"onnxruntime-gpu=={version}", RELEASES[version]))
    python = floors.venv(floor)
    package = next(python.parent.parent.glob("lib/python3.11/site-packages/onnxruntime"))
    return version, python, package


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """ort.py flat in a folder, as a bundle's lib/ carries it (it imports nothing of the tool)."""
    folder = tmp_path_factory.mktemp("lib")
    shutil.copy(RUNTIME / "ort.py", folder / "ort.py")
    model = folder / "probe.onnx"
    model.write_bytes(providers._probe_model())
    return folder, model


def run(release, lib, asked):
    _, python, _ = release
    folder, model = lib
    done = subprocess.run([str(python), "-c", SCRIPT, str(folder), str(model), json.dumps(asked)],
                          capture_output=True, text=True, env=floors.device_env(python), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    by_tool = done.stdout.partition("TOOL DONE")[0]
    return json.loads(done.stdout.rpartition("RESULT ")[2]), by_tool, done.stderr


def test_a_tensorrt_row_that_cannot_load_is_refused_never_run_on_the_cpu(release, lib, tmp_path):
    """Item 2: the session the tool asks for comes up as asked or not at all, on both sides of
    1.23 (where onnxruntime began to read enable_fallback)."""
    version = release[0]
    asked = providers.session_providers("tensorrt", "fp16", cache_dir=tmp_path / "ort-tensorrt",
                                        profile={"min": 1, "opt": 8, "max": 32}, input_shape=(4,))
    asked = [(name, options) for name, options in asked]
    result, printed_by_tool, _ = run(release, lib, asked)
    status, reason = result["tool"]
    assert status == "refused" and "Please install TensorRT libraries" in reason, result
    assert "\n" not in reason and "EP Error" not in printed_by_tool
    # what the release does by itself: before 1.23 the keyword is ignored and the row would
    # have run on the CPU under its TensorRT label
    fell_back = oracle.release_tuple(version) < oracle.FALLBACK_READ_SINCE
    assert result["raw"] == (["opened", ["CPUExecutionProvider"]] if fell_back
                             else ["raised", "RuntimeError"]), result
    assert any(f.kind == "degrade" for f in oracle.check(version, [(oracle.TRT, {"x": "1"})])) is fell_back


def test_a_cuda_provider_that_cannot_load_is_refused(release, lib):
    """On every release a CUDA provider whose libraries are missing is only a warning, and the
    session comes up on the CPU."""
    asked = [(n, o) for n, o in providers.session_providers("cuda", "fp32")]
    result, _, _ = run(release, lib, asked)
    assert result["raw"] == ["opened", ["CPUExecutionProvider"]], result
    assert result["tool"][0] == "refused" and "CUDA did not load" in result["tool"][1], result


def _strings(path: Path) -> set[str]:
    return set(re.findall(rb"[\x20-\x7e]{3,}", path.read_bytes()))


def test_the_oracles_tables_are_the_wheels_own(release):
    version, _, package = release
    capi = package / "capi"
    binding = b"\n".join(_strings(next(capi.glob("onnxruntime_pybind11_state*.so")))).decode()
    said = dict(re.findall(r"The value for the key '(\w+)' should be (.{0,30})", binding))
    kinds = {key: "bool" if text.startswith("'True' or 'False'") else
             "int" if "number" in text else "string" for key, text in said.items()}
    assert kinds == oracle.keys(oracle.TRT, version)
    assert "Invalid TensorRT EP option: " in binding
    assert "fallback to CPU EP has been explicitly disabled" in binding
    cuda = {s.decode() for s in _strings(capi / "libonnxruntime_providers_cuda.so")}
    assert set(oracle.keys(oracle.CUDA, version)) <= cuda
    assert b"Failed to create directory " in b"\n".join(_strings(capi / "libonnxruntime_providers_tensorrt.so"))
    wrapper = (capi / "onnxruntime_inference_collection.py").read_text()
    reads = 'enable_fallback=int(kwargs.get("enable_fallback", 1)) == 1' in wrapper
    assert reads is (oracle.release_tuple(version) >= oracle.FALLBACK_READ_SINCE)


def _extras() -> dict:
    import tomllib
    project = tomllib.loads((RUNTIME.parents[1] / "pyproject.toml").read_text())["project"]
    return project


def test_each_release_loads_the_cuda_and_tensorrt_its_set_installs(release):
    """The set that admits this release (pyproject's cuda12 or cuda13) installs the CUDA major
    and the TensorRT major its providers link against."""
    from packaging.requirements import Requirement
    version, _, package = release
    sets = {name: {r.name: r for r in map(Requirement, reqs)}
            for name, reqs in _extras()["optional-dependencies"].items() if name.startswith("cuda")}
    (name, wanted), = [(n, w) for n, w in sets.items() if w["onnxruntime-gpu"].specifier.contains(version)]
    major = name.removeprefix("cuda")
    capi = package / "capi"
    for provider in ("cuda", "tensorrt"):
        linked = (capi / f"libonnxruntime_providers_{provider}.so").read_bytes()
        assert f"libcudart.so.{major}".encode() in linked, (provider, version)
    assert b"libnvinfer.so.10" in (capi / "libonnxruntime_providers_tensorrt.so").read_bytes()
    tensorrt = wanted[f"tensorrt-cu{major}"].specifier
    assert tensorrt.contains("10.16.1.11") and not tensorrt.contains("11.0.0.114")


@pytest.mark.parametrize("major", ["12", "13"])
def test_pip_resolves_each_set_to_one_cuda_major(major, tmp_path):
    """pip's own resolver, for x86_64 Linux and this Python, on the project's dependencies with
    one set (TensorRT left out: its wheels come from NVIDIA's index, which this machine cannot
    reach; its major is held above): every CUDA library is of that major."""
    import sys
    project = _extras()
    wanted = [*project["dependencies"], *(r for r in project["optional-dependencies"][f"cuda{major}"]
                                          if not r.startswith("tensorrt"))]
    target = tmp_path / "empty"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    report = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"),
                          "install", "-q", "--disable-pip-version-check", "--dry-run", "--only-binary=:all:",
                          "--report", str(report), *wanted], capture_output=True, text=True)
    if run.returncode and any(s in run.stderr for s in ("NewConnectionError", "Network is unreachable",
                                                         "Temporary failure in name resolution")):
        pytest.skip("needs the package index to resolve against")
    assert run.returncode == 0, run.stderr[-2000:]
    pulled = {i["metadata"]["name"].lower(): i["metadata"] for i in json.loads(report.read_text())["install"]}
    other = "13" if major == "12" else "12"
    cuda_libraries = [n for n in pulled if n.startswith(("nvidia-cu", "nvidia-cudnn", "cuda-"))]
    assert cuda_libraries and not [n for n in pulled if n.endswith(f"-cu{other}")], sorted(pulled)
    assert pulled["cuda-bindings"]["version"].startswith(f"{major}."), pulled["cuda-bindings"]["version"]
    for name in ("torch", "onnxruntime-gpu"):
        needs = " ".join(pulled[name].get("requires_dist", []))
        # the CUDA runtime each asks for: nvidia-cuda-runtime[-cuN] ~= N, or cuda-toolkit[cudart] == N
        runtime = rf"nvidia-cuda-runtime(-cu{major})?\s*[~=]=\s*{major}\.|cuda-toolkit\[[^\]]*cudart[^\]]*\]\s*==\s*{major}\."
        assert re.search(runtime, needs), (name, needs)


PRELOAD_SCRIPT = r"""
import ctypes, sys, types
sys.path.insert(0, sys.argv[1])
for stub in sys.argv[3:]:  # CUDA's libraries, as torch's CUDA initialisation loads them
    ctypes.CDLL(stub)
from resnet_edge.runtime import providers
print(providers._library_problem(types.SimpleNamespace(__file__=sys.argv[2]), "tensorrt"))
"""


def _stub(folder: Path, soname: str) -> Path:
    """An empty shared library that answers to `soname` (gcc -shared -Wl,-soname)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "empty.c"
    source.write_text("int resnet_edge_stub;\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / soname), f"-Wl,-soname,{soname}",
                    str(source)], check=True)
    return folder / soname


def test_tensorrt_from_pip_is_found_before_the_provider_loads(release, tmp_path):
    """Item 4: pip puts TensorRT's libraries in site-packages/tensorrt_libs, off the loader's
    path; the probe loads them first (as importing tensorrt does), and says which TensorRT a
    provider needs where pip brought another. The provider library is the wheel's own; the
    libraries it links are empty ones answering to their sonames."""
    version, _, package = release
    if not (shutil.which("gcc") and shutil.which("readelf")):
        pytest.skip("needs gcc and readelf (binutils) to make libraries by soname")
    provider = package / "capi" / "libonnxruntime_providers_tensorrt.so"
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                        subprocess.run(["readelf", "-d", str(provider)], capture_output=True,
                                       text=True, check=True).stdout)
    tensorrt = [n for n in needed if n.startswith(("libnvinfer", "libnvonnxparser"))]
    cuda = [str(_stub(tmp_path / "cuda", n)) for n in needed
            if n.startswith(("libcu", "libcudnn"))]
    assert "libnvinfer.so.10" in tensorrt and cuda

    def probe(holds: list[str]) -> str:
        site = tmp_path / ("site-" + "-".join(holds or ["none"]))
        if holds:
            libs = site / "tensorrt_libs"
            libs.mkdir(parents=True)
            # NVIDIA's tensorrt_libs/__init__.py loads every library it holds
            (libs / "__init__.py").write_text(
                "import ctypes, glob, os\nfor lib in glob.glob(os.path.join(os.path.dirname(__file__), '*.so*')):\n"
                "    ctypes.CDLL(lib)\n")
            for soname in holds:
                _stub(libs, soname)
        site.mkdir(exist_ok=True)
        done = subprocess.run([sys.executable, "-c", PRELOAD_SCRIPT, str(site), str(package / "__init__.py"),
                               *cuda], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert probe([]) == "libnvinfer.so.10 not found"
    eleven = probe([n.replace(".so.10", ".so.11") for n in tensorrt])
    assert eleven.startswith("libnvinfer.so.10 not found (pip's TensorRT holds libnvinfer.so.11")
    assert eleven.endswith("provider needs TensorRT 10)")
    # TensorRT 10 from pip: nothing is missing any more (what remains, the empty libraries'
    # symbols, is the session probe's to say)
    assert probe(tensorrt) == "None"
