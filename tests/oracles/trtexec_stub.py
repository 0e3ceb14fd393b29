#!/usr/bin/env python3
"""A stand-in trtexec that refuses what the real one refuses: it reads the ONNX file it is
given (static shapes? Q/DQ nodes?) and applies oracles/trtexec.py for the release in
$TRT_VERSION. On a finding it prints trtexec's words and exits 1, as trtexec does; otherwise it
writes its arguments to $TRTEXEC_ARGS and an empty engine to --saveEngine."""

import os
import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from oracles.trtexec import RELEASES, check  # noqa: E402


def nearest(version: str) -> str:
    """The release whose rules apply: same major, the newest minor not above `version`'s."""
    major, minor = (int(p) for p in version.split(".")[:2])
    same = [r for r in RELEASES if int(r.split(".")[0]) == major]
    older = [r for r in same if int(r.split(".")[1]) <= minor]
    return (older or same)[-1]


def main() -> int:
    args = sys.argv[1:]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    graph = onnx.load(options["--onnx"], load_external_data=False).graph
    static = all(d.HasField("dim_value") for i in graph.input for d in i.type.tensor_type.shape.dim)
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    release = nearest(os.environ["TRT_VERSION"])
    inputs = tuple(i.name for i in graph.input if i.name not in {t.name for t in graph.initializer})
    findings = check(release, ["trtexec", *args], static_model=static, qdq=qdq, inputs=inputs)
    for f in findings:
        print(f"[E] {f.message}  ({f.source})" if f.kind == "error" else
              f"[W] {f.message}  ({f.source})", file=sys.stderr)
    if findings:
        return 1
    Path(os.environ["TRTEXEC_ARGS"]).write_text("\n".join(args) + "\n")
    Path(options["--saveEngine"]).write_bytes(b"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
