"""DeepStream's gst-nvinfer, for what this tool writes: its config property parser, the rules by
which it reuses an engine or builds one (and where it writes that), its INT8 modes and its
default classifier parser, ported from the DeepStream sources of releases 7.1 (the target) and
6.3, as mirrored in github.com/thanhlnbka/deepstream-sample-apps (folders deepstream-7.1/ and
deepstream-6.3/, commit bcd0f10); every line cited is that mirror's.

`check(text, release, arch)` parses a config as GLib's GKeyFile does (`;` separates list items,
booleans are true/false/1/0) and returns the errors with which nvinfer refuses to start, and the
degrades after which it starts but runs something else. `start(...)` is one start of the
pipeline: the engine it loads or the one it builds, and where it writes that.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass

RELEASES = ("6.3", "7.1")
PARSER = "sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.cpp"
BUILDER = "sources/libs/nvdsinfer/nvdsinfer_model_builder.cpp"
CONTEXT = "sources/libs/nvdsinfer/nvdsinfer_context_impl.cpp"
FUNC_UTILS = "sources/libs/nvdsinfer/nvdsinfer_func_utils.cpp"
MAX_BATCH_SIZE = 1024  # NVDSINFER_MAX_BATCH_SIZE, sources/includes/nvdsinfer_context.h:107 (7.1)
MAX_CHANNELS = 4  # _MAX_CHANNELS, nvdsinfer_context.h:101 (7.1)


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str  # "error": nvinfer does not start; "degrade": it starts and does something else
    message: str
    source: str


def _int(value: str) -> int:
    if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
        raise ValueError(f"Value '{value}' cannot be interpreted as a number.")
    return int(value)


def _double(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"Value '{value}' cannot be interpreted as a number.") from None


def _bool(value: str) -> bool:
    if value.strip() not in ("true", "false", "1", "0"):
        raise ValueError(f"Value '{value}' cannot be interpreted as a boolean.")
    return value.strip() in ("true", "1")


def _list(convert):
    def parse(value: str):
        return [convert(v) for v in value.split(";") if v != ""]
    return parse


def _choice(allowed):
    return lambda v, release, arch: None if v in allowed(release, arch) else f"Error. Invalid value for '{{key}}':'{v}'"


def _fixed(*values):
    return lambda release, arch: set(values)


# network-mode: NvDsInferNetworkMode_FP32, _INT8, _FP16, and from 7.0 _BEST (INT8 and FP16)
NETWORK_MODES = {"6.3": {0, 1, 2}, "7.1": {0, 1, 2, 3}}
MODE_NAMES = {0: "fp32", 1: "int8", 2: "fp16", 3: "best"}  # networkMode2Str

# key -> (GKeyFile getter, value check, {release: the parser's line for the key}); no range
# check where nvinfer has none (gpu-id's device-count check is disabled by `&& 0`, use-dla-core
# is read as it is)
KEYS = {
    "process-mode": (_int, _choice(_fixed(1, 2)), {"6.3": 322, "7.1": 332}),
    "classifier-async-mode": (_bool, None, {"6.3": 341, "7.1": 351}),
    "interval": (_int, lambda v, r, a: None if v >= 0 else f"Error: Negative value ({v}) specified for interval",
                 {"6.3": 350, "7.1": 360}),
    "maintain-aspect-ratio": (_bool, None, {"6.3": 377, "7.1": 387}),
    "symmetric-padding": (_bool, None, {"6.3": 382, "7.1": 392}),
    # NvBufSurfTransformCompute_Default, _GPU, and _VIC only under #ifdef __aarch64__
    "scaling-compute-hw": (_int, _choice(lambda release, arch: {0, 1, 2} if arch == "aarch64" else {0, 1}),
                           {"6.3": 470, "7.1": 480}),
    # NvBufSurfTransformInter_Nearest .. _Default (sources/includes/nvbufsurftransform.h)
    "scaling-filter": (_int, _choice(_fixed(*range(7))), {"6.3": 488, "7.1": 498}),
    "gie-unique-id": (_int, lambda v, r, a: None if v > 0 else f"Error: {{key}} ({v}) should be > 0",
                      {"6.3": 567, "7.1": 577}),
    "labelfile-path": (str, None, {"6.3": 582, "7.1": 592}),
    "gpu-id": (_int, None, {"6.3": 594, "7.1": 604}),
    "enable-dla": (_bool, None, {"6.3": 617, "7.1": 627}),
    "use-dla-core": (_int, None, {"6.3": 622, "7.1": 632}),
    "batch-size": (_int, lambda v, r, a: None if 1 <= v <= MAX_BATCH_SIZE else
                   f"Error: {{key}}({v}) should be in the range [1,{MAX_BATCH_SIZE}]", {"6.3": 642, "7.1": 652}),
    "infer-dims": (_list(_int), lambda v, r, a: None if len(v) == 3 else
                   f"Error. '{{key}}' array length is {len(v)}. Should be 3 as [c;h;w] order.",
                   {"6.3": 674, "7.1": 684}),
    "network-mode": (_int, _choice(lambda release, arch: NETWORK_MODES[release]), {"6.3": 690, "7.1": 700}),
    "model-engine-file": (str, None, {"6.3": 707, "7.1": 718}),
    "int8-calib-file": (str, None, {"6.3": 721, "7.1": 732}),
    "output-blob-names": (_list(str), None, {"6.3": 733, "7.1": 744}),
    "network-type": (_int, _choice(_fixed(0, 1, 2, 3, 100)), {"6.3": 753, "7.1": 816}),
    "model-color-format": (_int, _choice(_fixed(0, 1, 2)), {"6.3": 772, "7.1": 835}),
    "net-scale-factor": (_double, None, {"6.3": 792, "7.1": 855}),
    "offsets": (_list(_double), lambda v, r, a: None if len(v) <= MAX_CHANNELS else
                f"Error. Maximum  length of {MAX_CHANNELS} is allowed for '{{key}}'", {"6.3": 797, "7.1": 860}),
    "onnx-file": (str, None, {"6.3": 1052, "7.1": 1115}),
    "classifier-threshold": (_double, lambda v, r, a: None if v >= 0 else
                             f"Error: Negative value specified for {{key}}({v:.2f})", {"6.3": 1120, "7.1": 1183}),
}
# every other key the parser reads (and so does not call unknown), by release: the [property]
# keys of the mirror's parser; 7.0 added the tensor dump and overwrite keys
OTHER_KEYS = {
    "6.3": {"classifier-type", "output-tensor-meta", "output-instance-mask", "secondary-reinfer-interval",
            "input-object-min-width", "input-object-min-height", "input-object-max-width",
            "input-object-max-height", "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
            "crop-objects-to-roi-boundary", "auto-inc-mem", "max-gpu-mem-per", "tensor-meta-pool-size",
            "force-implicit-batch-dim", "workspace-size", "output-io-formats", "layer-device-precision",
            "mean-file", "custom-lib-path", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name",
            "engine-create-func-name", "custom-network-config", "model-file", "proto-file", "uff-file",
            "input-dims", "uff-input-dims", "network-input-order", "uff-input-order", "uff-input-blob-name",
            "tlt-encoded-model", "tlt-model-key", "num-detected-classes", "enable-dbscan", "cluster-mode",
            "segmentation-threshold", "segmentation-output-order", "input-tensor-from-meta",
            "parse-classifier-func-name", "is-classifier"},
}
OTHER_KEYS["7.1"] = OTHER_KEYS["6.3"] | {"dump-input-tensor", "dump-output-tensor", "overwrite-input-tensor",
                                         "overwrite-output-tensor", "ip-tensor-file", "op-tensor-files",
                                         "disable-output-host-copy", "raw-output-file-write"}
# where the parser says a key is unknown (a warning: nvinfer starts without it)
UNKNOWN_LINE = {"6.3": 514, "7.1": 524}
GROUP_LINE = {"6.3": 1210, "7.1": 1283}  # "Could not find group property"
# NvDsInferContext_ResetInitParams: batch 1, a detector, when the config does not say
DEFAULTS_LINE = {"6.3": 2234, "7.1": 2341}
# the INT8 modes without a calibrator: the whole network in FP16
INT8_FALLBACK_LINE = {"6.3": 1209, "7.1": 923}
SUGGESTED_PATH_LINE = {"6.3": 830, "7.1": 544}
MAX_BATCH_LINE = {"6.3": 1920, "7.1": 2026}  # checkBackendParams: engine max batch < batch-size
DIMS_LINE = {"6.3": 1944, "7.1": 2050}  # checkBackendParams: the engine cannot take infer-dims
REBUILD_LINE = {"6.3": 2083, "7.1": 2187}  # generateBackendContext: "try rebuild"
SERIALIZE_LINE = {"6.3": 2026, "7.1": 2130}


def _cite(file: str, release: str, line: int) -> str:
    return f"DeepStream {release} {file}:{line}"


def parse(text: str) -> dict[str, str]:
    """The [property] group as GKeyFile reads it: `#` comments, `key=value` lines."""
    config = configparser.ConfigParser(interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#",), strict=True)
    config.optionxform = str  # keys are case-sensitive in GKeyFile
    config.read_string(text)
    if not config.has_section("property"):
        raise ValueError("Could not find group property")
    return dict(config["property"])


def check(text: str, release: str = "7.1", arch: str = "aarch64") -> list[Finding]:
    """nvinfer's verdict on a config file's text, on a Jetson (aarch64) or an x86 dGPU."""
    try:
        values = parse(text)
    except (configparser.Error, ValueError) as exc:
        return [Finding("", "error", str(exc), _cite(PARSER, release, GROUP_LINE[release]))]
    found = []
    for key, raw in values.items():
        if key not in KEYS:
            if key not in OTHER_KEYS[release]:
                found.append(Finding(key, "degrade",
                                     f"Unknown or legacy key specified '{key}' for group [property]",
                                     _cite(PARSER, release, UNKNOWN_LINE[release])))
            continue
        getter, rule, lines = KEYS[key]
        try:
            value = getter(raw)
        except ValueError as exc:
            found.append(Finding(key, "error", f"Error while parsing config file: {exc}",
                                 _cite(PARSER, release, lines[release])))
            continue
        problem = rule(value, release, arch) if rule else None
        if problem:
            found.append(Finding(key, "error", problem.format(key=key), _cite(PARSER, release, lines[release])))
    if "network-type" not in values:
        found.append(Finding("network-type", "degrade", "network-type not set: nvinfer runs the "
                             "model as a detector (NvDsInferNetworkType_Detector)",
                             _cite(CONTEXT, release, DEFAULTS_LINE[release])))
    if "onnx-file" not in values and "model-engine-file" not in values:
        found.append(Finding("onnx-file", "error", "no model: neither onnx-file nor model-engine-file",
                             _cite(PARSER, release, KEYS["onnx-file"][2][release])))
    if values.get("network-mode", "").strip() in ("1", "3") and "int8-calib-file" not in values:
        found.append(Finding("int8-calib-file", "degrade",
                             "INT8 calibration file not specified. Trying FP16 mode.",
                             _cite(BUILDER, release, INT8_FALLBACK_LINE[release])))
    return found


def engine_name(onnx_path: str, batch_size: int, network_mode: int, gpu_id: int = 0,
                dla_core: int | None = None) -> str:
    """The engine file nvinfer writes when it builds from the ONNX itself, beside the ONNX:
    suggestedPathName (nvdsinfer_model_builder.cpp 7.1:544-546, 6.3:830-832), with
    networkMode2Str (nvdsinfer_func_utils.cpp 7.1:187-206: fp32, int8, fp16, best)."""
    device = f"dla{dla_core}" if dla_core is not None and dla_core >= 0 else f"gpu{gpu_id}"
    return f"{onnx_path}_b{batch_size}_{device}_{MODE_NAMES[network_mode]}.engine"


@dataclass(frozen=True)
class Engine:
    """What nvinfer's checkBackendParams reads of an engine: its largest batch and the input
    (c, h, w) its profile takes."""
    max_batch: int
    dims: tuple[int, int, int]


@dataclass(frozen=True)
class Start:
    action: str  # "reuse": the model-engine-file loaded; "build": built from onnx-file
    engine: str  # the file loaded, or the one the build was written to ("" if it could not be)
    reason: str
    source: str


def start(config_path: str, engines: dict[str, Engine], writable, release: str = "7.1") -> Start:
    """One start of nvinfer with the config at `config_path` (paths in it are relative to its
    folder, get_absolute_file_path): `engines` holds the engine files that exist, by absolute
    path, and `writable(folder)` says whether the build can be saved there. The rules of
    generateBackendContext (nvdsinfer_context_impl.cpp 7.1:2172-2215, 6.3:2068-2111): load
    model-engine-file if it exists and checkBackendParams accepts it (its max batch at least
    batch-size, its profile taking infer-dims); else build from the ONNX, and serialize the build
    to the suggested path beside the ONNX, never to model-engine-file."""
    with open(config_path) as handle:
        values = parse(handle.read())
    folder = os.path.dirname(os.path.abspath(config_path))

    def absolute(key):
        return os.path.normpath(os.path.join(folder, values[key])) if key in values else ""

    batch = int(values.get("batch-size", "1"))
    dims = tuple(int(v) for v in values["infer-dims"].split(";") if v) if "infer-dims" in values else None
    wanted = absolute("model-engine-file")
    if wanted in engines:
        engine = engines[wanted]
        if engine.max_batch < batch:
            reason = f"Backend has maxBatchSize {engine.max_batch} whereas {batch} has been requested"
            cite = _cite(CONTEXT, release, MAX_BATCH_LINE[release])
        elif dims is not None and engine.dims != dims:
            reason = f"backend can not support dims:{'x'.join(map(str, dims))}"
            cite = _cite(CONTEXT, release, DIMS_LINE[release])
        else:
            return Start("reuse", wanted, "Use deserialized engine model", _cite(CONTEXT, release, REBUILD_LINE[release]))
    else:
        reason = f"deserialize backend context from engine from file :{wanted} failed, try rebuild"
        cite = _cite(CONTEXT, release, REBUILD_LINE[release])
    mode = int(values.get("network-mode", "0"))
    if mode in (1, 3) and "int8-calib-file" not in values:
        mode = 2
    dla = int(values.get("use-dla-core", "-1")) if _bool(values.get("enable-dla", "0")) else -1
    built = engine_name(absolute("onnx-file"), batch, mode, int(values.get("gpu-id", "0")), dla)
    written = built if writable(os.path.dirname(built)) else ""
    return Start("build", written, reason, cite)


def classifier_label(output, threshold: float) -> int | None:
    """The class nvinfer's default classifier parser attaches for one output vector, or None:
    it starts from a maximum probability of 0 and keeps a class whose value is above both the
    threshold and the best so far (sources/libs/nvdsinfer/nvdsinfer_context_impl_output_parsing.cpp
    7.1:628-641)."""
    best, label = 0.0, None
    for index, value in enumerate(output):
        if value > threshold and value > best:
            best, label = value, index
    return label


def labels(text: str) -> list[list[str]]:
    """A label file as nvinfer reads it: one output layer per non-empty line, its classes split
    at ';' (InferPostprocessor::parseLabelsFile, sources/libs/nvdsinfer/nvdsinfer_context_impl.cpp
    7.1:541-564)."""
    return [line.split(";") for line in text.split("\n") if line]
