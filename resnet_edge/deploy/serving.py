"""Serving configurations from the model card and the batch profile: a Triton model repository
and a DeepStream nvinfer classifier. Getting preprocessing and batch settings right there is
where deployments quietly lose accuracy, so both are written from the one card, never by hand.

Standard library only: bundles carry this file in lib/, and build_engine.sh runs it on the
device to put a freshly built engine where Triton or DeepStream looks for it. Over 400 lines
for the same reason: the device loads one file that writes and reads both servers' configs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

TRITON_DIR = "triton"            # in the bundle: the onnxruntime model, ready to serve
TRITON_PLAN_DIR = "triton-plan"  # in the bundle: config of the TensorRT plan model, no plan yet
DEEPSTREAM_DIR = "deepstream"
ACCELERATORS = ("none", "fp16", "int8")
PRECISIONS = ("fp32", "tf32", "fp16", "int8")  # the engines build_engine.sh builds
# nvinfer builds network-mode=0 with TensorRT's defaults, TF32 on (nvdsinfer_model_builder.cpp
# clears no flag), so the engine under its fp32 name is what build_engine.sh calls tf32; an
# IEEE fp32 engine there would compute otherwise than the one nvinfer builds under that name
NVINFER_FP32 = "tf32"
# nvinfer's network-mode per DeepStream release (gstnvinfer_property_parser.cpp, NETWORK_MODE):
# 6.x takes 0 fp32, 1 int8, 2 fp16. 7.0 added 3 (NvDsInferNetworkMode_BEST), which sets both
# the INT8 and FP16 builder flags where 1 sets INT8 alone (nvdsinfer_model_builder.cpp 7.1:
# 902-913), so layers without scales run in fp16 as build_engine.sh's `--int8 --fp16` have
# them, not in fp32
NETWORK_MODES = {"6": {"fp32": 0, "int8": 1, "fp16": 2}, "7": {"fp32": 0, "int8": 3, "fp16": 2}}
MODE_NAMES = {0: "fp32", 1: "int8", 2: "fp16", 3: "best"}  # networkMode2Str, in engine names


def network_mode(precision: str, deepstream: str) -> int:
    return NETWORK_MODES[deepstream.split(".")[0]][precision]


try:
    from .archive import NVINFER_ENGINE, PLAIN_NAME
except ImportError:  # as lib/serving.py in a bundle
    sys.dont_write_bytecode = True  # no lib/__pycache__ in the bundle, whose manifest lists every file
    from archive import NVINFER_ENGINE, PLAIN_NAME


# control characters (C0, DEL, C1) and every line break str.splitlines() knows (NEL is C1; the
# Unicode line and paragraph separators are not controls): a reader that splits lines would
# read one label as two
_LINE_BREAKS = "\u2028\u2029"


def _controls(value: str, also: str = "") -> list[str]:
    return sorted({repr(c) for c in value
                   if ord(c) < 32 or 127 <= ord(c) <= 159 or c in _LINE_BREAKS or c in also})


def name_problems(bundle: str, class_names: list[str], server: str | None,
                  output_name: str) -> list[str]:
    """What in these names a bundle's files cannot carry: label files are one class per line
    (Triton, and labels.txt for every target) or one line split at ';' (nvinfer), and an
    nvinfer config is GKeyFile lines, where a newline in a value starts a key of its own."""
    problems = []
    # the bundle's name becomes its top folder, the <name>.device folder beside it and paths
    # inside nvinfer configs and README's shell lines
    if not PLAIN_NAME.fullmatch(bundle):
        problems.append(f"the bundle name {bundle!r} is not a plain file name (letters, digits "
                        "and . _ + -, a letter or digit first), and configs and shell lines name "
                        "it; rename the work directory (bundles are named <work dir>-<target>)")
    separators = ";" if server == "deepstream" else ""
    for index, name in enumerate(class_names):
        bad = _controls(name, separators)
        if bad:
            where = ("nvinfer's label file separates classes with ';'" if ";" in name and separators
                     else "a label file holds one class per line")
            problems.append(f"class {index} name {name!r} holds {', '.join(bad)}, and {where}; "
                            "rename the class (its folder, or the card's class_names)")
    if server == "deepstream":
        bad = _controls(output_name, ";")
        if bad or output_name != output_name.strip():
            problems.append(f"the model's output name {output_name!r} cannot be an nvinfer "
                            "output-blob-names value (no ';', control characters or edge spaces); "
                            "re-export the model")
    return problems


def model_name(name: str) -> str:
    """A Triton model name (a folder name) from a work directory's name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")
    return cleaned or "model"


