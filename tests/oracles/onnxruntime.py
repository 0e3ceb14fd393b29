"""ONNX Runtime's GPU execution providers, for the provider options this tool passes: which keys
each release knows, how each value is parsed, what falls back to another provider instead of
failing, and which folders the TensorRT provider creates. Ported from microsoft/onnxruntime's
sources and read back from the onnxruntime-gpu wheels on PyPI (1.18.0, 1.19.0, 1.22.0, 1.23.2,
1.31.1; tests/test_ort_releases.py re-reads the key tables and messages from the wheels of the
oldest and newest release the extras allow, and opens real sessions with them).

Sources (paths in microsoft/onnxruntime):
- PYBIND = onnxruntime/python/onnxruntime_pybind_state.cc, GetExecutionProviderInstance: the
  Python binding parses every TensorRT-provider option itself. A switch is accepted only as
  "True"/"true"/"False"/"false", else ORT_THROW("[ERROR] [TensorRT] The value for the key 'K'
  should be 'True' or 'False'. Default value is 'False'."); a number goes through std::stoi
  ("should be a number" / "should be a positive integer number"); any other key is
  ORT_THROW("Invalid TensorRT EP option: ", key). Each release's messages are in its
  onnxruntime_pybind11_state.so verbatim; KEYS below is the set of keys those messages name.
- CUDA_INFO = onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc,
  CUDAExecutionProviderInfo::FromProviderOptions: a ProviderOptionsParser; a key it was not
  given is "Unknown provider option", a bool is read by TryParseStringWithClassicLocale
  (onnxruntime/core/common/parse_string.h), which for bool is `istream >> bool` in the classic
  locale without std::boolalpha: "0" and "1" only; cudnn_conv_algo_search is one of EXHAUSTIVE,
  HEURISTIC, DEFAULT (its EnumNameMapping).
- WRAPPER = onnxruntime/capi/onnxruntime_inference_collection.py as each wheel ships it:
  InferenceSession.__init__ sets `self._enable_fallback = True` whatever the caller passed
  (1.18.0 and 1.19.0 line 409, 1.22.0 line 462) until 1.23, which reads the keyword
  (`super().__init__(enable_fallback=int(kwargs.get("enable_fallback", 1)) == 1)`, 1.23.2 line
  463, 1.31.1 line 661). With fallback on, a provider that raises prints "EP Error ... Falling
  back to [...]" and the session is made again on the fallback list.
- TRT_EP = onnxruntime/core/providers/tensorrt/tensorrt_execution_provider.cc, the provider's
  constructor: engine and timing cache folders are made with fs::create_directory, one level
  ("Failed to create directory " + path when its parent is missing; the string is in every
  libonnxruntime_providers_tensorrt.so read).
- PROVIDER_BRIDGE = onnxruntime/core/session/provider_bridge_ort.cc and PYBIND
  CreateExecutionProviderInstance: a CUDA provider whose library cannot load is a warning
  ("Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 12.*") and the session
  comes up on the CPU, on every release read (measured with 1.19.0 and 1.31.1 on a machine
  without CUDA: no exception, get_providers() == ['CPUExecutionProvider']).
- SESSION = onnxruntime/core/session/inference_session.cc: with the session config entry
  session.disable_cpu_ep_fallback = 1, a node placed on the CPU provider fails the session
  ("...fallback to CPU EP has been explicitly disabled by the user."; in every wheel read).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PYBIND = "onnxruntime/python/onnxruntime_pybind_state.cc"
CUDA_INFO = "onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc"
WRAPPER = "onnxruntime/capi/onnxruntime_inference_collection.py"
TRT_EP = "onnxruntime/core/providers/tensorrt/tensorrt_execution_provider.cc"
PROVIDER_BRIDGE = "onnxruntime/core/session/provider_bridge_ort.cc"

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# The TensorRT-provider keys PYBIND parses, with the kind its message names (bool: "should be
# 'True' or 'False'"; int: "should be a number" or "a positive integer number"; the rest take a
# string), as the 1.18.0 wheel names them; later releases add keys.
TRT_KEYS_1_18 = {
    "device_id": "int", "user_compute_stream": "string", "trt_max_partition_iterations": "int",
    "trt_min_subgraph_size": "int", "trt_max_workspace_size": "int", "trt_fp16_enable": "bool",
    "trt_int8_enable": "bool", "trt_int8_calibration_table_name": "string",
    "trt_int8_use_native_calibration_table": "bool", "trt_dla_enable": "bool", "trt_dla_core": "int",
    "trt_dump_subgraphs": "bool", "trt_engine_cache_enable": "bool", "trt_engine_cache_path": "string",
    "trt_engine_cache_prefix": "string", "trt_engine_decryption_enable": "bool",
    "trt_engine_decryption_lib_path": "string", "trt_force_sequential_engine_build": "bool",
    "trt_context_memory_sharing_enable": "bool", "trt_layer_norm_fp32_fallback": "bool",
    "trt_timing_cache_enable": "bool", "trt_timing_cache_path": "string",
    "trt_force_timing_cache": "bool", "trt_detailed_build_log": "bool",
    "trt_build_heuristics_enable": "bool", "trt_sparsity_enable": "bool",
    "trt_builder_optimization_level": "int", "trt_auxiliary_streams": "int",
    "trt_tactic_sources": "string", "trt_extra_plugin_lib_paths": "string",
    "trt_profile_min_shapes": "string", "trt_profile_max_shapes": "string",
    "trt_profile_opt_shapes": "string", "trt_cuda_graph_enable": "bool",
    "trt_dump_ep_context_model": "bool", "trt_ep_context_file_path": "string",
    "trt_ep_context_embed_mode": "int"}
# (first release read that has them, keys): 1.19.0 is the first wheel read after 1.18.0
TRT_KEYS_ADDED = (
    ((1, 19), {"trt_engine_hw_compatible": "bool", "trt_onnx_model_folder_path": "string",
               "trt_weight_stripped_engine_enable": "bool"}),
    ((1, 23), {"trt_bf16_enable": "bool"}),
)
# The CUDA provider's keys (CUDA_INFO's provider_option_names, each found in the wheels'
# libonnxruntime_providers_cuda.so) and how each is parsed
CUDA_KEYS_1_18 = {
    "device_id": "int", "has_user_compute_stream": "bool", "gpu_mem_limit": "size",
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "do_copy_in_default_stream": "bool", "gpu_external_alloc": "size", "gpu_external_free": "size",
    "gpu_external_empty_cache": "size", "cudnn_conv_use_max_workspace": "bool",
    "enable_cuda_graph": "bool", "cudnn_conv1d_pad_to_nc1d": "bool", "tunable_op_enable": "bool",
    "tunable_op_tuning_enable": "bool", "tunable_op_max_tuning_duration_ms": "int",
    "enable_skip_layer_norm_strict_mode": "bool", "prefer_nhwc": "bool",
    "use_ep_level_unified_stream": "bool", "use_tf32": "bool"}
CUDA_KEYS_ADDED = (((1, 19), {"sdpa_kernel": "int"}), ((1, 22), {"fuse_conv_bias": "bool"}))
TRT_BOOLS = ("True", "true", "False", "false")
CUDA_BOOLS = ("0", "1")
FALLBACK_READ_SINCE = (1, 23)  # WRAPPER: the first release whose InferenceSession reads it
FOLDER_KEYS = ("trt_engine_cache_path", "trt_timing_cache_path")
OLDEST = (1, 18)


@dataclass(frozen=True)
class Finding:
    provider: str
    key: str
    kind: str  # "error": the session is refused; "degrade": it comes up, on something else
    message: str
    source: str


def release_tuple(release: str) -> tuple[int, int]:
    major, minor = release.split(".")[:2]
    return int(major), int(minor)


def keys(provider: str, release: str) -> dict:
    """The keys `provider` knows in `release`, each with how its value is parsed."""
    at = release_tuple(release)
    base, added = (TRT_KEYS_1_18, TRT_KEYS_ADDED) if provider == TRT else (CUDA_KEYS_1_18, CUDA_KEYS_ADDED)
    known = dict(base)
    for since, more in added:
        if at >= since:
            known.update(more)
    return known


def _int(value: str) -> bool:
    """std::stoi: optional whitespace and sign, then at least one digit (the rest is ignored)."""
    text = value.lstrip()
    text = text[1:] if text[:1] in "+-" else text
    return text[:1].isdigit()


def _value_problem(provider: str, key: str, kind, value: str) -> str | None:
    if provider == TRT:
        if kind == "bool" and value not in TRT_BOOLS:
            return (f"[ERROR] [TensorRT] The value for the key '{key}' should be 'True' or 'False'. "
                    "Default value is 'False'.")
        if kind == "int" and not _int(value):
            return f"[ERROR] [TensorRT] The value for the key '{key}' should be a number"
        return None
    if isinstance(kind, tuple) and value not in kind:
        return f'Failed to parse provider option "{key}" with value "{value}".'
    if kind == "bool" and value not in CUDA_BOOLS:
        return f'Failed to parse provider option "{key}" with value "{value}".'
    if kind in ("int", "size") and not (value.isdigit() or (kind == "int" and value[:1] == "-"
                                                               and value[1:].isdigit())):
        return f'Failed to parse provider option "{key}" with value "{value}".'
    return None


def check(release: str, providers: list, *, folder_exists=os.path.isdir,
          enable_fallback: int = 0) -> list[Finding]:
    """What onnxruntime-gpu `release` does with `providers` ([(name, {key: value})], as
    InferenceSession takes them) before any GPU library is asked: the options it refuses, and
    the settings under which a session made with `enable_fallback` comes up on another provider
    than asked. `folder_exists` answers for cache folders (the TensorRT provider makes only the
    last level)."""
    if release_tuple(release) < OLDEST:
        raise ValueError(f"onnxruntime {release} is older than this oracle ({OLDEST})")
    findings = []
    for name, options in providers:
        if name == CPU:
            continue
        known = keys(name, release)
        source = PYBIND if name == TRT else CUDA_INFO
        for key, value in options.items():
            if not isinstance(value, str):
                findings.append(Finding(name, key, "error", f"the value of '{key}' is not a string",
                                        source))
                continue
            if key not in known:
                said = (f"Invalid TensorRT EP option: {key}" if name == TRT
                        else f'Unknown provider option: "{key}".')
                findings.append(Finding(name, key, "error", said, source))
                continue
            problem = _value_problem(name, key, known[key], value)
            if problem:
                findings.append(Finding(name, key, "error", problem, source))
        if name == TRT:
            for key in FOLDER_KEYS:
                where = options.get(key)
                if where and not folder_exists(where) and not folder_exists(os.path.dirname(where) or "."):
                    findings.append(Finding(name, key, "error", f"Failed to create directory {where}",
                                            TRT_EP))
    refused = any(f.kind == "error" for f in findings)
    if refused and (enable_fallback or release_tuple(release) < FALLBACK_READ_SINCE):
        # WRAPPER: the error is printed and the session made again on its fallback list (CUDA
        # and CPU, or the CPU alone), with no exception
        findings.append(Finding(providers[0][0], "enable_fallback", "degrade",
                                "EP Error ... Falling back to [...] and retrying.", WRAPPER))
    return findings
