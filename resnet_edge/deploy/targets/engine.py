"""Engine bundles: the ONNX files, calibration cache and scripts a device builds its own
TensorRT engine from, for a JetPack release or an x86 TensorRT. They add nothing of their own:
what every bundle holds is theirs."""

from __future__ import annotations

from .base import Target

# cuda_python: the cuda-python that drives each target's CUDA (cuda-python N.x needs a CUDA N
# driver; JetPack 5 has CUDA 11.4, JetPack 6 CUDA 12.6). x86 TensorRT 11 comes for CUDA 12 or 13,
# so there the check is against the driver alone.
JETPACK5 = Target("jetpack5", "8.5.2", 17, "JetPack 5.1 (TensorRT 8.5, CUDA 11.4)", ">=11.4,<12", True)
JETPACK6 = Target("jetpack6", "10.3.0", 20, "JetPack 6.1/6.2 (TensorRT 10.3, CUDA 12.6)", ">=12.6.1,<13", True)
X86_TRT10 = Target("x86-trt10", "10.13.0", 20, "x86 with TensorRT 10.x (CUDA 12)", ">=12,<13", False)
X86_TRT11 = Target("x86-trt11", "11.4.0", 20, "x86 with TensorRT 11.x", None, False)
