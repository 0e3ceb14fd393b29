"""The project's real TensorRT code (build_engine, TrtRunner, the trtexec plan) run against a
stand-in `tensorrt` for each release family (8.5, 8.6, 10.3, 10.16, 11.1) and a stand-in
cuda-python, both generated from NVIDIA's API surface (see tests/trt_standin.py).

These check names and version gating only: that each release is called only with what it
defines, and receives what the build plan says it should. They prove nothing about numerics or
speed; the @pytest.mark.tensorrt tests on a real GPU (tests/test_tensorrt.py) are the proof of
behaviour.
"""

import json
import shutil
import warnings

import numpy as np
import pytest

from cli_output import problem_lines
from resnet_edge.runtime import trt_engine, trt_plan, trt_rules, trt_runner
from trt_standin import FAMILIES, CUDART_NAMES, Device, StandIn, standin_logits, surface

MAJOR = {v: int(v.split(".")[0]) for v in FAMILIES}


@pytest.fixture
def standin(monkeypatch):
    def install(version, **kwargs) -> StandIn:
        return StandIn(version, **kwargs).install(monkeypatch)
    return install


def _batch(rows=3):
    return np.random.default_rng(rows).standard_normal((rows, 3, 32, 32)).astype(np.float32)


def _run(engine, rows=3):
    runner = trt_runner.TrtRunner(engine)
    try:
        x = _batch(rows)
        np.testing.assert_array_equal(runner.run(x), standin_logits(x, 10))
    finally:
        runner.close()


def _set_flags(s: StandIn) -> set[str]:
    return {args[0].name for args in s.calls.args_of("IBuilderConfig.set_flag")}


def _plans():
    """Every (version, precision, int8_source, typing) the build plan accepts, with the plan."""
    for version in FAMILIES:
        for precision in ("fp32", "tf32", "fp16", "int8"):
            for source in (("auto", "qdq", "cache") if precision == "int8" else ("auto",)):
                for typing in ("auto", "weak", "strong"):
                    try:
                        plan = trt_plan.build_plan(version, precision, int8_source=source, typing=typing)
                    except ValueError:
                        continue
                    yield pytest.param(version, precision, source, typing, plan,
                                       id=f"{version}-{precision}-{source}-{typing}")


# ---- the stand-ins themselves ---------------------------------------------------------------

@pytest.mark.parametrize("version", FAMILIES)
def test_standin_has_exactly_the_release_surface(version):
    trt = StandIn(version).trt
    snapshot = surface(version)["python"]
    for cls, names in snapshot.items():
        if cls == "Severity":
            continue
        for name in names:
            if name.isupper() or not name.startswith("__"):
                assert hasattr(getattr(trt, cls), name), (cls, name)
    has = lambda name: hasattr(trt, name)  # noqa: E731
    assert has("HardwareCompatibilityLevel") == (version != "8.5.3")
    assert has("IInt8EntropyCalibrator2") == (MAJOR[version] < 11)
    assert hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (MAJOR[version] < 11)
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") == (MAJOR[version] >= 10)
    assert hasattr(trt.BuilderFlag, "FP16") == (MAJOR[version] < 11)
    with pytest.raises(AttributeError):
        trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config().no_such_setting = 1


@pytest.mark.parametrize("version", FAMILIES)
def test_a_captured_cuda_graph_replays_enqueue_on_new_inputs(version, standin, calibrated_workdir,
                                                             tmp_path):
    s = standin(version)
    engine = trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path)
    runner = trt_runner.TrtRunner(engine)
    try:
        runner.capture(4)
        # captured as trtexec does: one enqueue outside the capture first, then the captured one
        assert [a[1] for a in s.calls.args_of("cudart.cudaStreamBeginCapture")] == [
            s.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal]
        for shift in (0.0, 7.0):  # the replay reads whatever was staged into the same buffers
            x = _batch(4) + shift
            runner.stage(x)
            runner.replay()
            np.testing.assert_array_equal(runner.fetch()[runner.output_name], standin_logits(x, 10))
        assert len(s.calls.named("cudart.cudaGraphLaunch")) == 2
    finally:
        runner.close()


