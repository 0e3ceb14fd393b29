"""Quantization-aware fine-tuning: the PyTorch model trained a few epochs with the int8 model's
own quantization in its forward pass, so its weights learn to live with it.

The fake quantization is the Q/DQ model's, read from it rather than restated: PyTorch's own
fake-quant operators (torch.fake_quantize_per_tensor_affine / _per_channel_affine, straight-
through gradients, round half to even as QuantizeLinear) on exactly the tensors the tensorrt
recipe quantizes: every Conv and Gemm input per tensor, their weights per output channel, and
the identity input of each residual Add; all symmetric int8 in -127..127. Activation scales are
the calibrated ones (calibration.ranges.json), held fixed, so the ranges, calibration.cache and
the Q/DQ placement stay what calibrate wrote; weight scales follow the weights. Batch norm is
folded into its convolution first, as the ONNX export folds it, so what trains is what the ONNX
file holds: the tuned weights are written into a copy of model.onnx, tensor names and all, and
quantized by the same call as post-training quantization (qdq.quantize).

The recipe is the seed's SGD (momentum 0.9, weight decay 5e-4, cosine decay) at about a
thirtieth of its learning rate, with the gradient norm clipped at 1: a network without batch norm
can be badly scaled (a channel scaled up and the next layer's weights down by the same factor
computes the same and, unclipped, diverged at 1e-4), and clipping keeps a step a step. The loss
is the labels' cross-entropy plus a tenth of the squared distance to the fp32 model's logits
(distillation), which keeps the int8 model's answers near the model parity compares it with.
Measured on the PTQ-fails fixture (tests/test_repair.py, fp32 98.0 % held-out): cross-entropy
alone at 1e-3, 3e-3, 1e-2 reached 96.7, 98.7, 97.3 % in 5 epochs but its logits drifted (cosine
to fp32 0.95 on digits:test); distillation alone 97.0 %; both 98.3 % held-out, and on digits:test
97.5 % against fp32's 97.0 %, cosine 0.977. The best epoch by held-out top-1 of the
fake-quantized model is kept.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..export.metadata import module_of
from .qdq import _producers, residual_identity_inputs
from .trt_cache import scale_from_range

QMIN, QMAX = -127, 127  # symmetric int8, as the tensorrt recipe writes it
DEFAULT_EPOCHS = 5
LEARNING_RATE = 3e-3
MOMENTUM, WEIGHT_DECAY, CLIP_NORM = 0.9, 5e-4, 1.0
DISTILL = 0.1  # weight of the fp32 model's logits (mean squared error) beside the labels' loss
BATCH_SIZE = 64


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Each BatchNorm2d that follows a Conv2d (convN/bnN in a block, [i]/[i+1] in a Sequential
    such as a downsample) folded into it, the BatchNorm replaced by Identity: in place."""
    for child in module.children():
        fold_batchnorm(child)
    children = dict(module.named_children())
    for name, conv in children.items():
        if not isinstance(conv, nn.Conv2d):
            continue
        partner = (str(int(name) + 1) if name.isdigit() else
                   name.replace("conv", "bn", 1) if name.startswith("conv") else None)
        norm = children.get(partner)
        if isinstance(norm, nn.BatchNorm2d):
            setattr(module, name, fuse_conv_bn_eval(conv.eval(), norm.eval()))
            setattr(module, partner, nn.Identity())
    return module


class _PerChannel(nn.Module):
    """A weight fake-quantized per output channel (axis 0), its scale from the weight itself."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        amax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim()))).clamp_min(1e-12)
        zero = torch.zeros_like(amax, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, amax / QMAX, zero, 0, QMIN, QMAX)


class FakeQuantized:
    """`model` (batch norm folded) quantized in its forward pass as the Q/DQ model of
    `onnx_model` is: weights per channel, and each quantized activation tensor per tensor with a
    scale of its own, shared by every consumer of that ONNX tensor as the Q/DQ model shares it,
    starting from the calibrated `ranges` and learned (PyTorch's learnable fake-quant, LSQ's
    gradient scaling), so a range an outlier stretched can shrink. `ranges()` gives them back as
    calibration ranges; `remove()` leaves the plain float model with the trained weights."""

    def __init__(self, model: nn.Module, onnx_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]):
        modules = dict(model.named_modules())
        self.model, self.handles, self.weighted = model, [], []
        self.scales: dict[str, nn.Parameter] = {}

        def quantizer(tensor: str) -> Callable[[torch.Tensor], torch.Tensor]:
            if tensor not in self.scales:
                self.scales[tensor] = nn.Parameter(torch.tensor([float(scale_from_range(*ranges[tensor]))]))
            scale = self.scales[tensor]
            zero = torch.zeros(1)

            def quantize(x: torch.Tensor) -> torch.Tensor:
                return torch._fake_quantize_learnable_per_tensor_affine(
                    x, scale.clamp_min(1e-8), zero, QMIN, QMAX, 1.0 / math.sqrt(x.numel() * QMAX))
            return quantize

        for node in onnx_model.graph.node:
            if node.op_type not in ("Conv", "Gemm"):
                continue
            layer = modules[module_of(node)]
            act = quantizer(node.input[0])
            self.handles.append(layer.register_forward_pre_hook(lambda m, args, q=act: (q(args[0]), *args[1:])))
            parametrize.register_parametrization(layer, "weight", _PerChannel())
            self.weighted.append(layer)
        producers = _producers(onnx_model)
        for add, index in residual_identity_inputs(onnx_model):
            tensor = add.input[index]
            act = quantizer(tensor)
            source = producers[tensor]
            if source.op_type == "Conv":  # the downsample's output
                self.handles.append(modules[module_of(source)].register_forward_hook(
                    lambda m, args, out, q=act: q(out)))
            else:  # the block's own input: quantized once for the identity and the first conv alike
                self.handles.append(modules[module_of(add)].register_forward_pre_hook(
                    lambda m, args, q=act: (q(args[0]), *args[1:])))

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The learned scales as symmetric ranges (+-127 steps), what the Q/DQ model's scales
        are made from."""
        return {t: (-float(s.detach().abs()) * QMAX, float(s.detach().abs()) * QMAX)
                for t, s in self.scales.items()}

    def remove(self) -> nn.Module:
        for handle in self.handles:
            handle.remove()
        for layer in self.weighted:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        return self.model


