"""What this CPU can do for int8, read from the kernel's own report (/proc/cpuinfo on Linux).

ONNX Runtime's CPU int8 kernels (MLAS) pick their inner loop from these features, and the loop
decides the arithmetic: on x86 with AVX2 or AVX-512BW but no VNNI, U8S8 products are summed in
pairs into int16 with VPMADDUBSW, which saturates (ONNX Runtime's quantization docs, "hence
reduce_range"); VNNI (VPDPBUSD), AMX and ARM's dot-product instructions accumulate in int32
and are exact. Reports record this so a number is read with the arithmetic that made it.

Standard library only: the deploy bundle copies this file so verify.py reports the same.
"""

from __future__ import annotations

import platform
from pathlib import Path

# the features that change which int8 kernels run, in the order a report lists them
X86 = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM = ("asimddp", "i8mm", "sve", "sve2")


def _flags(cpuinfo: str) -> tuple[str | None, set[str]]:
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "features"):
            flags |= set(value.split())
    return model, flags


def int8_arithmetic(machine: str, flags: set[str]) -> str:
    """How ONNX Runtime's U8S8 kernels add up products on this CPU."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if "amx_int8" in flags:
            return "AMX (int32 accumulation, exact)"
        if flags & {"avx512_vnni", "avx_vnni"}:
            return "VNNI (int32 accumulation, exact)"
        if flags & {"avx2", "avx512bw"}:
            return ("VPMADDUBSW (u8 x s8 pairs summed in int16, saturating: "
                    "exact only for 7-bit weights)")
        return "SSE (16-bit widening, exact)"
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return "ARM i8mm (int32 accumulation, exact)"
        if "asimddp" in flags:
            return "ARM dot product (int32 accumulation, exact)"
        return "NEON (16-bit widening, exact)"
    return f"unknown for {machine}"


def cpu_features(cpuinfo_path: str | Path = "/proc/cpuinfo", machine: str | None = None) -> dict:
    """The CPU's model, its int8-relevant features and the arithmetic they imply."""
    machine = machine or platform.machine()
    try:
        model, flags = _flags(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:  # not Linux: say so rather than guess
        return {"machine": machine, "model": platform.processor() or None, "features": None,
                "int8_arithmetic": "unknown (no /proc/cpuinfo on this system)"}
    wanted = ARM if machine.lower() in ("aarch64", "arm64") else X86
    return {"machine": machine, "model": model, "features": [f for f in wanted if f in flags],
            "int8_arithmetic": int8_arithmetic(machine, flags)}