@pytest.mark.parametrize("version", FAMILIES)
def test_a_failed_capture_ends_it_and_the_runner_still_runs(version, standin, calibrated_workdir, tmp_path):
    """An enqueue that fails inside the capture: the capture is ended (trtexec's way), so the
    stream is usable and the eager rows after it still compute."""
    s = standin(version)
    engine = trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path)
    runner = trt_runner.TrtRunner(engine)
    try:
        eager = runner.context.execute_async_v3
        runs = iter([True, False])  # the enqueue before the capture works, the captured one fails
        runner.context.execute_async_v3 = lambda **kw: eager(**kw) and next(runs)
        with pytest.raises(trt_runner.EngineError, match="execute_async_v3 failed"):
            runner.capture(4)
        assert not s.device.capturing
        runner.context.execute_async_v3 = eager
        x = _batch(4)
        np.testing.assert_array_equal(runner.run(x), standin_logits(x, 10))
    finally:
        runner.close()


def test_cudart_standin_names_exist_in_the_real_cuda_python():
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed here")
    missing = [name for name in CUDART_NAMES if not hasattr(cudart, name)]
    assert not missing


# ---- every plan, built and run, against every family ------------------------------------------

@pytest.mark.parametrize("version,precision,source,typing,plan", list(_plans()))
def test_build_and_run_every_plan(version, precision, source, typing, plan, standin,
                                  calibrated_workdir, tmp_path):
    s = standin(version)
    engine = trt_engine.build_engine(calibrated_workdir, precision, int8_source=source, typing=typing,
                                     out_dir=tmp_path)
    assert not s.calls.named("build error"), s.calls.named("build error")
    network = s.flag_names("NetworkDefinitionCreationFlag",
                           s.calls.args_of("Builder.create_network")[0][0])
    assert ("EXPLICIT_BATCH" in network) == (MAJOR[version] == 8)
    assert ("STRONGLY_TYPED" in network) == (MAJOR[version] == 10 and plan.strongly_typed)
    flags = _set_flags(s)
    assert flags == set(plan.builder_flags)
    if MAJOR[version] == 11 or plan.strongly_typed:
        assert not flags & {"FP16", "INT8"} and not s.calls.named("IBuilderConfig.int8_calibrator=")
    cleared = {args[0].name for args in s.calls.args_of("IBuilderConfig.clear_flag")}
    assert cleared == ({"TF32"} if precision == "fp32" else set())
    calibrated = s.calls.named("IBuilderConfig.int8_calibrator=")
    assert bool(calibrated) == plan.calibration_cache
    assert bool(s.calls.named("IBuilderConfig.set_calibration_profile")) == plan.calibration_cache
    assert not s.calls.named("calibration cache ignored")  # the cache's header named this version
    meta = trt_rules.read_engine_meta(engine)
    assert meta["onnx"] == plan.onnx_file and meta["tensorrt"] == version
    assert meta["profile"] == {"min": 1, "opt": 8, "max": 32} and meta["tf32"] == (precision != "fp32")
    _run(engine)


@pytest.mark.parametrize("version,kwargs,message", [
    ("8.5.3", dict(typing="strong"), "no strongly typed"),
    ("8.6.1", dict(typing="strong"), "no strongly typed"),
    ("11.1.0", dict(typing="weak"), "strongly typed only"),
    ("11.1.0", dict(int8_source="cache"), "strongly typed only"),
    ("10.16.0", dict(int8_source="cache"), "--typing weak for the cache"),
    ("10.3.0", dict(int8_source="cache", typing="strong"), "--typing weak for the cache"),
])
def test_what_a_family_cannot_do_is_refused_before_tensorrt_is_touched(version, kwargs, message,
                                                                       standin, calibrated_workdir,
                                                                       tmp_path):
    s = standin(version)
    with pytest.raises(ValueError, match=message):
        trt_engine.build_engine(calibrated_workdir, "int8", out_dir=tmp_path, **kwargs)
    assert not s.calls.named("Builder()") and not list(tmp_path.iterdir())