@dataclass
class Tuned:
    model: nn.Module  # folded, float, the best epoch's weights
    history: list[dict]  # per epoch: held-out top-1 of the fake-quantized model
    best_epoch: int  # 0: no epoch beat the start
    start_top1: float
    best_top1: float
    ranges: dict[str, tuple[float, float]]  # the learned activation ranges, by ONNX tensor


def top1(model: nn.Module, held: tuple[np.ndarray, np.ndarray], batch: int = 256) -> float:
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(held[0]), batch):
            x = torch.from_numpy(held[0][i:i + batch])
            right += int((model(x).argmax(1).numpy() == held[1][i:i + batch]).sum())
    return right / len(held[0])


def fine_tune(model: nn.Module, onnx_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
              train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]], steps_per_epoch: int,
              held: tuple[np.ndarray, np.ndarray], *, epochs: int = DEFAULT_EPOCHS,
              lr: float = LEARNING_RATE, seed: int = 0,
              progress: Callable[[int, float], None] = lambda epoch, top1: None) -> Tuned:
    """Quantization-aware fine-tuning of `model` (a float ResNet in eval mode) for `epochs`
    over `train_batches(epoch)` (`steps_per_epoch` batches each), the best epoch by `held`
    (images, labels) kept."""
    torch.manual_seed(seed)
    fold_batchnorm(model)
    teacher = copy.deepcopy(model).eval()
    fake = FakeQuantized(model, onnx_model, ranges)
    best_top1 = start = top1(model, held)
    best, best_epoch, history = _state(model, fake), 0, []
    optimizer = torch.optim.SGD([{"params": list(model.parameters())},
                                 {"params": list(fake.scales.values()), "weight_decay": 0.0}],
                                lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in train_batches(epoch):
            with torch.no_grad():
                target = teacher(x)
            out = model(x)
            loss = nn.functional.cross_entropy(out, y) + DISTILL * nn.functional.mse_loss(out, target)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([*model.parameters(), *fake.scales.values()], CLIP_NORM)
            optimizer.step()
            schedule.step()
        score = top1(model, held)
        history.append({"epoch": epoch, "heldout_top1": score})
        progress(epoch, score)
        if score > best_top1:
            best_top1, best, best_epoch = score, _state(model, fake), epoch
    model.load_state_dict(best[0])
    for tensor, value in best[1].items():
        fake.scales[tensor].data.copy_(value)
    learned = fake.ranges()
    return Tuned(fake.remove().eval(), history, best_epoch, start, best_top1, learned)


def _state(model: nn.Module, fake: FakeQuantized) -> tuple[dict, dict]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {t: s.detach().clone() for t, s in fake.scales.items()})


def tuned_onnx(fp32: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    """A copy of the fp32 ONNX model with each Conv's and Gemm's weight and bias replaced by the
    tuned (folded) model's: the same graph and tensor names, so the calibrated ranges apply."""
    modules = dict(model.named_modules())
    tuned = onnx.ModelProto()
    tuned.CopyFrom(fp32)
    initializers = {i.name: i for i in tuned.graph.initializer}
    for node in tuned.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        layer = modules[module_of(node)]
        for name, value in zip(node.input[1:3], (layer.weight, layer.bias)):
            old = initializers[name]
            array = value.detach().cpu().numpy().astype(numpy_helper.to_array(old).dtype)
            if array.shape != tuple(old.dims):
                raise ValueError(f"{module_of(node)}: tuned {name} has shape {array.shape}, the ONNX "
                                 f"file {tuple(old.dims)}")
            old.CopyFrom(numpy_helper.from_array(array, name))
    return tuned
