"""One small class per backend behind one interface (after Polygraphy's runners).

Every backend takes a float32 NCHW numpy batch on the host and returns float32 logits on the
host (`run`: host-to-host). Backends on a GPU also split that into `stage` (copy in), `execute`
(compute only, result left on the device) and `synchronize`, so the latency harness can time
device compute apart from transfers. A GPU backend can also capture its work for one batch
size as a CUDA graph (`graph`), a backend of its own whose name ends in +graph.

Over 400 lines because each backend's eager and graph classes read best side by side: they
share the session, the buffers and the precision rules, and a change to one is a change to both.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifacts import calibrate_command, open_dir
from .errors import BadInput, MissingBackend, first_line
from .export import ONNX_FILE_KEY
from .export.metadata import quantization_info
from .runtime import providers
from .runtime.gpu import compute_capability, placed, tf32_unavailable, torch_math
from .runtime.ort import (BatchOutOfRange, ProviderFellBack, import_ort, int8_path, make_session,
                          run_batch)
from .runtime.trt_rules import INT8_FP16_FILE, ONNX_FILES

ORT_FILES = {**ONNX_FILES, "tf32": ONNX_FILES["fp32"], "int8-fp16": INT8_FP16_FILE}



class BackendUnavailable(MissingBackend):
    """This backend x precision cannot run here; the message is the reason."""


class Backend:
    name = "backend"
    precision = "fp32"
    device = "cpu"
    # True where execute() times device compute without host transfers.
    separates_device_time = False
    int8_path: dict | None = None  # how ORT ran an int8 model (ort.int8_path; CUDA: providers.CUDA_INT8)
    unfused: "Backend | None" = None  # the same int8 model with Q/DQ as written, to compare

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision} ({self.device})"

    @property
    def settings(self) -> dict:
        """What this row ran with beyond its precision, as reports record it."""
        return {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def stage(self, batch: np.ndarray):
        return batch

    def execute(self, staged) -> None:
        self.run(staged)

    def synchronize(self) -> None:
        pass

    def graph(self, batch_size: int, input_shape: tuple[int, ...]) -> "Backend":
        """This backend's work for batches of `batch_size` images of `input_shape` (C, H, W),
        captured as a CUDA graph and replayed."""
        raise BackendUnavailable(f"{self.label} runs on the CPU: CUDA graphs are a GPU's")

    def close(self) -> None:
        pass


class Graph(Backend):
    """A GPU backend's work for one batch size, captured once and replayed: inputs are copied
    into fixed buffers (a shorter batch padded), the graph launched, its fixed output read.
    Its own backend name ends in +graph, so its rows never mix with the eager ones."""

    separates_device_time = True
    device = "cuda"

    def __init__(self, eager: Backend, batch_size: int):
        self.eager, self.batch_size = eager, batch_size
        self.name, self.precision = f"{eager.name}+graph", eager.precision

    @property
    def label(self) -> str:
        return f"{self.eager.label[:-1]}, graph)"

    @property
    def settings(self) -> dict:
        return {**self.eager.settings, "cuda_graph": True}

    def padded(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) > self.batch_size:
            raise BadInput(f"a batch of {len(batch)} does not fit a graph captured for {self.batch_size}")
        if len(batch) == self.batch_size:
            return batch
        return np.concatenate([batch, np.zeros((self.batch_size - len(batch), *batch.shape[1:]),
                                               batch.dtype)])

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.stage(batch)
        self.execute(None)
        return self.fetch()[:len(batch)]

    def fetch(self) -> np.ndarray:
        raise NotImplementedError


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: nn.Module, precision: str = "fp32", device: str = "cpu"):
        if precision not in ("fp32", "tf32", "fp16"):
            raise BackendUnavailable(f"torch runs fp32, tf32 and fp16; {precision} is for "
                                     "onnxruntime and tensorrt")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA GPU visible to torch")
        if precision == "tf32" and tf32_unavailable(device):
            raise BackendUnavailable(tf32_unavailable(device))
        self.precision, self.device = precision, device
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision != "fp32" or device != "cpu":  # .to() converts in place; keep the caller's
            model = copy.deepcopy(model)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        if device == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.separates_device_time = True

    @property
    def settings(self) -> dict:
        # fp32 is IEEE fp32 (TF32 off); tf32 names the mode; the caller's flags are put back
        return {"tf32": self.precision == "tf32"} if self.device == "cuda" else {}

    def stage(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(self.device, dtype=self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.device == "cuda" else x

    def execute(self, staged: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch_math(self.precision):
            return self.model(staged)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.execute(self.stage(batch)).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def graph(self, batch_size: int, input_shape: tuple[int, ...]) -> Backend:
        if self.device != "cuda":
            return super().graph(batch_size, input_shape)
        return TorchGraph(self, batch_size, input_shape)


class TorchGraph(Graph):
    """torch.cuda.CUDAGraph, captured as PyTorch's documentation says: a few warm-up runs on a
    side stream first (cuDNN picks its kernels there), then the capture."""

    def __init__(self, eager: TorchBackend, batch_size: int, shape: tuple[int, ...]):
        super().__init__(eager, batch_size)
        self.static_in = torch.zeros((batch_size, *shape), device="cuda", dtype=eager.dtype
                                     ).contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                eager.execute(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        self.cuda_graph = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch_math(eager.precision), torch.cuda.graph(self.cuda_graph):
                self.static_out = eager.model(self.static_in)
        except RuntimeError as exc:  # an op that cannot be captured, say
            raise BackendUnavailable(f"torch could not capture a CUDA graph: {first_line(exc)}") from None

    def stage(self, batch: np.ndarray):
        self.static_in.copy_(torch.from_numpy(self.padded(batch)))
        return self.static_in

    def execute(self, staged) -> None:
        self.cuda_graph.replay()

    def fetch(self) -> np.ndarray:
        return self.static_out.float().cpu().numpy()

    def synchronize(self) -> None:
        torch.cuda.synchronize()


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp32",
                 provider: str = "cpu", *, disable_qdq_fusion: bool = False,
                 batch_range: tuple[int, int] | None = None, purpose: str = "parity",
                 cache_dir: str | os.PathLike | None = None, profile: dict | None = None,
                 name: str = "ort"):
        """ONNX Runtime on one provider ('tensorrt', 'cuda', 'cpu'), configured for what the
        row says (providers.session_providers), or BackendUnavailable with the reason. An int8
        model on the CPU provider also says how ORT ran it (`int8_path`), read from the graph
        this very session optimized."""
        import_ort()
        if not Path(onnx_path).exists():
            made_by = ("calibrate --recipe tensorrt" if precision == "int8-fp16" else
                       "calibrate" if precision == "int8" else "export")
            raise BackendUnavailable(f"{Path(onnx_path).name} not found (made by {made_by})")
        reason = providers.unavailable(provider) or providers.math_problem(
            provider, precision, compute_capability() if provider != "cpu" else None)
        if reason:
            raise BackendUnavailable(reason)
        self.name, self.precision, self.path, self.batch_range = name, precision, Path(onnx_path), batch_range
        self.provider_name, self.purpose, self.cache_dir = provider, purpose, cache_dir
        self.profile = profile
        self.input_dims = self._input_dims()
        self.providers = self._providers()
        providers.make_cache_folders(self.providers)
        report = precision.startswith("int8") and provider == "cpu"
        self.disable_qdq_fusion = disable_qdq_fusion
        try:
            with tempfile.TemporaryDirectory() as scratch:
                optimized = Path(scratch) / "optimized.onnx" if report and not disable_qdq_fusion else None
                self.session = make_session(onnx_path, self.providers, disable_qdq_fusion=disable_qdq_fusion,
                                            optimized_model=optimized)
                if report:
                    self.int8_path = {**int8_path(optimized),
                                      "weight_bits": quantization_info(onnx_path).get("weight_bits")}
        except ProviderFellBack as exc:
            raise BackendUnavailable(f"ort on {providers.TITLES[provider]}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 (ONNX Runtime's own error types)
            raise BadInput(f"ONNX Runtime cannot load {onnx_path}: {first_line(exc)}") from None
        active = self.session.get_providers()
        self.provider = active[0]
        if provider == "cuda" and precision.startswith("int8"):
            self.int8_path = {"path": providers.CUDA_INT8, "integer_ops": {}}
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        if self.device == "cuda":
            self.separates_device_time = True
            self.binding = self.session.io_binding()

    def _providers(self, cuda_graph: bool = False) -> list[tuple[str, dict]]:
        return providers.session_providers(self.provider_name, self.precision, purpose=self.purpose,
                                           cache_dir=self.cache_dir, profile=self.profile,
                                           input_shape=self.input_dims, cuda_graph=cuda_graph)

    def _input_dims(self) -> tuple[int, ...]:
        """(3, H, W) as the ONNX file declares its input, for the TensorRT provider's profile;
        read once, and only where that provider needs it."""
        if self.provider_name != "tensorrt" or self.profile is None:
            return ()
        import onnx
        dims = onnx.load(str(self.path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        return tuple(d.dim_value for d in dims[1:])

    @property
    def label(self) -> str:
        where = self.provider.replace("ExecutionProvider", "")
        note = f", {self.int8_path['path']}" if self.int8_path else ""
        return f"ort {self.precision} ({where}{note})"

    @property
    def settings(self) -> dict:
        return _provider_settings(self.providers)

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return run_batch(self.session, self.input_name, batch, self.batch_range)
        except BatchOutOfRange as exc:
            raise BadInput(f"{self.path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 (a model with a fixed batch, renamed input...)
            raise BadInput(f"ONNX Runtime refused a batch of shape {tuple(batch.shape)} for "
                           f"{self.path}: {first_line(exc)}") from None

    def stage(self, batch: np.ndarray):
        if self.device == "cpu":
            return batch
        ort = import_ort()
        value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        self.binding.bind_ortvalue_input(self.input_name, value)
        self.binding.bind_output(self.output_name, "cuda")
        return value

    def execute(self, staged) -> None:
        if self.device == "cpu":
            self.run(staged)
        else:
            self.session.run_with_iobinding(self.binding)

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.binding.synchronize_outputs()

    def graph(self, batch_size: int, input_shape: tuple[int, ...]) -> Backend:
        if self.device != "cuda":
            return super().graph(batch_size, input_shape)
        return OrtGraph(self, batch_size, input_shape)


class OrtGraph(Graph):
    """ONNX Runtime's own CUDA graph (CUDA provider `enable_cuda_graph`, TensorRT provider
    `trt_cuda_graph_enable`): a session of its own for one batch size, bound to the same device
    buffers on every run, as ONNX Runtime requires. Neither provider captures on its first run:
    each runs regularly first (min_num_runs_before_cuda_graph_capture_, so its allocations are
    made), captures on a later run and replays after, so the session is run until it replays
    before any run is timed."""
    WARM_RUNS = 3  # regular, capture, first replay

    def __init__(self, eager: OrtBackend, batch_size: int, shape: tuple[int, ...]):
        super().__init__(eager, batch_size)
        ort = import_ort()
        self.providers = eager._providers(cuda_graph=True)
        try:
            self.session = make_session(eager.path, self.providers,
                                        disable_qdq_fusion=eager.disable_qdq_fusion)
        except Exception as exc:  # noqa: BLE001 (a node the graph cannot hold, say)
            raise BackendUnavailable(f"ONNX Runtime could not make a CUDA graph session: "
                                     f"{first_line(exc)}") from None
        example = eager.run(np.zeros((batch_size, *shape), np.float32))
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.x = ort.OrtValue.ortvalue_from_numpy(
            np.zeros((batch_size, *shape), _numpy_type(inp.type)), "cuda", 0)
        self.y = ort.OrtValue.ortvalue_from_shape_and_type(list(example.shape), _numpy_type(out.type),
                                                           "cuda", 0)
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input(inp.name, self.x)
        self.binding.bind_ortvalue_output(out.name, self.y)
        self.input_type = _numpy_type(inp.type)
        try:
            for _ in range(self.WARM_RUNS):
                self.session.run_with_iobinding(self.binding)
        except Exception as exc:  # noqa: BLE001 (ONNX Runtime's own error types)
            raise BackendUnavailable(f"ONNX Runtime could not capture a CUDA graph: "
                                     f"{first_line(exc)}") from None

    @property
    def settings(self) -> dict:
        return {**_provider_settings(self.providers), "cuda_graph": True}

    def stage(self, batch: np.ndarray):
        self.x.update_inplace(np.ascontiguousarray(self.padded(batch), dtype=self.input_type))
        return self.x

    def execute(self, staged) -> None:
        self.session.run_with_iobinding(self.binding)

    def fetch(self) -> np.ndarray:
        return self.y.numpy().astype(np.float32, copy=False)

    def synchronize(self) -> None:
        self.binding.synchronize_outputs()


def _provider_settings(session_providers: list[tuple[str, dict]]) -> dict:
    return {"providers": [[name, dict(options)] for name, options in session_providers]}


def _numpy_type(onnx_type: str):
    return np.float16 if onnx_type == "tensor(float16)" else np.float32


class TensorRTBackend(Backend):
    name = "trt"
    device = "cuda"
    separates_device_time = True

    def __init__(self, workdir: str | os.PathLike, precision: str = "fp32"):
        from .runtime import trt_rules, trt_runner
        if precision == "tf32" and tf32_unavailable("cuda"):
            raise BackendUnavailable(tf32_unavailable("cuda"))
        try:
            trt = trt_runner.import_trt()
            gpu, _ = trt_runner.current_gpu()
            path = trt_rules.engine_path(workdir, gpu, trt.__version__, precision)
            if not path.exists():
                raise BackendUnavailable(f"engine not built for {gpu} / TensorRT {trt.__version__} "
                                         f"(run `resnet-edge build {workdir} --precision {precision}`)")
            meta = trt_rules.read_engine_meta(path)
            source = str(meta.get("onnx"))
            wd = open_dir(workdir)
            wd.vouch(source, remake_command(workdir, source))
            if meta.get("onnx_sha256") != wd.sha256(source):
                raise BadInput(f"{path} is stale: it was built from an earlier {source}; rebuild it "
                               f"with `resnet-edge build {workdir} --precision {precision}`")
            self.path = path
            self.runner = trt_runner.TrtRunner(path)
        except trt_rules.EngineError as exc:
            raise BackendUnavailable(str(exc)) from None
        self.precision = precision

    @property
    def settings(self) -> dict:
        return {"engine": self.path.name}

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.run(batch)

    def stage(self, batch: np.ndarray):
        return self.runner.stage(batch)

    def execute(self, staged) -> None:
        self.runner.execute()

    def synchronize(self) -> None:
        self.runner.synchronize()

    def graph(self, batch_size: int, input_shape: tuple[int, ...]) -> Backend:
        return TensorRTGraph(self, batch_size)

    def close(self) -> None:
        self.runner.close()


class TensorRTGraph(Graph):
    """enqueueV3 captured on the runner's stream and replayed, as trtexec's --useCudaGraph
    does; a runner of its own, since the graph holds one input shape."""

    def __init__(self, eager: TensorRTBackend, batch_size: int):
        from .runtime import trt_rules, trt_runner
        super().__init__(eager, batch_size)
        try:
            self.runner = trt_runner.TrtRunner(eager.path)
            self.runner.capture(batch_size)
        except trt_rules.EngineError as exc:
            raise BackendUnavailable(f"TensorRT could not capture a CUDA graph: {exc}") from None

    def stage(self, batch: np.ndarray):
        return self.runner.stage(self.padded(batch))

    def execute(self, staged) -> None:
        self.runner.replay()

    def fetch(self) -> np.ndarray:
        return self.runner.fetch()[self.runner.output_name]

    def synchronize(self) -> None:
        self.runner.synchronize()

    def close(self) -> None:
        self.runner.close()


# ONNX Runtime on a named provider, as its own backend, so rows of several providers stand side
# by side (`--ort-providers tensorrt,cuda`); plain `ort` runs on the provider --device picks
ORT_PROVIDER_BACKENDS = {f"ort-{short}": short for short in providers.PROVIDERS}
BACKENDS = ("torch", "ort", "trt", *ORT_PROVIDER_BACKENDS)


def is_ort(name: str) -> bool:
    return name == "ort" or name in ORT_PROVIDER_BACKENDS


def artifact_hashes(workdir, ran: list[tuple[str, str]]) -> dict[str, str]:
    """sha256 of the work-dir files behind the (backend, precision) pairs that ran: what a
    report's numbers were measured on."""
    wd = open_dir(workdir)
    names = ["model.onnx", "model.pt", *(ORT_FILES[p] for b, p in ran if is_ort(b.removesuffix("+graph")))]
    return {name: wd.sha256(name) for name in dict.fromkeys(names) if wd.file(name).exists()}


