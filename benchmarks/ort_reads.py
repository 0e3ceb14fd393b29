"""Which ONNX IR version and opset each ONNX Runtime release opens, measured from its PyPI wheel:
one-node models stamped with IR 7..13 (at opset 13) and opset 15..26 (at IR 7) are opened until
one is refused. Prints a row per release and whether it matches `runtime.ort.ORT_READS`, the
table verify.py and every session check a file against before ONNX Runtime refuses it with a
traceback. Needs the package index; each release goes into a scratch folder, not the venv.

    .venv/bin/python benchmarks/ort_reads.py [--python ~/.pyenv/versions/3.10.13/bin/python] [1.16.3 1.18.1 ...]

--python names an interpreter the releases have wheels for (1.12-1.15 have none for 3.11+);
it needs numpy<2 and onnxruntime's other dependencies installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from onnx import TensorProto, helper

from resnet_edge.runtime.ort import ORT_READS

RELEASES = ["1.12.1", "1.13.1", "1.14.1", "1.15.1", "1.16.3", "1.17.3", "1.18.1", "1.19.2",
            "1.20.1", "1.21.1", "1.22.1", "1.23.2"]
PROBE = """
import sys, onnxruntime
def opens(path):
    try:
        onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False
def newest(kind, values):
    best = None
    for value in values:
        if not opens(f"{sys.argv[1]}/{kind}{value}.onnx"):
            break
        best = value
    return best
print(onnxruntime.__version__, newest("ir", range(7, 14)), newest("opset", range(15, 27)))
"""


def stamped(folder: Path) -> None:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for kind, values, ir, opset in (("ir", range(7, 14), None, 13), ("opset", range(15, 27), 7, None)):
        for value in values:
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset or value)])
            model.ir_version = ir or value
            (folder / f"{kind}{value}.onnx").write_bytes(model.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("releases", nargs="*", default=RELEASES)
    args = parser.parse_args()
    table = {row[:2]: row[2:] for row in ORT_READS}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        stamped(models)
        print(f"{'release':>9}  {'max IR':>6}  {'max opset':>9}  ORT_READS")
        for release in args.releases:
            target = Path(tmp) / release
            got = subprocess.run([args.python, "-m", "pip", "install", "-q", "--no-deps", "--target",
                                  str(target), f"onnxruntime=={release}"], capture_output=True, text=True)
            if got.returncode:
                print(f"{release:>9}  no wheel for {args.python}")
                continue
            out = subprocess.run([args.python, "-c", PROBE, str(models)], capture_output=True, text=True,
                                 env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
            _, ir, opset = out.stdout.split()
            key = tuple(int(p) for p in release.split(".")[:2])
            said = table.get(key)
            verdict = "missing" if said is None else ("same" if said == (int(ir), int(opset)) else f"differs: {said}")
            print(f"{release:>9}  {ir:>6}  {opset:>9}  {verdict}")


if __name__ == "__main__":
    main()
