"""Real TensorRT: build every precision, run it, compare with ONNX Runtime. GPU machines only."""

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def trt_workdir(digits_workdir, tmp_path_factory):
    from resnet_edge.calibration import calibrate
    work = tmp_path_factory.mktemp("trt") / "work"
    shutil.copytree(digits_workdir, work)
    calibrate(work, "digits:train", samples=256, method="entropy")
    return work


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_run_and_compare_with_ort(trt_workdir, precision):
    from resnet_edge.parity.gates import load_thresholds
    from resnet_edge.parity.run import run_parity
    from resnet_edge.runtime import trt_engine, trt_rules

    engine = trt_engine.build_engine(trt_workdir, precision, max_batch=32, opt_batch=8)
    meta = trt_rules.read_engine_meta(engine)
    assert meta["precision"] == precision and meta["onnx_sha256"]
    report = run_parity(trt_workdir, "digits:test", backends=["ort", "trt"], precisions=[precision],
                        thresholds=load_thresholds())
    rows = {r["backend"]: r for r in report["candidates"]}
    assert rows["trt"]["status"] == "ran", rows["trt"]["reason"]
    assert rows["trt"]["metrics"]["top1_agreement"] >= 0.99
    assert abs(rows["trt"]["accuracy"]["top1"] - rows["ort"]["accuracy"]["top1"]) <= 0.01
    assert all(g["passed"] is not False for g in rows["trt"]["gates"]), rows["trt"]["gates"]


def test_engine_from_another_tensorrt_is_refused_with_rebuild(trt_workdir):
    from resnet_edge.runtime import trt_engine
    from resnet_edge.backends import BackendUnavailable, TensorRTBackend
    engine = trt_engine.build_engine(trt_workdir, "fp16")
    meta_path = engine.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tensorrt": "8.5.2"}))
    with pytest.raises(BackendUnavailable, match="rebuild"):
        TensorRTBackend(trt_workdir, "fp16")


def test_implicit_int8_from_cache_on_tensorrt_10_or_older(trt_workdir):
    from resnet_edge.runtime import trt_engine, trt_rules, trt_runner
    trt = trt_runner.import_trt()
    if trt_rules.version_tuple(trt.__version__)[0] >= 11:
        pytest.skip("TensorRT 11 has no implicit INT8")
    engine = trt_engine.build_engine(trt_workdir, "int8", int8_source="cache", typing="weak",
                                     out_dir=trt_workdir / "cache-engine")
    runner = trt_runner.TrtRunner(engine)
    x = np.zeros((2, 3, 32, 32), np.float32)
    assert runner.run(x).shape == (2, 10)


def test_debug_engine_layers_stay_close_to_fp32(trt_workdir):
    from resnet_edge.parity.debug import debug_layers
    report = debug_layers(trt_workdir, "fp16", "digits:test", images=4, backend="trt")
    assert report["layers"] and report["first_exceeding"] is None, report["first_exceeding"]