def remake_command(workdir, name: str) -> str:
    """The command that makes work-dir file `name` again: for int8, with the data and options
    the work dir records it was calibrated with, where it records any."""
    if "int8" in name or "calibration" in name:
        recorded = (open_dir(workdir).manifest.get("files", {}).get("model.int8.onnx") or {}).get("options") or {}
        if all(isinstance(recorded.get(k), (str, int)) for k in ("data", "samples", "method")):
            return calibrate_command(workdir, recorded)
        return f"resnet-edge calibrate {workdir} --data <your calibration images, e.g. images:/data/calib>"
    return f"resnet-edge export <model or checkpoint> --out {workdir} --force"


def _recipe(int8_path: Path) -> str:
    return quantization_info(int8_path).get("recipe", "")


CPU_FP16 = ("torch fp16 runs on a GPU unless asked for: CPUs have no fast fp16 kernels, so it "
            "costs ~40x fp32 time here (ask with --backends torch --precisions fp16)")


def ort_provider(name: str, device: str) -> str:
    """The provider an ONNX Runtime row runs on: the one its backend names (ort-cuda...), or for
    plain `ort` the device's: CUDA on a GPU (with `auto`, the CPU provider where CUDA's cannot
    load, and the row is labelled so), the CPU provider on a CPU."""
    if name in ORT_PROVIDER_BACKENDS:
        return ORT_PROVIDER_BACKENDS[name]
    if placed(device) == "cpu":
        return "cpu"
    return "cpu" if device == "auto" and providers.unavailable("cuda") else "cuda"


