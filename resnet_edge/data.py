"""Datasets and the Preprocess spec.

`Preprocess` is defined once and applied by one function for every consumer (training-time
evaluation, calibration, parity, the on-device check). It travels in the checkpoint, the ONNX
metadata and the manifest, and is read back from there; no command re-derives it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side, center-crop a square, scale to [0, 1], normalize (RGB, CHW)."""

    input_size: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    channel_order: str = field(default="RGB")

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_torchvision(cls, preset: ImageClassification) -> "Preprocess":
        """The Preprocess equal to a torchvision weights' `transforms()`."""
        return cls(input_size=preset.crop_size[0], resize=preset.resize_size[0],
                   mean=tuple(preset.mean), std=tuple(preset.std),
                   interpolation=preset.interpolation.value, antialias=bool(preset.antialias))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)

    def transform(self) -> ImageClassification:
        # torchvision's own preset, so a Preprocess made from weights.transforms() is that
        # transform exactly: the same resize, antialiasing and crop as the published accuracy.
        return ImageClassification(crop_size=self.input_size, resize_size=self.resize,
                                   mean=self.mean, std=self.std,
                                   interpolation=InterpolationMode(self.interpolation),
                                   antialias=self.antialias)

    def __call__(self, images) -> torch.Tensor:
        """A PIL image, a uint8 tensor (..., 3, H, W) or a float tensor in [0, 1] -> float32."""
        return self.transform()(images)