# ---- Triton ---------------------------------------------------------------------------------

def triton_config(name: str, platform: str, *, input_name: str, input_dims: list[int],
                  output_name: str, output_dims: list[int], profile: dict,
                  accelerator: str = "none", engine_cache: str = "") -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig). A dynamic batch profile
    becomes max_batch_size and dynamic batching preferring the opt batch; a static one is
    max_batch_size 0 with the batch in the dims, as Triton requires. With an accelerator,
    `engine_cache` is where ONNX Runtime keeps the TensorRT engines it builds."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; use {', '.join(ACCELERATORS)}")
    static = profile["static"]
    batch = [] if not static else [profile["max"]]
    lines = [f"name: {_pbtxt(name)}", f"platform: {_pbtxt(platform)}",
             f"max_batch_size: {0 if static else profile['max']}",
             "input [", "  {", f"    name: {_pbtxt(input_name)}", "    data_type: TYPE_FP32",
             f"    dims: {_dims(batch + input_dims)}", "  }", "]",
             "output [", "  {", f"    name: {_pbtxt(output_name)}", "    data_type: TYPE_FP32",
             f"    dims: {_dims(batch + output_dims)}",
             '    label_filename: "labels.txt"', "  }", "]"]
    if not static:
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {profile['opt']} ]",
                  "  max_queue_delay_microseconds: 100", "}"]
    if accelerator != "none":
        # ONNX Runtime's TensorRT execution provider, as Triton's onnxruntime backend names it
        # (src/onnxruntime.cc): one optimization profile over the batch profile, so batches
        # that dynamic batching forms never rebuild the engine, and an engine cache, so a model
        # load reuses the engine built before
        # ... and a timing cache beside the engines, so a rebuild (a new profile, a TensorRT
        # upgrade) reuses the tactic timings instead of measuring every layer again
        params = {"precision_mode": accelerator.upper(), "max_workspace_size_bytes": "1073741824",
                  "trt_engine_cache_enable": "true", "trt_engine_cache_path": engine_cache,
                  "trt_timing_cache_enable": "true", "trt_timing_cache_path": engine_cache}
        if not static:
            shape = "x".join(str(d) for d in input_dims)
            params.update({f"trt_profile_{which}_shapes": f"{input_name}:{profile[key]}x{shape}"
                           for which, key in (("min", "min"), ("opt", "opt"), ("max", "max"))})
        lines += ["optimization {", "  execution_accelerators {",
                  "    gpu_execution_accelerator : [ {", '      name : "tensorrt"',
                  *(f"      parameters {{ key: {_pbtxt(k)} value: {_pbtxt(v)} }}"
                    for k, v in params.items()),
                  "    } ]", "  }", "}"]
    return "\n".join(lines) + "\n"


def _pbtxt(value: str) -> str:
    """A protobuf text-format string literal: the escapes text_format reads back (quote,
    backslash, and octal for every byte outside printable ASCII), so a tensor name cannot close
    its string and write fields of its own."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in ('"', "\\", "'"):
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


# where a tritonserver image (and a TensorRT install) keeps libnvinfer.so.<major>.<minor>.<patch>
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/tensorrt/lib",
            "/usr/lib64")


def server_tensorrt(lib_dirs=LIB_DIRS) -> str | None:
    """The TensorRT version of the libnvinfer this machine's server loads, or None if none."""
    found = []
    for folder in lib_dirs:
        for path in Path(folder).glob("libnvinfer.so.*.*.*"):
            match = re.fullmatch(r"libnvinfer\.so\.(\d+\.\d+\.\d+)", path.name)
            if match:
                found.append(tuple(int(p) for p in match[1].split(".")))
    return ".".join(map(str, max(found))) if found else None