def open_backend(name: str, precision: str, workdir: str | os.PathLike, *,
                 model: nn.Module | None = None, device: str = "auto",
                 cpu_fp16: bool = False, batch_range: tuple[int, int] | None = None,
                 profile: dict | None = None, purpose: str = "parity",
                 with_unfused: bool = False) -> Backend:
    """The backend `name` at `precision` for the model in `workdir`, or BackendUnavailable.
    torch fp16 on a CPU only with `cpu_fp16` (the user named it). `with_unfused`: an int8
    model that ORT-CPU fuses gets the same model with Q/DQ as written beside it (.unfused).
    `purpose` (parity or bench) picks cuDNN's convolution search on ONNX Runtime's CUDA."""
    if name == "torch":
        if model is None:
            bare = open_dir(workdir).manifest.get(ONNX_FILE_KEY)
            raise BackendUnavailable(f"{bare} is a bare ONNX file: no PyTorch model came with it"
                                     if bare else "no PyTorch model (model.pt) in the work directory")
        where = placed(device)
        if precision == "fp16" and where == "cpu" and not cpu_fp16:
            raise BackendUnavailable(CPU_FP16)
        return TorchBackend(model, precision, where)
    if is_ort(name):
        provider = ort_provider(name, device)
        path = Path(workdir) / ORT_FILES[precision]
        if path.exists():  # a stale or half-written file is refused, not compared
            open_dir(workdir).vouch(path.name, remake_command(workdir, path.name))
        as_written = precision.startswith("int8") and path.exists() and _recipe(path) == "tensorrt"

        def session(fusion_off: bool) -> OrtBackend:
            return OrtBackend(path, precision, provider, disable_qdq_fusion=fusion_off,
                              batch_range=batch_range, purpose=purpose, profile=profile,
                              cache_dir=Path(workdir) / "ort-tensorrt", name=name)
        backend = session(as_written)
        # ORT-CPU's fused int8 kernels are not what TensorRT runs (Q/DQ as written is); beside
        # the cpu recipe's fused kernels, the exact arithmetic, so a saturating kernel shows
        if with_unfused and backend.int8_path and not as_written:
            backend.unfused = session(True)
        return backend
    if name == "trt":
        return TensorRTBackend(workdir, precision)
    raise BackendUnavailable(f"unknown backend {name!r}; use {', '.join(BACKENDS)}")
