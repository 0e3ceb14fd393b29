"""DeepStream's gst-nvinfer, for what this tool writes: its config property parser, the engine
file name it builds itself, its INT8 fallback and its default classifier parser, ported from
the DeepStream sources (sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.cpp,
sources/libs/nvdsinfer/*) of releases 6.0 and 6.3, as mirrored (reformatted, so the lines are
the mirror's) in github.com/hiennguyen9874/deepstream-sources branches 6.0 and 6.3. DeepStream
7.x ships these sources only inside its SDK; their rules are assumed unchanged and unverified.

`check(text)` parses a config as GLib's GKeyFile does (`;` separates list items, booleans are
true/false/1/0) and returns the errors with which nvinfer refuses to start, and the degrades
after which it starts but runs something else.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass

PARSER = "gstnvinfer_property_parser.cpp"
MAX_BATCH_SIZE = 1024  # NVDSINFER_MAX_BATCH_SIZE, sources/includes/nvdsinfer_context.h:106
MAX_CHANNELS = 4  # _MAX_CHANNELS, nvdsinfer_context.h:100


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
    return lambda v: None if v in allowed else f"Error. Invalid value for '{{key}}':'{v}'"


def _at_least(low, words="Negative value specified for {key}"):
    return lambda v: None if v >= low else f"Error: {words}({v})"


# key -> (GKeyFile getter, value check, (6.0 line, 6.3 line) where the parser reads the key)
KEYS = {
    "gpu-id": (_int, _at_least(0), (554, 559)),
    "net-scale-factor": (_double, None, (735, 749)),
    "offsets": (_list(_double), lambda v: None if len(v) <= MAX_CHANNELS else
                f"Error. Maximum  length of {MAX_CHANNELS} is allowed for '{{key}}'", (739, 753)),
    "model-color-format": (_int, _choice({0, 1, 2}), (715, 729)),
    "onnx-file": (str, None, (991, 1005)),
    "model-engine-file": (str, None, (650, 664)),
    "int8-calib-file": (str, None, (663, 677)),
    "labelfile-path": (str, None, (543, 548)),
    "batch-size": (_int, lambda v: None if 1 <= v <= MAX_BATCH_SIZE else
                   f"Error: {{key}}({v}) should be in the range [1,{MAX_BATCH_SIZE}]", (588, 602)),
    "network-mode": (_int, _choice({0, 1, 2}), (633, 647)),
    "network-type": (_int, _choice({0, 1, 2, 3, 100}), (696, 710)),
    "process-mode": (_int, _choice({1, 2}), (301, 301)),
    "gie-unique-id": (_int, lambda v: None if v > 0 else f"Error: {{key}} ({v}) should be > 0",
                      (529, 534)),
    "infer-dims": (_list(_int), lambda v: None if len(v) == 3 else
                   f"Error. '{{key}}' array length is {len(v)}. Should be 3 as [c;h;w] order.",
                   (618, 632)),
    "maintain-aspect-ratio": (_bool, None, (352, 352)),
    "symmetric-padding": (_bool, None, (357, 357)),
    # NvBufSurfTransformInter_Nearest .. _Default (sources/includes/nvbufsurftransform.h:77-89)
    "scaling-filter": (_int, _choice(set(range(7))), (455, 455)),
    "scaling-compute-hw": (_int, _choice({0, 1, 2}), (437, 437)),
    "output-blob-names": (_list(str), None, (674, 688)),
    "classifier-async-mode": (_bool, None, (319, 319)),
    "classifier-threshold": (_double, _at_least(0.0), (1058, 1072)),
    "enable-dla": (_bool, None, (575, 580)),
    "use-dla-core": (_int, _at_least(0), (580, 585)),
    "interval": (_int, _at_least(0, "Negative value specified for interval"), (328, 328)),
}
# what a classifier needs to start: a model (onnx-file, or an engine to load)
REQUIRED = ("batch-size", "network-type")


def _cite(line_pair, release: str) -> str:
    line = line_pair[0] if release.startswith("6.0") else line_pair[1]
    return f"DeepStream {release} sources/gst-plugins/gst-nvinfer/{PARSER}:{line}"


def parse(text: str) -> dict[str, str]:
    """The [property] group as GKeyFile reads it: `#` comments, `key=value` lines."""
    config = configparser.ConfigParser(interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#",), strict=True)
    config.optionxform = str  # keys are case-sensitive in GKeyFile
    config.read_string(text)
    if not config.has_section("property"):
        raise ValueError("Could not find group property")
    return dict(config["property"])


def check(text: str, release: str = "6.3") -> list[Finding]:
    """nvinfer's verdict on a config file's text."""
    try:
        values = parse(text)
    except (configparser.Error, ValueError) as exc:
        return [Finding("", "error", str(exc), _cite((1143, 1157), release))]
    found = []
    for key, raw in values.items():
        if key not in KEYS:
            found.append(Finding(key, "degrade",
                                 f"Unknown or legacy key specified '{key}' for group [property]",
                                 _cite((476, 481), release)))
            continue
        getter, rule, lines = KEYS[key]
        try:
            value = getter(raw)
        except ValueError as exc:
            found.append(Finding(key, "error", f"Error while parsing config file: {exc}",
                                 _cite(lines, release)))
            continue
        problem = rule(value) if rule else None
        if problem:
            found.append(Finding(key, "error", problem.format(key=key), _cite(lines, release)))
    for key in REQUIRED:
        if key not in values:
            found.append(Finding(key, "error", f"{key} is not set", _cite(KEYS[key][2], release)))
    if "onnx-file" not in values and "model-engine-file" not in values:
        found.append(Finding("onnx-file", "error", "no model: neither onnx-file nor model-engine-file",
                             _cite(KEYS["onnx-file"][2], release)))
    if values.get("network-mode", "").strip() == "1" and "int8-calib-file" not in values:
        # nvdsinfer_model_builder.cpp (6.3: 1041): no calibrator, so INT8 becomes FP16
        found.append(Finding("int8-calib-file", "degrade",
                             "INT8 calibration file not specified. Trying FP16 mode.",
                             f"DeepStream {release} sources/libs/nvdsinfer/nvdsinfer_model_builder.cpp:1041"))
    return found


def engine_name(onnx_path: str, batch_size: int, network_mode: int, gpu_id: int = 0,
                dla_core: int | None = None) -> str:
    """The engine file nvinfer writes when it builds from the ONNX itself, beside the ONNX:
    nvdsinfer_model_builder.cpp:717-724 (6.3), with networkMode2Str (nvdsinfer_func_utils.cpp:159)."""
    device = f"dla{dla_core}" if dla_core is not None and dla_core >= 0 else f"gpu{gpu_id}"
    mode = {0: "fp32", 1: "int8", 2: "fp16"}[network_mode]
    return f"{onnx_path}_b{batch_size}_{device}_{mode}.engine"


def classifier_label(output, threshold: float) -> int | None:
    """The class nvinfer's default classifier parser attaches for one output vector, or None:
    it starts from a maximum probability of 0 and keeps a class whose value is above both the
    threshold and the best so far (nvdsinfer_context_impl_output_parsing.cpp:588-597, 6.3)."""
    best, label = 0.0, None
    for index, value in enumerate(output):
        if value > threshold and value > best:
            best, label = value, index
    return label


def labels(text: str) -> list[list[str]]:
    """A label file as nvinfer reads it: one output layer per non-empty line, its classes split
    at ';' (InferPostprocessor::parseLabelsFile, sources/libs/nvdsinfer/nvdsinfer_context_impl.cpp:
    470 in 6.0, 472 in 6.3)."""
    return [line.split(";") for line in text.split("\n") if line]
