"""The checks Triton applies when it loads a model, for what this tool writes, ported from
triton-inference-server/core (src/model_config_utils.cc: ValidateModelConfig, ValidateIOShape;
src/model_repository_manager/model_repository_manager.cc: the model's folder) at 73aad7c,
triton-inference-server/onnxruntime_backend src/onnxruntime.cc (the TensorRT execution
accelerator's parameters, batching against the ONNX model) at 00fd3e8, and
triton-inference-server/backend src/backend_common.cc (how a parameter's value is parsed) at
3f57fb9.

`check(config, onnx_model, folder)` takes a parsed ModelConfig (tritonclient's model_config_pb2),
for the onnxruntime backend the ONNX model it serves, and the name of the folder it lies in; it
returns Triton's refusals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CORE = "triton-inference-server/core src/model_config_utils.cc"
REPOSITORY = "triton-inference-server/core src/model_repository_manager/model_repository_manager.cc"
ORT = "triton-inference-server/onnxruntime_backend src/onnxruntime.cc"
COMMON = "triton-inference-server/backend src/backend_common.cc"
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
# the TensorRT accelerator's parameter keys (onnxruntime.cc:479-703), each with how its value is
# parsed and the line that reads it; any other key is "unknown parameter ... is provided for
# TensorRT Execution Accelerator" (708)
TRT_KEYS = {
    "precision_mode": ("precision", 479), "max_workspace_size_bytes": ("ull", 497),
    "trt_max_partition_iterations": ("int", 505), "trt_min_subgraph_size": ("int", 513),
    "int8_calibration_table_name": ("string", 521), "int8_use_native_calibration_table": ("bool", 525),
    "trt_dla_enable": ("bool", 533), "trt_dla_core": ("int", 541), "trt_engine_cache_enable": ("bool", 548),
    "trt_engine_cache_path": ("string", 556), "trt_engine_cache_prefix": ("string", 560),
    "trt_dump_subgraphs": ("bool", 564), "trt_force_sequential_engine_build": ("bool", 572),
    "trt_context_memory_sharing_enable": ("bool", 580), "trt_layer_norm_fp32_fallback": ("bool", 588),
    "trt_timing_cache_enable": ("bool", 596), "trt_timing_cache_path": ("string", 604),
    "trt_force_timing_cache": ("bool", 608), "trt_detailed_build_log": ("bool", 616),
    "trt_build_heuristics_enable": ("bool", 624), "trt_sparsity_enable": ("bool", 632),
    "trt_builder_optimization_level": ("int", 640), "trt_auxiliary_streams": ("int", 648),
    "trt_tactic_sources": ("string", 656), "trt_extra_plugin_lib_paths": ("string", 660),
    "trt_profile_min_shapes": ("string", 664), "trt_profile_max_shapes": ("string", 668),
    "trt_profile_opt_shapes": ("string", 672), "trt_cuda_graph_enable": ("bool", 676),
    "trt_dump_ep_context_model": ("bool", 684), "trt_ep_context_file_path": ("string", 692),
    "trt_ep_context_embed_mode": ("int", 696)}
# precision_mode: FP16 -> trt_fp16_enable, BF16 -> trt_bf16_enable, INT8 -> trt_int8_enable,
# one flag each (onnxruntime.cc:482-490): INT8 alone runs what has no scales in FP32
PRECISION_FLAGS = {"FP32": (), "FP16": ("trt_fp16_enable",), "BF16": ("trt_bf16_enable",),
                   "INT8": ("trt_int8_enable",)}


def _parse_problem(kind: str, value: str) -> tuple[str, int] | None:
    """(Triton's words, backend_common.cc line) when a value does not parse as `kind`: std::stoi
    and std::stoull read a number from the front or throw; booleans are true/on/1, false/off/0
    in any case (ParseBoolValue)."""
    if kind == "bool" and value.lower() not in ("true", "on", "1", "false", "off", "0"):
        return f"failed to convert '{value}' to boolean", 1064
    if kind == "int" and not re.match(r"\s*[+-]?\d", value):
        return f"failed to convert '{value}' to integral number", 1076
    if kind == "ull" and not re.match(r"\s*[+-]?\d", value):
        return f"failed to convert '{value}' to unsigned long long integral number", 1038
    return None


@dataclass(frozen=True)
class Finding:
    message: str
    source: str


def _dims(value) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def check(config, onnx_model=None, folder: str | None = None) -> list[Finding]:
    found = []

    def refuse(message, source):
        found.append(Finding(message, source))

    if folder is not None and config.name != folder:
        refuse(f"unexpected directory name '{folder}' for model '{config.name}', directory name "
               "must equal model name", f"{REPOSITORY}:1703-1708")
    if not config.name:
        refuse("model configuration must specify 'name'", f"{CORE}:1439")
    if config.platform and config.platform not in PLATFORMS and not config.backend:
        refuse(f"unexpected platform type '{config.platform}' for {config.name}", f"{CORE}:1448")
    if config.max_batch_size < 0:
        refuse(f"'max_batch_size' must be non-negative value for {config.name}", f"{CORE}:1481")
    if config.HasField("dynamic_batching"):
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0:
                refuse(f"dynamic batching preferred size must be positive for {config.name}",
                       f"{CORE}:1497")
            elif size > config.max_batch_size:
                refuse(f"dynamic batching preferred size must be <= max batch size for "
                       f"{config.name}", f"{CORE}:1503")
    for io in [*config.input, *config.output]:
        if not io.dims:
            refuse(f"'{io.name}' must specify 'dims'", f"{CORE}:317")
        elif any(d < 1 and d != -1 for d in io.dims):
            refuse(f"'{io.name}' dimension must be integer >= 1, or -1 to indicate a variable-size "
                   "dimension", f"{CORE}:337")
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name != "tensorrt":
            continue
        for key, value in accelerator.parameters.items():
            if key not in TRT_KEYS:
                refuse(f"unknown parameter '{key}' is provided for TensorRT Execution Accelerator",
                       f"{ORT}:708")
                continue
            kind, line = TRT_KEYS[key]
            if kind == "precision":
                if value not in PRECISION_FLAGS:
                    refuse(f"unsupported precision mode '{value}' is requested", f"{ORT}:494")
                continue
            problem = _parse_problem(kind, value)
            if problem:
                refuse(problem[0], f"{COMMON}:{problem[1]} (read at src/onnxruntime.cc:{line})")
    if onnx_model is not None and config.platform == "onnxruntime_onnx":
        graph = onnx_model.graph
        weights = {i.name for i in graph.initializer}
        tensors = {v.name: _dims(v) for v in [*graph.input, *graph.output] if v.name not in weights}
        batching = all(dims and dims[0] == -1 for dims in tensors.values())
        if config.max_batch_size > 0 and not batching:
            refuse(f"autofill failed for model '{config.name}': model does not support batching "
                   "while non-zero max_batch_size is specified", f"{ORT}:1171")
        for io in [*config.input, *config.output]:
            if io.name not in tensors:
                refuse(f"unable to load model '{config.name}', unexpected tensor '{io.name}'",
                       f"{ORT}:1707 (CheckAllowedModelInput), 1814 (CheckAllowedModelOutput)")
                continue
            model_dims = tensors[io.name][1:] if config.max_batch_size > 0 else tensors[io.name]
            if list(io.dims) != model_dims:
                refuse(f"unable to load model '{config.name}', configuration expects dims "
                       f"{list(io.dims)} for '{io.name}' but the model has {model_dims}",
                       f"{ORT}:1767 (CompareDimsSupported)")
    return found


def labels(text: str) -> list[str]:
    """A label_filename file as Triton reads it: one label per line, every line (std::getline;
    triton-inference-server/core src/label_provider.cc:70, LabelProvider::AddLabels)."""
    import io
    return [line.rstrip("\n") for line in io.StringIO(text, newline="\n")]
