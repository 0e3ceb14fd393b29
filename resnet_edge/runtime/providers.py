"""ONNX Runtime's execution providers as a parity tool needs them: which can really load here,
and the options that make each row compute what its label says.

`get_available_providers()` lists what the package was built with, not what can load: every
onnxruntime-gpu wheel lists TensorRT, whether or not libnvinfer is on the machine, and asking
for it anyway makes ONNX Runtime's Python wrapper print a red "EP Error ... Falling back" block
and quietly retry on other providers. So each provider is probed once per process with a
one-node session, fallback off and ONNX Runtime's log quiet; a provider that cannot load gives
a reason, and every session this tool opens has fallback off, so none ever runs elsewhere.

The options (each row records them): CUDA computes fp32 convolutions and matrix products in
TF32 unless `use_tf32=0` (its default is 1); TensorRT's provider has no switch for TF32, which
TensorRT turns on for fp32 on compute capability 8.0 and newer, so there its fp32 model is the
tf32 row; fp16 and int8 are TensorRT builder switches there, per row.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from .gpu import TF32_CAPABILITY, tf32_problem
from .ort import import_ort, make_session

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "cpu": "CPUExecutionProvider"}
TITLES = {"tensorrt": "TensorRT", "cuda": "CUDA", "cpu": "CPU"}
# cuDNN's convolution search: the heuristic pick is repeatable run to run (parity), the
# exhaustive one is the fastest (bench, after a warm-up per batch size)
CONV_SEARCH = {"parity": "HEURISTIC", "bench": "EXHAUSTIVE"}
# The CUDA provider has no integer convolution: an int8 model runs DequantizeLinear, a float
# Conv, QuantizeLinear, so its accuracy emulates int8 and its latency is not int8's
CUDA_INT8 = "Q/DQ as written, float kernels"
_MISSING_LIBRARY = re.compile(r"(lib[\w.+-]+?\.so[\d.]*): cannot open shared object file")


def short_name(provider: str) -> str:
    """'cuda' for CUDAExecutionProvider, and so on."""
    return next((k for k, v in PROVIDERS.items() if v == provider), provider)


def cannot_load(error: BaseException | str) -> str:
    """An ONNX Runtime load error in a few words: the library the loader could not find, where
    that is the cause (the common one: TensorRT or cuDNN not installed), else its first line."""
    text = str(error)
    missing = _MISSING_LIBRARY.search(text)
    if missing:
        return f"{missing.group(1)} not found"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def _probe_model() -> bytes:
    """The smallest model every provider takes: Relu on a float vector of 4."""
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    # IR 8 (opset 17's): readable by every onnxruntime this tool takes, whatever onnx writes
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


@functools.cache
def unavailable(provider: str) -> str | None:
    """Why ONNX Runtime's `provider` ('tensorrt', 'cuda', 'cpu') cannot run here, or None when
    it can: asked once per process, quietly."""
    if provider == "cpu":
        return None
    ort = import_ort()
    name = PROVIDERS[provider]
    title = TITLES[provider]
    if name not in ort.get_available_providers():
        return (f"this onnxruntime {ort.__version__} has no {title} provider (install "
                "onnxruntime-gpu instead of onnxruntime)")
    _preload_cuda()
    missing = _library_problem(ort, provider)
    if missing:
        return f"ort on {title}: {missing}"
    ort.set_default_logger_severity(4)  # the loader's own error line: said here in our words
    try:
        session = make_session(_probe_model(), [(name, {})])
    except Exception as exc:  # noqa: BLE001 (ONNX Runtime raises its own types, or RuntimeError)
        return f"ort on {title}: {cannot_load(exc)}"
    finally:
        # ONNX Runtime's process-wide log stays quiet but for --verbose: cuDNN's frontend logs an
        # "Error: No execution plans support the graph" line for every fused plan it tries and
        # drops, in red, though the session runs; a real failure is an exception, said by us
        from .. import quiet
        ort.set_default_logger_severity(2 if quiet.Settings.verbose else 4)
    if session.get_providers()[0] != name:
        return f"ort on {title}: the session came up on {session.get_providers()[0]} instead"
    return None


def _library_problem(ort, provider: str) -> str | None:
    """The provider's own shared library loaded as ONNX Runtime would load it, after TensorRT's
    pip libraries where that is the provider: the dynamic loader names the first library
    missing (libnvinfer.so.10, libcudnn.so.9), where ONNX Runtime's Python error says only
    "Please install TensorRT libraries"."""
    import ctypes
    library = Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{provider}.so"
    if not library.is_file():  # another platform's naming: the session probe says it
        return None
    installed = _preload_tensorrt() if provider == "tensorrt" else []
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:  # a missing library only: anything else is the session probe's to say
        if not _MISSING_LIBRARY.search(str(exc)):
            return None
        missing = cannot_load(exc)
        others = [name for name in installed if name.startswith("libnvinfer.so.")]
        if missing.startswith("libnvinfer.so.") and others:
            wanted = missing.split(".so.")[1].split()[0]
            missing += (f" (pip's TensorRT holds {', '.join(others)}; this onnxruntime's TensorRT "
                        f"provider needs TensorRT {wanted})")
        return missing
    return None


def _preload_tensorrt() -> list[str]:
    """TensorRT's own libraries, where pip installed them (the tensorrt-cuNN-libs wheel's
    site-packages/tensorrt_libs, off the loader's path), loaded into the process as importing
    `tensorrt` does (NVIDIA's python/packaging/bindings_wheel/tensorrt/__init__.py imports
    tensorrt_libs, whose __init__ loads each library it holds), so that ONNX Runtime's TensorRT
    provider finds libnvinfer by its soname. The names of the libraries it holds."""
    try:
        import tensorrt_libs
    except ImportError:  # none from pip: JetPack's or the system's, on the loader's path
        return []
    return sorted(path.name for path in Path(tensorrt_libs.__file__).parent.glob("lib*.so*"))


def _preload_cuda() -> None:
    """The CUDA libraries torch brought, loaded into the process before a provider looks for
    them (what `onnxruntime.preload_dlls` does, where that exists)."""
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.init()
    except ImportError:
        pass


def math_problem(provider: str, precision: str, capability: tuple[int, int] | None) -> str | None:
    """Why `precision` cannot be what runs on `provider` on a GPU of `capability` (None: no
    GPU), or None where it can."""
    if precision == "tf32":
        return tf32_problem("cpu" if provider == "cpu" else "cuda", capability)
    if provider == "tensorrt" and precision == "fp32" and capability and capability >= TF32_CAPABILITY:
        return ("ONNX Runtime's TensorRT provider has no switch to turn TF32 off, which TensorRT "
                "uses for fp32 on this GPU: its fp32 model runs as the tf32 row")
    return None


def session_providers(provider: str, precision: str, *, purpose: str = "parity",
                      cache_dir: str | Path | None = None,
                      profile: dict | None = None, input_name: str = "input",
                      input_shape: tuple[int, ...] = (), cuda_graph: bool = False) -> list[tuple[str, dict]]:
    """The providers list, with options, for one row: what InferenceSession takes and what the
    report records. `profile` is the export's batch profile {min, opt, max}; `cache_dir` where
    TensorRT's provider keeps its engines and timing cache (under the work directory)."""
    if provider == "cpu":
        return [(PROVIDERS["cpu"], {})]
    cuda = {"device_id": "0", "use_tf32": "1" if precision == "tf32" else "0",
            "cudnn_conv_algo_search": CONV_SEARCH[purpose]}
    if provider == "cuda":
        return [(PROVIDERS["cuda"], {**cuda, **({"enable_cuda_graph": "1"} if cuda_graph else {})})]
    options = {"device_id": "0",
               "trt_fp16_enable": _trt_bool(precision in ("fp16", "int8-fp16")),
               "trt_int8_enable": _trt_bool(precision.startswith("int8"))}
    if cache_dir is not None:
        where = str(Path(cache_dir) / precision)
        options.update(trt_engine_cache_enable="True", trt_engine_cache_path=where,
                       trt_timing_cache_enable="True", trt_timing_cache_path=where)
    if profile is not None:
        dims = "x".join(str(d) for d in input_shape)
        for key, size in (("min", profile["min"]), ("opt", profile["opt"]), ("max", profile["max"])):
            options[f"trt_profile_{key}_shapes"] = f"{input_name}:{size}x{dims}"
    if cuda_graph:
        options["trt_cuda_graph_enable"] = "True"
    # what TensorRT does not take runs on CUDA, in IEEE fp32
    return [(PROVIDERS["tensorrt"], options), (PROVIDERS["cuda"], {**cuda, "use_tf32": "0"})]


def _trt_bool(on: bool) -> str:
    """A TensorRT-provider switch as the Python binding parses it: only True/true/False/false
    (onnxruntime_pybind_state.cc throws "should be 'True' or 'False'" for "1"), where the CUDA
    provider's switches go through `istream >> bool` and take only "1"/"0"."""
    return "True" if on else "False"


CACHE_KEYS = ("trt_engine_cache_path", "trt_timing_cache_path")


def make_cache_folders(session: list[tuple[str, dict]]) -> None:
    """The folders the TensorRT provider keeps its engines and timing cache in, made with their
    parents: the provider creates only the last level of the path (fs::create_directory) and
    fails the session ("Failed to create directory") when a parent is missing."""
    for _name, options in session:
        for key in CACHE_KEYS:
            if key in options:
                Path(options[key]).mkdir(parents=True, exist_ok=True)