def plan_mismatch(plan_tensorrt: str | None, server: str | None) -> str | None:
    """Why Triton would refuse a plan: it runs only on the TensorRT (major.minor.patch) that
    built it, and a pip-installed Python tensorrt may not be the server's."""
    if not plan_tensorrt or not server:
        return None
    if plan_tensorrt.split(".")[:3] == server.split(".")[:3]:
        return None
    return (f"the plan was built with TensorRT {plan_tensorrt}, but this machine's server loads "
            f"TensorRT {server} (libnvinfer), which refuses it; build inside the tritonserver "
            f"image you serve with, with its own TensorRT (pip install 'tensorrt=={server}' "
            "if its Python lacks it)")


def install_plan(bundle: Path, engine: Path, device: Path, server: str | None = None) -> Path:
    """Put `engine` into <device>/triton/<name>_trt/1/model.plan beside the bundle's config, so
    `tritonserver --model-repository <bundle>/triton --model-repository <device>/triton`
    serves both models; refused when `server` (the TensorRT the server loads) did not build
    it."""
    try:
        built = json.loads(engine.with_suffix(".json").read_text()).get("tensorrt")
    except (OSError, ValueError):
        built = None
    problem = plan_mismatch(built, server)
    if problem:
        raise ValueError(problem)
    name = json.loads((bundle / TRITON_PLAN_DIR / "model.json").read_text()).get("name")
    if not isinstance(name, str) or name != model_name(name):
        raise ValueError(f"{TRITON_PLAN_DIR}/model.json names the model {name!r}, which is not a "
                         "plain folder name; the bundle is damaged")
    target = device / TRITON_DIR / name
    (target / "1").mkdir(parents=True, exist_ok=True)
    for name in ("config.pbtxt", "labels.txt"):
        shutil.copyfile(bundle / TRITON_PLAN_DIR / name, target / name)
    shutil.copyfile(engine, target / "1" / "model.plan")
    return target / "1" / "model.plan"


# ---- DeepStream -----------------------------------------------------------------------------

def nvinfer_scaling(mean, std) -> tuple[float, list[float]]:
    """(net-scale-factor, offsets) with which nvinfer's y = net-scale-factor * (x - offsets) on
    RGB pixels in 0..255 equals the model's (x / 255 - mean) / std. nvinfer has one scale for
    every channel, so a per-channel std cannot be said: ValueError, and the answer is to fold
    the normalization into the graph."""
    if max(std) - min(std) > 1e-9 * max(std):
        raise ValueError(f"std {list(std)} differs per channel, and nvinfer applies one scale to "
                         "all channels; export with --fold-normalization (the model then takes "
                         "RGB in 0..255) and bundle that")
    return 1.0 / (255.0 * std[0]), [255.0 * m for m in mean]


def scaling_filter(interpolation: str, antialias: bool) -> int:
    """The card's resize -> nvinfer's scaling-filter (NvBufSurfTransform_Inter, nvbufsurftransform.h:
    0 Nearest, 1 Bilinear, 2 Algo1 = GPU cubic / VIC 5-tap, 3 Algo2 = GPU super-sampling / VIC
    10-tap). nvinfer shrinks whole frames (720p, 1080p) to the input size: the card's antialiased
    resize (torchvision's, which averages each output pixel's footprint) is super-sampling, not
    bilinear's four taps, which alias at those ratios. nearest and nearest-exact sample pixel
    centres, as Nearest does on the GPU."""
    if interpolation.startswith("nearest"):
        return 0
    if antialias:
        return 3
    return {"bilinear": 1, "bicubic": 2}[interpolation]


def nvinfer_engine_name(onnx_file: str, batch_size: int, mode: int, dla_core: int | None = None) -> str:
    """The name nvinfer gives an engine it builds from `onnx_file`, beside it
    (nvdsinfer_model_builder.cpp 7.1:544-546: <model>_b<batch>_<gpu0|dlaN>_<mode>.engine, mode
    as networkMode2Str says it); ours carry the same name in the same place."""
    device = "gpu0" if dla_core is None else f"dla{dla_core}"
    return f"{onnx_file}_b{batch_size}_{device}_{MODE_NAMES[mode]}.engine"


