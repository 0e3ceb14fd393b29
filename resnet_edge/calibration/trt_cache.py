"""TensorRT's calibration cache, written from our calibration ranges, for the implicit INT8 path
of TensorRT <= 10 (`trtexec --int8 --calib=...`, or our builder's cache-only calibrator).

Format (TensorRT samples/common/sampleEngines.cpp readScalesFromCalibrationCache; ORT's TensorRT
EP ReadDynamicRange): a header line `TRT-<version>-<algorithm>`, then one `tensor: <hex>` line
per tensor, where <hex> is the IEEE-754 bits of the float32 scale (dynamic range / 127).
"""

from __future__ import annotations

import os
import struct

from ..artifacts import write_text_atomic
from ..runtime.trt_rules import cache_header

ALGORITHM = "EntropyCalibration2"


def scale_from_range(low: float, high: float) -> float:
    return max(abs(float(low)), abs(float(high)), 1e-12) / 127.0


def write_cache(ranges: dict[str, tuple[float, float]], path: str | os.PathLike,
                tensorrt_version: str = "10.3.0", algorithm: str = ALGORITHM) -> None:
    lines = [cache_header(tensorrt_version, algorithm)]
    for name, (low, high) in sorted(ranges.items()):  # the same ranges, the same bytes
        bits = struct.unpack(">I", struct.pack(">f", scale_from_range(low, high)))[0]
        lines.append(f"{name}: {bits:08x}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_cache(path: str | os.PathLike) -> tuple[str, dict[str, float]]:
    """(header, tensor name -> float32 scale)."""
    with open(path) as handle:
        header, *rows = handle.read().splitlines()
    scales = {}
    for row in rows:
        name, _, hex_bits = row.rpartition(":")
        scales[name.strip()] = struct.unpack(">f", bytes.fromhex(hex_bits.strip()))[0]
    return header, scales