@pytest.mark.parametrize("version,onnx_file", [("10.16.0", "model.int8-fp16.onnx"),
                                               ("11.1.0", "model.int8-fp16.onnx"),
                                               ("10.3.0", "model.int8.onnx")])
def test_strongly_typed_int8_builds_from_the_fp16_float_model(version, onnx_file, standin,
                                                              calibrated_workdir, tmp_path):
    standin(version)
    engine = trt_engine.build_engine(calibrated_workdir, "int8", out_dir=tmp_path)
    assert trt_rules.read_engine_meta(engine)["onnx"] == onnx_file
    plain = trt_engine.build_engine(calibrated_workdir, "int8", out_dir=tmp_path / "fp32",
                                    int8_float="fp32")
    assert trt_rules.read_engine_meta(plain)["onnx"] == "model.int8.onnx"


# ---- DLA ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["8.5.3", "8.6.1", "10.3.0"])
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_dla_engines_are_static_and_loaded_onto_their_core(version, precision, standin,
                                                          calibrated_workdir, tmp_path):
    s = standin(version)
    engine = trt_engine.build_engine(calibrated_workdir, precision, out_dir=tmp_path, dla_core=1,
                                     gpu_fallback=True, opt_batch=4)
    assert not s.calls.named("build error"), s.calls.named("build error")
    meta = trt_rules.read_engine_meta(engine)
    assert meta["profile"] == {"min": 4, "opt": 4, "max": 4} and meta["dla_core"] == 1
    assert s.calls.args_of("IBuilderConfig.default_device_type=")[0][0].name == "DLA"
    assert s.calls.args_of("IBuilderConfig.DLA_core=") == [(1,)]
    assert "GPU_FALLBACK" in _set_flags(s)
    if precision == "int8":  # NVIDIA's DLA flow: implicit INT8 from the calibration cache
        assert meta["onnx"] == "model.onnx" and s.calls.named("IBuilderConfig.int8_calibrator=")
    s.calls.clear()
    _run(engine, rows=3)  # a short batch is padded to the engine's one batch size
    order = [c[0] for c in s.calls]
    assert s.calls.args_of("Runtime.DLA_core=") == [(1,)]
    assert order.index("Runtime.DLA_core=") < order.index("Runtime.deserialize_cuda_engine")


@pytest.mark.parametrize("version", ["10.16.0", "11.1.0"])
def test_dla_is_refused_where_tensorrt_has_none(version, standin, calibrated_workdir, tmp_path):
    standin(version)
    with pytest.raises(ValueError, match="no DLA support"):
        trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path, dla_core=0)


def test_dla_is_refused_on_a_gpu_without_dla_cores(standin, calibrated_workdir, tmp_path):
    standin("10.3.0", device=Device("NVIDIA L4", "8.9", dla_cores=0))
    with pytest.raises(ValueError, match="has 0 DLA cores.*Jetson"):
        trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path, dla_core=0)


# ---- timing cache -------------------------------------------------------------------------------

def test_timing_cache_from_another_gpu_is_replaced_with_a_warning(standin, calibrated_workdir, tmp_path):
    standin("10.3.0", device=Device("NVIDIA A100", "8.0"))
    first = trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path / "a100")
    a100_cache = tmp_path / "a100" / "timing.cache"
    assert a100_cache.exists()
    s = standin("10.3.0")  # an Orin now, handed the A100's cache
    warned = []
    engine = trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path / "orin",
                                     timing_cache=a100_cache, warn=warned.append)
    assert len(warned) == 1 and "another GPU or TensorRT" in warned[0]
    results = [c for c in s.calls if c[0] == "IBuilderConfig.set_timing_cache"]
    assert [r[1][1] for r in results] == [False, False]  # mismatches are never ignored
    assert engine.exists() and first.exists()
    assert json.loads(a100_cache.read_bytes().split(b"\n", 1)[1])["capability"] == "8.7"