def nvinfer_config(*, preprocess: dict, num_classes: int, mode: int, batch_size: int,
                   engine: str, onnx: str, calibration: str | None, labels: str,
                   output_name: str, threshold: float, dla_core: int | None = None) -> str:
    """A primary classifier's [property] group; paths are relative to the config's folder.

    The model ends in a Softmax (export --softmax): nvinfer's default classifier parser keeps
    the class whose output is above both classifier-threshold and every other class, starting
    from 0, so it needs probabilities. int8 names the calibration cache too: with no
    int8-calib-file nvinfer turns INT8 into FP16 when it builds the engine itself, and a Q/DQ
    model ignores the cache's scales anyway."""
    scale, offsets = nvinfer_scaling(preprocess["mean"], preprocess["std"])
    size = preprocess["input_size"]
    interpolation = preprocess["interpolation"]
    scaling = scaling_filter(interpolation, preprocess.get("antialias", True))
    lines = [
        "# Written by resnet-edge from the model card: do not edit the preprocessing by hand.",
        "# nvinfer computes y = net-scale-factor * (x - offsets) on RGB pixels in 0..255, which is",
        "# the model's own normalization. It scales the whole frame to the input size, with no",
        f"# center crop (the model was trained on a {size} px center crop of a {preprocess['resize']} px",
        "# resize): crop upstream (nvvideoconvert src-crop, nvdspreprocess ROIs) when frames are",
        "# not what the model was trained on; maintain-aspect-ratio=1 pads instead of stretching.",
        f"# scaling-filter {scaling} is nvinfer's match for the card's '{interpolation}' resize"
        f"{' (antialiased)' if preprocess.get('antialias', True) else ''}, on the GPU",
        "# (scaling-compute-hw=1): a Jetson's default scaler is VIC, whose filters differ.",
        "# model-engine-file is where nvinfer writes the engine it builds on its first start",
        "# (beside the ONNX file), so later starts load it; build_engine.sh puts its engine there.",
        "# The model outputs probabilities (Softmax in the graph): a label is attached when its",
        f"# probability is above classifier-threshold ({threshold:g}).",
        "[property]", "gpu-id=0",
        f"net-scale-factor={scale!r}", f"offsets={';'.join(repr(o) for o in offsets)}",
        "model-color-format=0",
        f"onnx-file={onnx}", f"model-engine-file={engine}",
        *([f"int8-calib-file={calibration}"] if calibration else []),
        f"labelfile-path={labels}", f"batch-size={batch_size}",
        f"network-mode={mode}",
        *(["enable-dla=1", f"use-dla-core={dla_core}"] if dla_core is not None else []),
        "network-type=1", "process-mode=1", "gie-unique-id=1",
        f"infer-dims=3;{size};{size}", "maintain-aspect-ratio=0",
        f"scaling-filter={scaling}", "scaling-compute-hw=1",
        f"output-blob-names={output_name}", "classifier-async-mode=0",
        f"classifier-threshold={threshold!r}", "",
        f"# {num_classes} classes, labels in {labels}",
    ]
    return "\n".join(lines) + "\n"


def nvinfer_labels(names: list[str]) -> str:
    """A classifier's label file: one line per output layer, the classes separated by ';'
    (names holding either were refused by name_problems)."""
    return ";".join(names) + "\n"


def deepstream_app_config(infer_config: str, batch_size: int, size: int) -> str:
    """The smallest deepstream-app configuration around the classifier: one file source, the
    classifier as primary GIE, on-screen labels on (with them off, swapping the fakesink for a
    display showed video and no class), a fakesink (swap the [sink0] type for a display). The
    [osd] keys are those of DeepStream's sample configs."""
    return "\n".join([
        "# deepstream-app -c deepstream_app_config.txt (set [source0] uri to your video first)",
        "[application]", "enable-perf-measurement=1", "perf-measurement-interval-sec=5", "",
        "[source0]", "enable=1", "type=3", "uri=file:///opt/nvidia/deepstream/deepstream/samples/streams/sample_720p.mp4",
        "num-sources=1", "gpu-id=0", "",
        "[streammux]", "gpu-id=0", f"batch-size={batch_size}", "batched-push-timeout=40000",
        # the source's own size (sample_720p.mp4): streammux scales every frame to this, and
        # another aspect ratio would stretch frames before nvinfer scales them again
        "width=1280", "height=720", "live-source=0", "",
        "[primary-gie]", "enable=1", "gpu-id=0", f"batch-size={batch_size}", "gie-unique-id=1",
        f"config-file={infer_config}", "",
        "[osd]", "enable=1", "gpu-id=0", "border-width=2", "text-size=15", "text-color=1;1;1;1",
        "text-bg-color=0.3;0.3;0.3;1", "font=Serif", "show-clock=0", "",
        "[sink0]", "enable=1", "type=1", "sync=0", "",
        "[tests]", "file-loop=0", ""])


