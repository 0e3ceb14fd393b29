"""One small class per backend behind one interface (after Polygraphy's runners).

Every backend takes a float32 NCHW numpy batch on the host and returns float32 logits on the
host (`run`: host-to-host). Backends on a GPU also split that into `stage` (copy in), `execute`
(compute only, result left on the device) and `synchronize`, so the latency harness can time
device compute apart from transfers.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifacts import open_dir
from .errors import BadInput, MissingBackend, first_line
from .export import ONNX_FILE_KEY
from .export.metadata import quantization_info
from .runtime.ort import BatchOutOfRange, import_ort, int8_path, make_session, run_batch
from .runtime.trt_rules import INT8_FP16_FILE, ONNX_FILES

ORT_FILES = {**ONNX_FILES, "int8-fp16": INT8_FP16_FILE}



class BackendUnavailable(MissingBackend):
    """This backend x precision cannot run here; the message is the reason."""


class Backend:
    name = "backend"
    precision = "fp32"
    device = "cpu"
    # True where execute() times device compute without host transfers.
    separates_device_time = False
    int8_path: dict | None = None  # how ORT-CPU ran an int8 model (ort.int8_path)
    unfused: "Backend | None" = None  # the same int8 model with Q/DQ as written, to compare

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision} ({self.device})"

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def stage(self, batch: np.ndarray):
        return batch

    def execute(self, staged) -> None:
        self.run(staged)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: nn.Module, precision: str = "fp32", device: str = "cpu"):
        if precision not in ("fp32", "fp16"):
            raise BackendUnavailable(f"torch runs fp32 and fp16; {precision} is for onnxruntime and tensorrt")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA GPU visible to torch")
        self.precision, self.device = precision, device
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision != "fp32" or device != "cpu":  # .to() converts in place; keep the caller's
            model = copy.deepcopy(model)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        if device == "cuda":
            # the fp32 reference must be plain fp32: no TF32 rounding
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            self.model = self.model.to(memory_format=torch.channels_last)
            self.separates_device_time = True

    def stage(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(self.device, dtype=self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.device == "cuda" else x

    @torch.inference_mode()
    def execute(self, staged: torch.Tensor) -> torch.Tensor:
        return self.model(staged)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.execute(self.stage(batch)).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class OrtBackend(Backend):
    name = "ort"

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp32",
                 providers: tuple[str, ...] | None = None, *, disable_qdq_fusion: bool = False,
                 batch_range: tuple[int, int] | None = None):
        """An int8 model on the CPU provider also says how ORT ran it (`int8_path`), read
        from the graph this very session optimized."""
        ort = import_ort()
        if not Path(onnx_path).exists():
            made_by = ("calibrate --recipe tensorrt" if precision == "int8-fp16" else
                       "calibrate" if precision == "int8" else "export")
            raise BackendUnavailable(f"{Path(onnx_path).name} not found (made by {made_by})")
        available = ort.get_available_providers()
        wanted = providers or ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                               "CPUExecutionProvider")
        chosen = [p for p in wanted if p in available]
        if not chosen:
            raise BackendUnavailable(f"none of {', '.join(wanted)} is available in this onnxruntime "
                                     f"(it has {', '.join(available)})")
        self.precision, self.path, self.batch_range = precision, Path(onnx_path), batch_range
        report = precision.startswith("int8") and chosen[0] == "CPUExecutionProvider"
        try:
            with tempfile.TemporaryDirectory() as scratch:
                optimized = Path(scratch) / "optimized.onnx" if report and not disable_qdq_fusion else None
                self.session = make_session(onnx_path, chosen, disable_qdq_fusion=disable_qdq_fusion,
                                            optimized_model=optimized)
                if report:
                    self.int8_path = {**int8_path(optimized),
                                      "weight_bits": quantization_info(onnx_path).get("weight_bits")}
        except Exception as exc:  # noqa: BLE001 (ONNX Runtime's own error types)
            raise BadInput(f"ONNX Runtime cannot load {onnx_path}: {first_line(exc)}") from None
        active = self.session.get_providers()
        self.provider = active[0]
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else "cuda"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        if self.device == "cuda":
            self.separates_device_time = True
            self.binding = self.session.io_binding()

    @property
    def label(self) -> str:
        where = self.provider.replace("ExecutionProvider", "")
        note = f", {self.int8_path['path']}" if self.int8_path else ""
        return f"ort {self.precision} ({where}{note})"

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


class TensorRTBackend(Backend):
    name = "trt"
    device = "cuda"
    separates_device_time = True

    def __init__(self, workdir: str | os.PathLike, precision: str = "fp32"):
        from .runtime import trt_rules, trt_runner
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
            self.runner = trt_runner.TrtRunner(path)
        except trt_rules.EngineError as exc:
            raise BackendUnavailable(str(exc)) from None
        self.precision = precision

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.run(batch)

    def stage(self, batch: np.ndarray):
        return self.runner.stage(batch)

    def execute(self, staged) -> None:
        self.runner.execute()

    def synchronize(self) -> None:
        self.runner.synchronize()

    def close(self) -> None:
        self.runner.close()


BACKENDS = ("torch", "ort", "trt")


def artifact_hashes(workdir, ran: list[tuple[str, str]]) -> dict[str, str]:
    """sha256 of the work-dir files behind the (backend, precision) pairs that ran: what a
    report's numbers were measured on."""
    wd = open_dir(workdir)
    names = ["model.onnx", "model.pt", *(ORT_FILES[p] for b, p in ran if b == "ort")]
    return {name: wd.sha256(name) for name in dict.fromkeys(names) if wd.file(name).exists()}