def test_default_timing_cache_is_keyed_by_gpu_and_tensorrt(standin, calibrated_workdir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(calibrated_workdir, work)
    standin("10.3.0")
    orin = trt_engine.build_engine(work, "fp16")
    standin("8.6.1", device=Device("Xavier", "7.2"))
    xavier = trt_engine.build_engine(work, "fp16")
    assert orin.parent != xavier.parent
    assert (orin.parent / "timing.cache").exists() and (xavier.parent / "timing.cache").exists()
    assert orin.parent.name == "orin-trt10.3" and xavier.parent.name == "xavier-trt8.6"


def test_a_missing_timing_cache_is_not_an_error(standin, calibrated_workdir, tmp_path, monkeypatch):
    s = standin("10.16.0")
    monkeypatch.setattr(s.trt.IBuilderConfig, "get_timing_cache", lambda self: None)
    engine = trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path)
    assert engine.exists() and not (tmp_path / "timing.cache").exists()
    _run(engine)


# ---- compatibility flags ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(version_compatible=True), dict(hardware_compatible=True)])
def test_compatibility_flags_are_refused_on_8_5(kwargs, standin, calibrated_workdir, tmp_path):
    standin("8.5.3")
    with pytest.raises(ValueError, match="needs TensorRT 8.6 or newer"):
        trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path, **kwargs)


def test_hardware_compatibility_is_refused_below_ampere(standin, calibrated_workdir, tmp_path):
    standin("8.6.1", device=Device("Xavier", "7.2"))
    with pytest.raises(ValueError, match="Ampere or newer.*Xavier is 7.2"):
        trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path, hardware_compatible=True)


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "10.16.0", "11.1.0"])
def test_compatible_engines_build_and_load(version, standin, calibrated_workdir, tmp_path):
    s = standin(version)
    engine = trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path,
                                     version_compatible=True, hardware_compatible=True)
    assert "VERSION_COMPATIBLE" in _set_flags(s)
    assert s.calls.args_of("IBuilderConfig.hardware_compatibility_level=")[0][0].name == "AMPERE_PLUS"
    _run(engine)
    assert s.calls.args_of("Runtime.engine_host_code_allowed=") == [(True,)]


def test_cli_refuses_compatibility_flags_with_exit_2(standin, calibrated_workdir, run_cli):
    standin("8.5.3")
    result = run_cli("build", calibrated_workdir, "--version-compatible")
    assert result.exit_code == 2 and "needs TensorRT 8.6 or newer" in result.stderr
    assert len(problem_lines(result.stderr)) == 1


# ---- cuda-python --------------------------------------------------------------------------------

@pytest.mark.parametrize("cuda_python,driver,wanted,problem", [
    ("12.6.2", 12060, ">=12.6.1,<13", None),
    ("13.0.1", 12060, ">=12.6.1,<13", "needs a CUDA 13 driver"),
    ("12.2.0", 12060, ">=12.6.1,<13", "does not match this bundle's CUDA"),
    ("11.8.7", 11040, ">=11.4,<12", None),
    ("12.9.0", 11040, ">=11.4,<12", "needs a CUDA 12 driver"),
    ("13.0.1", 13000, None, None),
    ("12.9.0", 13000, None, None),
])
def test_cuda_python_must_match_the_driver(cuda_python, driver, wanted, problem):
    found = trt_rules.cuda_python_problem(cuda_python, driver, wanted)
    assert (found is None) if problem is None else (problem in found and "pip install" in found)


def test_wrong_or_missing_cuda_python_exits_3_in_one_line(standin, calibrated_workdir, run_cli):
    standin("10.3.0", cuda_python="13.0.1")  # JetPack 6's driver supports CUDA 12.6
    result = run_cli("build", calibrated_workdir)
    assert result.exit_code == 3 and "cuda-python 13.0.1 needs a CUDA 13 driver" in result.stderr
    standin("10.3.0", cuda_python=None)
    result = run_cli("build", calibrated_workdir)
    assert result.exit_code == 3 and "cuda-python is not installed; pip install" in result.stderr


@pytest.mark.parametrize("cuda_python,driver", [("13.0.1", 13000), ("12.9.0", 12080),
                                                ("12.6.1", 12060), ("11.8.7", 11040)])
