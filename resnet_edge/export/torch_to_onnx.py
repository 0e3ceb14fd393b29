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


MAX_BATCH = 4096


@dataclass(frozen=True)
class ExportOptions:
    """How to export, and the batch profile every later step takes from the model: a dynamic
    batch of min..max tuned for opt, or one static batch (`batch`: min = opt = max)."""

    exporter: str = "dynamo"
    opset: int | None = None
    max_batch: int = 32
    min_batch: int = 1
    opt_batch: int | None = None  # [min(8, max_batch)]
    batch: int | None = None

    def resolved(self) -> "ExportOptions":
        """Defaults filled in and every value checked, before any work is done."""
        for name in ("opset", "max_batch", "min_batch", "opt_batch", "batch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadInput(f"--{name.replace('_', '-')} {value!r} is not a whole number")
        if self.exporter not in OPSET_RANGE:
            raise BadInput(f"unknown exporter {self.exporter!r}; use dynamo or torchscript")
        if self.batch is not None:
            if not 1 <= self.batch <= MAX_BATCH:
                raise BadInput(f"--batch must be 1..{MAX_BATCH}, got {self.batch}")
            low = opt = high = self.batch
        else:
            low, high = self.min_batch, self.max_batch
            opt = self.opt_batch if self.opt_batch is not None else max(low, min(8, high))
            if not 1 <= low <= opt <= high <= MAX_BATCH:
                raise BadInput(f"need 1 <= --min-batch ({low}) <= --opt-batch ({opt}) <= "
                               f"--max-batch ({high}) <= {MAX_BATCH}")
            if low == high:
                raise BadInput(f"a dynamic batch needs --min-batch < --max-batch; for one batch "
                               f"size export with --batch {low}")
        opset = self.opset or DEFAULT_OPSET[self.exporter]
        low_opset, high_opset = OPSET_RANGE[self.exporter]
        if not low_opset <= opset <= high_opset:
            hint = (" (use --exporter torchscript for opset 17, e.g. TensorRT 8.5/8.6)"
                    if self.exporter == "dynamo" and opset < low_opset else "")
            raise BadInput(f"the {self.exporter} exporter cannot emit opset {opset}; it supports "
                           f"{low_opset}-{high_opset}{hint}")
        return ExportOptions(self.exporter, opset, high, low, opt, self.batch)

    @property
    def profile(self) -> dict:
        """{"min", "opt", "max", "static"}: the record build, bundle and the runtimes follow."""
        return {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch,
                "static": self.batch is not None}


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int],
                options: ExportOptions) -> onnx.ModelProto:
    """`model` (eval mode) as an ONNX model in memory, input `input` [batch, C, H, W] ->
    `logits`: the caller adds metadata and saves it once."""
    model = model.eval()
    # A dynamic batch is traced at a size inside the range other than 0 and 1, which
    # torch.export specializes; a static batch at its own size.
    size = options.batch or max(2, options.min_batch)
    example = torch.randn(size, *input_shape)
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                  opset_version=options.opset, verbose=False)
    # the exporters print progress and deprecation chatter; our own progress display says it
    with quiet("torch.onnx", "onnxscript", "torch.export"), torch.inference_mode(False), \
            torch.no_grad():
        static = options.batch is not None
        if options.exporter == "dynamo":
            dims = None if static else (
                {0: torch.export.Dim("batch", min=options.min_batch, max=options.max_batch)},)
            program = torch.onnx.export(model, (example,), None, dynamo=True,
                                        dynamic_shapes=dims, **kwargs)
            return program.model_proto
        buffer = io.BytesIO()
        axes = None if static else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        torch.onnx.export(model, (example,), buffer, dynamo=False, dynamic_axes=axes, **kwargs)
        return onnx.load_from_string(buffer.getvalue())
