"""torch.onnx.export with a dynamic batch dimension, one self-contained file, eval semantics."""

from __future__ import annotations

import io
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from ..errors import BadInput
from ..quiet import quiet

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# dynamo's translation library is written at opset 18 and its converter to older opsets fails on
# ResNets (reference/onnx-export-quantization.md); TorchScript is the path to opset 17 (TRT 8.x).
_MAX_OPSET = getattr(torch.onnx._constants, "ONNX_MAX_OPSET", 23)
OPSET_RANGE = {
    "dynamo": (18, _MAX_OPSET),
    "torchscript": (9, getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)),
}
DEFAULT_OPSET = {"dynamo": 20, "torchscript": 17}


@dataclass(frozen=True)
class ExportOptions:
    exporter: str = "dynamo"
    opset: int | None = None
    max_batch: int = 64

    def resolved(self) -> "ExportOptions":
        """Defaults filled in and every value checked, before any work is done."""
        if self.exporter not in OPSET_RANGE:
            raise BadInput(f"unknown exporter {self.exporter!r}; use dynamo or torchscript")
        if self.max_batch < 2:
            raise BadInput(f"--max-batch must be at least 2 for a dynamic batch dimension, got "
                           f"{self.max_batch}")
        opset = self.opset or DEFAULT_OPSET[self.exporter]
        low, high = OPSET_RANGE[self.exporter]
        if not low <= opset <= high:
            hint = (" (use --exporter torchscript for opset 17, e.g. TensorRT 8.5/8.6)"
                    if self.exporter == "dynamo" and opset < low else "")
            raise BadInput(f"the {self.exporter} exporter cannot emit opset {opset}; it supports "
                           f"{low}-{high}{hint}")
        return ExportOptions(self.exporter, opset, self.max_batch)


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int],
                options: ExportOptions) -> onnx.ModelProto:
    """`model` (eval mode) as an ONNX model in memory, input `input` [batch, C, H, W] ->
    `logits`: the caller adds metadata and saves it once."""
    model = model.eval()
    # Batch 2 for tracing: torch.export specializes sizes 0 and 1.
    example = torch.randn(2, *input_shape)
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                  opset_version=options.opset, verbose=False)
    # the exporters print progress and deprecation chatter; our own progress display says it
    with quiet("torch.onnx", "onnxscript", "torch.export"), torch.inference_mode(False), \
            torch.no_grad():
        if options.exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=options.max_batch)
            program = torch.onnx.export(model, (example,), None, dynamo=True,
                                        dynamic_shapes=({0: batch},), **kwargs)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(model, (example,), buffer, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          **kwargs)
        return onnx.load_from_string(buffer.getvalue())