def test_stream_handle_is_the_native_int(cuda_python, driver, standin, calibrated_workdir, tmp_path):
    standin("10.16.0" if driver >= 12000 else "8.5.3", cuda_python=cuda_python,
            device=Device(driver=driver))
    engine = trt_engine.build_engine(calibrated_workdir, "fp16", out_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # int(stream) is deprecated in 13.x
        _run(engine)


# ---- debug: every compared tensor marked as an output ----------------------------------------

@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.1.0"])
def test_debug_marks_every_compared_tensor_on_a_debug_engine(version, standin, calibrated_workdir):
    from resnet_edge.parity.debug import debug_layers
    s = standin(version)
    report = debug_layers(calibrated_workdir, "int8", "digits:test", images=4, backend="trt")
    marked = [args[0].name for args in s.calls.args_of("INetworkDefinition.mark_output")]
    assert marked and len(set(marked)) == len(marked)
    assert {row["tensor"] for row in report["layers"]} == {*marked, "logits"}  # each came back
    assert report["backend"] == "trt" and report["candidate"].startswith(f"tensorrt {version} int8")
    assert not (calibrated_workdir / "engines").exists() or not any(
        p.name == "model.int8.engine" for p in (calibrated_workdir / "engines").rglob("*"))


# ---- the stand-ins bind arguments as pybind11 does -------------------------------------------

def _objects(trt):
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    return builder, builder.create_builder_config(), builder.create_optimization_profile(), trt.Runtime(logger)


# each a call the project once made with its own idea of a name or a type; the binding's own
# keyword (or type) is what works on a device
KEYWORDS = [
    ("set_shape", lambda trt, c, p, r: p.set_shape(name="input", min=(1, 3), opt=(1, 3), max=(1, 3)),
     lambda trt, c, p, r: p.set_shape(input="input", min=(1, 3), opt=(1, 3), max=(1, 3))),
    ("create_timing_cache", lambda trt, c, p, r: c.create_timing_cache(blob=b""),
     lambda trt, c, p, r: c.create_timing_cache(serialized_timing_cache=b"")),
    ("set_memory_pool_limit",
     lambda trt, c, p, r: c.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=1),
     lambda trt, c, p, r: c.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pool_size=1)),
    ("deserialize_cuda_engine", lambda trt, c, p, r: r.deserialize_cuda_engine(data=b""),
     lambda trt, c, p, r: r.deserialize_cuda_engine(serialized_engine=b"")),
]


@pytest.mark.parametrize("version", FAMILIES)
@pytest.mark.parametrize("what,wrong,right", KEYWORDS, ids=[k[0] for k in KEYWORDS])
def test_a_keyword_the_binding_does_not_name_is_a_type_error(version, what, wrong, right, standin):
    trt = standin(version).trt
    _, config, profile, runtime = _objects(trt)
    with pytest.raises(TypeError, match="incompatible function arguments.*unexpected keyword"):
        wrong(trt, config, profile, runtime)
    right(trt, config, profile, runtime)


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "10.16.0"])
@pytest.mark.parametrize("bad", [
    lambda trt, c, r: setattr(c, "profiling_verbosity", 2),  # an int where an enum is required
    lambda trt, c, r: c.set_tactic_sources("cudnn"),  # a str where a bit mask (int) is required
    lambda trt, c, r: setattr(c, "builder_optimization_level", "five"),
    lambda trt, c, r: setattr(r, "DLA_core", "1"),
    lambda trt, c, r: setattr(c, "DLA_core", 1.7),
    lambda trt, c, r: c.set_flag(5),  # BuilderFlag.FP16 as its number
    lambda trt, c, r: c.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE),  # no pool_size
], ids=["verbosity-int", "tactics-str", "level-str", "runtime-dla-str", "config-dla-float",
        "flag-int", "missing-argument"])
def test_a_value_pybind11_cannot_convert_is_a_type_error(version, bad, standin):
    trt = standin(version).trt
    builder, config, _, runtime = _objects(trt)
    with pytest.raises(TypeError):
        bad(trt, config, runtime)


def test_a_read_only_property_cannot_be_written(standin):
    trt = standin("10.3.0").trt
    _, config, _, _ = _objects(trt)
    with pytest.raises(AttributeError, match="read-only.*pyCore.cpp"):
        config.num_optimization_profiles = 4