def remake_command(workdir, name: str) -> str:
    """The command that makes work-dir file `name` again."""
    if "int8" in name or "calibration" in name:
        return f"resnet-edge calibrate {workdir}"
    return f"resnet-edge export <model or checkpoint> --out {workdir} --force"


def _recipe(int8_path: Path) -> str:
    return quantization_info(int8_path).get("recipe", "")


CPU_FP16 = ("torch fp16 runs on a GPU unless asked for: CPUs have no fast fp16 kernels, so it "
            "costs ~40x fp32 time here (ask with --backends torch --precisions fp16)")


def open_backend(name: str, precision: str, workdir: str | os.PathLike, *,
                 model: nn.Module | None = None, device: str = "auto",
                 cpu_fp16: bool = False, batch_range: tuple[int, int] | None = None,
                 with_unfused: bool = False) -> Backend:
    """The backend `name` at `precision` for the model in `workdir`, or BackendUnavailable.
    torch fp16 on a CPU only with `cpu_fp16` (the user named it). `with_unfused`: an int8
    model that ORT-CPU fuses gets the same model with Q/DQ as written beside it (.unfused)."""
    cuda = torch.cuda.is_available()
    if name == "torch":
        if model is None:
            bare = open_dir(workdir).manifest.get(ONNX_FILE_KEY)
            raise BackendUnavailable(f"{bare} is a bare ONNX file: no PyTorch model came with it"
                                     if bare else "no PyTorch model (model.pt) in the work directory")
        where = "cuda" if (device == "cuda" or (device == "auto" and cuda)) else "cpu"
        if precision == "fp16" and where == "cpu" and not cpu_fp16:
            raise BackendUnavailable(CPU_FP16)
        return TorchBackend(model, precision, where)
    if name == "ort":
        providers = ("CPUExecutionProvider",) if device == "cpu" else None
        path = Path(workdir) / ORT_FILES[precision]
        if path.exists():  # a stale or half-written file is refused, not compared
            open_dir(workdir).vouch(path.name, remake_command(workdir, path.name))
        as_written = precision.startswith("int8") and path.exists() and _recipe(path) == "tensorrt"
        backend = OrtBackend(path, precision, providers, disable_qdq_fusion=as_written,
                             batch_range=batch_range)
        # ORT-CPU's fused int8 kernels are not what TensorRT runs (Q/DQ as written is); beside
        # the cpu recipe's fused kernels, the exact arithmetic, so a saturating kernel shows
        if with_unfused and backend.int8_path and not as_written:
            backend.unfused = OrtBackend(path, precision, providers, disable_qdq_fusion=True,
                                         batch_range=batch_range)
        return backend
    if name == "trt":
        return TensorRTBackend(workdir, precision)
    raise BackendUnavailable(f"unknown backend {name!r}; use {', '.join(BACKENDS)}")