def nvinfer_config_name(precision: str, dla_core: int | None = None) -> str:
    return f"config_infer_{precision}{'' if dla_core is None else f'_dla{dla_core}'}.txt"


def _property_group(text: str) -> dict[str, str]:
    """The [property] group of an nvinfer config, read as GLib's GKeyFile reads it (nvinfer
    loads its config with g_key_file_load_from_file): '#' lines are comments, a group runs to
    the next [header], and "Space before and after the '=' character are ignored" (GLib's
    KeyFile documentation, docs.gtk.org/glib/struct.KeyFile.html); a key repeated in a group:
    the last one wins."""
    values, group = {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            group = stripped[1:-1]
        elif group == "property" and "=" in stripped:
            key, _, value = stripped.partition("=")
            values[key.strip()] = value.strip()
    return values


def install_engine(bundle: Path, engine: Path, precision: str, dla_core: int | None) -> Path | None:
    """Copy `engine` to the model-engine-file of the bundle's nvinfer config for `precision`
    (on `dla_core`): beside the ONNX file, under the name nvinfer gives the engine it builds
    itself, where it reads it on every start; None when the bundle has no config for that
    engine."""
    config = bundle / DEEPSTREAM_DIR / nvinfer_config_name(precision, dla_core)
    if not config.is_file():
        return None
    values = _property_group(config.read_text())
    if not values.get("model-engine-file"):
        raise ValueError(f"{config.name} names no model-engine-file, so nvinfer would not load "
                         "the engine; the bundle is damaged: make it again with `resnet-edge bundle`")
    target = (config.parent / values["model-engine-file"]).resolve()
    if target.parent != bundle.resolve() or not NVINFER_ENGINE.fullmatch(target.name):
        raise ValueError(f"{config.name} names model-engine-file {values['model-engine-file']}, "
                         "not an nvinfer engine beside the bundle's ONNX files; the bundle is damaged")
    shutil.copyfile(engine, target)
    return target


def main(argv=None) -> int:
    try:  # as lib/serving.py in a bundle
        import trt_rules
    except ImportError:
        from ..runtime import trt_rules
    parser = argparse.ArgumentParser(description="Put a built engine where Triton or DeepStream "
                                     "looks for it (run by build_engine.sh).")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--engine", type=Path, required=True)
    parser.add_argument("--precision", required=True, choices=PRECISIONS)
    args = parser.parse_args(argv)
    bundle, device = args.bundle.resolve(), trt_rules.device_dir(args.bundle)
    if (bundle / TRITON_PLAN_DIR / "model.json").is_file():
        try:
            print(f"Triton: {install_plan(bundle, args.engine, device, server_tensorrt())}")
        except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if (bundle / DEEPSTREAM_DIR).is_dir():
        try:
            try:
                dla_core = trt_rules.read_engine_meta(args.engine).get("dla_core")
            except trt_rules.EngineError:  # trtexec built it where Python has no TensorRT
                dla_core = None
            if args.precision == "fp32":
                print("DeepStream: not installed: nvinfer builds its fp32 engine (network-mode=0) "
                      "with TF32 on, TensorRT's default, and this one is IEEE fp32; "
                      f"./build_engine.sh {NVINFER_FP32} builds the engine nvinfer's fp32 config loads")
                return 0
            mode = "fp32" if args.precision == NVINFER_FP32 else args.precision
            installed = install_engine(bundle, args.engine, mode, dla_core)
        except (ValueError, OSError, trt_rules.EngineError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"DeepStream: {installed}" if installed else
              f"DeepStream: no nvinfer config uses a {args.precision} engine on DLA core "
              f"{dla_core}; the bundle's configs are for the GPU and DLA core 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
