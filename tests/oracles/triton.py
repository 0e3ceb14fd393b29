"""The checks Triton applies when it loads a model, for what this tool writes, ported from
triton-inference-server/core src/model_config_utils.cc (ValidateModelConfig, ValidateIOShape)
and triton-inference-server/onnxruntime_backend src/onnxruntime.cc (the TensorRT execution
accelerator's parameters, batching against the ONNX model), main branches as fetched.

`check(config, onnx_model)` takes a parsed ModelConfig (tritonclient's model_config_pb2) and,
for the onnxruntime backend, the ONNX model it serves; it returns Triton's refusals.
"""

from __future__ import annotations

from dataclasses import dataclass

CORE = "triton-inference-server/core src/model_config_utils.cc"
ORT = "triton-inference-server/onnxruntime_backend src/onnxruntime.cc"
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}
# the TensorRT accelerator's parameter keys the backend knows (onnxruntime.cc:479-707); any
# other key is "unknown parameter ... is provided for TensorRT Execution Accelerator"
TRT_KEYS = {
    "precision_mode", "max_workspace_size_bytes", "trt_max_partition_iterations",
    "trt_min_subgraph_size", "int8_calibration_table_name", "int8_use_native_calibration_table",
    "trt_dla_enable", "trt_dla_core", "trt_engine_cache_enable", "trt_engine_cache_path",
    "trt_engine_cache_prefix", "trt_dump_subgraphs", "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable",
    "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
    "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes",
    "trt_cuda_graph_enable", "trt_dump_ep_context_model", "trt_ep_context_file_path",
    "trt_ep_context_embed_mode"}
BOOL_KEYS = {"trt_engine_cache_enable", "trt_cuda_graph_enable", "trt_dump_subgraphs",
             "trt_timing_cache_enable"}


@dataclass(frozen=True)
class Finding:
    message: str
    source: str


def _dims(value) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def check(config, onnx_model=None) -> list[Finding]:
    found = []

    def refuse(message, source):
        found.append(Finding(message, source))

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
            elif key == "precision_mode" and value not in ("FP32", "FP16", "BF16", "INT8"):
                refuse(f"unsupported precision mode '{value}' is requested", f"{ORT}:494")
            elif key in BOOL_KEYS and value not in ("true", "false", "1", "0"):
                refuse(f"'{key}' must be a boolean, got '{value}'", f"{ORT}:548")
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
