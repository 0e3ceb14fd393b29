"""DeepStream 7.1 on JetPack 6.1/6.2: the engine bundle plus an nvinfer classifier config per
precision (and per precision on DLA core 0), its label file and a deepstream-app config. nvinfer
reads preprocessing as one scale and per-channel offsets, and keeps only classes whose output is
above a threshold, so it takes a model with one std for every channel that outputs probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...calibration import CACHE_NAME
from ...errors import BadInput
from ...runtime import trt_plan
from .. import serving
from .base import Packing, Target


@dataclass(frozen=True)
class DeepStream(Target):
    """`deepstream`: the DeepStream release whose nvinfer reads the configs (its network-mode
    values differ: serving.NETWORK_MODES)."""
    deepstream: str = "7.1"
    serve = "deepstream"
    takes = {"classifier_threshold": 0.0}

    def check_model(self, card, where: str) -> None:
        """What nvinfer needs of a model, or BadInput saying, in one line, every export flag a
        model that has it takes: one scale for every channel, and probabilities (a Softmax in
        the graph). Naming one at a time cost a second export and a second refusal."""
        needs, flags = [], []
        try:
            serving.nvinfer_scaling(card.preprocess.mean, card.preprocess.std)
        except ValueError as exc:
            needs.append(str(exc).split(";")[0])
            flags.append("--fold-normalization")
        if card.output != "probabilities":
            needs.append("the model outputs logits, and nvinfer's classifier keeps only a class "
                         "whose output is above 0 and classifier-threshold")
            flags.append("--softmax")
        if needs:
            raise BadInput(f"{where}: {'; '.join(needs)}; export with {' '.join(flags)} into a new "
                           "work dir and bundle that")

    def check_options(self, options: dict, precisions: list[str], workdir: Path) -> None:
        threshold = options["classifier_threshold"]
        if not 0.0 <= threshold <= 1.0:
            raise BadInput(f"--classifier-threshold {threshold} is not a probability in 0..1")

    def add_files(self, packing: Packing) -> dict:
        """deepstream/: an nvinfer config per precision (and per precision on DLA core 0), the
        label file and a deepstream-app config around fp16. nvinfer runs the batch the engines
        are tuned for (the profile's opt; a static profile's one size). Each config's
        model-engine-file is where nvinfer writes the engine it builds itself on a first start
        (beside the ONNX file, under its own name for it), so later starts load that one; and
        where build_engine.sh puts its engine, so a first start need not build at all."""
        card, threshold = packing.card, packing.options["classifier_threshold"]
        folder = packing.stage / serving.DEEPSTREAM_DIR
        folder.mkdir()
        (folder / "labels.txt").write_text(serving.nvinfer_labels(packing.names))
        batch = packing.profile["opt"]
        configs, engines = {}, {}
        for precision in packing.precisions:
            for dla_core in (None, 0) if self.jetson and precision != "fp32" else (None,):
                plan = trt_plan.build_plan(self.tensorrt, precision, dla=dla_core is not None)
                name = serving.nvinfer_config_name(precision, dla_core)
                mode = serving.network_mode(precision, self.deepstream)
                engine = serving.nvinfer_engine_name(plan.onnx_file, batch, mode, dla_core)
                (folder / name).write_text(serving.nvinfer_config(
                    preprocess=card.preprocess.to_dict(), num_classes=card.num_classes,
                    mode=mode, batch_size=batch, engine=f"../{engine}",
                    onnx=f"../{plan.onnx_file}",
                    calibration=f"../{CACHE_NAME}" if precision == "int8" and CACHE_NAME in packing.files else None,
                    labels="labels.txt", output_name=packing.graph.output[0].name, threshold=threshold,
                    dla_core=dla_core))
                key = precision if dla_core is None else f"{precision}-dla{dla_core}"
                configs[key], engines[key] = f"{serving.DEEPSTREAM_DIR}/{name}", engine
        main = "fp16" if "fp16" in configs else packing.precisions[0]
        (folder / "deepstream_app_config.txt").write_text(serving.deepstream_app_config(
            serving.nvinfer_config_name(main), batch, card.preprocess.input_size))
        scale, offsets = serving.nvinfer_scaling(card.preprocess.mean, card.preprocess.std)
        return {"server": "deepstream", "deepstream": self.deepstream, "nvinfer_configs": configs,
                "engines": engines,
                "app_config": f"{serving.DEEPSTREAM_DIR}/deepstream_app_config.txt",
                "net_scale_factor": scale, "offsets": offsets, "batch_size": batch,
                "classifier_threshold": threshold,
                "folded_normalization": card.folded_normalization is not None}

    def readme(self, root: str, serve: dict | None) -> str:
        engines = "\n".join(f"- `{key}`: `{engine}`" for key, engine in serve["engines"].items())
        int8 = ("\nint8 configs use network-mode=3 (INT8 and FP16, DeepStream 7.0 and newer): layers "
                "without int8 scales run in fp16, as build_engine.sh builds them.\n"
                if any(k.startswith("int8") for k in serve["engines"]) else "")
        return f"""
## DeepStream

`deepstream/` holds an nvinfer classifier config per precision (`config_infer_<precision>.txt`)
and `deepstream_app_config.txt` around the fp16 one, for DeepStream {serve['deepstream']}.
Preprocessing comes from the model card: net-scale-factor {serve['net_scale_factor']!r}, offsets
{serve['offsets']!r} (RGB, 0..255). Each config loads its engine from beside the ONNX file, under
the name nvinfer gives an engine it builds itself. Either build it first (build_engine.sh copies
it there), or let nvinfer build it on the first start (minutes on a Jetson; the bundle folder
must be writable), and later starts load it:

```
./build_engine.sh fp16
cd deepstream && deepstream-app -c deepstream_app_config.txt
```

nvinfer builds its fp32 engine (`network-mode=0`) with TensorRT's TF32 on, as TensorRT does by
default on Ampere and newer (Orin), so the engine under that name is `./build_engine.sh tf32`;
`./build_engine.sh fp32` builds IEEE fp32 for verify.py and leaves nvinfer's engine alone.

The engine files, beside the ONNX files in this folder:

{engines}
{int8}
nvinfer scales each frame (or object) to the model's input size without a center crop; crop
upstream when frames differ from what the model was trained on.
"""


DEEPSTREAM = DeepStream("deepstream", "10.3.0", 20, "DeepStream 7.1 on JetPack 6.1/6.2 (TensorRT 10.3)",
                        ">=12.6.1,<13", True, deepstream="7.1")
