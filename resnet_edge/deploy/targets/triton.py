"""Triton Inference Server: the engine bundle plus a model repository (`triton/<name>`, the
onnxruntime model servable as it is) and the config of a TensorRT plan model that
build_engine.sh builds in NVIDIA's TensorRT container of the server's release (tensorrt:<yy.mm>-py3
ships the TensorRT that tritonserver:<yy.mm>-py3 loads). A plan loads only on the TensorRT that
built it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...calibration import INT8_NAME
from ...errors import BadInput
from ...export import ONNX_NAME
from .. import serving
from .base import Packing, Target

MOUNT = "/w"  # where README's docker lines mount the folder holding the bundle


@dataclass(frozen=True)
class Triton(Target):
    serve = "triton"
    takes = {"triton_accelerator": "none"}

    def check_options(self, options: dict, precisions: list[str], workdir: Path) -> None:
        accelerator = options["triton_accelerator"]
        if accelerator not in serving.ACCELERATORS:
            raise BadInput(f"unknown --triton-accelerator {accelerator!r}; use "
                           f"{', '.join(serving.ACCELERATORS)}")
        if accelerator == "int8" and "int8" not in precisions:
            raise BadInput(f"--triton-accelerator int8 needs the int8 model; run `resnet-edge "
                           f"calibrate {workdir}` first")

    def add_files(self, packing: Packing) -> dict:
        """triton/<name>: the onnxruntime model, servable as it is; triton-plan/: the config of
        <name>_trt, whose model.plan build_engine.sh builds and installs beside the bundle."""
        accelerator = packing.options["triton_accelerator"]
        name = serving.model_name(packing.workdir.name)
        graph = packing.graph
        weights = {i.name for i in graph.initializer}
        tensor_in = next(i for i in graph.input if i.name not in weights)
        tensor_out = graph.output[0]

        def dims(value):
            return [d.dim_value for d in value.type.tensor_type.shape.dim][1:]
        shapes = dict(input_name=tensor_in.name, input_dims=dims(tensor_in), output_name=tensor_out.name,
                      output_dims=dims(tensor_out), profile=packing.profile)
        model_file = INT8_NAME if accelerator == "int8" else ONNX_NAME
        repo = packing.stage / serving.TRITON_DIR / name
        (repo / "1").mkdir(parents=True)
        shutil.copy2(packing.workdir / model_file, repo / "1" / "model.onnx")
        for side in packing.sides[model_file]:  # found beside the model, as written
            (repo / "1" / side).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(packing.workdir / side, repo / "1" / side)
        # outside the bundle (whose every file is listed), beside it as the README mounts it
        cache = f"{MOUNT}/{packing.stage.name}.device/triton-trt-cache/{name}"
        (repo / "config.pbtxt").write_text(serving.triton_config(name, "onnxruntime_onnx",
                                                                 accelerator=accelerator,
                                                                 engine_cache=cache, **shapes))
        plan = packing.stage / serving.TRITON_PLAN_DIR
        plan.mkdir()
        (plan / "config.pbtxt").write_text(serving.triton_config(f"{name}_trt", "tensorrt_plan", **shapes))
        (plan / "model.json").write_text(json.dumps({"name": f"{name}_trt"}) + "\n")
        for folder in (repo, plan):
            (folder / "labels.txt").write_text("\n".join(packing.names) + "\n")
        card = packing.card
        return {"server": "triton", "model": name, "plan_model": f"{name}_trt",
                "model_file": model_file, "accelerator": accelerator,
                "input": {"name": tensor_in.name, "dims": dims(tensor_in), "layout": "NCHW", "channels": "RGB",
                          "batched": not packing.profile["static"],
                          "values": "0..255" if card.folded_normalization else
                          f"(x / 255 - mean) / std, mean {list(card.preprocess.mean)}, std {list(card.preprocess.std)}"},
                "output": {"name": tensor_out.name, "what": card.output}}

    def readme(self, root: str, serve: dict | None) -> str:
        tensor = serve["input"]
        batch = ("the batch dimension first (max_batch_size), then " if tensor["batched"]
                 else "the export's one batch size first (max_batch_size 0, the batch in the dims), then ")
        int8 = ("\n`precision_mode INT8` turns on TensorRT's INT8 alone (the backend sets "
                "`trt_int8_enable`, no FP16): what the Q/DQ model leaves without int8 scales runs "
                "in FP32. `--triton-accelerator fp16` runs the fp32 model in FP16 instead.\n"
                if serve["accelerator"] == "int8" else "")
        cache = f"{root}.device/triton-trt-cache/{serve['model']}"
        accelerated = serve["accelerator"] != "none"
        # ONNX Runtime's TensorRT provider creates only the last folder of its cache path, and
        # the container cannot create the mount's folders for it
        mkdir = f"mkdir -p ../{cache}\n" if accelerated else ""
        cache_note = (f"With the accelerator, ONNX Runtime keeps its TensorRT engines and timing cache in "
                      f"`/w/{cache}` (mounted as below, and made by the `mkdir` line: ONNX Runtime makes "
                      "only the last folder of that path), so a model load reuses them.\n\n"
                      if accelerated else "")
        return f"""
## Triton

`triton/` is a model repository: `{serve['model']}` runs `{serve['model_file']}` on Triton's
onnxruntime backend as it is (the folder's name is the model's name, as Triton requires).

Input `{tensor['name']}`: FP32, {batch}{tensor['layout']} {tensor['dims']}, {tensor['channels']} channels,
values {tensor['values']}, resized and center-cropped as the model card says (Triton does no
preprocessing). Output `{serve['output']['name']}`: {serve['output']['what']}, one per class in labels.txt.

{cache_note}Serve it from this folder (`$PWD`, mounted with its parent at `/w`); nothing else is
needed, no plan built:

```
TAG=<yy.mm>   # one release for building and for serving
{mkdir}docker run --gpus all --rm -p 8000:8000 -v $PWD/..:/w nvcr.io/nvidia/tritonserver:$TAG-py3 \\
    tritonserver --model-repository /w/{root}/triton
```

For a TensorRT plan, build it in NVIDIA's TensorRT container of the Triton release you serve
with: tensorrt:<yy.mm>-py3 has the TensorRT that tritonserver:<yy.mm>-py3 loads, and a plan
loads only on the TensorRT that built it. That container has no cuda-python, which
build_engine.sh drives the GPU with, so the first line installs it. build_engine.sh then
installs the plan as `{serve['plan_model']}` in `{root}.device/triton/`, and refuses a plan whose
TensorRT is not the container's own libnvinfer (a pip-installed Python tensorrt of another
version); the second line serves both models:

```
docker run --gpus all --rm -v $PWD/..:/w -w /w/{root} nvcr.io/nvidia/tensorrt:$TAG-py3 \\
    sh -c "pip install -q 'cuda-python{self.cuda_python}' && ./build_engine.sh fp16"
docker run --gpus all --rm -p 8000:8000 -v $PWD/..:/w nvcr.io/nvidia/tritonserver:$TAG-py3 \\
    tritonserver --model-repository /w/{root}/triton --model-repository /w/{root}.device/triton
```
{int8}"""


TRITON = Triton("triton", "10.13.0", 20, "NVIDIA Triton Inference Server (onnxruntime backend; "
                "a TensorRT plan built in the TensorRT container of the server's release)", ">=12,<13", False)
